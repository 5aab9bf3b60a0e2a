/* py_attention.c: Python binding of the attention family (see attention.h). */
#include <math.h>
#include <stdlib.h>

#include "attention.h"
#include "ryz_py.h"

const ryz_attention_kernels *ryz_attention = &ryz_attention_scalar;

void ryz_attention_select(ryz_isa isa) {
    static const ryz_attention_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_attention_scalar, &ryz_attention_avx2, &ryz_attention_avx512};
    ryz_attention = by_isa[isa];
    ryz_register_kernel("attention", ryz_attention->name);
}

typedef struct {
    float *out;
    const float *q, *k, *v;
    ryz_attn_shape s;
    int failed; /* scratch allocation failed */
} attn_job;

/* items are (query row i, kv head) pairs: item = i * Hkv + kvh */
static void attn_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_job *j = ctx;
    float *scratch = malloc(sizeof(float) * (size_t)ryz_attn_scratch_floats(&j->s));
    if (!scratch) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t it = b; it < e; it++)
        ryz_attention->attend(j->out, j->q, j->k, j->v, &j->s, it / j->s.Hkv, it % j->s.Hkv, scratch);
    free(scratch);
}

PyDoc_STRVAR(attention_doc,
"attention(out, q, k, v, n_past, scale) -> None\n\n"
"Causal grouped-query attention over a float32 KV cache, softmax in float32:\n"
"out, q: float32 [M, Hq, hd]; k, v: float32 [T, Hkv, hd] with Hq % Hkv == 0 and\n"
"n_past + M <= T. Query row i sits at position n_past + i and attends to cache rows\n"
"0 .. n_past + i; query head h uses kv head h // (Hq // Hkv).\n"
"out[i, h] = softmax(scale * k[:L, h'] @ q[i, h]) @ v[:L, h'], L = n_past + i + 1.\n"
"out must not overlap q, k or v. Interruptible (Ctrl-C) between chunks of work.");
static PyObject *py_attention(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *ok, *ov;
    long long n_past;
    double scale;
    if (!PyArg_ParseTuple(args, "OOOOLd:attention", &oo, &oq, &ok, &ov, &n_past, &scale)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *q, *k, *v;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 3, 1)) ||
        !(q = ryz_arr_get(&a, oq, "q", RYZ_F32, 3, 0)) ||
        !(k = ryz_arr_get(&a, ok, "k", RYZ_F32, 3, 0)) ||
        !(v = ryz_arr_get(&a, ov, "v", RYZ_F32, 3, 0)))
        goto fail;
    int64_t M = ryz_dim(q, 0), Hq = ryz_dim(q, 1), hd = ryz_dim(q, 2);
    int64_t T = ryz_dim(k, 0), Hkv = ryz_dim(k, 1);
    if (ryz_check_dim(out, 0, M, "q.shape[0]") || ryz_check_dim(out, 1, Hq, "q.shape[1]") ||
        ryz_check_dim(out, 2, hd, "q.shape[2]") || ryz_check_dim(k, 2, hd, "q.shape[2] (head_dim)") ||
        ryz_check_dim(v, 0, T, "k.shape[0]") || ryz_check_dim(v, 1, Hkv, "k.shape[1]") ||
        ryz_check_dim(v, 2, hd, "q.shape[2] (head_dim)") || ryz_check_no_overlap(out, q) ||
        ryz_check_no_overlap(out, k) || ryz_check_no_overlap(out, v))
        goto fail;
    if (Hkv < 1 || Hq < 1 || Hq % Hkv != 0) {
        PyErr_Format(PyExc_ValueError, "q heads (q.shape[1] = %lld) must be a positive multiple of "
                     "kv heads (k.shape[1] = %lld)", (long long)Hq, (long long)Hkv);
        goto fail;
    }
    if (n_past < 0 || n_past + M > T) {
        PyErr_Format(PyExc_ValueError, "n_past is %lld but must satisfy 0 <= n_past and n_past + M "
                     "(%lld) <= T (k.shape[0] = %lld)", n_past, (long long)M, (long long)T);
        goto fail;
    }
    if (!isfinite(scale)) {
        PyErr_Format(PyExc_ValueError, "scale must be finite, got %g", scale);
        goto fail;
    }
    if (M == 0 || hd == 0) goto done;
    attn_job j = {ryz_data(out), ryz_data(q), ryz_data(k), ryz_data(v),
                  {M, Hq, Hkv, hd, T, n_past, (float)scale}, 0};
    /* chunks of about 2^26 multiply-adds between Ctrl-C checks */
    int64_t per_item = (n_past + M) * hd * (Hq / Hkv) * 2;
    int64_t chunk = per_item > 0 ? ((int64_t)1 << 26) / per_item : M * Hkv;
    int64_t minchunk = 2 * (int64_t)ryz_num_threads();
    if (chunk < minchunk) chunk = minchunk;
    if (ryz_run_chunked(attn_task, &j, M * Hkv, chunk, 1) != 0) goto fail;
    if (j.failed) {
        PyErr_NoMemory();
        goto fail;
    }
done:
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_attention_methods[] = {
    {"attention", py_attention, METH_VARARGS, attention_doc},
    {NULL, NULL, 0, NULL},
};
