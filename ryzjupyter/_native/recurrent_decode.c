/* recurrent_decode.c: the fused decode step of the recurrent families (Mamba, Mamba-2, RWKV-4,
 * RWKV-7): ONE C call runs every layer of one token and the head, with the GIL released once.
 * No ISA code of its own: it composes the other families' dispatch tables (matmul f32, the
 * layer family's streaming int8 GEMV, quant, ops, recurrent) to the same numbers as the op-by-op
 * prefill with T = 1, so a decode step gives the same numbers as a one-token prefill.
 *
 * A family describes its step once, at load, as a straight-line program (recurrent.py builds it
 * from the same block functions' math): ops over operands that are model weights (checked and
 * pinned when the plan is made), slices of a scratch buffer the plan owns, slices of the state
 * arrays the call passes (a session's), or the logits. recurrent_plan checks every operand's
 * extent against its array before any op can run; recurrent_decode checks the state arrays'
 * sizes against the plan and then only follows the program.
 *
 * Program rows (int64 [n_ops, RD_COLS]): op, then RD_MAXOPS operands as (kind, ref) pairs, then
 * RD_MAXDIMS dims; a float per op (eps / scale). kind: 0 none, 1 weight (ref = index in the
 * weight list), 2 scratch (ref = float offset), 3 state (ref = index << 32 | float offset),
 * 4 logits (ref = float offset). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "matmul.h"
#include "ops.h"
#include "quant.h"
#include "recurrent.h"
#include "ryz_py.h"

enum {
    RD_EMBED = 1,   /* out[D] = table[token] ; dims D (table [V, D]: dims V in d1) */
    RD_GEMV,        /* out[N] = W[N, K] x[K] ; dims N, K */
    RD_GEMV_I8,     /* out[N] = (Wq[N, K] . q(x)) / (s(x) ws[N]) ; dims N, K ; operands out, x, wq, ws */
    RD_ADD,         /* out = a + b ; dims n */
    RD_RMSNORM,     /* rows of D: out = rmsnorm(x) * w ; dims D, rows ; f eps */
    RD_LAYERNORM,   /* out = (x - mean) / sqrt(var + eps) * w + b ; dims D ; f eps */
    RD_CONV_STEP,   /* Mamba conv step: out[D], state[D, K], x[D], w[D, K], bias[D]|none ; dims D, K */
    RD_SCAN_STEP,   /* Mamba scan step: y, h[D, N], u, dt, A[D, N], B[N], C[N], Dskip, z|none ; dims D, N */
    RD_WKV_STEP,    /* RWKV-4: out, aa, bb, pp, k, v, decay, first ; dims A */
    RD_SILU,        /* out = silu(x) ; dims n */
    RD_MUL,         /* out = a * b ; dims n */
    RD_SIGMOID,     /* out = 1 / (1 + exp(-x)) ; dims n */
    RD_RELU2,       /* out = max(x, 0)^2 ; dims n */
    RD_LERP,        /* out = x * m + s * m1 ; operands out, x, s, m, m1 ; dims n */
    RD_COPY,        /* out = x ; dims n */
    RD_SCALE,       /* out = x * f ; dims n */
    RD_HEAD_BCAST,  /* out[h P + p] = x[h] + b[h] ; dims H, P */
    RD_WKV7_STEP,   /* RWKV-7 (recurrent.h wkv7): out[H N], S[H, N, N], r, w, k, v, a, b [H N] ; dims H, N */
    RD_TANH,        /* out = tanh(x) ; dims n */
    RD_L2NORM,      /* rows of D: out = x / max(|x|, 1e-12) ; dims D, rows */
    RD_GROUPNORM,   /* rows of D (groups): layernorm each, then * w + b over all ; dims D, rows ; f eps */
    RD_SUB,         /* out = a - b ; dims n */
    RD_MIX,         /* out = x + d * m ; operands out, x, d, m ; dims n */
    RD_DECAY7,      /* out = exp(-0.606531 * sigmoid(x + w0)) ; operands out, x, w0 ; dims n */
    RD_BONUS7,      /* out[h, :] += (sum_j r k rk [h, j]) v[h, :] ; operands out, r, k, rk, v ; dims H, N */
    RD_FMA,         /* out = a + (b - a) * c ; dims n */
    RD_NOPS
};

#define RD_MAXOPS 10
#define RD_MAXDIMS 4
#define RD_COLS (1 + 2 * RD_MAXOPS + RD_MAXDIMS)
#define RD_MAXSTATES 4096
#define RD_MAXSCRATCH ((int64_t)1 << 28) /* floats (1 GiB): a plan's temporaries for one token */

typedef struct {
    int op;
    int kind[RD_MAXOPS];
    int64_t ref[RD_MAXOPS];
    int64_t d[RD_MAXDIMS];
    float f;
} rd_op;

typedef struct {
    rd_op *ops;
    int n_ops;
    const void **weights; /* pinned pointers */
    int n_weights;
    float *scratch;
    int64_t scratch_len;
    int64_t *state_len; /* floats each state array must hold */
    int n_states;
    int64_t n_logits;
    int64_t vocab; /* embedding rows (token bound) */
    int8_t *xq;     /* int8 activations of the widest GEMV input */
    int64_t xq_len;
    PyObject *keep; /* the weight list (keeps the arrays alive) */
} rd_plan;

#define RD_CAPSULE "ryzjupyter.recurrent_plan"

/* elements each operand spans, from the op's dims (0: unused operand) */
static int64_t extent(const rd_op *o, int i) {
    const int64_t *d = o->d;
    switch (o->op) {
    case RD_EMBED: return i == 0 ? d[0] : i == 1 ? d[0] * d[1] : 0;
    case RD_GEMV: return i == 0 ? d[0] : i == 1 ? d[1] : i == 2 ? d[0] * d[1] : 0;
    case RD_GEMV_I8: return i == 0 ? d[0] : i == 1 ? d[1] : i == 2 ? d[0] * d[1] : i == 3 ? d[0] : 0;
    case RD_ADD: case RD_MUL: return i < 3 ? d[0] : 0;
    case RD_RMSNORM: return i < 2 ? d[0] * d[1] : i == 2 ? d[0] : 0;
    case RD_LAYERNORM: return i < 2 ? d[0] : i < 4 ? d[0] : 0;
    case RD_CONV_STEP: return (i == 1 || i == 3) ? d[0] * d[1] : i < 5 ? d[0] : 0;
    case RD_SCAN_STEP: return (i == 1 || i == 4) ? d[0] * d[1] : (i == 5 || i == 6) ? d[1] : i < 9 ? d[0] : 0;
    case RD_WKV_STEP: return i < 8 ? d[0] : 0;
    case RD_SILU: case RD_SIGMOID: case RD_RELU2: case RD_COPY: case RD_SCALE: return i < 2 ? d[0] : 0;
    case RD_LERP: return i < 5 ? d[0] : 0;
    case RD_HEAD_BCAST: return i == 0 ? d[0] * d[1] : i < 3 ? d[0] : 0;
    case RD_WKV7_STEP: return i == 1 ? d[0] * d[1] * d[1] : i < 8 ? d[0] * d[1] : 0;
    case RD_TANH: return i < 2 ? d[0] : 0;
    case RD_L2NORM: return i < 2 ? d[0] * d[1] : 0;
    case RD_GROUPNORM: return i < 4 ? d[0] * d[1] : 0;
    case RD_SUB: case RD_FMA: return i < 3 + (o->op == RD_FMA) ? d[0] : 0;
    case RD_MIX: return i < 4 ? d[0] : 0;
    case RD_DECAY7: return i < 3 ? d[0] : 0;
    case RD_BONUS7: return i < 5 ? d[0] * d[1] : 0;
    default: return 0;
    }
}

/* operands an op may leave out (kind 0) */
static int optional(const rd_op *o, int i) {
    return (o->op == RD_CONV_STEP && i == 4) || (o->op == RD_SCAN_STEP && i == 8);
}

static void plan_free(rd_plan *p) {
    if (!p) return;
    free(p->ops);
    free(p->weights);
    free(p->scratch);
    free(p->state_len);
    free(p->xq);
    Py_XDECREF(p->keep);
    free(p);
}
static void plan_capsule_free(PyObject *cap) { plan_free(PyCapsule_GetPointer(cap, RD_CAPSULE)); }

PyDoc_STRVAR(recurrent_plan_doc,
"recurrent_plan(program, floats, weights, scratch_len, state_lens, n_logits, vocab) -> plan\n\n"
"Check and pin a recurrent family's decode program (see recurrent_decode.c): program int64\n"
"[n_ops, 25], floats float32 [n_ops], weights a list of C-contiguous float32 or int8 arrays,\n"
"scratch_len floats of scratch, state_lens the float count of each state array a call passes,\n"
"n_logits the logits' length, vocab the token bound (at most each embedding op's rows),\n"
"scratch_len at most 2^28. Every operand's extent is checked against its array here; a program\n"
"that would read or write out of bounds is a ValueError.");

static PyObject *py_recurrent_plan(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oprog, *oflt, *owl, *osl;
    long long scratch_len, n_logits, vocab;
    if (!PyArg_ParseTuple(args, "OOO!LO!LL:recurrent_plan", &oprog, &oflt, &PyList_Type, &owl, &scratch_len,
                          &PyList_Type, &osl, &n_logits, &vocab))
        return NULL;
    ryz_args a = {0};
    rd_plan *p = calloc(1, sizeof(rd_plan));
    Py_buffer *wv = NULL;
    int n_wv = 0;
    if (!p) return PyErr_NoMemory();
    ryz_arr *prog = ryz_arr_get(&a, oprog, "program", RYZ_I64, 2, 0);
    ryz_arr *flt = prog ? ryz_arr_get(&a, oflt, "floats", RYZ_F32, 1, 0) : NULL;
    if (!flt || ryz_check_dim(prog, 1, RD_COLS, "25 columns") || ryz_check_dim(flt, 0, ryz_dim(prog, 0), "n_ops"))
        goto fail;
    if (scratch_len < 0 || n_logits < 0 || vocab < 1 || PyList_GET_SIZE(osl) > RD_MAXSTATES) {
        PyErr_SetString(PyExc_ValueError, "recurrent_plan: negative sizes or too many state arrays");
        goto fail;
    }
    if (scratch_len > RD_MAXSCRATCH) {
        PyErr_Format(PyExc_ValueError, "recurrent_plan: scratch_len %lld is past the bound (%lld floats)",
                     scratch_len, (long long)RD_MAXSCRATCH);
        goto fail;
    }
    p->n_ops = (int)ryz_dim(prog, 0);
    p->n_weights = (int)PyList_GET_SIZE(owl);
    p->n_states = (int)PyList_GET_SIZE(osl);
    p->scratch_len = scratch_len;
    p->n_logits = n_logits;
    p->vocab = vocab;
    p->ops = calloc((size_t)(p->n_ops ? p->n_ops : 1), sizeof(rd_op));
    p->weights = calloc((size_t)(p->n_weights ? p->n_weights : 1), sizeof(void *));
    p->scratch = calloc((size_t)(scratch_len ? scratch_len : 1), sizeof(float));
    p->state_len = calloc((size_t)(p->n_states ? p->n_states : 1), sizeof(int64_t));
    wv = calloc((size_t)(p->n_weights ? p->n_weights : 1), sizeof(Py_buffer));
    int64_t *wlen = calloc((size_t)(p->n_weights ? p->n_weights : 1), sizeof(int64_t));
    int *wi8 = calloc((size_t)(p->n_weights ? p->n_weights : 1), sizeof(int));
    if (!p->ops || !p->weights || !p->scratch || !p->state_len || !wv || !wlen || !wi8) {
        free(wlen);
        free(wi8);
        PyErr_NoMemory();
        goto fail;
    }
    for (int i = 0; i < p->n_states; i++) {
        long long v = PyLong_AsLongLong(PyList_GET_ITEM(osl, i));
        if (v < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "state_lens must be >= 0");
            goto fail_w;
        }
        p->state_len[i] = v;
    }
    for (int i = 0; i < p->n_weights; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(owl, i), &wv[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) goto fail_w;
        n_wv = i + 1;
        const char *fmt = wv[i].format ? wv[i].format : "B";
        if (!((strcmp(fmt, "f") == 0 && wv[i].itemsize == 4) || (strcmp(fmt, "b") == 0 && wv[i].itemsize == 1))) {
            PyErr_Format(PyExc_TypeError, "weights[%d] must be float32 or int8, got format %s", i, fmt);
            goto fail_w;
        }
        wi8[i] = wv[i].itemsize == 1;
        wlen[i] = (int64_t)(wv[i].len / wv[i].itemsize);
        p->weights[i] = wv[i].buf;
    }
    const int64_t *pr = ryz_data(prog);
    const float *pf = ryz_data(flt);
    int64_t widest = 1;
    for (int n = 0; n < p->n_ops; n++) {
        rd_op *o = &p->ops[n];
        const int64_t *row = pr + (int64_t)n * RD_COLS;
        o->op = (int)row[0];
        if (o->op < 1 || o->op >= RD_NOPS) {
            PyErr_Format(PyExc_ValueError, "program op %d: unknown op code %lld", n, (long long)row[0]);
            goto fail_w;
        }
        for (int j = 0; j < RD_MAXDIMS; j++) {
            o->d[j] = row[1 + 2 * RD_MAXOPS + j];
            if (o->d[j] < 0 || o->d[j] > ((int64_t)1 << 24) || (o->op == RD_WKV7_STEP && j == 1 && o->d[j] > 4096)) {
                PyErr_Format(PyExc_ValueError, "program op %d: dim %d out of range", n, j);
                goto fail_w;
            }
        }
        if (o->op == RD_CONV_STEP && (o->d[1] < 1 || o->d[1] > RYZ_CONV_MAX_K)) {
            PyErr_Format(PyExc_ValueError, "program op %d: conv kernel size must be 1..%d", n, RYZ_CONV_MAX_K);
            goto fail_w;
        }
        if (o->op == RD_GEMV_I8 && (o->d[1] > RYZ_MATMUL_I8_MAX_K)) {
            PyErr_Format(PyExc_ValueError, "program op %d: K too large for int8", n);
            goto fail_w;
        }
        if (o->op == RD_EMBED && o->d[1] < vocab) {     /* a token the plan accepts must have its row */
            PyErr_Format(PyExc_ValueError, "program op %d: the embedding has %lld rows, vocab is %lld", n,
                         (long long)o->d[1], (long long)vocab);
            goto fail_w;
        }
        if (o->op == RD_GEMV_I8 && o->d[1] > widest) widest = o->d[1];
        o->f = pf[n];
        for (int i = 0; i < RD_MAXOPS; i++) {
            int kind = (int)row[1 + 2 * i];
            int64_t ref = row[2 + 2 * i], need = extent(o, i), have = 0, off = 0;
            o->kind[i] = kind;
            o->ref[i] = ref;
            if (need == 0 && kind == 0) continue;
            if (kind == 0) {
                if (optional(o, i)) continue;
                PyErr_Format(PyExc_ValueError, "program op %d (code %d): operand %d is missing", n, o->op, i);
                goto fail_w;
            }
            if (need == 0) {
                PyErr_Format(PyExc_ValueError, "program op %d (code %d): operand %d is not used by the op", n, o->op, i);
                goto fail_w;
            }
            int want_i8 = o->op == RD_GEMV_I8 && i == 2;
            if (kind == 1) {
                if (ref < 0 || ref >= p->n_weights) goto bad_ref;
                if (wi8[ref] != want_i8) {
                    PyErr_Format(PyExc_TypeError, "program op %d: operand %d must be %s", n, i,
                                 want_i8 ? "an int8 weight" : "a float32 weight");
                    goto fail_w;
                }
                have = wlen[ref];
            } else if (kind == 2) {
                off = ref;
                have = scratch_len;
            } else if (kind == 3) {
                int64_t si = ref >> 32;
                off = ref & 0xffffffffLL;
                if (ref < 0 || si >= p->n_states) goto bad_ref;
                have = p->state_len[si];
            } else if (kind == 4) {
                off = ref;
                have = n_logits;
            } else {
                goto bad_ref;
            }
            if (want_i8 && kind != 1) goto bad_ref;
            if (off < 0 || off > have || need > have - off) {
                PyErr_Format(PyExc_ValueError, "program op %d (code %d): operand %d needs %lld floats at %lld, "
                             "its array holds %lld", n, o->op, i, (long long)need, (long long)off, (long long)have);
                goto fail_w;
            }
            continue;
        bad_ref:
            PyErr_Format(PyExc_ValueError, "program op %d: operand %d has a bad reference (kind %d, ref %lld)", n, i,
                         kind, (long long)ref);
            goto fail_w;
        }
    }
    p->xq_len = widest;
    p->xq = malloc((size_t)widest);
    if (!p->xq) {
        PyErr_NoMemory();
        goto fail_w;
    }
    for (int i = 0; i < n_wv; i++) PyBuffer_Release(&wv[i]);
    free(wv);
    free(wlen);
    free(wi8);
    Py_INCREF(owl);
    p->keep = owl;
    ryz_args_release(&a);
    PyObject *cap = PyCapsule_New(p, RD_CAPSULE, plan_capsule_free);
    if (!cap) plan_free(p);
    return cap;
fail_w:
    for (int i = 0; i < n_wv; i++) PyBuffer_Release(&wv[i]);
    free(wlen);
    free(wi8);
fail:
    free(wv);
    plan_free(p);
    ryz_args_release(&a);
    return NULL;
}

/* ---- running a program ------------------------------------------------------------ */
typedef struct {
    const rd_op *o;
    float *ptr[RD_MAXOPS];
    const int8_t *xq;
    float xs;
    int32_t xsum;
} rd_job;

static void gemv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    ryz_matmul_job m = {.out = j->ptr[0], .ldo = j->o->d[0], .x = j->ptr[1], .w = j->ptr[2], .M = 1, .K = j->o->d[1]};
    ryz_matmul->gemv_f32(&m, b, e);
}
/* int8 rows: the decode head's streaming loop (layer.h's gemv_i8: bitwise matmul_i8 with M = 1,
 * the prefill's kernel). matmul_i8's 4 x 4 tiles streamed 4-6 GB/s a core here against 9-19 for
 * gemv_i8 at the 1.4b / 1.5b shapes (2-3x, 8 copies of each matrix alternating, Zen 4, shared). */
static void gemv_i8_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    ryz_layer->gemv_i8(j->ptr[0], (const int8_t *)j->ptr[2], j->ptr[3], j->o->d[1], j->xq, j->xsum, j->xs, b, e);
}
static void conv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    float **p = j->ptr;
    ryz_recurrent->conv1d(p[0], p[1], p[2], p[3], p[4], 1, j->o->d[0], j->o->d[1], b, e);
}
static void scan_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    float **p = j->ptr;
    ryz_recurrent->scan(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], 1, j->o->d[0], j->o->d[1], b, e);
}
static void wkv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    float **p = j->ptr;
    ryz_recurrent->wkv(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], 1, j->o->d[0], b, e);
}

static void wkv7_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    rd_job *j = ctx;
    float **p = j->ptr;
    ryz_recurrent->wkv7(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], 1, j->o->d[0], j->o->d[1], b, e);
}

static int64_t grain_for(int64_t n, int64_t per) {
    int64_t g = 4096 / (per > 0 ? per : 1);
    g = g < 16 ? 16 : (g + 15) / 16 * 16;
    return g > n ? (n > 0 ? n : 1) : g;
}

/* A GEMV's rows [0, n) of row_bytes each, one range of whole 16-row tiles a thread, walked with
 * work stealing in chunks of about RD_STEAL_BYTES (ryz_parallel_ranges): a thread that has
 * finished its range takes the others' last chunks, so the GEMV ends with its rows, not with
 * the thread that lost its core for a while (a shared machine; with a static split in halves
 * the decode step waited on the slower half at every one of a layer's GEMVs). Each row is
 * computed alone, by the same tile code, so the split changes no result. */
#define RD_STEAL_BYTES (64 << 10)
#define RD_MAX_SPLIT 64
static void run_rows(ryz_task_fn fn, void *ctx, int64_t n, int64_t row_bytes) {
    const int64_t T = ryz_num_threads();
    if (T < 2 || T > RD_MAX_SPLIT || n < 32 * T) {
        ryz_parallel_for(fn, ctx, n, 16);
        return;
    }
    int64_t ranges[RD_MAX_SPLIT][2];
    const int64_t tiles = (n + 15) / 16;
    for (int64_t t = 0; t < T; t++) {
        const int64_t lo = 16 * (t * tiles / T), hi = 16 * ((t + 1) * tiles / T);
        ranges[t][0] = lo;
        ranges[t][1] = hi < n ? hi : n;
    }
    int64_t chunk = (RD_STEAL_BYTES / (row_bytes > 0 ? row_bytes : 1) + 8) / 16 * 16;
    ryz_parallel_ranges(fn, ctx, (const int64_t (*)[2])ranges, (int)T, chunk < 16 ? 16 : chunk);
}

static void run_op(const rd_op *o, float **ptr, rd_plan *p, int64_t token) {
    int64_t n = o->d[0];
    rd_job j = {.o = o};
    memcpy(j.ptr, ptr, sizeof(j.ptr));
    switch (o->op) {
    case RD_EMBED: memcpy(ptr[0], ptr[1] + token * n, (size_t)n * sizeof(float)); break;
    case RD_GEMV: run_rows(gemv_task, &j, n, o->d[1] * (int64_t)sizeof(float)); break;
    case RD_GEMV_I8: {
        int64_t K = o->d[1];
        if (ryz_quant->quantize_row_i8(p->xq, &j.xs, ptr[1], K) != 0) { /* NaN/inf in: NaN out */
            for (int64_t i = 0; i < n; i++) ptr[0][i] = NAN;
            break;
        }
        j.xq = p->xq;
        j.xsum = ryz_quant->sum_i8(p->xq, K);
        run_rows(gemv_i8_task, &j, n, o->d[1]);
        break;
    }
    case RD_ADD: ryz_ops->add(ptr[0], ptr[1], ptr[2], n); break;
    case RD_MUL: ryz_ops->mul(ptr[0], ptr[1], ptr[2], n); break;
    case RD_RMSNORM:
        for (int64_t r = 0; r < o->d[1]; r++) ryz_ops->rmsnorm_row(ptr[0] + r * n, ptr[1] + r * n, ptr[2], n, o->f);
        break;
    case RD_LAYERNORM: {
        const float *x = ptr[1];
        float mu = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < n; i++) mu += x[i];
        mu /= (float)n;
        for (int64_t i = 0; i < n; i++) var += (x[i] - mu) * (x[i] - mu);
        var /= (float)n;
        float s = sqrtf(var + o->f);
        for (int64_t i = 0; i < n; i++) ptr[0][i] = (x[i] - mu) / s * ptr[2][i] + ptr[3][i];
        break;
    }
    case RD_CONV_STEP: ryz_parallel_for(conv_task, &j, n, grain_for(n, o->d[1])); break;
    case RD_SCAN_STEP: ryz_parallel_for(scan_task, &j, n, grain_for(n, 4 * o->d[1])); break;
    case RD_WKV_STEP: ryz_parallel_for(wkv_task, &j, n, grain_for(n, 16)); break;
    case RD_WKV7_STEP: ryz_parallel_for(wkv7_task, &j, n, 1); break;
    case RD_SILU: ryz_ops->silu(ptr[0], ptr[1], n); break;
    case RD_RELU2: ryz_ops->relu2(ptr[0], ptr[1], n); break;
    case RD_SIGMOID:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = 1.0f / (1.0f + expf(-ptr[1][i]));
        break;
    case RD_LERP:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = ptr[1][i] * ptr[3][i] + ptr[2][i] * ptr[4][i];
        break;
    case RD_COPY: memmove(ptr[0], ptr[1], (size_t)n * sizeof(float)); break;
    case RD_SCALE:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = ptr[1][i] * o->f;
        break;
    case RD_TANH:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = tanhf(ptr[1][i]);
        break;
    case RD_L2NORM:
        for (int64_t r = 0; r < o->d[1]; r++) {
            const float *x = ptr[1] + r * n;
            float ss = 0.0f;
            for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
            float nrm = sqrtf(ss);
            if (nrm < 1e-12f) nrm = 1e-12f;
            for (int64_t i = 0; i < n; i++) ptr[0][r * n + i] = x[i] / nrm;
        }
        break;
    case RD_GROUPNORM:
        for (int64_t r = 0; r < o->d[1]; r++) {
            const float *x = ptr[1] + r * n;
            float mu = 0.0f, var = 0.0f;
            for (int64_t i = 0; i < n; i++) mu += x[i];
            mu /= (float)n;
            for (int64_t i = 0; i < n; i++) var += (x[i] - mu) * (x[i] - mu);
            var /= (float)n;
            float s = sqrtf(var + o->f);
            for (int64_t i = 0; i < n; i++)
                ptr[0][r * n + i] = (x[i] - mu) / s * ptr[2][r * n + i] + ptr[3][r * n + i];
        }
        break;
    case RD_SUB:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = ptr[1][i] - ptr[2][i];
        break;
    case RD_MIX:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = ptr[1][i] + ptr[2][i] * ptr[3][i];
        break;
    case RD_FMA:
        for (int64_t i = 0; i < n; i++) ptr[0][i] = ptr[1][i] + (ptr[2][i] - ptr[1][i]) * ptr[3][i];
        break;
    case RD_DECAY7:
        for (int64_t i = 0; i < n; i++)
            ptr[0][i] = expf(-0.606531f / (1.0f + expf(-(ptr[1][i] + ptr[2][i]))));
        break;
    case RD_BONUS7: {
        int64_t N = o->d[1];
        for (int64_t h = 0; h < n; h++) {
            float s = 0.0f;
            for (int64_t j = 0; j < N; j++) s += ptr[1][h * N + j] * ptr[2][h * N + j] * ptr[3][h * N + j];
            for (int64_t j = 0; j < N; j++) ptr[0][h * N + j] += s * ptr[4][h * N + j];
        }
        break;
    }
    case RD_HEAD_BCAST: {
        int64_t P = o->d[1];
        for (int64_t h = 0; h < n; h++)
            for (int64_t q = 0; q < P; q++) ptr[0][h * P + q] = ptr[1][h] + ptr[2][h];
        break;
    }
    default: break;
    }
}

PyDoc_STRVAR(recurrent_decode_doc,
"recurrent_decode(plan, token, states, logits) -> None\n\n"
"One decode step of a recurrent model in one call: the plan's program (recurrent_plan) runs\n"
"every layer for `token` (0 <= token < vocab), updating `states` (a list of float32 arrays,\n"
"the sizes the plan was made for) in place and writing float32 `logits`. GIL released once.");

static PyObject *py_recurrent_decode(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oplan, *ostates, *ologits;
    long long token;
    if (!PyArg_ParseTuple(args, "OLO!O:recurrent_decode", &oplan, &token, &PyList_Type, &ostates, &ologits))
        return NULL;
    rd_plan *p = PyCapsule_GetPointer(oplan, RD_CAPSULE);
    if (!p) return NULL;
    if (token < 0 || token >= p->vocab) {
        PyErr_Format(PyExc_ValueError, "token %lld is outside the vocabulary (0..%lld)", token, (long long)p->vocab - 1);
        return NULL;
    }
    if (PyList_GET_SIZE(ostates) != p->n_states) {
        PyErr_Format(PyExc_ValueError, "states: the plan needs %d arrays, got %zd", p->n_states,
                     PyList_GET_SIZE(ostates));
        return NULL;
    }
    ryz_args a = {0};
    Py_buffer *sv = calloc((size_t)(p->n_states ? p->n_states : 1), sizeof(Py_buffer));
    float **sp = calloc((size_t)(p->n_states ? p->n_states : 1), sizeof(float *));
    int held = 0;
    if (!sv || !sp) {
        PyErr_NoMemory();
        goto fail;
    }
    ryz_arr *lg = ryz_arr_get(&a, ologits, "logits", RYZ_F32, 1, 1);
    if (!lg || ryz_check_dim(lg, 0, p->n_logits, "the model's vocabulary")) goto fail;
    for (int i = 0; i < p->n_states; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(ostates, i), &sv[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0)
            goto fail;
        held = i + 1;
        if (!sv[i].format || strcmp(sv[i].format, "f") != 0 || sv[i].itemsize != 4 ||
            sv[i].len / 4 != p->state_len[i]) {
            PyErr_Format(PyExc_ValueError, "states[%d] must be a float32 array of %lld values", i,
                         (long long)p->state_len[i]);
            goto fail;
        }
        sp[i] = sv[i].buf;
    }
    float *logits = ryz_data(lg);
    Py_BEGIN_ALLOW_THREADS
    for (int n = 0; n < p->n_ops; n++) {
        const rd_op *o = &p->ops[n];
        float *ptr[RD_MAXOPS] = {0};
        for (int i = 0; i < RD_MAXOPS; i++) {
            int64_t r = o->ref[i];
            switch (o->kind[i]) {
            case 1: ptr[i] = (float *)p->weights[r]; break;
            case 2: ptr[i] = p->scratch + r; break;
            case 3: ptr[i] = sp[r >> 32] + (r & 0xffffffffLL); break;
            case 4: ptr[i] = logits + r; break;
            default: break;
            }
        }
        run_op(o, ptr, p, token);
    }
    Py_END_ALLOW_THREADS
    for (int i = 0; i < held; i++) PyBuffer_Release(&sv[i]);
    free(sv);
    free(sp);
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    for (int i = 0; i < held; i++) PyBuffer_Release(&sv[i]);
    free(sv);
    free(sp);
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_recurrent_decode_methods[] = {
    {"recurrent_plan", py_recurrent_plan, METH_VARARGS, recurrent_plan_doc},
    {"recurrent_decode", py_recurrent_decode, METH_VARARGS, recurrent_decode_doc},
    {NULL, NULL, 0, NULL},
};
