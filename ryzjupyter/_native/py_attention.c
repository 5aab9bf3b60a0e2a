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
    int64_t M, Hq, Hkv, hd, G, n_past;
    int64_t S;         /* parts the cache rows of each unit are split into (1: no split) */
    float scale;
    float *part, *ml;  /* S > 1: [units * S][G][hd] partial outputs, [units * S][G][2] (m, l) */
    int failed;        /* scratch allocation failed */
} attn_job;

/* items are (query row i, kv head, part): item = (i * Hkv + kvh) * S + part */
static void attn_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_job *j = ctx;
    float *scratch = malloc(sizeof(float) * (size_t)ryz_attn_scratch_floats(j->hd, j->n_past + j->M));
    if (!scratch) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const int64_t kstride = j->Hkv * j->hd;
    for (int64_t it = b; it < e; it++) {
        const int64_t unit = it / j->S, part = it % j->S;
        const int64_t i = unit / j->Hkv, kvh = unit % j->Hkv, L = j->n_past + i + 1;
        const int64_t t0 = L * part / j->S, t1 = L * (part + 1) / j->S;
        ryz_attn_unit u = {
            .q = j->q + (i * j->Hq + kvh * j->G) * j->hd,
            .k = j->k + t0 * kstride + kvh * j->hd,
            .v = j->v + t0 * kstride + kvh * j->hd,
            .o = j->S == 1 ? j->out + (i * j->Hq + kvh * j->G) * j->hd : j->part + it * j->G * j->hd,
            .ml = j->S == 1 ? NULL : j->ml + it * 2 * j->G,
            .G = j->G, .hd = j->hd, .kstride = kstride, .L = t1 - t0, .scale = j->scale,
        };
        ryz_attention->attend(&u, scratch);
    }
    free(scratch);
}

/* merge the S partial results of each unit (flash-decoding, see attention.h) */
static void merge_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_job *j = ctx;
    const int64_t G = j->G, hd = j->hd, S = j->S;
    for (int64_t unit = b; unit < e; unit++) {
        const int64_t i = unit / j->Hkv, kvh = unit % j->Hkv;
        for (int64_t g = 0; g < G; g++) {
            float *o = j->out + (i * j->Hq + kvh * G + g) * hd;
            float mx = -INFINITY, wsum = 0.0f;
            for (int64_t p = 0; p < S; p++) {
                float m = j->ml[((unit * S + p) * G + g) * 2];
                mx = m > mx ? m : mx;
            }
            for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
            for (int64_t p = 0; p < S; p++) {
                const float *ml = j->ml + ((unit * S + p) * G + g) * 2;
                const float w = ml[1] * expf(ml[0] - mx);
                const float *po = j->part + ((unit * S + p) * G + g) * hd;
                wsum += w;
                for (int64_t d = 0; d < hd; d++) o[d] += w * po[d];
            }
            const float inv = 1.0f / wsum;
            for (int64_t d = 0; d < hd; d++) o[d] *= inv;
        }
    }
}

/* Parts per unit: decode has few units (M * Hkv, e.g. 5), too few to keep every thread
 * busy, so long rows are split. Depends on the shapes only, never on the thread count,
 * so results do not change with the number of threads. */
#define RYZ_ATTN_MIN_UNITS 16
#define RYZ_ATTN_MIN_PART_ROWS 256
static int64_t attn_parts(int64_t units, int64_t shortest_row) {
    if (units >= RYZ_ATTN_MIN_UNITS) return 1;
    int64_t S = (RYZ_ATTN_MIN_UNITS + units - 1) / units;
    int64_t cap = shortest_row / RYZ_ATTN_MIN_PART_ROWS;
    if (S > cap) S = cap;
    return S < 1 ? 1 : S;
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
    const int64_t G = Hq / Hkv, units = M * Hkv, S = attn_parts(units, n_past + 1);
    attn_job j = {ryz_data(out), ryz_data(q), ryz_data(k), ryz_data(v), M, Hq, Hkv, hd, G,
                  n_past, S, (float)scale, NULL, NULL, 0};
    if (S > 1) {
        j.part = malloc(sizeof(float) * (size_t)(units * S * G * hd));
        j.ml = malloc(sizeof(float) * (size_t)(units * S * G * 2));
        if (!j.part || !j.ml) {
            free(j.part);
            free(j.ml);
            PyErr_NoMemory();
            goto fail;
        }
    }
    /* chunks of about 2^26 multiply-adds between Ctrl-C checks */
    int64_t per_item = (n_past + M) * hd * G * 2 / S;
    int64_t chunk = per_item > 0 ? ((int64_t)1 << 26) / per_item : units * S;
    int64_t minchunk = 2 * (int64_t)ryz_num_threads();
    if (chunk < minchunk) chunk = minchunk;
    int rc = ryz_run_chunked(attn_task, &j, units * S, chunk, 1);
    if (rc == 0 && !j.failed && S > 1) rc = ryz_run_chunked(merge_task, &j, units, units, 1);
    free(j.part);
    free(j.ml);
    if (rc != 0) goto fail;
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
