/* py_quant.c: Python bindings of the quant family. */
#include "ryz_py.h"
#include "quant.h"

const ryz_quant_kernels *ryz_quant = &ryz_quant_scalar;

void ryz_quant_select(ryz_isa isa) {
    static const ryz_quant_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_quant_scalar, &ryz_quant_avx2, &ryz_quant_avx512};
    ryz_quant = by_isa[isa];
    ryz_register_kernel("quantize_row_i8", ryz_quant->name);
}

typedef struct {
    int8_t *q;
    float *scales;
    const float *x;
    int64_t K;
    int64_t bad_row; /* first row with NaN/inf, or -1 (rows are disjoint per thread) */
} quant_job;

static void quant_rows(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    quant_job *j = ctx;
    for (int64_t m = b; m < e; m++)
        if (ryz_quant->quantize_row_i8(j->q + m * j->K, j->scales + m, j->x + m * j->K, j->K) &&
            (j->bad_row < 0 || m < j->bad_row))
            __atomic_store_n(&j->bad_row, m, __ATOMIC_RELAXED);
}

PyDoc_STRVAR(quantize_rows_i8_doc,
"quantize_rows_i8(q, scales, x) -> None\n\n"
"BitNet per-row int8 absmax quantization of x (float32 [M, K]) into q (int8 [M, K])\n"
"and scales (float32 [M]): scales[m] = 127 / max(max|x[m]|, 1e-5) and\n"
"q[m] = clamp(round_half_even(x[m] * scales[m]), -128, 127). Raises ValueError\n"
"if a row holds NaN or inf.");

static PyObject *py_quantize_rows_i8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oq, *os, *ox;
    if (!PyArg_ParseTuple(args, "OOO:quantize_rows_i8", &oq, &os, &ox)) return NULL;
    ryz_args a = {0};
    ryz_arr *q, *s, *x;
    if (!(q = ryz_arr_get(&a, oq, "q", RYZ_I8, 2, 1)) ||
        !(s = ryz_arr_get(&a, os, "scales", RYZ_F32, 1, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 0)) ||
        ryz_check_dim(q, 0, ryz_dim(x, 0), "x.shape[0]") ||
        ryz_check_dim(q, 1, ryz_dim(x, 1), "x.shape[1]") ||
        ryz_check_dim(s, 0, ryz_dim(x, 0), "x.shape[0]") ||
        ryz_check_no_overlap(q, x) || ryz_check_no_overlap(s, x))
        goto fail;
    quant_job j = {ryz_data(q), ryz_data(s), ryz_data(x), ryz_dim(x, 1), -1};
    int64_t M = ryz_dim(x, 0);
    if (ryz_run_chunked(quant_rows, &j, M, 4096, 16) != 0) goto fail;
    if (j.bad_row >= 0) {
        PyErr_Format(PyExc_ValueError, "x row %lld contains NaN or inf; cannot quantize it "
                     "(check the model's weights or the previous layer)", (long long)j.bad_row);
        goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_quant_methods[] = {
    {"quantize_rows_i8", py_quantize_rows_i8, METH_VARARGS, quantize_rows_i8_doc},
    {NULL, NULL, 0, NULL},
};
