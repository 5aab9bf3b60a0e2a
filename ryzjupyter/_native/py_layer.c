/* py_layer.c: one whole BitNet b1.58 decoder layer for ONE token (decode) in one C call.
 *
 * bitnet_decode_layer(x, kc, vc, pos, weights, mults, eps, theta, scale, act)
 *
 * The Python forward pass issues ~20 native calls per layer and token (rmsnorm, three
 * ternary linears each quantizing the same input again, rope twice, attention, sub-norm,
 * o_proj, add, norm, gate, up, relu2, mul, sub-norm, down, add), each with argument checks,
 * a GIL release and a thread-pool job. Here the same layer is one call: the GIL is released
 * once, the input of q/k/v (and of gate/up) is quantized once, and the GEMVs of q, k and v
 * (and of gate and up) run as ONE thread-pool job over their concatenated rows. Five pool
 * jobs per layer instead of ~20. Between two GEMVs, while the caller runs the short serial
 * steps (norms, quantization, rope, short attention), a worker already reads the first rows
 * of the next GEMV into its cache and then takes more of its rows (see prefetch_side).
 *
 * There is no ISA code here: every step calls the dispatch tables of the other families
 * (ryz_ops, ryz_quant, ryz_ternary, ryz_attention), so the selected ISA level runs and the
 * result is bitwise identical to the Python path (the same kernels on the same data: integer
 * GEMV sums are exact whatever the row split, the attention split S depends on shapes only,
 * exactly as in py_attention.c, and the float ops are the same row/elementwise kernels).
 * Weights in the I2 or the T5 layout (all seven the same).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "layer.h"
#include "matmul.h"
#include "ops.h"
#include "quant.h"
#include "ryz_py.h"
#include "ternary.h"

const ryz_layer_kernels *ryz_layer = &ryz_layer_scalar;

void ryz_layer_select(ryz_isa isa) {
    static const ryz_layer_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_layer_scalar, &ryz_layer_avx2, &ryz_layer_avx512};
    ryz_layer = by_isa[isa];
    ryz_register_kernel("lm_head_i8", ryz_layer->name);
    ryz_register_kernel("bitnet_decode_layer", ryz_layer->name); /* composes the selected tables */
}

/* ---- quantized activations -------------------------------------------------------- */
typedef struct {
    int8_t *q;     /* [ldq], zero padded */
    int32_t qsum;
    float sx;
    int64_t ldq;
    int t5;        /* weights in the T5 layout (else I2) */
} qact;

static int quantize_act(qact *a, const float *x, int64_t K) {
    if (ryz_quant->quantize_row_i8(a->q, &a->sx, x, K)) return -1; /* NaN / inf */
    memset(a->q + K, 0, (size_t)(a->ldq - K));
    a->qsum = ryz_quant->sum_i8(a->q, K);
    return 0;
}

/* ---- GEMV over up to 3 matrices as one job (rows concatenated) ---------------------- */
typedef struct {
    ryz_ternary_job job[3];
    int64_t start[4];   /* row offsets of each matrix in the concatenation */
    int n;
    int t5;             /* layout of the weights: T5, else I2 */
} gemv_multi;

static void gemv_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    gemv_multi *g = ctx;
    for (int i = 0; i < g->n; i++) {
        int64_t lo = b > g->start[i] ? b : g->start[i];
        int64_t hi = e < g->start[i + 1] ? e : g->start[i + 1];
        if (lo < hi)
            (g->t5 ? ryz_ternary->gemm_t5 : ryz_ternary->gemm_i2)(&g->job[i], lo - g->start[i], hi - g->start[i]);
    }
}

static ryz_ternary_job make_job(float *out, const uint8_t *w, int64_t N, int64_t K, const qact *a,
                                float w_mult) {
    int64_t Kp = a->t5 ? ryz_t5_padded_k(K) : ryz_i2_padded_k(K);
    int64_t rb = a->t5 ? ryz_t5_row_bytes(K) : ryz_i2_row_bytes(K);
    return (ryz_ternary_job){.out_i = NULL, .out_f = out, .ldo = N, .w = w, .rb = rb,
                             .q = a->q, .ldq = a->ldq, .qsum = &a->qsum, .sx = &a->sx,
                             .w_mult = w_mult, .M = 1, .Kp = Kp, .N = N};
}

/* ---- overlapping the serial steps with the next GEMV's reads ----------------------------
 * Between two GEMVs the caller runs steps that read almost nothing from DRAM (norms,
 * quantization, rope, short attention) while the worker waits. Meanwhile one worker reads the
 * first rows of the next GEMV into its L2 (prefetch_side); the GEMV then gives that worker
 * those rows plus enough more that every thread has the same number of bytes left to read
 * from DRAM (run_gemv). Each output row is one thread's exact integer sum, so the split
 * changes no result. */
#define PF_SIDE_MAX (512 << 10)   /* at most half of a Zen 4 / Zen 5 L2 */

typedef struct {
    const uint8_t *w;    /* the next GEMV's first matrix */
    int64_t max_bytes;   /* min(its bytes, PF_SIDE_MAX) */
    int64_t done;        /* bytes prefetched (written by the worker) */
} prefetch_job;

static void prefetch_side(void *ctx) {
    prefetch_job *pf = ctx;
    int64_t off = 0;
    /* loads (volatile: never elided), not prefetches: a prefetch may be dropped, so only bytes
     * actually read are counted */
    while (off < pf->max_bytes && !ryz_side_should_stop()) {
        const int64_t end = off + 4096 < pf->max_bytes ? off + 4096 : pf->max_bytes;
        for (; off < end; off += 64) (void)*(const volatile uint8_t *)(pf->w + off);
    }
    pf->done = off;
}

/* Open the prefetch of `w` (bytes) on a worker: returns what to pass to overlap_end. */
static int overlap_begin(prefetch_job *pf, const uint8_t *w, int64_t bytes) {
    *pf = (prefetch_job){.w = w, .max_bytes = bytes < PF_SIDE_MAX ? bytes : PF_SIDE_MAX, .done = 0};
    return ryz_side_begin(prefetch_side, pf);
}

static int64_t overlap_end(prefetch_job *pf, int started) {
    ryz_side_end(started);
    return started ? pf->done : 0;
}

/* Range 1 (the prefetching worker's) is rows [0, r1); the others split the rest. The pool walks
 * them in chunks of about STEAL_BYTES of weights and a thread that has finished its range takes
 * the others' last chunks (ryz_parallel_ranges), so a job ends with its rows, not with the
 * slower thread (2B-4T, 2 threads: the two ranges' ends were 4.2 us apart on average, as the
 * memory bus favours one core or the other; 2.2 us with stealing). */
#define STEAL_BYTES (16 << 10)
#define MAX_SPLIT 64

/* Run the GEMV; `prefetched` bytes of its first rows are in a worker's cache. */
static void run_gemv(gemv_multi *g, const qact *a, int64_t prefetched) {
    g->t5 = a->t5;
    const int64_t N = g->start[g->n], T = ryz_num_threads();
    if (T < 2 || T > MAX_SPLIT || N < 32 * T) {  /* grain 16 rows, as the ternary binding uses */
        ryz_parallel_for(gemv_task, g, N, 16);
        return;
    }
    /* equal DRAM bytes: r1 - p = (N - p) / T with p the prefetched rows, in rows of 16 */
    const int64_t p = prefetched / g->job[0].rb;
    int64_t r1 = ((N - p) / T + p + 8) / 16 * 16;
    if (r1 > N - 16 * (T - 1)) r1 = N - 16 * (T - 1);
    int64_t ranges[MAX_SPLIT][2];
    for (int64_t part = 0; part < T; part++) {   /* range 1: [0, r1); ranges 0, 2, 3, ...: the rest */
        if (part == 1) {
            ranges[1][0] = 0;
            ranges[1][1] = r1;
            continue;
        }
        const int64_t k = part == 0 ? 0 : part - 1, rest = (N - r1 + 15) / 16, n = T - 1;
        const int64_t lo = r1 + 16 * (k * (rest / n) + (k < rest % n ? k : rest % n));
        const int64_t hi = lo + 16 * (rest / n + (k < rest % n ? 1 : 0));
        ranges[part][0] = lo;
        ranges[part][1] = hi < N ? hi : N;
    }
    int64_t chunk = (STEAL_BYTES / g->job[0].rb + 8) / 16 * 16;   /* whole 4-row tiles */
    ryz_parallel_ranges(gemv_task, g, (const int64_t (*)[2])ranges, (int)T, chunk < 16 ? 16 : chunk);
}

/* ---- attention for one query row (same plan, split and merge as py_attention.c) ------- */
typedef struct {
    float *out;
    const float *q, *k, *v;
    const int8_t *k8, *v8;   /* int8 cache, else NULL */
    const float *ks, *vs;    /* its scales [T, Hkv] */
    int64_t Hq, Hkv, hd, G, L, H, S;  /* H: kv heads per unit (ryz_attn_plan) */
    float scale;
    float *part, *ml;
    int failed;
} attn1_job;

/* items: (kv heads kvh .. kvh+H-1, part) = (kvh / H) * S + part */
static void attn1_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn1_job *j = ctx;
    const int64_t HG = j->H * j->G;
    float *scratch = malloc(sizeof(float) * (size_t)ryz_attn_scratch_floats(HG, j->hd, (j->L + j->S - 1) / j->S + 1));
    if (!scratch) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const int64_t kstride = j->Hkv * j->hd;
    for (int64_t it = b; it < e; it++) {
        const int64_t kvh = it / j->S * j->H, part = it % j->S;
        const int64_t t0 = j->L * part / j->S, t1 = j->L * (part + 1) / j->S;
        const int64_t off = t0 * kstride + kvh * j->hd, soff = t0 * j->Hkv + kvh;
        ryz_attn_unit u = {
            .q = j->q + kvh * j->G * j->hd, .k = j->k8 ? NULL : j->k + off, .v = j->k8 ? NULL : j->v + off,
            .k8 = j->k8 ? j->k8 + off : NULL, .v8 = j->k8 ? j->v8 + off : NULL,
            .ks = j->k8 ? j->ks + soff : NULL, .vs = j->k8 ? j->vs + soff : NULL, .sstride = j->Hkv,
            .o = j->S == 1 ? j->out + kvh * j->G * j->hd : j->part + it * HG * j->hd,
            .ml = j->S == 1 ? NULL : j->ml + it * 2 * HG,
            .H = j->H, .G = j->G, .hd = j->hd, .kstride = kstride, .L = t1 - t0, .scale = j->scale,
        };
        if (j->k8)
            ryz_attention->attend_i8(&u, scratch);
        else
            ryz_attention->attend(&u, scratch);
    }
    free(scratch);
}

static void attn1_merge(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn1_job *j = ctx;
    const int64_t HG = j->H * j->G, hd = j->hd, S = j->S;
    for (int64_t unit = b; unit < e; unit++) {
        for (int64_t g = 0; g < HG; g++)
            ryz_attn_merge_head(j->out + (unit * HG + g) * hd,
                                j->part + unit * S * HG * hd, j->ml + unit * S * HG * 2, S, HG, g, hd);
    }
}

/* ---- the layer ------------------------------------------------------------------------ */
typedef struct {
    int64_t D, Q, KVD, I, Hq, Hkv, hd, pos;
    float *x;                              /* [D] residual, updated in place */
    float *kc, *vc;                        /* [T, Hkv, hd] float32 cache, or NULL */
    int8_t *kc8, *vc8;                     /* [T, Hkv, hd] int8 cache, or NULL */
    float *ks, *vs;                        /* [T, Hkv] its scales */
    const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
    const uint8_t *wq, *wk, *wv, *wo, *wg, *wu, *wd;
    int t5;                                /* the 7 weights are T5-packed, else I2 */
    float mult[7];
    float eps, scale;
    double theta;
    int act;                               /* 0 relu2, 1 silu */
} layer_args;

/* Scratch of a decode call, kept per thread between calls (a token's 30 layers would
 * otherwise allocate and free the same ~15 buffers 30 times and compute the same rope table
 * 30 times); freed when the thread exits. */
typedef struct {
    void *mem;
    size_t size;
    double rope_theta;       /* the rope table cs is for (pos, theta, hd) */
    int64_t rope_pos, rope_hd;
} layer_scratch;
static pthread_key_t g_scratch_key;
static pthread_once_t g_scratch_once = PTHREAD_ONCE_INIT;
static int g_scratch_key_ok;

static void scratch_free(void *p) {
    layer_scratch *sc = p;
    free(sc->mem);
    free(sc);
}
static void scratch_key_make(void) { g_scratch_key_ok = pthread_key_create(&g_scratch_key, scratch_free) == 0; }

/* this thread's scratch, or NULL (out of memory) */
static layer_scratch *thread_scratch(void) {
    pthread_once(&g_scratch_once, scratch_key_make);
    if (!g_scratch_key_ok) return NULL;
    layer_scratch *sc = pthread_getspecific(g_scratch_key);
    if (!sc) {
        sc = calloc(1, sizeof *sc);
        if (!sc) return NULL;
        sc->rope_pos = -1;
        if (pthread_setspecific(g_scratch_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    return sc;
}

/* Carve nbytes (64-byte aligned) from the scratch at *off (base NULL: only count). */
static void *carve(char *base, size_t *off, int64_t nbytes) {
    void *p = base ? base + *off : NULL;
    *off += ((size_t)nbytes + 63) / 64 * 64;
    return p;
}

/* rope at position pos: cos/sin table as py_ops.c (inv_freq via double pow, cos/sin in double) */
static void rope_table(float *cs, int64_t pos, double theta, int64_t hd) {
    const int64_t half = hd / 2;
    const float p = (float)pos;
    for (int64_t i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)hd;
        float inv = 1.0f / (float)pow((double)(float)theta, (double)expo);
        float f = p * inv;
        cs[i] = (float)cos((double)f);
        cs[half + i] = (float)sin((double)f);
    }
}

/* returns 0, -1 out of memory, -2 NaN/inf activations */
static int decode_layer(const layer_args *A) {
    const int64_t D = A->D, Q = A->Q, KVD = A->KVD, I = A->I, hd = A->hd;
    const int64_t Kmax = D > Q ? (D > I ? D : I) : (Q > I ? Q : I);
    const int64_t Kpmax = A->t5 ? ryz_t5_padded_k(Kmax) : ryz_i2_padded_k(Kmax);
    const int64_t ldq = (Kpmax + 63) / 64 * 64;
    int64_t H;
    const int64_t Hkv = A->Hkv, G = A->Hq / Hkv, L = A->pos + 1, S = ryz_attn_plan(1, Hkv, L, A->kc8 != NULL, &H);
    const int i8 = A->kc8 != NULL;
    const int64_t fD = (D + 15) / 16 * 16 * 4, fQ = (Q + 15) / 16 * 16 * 4, fI = (I + 15) / 16 * 16 * 4;
    const int64_t fKV = (KVD + 15) / 16 * 16 * 4;
    /* scratch: xb xb2 [D], qv att an [Q], gate up tmp [I], q8, cs, kf vf, part ml */
    layer_scratch *sc = thread_scratch();
    if (!sc) return -1;
    float *xb, *qv, *att, *an, *xb2, *gate, *up, *tmp, *cs, *kf, *vf, *part, *ml;
    int8_t *q8;
    for (int pass = 0; pass < 2; pass++) {   /* pass 0 sizes, pass 1 carves */
        char *base = pass ? sc->mem : NULL;
        size_t off = 0;
        cs = carve(base, &off, 4 * (hd + 1));  /* first: it survives from call to call */
        xb = carve(base, &off, fD); xb2 = carve(base, &off, fD);
        qv = carve(base, &off, fQ); att = carve(base, &off, fQ); an = carve(base, &off, fQ);
        gate = carve(base, &off, fI); up = carve(base, &off, fI); tmp = carve(base, &off, fI);
        q8 = carve(base, &off, ldq);
        kf = i8 ? carve(base, &off, fKV) : NULL;
        vf = i8 ? carve(base, &off, fKV) : NULL;
        part = S > 1 ? carve(base, &off, 4 * Hkv * S * G * hd) : NULL;
        ml = S > 1 ? carve(base, &off, 4 * Hkv * S * G * 2) : NULL;
        if (pass == 0 && off > sc->size) {
            void *m = aligned_alloc(64, off);
            if (!m) return -1;
            free(sc->mem);
            *sc = (layer_scratch){m, off, 0.0, -1, 0};
        }
    }
    qact a = {q8, 0, 0.0f, ldq, A->t5};
    float *krow = i8 ? kf : A->kc + A->pos * KVD, *vrow = i8 ? vf : A->vc + A->pos * KVD;
    const int64_t rbD = A->t5 ? ryz_t5_row_bytes(D) : ryz_i2_row_bytes(D);
    const int64_t rbQ = A->t5 ? ryz_t5_row_bytes(Q) : ryz_i2_row_bytes(Q);
    prefetch_job pf;
    int side, rc = 0;
    int64_t got;

    /* attention block: x -> norm -> q, k, v */
    side = overlap_begin(&pf, A->wq, Q * rbD);
    ryz_ops->rmsnorm_row(xb, A->x, A->attn_norm, D, A->eps);
    rc = quantize_act(&a, xb, D) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    gemv_multi g = {.n = 3, .start = {0, Q, Q + KVD, Q + 2 * KVD}};
    g.job[0] = make_job(qv, A->wq, Q, D, &a, A->mult[0]);
    g.job[1] = make_job(krow, A->wk, KVD, D, &a, A->mult[1]);
    g.job[2] = make_job(vrow, A->wv, KVD, D, &a, A->mult[2]);
    run_gemv(&g, &a, got);

    /* rope, the new k/v row into the cache, attention over the L cached rows, sub-norm: short
     * attention (one part) runs on the caller while a worker reads wo; split attention is a
     * parallel job of its own and the worker reads wo during the sub-norm only */
    side = overlap_begin(&pf, A->wo, D * rbQ);
    if (sc->rope_pos != A->pos || sc->rope_theta != A->theta || sc->rope_hd != hd) {
        rope_table(cs, A->pos, A->theta, hd);
        sc->rope_pos = A->pos; sc->rope_theta = A->theta; sc->rope_hd = hd;
    }
    ryz_ops->rope_row(qv, A->Hq, hd, cs);
    ryz_ops->rope_row(krow, Hkv, hd, cs);
    if (i8)  /* the new row into the int8 cache, per (row, head), as quantize_kv_i8 */
        for (int64_t h = 0; h < Hkv && !rc; h++)
            if (ryz_quantize_kv_row(A->kc8 + A->pos * KVD + h * hd, A->ks + A->pos * Hkv + h, kf + h * hd, hd) ||
                ryz_quantize_kv_row(A->vc8 + A->pos * KVD + h * hd, A->vs + A->pos * Hkv + h, vf + h * hd, hd))
                rc = -2;
    attn1_job aj = {att, qv, A->kc, A->vc, A->kc8, A->vc8, A->ks, A->vs, A->Hq, Hkv, hd, G, L, H, S, A->scale,
                    part, ml, 0};
    if (S > 1) {
        got = overlap_end(&pf, side);
        side = 0;
    }
    if (!rc) {
        ryz_parallel_for(attn1_task, &aj, Hkv / H * S, 1);
        if (aj.failed) rc = -1;
    }
    if (!rc && S > 1) {
        ryz_parallel_for(attn1_merge, &aj, Hkv / H, Hkv / H);
        side = overlap_begin(&pf, A->wo, D * rbQ);
    }
    if (!rc) {
        ryz_ops->rmsnorm_row(an, att, A->attn_sub_norm, Q, A->eps);
        if (quantize_act(&a, an, Q)) rc = -2;
    }
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 1, .start = {0, D}};
    g.job[0] = make_job(xb2, A->wo, D, Q, &a, A->mult[3]);
    run_gemv(&g, &a, got);

    /* FFN block: x += o; x -> norm -> gate, up */
    side = overlap_begin(&pf, A->wg, I * rbD);
    ryz_ops->add(A->x, A->x, xb2, D);
    ryz_ops->rmsnorm_row(xb, A->x, A->ffn_norm, D, A->eps);
    rc = quantize_act(&a, xb, D) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 2, .start = {0, I, 2 * I}};
    g.job[0] = make_job(gate, A->wg, I, D, &a, A->mult[4]);
    g.job[1] = make_job(up, A->wu, I, D, &a, A->mult[5]);
    run_gemv(&g, &a, got);

    /* act(gate) * up -> sub-norm -> down; x += down */
    side = overlap_begin(&pf, A->wd, D * (A->t5 ? ryz_t5_row_bytes(I) : ryz_i2_row_bytes(I)));
    if (A->act == 0) ryz_ops->relu2(tmp, gate, I);
    else ryz_ops->silu(tmp, gate, I);
    ryz_ops->mul(gate, tmp, up, I);
    ryz_ops->rmsnorm_row(tmp, gate, A->ffn_sub_norm, I, A->eps);
    rc = quantize_act(&a, tmp, I) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 1, .start = {0, D}};
    g.job[0] = make_job(xb2, A->wd, D, I, &a, A->mult[6]);
    run_gemv(&g, &a, got);
    ryz_ops->add(A->x, A->x, xb2, D);
    return 0;
}

PyDoc_STRVAR(decode_layer_doc,
"bitnet_decode_layer(x, kc, vc, pos, weights, mults, eps, theta, scale, act[, k_scales, v_scales[, layout]]) -> None\n\n"
"One BitNet b1.58 decoder layer for one token at position pos, in one call (GIL released once):\n"
"x float32 [D] residual stream, updated in place; kc, vc float32 [T, Hkv, hd] this layer's\n"
"KV cache (row pos is written; rows 0..pos are attended; pos < T); with k_scales, v_scales float32\n"
"[T, Hkv] the cache is int8 [T, Hkv, hd] (as attention_i8kv / quantize_kv_i8);\n"
"weights = (attn_norm f32[D], wq u8[Q, i2_row_bytes(D)], wk u8[KVD, ..], wv u8[KVD, ..],\n"
"           attn_sub_norm f32[Q], wo u8[D, i2_row_bytes(Q)], ffn_norm f32[D],\n"
"           w_gate u8[I, i2_row_bytes(D)], w_up u8[I, ..], ffn_sub_norm f32[I], w_down u8[D, i2_row_bytes(I)])\n"
"(I2 layout; with layout = \"t5\" the seven matrices are T5-packed, t5_row_bytes), mults = the 7 w_mult floats (q, k, v, o, gate, up, down), eps (rms_norm_eps),\n"
"theta (rope_theta), scale (attention scale, head_dim**-0.5), act 0 = relu2, 1 = silu.\n"
"Q = Hq * hd with Hq = Q / hd; bitwise the same result as bitnet.py's attention_block + ffn_block.");

static PyObject *py_decode_layer(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *ox, *okc, *ovc, *ow, *om, *oks = Py_None, *ovs = Py_None;
    const char *layout = "i2";
    long long pos;
    double eps, theta, scale;
    int act;
    if (!PyArg_ParseTuple(args, "OOOLO!O!dddi|OOs:bitnet_decode_layer", &ox, &okc, &ovc, &pos, &PyTuple_Type, &ow,
                          &PyTuple_Type, &om, &eps, &theta, &scale, &act, &oks, &ovs, &layout))
        return NULL;
    const int i8 = oks != Py_None || ovs != Py_None;
    if (strcmp(layout, "i2") != 0 && strcmp(layout, "t5") != 0) {
        PyErr_Format(PyExc_ValueError, "layout must be \"i2\" or \"t5\", got \"%s\"", layout);
        return NULL;
    }
    const int t5 = layout[0] == 't';
    int64_t (*const row_bytes)(int64_t) = t5 ? ryz_t5_row_bytes : ryz_i2_row_bytes;
    const char *const rbD = t5 ? "t5_row_bytes(D)" : "i2_row_bytes(D)";
    const char *const rbQ = t5 ? "t5_row_bytes(Q)" : "i2_row_bytes(Q)";
    const char *const rbI = t5 ? "t5_row_bytes(I)" : "i2_row_bytes(I)";
    if (i8 && (oks == Py_None || ovs == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "the int8 KV cache needs both k_scales and v_scales");
        return NULL;
    }
    if (PyTuple_GET_SIZE(ow) != 11) {
        PyErr_Format(PyExc_ValueError, "weights must be a tuple of 11 arrays, got %zd", PyTuple_GET_SIZE(ow));
        return NULL;
    }
    if (PyTuple_GET_SIZE(om) != 7) {
        PyErr_Format(PyExc_ValueError, "mults must be a tuple of 7 floats, got %zd", PyTuple_GET_SIZE(om));
        return NULL;
    }
    if (act != 0 && act != 1) {
        PyErr_Format(PyExc_ValueError, "act must be 0 (relu2) or 1 (silu), got %d", act);
        return NULL;
    }
    if (!(isfinite(eps) && eps >= 0) || !(isfinite(theta) && theta > 0) || !isfinite(scale)) {
        PyErr_SetString(PyExc_ValueError, "eps must be finite >= 0, theta finite > 0, scale finite");
        return NULL;
    }
    layer_args A;
    memset(&A, 0, sizeof A);
    for (int i = 0; i < 7; i++) {
        double m = PyFloat_AsDouble(PyTuple_GET_ITEM(om, i));
        if (m == -1.0 && PyErr_Occurred()) return NULL;
        if (!isfinite(m)) {
            PyErr_Format(PyExc_ValueError, "mults[%d] must be finite", i);
            return NULL;
        }
        A.mult[i] = (float)m;
    }
    ryz_args a = {0}, b = {0};
    ryz_arr *x, *kc, *vc, *w[11], *ks = NULL, *vs = NULL;
    static const char *names[11] = {"attn_norm", "wq", "wk", "wv", "attn_sub_norm", "wo", "ffn_norm",
                                    "w_gate", "w_up", "ffn_sub_norm", "w_down"};
    static const int is_norm[11] = {1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0};
    if (!(x = ryz_arr_get(&a, ox, "x", RYZ_F32, 1, 1)) ||
        !(kc = ryz_arr_get(&a, okc, "kc", i8 ? RYZ_I8 : RYZ_F32, 3, 1)) ||
        !(vc = ryz_arr_get(&a, ovc, "vc", i8 ? RYZ_I8 : RYZ_F32, 3, 1)))
        goto fail;
    if (i8 && (!(ks = ryz_arr_get(&b, oks, "k_scales", RYZ_F32, 2, 1)) ||
               !(vs = ryz_arr_get(&b, ovs, "v_scales", RYZ_F32, 2, 1))))
        goto fail;
    for (int i = 0; i < 11; i++) {
        ryz_args *aa = i < 8 ? &a : &b;
        if (!(w[i] = ryz_arr_get(aa, PyTuple_GET_ITEM(ow, i), names[i], is_norm[i] ? RYZ_F32 : RYZ_U8,
                                 is_norm[i] ? 1 : 2, 0)))
            goto fail;
    }
    int64_t D = ryz_dim(x, 0), T = ryz_dim(kc, 0), Hkv = ryz_dim(kc, 1), hd = ryz_dim(kc, 2);
    int64_t Q = ryz_dim(w[1], 0), KVD = Hkv * hd, I = ryz_dim(w[7], 0);
    if (ryz_check_dim(vc, 0, T, "kc.shape[0]") || ryz_check_dim(vc, 1, Hkv, "kc.shape[1]") ||
        ryz_check_dim(vc, 2, hd, "kc.shape[2]") || ryz_check_dim(w[0], 0, D, "x.shape[0]") ||
        ryz_check_dim(w[1], 1, row_bytes(D), rbD) ||
        ryz_check_dim(w[2], 0, KVD, "Hkv * hd") || ryz_check_dim(w[2], 1, row_bytes(D), rbD) ||
        ryz_check_dim(w[3], 0, KVD, "Hkv * hd") || ryz_check_dim(w[3], 1, row_bytes(D), rbD) ||
        ryz_check_dim(w[4], 0, Q, "wq.shape[0]") || ryz_check_dim(w[5], 0, D, "x.shape[0]") ||
        ryz_check_dim(w[5], 1, row_bytes(Q), rbQ) || ryz_check_dim(w[6], 0, D, "x.shape[0]") ||
        ryz_check_dim(w[7], 1, row_bytes(D), rbD) || ryz_check_dim(w[8], 0, I, "w_gate.shape[0]") ||
        ryz_check_dim(w[8], 1, row_bytes(D), rbD) || ryz_check_dim(w[9], 0, I, "w_gate.shape[0]") ||
        ryz_check_dim(w[10], 0, D, "x.shape[0]") || ryz_check_dim(w[10], 1, row_bytes(I), rbI) ||
        ryz_check_no_overlap(x, kc) || ryz_check_no_overlap(x, vc) || ryz_check_no_overlap(kc, vc))
        goto fail;
    if (i8 && (ryz_check_dim(ks, 0, T, "kc.shape[0]") || ryz_check_dim(ks, 1, Hkv, "kc.shape[1]") ||
               ryz_check_dim(vs, 0, T, "kc.shape[0]") || ryz_check_dim(vs, 1, Hkv, "kc.shape[1]") ||
               ryz_check_no_overlap(ks, vs) || ryz_check_no_overlap(x, ks) || ryz_check_no_overlap(x, vs) ||
               ryz_check_no_overlap(kc, ks) || ryz_check_no_overlap(vc, vs) || ryz_check_no_overlap(kc, vs) ||
               ryz_check_no_overlap(vc, ks)))
        goto fail;
    for (int i = 0; i < 11; i++)
        if (ryz_check_no_overlap(x, w[i]) || ryz_check_no_overlap(kc, w[i]) || ryz_check_no_overlap(vc, w[i]))
            goto fail;
    if (hd < 2 || hd % 2 || Q % hd || Q / hd % Hkv) {
        PyErr_Format(PyExc_ValueError, "head_dim (kc.shape[2] = %lld) must be even and divide wq.shape[0] = %lld "
                     "into a multiple of Hkv = %lld heads", (long long)hd, (long long)Q, (long long)Hkv);
        goto fail;
    }
    if (pos < 0 || pos >= T) {
        PyErr_Format(PyExc_ValueError, "pos is %lld but must be in 0..T-1 (kc.shape[0] = %lld)", pos, (long long)T);
        goto fail;
    }
    if (D > RYZ_TERNARY_MAX_K || Q > RYZ_TERNARY_MAX_K || I > RYZ_TERNARY_MAX_K) {
        PyErr_SetString(PyExc_ValueError, "a dimension exceeds the ternary kernels' K limit");
        goto fail;
    }
    A.D = D; A.Q = Q; A.KVD = KVD; A.I = I; A.Hq = Q / hd; A.Hkv = Hkv; A.hd = hd; A.pos = pos;
    A.x = ryz_data(x);
    if (i8) {
        A.kc8 = ryz_data(kc); A.vc8 = ryz_data(vc); A.ks = ryz_data(ks); A.vs = ryz_data(vs);
    } else {
        A.kc = ryz_data(kc); A.vc = ryz_data(vc);
    }
    A.attn_norm = ryz_data(w[0]); A.wq = ryz_data(w[1]); A.wk = ryz_data(w[2]); A.wv = ryz_data(w[3]);
    A.attn_sub_norm = ryz_data(w[4]); A.wo = ryz_data(w[5]); A.ffn_norm = ryz_data(w[6]);
    A.wg = ryz_data(w[7]); A.wu = ryz_data(w[8]); A.ffn_sub_norm = ryz_data(w[9]); A.wd = ryz_data(w[10]);
    A.eps = (float)eps; A.theta = theta; A.scale = (float)scale; A.act = act; A.t5 = t5;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = decode_layer(&A);
    Py_END_ALLOW_THREADS
    if (rc == -1) {
        PyErr_NoMemory();
        goto fail;
    }
    if (rc == -2) {
        PyErr_SetString(PyExc_ValueError, "the layer's activations hold NaN or inf; cannot quantize them");
        goto fail;
    }
    ryz_args_release(&b);
    ryz_args_release(&a);
    if (PyErr_CheckSignals() != 0) return NULL;
    Py_RETURN_NONE;
fail:
    ryz_args_release(&b);
    ryz_args_release(&a);
    return NULL;
}

/* ---- int8 lm_head, one token ------------------------------------------------------------ */
typedef struct {
    float *out;
    const int8_t *w, *x;
    const float *ws;
    int64_t K;
    int32_t xsum;
    float xs;
} head_job;

static void head_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    head_job *j = ctx;
    ryz_layer->gemv_i8(j->out, j->w, j->ws, j->K, j->x, j->xsum, j->xs, b, e);
}

PyDoc_STRVAR(lm_head_i8_doc,
"lm_head_i8(out, xq, xs, wq, ws) -> None\n\n"
"matmul_i8 for one token: out float32 [1, N] = float(sum_k xq[0, k] wq[n, k]) / (xs[0] * ws[n]),\n"
"xq int8 [1, K], xs float32 [1], wq int8 [N, K], ws float32 [N]; bitwise the same as matmul_i8\n"
"(exact integer sum, same epilogue), with a streaming loop for the decode lm_head.\n"
"Threads split N; GIL released; Ctrl-C checked between chunks.");
static PyObject *py_lm_head_i8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *os, *ow, *ows;
    if (!PyArg_ParseTuple(args, "OOOOO:lm_head_i8", &oo, &oq, &os, &ow, &ows)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *xq, *xs, *wq, *ws;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) || !(xq = ryz_arr_get(&a, oq, "xq", RYZ_I8, 2, 0)) ||
        !(xs = ryz_arr_get(&a, os, "xs", RYZ_F32, 1, 0)) || !(wq = ryz_arr_get(&a, ow, "wq", RYZ_I8, 2, 0)) ||
        !(ws = ryz_arr_get(&a, ows, "ws", RYZ_F32, 1, 0)))
        goto fail;
    int64_t N = ryz_dim(wq, 0), K = ryz_dim(wq, 1);
    if (ryz_check_dim(xq, 0, 1, "1 (one token)") || ryz_check_dim(xq, 1, K, "wq.shape[1]") ||
        ryz_check_dim(xs, 0, 1, "1 (one token)") || ryz_check_dim(ws, 0, N, "wq.shape[0]") ||
        ryz_check_dim(out, 0, 1, "1 (one token)") || ryz_check_dim(out, 1, N, "wq.shape[0]") ||
        ryz_check_no_overlap(out, xq) || ryz_check_no_overlap(out, xs) || ryz_check_no_overlap(out, wq) ||
        ryz_check_no_overlap(out, ws))
        goto fail;
    if (K > RYZ_MATMUL_I8_MAX_K) {
        PyErr_Format(PyExc_ValueError, "wq.shape[1] (K=%lld) exceeds %d", (long long)K, RYZ_MATMUL_I8_MAX_K);
        goto fail;
    }
    const int8_t *x = ryz_data(xq);
    const int32_t xsum = ryz_quant->sum_i8(x, K);
    head_job j = {ryz_data(out), ryz_data(wq), x, ryz_data(ws), K, xsum, *(const float *)ryz_data(xs)};
    /* ~10 ms of streaming per chunk at ~25 GB/s */
    int64_t chunk = K > 0 ? ((int64_t)250000000 / K) / 16 * 16 : N;
    if (chunk < 64) chunk = 64;
    if (N > 0 && ryz_run_chunked(head_task, &j, N, chunk, 16) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_layer_methods[] = {
    {"lm_head_i8", py_lm_head_i8, METH_VARARGS, lm_head_i8_doc},
    {"bitnet_decode_layer", py_decode_layer, METH_VARARGS, decode_layer_doc},
    {NULL, NULL, 0, NULL},
};
