/* py_ops.c: Python bindings of the float ops family (rmsnorm, rope, softmax,
 * silu, relu2, mul, add). See ops.h for the numerics. */
#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "ryz_py.h"

const ryz_ops_kernels *ryz_ops = &ryz_ops_scalar;

void ryz_ops_select(ryz_isa isa) {
    static const ryz_ops_kernels *const by_isa[RYZ_ISA_COUNT] = {&ryz_ops_scalar, &ryz_ops_avx2,
                                                                 &ryz_ops_avx512};
    ryz_ops = by_isa[isa];
    static const char *const names[] = {"rmsnorm", "rope", "rope_apply", "softmax", "silu", "relu2", "mul", "add"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) ryz_register_kernel(names[i], ryz_ops->name);
    ryz_register_kernel("rope_table", "scalar"); /* one plain C version for every level */
    ryz_register_kernel("layernorm", ryz_ops->encoder_name);
    ryz_register_kernel("gelu", ryz_ops->encoder_name);
}

/* ---- element-wise ----------------------------------------------------------- */
enum { EW_SILU, EW_RELU2, EW_MUL, EW_ADD, EW_GELU };
typedef struct {
    int op;
    float *out;
    const float *a, *b;
} ew_job;

static void ew_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    ew_job *j = ctx;
    switch (j->op) {
    case EW_SILU: ryz_ops->silu(j->out + b, j->a + b, e - b); break;
    case EW_RELU2: ryz_ops->relu2(j->out + b, j->a + b, e - b); break;
    case EW_MUL: ryz_ops->mul(j->out + b, j->a + b, j->b + b, e - b); break;
    case EW_ADD: ryz_ops->add(j->out + b, j->a + b, j->b + b, e - b); break;
    case EW_GELU: ryz_ops->gelu(j->out + b, j->a + b, e - b); break;
    }
}

#define EW_GRAIN 16384          /* elements per thread share: below this, one thread */
#define EW_CHUNK (1 << 22)      /* elements between Ctrl-C checks */

static PyObject *ew_unary(PyObject *args, int op, const char *fmt) {
    PyObject *oo, *ox;
    if (!PyArg_ParseTuple(args, fmt, &oo, &ox)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, -1, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, -1, 0)) || ryz_check_same_shape(out, x) ||
        ryz_check_alias_exact(out, x))
        goto fail;
    ew_job j = {op, ryz_data(out), ryz_data(x), NULL};
    if (ryz_run_chunked(ew_task, &j, ryz_size(x), EW_CHUNK, EW_GRAIN) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

static PyObject *ew_binary(PyObject *args, int op, const char *fmt) {
    PyObject *oo, *oa, *ob;
    if (!PyArg_ParseTuple(args, fmt, &oo, &oa, &ob)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x, *y;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, -1, 1)) ||
        !(x = ryz_arr_get(&a, oa, "a", RYZ_F32, -1, 0)) ||
        !(y = ryz_arr_get(&a, ob, "b", RYZ_F32, -1, 0)) || ryz_check_same_shape(out, x) ||
        ryz_check_same_shape(y, x) || ryz_check_alias_exact(out, x) || ryz_check_alias_exact(out, y))
        goto fail;
    ew_job j = {op, ryz_data(out), ryz_data(x), ryz_data(y)};
    if (ryz_run_chunked(ew_task, &j, ryz_size(x), EW_CHUNK, EW_GRAIN) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyDoc_STRVAR(silu_doc, "silu(out, x) -> None\n\nout = x / (1 + exp(-x)) element-wise (float32, same "
                       "shape, any rank).\nout may be x itself (in place); partial overlap is refused.");
static PyObject *py_silu(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return ew_unary(args, EW_SILU, "OO:silu"); }

PyDoc_STRVAR(relu2_doc, "relu2(out, x) -> None\n\nout = max(x, 0)**2 element-wise (BitNet's squared "
                        "ReLU; NaN stays NaN).\nout may be x itself (in place).");
static PyObject *py_relu2(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return ew_unary(args, EW_RELU2, "OO:relu2"); }

PyDoc_STRVAR(gelu_doc, "gelu(out, x) -> None\n\nout = x * 0.5 * (1 + erf(x / sqrt(2))) element-wise (the exact "
                       "GELU of BERT;\nfloat32, same shape, any rank). out may be x itself (in place).");
static PyObject *py_gelu(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return ew_unary(args, EW_GELU, "OO:gelu"); }

PyDoc_STRVAR(mul_doc, "mul(out, a, b) -> None\n\nout = a * b element-wise (float32, same shapes).\n"
                      "out may be exactly a or b (in place); partial overlap is refused.");
static PyObject *py_mul(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return ew_binary(args, EW_MUL, "OOO:mul"); }

PyDoc_STRVAR(add_doc, "add(out, a, b) -> None\n\nout = a + b element-wise (float32, same shapes).\n"
                      "out may be exactly a or b (in-place residual add); partial overlap is refused.");
static PyObject *py_add(PyObject *s, PyObject *args) { RYZ_UNUSED(s); return ew_binary(args, EW_ADD, "OOO:add"); }

/* ---- row-wise ops: rmsnorm, layernorm, softmax --------------------------------- */
/* Run `fn` over M rows of D floats: a thread takes about 4096 floats at a time (one row at
 * least) and Ctrl-C is checked every 1024 such shares; rows of length 0 need nothing. */
static int run_rows(ryz_task_fn fn, void *job, int64_t M, int64_t D) {
    if (D <= 0) return 0;
    const int64_t grain = D >= 4096 ? 1 : 4096 / D;
    return ryz_run_chunked(fn, job, M, grain * 1024, grain);
}

/* ---- rmsnorm ------------------------------------------------------------------ */
typedef struct {
    float *out;
    const float *x, *w;
    int64_t D;
    float eps;
} rms_job;

static void rms_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rms_job *j = ctx;
    for (int64_t m = b; m < e; m++) ryz_ops->rmsnorm_row(j->out + m * j->D, j->x + m * j->D, j->w, j->D, j->eps);
}

PyDoc_STRVAR(rmsnorm_doc,
"rmsnorm(out, x, w, eps) -> None\n\n"
"Row-wise RMSNorm as transformers computes it in float32: for each row of x [M, D],\n"
"out = (x * (1 / sqrt(mean(x**2) + eps))) * w, with w float32 [D] and eps >= 0.\n"
"out [M, D] may be x itself (in place); partial overlap is refused.");
static PyObject *py_rmsnorm(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *ox, *ow, *oeps;
    if (!PyArg_ParseTuple(args, "OOOO:rmsnorm", &oo, &ox, &ow, &oeps)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x, *w;
    double eps;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 0)) ||
        !(w = ryz_arr_get(&a, ow, "w", RYZ_F32, 1, 0)) || ryz_check_same_shape(out, x) ||
        ryz_check_dim(w, 0, ryz_dim(x, 1), "x.shape[1]") || ryz_check_alias_exact(out, x) ||
        ryz_check_no_overlap(out, w) || ryz_get_finite(oeps, "eps", &eps) ||
        ryz_check_min(eps, "eps", 0, 0))
        goto fail;
    int64_t M = ryz_dim(x, 0), D = ryz_dim(x, 1);
    rms_job j = {ryz_data(out), ryz_data(x), ryz_data(w), D, (float)eps};
    if (run_rows(rms_task, &j, M, D) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- layernorm ---------------------------------------------------------------- */
typedef struct {
    float *out;
    const float *x, *w, *b;
    int64_t D;
    float eps;
} ln_job;

static void ln_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    ln_job *j = ctx;
    for (int64_t m = b; m < e; m++)
        ryz_ops->layernorm_row(j->out + m * j->D, j->x + m * j->D, j->w, j->b, j->D, j->eps);
}

PyDoc_STRVAR(layernorm_doc,
"layernorm(out, x, w, b, eps) -> None\n\n"
"Row-wise LayerNorm in float32: for each row of x [M, D], mu = mean(x),\n"
"var = mean((x - mu)**2), out = (x - mu) / sqrt(var + eps) * w + b, with w, b float32 [D]\n"
"and eps > 0. out [M, D] may be x itself (in place); partial overlap is refused.");
static PyObject *py_layernorm(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *ox, *ow, *ob, *oeps;
    if (!PyArg_ParseTuple(args, "OOOOO:layernorm", &oo, &ox, &ow, &ob, &oeps)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *x, *w, *bb;
    double eps;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 0)) ||
        !(w = ryz_arr_get(&a, ow, "w", RYZ_F32, 1, 0)) ||
        !(bb = ryz_arr_get(&a, ob, "b", RYZ_F32, 1, 0)) || ryz_check_same_shape(out, x) ||
        ryz_check_dim(w, 0, ryz_dim(x, 1), "x.shape[1]") || ryz_check_dim(bb, 0, ryz_dim(x, 1), "x.shape[1]") ||
        ryz_check_alias_exact(out, x) || ryz_check_no_overlap(out, w) || ryz_check_no_overlap(out, bb) ||
        ryz_get_finite(oeps, "eps", &eps) || ryz_check_min(eps, "eps", 0, 1))
        goto fail;
    int64_t M = ryz_dim(x, 0), D = ryz_dim(x, 1);
    ln_job j = {ryz_data(out), ryz_data(x), ryz_data(w), ryz_data(bb), D, (float)eps};
    if (run_rows(ln_task, &j, M, D) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- rope ------------------------------------------------------------------------ *
 * rope(x, positions, theta) computes its cos/sin table row by row and applies it; for many
 * calls at the same positions (every layer's q and k of a prefill chunk) rope_table builds the
 * table once and rope_apply applies it: the same floats, so the same results. */

/* inv_freq[i] = 1 / theta^(2i/hd), i < hd/2. torch: 1.0 / (base ** (torch.arange(0, dim, 2,
 * dtype=torch.int64).float() / dim)), all float32. The power is rounded correctly (double pow,
 * one rounding to float); torch's vectorised pow (Sleef, 1 ulp) differs by one ulp in ~1% of
 * entries (measured with torch 2.13 over hd 2..256 and four thetas); glibc powf differs from
 * torch as often. */
static void rope_inv_freq(float *inv, double theta, int64_t hd) {
    for (int64_t i = 0; i < hd / 2; i++) {
        float expo = (float)(2 * i) / (float)hd;
        inv[i] = 1.0f / (float)pow((double)(float)theta, (double)expo);
    }
}

/* cs[0..half) = cos, cs[half..hd) = sin of float32(pos) * inv_freq, as transformers: the
 * float32 angle, cos/sin computed in double and rounded once (within torch's 1 ulp) */
static void rope_row_table(float *cs, int64_t pos, const float *inv, int64_t half) {
    const float p = (float)pos;
    for (int64_t i = 0; i < half; i++) {
        float f = p * inv[i];
        cs[i] = (float)cos((double)f);
        cs[half + i] = (float)sin((double)f);
    }
}

typedef struct {
    float *x;              /* rope, rope_apply: [M, H, hd]; NULL for rope_table */
    const int64_t *pos;    /* rope, rope_table */
    const float *inv_freq; /* [hd/2] (rope, rope_table) */
    float *cs;             /* rope_table: out [M, hd]; rope_apply: in; rope: NULL */
    int64_t H, hd;
    int failed;            /* scratch allocation failed */
} rope_job;

static void rope_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rope_job *j = ctx;
    const int64_t half = j->hd / 2;
    if (j->cs) {
        for (int64_t m = b; m < e; m++) {
            if (j->x)
                ryz_ops->rope_row(j->x + m * j->H * j->hd, j->H, j->hd, j->cs + m * j->hd);
            else
                rope_row_table(j->cs + m * j->hd, j->pos[m], j->inv_freq, half);
        }
        return;
    }
    float *cs = malloc(sizeof(float) * (size_t)(2 * half + 1));
    if (!cs) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t m = b; m < e; m++) {
        rope_row_table(cs, j->pos[m], j->inv_freq, half);
        ryz_ops->rope_row(j->x + m * j->H * j->hd, j->H, j->hd, cs);
    }
    free(cs);
}

/* positions int64 [M], all >= 0 (0, or -1 with the exception set) */
static int check_positions(const int64_t *p, int64_t M) {
    for (int64_t m = 0; m < M; m++)
        if (p[m] < 0) {
            PyErr_Format(PyExc_ValueError, "positions[%lld] is %lld; positions must be >= 0",
                         (long long)m, (long long)p[m]);
            return -1;
        }
    return 0;
}

/* hd, the head_dim (hd_name: where it comes from), must be even: rotate_half pairs its halves */
static int check_even_hd(int64_t hd, const char *hd_name) {
    if (hd % 2 != 0) {
        PyErr_Format(PyExc_ValueError, "%s (head_dim) must be even for rotate_half, got %lld", hd_name,
                     (long long)hd);
        return -1;
    }
    return 0;
}

static int check_theta_hd(double theta, int64_t hd, const char *hd_name) {
    return ryz_check_min(theta, "theta", 0, 1) || check_even_hd(hd, hd_name) ? -1 : 0;
}

static int run_rope(rope_job *j, int64_t M) {
    const int64_t rowf = j->x ? j->H * j->hd : j->hd;
    const int64_t grain = rowf >= 2048 ? 1 : 2048 / (rowf > 0 ? rowf : 1);
    if (ryz_run_chunked(rope_task, j, M, grain * 256, grain) != 0) return -1;
    if (j->failed) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(rope_doc,
"rope(x, positions, theta) -> None\n\n"
"Rotary embedding in place, half-split (transformers' rotate_half) layout: x float32\n"
"[M, H, hd] (hd even), positions int64 [M] (>= 0), theta > 0 (rope_theta).\n"
"inv_freq[i] = 1 / theta**(2i/hd) and freqs = float32(pos) * inv_freq, all float32\n"
"as torch computes them; then x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin.\n"
"Equal to rope_apply(x, cs) with cs filled by rope_table(cs, positions, theta).");
/* rope (table = 0: x [M, H, hd] in place) and rope_table (table = 1: cs [M, hd] out): the same
 * checks, inv_freq and rows */
static PyObject *rope_common(PyObject *args, int table) {
    PyObject *oo, *op, *ot;
    if (!PyArg_ParseTuple(args, table ? "OOO:rope_table" : "OOO:rope", &oo, &op, &ot)) return NULL;
    ryz_args a = {0};
    ryz_arr *o, *pos;
    double theta;
    float *inv = NULL;
    if (!(o = ryz_arr_get(&a, oo, table ? "cs" : "x", RYZ_F32, table ? 2 : 3, 1)) ||
        !(pos = ryz_arr_get(&a, op, "positions", RYZ_I64, 1, 0)) ||
        ryz_check_dim(pos, 0, ryz_dim(o, 0), table ? "cs.shape[0]" : "x.shape[0]") ||
        ryz_check_no_overlap(o, pos) || ryz_get_finite(ot, "theta", &theta))
        goto fail;
    const int64_t M = ryz_dim(o, 0), H = table ? 1 : ryz_dim(o, 1), hd = ryz_dim(o, table ? 1 : 2);
    if (check_theta_hd(theta, hd, table ? "cs.shape[1]" : "x.shape[2]") || check_positions(ryz_data(pos), M))
        goto fail;
    if (M == 0 || H == 0 || hd == 0) goto done;
    if (!(inv = malloc(sizeof(float) * (size_t)(hd / 2)))) {
        PyErr_NoMemory();
        goto fail;
    }
    rope_inv_freq(inv, theta, hd);
    rope_job j = {table ? NULL : ryz_data(o), ryz_data(pos), inv, table ? ryz_data(o) : NULL, table ? 0 : H, hd, 0};
    if (run_rope(&j, M)) goto fail;
done:
    free(inv);
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    free(inv);
    ryz_args_release(&a);
    return NULL;
}

static PyObject *py_rope(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return rope_common(args, 0);
}

PyDoc_STRVAR(rope_table_doc,
"rope_table(cs, positions, theta) -> None\n\n"
"The cos/sin table rope uses: cs float32 [M, hd] (hd even), row m = cos(f) | sin(f) with\n"
"f = float32(positions[m]) * inv_freq (see rope); positions int64 [M] (>= 0), theta > 0.");
static PyObject *py_rope_table(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return rope_common(args, 1);
}

PyDoc_STRVAR(rope_apply_doc,
"rope_apply(x, cs) -> None\n\n"
"rope with a table from rope_table: x float32 [M, H, hd] in place, cs float32 [M, hd].");
static PyObject *py_rope_apply(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *ox, *oc;
    if (!PyArg_ParseTuple(args, "OO:rope_apply", &ox, &oc)) return NULL;
    ryz_args a = {0};
    ryz_arr *x, *cs;
    if (!(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 3, 1)) || !(cs = ryz_arr_get(&a, oc, "cs", RYZ_F32, 2, 0)) ||
        ryz_check_dim(cs, 0, ryz_dim(x, 0), "x.shape[0]") || ryz_check_dim(cs, 1, ryz_dim(x, 2), "x.shape[2]") ||
        ryz_check_no_overlap(x, cs) || check_even_hd(ryz_dim(x, 2), "x.shape[2]"))
        goto fail;
    int64_t M = ryz_dim(x, 0), H = ryz_dim(x, 1), hd = ryz_dim(x, 2);
    if (M > 0 && H > 0 && hd > 0) {
        rope_job j = {ryz_data(x), NULL, NULL, ryz_data(cs), H, hd, 0};
        if (run_rope(&j, M)) goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- softmax ---------------------------------------------------------------------- */
typedef struct {
    float *x;
    int64_t N;
} sm_job;

static void sm_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    sm_job *j = ctx;
    for (int64_t m = b; m < e; m++) ryz_ops->softmax_row(j->x + m * j->N, j->N);
}

PyDoc_STRVAR(softmax_doc,
"softmax(x) -> None\n\n"
"Numerically stable softmax of each row of x (float32 [M, N]) in place, in float32.\n"
"-inf entries get probability 0. A row that is entirely -inf becomes all zeros\n"
"(torch would give NaN); a row holding NaN or +inf becomes NaN.");
static PyObject *py_softmax(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *ox;
    if (!PyArg_ParseTuple(args, "O:softmax", &ox)) return NULL;
    ryz_args a = {0};
    ryz_arr *x;
    if (!(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 2, 1))) goto fail;
    int64_t M = ryz_dim(x, 0), N = ryz_dim(x, 1);
    sm_job j = {ryz_data(x), N};
    if (run_rows(sm_task, &j, M, N) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_ops_methods[] = {
    {"rmsnorm", py_rmsnorm, METH_VARARGS, rmsnorm_doc},
    {"rope", py_rope, METH_VARARGS, rope_doc},
    {"rope_table", py_rope_table, METH_VARARGS, rope_table_doc},
    {"rope_apply", py_rope_apply, METH_VARARGS, rope_apply_doc},
    {"softmax", py_softmax, METH_VARARGS, softmax_doc},
    {"silu", py_silu, METH_VARARGS, silu_doc},
    {"relu2", py_relu2, METH_VARARGS, relu2_doc},
    {"mul", py_mul, METH_VARARGS, mul_doc},
    {"add", py_add, METH_VARARGS, add_doc},
    {"layernorm", py_layernorm, METH_VARARGS, layernorm_doc},
    {"gelu", py_gelu, METH_VARARGS, gelu_doc},
    {NULL, NULL, 0, NULL},
};
