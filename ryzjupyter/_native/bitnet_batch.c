/* bitnet_batch.c: one decode step for B sequences at once (continuous batching; bitnet_layer.h).
 *
 * B streams, each with its own KV cache and position, advance by one token together. Per
 * layer every ternary linear runs as ONE GEMM with M = B (each stream's token is a column of
 * the same small-M product, so every weight row is read once for all the streams), attention
 * runs per stream over its own cache (one thread-pool job over the units of every stream), and
 * the rest (norms, quantization, rope, activations, residual adds) runs row by row. The int8
 * head is gemm_i8 over the B tokens (each block of head rows read once for all of them). The
 * GEMMs and the head are bitnet_gemm.c's (shared with the verify pass): rows split between the
 * threads with work stealing.
 *
 * Each stream's logits and cache rows are bitwise those ryz_bitnet_decode_token gives it
 * alone: the same kernels on the same rows. The GEMM's integer sums are exact and its float
 * epilogue is per row (acc / sx[m] * w_mult); quantization, norms, rope and the elementwise ops
 * are row kernels; attention uses, per stream, the plan, units and merge of the one-token path
 * (ryz_attn_plan depends on the stream's length only); gemm_i8 gives each token gemv_i8's logits.
 * No ISA code: every step calls the dispatch tables of the other families. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "bitnet_gemm.h"
#include "ops.h"
#include "quant.h"

/* ---- attention: every stream's units in one job ------------------------------------------ */
typedef struct {
    ryz_attn_cache c;
    const float *q;          /* the stream's queries [Hq * hd] (roped) */
    float *out;              /* its attention output [Hq * hd] */
    float *part, *ml;        /* split partials (S > 1) */
    int64_t L, H, S, first;  /* rows attended, kv heads per unit, split, first item in the job */
} attn_stream;

typedef struct {
    attn_stream *s;
    int64_t B, G, hd, scratch_floats;
    float scale;
    int failed;
} attn_batch;

/* items: stream b's items are [s[b].first, s[b+1].first); item i of a stream is
 * (kv heads (i / S) * H .. + H - 1, part i % S), as attn1_task in bitnet_layer.c */
static void attn_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    attn_batch *j = ctx;
    float *scratch = malloc(sizeof(float) * (size_t)j->scratch_floats);
    if (!scratch) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    int64_t sb = 0;
    for (int64_t it = b; it < e; it++) {
        while (sb + 1 < j->B && it >= j->s[sb + 1].first) sb++;
        const attn_stream *a = &j->s[sb];
        const int64_t i = it - a->first, kvh = i / a->S * a->H, part = i % a->S, HG = a->H * j->G;
        ryz_attn_run_unit(&a->c, a->q + kvh * j->G * j->hd, kvh, a->H, j->G, a->L * part / a->S,
                          a->L * (part + 1) / a->S, j->scale,
                          a->S == 1 ? a->out + kvh * j->G * j->hd : a->part + i * HG * j->hd,
                          a->S == 1 ? NULL : a->ml + i * 2 * HG, scratch);
    }
    free(scratch);
}

/* merge items: (stream, unit) over the split streams, listed in merge_of */
typedef struct {
    attn_batch *ab;
    const int64_t (*units)[2];   /* [n] (stream, unit) */
} attn_merge_job;

static void merge_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const attn_merge_job *m = ctx;
    const attn_batch *j = m->ab;
    for (int64_t it = b; it < e; it++) {
        const attn_stream *a = &j->s[m->units[it][0]];
        const int64_t unit = m->units[it][1], HG = a->H * j->G, hd = j->hd, S = a->S;
        for (int64_t g = 0; g < HG; g++)
            ryz_attn_merge_head(a->out + (unit * HG + g) * hd, a->part + unit * S * HG * hd,
                                a->ml + unit * S * HG * 2, S, HG, g, hd);
    }
}

/* ---- scratch: per thread, grown as needed, freed when the thread exits ------------------ */
typedef struct {
    void *mem;
    size_t size;
} batch_scratch;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_key_ok;

static void scratch_free(void *p) {
    batch_scratch *sc = p;
    free(sc->mem);
    free(sc);
}
static void key_make(void) { g_key_ok = pthread_key_create(&g_key, scratch_free) == 0; }

static void *thread_scratch(size_t bytes) {
    pthread_once(&g_once, key_make);
    if (!g_key_ok) return NULL;
    batch_scratch *sc = pthread_getspecific(g_key);
    if (!sc) {
        if (!(sc = calloc(1, sizeof *sc))) return NULL;
        if (pthread_setspecific(g_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    if (bytes > sc->size) {
        void *m = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!m) return NULL;
        free(sc->mem);
        sc->mem = m;
        sc->size = (bytes + 63) / 64 * 64;
    }
    return sc->mem;
}

typedef struct {
    float *xb, *xb2, *qv, *kf, *vf, *att, *an, *gate, *up, *tmp, *cs, *part, *ml;
    int8_t *q8;
    int32_t *qsum;
    float *sx;
    attn_stream *as;
    int64_t (*units)[2];
    int64_t ldq;
} batch_buffers;

/* S[b], H[b]: each stream's attention plan; parts: sum over streams of Hkv * S[b] * G */
static int carve_batch(const ryz_bitnet_config *c, int64_t B, int64_t parts, int64_t n_units, batch_buffers *b) {
    const int64_t D = c->D, Q = c->Q, KVD = c->KVD, I = c->I, hd = c->hd;
    const int64_t Kmax = D > Q ? (D > I ? D : I) : (Q > I ? Q : I);
    const int64_t Kpmax = c->t5 ? ryz_t5_padded_k(Kmax) : ryz_i2_padded_k(Kmax);
    b->ldq = (Kpmax + 63) / 64 * 64;
    char *base = NULL;
    for (int pass = 0; pass < 2; pass++) {   /* pass 0 sizes, pass 1 carves */
        size_t off = 0;
        b->xb = ryz_carve(base, &off, 4 * B * D); b->xb2 = ryz_carve(base, &off, 4 * B * D);
        b->qv = ryz_carve(base, &off, 4 * B * Q); b->att = ryz_carve(base, &off, 4 * B * Q);
        b->an = ryz_carve(base, &off, 4 * B * Q);
        b->kf = ryz_carve(base, &off, 4 * B * KVD); b->vf = ryz_carve(base, &off, 4 * B * KVD);
        b->gate = ryz_carve(base, &off, 4 * B * I); b->up = ryz_carve(base, &off, 4 * B * I);
        b->tmp = ryz_carve(base, &off, 4 * B * I);
        b->cs = ryz_carve(base, &off, 4 * B * hd);
        b->part = ryz_carve(base, &off, 4 * parts * hd); b->ml = ryz_carve(base, &off, 4 * parts * 2);
        b->q8 = ryz_carve(base, &off, B * b->ldq);
        b->qsum = ryz_carve(base, &off, 4 * B); b->sx = ryz_carve(base, &off, 4 * B);
        b->as = ryz_carve(base, &off, (int64_t)sizeof(attn_stream) * B);
        b->units = ryz_carve(base, &off, 16 * (n_units > 0 ? n_units : 1));
        if (pass == 0 && !(base = thread_scratch(off))) return -1;
    }
    return 0;
}

/* ---- one layer for the B streams ------------------------------------------------------------ */
static int batch_layer(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                       int n_layers, int l, int64_t B, float *x, const int64_t *pos, const int64_t *S,
                       const int64_t *H, batch_buffers *bb) {
    const int64_t D = c->D, Q = c->Q, KVD = c->KVD, I = c->I, hd = c->hd, Hkv = c->Hkv, G = c->Hq / Hkv;
    const ryz_bitnet_rows a = {bb->q8, bb->qsum, bb->sx, bb->ldq, B, c->t5};

    /* attention block: x -> norm -> q, k, v (one GEMM over the three) */
    for (int64_t m = 0; m < B; m++) ryz_ops->rmsnorm_row(bb->xb + m * D, x + m * D, w->attn_norm, D, c->eps);
    if (ryz_bitnet_quantize_rows(&a, bb->xb, D, D)) return -2;
    ryz_bitnet_gemm g = {.n = 3, .start = {0, Q, Q + KVD, Q + 2 * KVD}};
    g.job[0] = ryz_bitnet_gemm_job(bb->qv, w->wq, Q, D, &a, w->mult[0]);
    g.job[1] = ryz_bitnet_gemm_job(bb->kf, w->wk, KVD, D, &a, w->mult[1]);
    g.job[2] = ryz_bitnet_gemm_job(bb->vf, w->wv, KVD, D, &a, w->mult[2]);
    ryz_bitnet_gemm_run(&g, &a);

    /* per stream: rope, the new k/v row into its cache, its attention units */
    int64_t items = 0, n_units = 0, parts = 0;
    int64_t scratch_floats = 0;
    for (int64_t m = 0; m < B; m++) {
        const ryz_bitnet_kv *kvm = &kv[m * n_layers + l];
        const int64_t p = pos[m];
        float *krow = bb->kf + m * KVD, *vrow = bb->vf + m * KVD;
        ryz_ops->rope_row(bb->qv + m * Q, c->Hq, hd, bb->cs + m * hd);
        ryz_ops->rope_row(krow, Hkv, hd, bb->cs + m * hd);
        if (kvm->kc8) {      /* as quantize_kv_i8, per (row, head) */
            for (int64_t h = 0; h < Hkv; h++)
                if (ryz_quantize_kv_row(kvm->kc8 + p * KVD + h * hd, kvm->ks + p * Hkv + h, krow + h * hd, hd) ||
                    ryz_quantize_kv_row(kvm->vc8 + p * KVD + h * hd, kvm->vs + p * Hkv + h, vrow + h * hd, hd))
                    return -2;
        } else if (kvm->kc16) {   /* as store_kv16 */
            if (ryz_store_kv16_row(kvm->kc16 + p * KVD, krow, KVD, kvm->fmt16) |
                ryz_store_kv16_row(kvm->vc16 + p * KVD, vrow, KVD, kvm->fmt16))
                return -3;
        } else {
            memcpy(kvm->kc + p * KVD, krow, sizeof(float) * (size_t)KVD);
            memcpy(kvm->vc + p * KVD, vrow, sizeof(float) * (size_t)KVD);
        }
        attn_stream *as = &bb->as[m];
        *as = (attn_stream){
            .c = {kvm->kc, kvm->vc, kvm->kc8, kvm->vc8, kvm->ks, kvm->vs, Hkv, hd, kvm->kc16, kvm->vc16, kvm->fmt16},
            .q = bb->qv + m * Q, .out = bb->att + m * Q, .part = bb->part + parts * hd, .ml = bb->ml + parts * 2,
            .L = p + 1, .H = H[m], .S = S[m], .first = items,
        };
        const int64_t n_items = Hkv / H[m] * S[m];
        items += n_items;
        if (S[m] > 1) {
            parts += n_items * H[m] * G;
            for (int64_t u = 0; u < Hkv / H[m]; u++) {
                bb->units[n_units][0] = m;
                bb->units[n_units][1] = u;
                n_units++;
            }
        }
        const int64_t sf = ryz_attn_scratch_floats(H[m] * G, hd, (p + 1 + S[m] - 1) / S[m] + 1);
        if (sf > scratch_floats) scratch_floats = sf;
    }
    attn_batch ab = {bb->as, B, G, hd, scratch_floats, c->scale, 0};
    ryz_parallel_for(attn_task, &ab, items, 1);
    if (ab.failed) return -1;
    if (n_units) {
        attn_merge_job mj = {&ab, (const int64_t (*)[2])bb->units};
        ryz_parallel_for(merge_task, &mj, n_units, 1);
    }

    /* sub-norm -> o_proj; x += o */
    for (int64_t m = 0; m < B; m++) ryz_ops->rmsnorm_row(bb->an + m * Q, bb->att + m * Q, w->attn_sub_norm, Q, c->eps);
    if (ryz_bitnet_quantize_rows(&a, bb->an, Q, Q)) return -2;
    g = (ryz_bitnet_gemm){.n = 1, .start = {0, D}};
    g.job[0] = ryz_bitnet_gemm_job(bb->xb2, w->wo, D, Q, &a, w->mult[3]);
    ryz_bitnet_gemm_run(&g, &a);

    /* FFN block: norm -> gate, up (one GEMM) -> act(gate) * up -> sub-norm -> down; x += down */
    for (int64_t m = 0; m < B; m++) {
        ryz_ops->add(x + m * D, x + m * D, bb->xb2 + m * D, D);
        ryz_ops->rmsnorm_row(bb->xb + m * D, x + m * D, w->ffn_norm, D, c->eps);
    }
    if (ryz_bitnet_quantize_rows(&a, bb->xb, D, D)) return -2;
    g = (ryz_bitnet_gemm){.n = 2, .start = {0, I, 2 * I}};
    g.job[0] = ryz_bitnet_gemm_job(bb->gate, w->wg, I, D, &a, w->mult[4]);
    g.job[1] = ryz_bitnet_gemm_job(bb->up, w->wu, I, D, &a, w->mult[5]);
    ryz_bitnet_gemm_run(&g, &a);
    for (int64_t m = 0; m < B; m++) {
        float *gate = bb->gate + m * I, *up = bb->up + m * I, *tmp = bb->tmp + m * I;
        if (c->act == 0) ryz_ops->relu2(tmp, gate, I);
        else ryz_ops->silu(tmp, gate, I);
        ryz_ops->mul(gate, tmp, up, I);
        ryz_ops->rmsnorm_row(tmp, gate, w->ffn_sub_norm, I, c->eps);
    }
    if (ryz_bitnet_quantize_rows(&a, bb->tmp, I, I)) return -2;
    g = (ryz_bitnet_gemm){.n = 1, .start = {0, D}};
    g.job[0] = ryz_bitnet_gemm_job(bb->xb2, w->wd, D, I, &a, w->mult[6]);
    ryz_bitnet_gemm_run(&g, &a);
    for (int64_t m = 0; m < B; m++) ryz_ops->add(x + m * D, x + m * D, bb->xb2 + m * D, D);
    return 0;
}

int ryz_bitnet_decode_batch(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            int n_layers, int64_t B, float *x, const int64_t *pos, const ryz_bitnet_head *head,
                            float *logits, int64_t ns[2]) {
    const int64_t t0 = ryz_now_ns();
    ns[0] = ns[1] = 0;
    if (B <= 0) return 0;
    const int64_t Hkv = c->Hkv, G = c->Hq / Hkv;
    const int i8 = kv[0].kc8 != NULL;
    int64_t *plan = malloc(sizeof(int64_t) * 2 * (size_t)B);   /* S[B], H[B] */
    if (!plan) return -1;
    int64_t *S = plan, *H = plan + B, parts = 0, n_units = 0;
    for (int64_t m = 0; m < B; m++) {   /* each stream's attention plan, as the one-token path's */
        S[m] = ryz_attn_plan(1, Hkv, pos[m] + 1, i8, &H[m]);
        if (S[m] > 1) {
            parts += Hkv * S[m] * G;
            n_units += Hkv / H[m];
        }
    }
    batch_buffers bb;
    int rc = carve_batch(c, B, parts, n_units, &bb);
    if (rc) {
        free(plan);
        return rc;
    }
    for (int64_t m = 0; m < B; m++) ryz_bitnet_rope_table(bb.cs + m * c->hd, pos[m], c->theta, c->hd);
    for (int l = 0; l < n_layers && !rc; l++) rc = batch_layer(c, w + l, kv, n_layers, l, B, x, pos, S, H, &bb);
    free(plan);
    const int64_t t1 = ryz_now_ns();
    ns[0] = t1 - t0;
    if (rc || !head) return rc;

    /* final norm, quantization and the int8 head, per stream (as decode_head) */
    const int64_t D = c->D;
    for (int64_t m = 0; m < B; m++) {
        ryz_ops->rmsnorm_row(bb.xb + m * D, x + m * D, head->norm, D, c->eps);
        if (ryz_quant->quantize_row_i8(bb.q8 + m * bb.ldq, &bb.sx[m], bb.xb + m * D, D)) return -2;
    }
    ryz_bitnet_head_run(logits, head, bb.q8, bb.ldq, bb.sx, B, D);
    ns[1] = ryz_now_ns() - t1;
    return 0;
}
