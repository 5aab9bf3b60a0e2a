/* attention_avx2.c: AVX2+FMA causal GQA attention (see attention.h), float32 or int8
 * KV cache (one template, specialised twice); the same structure as attention_avx512.c
 * with 8-float vectors: query heads 4 at a time (a smaller group repeats its last head),
 * scores, softmax, then the weighted sum of v blocked over rows. Plain loads for whole
 * vectors, vmaskmov only for row tails. */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "attention_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attention.h"
#include "ops.h"

/* 8 cache values from column j of a row, as floats (`left` = columns left in the row) */
static inline __m256 ld_f32(const float *p, int64_t left) { return ryz_ld8(p, left); }
static inline __m256 ld_i8(const int8_t *p, int64_t left) {
    __m128i b;
    if (left >= 8) {
        b = _mm_loadl_epi64((const __m128i *)p);
    } else {
        int8_t tmp[8] = {0};
        if (left > 0) memcpy(tmp, p, (size_t)left);
        b = _mm_loadl_epi64((const __m128i *)tmp);
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/* ---- float32 cache ---- */
static void attend_f32_1(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride;
    const float *kb = u->k, *vb = u->v;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gn = G - g0 < 4 ? G - g0 : 4;
        const float *qh[4];
        float *sc[4], *oh[4];
        for (int gg = 0; gg < 4; gg++) {
            int64_t r = gg < gn ? gg : gn - 1;
            qh[gg] = u->q + (g0 + r) * hd;
            oh[gg] = u->o + (g0 + r) * hd;
            sc[gg] = scratch + r * L;
        }
        /* ---- scores ---- */
        for (int64_t t = 0; t < L; t++) {
            const float *kt = kb + t * kstride;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            int64_t j = 0;
            for (; j + 8 <= hd; j += 8) {
                __m256 kv = _mm256_loadu_ps(kt + j);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[0] + j), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[1] + j), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[2] + j), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[3] + j), kv, a3);
            }
            if (j < hd) {
                __m256i m = ryz_tail8(hd - j);
                __m256 kv = _mm256_maskload_ps(kt + j, m);
                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[0] + j, m), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[1] + j, m), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[2] + j, m), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[3] + j, m), kv, a3);
            }
            sc[0][t] = ryz_hsum_avx2(a0) * u->scale;
            sc[1][t] = ryz_hsum_avx2(a1) * u->scale;
            sc[2][t] = ryz_hsum_avx2(a2) * u->scale;
            sc[3][t] = ryz_hsum_avx2(a3) * u->scale;
        }
        /* ---- softmax numerators, in place ---- */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int gg = 0; gg < gn; gg++) {
            float *p = sc[gg];
            __m256 vm = _mm256_set1_ps(-INFINITY);
            int64_t t = 0;
            for (; t + 8 <= L; t += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(p + t));
            float mxs = ryz_hmax_avx2(vm);
            for (; t < L; t++) mxs = p[t] > mxs ? p[t] : mxs;
            __m256 mx = _mm256_set1_ps(mxs), sum = _mm256_setzero_ps();
            for (t = 0; t < L; t += 8) {
                __m256 e = ryz_exp_avx2(_mm256_sub_ps(ryz_ld8(p + t, L - t), mx));
                if (L - t < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(ryz_tail8(L - t)));
                sum = _mm256_add_ps(sum, e);
                ryz_st8(p + t, L - t, e);
            }
            const float l = ryz_hsum_avx2(sum);
            inv[gg] = 1.0f / l;
            if (u->ml) u->ml[2 * (g0 + gg)] = mxs, u->ml[2 * (g0 + gg) + 1] = l;
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t]: 16 columns (8 accumulators) per pass, rows in
         * blocks of RYZ_ATTN_VBLOCK so every column pass of a block finds its v rows in
         * cache; partial sums between blocks live in acc (4 rows of hd) ---- */
        float *acc = scratch + 4 * L;
        for (int64_t tb = 0; tb < L; tb += RYZ_ATTN_VBLOCK) {
            const int64_t te = L - tb < RYZ_ATTN_VBLOCK ? L : tb + RYZ_ATTN_VBLOCK;
            for (int64_t j = 0; j < hd; j += 16) {
                const int64_t l0 = hd - j, l1 = hd - j - 8;
                __m256 c00, c01, c10, c11, c20, c21, c30, c31;
                if (tb == 0) {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm256_setzero_ps();
                } else {
                    c00 = ryz_ld8(acc + j, l0), c01 = ryz_ld8(acc + j + 8, l1);
                    c10 = ryz_ld8(acc + hd + j, l0), c11 = ryz_ld8(acc + hd + j + 8, l1);
                    c20 = ryz_ld8(acc + 2 * hd + j, l0), c21 = ryz_ld8(acc + 2 * hd + j + 8, l1);
                    c30 = ryz_ld8(acc + 3 * hd + j, l0), c31 = ryz_ld8(acc + 3 * hd + j + 8, l1);
                }
                const float *vt = vb + tb * kstride + j;
#define RYZ_ATTN_V_ROWS(LOAD0, LOAD1)                                                          \
                for (int64_t t = tb; t < te; t++, vt += kstride) {                             \
                    __m256 v0 = LOAD0, v1 = LOAD1;                                             \
                    __m256 p0 = _mm256_broadcast_ss(sc[0] + t), p1 = _mm256_broadcast_ss(sc[1] + t); \
                    __m256 p2 = _mm256_broadcast_ss(sc[2] + t), p3 = _mm256_broadcast_ss(sc[3] + t); \
                    c00 = _mm256_fmadd_ps(p0, v0, c00); c01 = _mm256_fmadd_ps(p0, v1, c01);    \
                    c10 = _mm256_fmadd_ps(p1, v0, c10); c11 = _mm256_fmadd_ps(p1, v1, c11);    \
                    c20 = _mm256_fmadd_ps(p2, v0, c20); c21 = _mm256_fmadd_ps(p2, v1, c21);    \
                    c30 = _mm256_fmadd_ps(p3, v0, c30); c31 = _mm256_fmadd_ps(p3, v1, c31);    \
                }
                if (l0 >= 16) {
                    RYZ_ATTN_V_ROWS(_mm256_loadu_ps(vt), _mm256_loadu_ps(vt + 8))
                } else {
                    __m256i m0 = ryz_tail8(l0), m1 = ryz_tail8(l1);
                    RYZ_ATTN_V_ROWS(_mm256_maskload_ps(vt, m0), _mm256_maskload_ps(vt + 8, m1))
                }
#undef RYZ_ATTN_V_ROWS
                if (te < L) {
                    ryz_st8(acc + j, l0, c00), ryz_st8(acc + j + 8, l1, c01);
                    ryz_st8(acc + hd + j, l0, c10), ryz_st8(acc + hd + j + 8, l1, c11);
                    ryz_st8(acc + 2 * hd + j, l0, c20), ryz_st8(acc + 2 * hd + j + 8, l1, c21);
                    ryz_st8(acc + 3 * hd + j, l0, c30), ryz_st8(acc + 3 * hd + j + 8, l1, c31);
                    continue;
                }
                /* last block: scale and store (repeated heads store the same values twice) */
                __m256 i0 = _mm256_set1_ps(inv[0]), i1 = _mm256_set1_ps(inv[1]);
                __m256 i2 = _mm256_set1_ps(inv[2]), i3 = _mm256_set1_ps(inv[3]);
                ryz_st8(oh[0] + j, l0, _mm256_mul_ps(c00, i0)), ryz_st8(oh[0] + j + 8, l1, _mm256_mul_ps(c01, i0));
                ryz_st8(oh[1] + j, l0, _mm256_mul_ps(c10, i1)), ryz_st8(oh[1] + j + 8, l1, _mm256_mul_ps(c11, i1));
                ryz_st8(oh[2] + j, l0, _mm256_mul_ps(c20, i2)), ryz_st8(oh[2] + j + 8, l1, _mm256_mul_ps(c21, i2));
                ryz_st8(oh[3] + j, l0, _mm256_mul_ps(c30, i3)), ryz_st8(oh[3] + j + 8, l1, _mm256_mul_ps(c31, i3));
            }
        }
    }
}

/* ---- int8 cache: the same algorithm as a template (i8 = 1 below; the float kernel above
 * stays separate because the template's float instance measured ~30% slower at 4k rows) ---- */
static inline __attribute__((always_inline)) void
attend_impl(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch, const int i8) {
    /* fields copied to locals: stores to the float scratch could otherwise alias them
     * (-fno-strict-aliasing) and force reloads in the inner loops */
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride, ss = u->sstride;
    const float *RYZ_RESTRICT kf = u->k, *RYZ_RESTRICT vf = u->v, *RYZ_RESTRICT ks = u->ks, *RYZ_RESTRICT vs = u->vs;
    const int8_t *RYZ_RESTRICT k8 = u->k8, *RYZ_RESTRICT v8 = u->v8;
    const float scale = u->scale;
    float *RYZ_RESTRICT ml = u->ml;
#define LOADK(t, j, left) (i8 ? ld_i8(k8 + (t) * kstride + (j), left) : ld_f32(kf + (t) * kstride + (j), left))
#define LOADV(t, j, left) (i8 ? ld_i8(v8 + (t) * kstride + (j), left) : ld_f32(vf + (t) * kstride + (j), left))
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gn = G - g0 < 4 ? G - g0 : 4;
        const float *qh[4];
        float *sc[4], *oh[4];
        for (int gg = 0; gg < 4; gg++) {
            int64_t r = gg < gn ? gg : gn - 1;
            qh[gg] = u->q + (g0 + r) * hd;
            oh[gg] = u->o + (g0 + r) * hd;
            sc[gg] = scratch + r * L;
        }
        /* ---- scores ---- */
        for (int64_t t = 0; t < L; t++) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            int64_t j = 0;
            for (; j + 8 <= hd; j += 8) {
                __m256 kv = LOADK(t, j, 8);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[0] + j), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[1] + j), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[2] + j), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(qh[3] + j), kv, a3);
            }
            if (j < hd) {
                __m256i m = ryz_tail8(hd - j);
                __m256 kv = LOADK(t, j, hd - j);
                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[0] + j, m), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[1] + j, m), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[2] + j, m), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[3] + j, m), kv, a3);
            }
            if (i8) {
                const float kst = ks[t * ss];
                sc[0][t] = ryz_hsum_avx2(a0) * kst * scale;
                sc[1][t] = ryz_hsum_avx2(a1) * kst * scale;
                sc[2][t] = ryz_hsum_avx2(a2) * kst * scale;
                sc[3][t] = ryz_hsum_avx2(a3) * kst * scale;
            } else {
                sc[0][t] = ryz_hsum_avx2(a0) * scale;
                sc[1][t] = ryz_hsum_avx2(a1) * scale;
                sc[2][t] = ryz_hsum_avx2(a2) * scale;
                sc[3][t] = ryz_hsum_avx2(a3) * scale;
            }
        }
        /* ---- softmax numerators, in place ---- */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int gg = 0; gg < gn; gg++) {
            float *p = sc[gg];
            __m256 vm = _mm256_set1_ps(-INFINITY);
            int64_t t = 0;
            for (; t + 8 <= L; t += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(p + t));
            float mxs = ryz_hmax_avx2(vm);
            for (; t < L; t++) mxs = p[t] > mxs ? p[t] : mxs;
            __m256 mx = _mm256_set1_ps(mxs), sum = _mm256_setzero_ps();
            for (t = 0; t < L; t += 8) {
                __m256 e = ryz_exp_avx2(_mm256_sub_ps(ryz_ld8(p + t, L - t), mx));
                if (L - t < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(ryz_tail8(L - t)));
                sum = _mm256_add_ps(sum, e);
                ryz_st8(p + t, L - t, e);
            }
            const float l = ryz_hsum_avx2(sum);
            inv[gg] = 1.0f / l;
            if (ml) ml[2 * (g0 + gg)] = mxs, ml[2 * (g0 + gg) + 1] = l;
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t]: 16 columns (8 accumulators) per pass, rows in
         * blocks of RYZ_ATTN_VBLOCK so every column pass of a block finds its v rows in
         * cache; partial sums between blocks live in acc (4 rows of hd) ---- */
        float *acc = scratch + 4 * L;
        for (int64_t tb = 0; tb < L; tb += RYZ_ATTN_VBLOCK) {
            const int64_t te = L - tb < RYZ_ATTN_VBLOCK ? L : tb + RYZ_ATTN_VBLOCK;
            for (int64_t j = 0; j < hd; j += 16) {
                const int64_t l0 = hd - j, l1 = hd - j - 8;
                __m256 c00, c01, c10, c11, c20, c21, c30, c31;
                if (tb == 0) {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm256_setzero_ps();
                } else {
                    c00 = ryz_ld8(acc + j, l0), c01 = ryz_ld8(acc + j + 8, l1);
                    c10 = ryz_ld8(acc + hd + j, l0), c11 = ryz_ld8(acc + hd + j + 8, l1);
                    c20 = ryz_ld8(acc + 2 * hd + j, l0), c21 = ryz_ld8(acc + 2 * hd + j + 8, l1);
                    c30 = ryz_ld8(acc + 3 * hd + j, l0), c31 = ryz_ld8(acc + 3 * hd + j + 8, l1);
                }
#define V_ROWS(LEFT0, LEFT1)                                                                   \
                for (int64_t t = tb; t < te; t++) {                                            \
                    __m256 v0 = LOADV(t, j, LEFT0), v1 = LOADV(t, j + 8, LEFT1);              \
                    const float w = i8 ? vs[t * ss] : 1.0f;                                    \
                    __m256 p0 = _mm256_set1_ps(sc[0][t] * w), p1 = _mm256_set1_ps(sc[1][t] * w); \
                    __m256 p2 = _mm256_set1_ps(sc[2][t] * w), p3 = _mm256_set1_ps(sc[3][t] * w); \
                    c00 = _mm256_fmadd_ps(p0, v0, c00); c01 = _mm256_fmadd_ps(p0, v1, c01);    \
                    c10 = _mm256_fmadd_ps(p1, v0, c10); c11 = _mm256_fmadd_ps(p1, v1, c11);    \
                    c20 = _mm256_fmadd_ps(p2, v0, c20); c21 = _mm256_fmadd_ps(p2, v1, c21);    \
                    c30 = _mm256_fmadd_ps(p3, v0, c30); c31 = _mm256_fmadd_ps(p3, v1, c31);    \
                }
                if (l0 >= 16) {
                    V_ROWS(8, 8)
                } else {
                    V_ROWS(l0, l1)
                }
#undef V_ROWS
                if (te < L) {
                    ryz_st8(acc + j, l0, c00), ryz_st8(acc + j + 8, l1, c01);
                    ryz_st8(acc + hd + j, l0, c10), ryz_st8(acc + hd + j + 8, l1, c11);
                    ryz_st8(acc + 2 * hd + j, l0, c20), ryz_st8(acc + 2 * hd + j + 8, l1, c21);
                    ryz_st8(acc + 3 * hd + j, l0, c30), ryz_st8(acc + 3 * hd + j + 8, l1, c31);
                    continue;
                }
                /* last block: scale and store (repeated heads store the same values twice) */
                __m256 i0 = _mm256_set1_ps(inv[0]), i1 = _mm256_set1_ps(inv[1]);
                __m256 i2 = _mm256_set1_ps(inv[2]), i3 = _mm256_set1_ps(inv[3]);
                ryz_st8(oh[0] + j, l0, _mm256_mul_ps(c00, i0)), ryz_st8(oh[0] + j + 8, l1, _mm256_mul_ps(c01, i0));
                ryz_st8(oh[1] + j, l0, _mm256_mul_ps(c10, i1)), ryz_st8(oh[1] + j + 8, l1, _mm256_mul_ps(c11, i1));
                ryz_st8(oh[2] + j, l0, _mm256_mul_ps(c20, i2)), ryz_st8(oh[2] + j + 8, l1, _mm256_mul_ps(c21, i2));
                ryz_st8(oh[3] + j, l0, _mm256_mul_ps(c30, i3)), ryz_st8(oh[3] + j + 8, l1, _mm256_mul_ps(c31, i3));
            }
        }
    }
#undef LOADK
#undef LOADV
}

static void attend_i8_1(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, 1); }

/* a unit of H kv heads: one kv head at a time (each reuses the scratch) */
static inline void each_head(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch,
                             void (*one)(const ryz_attn_unit *, float *RYZ_RESTRICT)) {
    for (int64_t h = 0; h < u->H; h++) {
        ryz_attn_unit s = *u;
        const int64_t off = h * u->hd;
        s.H = 1;
        s.q = u->q + h * u->G * u->hd;
        s.o = u->o + h * u->G * u->hd;
        s.ml = u->ml ? u->ml + 2 * h * u->G : NULL;
        if (u->k8) {
            s.k8 = u->k8 + off, s.v8 = u->v8 + off, s.ks = u->ks + h, s.vs = u->vs + h;
        } else {
            s.k = u->k + off, s.v = u->v + off;
        }
        one(&s, scratch);
    }
}
static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { each_head(u, scratch, attend_f32_1); }
static void attend_i8(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { each_head(u, scratch, attend_i8_1); }

const ryz_attention_kernels ryz_attention_avx2 = {
    .name = "avx2",
    .attend = attend,
    .attend_i8 = attend_i8,
};
