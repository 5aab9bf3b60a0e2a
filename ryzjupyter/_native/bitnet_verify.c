/* bitnet_verify.c: BitNet b1.58 verify pass of speculative decoding (bitnet_layer.h).
 *
 * n tokens (a chain of draft tokens, or a tree of them) go through every layer as one batch:
 * each weight row is read once for all n tokens (the ternary GEMMs with M = n, the int8 head
 * with gemm_i8), and each token's row of every result is bitwise what ryz_bitnet_decode_token
 * gives for that token when its ancestors were decoded one by one before it. That is what makes
 * speculative greedy output token-for-token equal to plain greedy output:
 *   - the ternary and int8 products are exact integer sums with the same float epilogue whatever
 *     M is; norms, quantization, rope, residual adds and activations are the same row kernels;
 *   - attention: node i, at depth d (position pos + d), attends to the cached rows 0..pos-1, its
 *     ancestors and itself, exactly as a decode step at position pos + d does: L = pos + d + 1
 *     rows, the same split into parts (ryz_attn_plan with one query row) and the same merge.
 * The tree (nodes in depth-first preorder: a node's parent is the last earlier node one level
 * up) is attended with the cache as a stack: node i's keys and values are written to row
 * pos + depth[i] just before it attends, so rows pos..pos + d - 1 then hold exactly its
 * ancestors (a depth-first walk only overwrites a row once it has left that subtree). Nodes
 * that extend the previous one (a chain segment) write their rows together and attend in one
 * parallel job. After the call the rows pos.. hold the last path of the walk; every node's row
 * is also written to the stash (when given) so the caller can copy the accepted path into place.
 * The GEMMs and the head are bitnet_gemm.c's, as the batched decode step's: rows split between
 * the threads with work stealing. No ISA code here: every step calls the dispatch tables
 * (ternary, layer, ops, quant, attention). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "bitnet_gemm.h"
#include "ops.h"
#include "quant.h"

/* ---- scratch of one call ------------------------------------------------------------------ */
typedef struct {
    int64_t n, ldq;
    float *xb, *qv, *kf, *vf, *att, *an, *xb2, *gate, *up, *tmp, *cs;
    int8_t *q8;
    int32_t *qsum;
    float *sx;
    ryz_bitnet_rows rows;    /* q8, qsum, sx as the GEMMs' activations */
} vbuf;

static void *vbuf_alloc(const ryz_bitnet_config *c, int64_t n, vbuf *b) {
    const int64_t D = c->D, Q = c->Q, I = c->I, KVD = c->KVD, hd = c->hd;
    const int64_t Kmax = D > Q ? (D > I ? D : I) : (Q > I ? Q : I);
    const int64_t Kpmax = c->t5 ? ryz_t5_padded_k(Kmax) : ryz_i2_padded_k(Kmax);
    b->n = n;
    b->ldq = (Kpmax + 63) / 64 * 64;
    char *base = NULL;
    for (int pass = 0; pass < 2; pass++) {   /* pass 0 sizes, pass 1 carves */
        size_t off = 0;
        b->xb = ryz_carve(base, &off, 4 * n * D);
        b->qv = ryz_carve(base, &off, 4 * n * Q);
        b->kf = ryz_carve(base, &off, 4 * n * KVD);
        b->vf = ryz_carve(base, &off, 4 * n * KVD);
        b->att = ryz_carve(base, &off, 4 * n * Q);
        b->an = ryz_carve(base, &off, 4 * n * Q);
        b->xb2 = ryz_carve(base, &off, 4 * n * D);
        b->gate = ryz_carve(base, &off, 4 * n * I);
        b->up = ryz_carve(base, &off, 4 * n * I);
        b->tmp = ryz_carve(base, &off, 4 * n * I);
        b->cs = ryz_carve(base, &off, 4 * n * hd);
        b->q8 = ryz_carve(base, &off, n * b->ldq);
        b->qsum = ryz_carve(base, &off, 4 * n);
        b->sx = ryz_carve(base, &off, 4 * n);
        if (pass == 0 && !(base = aligned_alloc(64, off))) return NULL;
    }
    b->rows = (ryz_bitnet_rows){b->q8, b->qsum, b->sx, b->ldq, n, c->t5};
    return base;
}

/* norm each row i < n of x [n, K] (w: the norm's weight, NULL: rows as they are) and quantize
 * it into b->q8 row i (zero padded to ldq); returns -2 on NaN / inf */
static int quantize_rows(const vbuf *b, const float *x, float *normed, const float *w, int64_t K, float eps) {
    if (w) {
        for (int64_t i = 0; i < b->n; i++) ryz_ops->rmsnorm_row(normed + i * K, x + i * K, w, K, eps);
        x = normed;
    }
    return ryz_bitnet_quantize_rows(&b->rows, x, K, K);
}

/* ---- attention: every (node, kv-head group, part) of a chain segment ---------------------- */
typedef struct {
    const ryz_bitnet_config *c;
    const ryz_bitnet_kv *kv;
    const vbuf *b;
    const int32_t *depth;
    int64_t pos, first, H, units;   /* nodes first.., kv heads per unit, units per node */
    const int64_t *S, *item0;       /* per node of the segment: parts, first item */
    float *part, *ml;               /* per item: partial outputs and (max, sum) */
    int64_t part_stride;            /* floats of part per item */
    int failed;
} vattn;

static void vattn_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    vattn *a = ctx;
    const ryz_bitnet_config *c = a->c;
    const int64_t G = c->Hq / c->Hkv, HG = a->H * G, hd = c->hd;
    const ryz_attn_cache cache = {a->kv->kc, a->kv->vc, a->kv->kc8, a->kv->vc8, a->kv->ks, a->kv->vs, c->Hkv, hd,
                                  a->kv->kc16, a->kv->vc16, a->kv->fmt16};
    float *scratch = NULL;
    int64_t scratch_rows = -1;
    for (int64_t it = b; it < e; it++) {
        int64_t s = 0;   /* the segment node of this item */
        while (a->item0[s + 1] <= it) s++;
        const int64_t i = a->first + s, L = a->pos + a->depth[i] + 1, S = a->S[s];
        const int64_t local = it - a->item0[s], kvh = local / S * a->H, part = local % S;
        const int64_t rows = (L + S - 1) / S + 1;
        if (rows > scratch_rows) {
            free(scratch);
            scratch = malloc(sizeof(float) * (size_t)ryz_attn_scratch_floats(HG, hd, rows));
            scratch_rows = rows;
            if (!scratch) {
                __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED);
                return;
            }
        }
        const float *q = a->b->qv + i * c->Q + kvh * G * hd;
        float *o = S == 1 ? a->b->att + i * c->Q + kvh * G * hd : a->part + it * a->part_stride;
        float *ml = S == 1 ? NULL : a->ml + it * 2 * HG;
        ryz_attn_run_unit(&cache, q, kvh, a->H, G, L * part / S, L * (part + 1) / S, c->scale, o, ml, scratch);
    }
    free(scratch);
}

static void vattn_merge(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    vattn *a = ctx;
    const ryz_bitnet_config *c = a->c;
    const int64_t G = c->Hq / c->Hkv, HG = a->H * G, hd = c->hd;
    for (int64_t u = b; u < e; u++) {      /* u: (segment node, unit) */
        const int64_t s = u / a->units, unit = u % a->units, S = a->S[s];
        if (S == 1) continue;
        const int64_t i = a->first + s, it0 = a->item0[s] + unit * S;
        for (int64_t g = 0; g < HG; g++)
            ryz_attn_merge_head(a->b->att + i * c->Q + (unit * HG + g) * hd, a->part + it0 * a->part_stride,
                                a->ml + it0 * 2 * HG, S, HG, g, hd);
    }
}

/* write node i's new key / value row (b->kf, b->vf row i, after rope) into the cache row
 * pos + depth and into the stash; returns -2 if the int8 cache cannot quantize it, -3 if the
 * 16-bit cache cannot hold it */
static int write_kv(const ryz_bitnet_config *c, const ryz_bitnet_kv *kv, const ryz_bitnet_stash *st, const vbuf *b,
                    int64_t i, int64_t row) {
    const int64_t KVD = c->KVD, hd = c->hd, Hkv = c->Hkv;
    const float *k = b->kf + i * KVD, *v = b->vf + i * KVD;
    if (kv->kc16) {
        const int bad = ryz_store_kv16_row(kv->kc16 + row * KVD, k, KVD, kv->fmt16) |
                        ryz_store_kv16_row(kv->vc16 + row * KVD, v, KVD, kv->fmt16);
        if (st) {
            memcpy(st->k16 + i * KVD, kv->kc16 + row * KVD, sizeof(uint16_t) * (size_t)KVD);
            memcpy(st->v16 + i * KVD, kv->vc16 + row * KVD, sizeof(uint16_t) * (size_t)KVD);
        }
        return bad ? -3 : 0;
    }
    if (!kv->kc8) {
        memcpy(kv->kc + row * KVD, k, sizeof(float) * (size_t)KVD);
        memcpy(kv->vc + row * KVD, v, sizeof(float) * (size_t)KVD);
        if (st) {
            memcpy(st->kf + i * KVD, k, sizeof(float) * (size_t)KVD);
            memcpy(st->vf + i * KVD, v, sizeof(float) * (size_t)KVD);
        }
        return 0;
    }
    for (int64_t h = 0; h < Hkv; h++)
        if (ryz_quantize_kv_row(kv->kc8 + row * KVD + h * hd, kv->ks + row * Hkv + h, k + h * hd, hd) ||
            ryz_quantize_kv_row(kv->vc8 + row * KVD + h * hd, kv->vs + row * Hkv + h, v + h * hd, hd))
            return -2;
    if (st) {
        memcpy(st->k8 + i * KVD, kv->kc8 + row * KVD, (size_t)KVD);
        memcpy(st->v8 + i * KVD, kv->vc8 + row * KVD, (size_t)KVD);
        memcpy(st->ks + i * Hkv, kv->ks + row * Hkv, sizeof(float) * (size_t)Hkv);
        memcpy(st->vs + i * Hkv, kv->vs + row * Hkv, sizeof(float) * (size_t)Hkv);
    }
    return 0;
}

/* nodes [s0, s1) of one chain segment: write their rows, attend (one parallel job), merge */
static int attend_segment(const ryz_bitnet_config *c, const ryz_bitnet_kv *kv, const ryz_bitnet_stash *st,
                          const vbuf *b, const int32_t *depth, int64_t pos, int64_t s0, int64_t s1) {
    const int i8 = kv->kc8 != NULL;
    const int64_t ns = s1 - s0, G = c->Hq / c->Hkv, hd = c->hd;
    for (int64_t i = s0; i < s1; i++) {
        const int rc = write_kv(c, kv, st, b, i, pos + depth[i]);
        if (rc) return rc;
    }
    int64_t H = 1;
    int64_t *S = malloc(sizeof(int64_t) * (size_t)(2 * ns + 1));
    if (!S) return -1;
    int64_t *item0 = S + ns, max_parts = 1;
    item0[0] = 0;
    for (int64_t s = 0; s < ns; s++) {
        S[s] = ryz_attn_plan(1, c->Hkv, pos + depth[s0 + s] + 1, i8, &H);   /* H: Hkv whatever L is */
        max_parts = S[s] > max_parts ? S[s] : max_parts;
    }
    const int64_t units = c->Hkv / H, HG = H * G;
    for (int64_t s = 0; s < ns; s++) item0[s + 1] = item0[s] + units * S[s];
    const int64_t items = item0[ns];
    float *part = NULL, *ml = NULL;
    if (max_parts > 1) {
        part = malloc(sizeof(float) * (size_t)(items * HG * hd));
        ml = malloc(sizeof(float) * (size_t)(items * 2 * HG));
        if (!part || !ml) {
            free(part);
            free(ml);
            free(S);
            return -1;
        }
    }
    vattn a = {.c = c, .kv = kv, .b = b, .depth = depth, .pos = pos, .first = s0, .H = H, .units = units,
               .S = S, .item0 = item0, .part = part, .ml = ml, .part_stride = HG * hd, .failed = 0};
    ryz_parallel_for(vattn_task, &a, items, 1);
    if (!a.failed && max_parts > 1) ryz_parallel_for(vattn_merge, &a, ns * units, 1);
    free(part);
    free(ml);
    free(S);
    return a.failed ? -1 : 0;
}

/* ---- one layer for all n nodes -------------------------------------------------------------- */
static int verify_layer(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                        const ryz_bitnet_stash *st, vbuf *b, float *x, const int32_t *depth, int64_t pos) {
    const int64_t n = b->n, D = c->D, Q = c->Q, KVD = c->KVD, I = c->I, hd = c->hd;
    int rc;

    /* attention block: x -> norm -> q, k, v (one job over the three matrices) */
    if ((rc = quantize_rows(b, x, b->xb, w->attn_norm, D, c->eps))) return rc;
    ryz_bitnet_gemm g = {.n = 3, .start = {0, Q, Q + KVD, Q + 2 * KVD}};
    g.job[0] = ryz_bitnet_gemm_job(b->qv, w->wq, Q, D, &b->rows, w->mult[0]);
    g.job[1] = ryz_bitnet_gemm_job(b->kf, w->wk, KVD, D, &b->rows, w->mult[1]);
    g.job[2] = ryz_bitnet_gemm_job(b->vf, w->wv, KVD, D, &b->rows, w->mult[2]);
    ryz_bitnet_gemm_run(&g, &b->rows);
    for (int64_t i = 0; i < n; i++) {     /* rope at each node's own position */
        ryz_ops->rope_row(b->qv + i * Q, c->Hq, hd, b->cs + i * hd);
        ryz_ops->rope_row(b->kf + i * KVD, c->Hkv, hd, b->cs + i * hd);
    }
    for (int64_t s0 = 0; s0 < n;) {      /* chain segments of the depth-first walk */
        int64_t s1 = s0 + 1;
        while (s1 < n && depth[s1] == depth[s1 - 1] + 1) s1++;
        if ((rc = attend_segment(c, kv, st, b, depth, pos, s0, s1))) return rc;
        s0 = s1;
    }
    for (int64_t i = 0; i < n; i++) ryz_ops->rmsnorm_row(b->an + i * Q, b->att + i * Q, w->attn_sub_norm, Q, c->eps);
    if ((rc = quantize_rows(b, b->an, NULL, NULL, Q, c->eps))) return rc;
    g = (ryz_bitnet_gemm){.n = 1, .start = {0, D}};
    g.job[0] = ryz_bitnet_gemm_job(b->xb2, w->wo, D, Q, &b->rows, w->mult[3]);
    ryz_bitnet_gemm_run(&g, &b->rows);
    for (int64_t i = 0; i < n; i++) ryz_ops->add(x + i * D, x + i * D, b->xb2 + i * D, D);

    /* FFN block: norm -> gate, up -> act(gate) * up -> sub-norm -> down */
    if ((rc = quantize_rows(b, x, b->xb, w->ffn_norm, D, c->eps))) return rc;
    g = (ryz_bitnet_gemm){.n = 2, .start = {0, I, 2 * I}};
    g.job[0] = ryz_bitnet_gemm_job(b->gate, w->wg, I, D, &b->rows, w->mult[4]);
    g.job[1] = ryz_bitnet_gemm_job(b->up, w->wu, I, D, &b->rows, w->mult[5]);
    ryz_bitnet_gemm_run(&g, &b->rows);
    for (int64_t i = 0; i < n; i++) {
        float *gi = b->gate + i * I, *ui = b->up + i * I, *ti = b->tmp + i * I;
        if (c->act == 0) ryz_ops->relu2(ti, gi, I);
        else ryz_ops->silu(ti, gi, I);
        ryz_ops->mul(gi, ti, ui, I);
        ryz_ops->rmsnorm_row(ti, gi, w->ffn_sub_norm, I, c->eps);
    }
    if ((rc = quantize_rows(b, b->tmp, NULL, NULL, I, c->eps))) return rc;
    g = (ryz_bitnet_gemm){.n = 1, .start = {0, D}};
    g.job[0] = ryz_bitnet_gemm_job(b->xb2, w->wd, D, I, &b->rows, w->mult[6]);
    ryz_bitnet_gemm_run(&g, &b->rows);
    for (int64_t i = 0; i < n; i++) ryz_ops->add(x + i * D, x + i * D, b->xb2 + i * D, D);
    return 0;
}

int ryz_bitnet_verify(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                      const ryz_bitnet_stash *st, int n_layers, float *x, int64_t n, const int32_t *depth,
                      int64_t pos, const ryz_bitnet_head *head, float *logits, int64_t ns[2]) {
    const int64_t t0 = ryz_now_ns();
    ns[0] = ns[1] = 0;
    vbuf b;
    void *mem = vbuf_alloc(c, n, &b);
    if (!mem) return -1;
    for (int64_t i = 0; i < n; i++) ryz_bitnet_rope_table(b.cs + i * c->hd, pos + depth[i], c->theta, c->hd);
    int rc = 0;
    for (int l = 0; l < n_layers && !rc; l++)
        rc = verify_layer(c, w + l, kv + l, st ? st + l : NULL, &b, x, depth, pos);
    const int64_t t1 = ryz_now_ns();
    ns[0] = t1 - t0;
    if (!rc && head) {   /* final norm, quantization (no padding, as decode) and the head */
        int8_t *xq = b.q8;   /* n rows of D bytes */
        for (int64_t i = 0; i < n && !rc; i++) {
            ryz_ops->rmsnorm_row(b.xb + i * c->D, x + i * c->D, head->norm, c->D, c->eps);
            if (ryz_quant->quantize_row_i8(xq + i * c->D, b.sx + i, b.xb + i * c->D, c->D)) rc = -2;
        }
        if (!rc) ryz_bitnet_head_run(logits, head, xq, c->D, b.sx, n, c->D);
        ns[1] = ryz_now_ns() - t1;
    }
    free(mem);
    return rc;
}
