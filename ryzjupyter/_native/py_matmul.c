/* py_matmul.c: Python bindings of the matmul family and the benchmark's machine probes. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "matmul.h"
#include "ryz_py.h"

const ryz_matmul_kernels *ryz_matmul = &ryz_matmul_scalar;

void ryz_matmul_select(ryz_isa isa) {
    static const ryz_matmul_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_matmul_scalar, &ryz_matmul_avx2, &ryz_matmul_avx512};
    ryz_matmul = by_isa[isa];
    ryz_register_kernel("matmul_i8", ryz_matmul->name);
    ryz_register_kernel("matmul_f32", ryz_matmul->name);
    ryz_register_kernel("gemm_f32", ryz_matmul->gemm_name);
    ryz_register_kernel("gemm_f16", ryz_matmul->gemm_f16_name);
}

typedef struct {
    ryz_matmul_job job;
    int is_i8;
} mm_ctx;

static void mm_rows(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    mm_ctx *c = vctx;
    if (c->is_i8) ryz_matmul->i8(&c->job, b, e);
    else ryz_matmul->f32(&c->job, b, e);
}

static int64_t chunk_rows(int64_t M, int64_t K, int is_i8) {
    double macs = ryz_active_isa() == RYZ_ISA_AVX512VNNI ? (is_i8 ? 1e9 : 2e8)
                : ryz_active_isa() == RYZ_ISA_AVX2 ? (is_i8 ? 2e8 : 1e8) : 2e7;
    double per_row = (double)(M > 0 ? M : 1) * (double)(K > 0 ? K : 1);
    int64_t rows = (int64_t)(macs / per_row) / 16 * 16;
    return rows < 16 ? 16 : rows;
}

PyDoc_STRVAR(matmul_i8_doc,
"matmul_i8(out, xq, xs, wq, ws) -> None\n\n"
"out float32 [M, N] = float(sum_k xq[m, k] * wq[n, k]) / (xs[m] * ws[n]) with xq int8 [M, K],\n"
"xs float32 [M], wq int8 [N, K], ws float32 [N] (scales = 127/absmax style). The integer sum\n"
"is exact (K <= 131071). Threads split N; GIL released; Ctrl-C checked between chunks.");

static PyObject *py_matmul_i8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oxq, *oxs, *owq, *ows;
    if (!PyArg_ParseTuple(args, "OOOOO:matmul_i8", &oo, &oxq, &oxs, &owq, &ows)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *xq, *xs, *wq, *ws;
    int32_t *xsum = NULL;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) ||
        !(xq = ryz_arr_get(&a, oxq, "xq", RYZ_I8, 2, 0)) ||
        !(xs = ryz_arr_get(&a, oxs, "xs", RYZ_F32, 1, 0)) ||
        !(wq = ryz_arr_get(&a, owq, "wq", RYZ_I8, 2, 0)) ||
        !(ws = ryz_arr_get(&a, ows, "ws", RYZ_F32, 1, 0)))
        goto fail;
    int64_t M = ryz_dim(xq, 0), K = ryz_dim(xq, 1), N = ryz_dim(wq, 0);
    if (ryz_check_dim(wq, 1, K, "xq.shape[1]") || ryz_check_dim(xs, 0, M, "xq.shape[0]") ||
        ryz_check_dim(ws, 0, N, "wq.shape[0]") || ryz_check_dim(out, 0, M, "xq.shape[0]") ||
        ryz_check_dim(out, 1, N, "wq.shape[0]") || ryz_check_no_overlap(out, xq) ||
        ryz_check_no_overlap(out, xs) || ryz_check_no_overlap(out, wq) || ryz_check_no_overlap(out, ws))
        goto fail;
    if (K > RYZ_MATMUL_I8_MAX_K) {
        PyErr_Format(PyExc_ValueError, "xq.shape[1] (K=%lld) exceeds %d (int32 sums would overflow)",
                     (long long)K, RYZ_MATMUL_I8_MAX_K);
        goto fail;
    }
    if (M == 0 || N == 0) goto done;
    xsum = malloc((size_t)M * sizeof(int32_t));
    if (!xsum) {
        PyErr_NoMemory();
        goto fail;
    }
    const int8_t *x = ryz_data(xq);
    for (int64_t m = 0; m < M; m++) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; k++) s += x[m * K + k];
        xsum[m] = s;
    }
    mm_ctx c = {.is_i8 = 1};
    c.job = (ryz_matmul_job){.out = ryz_data(out), .ldo = N, .xq = x, .xs = ryz_data(xs),
                             .wq = ryz_data(wq), .ws = ryz_data(ws), .xsum = xsum, .M = M, .K = K};
    if (ryz_run_chunked(mm_rows, &c, N, chunk_rows(M, K, 1), 16) != 0) goto fail;
done:
    free(xsum);
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    free(xsum);
    ryz_args_release(&a);
    return NULL;
}

PyDoc_STRVAR(matmul_f32_doc,
"matmul_f32(out, x, w) -> None\n\n"
"out float32 [M, N] = x [M, K] @ w[N, K].T in float32 (FMA; the order of the additions\n"
"depends on the ISA: |error| <= K * 2^-24 * sum_k |x w|). Threads split N.");

static PyObject *py_matmul_f32(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *ox, *ow;
    if (!PyArg_ParseTuple(args, "OOO:matmul_f32", &oo, &ox, &ow)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x, *w;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 0)) ||
        !(w = ryz_arr_get(&a, ow, "w", RYZ_F32, 2, 0)))
        goto fail;
    int64_t M = ryz_dim(x, 0), K = ryz_dim(x, 1), N = ryz_dim(w, 0);
    if (ryz_check_dim(w, 1, K, "x.shape[1]") || ryz_check_dim(out, 0, M, "x.shape[0]") ||
        ryz_check_dim(out, 1, N, "w.shape[0]") || ryz_check_no_overlap(out, x) ||
        ryz_check_no_overlap(out, w))
        goto fail;
    if (M > 0 && N > 0) {
        mm_ctx c = {.is_i8 = 0};
        c.job = (ryz_matmul_job){.out = ryz_data(out), .ldo = N, .x = ryz_data(x), .w = ryz_data(w),
                                 .M = M, .K = K};
        if (ryz_run_chunked(mm_rows, &c, N, chunk_rows(M, K, 0), 16) != 0) goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- gemm_f32 / gemm_f16: packed-panel float GEMM with bias (the encoder's linears) --- */
static void gemm_items(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    ryz_matmul->gemm_f32((const ryz_gemm_f32_job *)vctx, b, e);
}
static void gemm_f16_items(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    ryz_matmul->gemm_f16((const ryz_gemm_f32_job *)vctx, b, e);
}

PyDoc_STRVAR(gemm_f32_doc,
"gemm_f32(out, x, wp, bias) -> None\n\n"
"out float32 [M, N] = x [M, K] @ w.T + bias, with w [N, K] packed into panels of 16 rows:\n"
"wp float32 [ceil(N / 16), K, 16], wp[p, k, c] = w[16 p + c, k] (zeros past N; see\n"
"families/bert.py pack_panels); bias float32 [N] or None. Each output sums its k terms in\n"
"increasing k order (FMA on AVX2; the AVX-512 level runs the AVX2 code). Threads split\n"
"(96-row blocks of x, panels); GIL released; Ctrl-C checked between chunks.");

PyDoc_STRVAR(gemm_f16_doc,
"gemm_f16(out, x, wh, bias) -> None\n\n"
"gemm_f32 with the panels in float16: wh float16 [ceil(N / 16), K, 16] (pack_panels, then\n"
".astype(float16)). Each weight is widened to float32 exactly and the products are summed as\n"
"gemm_f32 sums them, so the result equals gemm_f32(out, x, wh.astype(float32), bias) at the\n"
"same ISA level, with half the weight bytes read. GIL released; Ctrl-C checked between chunks.");

static PyObject *gemm_common(PyObject *args, const int f16) {
    PyObject *oo, *ox, *ow, *ob;
    if (!PyArg_ParseTuple(args, f16 ? "OOOO:gemm_f16" : "OOOO:gemm_f32", &oo, &ox, &ow, &ob)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x, *wp, *bias = NULL;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) || !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 0)) ||
        !(wp = ryz_arr_get(&a, ow, f16 ? "wh" : "wp", f16 ? RYZ_F16 : RYZ_F32, 3, 0)) ||
        (ob != Py_None && !(bias = ryz_arr_get(&a, ob, "bias", RYZ_F32, 1, 0))))
        goto fail;
    const int64_t M = ryz_dim(x, 0), K = ryz_dim(x, 1), N = ryz_dim(out, 1), P = (N + 15) / 16;
    if (ryz_check_dim(out, 0, M, "x.shape[0]") || ryz_check_dim(wp, 0, P, "ceil(out.shape[1] / 16)") ||
        ryz_check_dim(wp, 1, K, "x.shape[1]") || ryz_check_dim(wp, 2, RYZ_GEMM_NR, "16 (the panel width)") ||
        (bias && ryz_check_dim(bias, 0, N, "out.shape[1]")) || ryz_check_no_overlap(out, x) ||
        ryz_check_no_overlap(out, wp) || (bias && ryz_check_no_overlap(out, bias)))
        goto fail;
    if (M > 0 && N > 0) {
        ryz_gemm_f32_job j = {ryz_data(out), ryz_data(x), f16 ? NULL : ryz_data(wp), bias ? ryz_data(bias) : NULL,
                              M, K, N, P, K, N, f16 ? ryz_data(wp) : NULL};
        const int64_t items = (M + RYZ_GEMM_MB - 1) / RYZ_GEMM_MB * P;
        /* chunks of about 2^28 multiply-adds between Ctrl-C checks */
        const int64_t per_item = RYZ_GEMM_MB * RYZ_GEMM_NR * (K > 0 ? K : 1);
        int64_t chunk = ((int64_t)1 << 28) / per_item;
        if (chunk < 4 * (int64_t)ryz_num_threads()) chunk = 4 * (int64_t)ryz_num_threads();
        if (ryz_run_chunked(f16 ? gemm_f16_items : gemm_items, &j, items, chunk, 1) != 0) goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

static PyObject *py_gemm_f32(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return gemm_common(args, 0);
}

static PyObject *py_gemm_f16(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return gemm_common(args, 1);
}

/* ---- probes ------------------------------------------------------------------------ */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The read loop: the widest loads the CPU has, whatever level the kernels are forced to (the
 * roofline is the machine's bandwidth, not a level's). */
typedef uint64_t (*read_fn)(const void *p, int64_t bytes, int prefetch);
static uint64_t read_scalar(const void *p, int64_t bytes, int prefetch) {
    RYZ_UNUSED(prefetch);
    return ryz_probe_read_scalar(p, bytes);
}
static const struct {
    const char *name;
    ryz_isa needs;
    read_fn fn;
} read_loops[] = {{"avx512", RYZ_ISA_AVX512VNNI, ryz_probe_read_avx512},
                  {"avx2", RYZ_ISA_AVX2, ryz_probe_read_avx2},
                  {"scalar", RYZ_ISA_SCALAR, read_scalar}};
#define N_READ_LOOPS (int)(sizeof read_loops / sizeof *read_loops)
static const char *read_loop(read_fn *fn) {
    for (int i = 0; i < N_READ_LOOPS; i++)
        if (ryz_isa_supported(read_loops[i].needs)) {
            if (fn) *fn = read_loops[i].fn;
            return read_loops[i].name;
        }
    return NULL; /* not reached: scalar is always supported */
}

/* The int8 peak loop: the active level's (what its ternary kernels run), none at scalar. */
typedef int64_t (*int8_fn)(int64_t iters);
static const char *int8_loop(int8_fn *fn) {
    switch (ryz_active_isa()) {
    case RYZ_ISA_AVX512VNNI:
        if (fn) *fn = ryz_probe_vnni_avx512;
        return "avx512vnni: 16 independent vpdpbusd zmm (64 int8 MACs each)";
    case RYZ_ISA_AVX2:
        if (fn) *fn = ryz_probe_int8_avx2;
        return "avx2: vpmaddubsw ymm (32 int8 MACs) + vpaddw, 8 per vpmaddwd + vpaddd, 4 chains";
    default:
        if (fn) *fn = NULL;
        return NULL;
    }
}

typedef struct {
    const char *base;
    read_fn read;
    int8_fn int8;
    int prefetch;
    uint64_t sink[64];
    int64_t iters;
} probe_ctx;

static void read_part(void *vctx, int64_t b, int64_t e, int tid) {
    probe_ctx *c = vctx;
    /* items are 4 KiB pages */
    c->sink[tid & 63] += c->read(c->base + b * 4096, (e - b) * 4096, c->prefetch);
}

static void int8_part(void *vctx, int64_t b, int64_t e, int tid) {
    probe_ctx *c = vctx;
    for (int64_t i = b; i < e; i++) c->sink[tid & 63] += (uint64_t)c->int8(c->iters);
}

static uint64_t sink_sum(const probe_ctx *c) {
    uint64_t s = 0;
    for (int i = 0; i < 64; i++) s += c->sink[i];
    return s;
}

PyDoc_STRVAR(probe_read_doc,
"probe_read(buf, threads, loop=None) -> (seconds, bytes, checksum)\n\nSeconds to stream-read the "
"4 KiB-aligned part of uint8 array buf once, split over\n`threads` threads, with the widest loads the "
"CPU has (AVX-512, AVX2, else 64-bit\nscalar; probe_loops()['read'] says which) or the `loop` named "
"('avx512', 'avx2',\n'scalar'): read twice, with non-temporal prefetches and with plain loads, and "
"the\nfaster kept. checksum: the sum mod 2^64 of the uint64 words read (the same for\nevery loop: "
"each byte read exactly once).");
static PyObject *py_probe_read(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *ob;
    int threads;
    const char *loop = NULL;
    if (!PyArg_ParseTuple(args, "Oi|z:probe_read", &ob, &threads, &loop)) return NULL;
    read_fn fn = NULL;
    if (!loop) read_loop(&fn);
    for (int i = 0; loop && i < N_READ_LOOPS; i++)
        if (!strcmp(loop, read_loops[i].name)) {
            if (!ryz_isa_supported(read_loops[i].needs)) {
                PyErr_Format(PyExc_ValueError, "probe_read: this CPU cannot run the %s loop (it has: %s)",
                             loop, read_loop(NULL));
                return NULL;
            }
            fn = read_loops[i].fn;
        }
    if (!fn) {
        PyErr_Format(PyExc_ValueError, "probe_read: unknown loop %R (use 'avx512', 'avx2' or 'scalar')",
                     PyTuple_GET_ITEM(args, 2));
        return NULL;
    }
    ryz_args a = {0};
    ryz_arr *buf;
    if (!(buf = ryz_arr_get(&a, ob, "buf", RYZ_U8, 1, 0))) goto fail;
    uintptr_t p = (uintptr_t)ryz_data(buf), p0 = (p + 4095) & ~(uintptr_t)4095;
    int64_t len = ryz_dim(buf, 0) - (int64_t)(p0 - p);
    probe_ctx c;
    memset(&c, 0, sizeof c);
    c.base = (const char *)p0;
    c.read = fn;
    int64_t pages = len > 0 ? len / 4096 : 0;
    double best = 0.0;
    uint64_t checksum = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int pass = 0; pass < 2; pass++) {  /* prefetch, then plain loads (scalar: the same loop) */
        c.prefetch = pass == 0;
        memset(c.sink, 0, sizeof c.sink);
        const double t0 = now_s();
        ryz_parallel_for_n(read_part, &c, pages, 256, threads < 1 ? 1 : threads);
        const double dt = now_s() - t0;
        if (pass == 0 || dt < best) best = dt;
        checksum = sink_sum(&c);
    }
    Py_END_ALLOW_THREADS
    ryz_args_release(&a);
    return Py_BuildValue("(dLK)", best, (long long)(pages * 4096), (unsigned long long)checksum);
fail:
    ryz_args_release(&a);
    return NULL;
}

#define PROBE_INT8_MAX_ITERS (1LL << 20) /* the accumulators' sum stays exact in int32 */

PyDoc_STRVAR(probe_int8_doc,
"probe_int8(iters, threads) -> (seconds, macs)\n\nEach of `threads` threads runs `iters` iterations "
"of a register-only loop of 1024\nint8 multiply-adds in the instruction sequence of the active ISA "
"level's ternary\nkernels (probe_loops()['int8'] names it); seconds for all, and the multiply-adds "
"done\nas counted by the loops' accumulators (1024 x iters x threads). iters <= 2^20.\n"
"RuntimeError at the scalar level (no SIMD int8 peak).");
static PyObject *py_probe_int8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    long long iters;
    int threads;
    if (!PyArg_ParseTuple(args, "Li:probe_int8", &iters, &threads)) return NULL;
    if (iters < 1 || iters > PROBE_INT8_MAX_ITERS) {
        PyErr_Format(PyExc_ValueError, "probe_int8: iters must be in 1..%lld, got %lld",
                     PROBE_INT8_MAX_ITERS, iters);
        return NULL;
    }
    if (threads < 1) threads = 1;
    probe_ctx c;
    memset(&c, 0, sizeof c);
    if (!int8_loop(&c.int8)) {
        PyErr_SetString(PyExc_RuntimeError, "the scalar ISA level has no SIMD int8 peak to probe "
                        "(RYZ_ISA=avx2 or avx512vnni, where the CPU has it)");
        return NULL;
    }
    c.iters = iters;
    double t0, t1;
    Py_BEGIN_ALLOW_THREADS
    t0 = now_s();
    ryz_parallel_for_n(int8_part, &c, threads, 1, threads);
    t1 = now_s();
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dK)", t1 - t0, (unsigned long long)sink_sum(&c));
}

PyDoc_STRVAR(probe_loops_doc,
"probe_loops() -> dict\n\nThe loops the probes run here: 'read' (the loads of probe_read: 'avx512', "
"'avx2' or\n'scalar') and 'int8' (the active level's int8 peak loop, None at the scalar level).");
static PyObject *py_probe_loops(PyObject *self, PyObject *noargs) {
    RYZ_UNUSED(self);
    RYZ_UNUSED(noargs);
    const char *i8 = int8_loop(NULL);
    return Py_BuildValue("{s:s,s:s}", "read", read_loop(NULL), "int8", i8);
}

PyMethodDef ryz_matmul_methods[] = {
    {"matmul_i8", py_matmul_i8, METH_VARARGS, matmul_i8_doc},
    {"matmul_f32", py_matmul_f32, METH_VARARGS, matmul_f32_doc},
    {"gemm_f32", py_gemm_f32, METH_VARARGS, gemm_f32_doc},
    {"gemm_f16", py_gemm_f16, METH_VARARGS, gemm_f16_doc},
    {"probe_read", py_probe_read, METH_VARARGS, probe_read_doc},
    {"probe_int8", py_probe_int8, METH_VARARGS, probe_int8_doc},
    {"probe_loops", py_probe_loops, METH_NOARGS, probe_loops_doc},
    {NULL, NULL, 0, NULL},
};
