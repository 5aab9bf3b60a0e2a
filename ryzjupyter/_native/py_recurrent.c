/* py_recurrent.c: Python bindings of the recurrent family (Mamba conv1d + selective
 * scan, RWKV-4 WKV); numerics in recurrent.h. Each function has a sequence form
 * (token-major [T, ...] arrays, for prefill) and a _step form (one token, 1-D arrays);
 * both carry the state in place, so T steps equal one sequence call. */
#include <limits.h>

#include "recurrent.h"
#include "ryz_py.h"

const ryz_recurrent_kernels *ryz_recurrent = &ryz_recurrent_scalar;

void ryz_recurrent_select(ryz_isa isa) {
    static const ryz_recurrent_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_recurrent_scalar, &ryz_recurrent_avx2, &ryz_recurrent_avx512};
    ryz_recurrent = by_isa[isa];
    ryz_register_kernel("mamba_conv1d", ryz_recurrent->name);
    ryz_register_kernel("mamba_scan", ryz_recurrent->name);
    ryz_register_kernel("rwkv4_wkv", ryz_recurrent->name);
    ryz_register_kernel("rwkv7_wkv", ryz_recurrent == &ryz_recurrent_scalar ? "scalar" : "avx2");
}

/* The first nw arrays are written: none may overlap any other array. */
static int check_disjoint(ryz_arr **arrs, int n, int nw) {
    for (int i = 0; i < nw; i++)
        for (int j = 0; j < n; j++)
            if (j != i && arrs[j] && ryz_check_no_overlap(arrs[i], arrs[j]) != 0) return -1;
    return 0;
}

/* token-major activation: [T, D] (sequence) or [D] (step) */
static ryz_arr *get_act(ryz_args *a, PyObject *o, const char *name, int seq, int writable, int64_t T,
                        int64_t D, const char *what_T, const char *what_D) {
    ryz_arr *r = ryz_arr_get(a, o, name, RYZ_F32, seq ? 2 : 1, writable);
    if (!r) return NULL;
    if (seq && ryz_check_dim(r, 0, T, what_T)) return NULL;
    if (ryz_check_dim(r, seq ? 1 : 0, D, what_D)) return NULL;
    return r;
}

static int64_t channel_grain(int64_t T, int64_t per) {
    int64_t g = 16384 / ((T > 0 ? T : 1) * (per > 0 ? per : 1));
    return g < 16 ? 16 : (g + 15) / 16 * 16;
}
static int64_t channel_chunk(int64_t T, int64_t per) {
    /* ~10 ms of work on an idle core (ryz_run_chunked shrinks it when the machine is slower) */
    int64_t c = ((int64_t)1 << 22) / ((T > 0 ? T : 1) * (per > 0 ? per : 1));
    return c < 64 ? 64 : (c + 15) / 16 * 16;
}

/* ---- mamba conv1d ---------------------------------------------------------------- */
typedef struct {
    float *out, *state;
    const float *x, *w, *bias;
    int64_t T, D, K;
} conv_job;

static void conv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    conv_job *j = ctx;
    ryz_recurrent->conv1d(j->out, j->state, j->x, j->w, j->bias, j->T, j->D, j->K, b, e);
}

static PyObject *conv_common(PyObject *args, int seq) {
    PyObject *oo, *os, *ox, *ow, *ob;
    if (!PyArg_ParseTuple(args, seq ? "OOOOO:mamba_conv1d" : "OOOOO:mamba_conv1d_step", &oo, &os,
                          &ox, &ow, &ob))
        return NULL;
    ryz_args a = {0};
    ryz_arr *out, *st, *x, *w, *bias = NULL;
    if (!(x = ryz_arr_get(&a, ox, "x", RYZ_F32, seq ? 2 : 1, 0))) goto fail;
    int64_t T = seq ? ryz_dim(x, 0) : 1, D = ryz_dim(x, seq ? 1 : 0);
    if (!(st = ryz_arr_get(&a, os, "state", RYZ_F32, 2, 1)) || ryz_check_dim(st, 0, D, "the channels of x"))
        goto fail;
    int64_t K = ryz_dim(st, 1);
    if (!(out = get_act(&a, oo, "out", seq, 1, T, D, "x.shape[0]", "the channels of x")) ||
        !(w = ryz_arr_get(&a, ow, "w", RYZ_F32, 2, 0)) || ryz_check_dim(w, 0, D, "the channels of x") ||
        ryz_check_dim(w, 1, K, "state.shape[1] (kernel size)"))
        goto fail;
    if (ob != Py_None &&
        (!(bias = ryz_arr_get(&a, ob, "bias", RYZ_F32, 1, 0)) || ryz_check_dim(bias, 0, D, "the channels of x")))
        goto fail;
    if (K < 1 || K > RYZ_CONV_MAX_K) {
        PyErr_Format(PyExc_ValueError, "state.shape[1] (kernel size) must be 1..%d, got %lld",
                     RYZ_CONV_MAX_K, (long long)K);
        goto fail;
    }
    if (D * K > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "state is too large (%lld x %lld)", (long long)D, (long long)K);
        goto fail;
    }
    ryz_arr *all[] = {out, st, x, w, bias};
    if (check_disjoint(all, 5, 2)) goto fail;
    conv_job j = {ryz_data(out), ryz_data(st), ryz_data(x), ryz_data(w), bias ? ryz_data(bias) : NULL,
                  T, D, K};
    if (ryz_run_chunked(conv_task, &j, D, channel_chunk(T, K), channel_grain(T, K)) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyDoc_STRVAR(mamba_conv1d_doc,
"mamba_conv1d(out, state, x, w, bias) -> None\n\n"
"Mamba's causal depthwise conv1d + SiLU over T tokens (prefill), continuing from state.\n"
"out, x: float32 [T, D] (token-major); state: float32 [D, K] in/out, the last K inputs\n"
"of each channel, oldest first (zeros for a fresh sequence = transformers' left padding);\n"
"w: float32 [D, K] (conv1d.weight[:, 0, :]); bias: float32 [D] or None.\n"
"out[t, c] = silu(sum_j w[c, j] * x[t-K+1+j, c] + bias[c]), inputs before t = 0 taken\n"
"from state; on return state holds the last K inputs.");
static PyObject *py_mamba_conv1d(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return conv_common(args, 1); }

PyDoc_STRVAR(mamba_conv1d_step_doc,
"mamba_conv1d_step(out, state, x, w, bias) -> None\n\n"
"One decode step of mamba_conv1d: out, x float32 [D]; state [D, K] is shifted left by\n"
"one and x appended, then out = silu(sum(state * w, -1) + bias) (transformers' cache path).");
static PyObject *py_mamba_conv1d_step(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return conv_common(args, 0); }

/* ---- mamba selective scan ------------------------------------------------------- */
typedef struct {
    float *y, *h;
    const float *u, *dt, *A, *B, *C, *Dskip, *z;
    int64_t T, D, N;
} scan_job;

static void scan_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    scan_job *j = ctx;
    ryz_recurrent->scan(j->y, j->h, j->u, j->dt, j->A, j->B, j->C, j->Dskip, j->z, j->T, j->D, j->N, b, e);
}

static PyObject *scan_common(PyObject *args, int seq) {
    PyObject *oy, *oh, *ou, *odt, *oA, *oB, *oC, *oD, *oz;
    if (!PyArg_ParseTuple(args, seq ? "OOOOOOOOO:mamba_scan" : "OOOOOOOOO:mamba_scan_step", &oy, &oh,
                          &ou, &odt, &oA, &oB, &oC, &oD, &oz))
        return NULL;
    ryz_args a = {0};
    ryz_arr *y, *h, *u, *dt, *A, *B, *C, *Dk, *z = NULL;
    if (!(u = ryz_arr_get(&a, ou, "u", RYZ_F32, seq ? 2 : 1, 0))) goto fail;
    int64_t T = seq ? ryz_dim(u, 0) : 1, D = ryz_dim(u, seq ? 1 : 0);
    if (!(h = ryz_arr_get(&a, oh, "h", RYZ_F32, 2, 1)) || ryz_check_dim(h, 0, D, "the channels of u"))
        goto fail;
    int64_t N = ryz_dim(h, 1);
    if (!(y = get_act(&a, oy, "y", seq, 1, T, D, "u.shape[0]", "the channels of u")) ||
        !(dt = get_act(&a, odt, "dt", seq, 0, T, D, "u.shape[0]", "the channels of u")) ||
        !(A = ryz_arr_get(&a, oA, "A", RYZ_F32, 2, 0)) || ryz_check_dim(A, 0, D, "the channels of u") ||
        ryz_check_dim(A, 1, N, "h.shape[1] (state size)") ||
        !(B = get_act(&a, oB, "B", seq, 0, T, N, "u.shape[0]", "h.shape[1] (state size)")) ||
        !(C = get_act(&a, oC, "C", seq, 0, T, N, "u.shape[0]", "h.shape[1] (state size)")) ||
        !(Dk = ryz_arr_get(&a, oD, "D", RYZ_F32, 1, 0)) || ryz_check_dim(Dk, 0, D, "the channels of u"))
        goto fail;
    if (oz != Py_None && !(z = get_act(&a, oz, "z", seq, 0, T, D, "u.shape[0]", "the channels of u")))
        goto fail;
    ryz_arr *all[] = {y, h, u, dt, A, B, C, Dk, z};
    if (check_disjoint(all, 9, 2)) goto fail;
    scan_job j = {ryz_data(y), ryz_data(h), ryz_data(u), ryz_data(dt), ryz_data(A), ryz_data(B),
                  ryz_data(C), ryz_data(Dk), z ? ryz_data(z) : NULL, T, D, N};
    if (ryz_run_chunked(scan_task, &j, D, channel_chunk(T, N), channel_grain(T, N)) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyDoc_STRVAR(mamba_scan_doc,
"mamba_scan(y, h, u, dt, A, B, C, D, z) -> None\n\n"
"Mamba selective scan over T tokens (prefill), continuing from state h, as transformers'\n"
"slow path: y, u, dt, z float32 [T, Di]; h float32 [Di, N] in/out (zeros to start);\n"
"A float32 [Di, N] = -exp(A_log); B, C float32 [T, N]; D float32 [Di]; z may be None.\n"
"dt is dt_proj's output (bias included): softplus is applied here. Per token t, channel c:\n"
"d = softplus(dt); h = exp(A*d)*h + (d*B)*u; y = (h @ C + u*D) * silu(z).");
static PyObject *py_mamba_scan(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return scan_common(args, 1); }

PyDoc_STRVAR(mamba_scan_step_doc,
"mamba_scan_step(y, h, u, dt, A, B, C, D, z) -> None\n\n"
"One decode step of mamba_scan: y, u, dt, z float32 [Di]; B, C float32 [N]; h [Di, N] in/out.");
static PyObject *py_mamba_scan_step(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return scan_common(args, 0); }

/* ---- RWKV-4 WKV ------------------------------------------------------------------------ */
typedef struct {
    float *out, *aa, *bb, *pp;
    const float *k, *v, *decay, *first;
    int64_t T, A;
} wkv_job;

static void wkv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    wkv_job *j = ctx;
    ryz_recurrent->wkv(j->out, j->aa, j->bb, j->pp, j->k, j->v, j->decay, j->first, j->T, j->A, b, e);
}

static PyObject *wkv_common(PyObject *args, int seq) {
    PyObject *oo, *oa, *ob, *op, *ok, *ov, *od, *of;
    if (!PyArg_ParseTuple(args, seq ? "OOOOOOOO:rwkv4_wkv" : "OOOOOOOO:rwkv4_wkv_step", &oo, &oa, &ob,
                          &op, &ok, &ov, &od, &of))
        return NULL;
    ryz_args a = {0};
    ryz_arr *out, *aa, *bb, *pp, *k, *v, *dec, *fir;
    if (!(k = ryz_arr_get(&a, ok, "k", RYZ_F32, seq ? 2 : 1, 0))) goto fail;
    int64_t T = seq ? ryz_dim(k, 0) : 1, A = ryz_dim(k, seq ? 1 : 0);
    if (!(out = get_act(&a, oo, "out", seq, 1, T, A, "k.shape[0]", "the channels of k")) ||
        !(aa = get_act(&a, oa, "aa", 0, 1, 1, A, "", "the channels of k")) ||
        !(bb = get_act(&a, ob, "bb", 0, 1, 1, A, "", "the channels of k")) ||
        !(pp = get_act(&a, op, "pp", 0, 1, 1, A, "", "the channels of k")) ||
        !(v = get_act(&a, ov, "v", seq, 0, T, A, "k.shape[0]", "the channels of k")) ||
        !(dec = get_act(&a, od, "time_decay", 0, 0, 1, A, "", "the channels of k")) ||
        !(fir = get_act(&a, of, "time_first", 0, 0, 1, A, "", "the channels of k")))
        goto fail;
    ryz_arr *all[] = {out, aa, bb, pp, k, v, dec, fir};
    if (check_disjoint(all, 8, 4)) goto fail;
    wkv_job j = {ryz_data(out), ryz_data(aa), ryz_data(bb), ryz_data(pp), ryz_data(k), ryz_data(v),
                 ryz_data(dec), ryz_data(fir), T, A};
    if (ryz_run_chunked(wkv_task, &j, A, channel_chunk(T, 8), channel_grain(T, 8)) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyDoc_STRVAR(rwkv4_wkv_doc,
"rwkv4_wkv(out, aa, bb, pp, k, v, time_decay, time_first) -> None\n\n"
"RWKV-4 WKV over T tokens with the max trick, exactly as transformers'\n"
"rwkv_linear_attention_cpu in float32: out, k, v float32 [T, A]; state aa, bb, pp\n"
"float32 [A] in/out (fresh: 0, 0, -1e38); time_decay (raw parameter: w = -exp(time_decay)\n"
"is taken here) and time_first float32 [A].");
static PyObject *py_rwkv4_wkv(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return wkv_common(args, 1); }

PyDoc_STRVAR(rwkv4_wkv_step_doc,
"rwkv4_wkv_step(out, aa, bb, pp, k, v, time_decay, time_first) -> None\n\n"
"One decode step of rwkv4_wkv: out, k, v float32 [A].");
static PyObject *py_rwkv4_wkv_step(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return wkv_common(args, 0); }

/* ---- rwkv7 wkv ------------------------------------------------------------------- */
typedef struct {
    float *out, *S;
    const float *r, *w, *k, *v, *a, *b;
    int64_t T, H, N;
} wkv7_job;

static void wkv7_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    wkv7_job *j = ctx;
    ryz_recurrent->wkv7(j->out, j->S, j->r, j->w, j->k, j->v, j->a, j->b, j->T, j->H, j->N, b, e);
}

PyDoc_STRVAR(rwkv7_wkv_doc,
"rwkv7_wkv(out, S, r, w, k, v, a, b) -> None\n\n"
"RWKV-7 state update over T tokens (recurrent.h): S float32 [H, N, N] in/out (rows: value\n"
"index); out, r, w, k, v, a, b float32 [T, H*N] token-major; per head and token\n"
"S = S diag(w) + (S a) b^T + v k^T, out = S r. Threads split the heads.");

static PyObject *py_rwkv7_wkv(PyObject *s, PyObject *args) {
    RYZ_UNUSED(s);
    PyObject *oo, *oS, *orr, *ow, *ok, *ov, *oa, *ob;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:rwkv7_wkv", &oo, &oS, &orr, &ow, &ok, &ov, &oa, &ob)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *S, *r, *w, *k, *v, *aa, *bb;
    if (!(S = ryz_arr_get(&a, oS, "S", RYZ_F32, 3, 1)) || !(r = ryz_arr_get(&a, orr, "r", RYZ_F32, 2, 0)))
        goto fail;
    int64_t H = ryz_dim(S, 0), N = ryz_dim(S, 1), T = ryz_dim(r, 0);
    if (ryz_check_dim(S, 2, N, "S.shape[1]") || ryz_check_dim(r, 1, H * N, "H * N (from S)")) goto fail;
    if (!(out = get_act(&a, oo, "out", 1, 1, T, H * N, "r.shape[0]", "H * N (from S)")) ||
        !(w = get_act(&a, ow, "w", 1, 0, T, H * N, "r.shape[0]", "H * N (from S)")) ||
        !(k = get_act(&a, ok, "k", 1, 0, T, H * N, "r.shape[0]", "H * N (from S)")) ||
        !(v = get_act(&a, ov, "v", 1, 0, T, H * N, "r.shape[0]", "H * N (from S)")) ||
        !(aa = get_act(&a, oa, "a", 1, 0, T, H * N, "r.shape[0]", "H * N (from S)")) ||
        !(bb = get_act(&a, ob, "b", 1, 0, T, H * N, "r.shape[0]", "H * N (from S)")))
        goto fail;
    ryz_arr *all[] = {out, S, r, w, k, v, aa, bb};
    if (check_disjoint(all, 8, 2)) goto fail;
    wkv7_job j = {ryz_data(out), ryz_data(S), ryz_data(r), ryz_data(w), ryz_data(k), ryz_data(v),
                  ryz_data(aa), ryz_data(bb), T, H, N};
    int64_t per_head = (T > 0 ? T : 1) * 3 * N * N, heads = ((int64_t)1 << 22) / (per_head > 0 ? per_head : 1);
    if (H > 0 && ryz_run_chunked(wkv7_task, &j, H, heads < 1 ? 1 : heads, 1) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_recurrent_methods[] = {
    {"rwkv7_wkv", py_rwkv7_wkv, METH_VARARGS, rwkv7_wkv_doc},
    {"mamba_conv1d", py_mamba_conv1d, METH_VARARGS, mamba_conv1d_doc},
    {"mamba_conv1d_step", py_mamba_conv1d_step, METH_VARARGS, mamba_conv1d_step_doc},
    {"mamba_scan", py_mamba_scan, METH_VARARGS, mamba_scan_doc},
    {"mamba_scan_step", py_mamba_scan_step, METH_VARARGS, mamba_scan_step_doc},
    {"rwkv4_wkv", py_rwkv4_wkv, METH_VARARGS, rwkv4_wkv_doc},
    {"rwkv4_wkv_step", py_rwkv4_wkv_step, METH_VARARGS, rwkv4_wkv_step_doc},
    {NULL, NULL, 0, NULL},
};
