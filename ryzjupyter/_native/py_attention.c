/* py_attention.c: Python binding of the attention family (see attention.h). */
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "matmul.h"
#include "ops.h"
#include "ryz_py.h"

const ryz_attention_kernels *ryz_attention = &ryz_attention_scalar;
int ryz_attn_tiled = 1;

void ryz_attention_select(ryz_isa isa) {
    static const ryz_attention_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_attention_scalar, &ryz_attention_avx2, &ryz_attention_avx512};
    ryz_attention = by_isa[isa];
    ryz_register_kernel("attention", ryz_attention->name);
    ryz_register_kernel("attention_i8kv", ryz_attention->name);
    ryz_register_kernel("quantize_kv_i8", "scalar"); /* one plain C version for every level */
    ryz_register_kernel("attention_kv16", ryz_attention->name);
    ryz_register_kernel("store_kv16", "scalar");     /* one plain C version for every level */
    ryz_register_kernel("attention_segments", ryz_matmul->gemm_name); /* gemm_f32 + softmax_row */
}

typedef struct {
    float *out;
    const float *q, *k, *v;
    const int8_t *k8, *v8;   /* int8 cache (attention_i8kv), else NULL */
    const float *ks, *vs;    /* its scales [T, Hkv] */
    const uint16_t *k16, *v16; /* 16-bit cache (attention_kv16), else NULL */
    int fmt16;               /* its format: RYZ_KV_F16 or RYZ_KV_BF16 */
    int64_t M, Hq, Hkv, hd, G, n_past;
    int64_t H;         /* kv heads per unit: 1 or Hkv (ryz_attn_plan) */
    int64_t S;         /* parts the cache rows of each unit are split into (1: no split) */
    float scale;
    float *part, *ml;  /* S > 1: [units * S][H * G][hd] partial outputs, [units * S][H * G][2] (m, l) */
    int failed;        /* scratch allocation failed */
} attn_job;

/* Unsplit units (S = 1: prefill) are ordered in blocks of ROW_BLOCK query rows, kv head by kv
 * head inside a block: the consecutive units of one thread then read the same cache rows again
 * (from L2) instead of cycling through every head's rows (from L3), and the two halves of a
 * chunk are the same rows of neighbouring heads (the same work). 1.26x for a 512-token prefill
 * (2B-4T heads, 1 thread). Every unit is independent: the order changes no result. */
#define ROW_BLOCK 64

/* query row i and first kv head kvh of unit u (S = 1 order above; else u = i * Hkv / H + kvh / H) */
static void unit_rows(const attn_job *j, int64_t u, int64_t *i, int64_t *kvh) {
    const int64_t per_row = j->Hkv / j->H;
    if (j->S > 1) {
        *i = u / per_row;
        *kvh = u % per_row * j->H;
        return;
    }
    const int64_t blk = u / (ROW_BLOCK * per_row), r0 = blk * ROW_BLOCK;
    const int64_t rows = j->M - r0 < ROW_BLOCK ? j->M - r0 : ROW_BLOCK, off = u - r0 * per_row;
    *i = r0 + off % rows;
    *kvh = off / rows * j->H;
}

/* items are (unit, part): item = unit * S + part, with unit -> (query row, kv heads) by unit_rows */
static void attn_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_job *j = ctx;
    const int64_t HG = j->H * j->G;
    const int64_t rows = (j->n_past + j->M + j->S - 1) / j->S + 1;
    float *scratch = malloc(sizeof(float) * (size_t)ryz_attn_scratch_floats(HG, j->hd, rows));
    if (!scratch) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const ryz_attn_cache c = {j->k, j->v, j->k8, j->v8, j->ks, j->vs, j->Hkv, j->hd, j->k16, j->v16, j->fmt16};
    for (int64_t it = b; it < e; it++) {
        const int64_t unit = it / j->S, part = it % j->S;
        int64_t i, kvh;
        unit_rows(j, unit, &i, &kvh);
        const int64_t L = j->n_past + i + 1;
        const int64_t qoff = (i * j->Hq + kvh * j->G) * j->hd;
        ryz_attn_run_unit(&c, j->q + qoff, kvh, j->H, j->G, L * part / j->S, L * (part + 1) / j->S, j->scale,
                          j->S == 1 ? j->out + qoff : j->part + it * HG * j->hd, j->S == 1 ? NULL : j->ml + it * 2 * HG,
                          scratch);
    }
    free(scratch);
}

/* merge the S partial results of each unit (flash-decoding, see attention.h) */
static void merge_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_job *j = ctx;
    const int64_t HG = j->H * j->G, hd = j->hd, S = j->S;
    for (int64_t unit = b; unit < e; unit++) {
        int64_t i, kvh;
        unit_rows(j, unit, &i, &kvh);
        for (int64_t g = 0; g < HG; g++)
            ryz_attn_merge_head(j->out + (i * j->Hq + kvh * j->G + g) * hd,
                                j->part + unit * S * HG * hd, j->ml + unit * S * HG * 2, S, HG, g, hd);
    }
}

/* ---- prefill in blocks (kernels with attend_block) --------------------------------------
 * First every kv head's keys 0 .. n_past + M - 1 are transposed once (items: (kv head, 16
 * keys)), then items (kv head, RYZ_ATTN_BLOCK_ROWS query rows), kv head by kv head so the two
 * threads' halves are the same amount of work and each walks few heads' keys and values.
 * A 16-bit cache is widened (exactly) on the way: its keys as they are transposed, its values
 * into vw, per kv head [Lall][hd] (a pass over the cache per call, against the M (n_past + M)
 * hd G multiply-adds of the blocks), so the blocks are the float32 cache's kernels. */
typedef struct {
    const attn_job *j;
    float *kt;           /* [Hkv][ryz_attn_kt_floats(Lall, hd)] */
    float *vw;           /* 16-bit cache: [Hkv][Lall][hd] the values as float32; else NULL */
    int64_t Lall, ktf, blocks;
    int failed;
} block_job;

/* items: 16-key blocks of every kv head, up to the padded length (ktf / hd keys); a block past
 * the last key is zeros (its scores are computed, never used) */
static void kt_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    block_job *bj = ctx;
    const attn_job *j = bj->j;
    const int64_t per = bj->ktf / (16 * j->hd);
    float *tmp = NULL;   /* 16-bit cache: 16 keys widened, [16][hd] */
    if (j->k16 && !(tmp = malloc(sizeof(float) * (size_t)(16 * j->hd)))) {
        __atomic_store_n(&bj->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const int64_t KVD = j->Hkv * j->hd;
    for (int64_t it = b; it < e; it++) {
        const int64_t h = it / per, t0 = it % per * 16, t1 = t0 + 16 < bj->Lall ? t0 + 16 : bj->Lall;
        float *kt = bj->kt + h * bj->ktf;
        if (t0 >= t1) {
            memset(kt + t0 * j->hd, 0, sizeof(float) * (size_t)(16 * j->hd));
        } else if (!j->k16) {
            ryz_attention->transpose_k(kt, j->k + h * j->hd, KVD, j->hd, t0, t1);
        } else {
            for (int64_t t = t0; t < t1; t++) {
                const int64_t src = t * KVD + h * j->hd;
                ryz_attention->widen16(tmp + (t - t0) * j->hd, j->k16 + src, j->hd, j->fmt16);
                ryz_attention->widen16(bj->vw + (h * bj->Lall + t) * j->hd, j->v16 + src, j->hd, j->fmt16);
            }
            ryz_attention->transpose_k(kt + t0 * j->hd, tmp, j->hd, j->hd, 0, t1 - t0);
        }
    }
    free(tmp);
}

static void block_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    block_job *bj = ctx;
    const attn_job *j = bj->j;
    float *scratch = malloc(sizeof(float) * (size_t)ryz_attn_block_scratch_floats(bj->Lall, j->hd, j->G));
    if (!scratch) {
        __atomic_store_n(&bj->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t it = b; it < e; it++) {
        const int64_t h = it / bj->blocks, i0 = it % bj->blocks * RYZ_ATTN_BLOCK_ROWS;
        const int64_t R = j->M - i0 < RYZ_ATTN_BLOCK_ROWS ? j->M - i0 : RYZ_ATTN_BLOCK_ROWS;
        ryz_attn_block blk = {
            .q = j->q + (i0 * j->Hq + h * j->G) * j->hd, .kt = bj->kt + h * bj->ktf,
            .v = bj->vw ? bj->vw + h * bj->Lall * j->hd : j->v + h * j->hd,
            .o = j->out + (i0 * j->Hq + h * j->G) * j->hd, .qstride = j->Hq * j->hd,
            .kstride = bj->vw ? j->hd : j->Hkv * j->hd, .R = R, .G = j->G, .hd = j->hd, .L0 = j->n_past + i0 + 1,
            .scale = j->scale};
        ryz_attention->attend_block(&blk, scratch);
    }
    free(scratch);
}

/* 0, -1 (interrupted: exception set) or 1 (no memory) */
static int run_blocks(attn_job *j) {
    block_job bj = {.j = j, .Lall = j->n_past + j->M};
    bj.ktf = ryz_attn_kt_floats(bj.Lall, j->hd);
    bj.blocks = (j->M + RYZ_ATTN_BLOCK_ROWS - 1) / RYZ_ATTN_BLOCK_ROWS;
    bj.kt = aligned_alloc(64, (sizeof(float) * (size_t)(j->Hkv * bj.ktf) + 63) / 64 * 64);
    if (!bj.kt) return 1;
    if (j->k16 && !(bj.vw = malloc(sizeof(float) * (size_t)(j->Hkv * bj.Lall * j->hd)))) {
        free(bj.kt);
        return 1;
    }
    const int64_t per = bj.ktf / (16 * j->hd); /* 16-key blocks per kv head */
    int rc = ryz_run_chunked(kt_task, &bj, j->Hkv * per, j->Hkv * per, per);
    const int64_t chunk = ryz_chunk_items(RYZ_ATTN_BLOCK_ROWS * j->G * bj.Lall * j->hd * 2);
    if (rc == 0 && !bj.failed) rc = ryz_run_chunked(block_task, &bj, j->Hkv * bj.blocks, chunk, 1);
    free(bj.kt);
    free(bj.vw);
    if (rc != 0) return -1;
    return bj.failed ? 1 : 0;
}

PyDoc_STRVAR(attention_doc,
"attention(out, q, k, v, n_past, scale) -> None\n\n"
"Causal grouped-query attention over a float32 KV cache, softmax in float32:\n"
"out, q: float32 [M, Hq, hd]; k, v: float32 [T, Hkv, hd] with Hq % Hkv == 0 and\n"
"n_past + M <= T. Query row i sits at position n_past + i and attends to cache rows\n"
"0 .. n_past + i; query head h uses kv head h // (Hq // Hkv).\n"
"out[i, h] = softmax(scale * k[:L, h'] @ q[i, h]) @ v[:L, h'], L = n_past + i + 1.\n"
"out must not overlap q, k or v. Interruptible (Ctrl-C) between chunks of work.");
/* "f16" -> RYZ_KV_F16, "bf16" -> RYZ_KV_BF16, else -1 with ValueError */
static int parse_kv16(const char *fmt) {
    if (strcmp(fmt, "f16") == 0) return RYZ_KV_F16;
    if (strcmp(fmt, "bf16") == 0) return RYZ_KV_BF16;
    PyErr_Format(PyExc_ValueError, "fmt must be 'f16' (float16 array) or 'bf16' (uint16 array of bfloat16 "
                 "bits), got '%s'", fmt);
    return -1;
}

/* kind: RYZ_KV_F32 (attention), RYZ_KV_I8 (attention_i8kv) or 16 (attention_kv16) */
static PyObject *attention_common(PyObject *args, int kind) {
    PyObject *oo, *oq, *ok, *ov, *oks = NULL, *ovs = NULL;
    long long n_past;
    double scale;
    const char *sfmt = NULL;
    const int i8 = kind == RYZ_KV_I8, h16 = kind == 16;
    if (i8 ? !PyArg_ParseTuple(args, "OOOOOOLd:attention_i8kv", &oo, &oq, &ok, &oks, &ov, &ovs, &n_past, &scale)
           : h16 ? !PyArg_ParseTuple(args, "OOOOLds:attention_kv16", &oo, &oq, &ok, &ov, &n_past, &scale, &sfmt)
                 : !PyArg_ParseTuple(args, "OOOOLd:attention", &oo, &oq, &ok, &ov, &n_past, &scale))
        return NULL;
    const int fmt16 = h16 ? parse_kv16(sfmt) : 0;
    if (fmt16 < 0) return NULL;
    const ryz_dtype kvt = i8 ? RYZ_I8 : !h16 ? RYZ_F32 : fmt16 == RYZ_KV_F16 ? RYZ_F16 : RYZ_U16;
    ryz_args a = {0};
    ryz_arr *out, *q, *k, *v, *ks = NULL, *vs = NULL;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 3, 1)) ||
        !(q = ryz_arr_get(&a, oq, "q", RYZ_F32, 3, 0)) ||
        !(k = ryz_arr_get(&a, ok, "k", kvt, 3, 0)) ||
        !(v = ryz_arr_get(&a, ov, "v", kvt, 3, 0)))
        goto fail;
    if (i8 && (!(ks = ryz_arr_get(&a, oks, "k_scales", RYZ_F32, 2, 0)) ||
               !(vs = ryz_arr_get(&a, ovs, "v_scales", RYZ_F32, 2, 0)) ||
               ryz_check_dim(ks, 0, ryz_dim(k, 0), "k.shape[0]") ||
               ryz_check_dim(ks, 1, ryz_dim(k, 1), "k.shape[1]") || ryz_check_same_shape(vs, ks)))
        goto fail;
    int64_t M = ryz_dim(q, 0), Hq = ryz_dim(q, 1), hd = ryz_dim(q, 2);
    int64_t T = ryz_dim(k, 0), Hkv = ryz_dim(k, 1);
    if (ryz_check_same_shape(out, q) || ryz_check_dim(k, 2, hd, "q.shape[2] (head_dim)") ||
        ryz_check_same_shape(v, k) || ryz_check_no_overlap_any(out, &a))
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
    if (ryz_check_finite(scale, "scale")) goto fail;
    if (M == 0 || hd == 0) goto done;
    int64_t H;
    const int64_t G = Hq / Hkv, S = ryz_attn_plan(M, Hkv, n_past + 1, i8, &H), units = M * (Hkv / H);
    const int f32 = !i8 && !h16;
    attn_job j = {ryz_data(out), ryz_data(q), f32 ? ryz_data(k) : NULL, f32 ? ryz_data(v) : NULL,
                  i8 ? ryz_data(k) : NULL, i8 ? ryz_data(v) : NULL, i8 ? ryz_data(ks) : NULL,
                  i8 ? ryz_data(vs) : NULL, h16 ? ryz_data(k) : NULL, h16 ? ryz_data(v) : NULL, fmt16,
                  M, Hq, Hkv, hd, G, n_past, H, S, (float)scale, NULL, NULL, 0};
    if (!i8 && S == 1 && H == 1 && ryz_attn_tiled && ryz_attention->attend_block && hd % 16 == 0) {
        const int rc = run_blocks(&j);
        if (rc < 0) goto fail;
        if (rc > 0) {
            PyErr_NoMemory();
            goto fail;
        }
        goto done;
    }
    if (S > 1) {
        j.part = malloc(sizeof(float) * (size_t)(units * S * H * G * hd));
        j.ml = malloc(sizeof(float) * (size_t)(units * S * H * G * 2));
        if (!j.part || !j.ml) {
            free(j.part);
            free(j.ml);
            PyErr_NoMemory();
            goto fail;
        }
    }
    int rc = ryz_run_chunked(attn_task, &j, units * S, ryz_chunk_items((n_past + M) * hd * H * G * 2 / S), 1);
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

static PyObject *py_attention(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return attention_common(args, RYZ_KV_F32);
}

PyDoc_STRVAR(attention_i8kv_doc,
"attention_i8kv(out, q, k, k_scales, v, v_scales, n_past, scale) -> None\n\n"
"attention() over an int8 KV cache: k, v int8 [T, Hkv, hd] with float32 scales\n"
"k_scales, v_scales [T, Hkv]; the cache holds k[t, h] * k_scales[t, h] (the same for v),\n"
"as written by quantize_kv_i8. A quarter of the float cache's memory traffic; NOT exact:\n"
"each cached value carries a rounding error of up to max|row| / 254.");
static PyObject *py_attention_i8kv(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return attention_common(args, RYZ_KV_I8);
}

PyDoc_STRVAR(attention_kv16_doc,
"attention_kv16(out, q, k, v, n_past, scale, fmt) -> None\n\n"
"attention() over a 16-bit KV cache: fmt 'f16' with k, v float16 [T, Hkv, hd], or 'bf16' with\n"
"k, v uint16 [T, Hkv, hd] holding bfloat16 bits (the top half of a float32), as written by\n"
"store_kv16. Equals attention() on the cache widened to float32 (exact) within float32\n"
"rounding: values are widened in registers (F16C / AVX-512 vcvtph2ps, a shift for bf16).\n"
"Half the float cache's memory traffic; the rounding on the way in is not exact.");
static PyObject *py_attention_kv16(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    return attention_common(args, 16);
}

/* *bad = min(*bad, r) from any thread (*bad < 0: none yet): the first row a task refused */
static void note_bad_row(int64_t *bad, int64_t r) {
    int64_t cur = __atomic_load_n(bad, __ATOMIC_RELAXED);
    if (cur < 0 || r < cur) __atomic_store_n(bad, r, __ATOMIC_RELAXED);
}

typedef struct {
    uint16_t *dst;
    const float *x;
    int64_t hd;
    int fmt;
    int64_t bad; /* first (row*H + head) that is NaN/inf after rounding, or -1 */
} kv16_job;

static void kv16_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    kv16_job *j = ctx;
    for (int64_t r = b; r < e; r++)
        if (ryz_store_kv16_row(j->dst + r * j->hd, j->x + r * j->hd, j->hd, j->fmt)) note_bad_row(&j->bad, r);
}

PyDoc_STRVAR(store_kv16_doc,
"store_kv16(dst, x, fmt) -> None\n\n"
"Round new KV-cache rows for attention_kv16: x float32 [M, H, hd] -> dst [M, H, hd], fmt 'f16'\n"
"(dst float16) or 'bf16' (dst uint16, bfloat16 bits), round to nearest, ties to even. Write\n"
"into the cache's rows n_past .. n_past+M-1 (a contiguous slice). Raises ValueError if x holds\n"
"NaN or inf, or (f16) a value of magnitude 65520 or more, which float16 cannot hold; the rows\n"
"are written anyway.");
static PyObject *py_store_kv16(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *od, *ox;
    const char *sfmt;
    if (!PyArg_ParseTuple(args, "OOs:store_kv16", &od, &ox, &sfmt)) return NULL;
    const int fmt = parse_kv16(sfmt);
    if (fmt < 0) return NULL;
    ryz_args a = {0};
    ryz_arr *d, *x;
    if (!(d = ryz_arr_get(&a, od, "dst", fmt == RYZ_KV_F16 ? RYZ_F16 : RYZ_U16, 3, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 3, 0)) || ryz_check_same_shape(d, x) || ryz_check_no_overlap(d, x))
        goto fail;
    kv16_job j = {ryz_data(d), ryz_data(x), ryz_dim(x, 2), fmt, -1};
    const int64_t rows = ryz_dim(x, 0) * ryz_dim(x, 1);
    if (ryz_run_chunked(kv16_task, &j, rows, 1 << 16, 64) != 0) goto fail;
    if (j.bad >= 0) {
        PyErr_Format(PyExc_ValueError, "x[%lld, %lld] holds NaN or inf%s; cannot store it in a %s cache",
                     (long long)(j.bad / ryz_dim(x, 1)), (long long)(j.bad % ryz_dim(x, 1)),
                     fmt == RYZ_KV_F16 ? ", or a value beyond float16's range (|x| >= 65520)" : "", sfmt);
        goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

typedef struct {
    int8_t *q8;
    float *d;
    const float *x;
    int64_t hd;
    int64_t bad; /* first (row*H + head) holding NaN/inf, or -1 */
} kvq_job;

static void kvq_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    kvq_job *j = ctx;
    for (int64_t r = b; r < e; r++)
        if (ryz_quantize_kv_row(j->q8 + r * j->hd, j->d + r, j->x + r * j->hd, j->hd)) note_bad_row(&j->bad, r);
}

PyDoc_STRVAR(quantize_kv_i8_doc,
"quantize_kv_i8(q8, scales, x) -> None\n\n"
"Quantize new KV-cache rows for attention_i8kv: x float32 [M, H, hd] -> q8 int8 [M, H, hd]\n"
"and scales float32 [M, H], symmetric per (row, head): scales = max|x| / 127,\n"
"q8 = clamp(round_half_even(x * (127 / max|x|)), -127, 127); an all-zero row gives\n"
"scale 0. Write into the cache's rows n_past .. n_past+M-1 (pass those slices, which are\n"
"contiguous). Raises ValueError if x holds NaN or inf.");
static PyObject *py_quantize_kv_i8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oq, *os, *ox;
    if (!PyArg_ParseTuple(args, "OOO:quantize_kv_i8", &oq, &os, &ox)) return NULL;
    ryz_args a = {0};
    ryz_arr *q8, *sc, *x;
    if (!(q8 = ryz_arr_get(&a, oq, "q8", RYZ_I8, 3, 1)) ||
        !(sc = ryz_arr_get(&a, os, "scales", RYZ_F32, 2, 1)) ||
        !(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 3, 0)) || ryz_check_same_shape(q8, x) ||
        ryz_check_dim(sc, 0, ryz_dim(x, 0), "x.shape[0]") || ryz_check_dim(sc, 1, ryz_dim(x, 1), "x.shape[1]") ||
        ryz_check_no_overlap_any(q8, &a) || ryz_check_no_overlap_any(sc, &a))
        goto fail;
    kvq_job j = {ryz_data(q8), ryz_data(sc), ryz_data(x), ryz_dim(x, 2), -1};
    int64_t rows = ryz_dim(x, 0) * ryz_dim(x, 1);
    if (ryz_run_chunked(kvq_task, &j, rows, 1 << 16, 64) != 0) goto fail;
    if (j.bad >= 0) {
        PyErr_Format(PyExc_ValueError, "x[%lld, %lld] contains NaN or inf; cannot quantize it",
                     (long long)(j.bad / ryz_dim(x, 1)), (long long)(j.bad % ryz_dim(x, 1)));
        goto fail;
    }
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}


/* ---- bidirectional attention within segments (the encoder's) ------------------------------
 * Many sequences packed one after another (no padding): query row i of segment s attends to
 * every row of its own segment, none of another (the padding mask, without the padding). One
 * item = (segment, head), computed as two GEMMs with the matmul family's gemm_f32 microkernel:
 *   kp = the head's keys packed into 16-key panels;       S = q kp^T       [L, L]
 *   S = softmax(scale * S) row by row (ops' softmax_row);  vp = values packed into 16-dim panels
 *   out = S vp^T                                                            [L, hd]
 * (transformers' eager attention in float32, the mask being the segment). */
typedef struct {
    float *out;
    const float *q, *k, *v;
    const int64_t *offsets;
    int64_t B, H, hd, maxL;
    float scale;
    int failed;
} seg_job;

/* panels of 16 rows of the [rows, cols] matrix src (row stride ld): dst[p][c][r] for row 16p + r
 * (transposed: the "w" of gemm_f32 is rows x cols with cols the k dimension) */
static void pack_rows(float *dst, const float *src, int64_t ld, int64_t rows, int64_t cols) {
    const int64_t P = (rows + 15) / 16;
    for (int64_t p = 0; p < P; p++)
        for (int64_t c = 0; c < cols; c++)
            for (int64_t r = 0; r < 16; r++) {
                const int64_t row = p * 16 + r;
                dst[(p * cols + c) * 16 + r] = row < rows ? src[row * ld + c] : 0.0f;
            }
}

static void seg_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    seg_job *j = ctx;
    const int64_t H = j->H, hd = j->hd, ld = H * hd, Lp = (j->maxL + 15) / 16 * 16, hdp = (hd + 15) / 16 * 16;
    float *S = malloc(sizeof(float) * (size_t)(j->maxL * j->maxL + Lp * hd + j->maxL * hdp));
    if (!S) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *kp = S + j->maxL * j->maxL, *vp = kp + Lp * hd;
    for (int64_t it = b; it < e; it++) {
        const int64_t s = it / H, h = it % H, r0 = j->offsets[s], L = j->offsets[s + 1] - r0;
        const float *q = j->q + r0 * ld + h * hd, *k = j->k + r0 * ld + h * hd, *v = j->v + r0 * ld + h * hd;
        pack_rows(kp, k, ld, L, hd);
        const int64_t PL = (L + 15) / 16, Pd = (hd + 15) / 16;
        ryz_gemm_f32_job sj = {S, q, kp, NULL, L, hd, L, PL, ld, L};
        ryz_matmul->gemm_f32(&sj, 0, (L + RYZ_GEMM_MB - 1) / RYZ_GEMM_MB * PL);
        for (int64_t i = 0; i < L; i++) {
            float *row = S + i * L;
            for (int64_t t = 0; t < L; t++) row[t] *= j->scale;
            ryz_ops->softmax_row(row, L);
        }
        /* vp[p][t][c] = v[t][16p + c]: panels of 16 value dimensions over the L keys */
        for (int64_t p = 0; p < Pd; p++)
            for (int64_t t = 0; t < L; t++)
                for (int64_t c = 0; c < 16; c++)
                    vp[(p * L + t) * 16 + c] = p * 16 + c < hd ? v[t * ld + p * 16 + c] : 0.0f;
        ryz_gemm_f32_job oj = {j->out + r0 * ld + h * hd, S, vp, NULL, L, L, hd, Pd, L, ld};
        ryz_matmul->gemm_f32(&oj, 0, (L + RYZ_GEMM_MB - 1) / RYZ_GEMM_MB * Pd);
    }
    free(S);
}

PyDoc_STRVAR(attention_segments_doc,
"attention_segments(out, q, k, v, offsets, scale) -> None\n\n"
"Bidirectional multi-head attention over sequences packed one after another (an encoder's\n"
"self-attention with the padding mask, without the padding): out, q, k, v float32 [T, H, hd];\n"
"offsets int64 [B + 1], offsets[0] = 0, increasing strictly, offsets[B] = T: segment s is rows\n"
"offsets[s] .. offsets[s+1]-1. For query row i of segment s and head h:\n"
"out[i, h] = softmax(scale * k[seg, h] @ q[i, h]) @ v[seg, h]. out must not overlap q, k or v.\n"
"Interruptible (Ctrl-C) between chunks of rows.");
static PyObject *py_attention_segments(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *ok, *ov, *ooff;
    double scale;
    if (!PyArg_ParseTuple(args, "OOOOOd:attention_segments", &oo, &oq, &ok, &ov, &ooff, &scale)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *q, *k, *v, *off;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 3, 1)) || !(q = ryz_arr_get(&a, oq, "q", RYZ_F32, 3, 0)) ||
        !(k = ryz_arr_get(&a, ok, "k", RYZ_F32, 3, 0)) || !(v = ryz_arr_get(&a, ov, "v", RYZ_F32, 3, 0)) ||
        !(off = ryz_arr_get(&a, ooff, "offsets", RYZ_I64, 1, 0)))
        goto fail;
    const int64_t T = ryz_dim(q, 0), H = ryz_dim(q, 1), hd = ryz_dim(q, 2), B = ryz_dim(off, 0) - 1;
    if (ryz_check_same_shape(out, q) || ryz_check_same_shape(k, q) || ryz_check_same_shape(v, q) ||
        ryz_check_no_overlap_any(out, &a) || ryz_check_finite(scale, "scale"))
        goto fail;
    const int64_t *o = ryz_data(off);
    if (B < 0 || o[0] != 0 || o[B] != T) {
        PyErr_Format(PyExc_ValueError, "offsets must start at 0 and end at T = q.shape[0] = %lld (got %lld "
                     "entries)", (long long)T, (long long)(B + 1));
        goto fail;
    }
    int64_t maxL = 0;
    for (int64_t s = 0; s < B; s++) {
        if (o[s + 1] <= o[s]) {
            PyErr_Format(PyExc_ValueError, "offsets must increase strictly (an empty segment has nothing to "
                         "attend to): offsets[%lld] = %lld, offsets[%lld] = %lld", (long long)s, (long long)o[s],
                         (long long)(s + 1), (long long)o[s + 1]);
            goto fail;
        }
        if (o[s + 1] - o[s] > maxL) maxL = o[s + 1] - o[s];
    }
    if (T == 0 || H == 0 || hd == 0) goto done;
    seg_job j = {ryz_data(out), ryz_data(q), ryz_data(k), ryz_data(v), o, B, H, hd, maxL, (float)scale, 0};
    /* items (segment, head) */
    if (ryz_run_chunked(seg_task, &j, B * H, ryz_chunk_items(maxL * maxL * hd * 2), 1) != 0) goto fail;
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

PyDoc_STRVAR(set_attention_variant_doc,
"set_attention_variant(name) -> str\n\n"
"Choose the attention paths of every binding (attention, the fused decode, batches) and return\n"
"the previous choice. 'tiled' (the default): prefill over a float32 cache in blocks of query\n"
"rows against tiles of keys (online softmax) and decode reading the cache rows in address order,\n"
"where the ISA level has them. 'units': one (query row, kv head) unit at a time and the per-head\n"
"decode pass (the kernels 'tiled' replaced; what other shapes use). Both give the same results to\n"
"float32 rounding; meant for side-by-side benchmarks (bench model --attention).");
static PyObject *py_set_attention_variant(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_attention_variant", &name)) return NULL;
    const char *prev = ryz_attn_tiled ? "tiled" : "units";
    if (strcmp(name, "tiled") == 0) {
        ryz_attn_tiled = 1;
    } else if (strcmp(name, "units") == 0) {
        ryz_attn_tiled = 0;
    } else {
        PyErr_Format(PyExc_ValueError, "attention variant must be 'tiled' or 'units', got '%s'", name);
        return NULL;
    }
    return PyUnicode_FromString(prev);
}

PyMethodDef ryz_attention_methods[] = {
    {"attention", py_attention, METH_VARARGS, attention_doc},
    {"set_attention_variant", py_set_attention_variant, METH_VARARGS, set_attention_variant_doc},
    {"attention_i8kv", py_attention_i8kv, METH_VARARGS, attention_i8kv_doc},
    {"quantize_kv_i8", py_quantize_kv_i8, METH_VARARGS, quantize_kv_i8_doc},
    {"attention_kv16", py_attention_kv16, METH_VARARGS, attention_kv16_doc},
    {"store_kv16", py_store_kv16, METH_VARARGS, store_kv16_doc},
    {"attention_segments", py_attention_segments, METH_VARARGS, attention_segments_doc},
    {NULL, NULL, 0, NULL},
};
