/* bitnet_layer.c: BitNet b1.58 decode for ONE token in C (bitnet_layer.h).
 *
 * The Python forward pass issues ~20 native calls per layer and token (rmsnorm, three
 * ternary linears each quantizing the same input again, rope twice, attention, sub-norm,
 * o_proj, add, norm, gate, up, relu2, mul, sub-norm, down, add), each with argument checks,
 * a GIL release and a thread-pool job. Here a layer is one C function: the input of q/k/v
 * (and of gate/up) is quantized once, and the GEMVs of q, k and v (and of gate and up) run as
 * ONE thread-pool job over their concatenated rows. Between two GEMVs, while the caller runs
 * the short serial steps (norms, quantization, rope, short attention), a worker already reads
 * the first rows of the next GEMV into its cache and then takes more of its rows
 * (prefetch_side). ryz_bitnet_decode_token runs all layers and the lm_head the same way, so
 * no Python call (argument parsing: ~7 us a layer, 2 % of a decode step) sits between two
 * layers either.
 *
 * There is no ISA code here: every step calls the dispatch tables of the other families
 * (ryz_ops, ryz_quant, ryz_ternary, ryz_attention, ryz_layer), so the selected ISA level runs
 * and the result is bitwise identical to the Python path (the same kernels on the same data:
 * integer GEMV sums are exact whatever the row split, the attention split S depends on shapes
 * only, exactly as in py_attention.c, and the float ops are the same row/elementwise kernels).
 * Weights in the I2 or the T5 layout (all seven the same). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention.h"
#include "bitnet_gemm.h"
#include "layer.h"
#include "ops.h"
#include "quant.h"
#include "ternary.h"

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
 * memory bus favours one core or the other; 2.2 us with stealing). 64 KiB chunks: 1.5 % more
 * streaming than 16 KiB with 2 threads (a standalone GEMV loop on a Zen 5), the same ends. */
#define STEAL_BYTES (64 << 10)
#define MAX_SPLIT 64

/* Rows [0, N) for T threads as ranges of whole 16-row tiles, range 1 (the prefetching
 * worker's) = [0, r1), the others splitting the rest, so that every thread has the same number
 * of rows left to read from DRAM when p rows are already in the worker's cache. Returns the
 * number of ranges, 0 when the rows are too few to split (run them as one parallel_for). */
static int split_rows(int64_t N, int64_t p, int64_t T, int64_t ranges[][2]) {
    if (T < 2 || T > MAX_SPLIT || N < 32 * T) return 0;   /* grain 16 rows, as the ternary binding uses */
    /* equal DRAM rows: r1 - p = (N - p) / T */
    int64_t r1 = ((N - p) / T + p + 8) / 16 * 16;
    if (r1 > N - 16 * (T - 1)) r1 = N - 16 * (T - 1);
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
    return (int)T;
}

/* Run fn over rows [0, N) of `row_bytes` bytes each, `prefetched` bytes of the first rows
 * being in a worker's cache: split_rows, walked with work stealing in chunks of about
 * STEAL_BYTES (whole 16-row tiles). */
static void run_rows(ryz_task_fn fn, void *ctx, int64_t N, int64_t row_bytes, int64_t prefetched) {
    int64_t ranges[MAX_SPLIT][2];
    const int n = split_rows(N, prefetched / row_bytes, ryz_num_threads(), ranges);
    if (!n) {
        ryz_parallel_for(fn, ctx, N, 16);
        return;
    }
    const int64_t chunk = (STEAL_BYTES / row_bytes + 8) / 16 * 16;
    ryz_parallel_ranges(fn, ctx, (const int64_t (*)[2])ranges, n, chunk < 16 ? 16 : chunk);
}

/* Run the GEMV; `prefetched` bytes of its first rows are in a worker's cache. */
static void run_gemv(gemv_multi *g, const qact *a, int64_t prefetched) {
    g->t5 = a->t5;
    run_rows(gemv_task, g, g->start[g->n], g->job[0].rb, prefetched);
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
    const uint16_t *k16, *v16;  /* 16-bit cache, else NULL */
    int fmt16;
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
    const ryz_attn_cache c = {j->k, j->v, j->k8, j->v8, j->ks, j->vs, j->Hkv, j->hd, j->k16, j->v16, j->fmt16};
    for (int64_t it = b; it < e; it++) {
        const int64_t kvh = it / j->S * j->H, part = it % j->S;
        ryz_attn_run_unit(&c, j->q + kvh * j->G * j->hd, kvh, j->H, j->G, j->L * part / j->S,
                          j->L * (part + 1) / j->S, j->scale,
                          j->S == 1 ? j->out + kvh * j->G * j->hd : j->part + it * HG * j->hd,
                          j->S == 1 ? NULL : j->ml + it * 2 * HG, scratch);
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

/* rope at position pos: cos/sin table as py_ops.c (inv_freq via double pow, cos/sin in double) */
void ryz_bitnet_rope_table(float *cs, int64_t pos, double theta, int64_t hd) {
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


/* The scratch buffers of a layer (and of the head, which uses xb and q8), carved from the
 * calling thread's scratch; cs (the rope table) comes first so it survives from call to call. */
typedef struct {
    float *xb, *xb2, *qv, *att, *an, *gate, *up, *tmp, *cs, *kf, *vf, *part, *ml;
    int8_t *q8;
    int64_t ldq;
} layer_buffers;

/* S: the attention split (ryz_attn_plan); staged: the new k/v row goes through kf, vf (a
 * cache of another format than float32) */
static layer_scratch *carve_buffers(const ryz_bitnet_config *c, int staged, int64_t S, layer_buffers *b) {
    const int64_t D = c->D, Q = c->Q, I = c->I, hd = c->hd, Hkv = c->Hkv, G = c->Hq / c->Hkv;
    const int64_t Kmax = D > Q ? (D > I ? D : I) : (Q > I ? Q : I);
    const int64_t Kpmax = c->t5 ? ryz_t5_padded_k(Kmax) : ryz_i2_padded_k(Kmax);
    const int64_t fD = (D + 15) / 16 * 16 * 4, fQ = (Q + 15) / 16 * 16 * 4, fI = (I + 15) / 16 * 16 * 4;
    const int64_t fKV = (c->KVD + 15) / 16 * 16 * 4;
    b->ldq = (Kpmax + 63) / 64 * 64;
    layer_scratch *sc = thread_scratch();
    if (!sc) return NULL;
    for (int pass = 0; pass < 2; pass++) {   /* pass 0 sizes, pass 1 carves */
        char *base = pass ? sc->mem : NULL;
        size_t off = 0;
        b->cs = ryz_carve(base, &off, 4 * (hd + 1));
        b->xb = ryz_carve(base, &off, fD); b->xb2 = ryz_carve(base, &off, fD);
        b->qv = ryz_carve(base, &off, fQ); b->att = ryz_carve(base, &off, fQ); b->an = ryz_carve(base, &off, fQ);
        b->gate = ryz_carve(base, &off, fI); b->up = ryz_carve(base, &off, fI); b->tmp = ryz_carve(base, &off, fI);
        b->q8 = ryz_carve(base, &off, b->ldq);
        b->kf = staged ? ryz_carve(base, &off, fKV) : NULL;
        b->vf = staged ? ryz_carve(base, &off, fKV) : NULL;
        b->part = S > 1 ? ryz_carve(base, &off, 4 * Hkv * S * G * hd) : NULL;
        b->ml = S > 1 ? ryz_carve(base, &off, 4 * Hkv * S * G * 2) : NULL;
        if (pass == 0 && off > sc->size) {
            void *m = aligned_alloc(64, off);
            if (!m) return NULL;
            free(sc->mem);
            *sc = (layer_scratch){m, off, 0.0, -1, 0};
        }
    }
    return sc;
}

int ryz_bitnet_decode_layer(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            float *x, int64_t pos) {
    const int64_t D = c->D, Q = c->Q, KVD = c->KVD, I = c->I, hd = c->hd;
    const int i8 = kv->kc8 != NULL, staged = i8 || kv->kc16;
    int64_t H;
    const int64_t Hkv = c->Hkv, G = c->Hq / Hkv, L = pos + 1, S = ryz_attn_plan(1, Hkv, L, i8, &H);
    layer_buffers b;
    layer_scratch *sc = carve_buffers(c, staged, S, &b);
    if (!sc) return -1;
    qact a = {b.q8, 0, 0.0f, b.ldq, c->t5};
    float *krow = staged ? b.kf : kv->kc + pos * KVD, *vrow = staged ? b.vf : kv->vc + pos * KVD;
    const int64_t rbD = c->t5 ? ryz_t5_row_bytes(D) : ryz_i2_row_bytes(D);
    const int64_t rbQ = c->t5 ? ryz_t5_row_bytes(Q) : ryz_i2_row_bytes(Q);
    const int64_t rbI = c->t5 ? ryz_t5_row_bytes(I) : ryz_i2_row_bytes(I);
    prefetch_job pf;
    int side, rc = 0;
    int64_t got;

    /* attention block: x -> norm -> q, k, v */
    side = overlap_begin(&pf, w->wq, Q * rbD);
    ryz_ops->rmsnorm_row(b.xb, x, w->attn_norm, D, c->eps);
    rc = quantize_act(&a, b.xb, D) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    gemv_multi g = {.n = 3, .start = {0, Q, Q + KVD, Q + 2 * KVD}};
    g.job[0] = make_job(b.qv, w->wq, Q, D, &a, w->mult[0]);
    g.job[1] = make_job(krow, w->wk, KVD, D, &a, w->mult[1]);
    g.job[2] = make_job(vrow, w->wv, KVD, D, &a, w->mult[2]);
    run_gemv(&g, &a, got);

    /* rope, the new k/v row into the cache, attention over the L cached rows, sub-norm: short
     * attention (one part) runs on the caller while a worker reads wo; split attention is a
     * parallel job of its own and the worker reads wo during the sub-norm only */
    side = overlap_begin(&pf, w->wo, D * rbQ);
    if (sc->rope_pos != pos || sc->rope_theta != c->theta || sc->rope_hd != hd) {
        ryz_bitnet_rope_table(b.cs, pos, c->theta, hd);
        sc->rope_pos = pos; sc->rope_theta = c->theta; sc->rope_hd = hd;
    }
    ryz_ops->rope_row(b.qv, c->Hq, hd, b.cs);
    ryz_ops->rope_row(krow, Hkv, hd, b.cs);
    if (i8)  /* the new row into the int8 cache, per (row, head), as quantize_kv_i8 */
        for (int64_t h = 0; h < Hkv && !rc; h++)
            if (ryz_quantize_kv_row(kv->kc8 + pos * KVD + h * hd, kv->ks + pos * Hkv + h, b.kf + h * hd, hd) ||
                ryz_quantize_kv_row(kv->vc8 + pos * KVD + h * hd, kv->vs + pos * Hkv + h, b.vf + h * hd, hd))
                rc = -2;
    if (kv->kc16 && (ryz_store_kv16_row(kv->kc16 + pos * KVD, b.kf, KVD, kv->fmt16) |
                     ryz_store_kv16_row(kv->vc16 + pos * KVD, b.vf, KVD, kv->fmt16)))
        rc = -3;     /* the new row into the 16-bit cache, as store_kv16 */
    attn1_job aj = {b.att, b.qv, kv->kc, kv->vc, kv->kc8, kv->vc8, kv->ks, kv->vs, c->Hq, Hkv, hd, G, L, H, S,
                    c->scale, b.part, b.ml, 0, kv->kc16, kv->vc16, kv->fmt16};
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
        side = overlap_begin(&pf, w->wo, D * rbQ);
    }
    if (!rc) {
        ryz_ops->rmsnorm_row(b.an, b.att, w->attn_sub_norm, Q, c->eps);
        if (quantize_act(&a, b.an, Q)) rc = -2;
    }
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 1, .start = {0, D}};
    g.job[0] = make_job(b.xb2, w->wo, D, Q, &a, w->mult[3]);
    run_gemv(&g, &a, got);

    /* FFN block: x += o; x -> norm -> gate, up */
    side = overlap_begin(&pf, w->wg, I * rbD);
    ryz_ops->add(x, x, b.xb2, D);
    ryz_ops->rmsnorm_row(b.xb, x, w->ffn_norm, D, c->eps);
    rc = quantize_act(&a, b.xb, D) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 2, .start = {0, I, 2 * I}};
    g.job[0] = make_job(b.gate, w->wg, I, D, &a, w->mult[4]);
    g.job[1] = make_job(b.up, w->wu, I, D, &a, w->mult[5]);
    run_gemv(&g, &a, got);

    /* act(gate) * up -> sub-norm -> down; x += down */
    side = overlap_begin(&pf, w->wd, D * rbI);
    if (c->act == 0) ryz_ops->relu2(b.tmp, b.gate, I);
    else ryz_ops->silu(b.tmp, b.gate, I);
    ryz_ops->mul(b.gate, b.tmp, b.up, I);
    ryz_ops->rmsnorm_row(b.tmp, b.gate, w->ffn_sub_norm, I, c->eps);
    rc = quantize_act(&a, b.tmp, I) ? -2 : 0;
    got = overlap_end(&pf, side);
    if (rc) return rc;
    g = (gemv_multi){.n = 1, .start = {0, D}};
    g.job[0] = make_job(b.xb2, w->wd, D, I, &a, w->mult[6]);
    run_gemv(&g, &a, got);
    ryz_ops->add(x, x, b.xb2, D);
    return 0;
}

/* ---- the int8 lm_head ----------------------------------------------------------------- */
void ryz_head_i8_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const ryz_head_i8_job *j = ctx;
    ryz_layer->gemv_i8(j->out, j->w, j->ws, j->K, j->x, j->xsum, j->xs, b, e);
}

/* final norm, quantization (as quantize_rows_i8) and the head GEMV (as lm_head_i8); a worker
 * reads the head's first rows meanwhile */
static int decode_head(const ryz_bitnet_config *c, const ryz_bitnet_head *h, const float *x, float *logits) {
    const int64_t D = c->D;
    layer_buffers b;
    if (!carve_buffers(c, 0, 1, &b)) return -1;
    prefetch_job pf;
    const int side = overlap_begin(&pf, (const uint8_t *)h->w, h->V * D);
    float xs = 0.0f;
    ryz_ops->rmsnorm_row(b.xb, x, h->norm, D, c->eps);
    const int bad = ryz_quant->quantize_row_i8(b.q8, &xs, b.xb, D);
    const int64_t got = overlap_end(&pf, side);
    if (bad) return -2;
    ryz_head_i8_job j = {logits, h->w, b.q8, h->s, D, ryz_quant->sum_i8(b.q8, D), xs};
    run_rows(ryz_head_i8_task, &j, h->V, D, got);
    return 0;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int ryz_bitnet_decode_token(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            int n_layers, float *x, int64_t pos, const ryz_bitnet_head *head, float *logits,
                            int64_t ns[2]) {
    const int64_t t0 = now_ns();
    ns[0] = ns[1] = 0;
    for (int l = 0; l < n_layers; l++) {
        const int rc = ryz_bitnet_decode_layer(c, w + l, kv + l, x, pos);
        if (rc) return rc;
    }
    const int64_t t1 = now_ns();
    ns[0] = t1 - t0;
    if (!head) return 0;
    const int rc = decode_head(c, head, x, logits);
    ns[1] = now_ns() - t1;
    return rc;
}
