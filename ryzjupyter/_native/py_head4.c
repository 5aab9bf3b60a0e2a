/* py_head4.c: Python bindings of the head4 family, the 4-bit lm_head (format: head4.h).
 *
 * quantize_head4(packed, scales, w)          float head -> int4 groups + float16 scales
 * lm_head_i4(out, xq, xs, packed, scales)    logits for M tokens (M = 1: decode)
 */
#include <stdlib.h>

#include "head4.h"
#include "ryz_py.h"

const ryz_head4_kernels *ryz_head4 = &ryz_head4_scalar;

void ryz_head4_select(ryz_isa isa) {
    static const ryz_head4_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_head4_scalar, &ryz_head4_avx2, &ryz_head4_avx512};
    ryz_head4 = by_isa[isa];
    ryz_register_kernel("lm_head_i4", ryz_head4->name);
}

/* packed [T, ng, 8G] and scales [T, ng, 16]: check the pair, return G (0 on error) */
static int64_t check_format(const ryz_arr *packed, const ryz_arr *scales) {
    const int64_t T = ryz_dim(packed, 0), ng = ryz_dim(packed, 1), gb = ryz_dim(packed, 2);
    if (gb % 8 != 0 || !ryz_h4_group_ok(gb / 8)) {
        PyErr_Format(PyExc_ValueError, "packed.shape[2] must be 8 * group with group 32, 64 or 128, got %lld",
                     (long long)gb);
        return 0;
    }
    if (T < 1 || ng < 1) {
        PyErr_SetString(PyExc_ValueError, "packed must have at least one tile and one group");
        return 0;
    }
    if (ryz_check_dim(scales, 0, T, "packed.shape[0]") || ryz_check_dim(scales, 1, ng, "packed.shape[1]") ||
        ryz_check_dim(scales, 2, RYZ_H4_ROWS, "16 (rows of a tile)"))
        return 0;
    return gb / 8;
}

/* ---- quantize ------------------------------------------------------------------------ */
typedef struct {
    uint8_t *packed;
    uint16_t *scales;
    const float *w;
    int64_t V, K, G, bad; /* bad: first bad row + 1, or 0 */
} quant_job;

static void quant_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    quant_job *j = ctx;
    int64_t r = ryz_head4_quantize(j->packed, j->scales, j->w, j->V, j->K, j->G, b, e);
    if (r) {
        int64_t cur = __atomic_load_n(&j->bad, __ATOMIC_RELAXED);
        while ((cur == 0 || r < cur) &&
               !__atomic_compare_exchange_n(&j->bad, &cur, r, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
    }
}

PyDoc_STRVAR(quantize_head4_doc,
"quantize_head4(packed, scales, w) -> None\n\n"
"Quantize the float32 head w [V, K] to the int4 lm_head format (head4.h): groups of G\n"
"columns, d = float16(max|w| / 7), q = clamp(round_half_even(w / d), -7, 7).\n"
"packed uint8 [ceil(V/16), ceil(K/G), 8 G] (G = 32, 64 or 128 is read from its shape),\n"
"scales uint16 [ceil(V/16), ceil(K/G), 16] (float16 bits). Raises ValueError if w holds\n"
"NaN/inf or a scale overflows float16. Deterministic; GIL released.");
static PyObject *py_quantize_head4(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *op, *os, *ow;
    if (!PyArg_ParseTuple(args, "OOO:quantize_head4", &op, &os, &ow)) return NULL;
    ryz_args a = {0};
    ryz_arr *packed, *scales, *w;
    if (!(packed = ryz_arr_get(&a, op, "packed", RYZ_U8, 3, 1)) ||
        !(scales = ryz_arr_get(&a, os, "scales", RYZ_U16, 3, 1)) || !(w = ryz_arr_get(&a, ow, "w", RYZ_F32, 2, 0)))
        goto fail;
    int64_t G = check_format(packed, scales);
    if (!G) goto fail;
    const int64_t V = ryz_dim(w, 0), K = ryz_dim(w, 1);
    if (V < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "w must have at least one row and one column");
        goto fail;
    }
    if (ryz_check_k_limit(w, 1, RYZ_H4_MAX_K)) goto fail;
    const int64_t T = (V + RYZ_H4_ROWS - 1) / RYZ_H4_ROWS, ng = (K + G - 1) / G;
    if (ryz_check_dim(packed, 0, T, "ceil(w.shape[0] / 16)") || ryz_check_dim(packed, 1, ng, "ceil(w.shape[1] / group)") ||
        ryz_check_no_overlap(packed, w) || ryz_check_no_overlap(scales, w) || ryz_check_no_overlap(packed, scales))
        goto fail;
    quant_job j = {ryz_data(packed), ryz_data(scales), ryz_data(w), V, K, G, 0};
    int64_t chunk = (int64_t)20000000 / (ng * G * RYZ_H4_ROWS) + 1;
    if (ryz_run_chunked(quant_task, &j, T, chunk, 1) != 0) goto fail;
    if (j.bad) {
        PyErr_Format(PyExc_ValueError, "w row %lld contains NaN or inf, or values too large for a float16 "
                     "group scale (max|w| must be below ~458000); cannot quantize it to int4",
                     (long long)(j.bad - 1));
        goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- GEMV ------------------------------------------------------------------------------ */
typedef struct {
    float *out;
    const uint8_t *packed;
    const uint16_t *scales;
    const int8_t *x;
    const int32_t *negc;
    const float *xs;
    int64_t V, ng, G, M;
} gemv_job;

static void gemv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    gemv_job *j = ctx;
    ryz_head4->gemv(j->out, j->V, j->V, j->packed, j->scales, j->ng, j->G, j->x, j->negc, j->xs, j->M, b, e);
}

PyDoc_STRVAR(lm_head_i4_doc,
"lm_head_i4(out, xq, xs, packed, scales) -> None\n\n"
"Logits through the int4 lm_head (format and exact result: head4.h): for every token m and\n"
"row n, out[m, n] = (sum over groups g in order of float(isum) * d[n, g]) / xs[m], isum the\n"
"exact int32 sum of xq[m, k] q[n, k] over the group. out float32 [M, V], xq int8 [M, K],\n"
"xs float32 [M], packed/scales from quantize_head4 (V and K must match their shapes).\n"
"Bitwise the same at every ISA level and thread count. Threads split the rows (tiles of\n"
"16, all M tokens per tile while it is in cache); GIL released; Ctrl-C checked between chunks.");
static PyObject *py_lm_head_i4(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *os, *op, *osc;
    if (!PyArg_ParseTuple(args, "OOOOO:lm_head_i4", &oo, &oq, &os, &op, &osc)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *xq, *xs, *packed, *scales;
    int8_t *xp = NULL;
    int32_t *negc = NULL;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) || !(xq = ryz_arr_get(&a, oq, "xq", RYZ_I8, 2, 0)) ||
        !(xs = ryz_arr_get(&a, os, "xs", RYZ_F32, 1, 0)) || !(packed = ryz_arr_get(&a, op, "packed", RYZ_U8, 3, 0)) ||
        !(scales = ryz_arr_get(&a, osc, "scales", RYZ_U16, 3, 0)))
        goto fail;
    const int64_t G = check_format(packed, scales);
    if (!G) goto fail;
    const int64_t T = ryz_dim(packed, 0), ng = ryz_dim(packed, 1);
    const int64_t M = ryz_dim(xq, 0), K = ryz_dim(xq, 1), V = ryz_dim(out, 1);
    if (ryz_check_dim(out, 0, M, "xq.shape[0]") || ryz_check_dim(xs, 0, M, "xq.shape[0]") ||
        ryz_check_no_overlap(out, xq) || ryz_check_no_overlap(out, xs) || ryz_check_no_overlap(out, packed) ||
        ryz_check_no_overlap(out, scales))
        goto fail;
    if (V < 1 || (V + RYZ_H4_ROWS - 1) / RYZ_H4_ROWS != T) {
        PyErr_Format(PyExc_ValueError, "out.shape[1] (V=%lld) does not fit packed.shape[0]=%lld tiles of 16 rows",
                     (long long)V, (long long)T);
        goto fail;
    }
    if (K < 1 || (K + G - 1) / G != ng) {
        PyErr_Format(PyExc_ValueError, "xq.shape[1] (K=%lld) does not fit packed.shape[1]=%lld groups of %lld",
                     (long long)K, (long long)ng, (long long)G);
        goto fail;
    }
    if (M == 0) {
        ryz_args_release(&a);
        Py_RETURN_NONE;
    }
    const int64_t Kp = ng * G;
    xp = calloc((size_t)(M * Kp), 1);
    negc = malloc((size_t)(M * ng) * sizeof(int32_t));
    if (!xp || !negc) {
        PyErr_NoMemory();
        goto fail;
    }
    const int8_t *x = ryz_data(xq);
    for (int64_t m = 0; m < M; m++) {
        memcpy(xp + m * Kp, x + m * K, (size_t)K);
        for (int64_t g = 0; g < ng; g++) {
            int32_t s = 0;
            for (int64_t k = g * G; k < (g + 1) * G; k++) s += xp[m * Kp + k];
            negc[m * ng + g] = -8 * s;
        }
    }
    gemv_job j = {ryz_data(out), ryz_data(packed), ryz_data(scales), xp, negc, ryz_data(xs), V, ng, G, M};
    /* ~10 ms a chunk: a decode head (M = 1) runs in one piece */
    int64_t chunk = (int64_t)400000000 / (ng * 8 * G * M) + 1;
    if (ryz_run_chunked(gemv_task, &j, T, chunk, 1) != 0) goto fail;
    free(xp);
    free(negc);
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    free(xp);
    free(negc);
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_head4_methods[] = {
    {"quantize_head4", py_quantize_head4, METH_VARARGS, quantize_head4_doc},
    {"lm_head_i4", py_lm_head_i4, METH_VARARGS, lm_head_i4_doc},
    {NULL, NULL, 0, NULL},
};
