/* py_ternary.c: Python bindings of the ternary family (layouts in ternary.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "ryz_py.h"
#include "ternary.h"

const ryz_ternary_kernels *ryz_ternary = &ryz_ternary_scalar;

void ryz_ternary_select(ryz_isa isa) {
    static const ryz_ternary_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_ternary_scalar, &ryz_ternary_avx2, &ryz_ternary_avx512};
    ryz_ternary = by_isa[isa];
    ryz_register_kernel("ternary_gemm_i2", ryz_ternary->name);
    ryz_register_kernel("ternary_gemm_tl", ryz_ternary->tl_name);
    ryz_register_kernel("ternary_gemm_t5", ryz_ternary->t5_name);
}

typedef enum { LAYOUT_I2 = 0, LAYOUT_TL = 1, LAYOUT_T5 = 2 } layout_t;
static const char *const layout_name[3] = {"I2", "TL", "T5"};
static const char *const row_bytes_name[3] = {"i2_row_bytes(K)", "tl_row_bytes(K)", "t5_row_bytes(K)"};

static int64_t layout_row_bytes(layout_t l, int64_t K) {
    return l == LAYOUT_I2 ? ryz_i2_row_bytes(K) : l == LAYOUT_TL ? ryz_tl_row_bytes(K) : ryz_t5_row_bytes(K);
}
static int64_t layout_padded_k(layout_t l, int64_t K) {
    return l == LAYOUT_I2 ? ryz_i2_padded_k(K) : l == LAYOUT_TL ? ryz_tl_padded_k(K) : ryz_t5_padded_k(K);
}

/* ---- row sizes ------------------------------------------------------------- */
static int parse_k(PyObject *args, const char *fmt, long long *K) {
    if (!PyArg_ParseTuple(args, fmt, K)) return -1;
    if (*K < 0 || *K > RYZ_TERNARY_MAX_K) {
        PyErr_Format(PyExc_ValueError, "K must be between 0 and %d, got %lld", RYZ_TERNARY_MAX_K, *K);
        return -1;
    }
    return 0;
}

static PyObject *py_i2_row_bytes(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    long long K;
    if (parse_k(args, "L:i2_row_bytes", &K)) return NULL;
    return PyLong_FromLongLong(ryz_i2_row_bytes(K));
}
static PyObject *py_tl_row_bytes(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    long long K;
    if (parse_k(args, "L:tl_row_bytes", &K)) return NULL;
    return PyLong_FromLongLong(ryz_tl_row_bytes(K));
}
static PyObject *py_t5_row_bytes(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    long long K;
    if (parse_k(args, "L:t5_row_bytes", &K)) return NULL;
    return PyLong_FromLongLong(ryz_t5_row_bytes(K));
}

/* ---- pack / unpack ----------------------------------------------------------- */
static PyObject *do_pack(PyObject *args, layout_t l, const char *fmt) {
    PyObject *oo, *ot;
    if (!PyArg_ParseTuple(args, fmt, &oo, &ot)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *tr;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_U8, 2, 1)) ||
        !(tr = ryz_arr_get(&a, ot, "trits", RYZ_I8, 2, 0)))
        goto fail;
    int64_t N = ryz_dim(tr, 0), K = ryz_dim(tr, 1);
    if (ryz_check_k_limit(tr, 1, RYZ_TERNARY_MAX_K)) goto fail;
    if (ryz_check_dim(out, 0, N, "trits.shape[0]") ||
        ryz_check_dim(out, 1, layout_row_bytes(l, K), row_bytes_name[l]) ||
        ryz_check_no_overlap(out, tr))
        goto fail;
    const int8_t *t = ryz_data(tr);
    for (int64_t i = 0; i < N * K; i++)
        if (t[i] < -1 || t[i] > 1) {
            PyErr_Format(PyExc_ValueError, "trits[%lld, %lld] is %d; ternary weights must be -1, 0 or +1",
                         (long long)(i / K), (long long)(i % K), t[i]);
            goto fail;
        }
    uint8_t *o = ryz_data(out);
    int64_t rb = layout_row_bytes(l, K);
    Py_BEGIN_ALLOW_THREADS
    if (l == LAYOUT_I2)
        ryz_pack_i2(o, t, N, K);
    else if (l == LAYOUT_T5)
        for (int64_t n = 0; n < N; n++) ryz_pack_t5(o + n * rb, t + n * K, K);
    else
        ryz_pack_tl(o, t, N, K);
    Py_END_ALLOW_THREADS
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

static PyObject *do_unpack(PyObject *args, layout_t l, const char *fmt) {
    PyObject *oo, *op;
    if (!PyArg_ParseTuple(args, fmt, &oo, &op)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *pk;
    if (!(out = ryz_arr_get(&a, oo, "trits_out", RYZ_I8, 2, 1)) ||
        !(pk = ryz_arr_get(&a, op, "packed", RYZ_U8, 2, 0)))
        goto fail;
    int64_t N = ryz_dim(out, 0), K = ryz_dim(out, 1);
    if (ryz_check_k_limit(out, 1, RYZ_TERNARY_MAX_K)) goto fail;
    if (ryz_check_dim(pk, 0, N, "trits_out.shape[0]") ||
        ryz_check_dim(pk, 1, layout_row_bytes(l, K), row_bytes_name[l]) ||
        ryz_check_no_overlap(out, pk))
        goto fail;
    const uint8_t *p = ryz_data(pk);
    int64_t rb = layout_row_bytes(l, K);
    for (int64_t i = 0; i < N * rb; i++) {
        unsigned v = p[i];
        unsigned c[5];
        int bad = l == LAYOUT_I2 ? (((v & 0x55) & (v >> 1)) != 0) /* a 2-bit field is 3 */
                : l == LAYOUT_TL ? ((v & 15) > 8 || (v >> 4) > 8)
                                 : !ryz_t5_decode(c, v);         /* not one of the 243 T5 bytes */
        if (bad) {
            PyErr_Format(PyExc_ValueError, "packed[%lld, %lld] = %u is not a valid %s byte (corrupt data?)",
                         (long long)(i / rb), (long long)(i % rb), v, layout_name[l]);
            goto fail;
        }
    }
    int8_t *t = ryz_data(out);
    Py_BEGIN_ALLOW_THREADS
    if (l == LAYOUT_I2)
        ryz_unpack_i2(t, p, N, K);
    else if (l == LAYOUT_T5)
        for (int64_t n = 0; n < N; n++) ryz_unpack_t5(t + n * K, p + n * rb, K);
    else
        ryz_unpack_tl(t, p, N, K);
    Py_END_ALLOW_THREADS
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

static PyObject *py_pack_i2(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_pack(a, LAYOUT_I2, "OO:pack_i2"); }
static PyObject *py_pack_tl(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_pack(a, LAYOUT_TL, "OO:pack_tl"); }
static PyObject *py_unpack_i2(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_unpack(a, LAYOUT_I2, "OO:unpack_i2"); }
static PyObject *py_unpack_tl(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_unpack(a, LAYOUT_TL, "OO:unpack_tl"); }
static PyObject *py_pack_t5(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_pack(a, LAYOUT_T5, "OO:pack_t5"); }
static PyObject *py_unpack_t5(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_unpack(a, LAYOUT_T5, "OO:unpack_t5"); }

/* ---- GEMM -------------------------------------------------------------------- */
typedef struct {
    ryz_ternary_job job;
    layout_t layout;
    /* activation preparation */
    const float *x;       /* linear: float input [M, K] */
    const int8_t *qin;    /* matmul: int8 input [M, K] */
    int8_t *q;            /* padded [M, ldq] */
    int32_t *qsum;
    float *sx;
    int64_t K;
    int64_t bad_row;
} gemm_ctx;

static void prep_rows(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    gemm_ctx *c = vctx;
    int64_t ldq = c->job.ldq;
    for (int64_t m = b; m < e; m++) {
        int8_t *q = c->q + m * ldq;
        if (c->x) {
            if (ryz_quant->quantize_row_i8(q, c->sx + m, c->x + m * c->K, c->K) &&
                (c->bad_row < 0 || m < c->bad_row))
                __atomic_store_n(&c->bad_row, m, __ATOMIC_RELAXED);
        } else if (q != c->qin + m * c->K) {
            memcpy(q, c->qin + m * c->K, (size_t)c->K);
        }
        memset(q + c->K, 0, (size_t)(ldq - c->K));
        c->qsum[m] = ryz_quant->sum_i8(q, c->K);
    }
}

/* I2, T5: items are rows. TL: items are 64-row tiles, so every chunk and every thread's
 * range starts on a tile boundary whatever sizes the chunked runner picks. */
static void gemm_rows(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    gemm_ctx *c = vctx;
    if (c->layout == LAYOUT_I2) {
        ryz_ternary->gemm_i2(&c->job, b, e);
    } else if (c->layout == LAYOUT_T5) {
        ryz_ternary->gemm_t5(&c->job, b, e);
    } else {
        int64_t n1 = e * RYZ_TL_ROWS < c->job.N ? e * RYZ_TL_ROWS : c->job.N;
        ryz_ternary->gemm_tl(&c->job, b * RYZ_TL_ROWS, n1);
    }
}

/* int8 MACs of the largest chunk: ~5 ms of one idle core (ryz_run_chunked shrinks
 * chunks further when the machine is loaded), so Ctrl-C is seen quickly */
static int64_t chunk_rows(int64_t M, int64_t Kp) {
    double macs = ryz_active_isa() == RYZ_ISA_AVX512VNNI ? 2e9
                : ryz_active_isa() == RYZ_ISA_AVX2 ? 5e8 : 1e7;
    double per_row = (double)(M > 0 ? M : 1) * (double)(Kp > 0 ? Kp : 1);
    int64_t rows = (int64_t)(macs / per_row);
    rows = rows / 16 * 16;
    return rows < 16 ? 16 : rows;
}

/* linear != 0: out f32, input x f32 + w_mult; else out i32, input q int8 */
static PyObject *do_gemm(PyObject *args, layout_t l, int linear, const char *fmt) {
    PyObject *oo, *op, *oi;
    double w_mult = 1.0;
    int ok = linear ? PyArg_ParseTuple(args, fmt, &oo, &op, &oi, &w_mult)
                    : PyArg_ParseTuple(args, fmt, &oo, &op, &oi);
    if (!ok) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *pk, *in;
    gemm_ctx c;
    memset(&c, 0, sizeof c);
    void *buf = NULL;
    if (!(out = ryz_arr_get(&a, oo, "out", linear ? RYZ_F32 : RYZ_I32, 2, 1)) ||
        !(pk = ryz_arr_get(&a, op, "packed", RYZ_U8, 2, 0)) ||
        !(in = ryz_arr_get(&a, oi, linear ? "x" : "q", linear ? RYZ_F32 : RYZ_I8, 2, 0)))
        goto fail;
    int64_t M = ryz_dim(in, 0), K = ryz_dim(in, 1), N = ryz_dim(pk, 0);
    const char *kname = linear ? "x.shape[1]" : "q.shape[1]";
    if (K > RYZ_TERNARY_MAX_K) {
        PyErr_Format(PyExc_ValueError, "%s (K=%lld) exceeds %d", kname, (long long)K, RYZ_TERNARY_MAX_K);
        goto fail;
    }
    char rbname[64];
    snprintf(rbname, sizeof rbname, "%s for K = the input's shape[1]", row_bytes_name[l]);
    if (ryz_check_dim(pk, 1, layout_row_bytes(l, K), rbname) ||
        ryz_check_dim(out, 0, M, linear ? "x.shape[0]" : "q.shape[0]") ||
        ryz_check_dim(out, 1, N, "packed.shape[0]") ||
        ryz_check_no_overlap(out, pk) || ryz_check_no_overlap(out, in))
        goto fail;
    if (linear && !(w_mult == w_mult && w_mult - w_mult == 0.0)) {
        PyErr_SetString(PyExc_ValueError, "w_mult must be a finite float");
        goto fail;
    }
    if (M == 0 || N == 0) goto done;
    int64_t Kp = layout_padded_k(l, K);
    int64_t ldq = (Kp + 63) / 64 * 64;
    if (ldq == 0) ldq = 64;
    int reuse = !linear && ldq == K;
    size_t qbytes = reuse ? 0 : (size_t)(M * ldq);
    size_t bytes = qbytes + (size_t)M * (sizeof(int32_t) + sizeof(float)) + 64;
    buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!buf) {
        PyErr_NoMemory();
        goto fail;
    }
    c.layout = l;
    c.K = K;
    c.bad_row = -1;
    c.x = linear ? ryz_data(in) : NULL;
    c.qin = linear ? NULL : ryz_data(in);
    c.q = reuse ? (int8_t *)ryz_data(in) : (int8_t *)buf;
    c.qsum = (int32_t *)((char *)buf + qbytes);
    c.sx = (float *)(c.qsum + M);
    c.job = (ryz_ternary_job){
        .out_i = linear ? NULL : ryz_data(out), .out_f = linear ? ryz_data(out) : NULL, .ldo = N,
        .w = ryz_data(pk), .rb = layout_row_bytes(l, K), .q = c.q, .ldq = ldq, .qsum = c.qsum,
        .sx = c.sx, .w_mult = (float)w_mult, .M = M, .Kp = Kp, .N = N};
    if (ryz_run_chunked(prep_rows, &c, M, 4096, 8) != 0) goto fail;
    if (c.bad_row >= 0) {
        PyErr_Format(PyExc_ValueError, "x row %lld contains NaN or inf; cannot quantize it",
                     (long long)c.bad_row);
        goto fail;
    }
    if (l != LAYOUT_TL) {
        if (ryz_run_chunked(gemm_rows, &c, N, chunk_rows(M, Kp), 16) != 0) goto fail;
    } else {
        int64_t tiles = (N + RYZ_TL_ROWS - 1) / RYZ_TL_ROWS;
        int64_t chunk = (chunk_rows(M, Kp) + RYZ_TL_ROWS - 1) / RYZ_TL_ROWS;
        if (ryz_run_chunked(gemm_rows, &c, tiles, chunk, 1) != 0) goto fail;
    }
done:
    free(buf);
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    free(buf);
    ryz_args_release(&a);
    return NULL;
}

static PyObject *py_matmul_i2(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_I2, 0, "OOO:ternary_matmul_i2"); }
static PyObject *py_matmul_tl(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_TL, 0, "OOO:ternary_matmul_tl"); }
static PyObject *py_linear_i2(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_I2, 1, "OOOd:ternary_linear_i2"); }
static PyObject *py_linear_tl(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_TL, 1, "OOOd:ternary_linear_tl"); }
static PyObject *py_matmul_t5(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_T5, 0, "OOO:ternary_matmul_t5"); }
static PyObject *py_linear_t5(PyObject *s, PyObject *a) { RYZ_UNUSED(s); return do_gemm(a, LAYOUT_T5, 1, "OOOd:ternary_linear_t5"); }

PyDoc_STRVAR(i2_row_bytes_doc, "i2_row_bytes(K) -> int\n\nBytes of one I2-packed row of K trits "
             "(K padded to a multiple of 256, 4 trits a byte).");
PyDoc_STRVAR(tl_row_bytes_doc, "tl_row_bytes(K) -> int\n\nBytes of one TL-packed row of K trits "
             "(K padded to a multiple of 4, two 4-bit pair indices a byte).");
PyDoc_STRVAR(t5_row_bytes_doc, "t5_row_bytes(K) -> int\n\nBytes of one T5-packed row of K trits "
             "(K padded to a multiple of 320, 5 trits a byte: 1.6 bits per weight).");
PyDoc_STRVAR(pack_t5_doc, "pack_t5(out, trits) -> None\n\nPack int8 trits [N, K] into the T5 layout "
             "out uint8 [N, t5_row_bytes(K)] (ternary.h). ValueError on a value other than -1/0/+1.");
PyDoc_STRVAR(unpack_t5_doc, "unpack_t5(trits_out, packed) -> None\n\nInverse of pack_t5. ValueError on "
             "a byte pack_t5 never writes (13 of the 256 values).");
PyDoc_STRVAR(matmul_t5_doc, "ternary_matmul_t5(out, packed, q) -> None\n\nSame as ternary_matmul_i2 "
             "for the T5 (5 trits a byte) layout, packed uint8 [N, t5_row_bytes(K)].");
PyDoc_STRVAR(linear_t5_doc, "ternary_linear_t5(out, packed, x, w_mult) -> None\n\nternary_linear_i2 "
             "for the T5 layout.");
PyDoc_STRVAR(pack_i2_doc, "pack_i2(out, trits) -> None\n\nPack int8 trits [N, K] (-1/0/+1) into the I2 "
             "layout out uint8 [N, i2_row_bytes(K)]. ValueError on any other value.");
PyDoc_STRVAR(unpack_i2_doc, "unpack_i2(trits_out, packed) -> None\n\nInverse of pack_i2: trits_out int8 "
             "[N, K] from packed uint8 [N, i2_row_bytes(K)]. ValueError on a code 3.");
PyDoc_STRVAR(pack_tl_doc, "pack_tl(out, trits) -> None\n\nPack int8 trits [N, K] into the TL layout "
             "out uint8 [N, tl_row_bytes(K)].");
PyDoc_STRVAR(unpack_tl_doc, "unpack_tl(trits_out, packed) -> None\n\nInverse of pack_tl.");
PyDoc_STRVAR(matmul_i2_doc, "ternary_matmul_i2(out, packed, q) -> None\n\nout int32 [M, N] = exact "
             "sum_k t[n, k] * q[m, k] for I2-packed t (uint8 [N, i2_row_bytes(K)]) and q int8 [M, K].\n"
             "Threads split N; GIL released; Ctrl-C checked between chunks.");
PyDoc_STRVAR(matmul_tl_doc, "ternary_matmul_tl(out, packed, q) -> None\n\nSame as ternary_matmul_i2 "
             "for the TL (lookup-table) layout, packed uint8 [N, tl_row_bytes(K)].");
PyDoc_STRVAR(linear_i2_doc, "ternary_linear_i2(out, packed, x, w_mult) -> None\n\nQuantize x float32 "
             "[M, K] per row (quantize_rows_i8: q, s_x) and write out float32 [M, N] =\n"
             "float(sum_k t[n, k] q[m, k]) / s_x[m] * w_mult. ValueError if a row of x holds NaN/inf.");
PyDoc_STRVAR(linear_tl_doc, "ternary_linear_tl(out, packed, x, w_mult) -> None\n\nternary_linear_i2 "
             "for the TL layout.");

PyMethodDef ryz_ternary_methods[] = {
    {"i2_row_bytes", py_i2_row_bytes, METH_VARARGS, i2_row_bytes_doc},
    {"tl_row_bytes", py_tl_row_bytes, METH_VARARGS, tl_row_bytes_doc},
    {"pack_i2", py_pack_i2, METH_VARARGS, pack_i2_doc},
    {"unpack_i2", py_unpack_i2, METH_VARARGS, unpack_i2_doc},
    {"pack_tl", py_pack_tl, METH_VARARGS, pack_tl_doc},
    {"unpack_tl", py_unpack_tl, METH_VARARGS, unpack_tl_doc},
    {"ternary_matmul_i2", py_matmul_i2, METH_VARARGS, matmul_i2_doc},
    {"ternary_matmul_tl", py_matmul_tl, METH_VARARGS, matmul_tl_doc},
    {"ternary_linear_i2", py_linear_i2, METH_VARARGS, linear_i2_doc},
    {"ternary_linear_tl", py_linear_tl, METH_VARARGS, linear_tl_doc},
    {"t5_row_bytes", py_t5_row_bytes, METH_VARARGS, t5_row_bytes_doc},
    {"pack_t5", py_pack_t5, METH_VARARGS, pack_t5_doc},
    {"unpack_t5", py_unpack_t5, METH_VARARGS, unpack_t5_doc},
    {"ternary_matmul_t5", py_matmul_t5, METH_VARARGS, matmul_t5_doc},
    {"ternary_linear_t5", py_linear_t5, METH_VARARGS, linear_t5_doc},
    {NULL, NULL, 0, NULL},
};
