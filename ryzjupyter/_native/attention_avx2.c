/* attention_avx2.c: AVX2+FMA causal GQA attention (see attention.h), float32, int8, float16
 * or bfloat16 KV cache (16-bit values widened in registers: F16C vcvtph2ps, or a shift); the same structure as attention_avx512.c
 * with 8-float vectors: query heads 4 at a time (a smaller group repeats its last head),
 * scores, softmax, then the weighted sum of v blocked over rows. Plain loads for whole
 * vectors, vmaskmov only for row tails. */
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "attention_avx2.c must be compiled with -mavx2 -mfma -mf16c"
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

/* 8 float16 / bfloat16 values (fmt) from column j of a row, widened to floats (exact) */
static inline __m256 widen8(__m128i b, const int fmt) {
    return fmt == RYZ_KV_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16))
                              : _mm256_cvtph_ps(b);
}
static inline __m256 ld_16(const uint16_t *p, int64_t left, const int fmt) {
    __m128i b;
    if (left >= 8) {
        b = _mm_loadu_si128((const __m128i *)p);
    } else {
        uint16_t tmp[8] = {0};
        if (left > 0) memcpy(tmp, p, (size_t)left * 2);
        b = _mm_loadu_si128((const __m128i *)tmp);
    }
    return widen8(b, fmt);
}
static inline __m256 ld8_16(const uint16_t *p, const int fmt) { return widen8(_mm_loadu_si128((const __m128i *)p), fmt); }

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
attend_impl(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch, const int fmt) {
    const int i8 = fmt == RYZ_KV_I8;
    /* fields copied to locals: stores to the float scratch could otherwise alias them
     * (-fno-strict-aliasing) and force reloads in the inner loops */
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride, ss = u->sstride;
    const float *RYZ_RESTRICT kf = u->k, *RYZ_RESTRICT vf = u->v, *RYZ_RESTRICT ks = u->ks, *RYZ_RESTRICT vs = u->vs;
    const int8_t *RYZ_RESTRICT k8 = u->k8, *RYZ_RESTRICT v8 = u->v8;
    const uint16_t *RYZ_RESTRICT k16 = u->k16, *RYZ_RESTRICT v16 = u->v16;
    const float scale = u->scale;
    float *RYZ_RESTRICT ml = u->ml;
#define LOADK(t, j, left) (i8 ? ld_i8(k8 + (t) * kstride + (j), left) : fmt >= RYZ_KV_F16 ? \
                           ld_16(k16 + (t) * kstride + (j), left, fmt) : ld_f32(kf + (t) * kstride + (j), left))
#define LOADV(t, j, left) (i8 ? ld_i8(v8 + (t) * kstride + (j), left) : fmt >= RYZ_KV_F16 ? \
                           ld_16(v16 + (t) * kstride + (j), left, fmt) : ld_f32(vf + (t) * kstride + (j), left))
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

static void attend_i8_1(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_I8); }
static void attend_f16_1(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_F16); }
static void attend_bf16_1(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_BF16); }

/* ---- float cache, rows in address order (decode units: every kv head of a row, hd % 8 == 0) --
 * Both passes read the unit's rows one block after the other (one contiguous stretch per unit,
 * which the hardware prefetcher streams) instead of one kv head's rows 2.5 KB apart:
 *   scores: rows 2 at a time; per (kv head, 4 query heads) 8 accumulators over hd (every q
 *           vector loaded feeds both rows), summed across lanes together (hadd tree);
 *   v:      rows 8 at a time; per (kv head, 4 query heads, 16 columns) 8 accumulators over the
 *           8 rows, partial sums in acc (L1) between blocks.
 * Both prefetch the rows they will read next in software, a line per row as they go. */
static inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* acc[i] (+)= sum over the n rows of p[i][t] v[t] for 4 heads i, NC = 1 or 2 vectors of columns */
static inline __attribute__((always_inline)) void
seq_v_cols(float *const a[4], const float *const p[4], const float *vr, int64_t kstride, int64_t n,
           int first, const int NC) {
    __m256 c0[2], c1[2], c2[2], c3[2];
    for (int c = 0; c < NC; c++) {
        c0[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[0] + 8 * c);
        c1[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[1] + 8 * c);
        c2[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[2] + 8 * c);
        c3[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[3] + 8 * c);
    }
    for (int64_t r = 0; r < n; r++, vr += kstride) {
        const __m256 p0 = _mm256_broadcast_ss(p[0] + r), p1 = _mm256_broadcast_ss(p[1] + r);
        const __m256 p2 = _mm256_broadcast_ss(p[2] + r), p3 = _mm256_broadcast_ss(p[3] + r);
        for (int c = 0; c < NC; c++) {
            const __m256 x = _mm256_loadu_ps(vr + 8 * c);
            c0[c] = _mm256_fmadd_ps(p0, x, c0[c]), c1[c] = _mm256_fmadd_ps(p1, x, c1[c]);
            c2[c] = _mm256_fmadd_ps(p2, x, c2[c]), c3[c] = _mm256_fmadd_ps(p3, x, c3[c]);
        }
    }
    for (int c = 0; c < NC; c++) { /* repeated heads store the same values to the same place */
        _mm256_storeu_ps(a[3] + 8 * c, c3[c]), _mm256_storeu_ps(a[2] + 8 * c, c2[c]);
        _mm256_storeu_ps(a[1] + 8 * c, c1[c]), _mm256_storeu_ps(a[0] + 8 * c, c0[c]);
    }
}

#define SEQ_VROWS 8
/* software prefetch distances in rows: the score pass 16 rows ahead, the v pass two blocks ahead
 * (measured at 2k and 8k rows, BitNet-2B heads, 1 thread, loaded machine: 8192-row score pass
 * 1.9 -> 1.45 ms a layer with it; 8 or 32 rows were slower) */
#define SEQ_KPF 16
#define SEQ_VPF (2 * SEQ_VROWS)
static void seq_f32(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride, HG = H * G;
    const int64_t Lp = ryz_attn_score_stride(L);
    const float *RYZ_RESTRICT kf = u->k, *RYZ_RESTRICT vf = u->v, *RYZ_RESTRICT qb = u->q;
    float *RYZ_RESTRICT sc = scratch;            /* [HG][Lp] scores, then softmax numerators */
    float *RYZ_RESTRICT acc = scratch + HG * Lp; /* [HG][hd] */
    float *RYZ_RESTRICT inv = acc + HG * hd;     /* [HG] */
    const __m256 scale = _mm256_set1_ps(u->scale);
    /* ---- scores, rows 2 at a time (a last odd row is paired with itself) ---- */
    for (int64_t t = 0; t < L; t += 2) {
        const int64_t t1 = t + 1 < L ? t + 1 : t;
        const float *row0 = kf + t * kstride, *row1 = kf + t1 * kstride;
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                const float *q0 = qb + (h * G + g0) * hd, *q1 = q0 + (gn > 1 ? hd : 0);
                const float *q2 = q0 + (gn > 2 ? 2 : gn - 1) * hd, *q3 = q0 + (gn > 3 ? 3 : gn - 1) * hd;
                const float *k0 = row0 + h * hd, *k1 = row1 + h * hd;
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
                __m256 a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
                __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
                const int64_t pfo = (t + SEQ_KPF < L ? SEQ_KPF : 0) * kstride; /* rows ahead, one line a row */
                for (int64_t j = 0; j < hd; j += 8) {
                    if (g0 == 0 && (j & 15) == 0)
                        _mm_prefetch((const char *)(k0 + pfo + j), _MM_HINT_T0), _mm_prefetch((const char *)(k1 + pfo + j), _MM_HINT_T0);
                    const __m256 x = _mm256_loadu_ps(k0 + j), y = _mm256_loadu_ps(k1 + j);
                    __m256 qv = _mm256_loadu_ps(q0 + j);
                    a0 = _mm256_fmadd_ps(qv, x, a0), b0 = _mm256_fmadd_ps(qv, y, b0);
                    qv = _mm256_loadu_ps(q1 + j);
                    a1 = _mm256_fmadd_ps(qv, x, a1), b1 = _mm256_fmadd_ps(qv, y, b1);
                    qv = _mm256_loadu_ps(q2 + j);
                    a2 = _mm256_fmadd_ps(qv, x, a2), b2 = _mm256_fmadd_ps(qv, y, b2);
                    qv = _mm256_loadu_ps(q3 + j);
                    a3 = _mm256_fmadd_ps(qv, x, a3), b3 = _mm256_fmadd_ps(qv, y, b3);
                }
                /* lanes 0-3: heads 0-3 at row t; 4-7: at row t1 */
                const __m256 ha = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                const __m256 hb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
                const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(ha, hb, 0x20), _mm256_permute2f128_ps(ha, hb, 0x31));
                float s8[8];
                _mm256_storeu_ps(s8, _mm256_mul_ps(sum, scale));
                for (int gg = 0; gg < gn; gg++) {
                    float *dst = sc + (h * G + g0 + gg) * Lp;
                    dst[t] = s8[gg];
                    dst[t1] = s8[4 + gg];
                }
            }
    }
    /* ---- softmax numerators, in place ---- */
    for (int64_t hg = 0; hg < HG; hg++) {
        float *p = sc + hg * Lp;
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
        inv[hg] = 1.0f / l;
        if (u->ml) u->ml[2 * hg] = mxs, u->ml[2 * hg + 1] = l;
    }
    /* ---- out = inv * sum_t p[t] v[t], rows SEQ_VROWS at a time ---- */
    for (int64_t t = 0; t < L; t += SEQ_VROWS) {
        const int64_t n = L - t < SEQ_VROWS ? L - t : SEQ_VROWS, tn = t + SEQ_VPF;
        const int64_t npf = L - tn < SEQ_VROWS ? (L > tn ? L - tn : 0) : SEQ_VROWS;
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                float *a[4];
                const float *p[4];
                for (int gg = 0; gg < 4; gg++) {
                    const int64_t hg = h * G + g0 + (gg < gn ? gg : gn - 1);
                    a[gg] = acc + hg * hd;
                    p[gg] = sc + hg * Lp + t;
                }
                int64_t j = 0;
                for (; j + 16 <= hd; j += 16) {
                    if (g0 == 0)
                        for (int64_t r = 0; r < npf; r++) _mm_prefetch((const char *)(vf + (tn + r) * kstride + h * hd + j), _MM_HINT_T0);
                    float *const ac[4] = {a[0] + j, a[1] + j, a[2] + j, a[3] + j};
                    seq_v_cols(ac, p, vf + t * kstride + h * hd + j, kstride, n, t == 0, 2);
                }
                if (j < hd) {
                    float *const ac[4] = {a[0] + j, a[1] + j, a[2] + j, a[3] + j};
                    seq_v_cols(ac, p, vf + t * kstride + h * hd + j, kstride, n, t == 0, 1);
                }
            }
    }
    for (int64_t hg = 0; hg < HG; hg++) {
        const __m256 s = _mm256_set1_ps(inv[hg]);
        for (int64_t j = 0; j < hd; j += 8)
            _mm256_storeu_ps(u->o + hg * hd + j, _mm256_mul_ps(_mm256_loadu_ps(acc + hg * hd + j), s));
    }
}
/* seq_f32 over a float16 / bfloat16 cache: the same passes, each value widened in registers
 * (half the bytes streamed; one prefetch per 64-byte line = 32 values) */
/* seq_v_cols over 16-bit rows (fmt), widened in registers */
static inline __attribute__((always_inline)) void
seq_v_cols16(float *const a[4], const float *const p[4], const uint16_t *vr, int64_t kstride, int64_t n,
             int first, const int NC, const int fmt) {
    __m256 c0[2], c1[2], c2[2], c3[2];
    for (int c = 0; c < NC; c++) {
        c0[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[0] + 8 * c);
        c1[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[1] + 8 * c);
        c2[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[2] + 8 * c);
        c3[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(a[3] + 8 * c);
    }
    for (int64_t r = 0; r < n; r++, vr += kstride) {
        const __m256 p0 = _mm256_broadcast_ss(p[0] + r), p1 = _mm256_broadcast_ss(p[1] + r);
        const __m256 p2 = _mm256_broadcast_ss(p[2] + r), p3 = _mm256_broadcast_ss(p[3] + r);
        for (int c = 0; c < NC; c++) {
            const __m256 x = ld8_16(vr + 8 * c, fmt);
            c0[c] = _mm256_fmadd_ps(p0, x, c0[c]), c1[c] = _mm256_fmadd_ps(p1, x, c1[c]);
            c2[c] = _mm256_fmadd_ps(p2, x, c2[c]), c3[c] = _mm256_fmadd_ps(p3, x, c3[c]);
        }
    }
    for (int c = 0; c < NC; c++) { /* repeated heads store the same values to the same place */
        _mm256_storeu_ps(a[3] + 8 * c, c3[c]), _mm256_storeu_ps(a[2] + 8 * c, c2[c]);
        _mm256_storeu_ps(a[1] + 8 * c, c1[c]), _mm256_storeu_ps(a[0] + 8 * c, c0[c]);
    }
}

static inline __attribute__((always_inline)) void seq_16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch, const int fmt) {
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride, HG = H * G;
    const int64_t Lp = ryz_attn_score_stride(L);
    const uint16_t *RYZ_RESTRICT kf = u->k16, *RYZ_RESTRICT vf = u->v16;
    const float *RYZ_RESTRICT qb = u->q;
    float *RYZ_RESTRICT sc = scratch;            /* [HG][Lp] scores, then softmax numerators */
    float *RYZ_RESTRICT acc = scratch + HG * Lp; /* [HG][hd] */
    float *RYZ_RESTRICT inv = acc + HG * hd;     /* [HG] */
    const __m256 scale = _mm256_set1_ps(u->scale);
    /* ---- scores, rows 2 at a time (a last odd row is paired with itself) ---- */
    for (int64_t t = 0; t < L; t += 2) {
        const int64_t t1 = t + 1 < L ? t + 1 : t;
        const uint16_t *row0 = kf + t * kstride, *row1 = kf + t1 * kstride;
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                const float *q0 = qb + (h * G + g0) * hd, *q1 = q0 + (gn > 1 ? hd : 0);
                const float *q2 = q0 + (gn > 2 ? 2 : gn - 1) * hd, *q3 = q0 + (gn > 3 ? 3 : gn - 1) * hd;
                const uint16_t *k0 = row0 + h * hd, *k1 = row1 + h * hd;
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps();
                __m256 a3 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
                __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
                const int64_t pfo = (t + SEQ_KPF < L ? SEQ_KPF : 0) * kstride; /* rows ahead, one line a row */
                for (int64_t j = 0; j < hd; j += 8) {
                    if (g0 == 0 && (j & 31) == 0)   /* a line: 32 values */
                        _mm_prefetch((const char *)(k0 + pfo + j), _MM_HINT_T0), _mm_prefetch((const char *)(k1 + pfo + j), _MM_HINT_T0);
                    const __m256 x = ld8_16(k0 + j, fmt), y = ld8_16(k1 + j, fmt);
                    __m256 qv = _mm256_loadu_ps(q0 + j);
                    a0 = _mm256_fmadd_ps(qv, x, a0), b0 = _mm256_fmadd_ps(qv, y, b0);
                    qv = _mm256_loadu_ps(q1 + j);
                    a1 = _mm256_fmadd_ps(qv, x, a1), b1 = _mm256_fmadd_ps(qv, y, b1);
                    qv = _mm256_loadu_ps(q2 + j);
                    a2 = _mm256_fmadd_ps(qv, x, a2), b2 = _mm256_fmadd_ps(qv, y, b2);
                    qv = _mm256_loadu_ps(q3 + j);
                    a3 = _mm256_fmadd_ps(qv, x, a3), b3 = _mm256_fmadd_ps(qv, y, b3);
                }
                /* lanes 0-3: heads 0-3 at row t; 4-7: at row t1 */
                const __m256 ha = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                const __m256 hb = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
                const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(ha, hb, 0x20), _mm256_permute2f128_ps(ha, hb, 0x31));
                float s8[8];
                _mm256_storeu_ps(s8, _mm256_mul_ps(sum, scale));
                for (int gg = 0; gg < gn; gg++) {
                    float *dst = sc + (h * G + g0 + gg) * Lp;
                    dst[t] = s8[gg];
                    dst[t1] = s8[4 + gg];
                }
            }
    }
    /* ---- softmax numerators, in place ---- */
    for (int64_t hg = 0; hg < HG; hg++) {
        float *p = sc + hg * Lp;
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
        inv[hg] = 1.0f / l;
        if (u->ml) u->ml[2 * hg] = mxs, u->ml[2 * hg + 1] = l;
    }
    /* ---- out = inv * sum_t p[t] v[t], rows SEQ_VROWS at a time ---- */
    for (int64_t t = 0; t < L; t += SEQ_VROWS) {
        const int64_t n = L - t < SEQ_VROWS ? L - t : SEQ_VROWS, tn = t + SEQ_VPF;
        const int64_t npf = L - tn < SEQ_VROWS ? (L > tn ? L - tn : 0) : SEQ_VROWS;
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                float *a[4];
                const float *p[4];
                for (int gg = 0; gg < 4; gg++) {
                    const int64_t hg = h * G + g0 + (gg < gn ? gg : gn - 1);
                    a[gg] = acc + hg * hd;
                    p[gg] = sc + hg * Lp + t;
                }
                int64_t j = 0;
                for (; j + 16 <= hd; j += 16) {
                    if (g0 == 0 && (j & 31) == 0)
                        for (int64_t r = 0; r < npf; r++) _mm_prefetch((const char *)(vf + (tn + r) * kstride + h * hd + j), _MM_HINT_T0);
                    float *const ac[4] = {a[0] + j, a[1] + j, a[2] + j, a[3] + j};
                    seq_v_cols16(ac, p, vf + t * kstride + h * hd + j, kstride, n, t == 0, 2, fmt);
                }
                if (j < hd) {
                    float *const ac[4] = {a[0] + j, a[1] + j, a[2] + j, a[3] + j};
                    seq_v_cols16(ac, p, vf + t * kstride + h * hd + j, kstride, n, t == 0, 1, fmt);
                }
            }
    }
    for (int64_t hg = 0; hg < HG; hg++) {
        const __m256 s = _mm256_set1_ps(inv[hg]);
        for (int64_t j = 0; j < hd; j += 8)
            _mm256_storeu_ps(u->o + hg * hd + j, _mm256_mul_ps(_mm256_loadu_ps(acc + hg * hd + j), s));
    }
}
#undef SEQ_VROWS
#undef SEQ_KPF
#undef SEQ_VPF

/* ---- prefill blocks (ryz_attn_block, see attention.h) ------------------------------------ */

/* 8 x 8 floats: out row d = column d of the 8 input rows */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[4 + i], 0x31);
    }
}

static void transpose_k(float *RYZ_RESTRICT kt, const float *k, int64_t kstride, int64_t hd, int64_t t0,
                        int64_t t1) {
    for (int64_t tb = t0; tb < t1; tb += 16) {
        const int64_t n = t1 - tb < 16 ? t1 - tb : 16;
        float *dst = kt + tb / 16 * hd * 16;
        for (int64_t half = 0; half < 16; half += 8)
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = half + i < n ? _mm256_loadu_ps(k + (tb + half + i) * kstride + d) : _mm256_setzero_ps();
                transpose8(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (d + i) * 16 + half, r[i]);
            }
    }
}

/* Tiles of 16 keys in order; per tile, the block's query vectors 4 at a time (a shorter last
 * group repeats its last vector and keeps no state for the copies):
 *   scores  s[i][t] = scale * q_i . k_t: per d, 2 key vectors x 4 broadcasts = 8 accumulators;
 *   mask    keys t >= L_i set to -inf (blend: a NaN there cannot leak in), so exp gives 0;
 *   update  the online softmax of attention.h: m, l per vector, acc[i] = a_i acc[i] +
 *           sum_t p_i[t] v_t, 16 columns (8 accumulators) at a time, keys past L_i skipped.
 * The tile's keys (8 KiB at hd 128) and values stay in L1 for all the block's groups; the next
 * tile's values are prefetched while this one runs. */
#define QV 4
static void attend_block(const ryz_attn_block *b, float *RYZ_RESTRICT scratch) {
    const int64_t G = b->G, hd = b->hd, nq = b->R * G, qs = b->qstride, ks = b->kstride, L0 = b->L0;
    const int64_t Lmax = L0 + b->R - 1;
    const float *RYZ_RESTRICT vb = b->v;
    const __m256 scale = _mm256_set1_ps(b->scale);
    float *RYZ_RESTRICT acc = scratch;       /* [nq][hd] */
    float *RYZ_RESTRICT mv = acc + nq * hd;  /* [nq] running max */
    float *RYZ_RESTRICT lv = mv + nq;        /* [nq] running sum */
    float P[QV][16] __attribute__((aligned(32)));
    for (int64_t t0 = 0; t0 < Lmax; t0 += 16) {
        const float *RYZ_RESTRICT ktile = b->kt + t0 * hd;
        const int first = t0 == 0;
        for (int64_t t = t0 + 16; t < (Lmax - t0 < 32 ? Lmax : t0 + 32); t++)
            for (int64_t c = 0; c < hd; c += 16) _mm_prefetch((const char *)(vb + t * ks + c), _MM_HINT_T0);
        for (int64_t v0 = 0; v0 < nq; v0 += QV) {
            const int64_t nv = nq - v0 < QV ? nq - v0 : QV;
            const float *qp[QV];
            int64_t vi[QV], Lv[QV];
            for (int i = 0; i < QV; i++) {
                vi[i] = v0 + (i < nv ? i : nv - 1);
                const int64_t r = vi[i] / G, g = vi[i] % G;
                qp[i] = b->q + r * qs + g * hd;
                Lv[i] = L0 + r;  /* ascending in i */
            }
            if (Lv[QV - 1] <= t0) continue; /* no vector of the group sees this tile */
            /* scores */
            __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps();
            __m256 a11 = _mm256_setzero_ps(), a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
            __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
            for (int64_t d = 0; d < hd; d++) {
                const __m256 x0 = _mm256_loadu_ps(ktile + d * 16), x1 = _mm256_loadu_ps(ktile + d * 16 + 8);
                __m256 qd = _mm256_broadcast_ss(qp[0] + d);
                a00 = _mm256_fmadd_ps(qd, x0, a00), a01 = _mm256_fmadd_ps(qd, x1, a01);
                qd = _mm256_broadcast_ss(qp[1] + d);
                a10 = _mm256_fmadd_ps(qd, x0, a10), a11 = _mm256_fmadd_ps(qd, x1, a11);
                qd = _mm256_broadcast_ss(qp[2] + d);
                a20 = _mm256_fmadd_ps(qd, x0, a20), a21 = _mm256_fmadd_ps(qd, x1, a21);
                qd = _mm256_broadcast_ss(qp[3] + d);
                a30 = _mm256_fmadd_ps(qd, x0, a30), a31 = _mm256_fmadd_ps(qd, x1, a31);
            }
            const __m256 sa[QV][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
            /* mask, online softmax */
            float alpha[QV];
            for (int i = 0; i < QV; i++) {
                __m256 s0 = _mm256_mul_ps(sa[i][0], scale), s1 = _mm256_mul_ps(sa[i][1], scale);
                if (Lv[i] < t0 + 16) {
                    const __m256 ninf = _mm256_set1_ps(-INFINITY);
                    s0 = _mm256_blendv_ps(ninf, s0, _mm256_castsi256_ps(ryz_tail8(Lv[i] - t0)));
                    s1 = _mm256_blendv_ps(ninf, s1, _mm256_castsi256_ps(ryz_tail8(Lv[i] - t0 - 8)));
                }
                const float mt = ryz_hmax_avx2(_mm256_max_ps(s0, s1));
                const float mo = first ? -INFINITY : mv[vi[i]], mn = mt > mo ? mt : mo;
                const __m256 mx = _mm256_set1_ps(mn);
                const __m256 p0 = ryz_exp_avx2(_mm256_sub_ps(s0, mx)), p1 = ryz_exp_avx2(_mm256_sub_ps(s1, mx));
                _mm256_store_ps(P[i], p0), _mm256_store_ps(P[i] + 8, p1);
                alpha[i] = first ? 0.0f : expf(mo - mn);
                if (i < nv) {
                    lv[vi[i]] = (first ? 0.0f : lv[vi[i]] * alpha[i]) + ryz_hsum_avx2(_mm256_add_ps(p0, p1));
                    mv[vi[i]] = mn;
                }
            }
            /* acc = alpha acc + sum_t p[t] v[t] */
            const int64_t tall = Lv[0] - t0 < 16 ? Lv[0] : t0 + 16;    /* keys every vector sees */
            const int64_t tend = Lv[QV - 1] - t0 < 16 ? Lv[QV - 1] : t0 + 16;
            const __m256 al0 = _mm256_set1_ps(alpha[0]), al1 = _mm256_set1_ps(alpha[1]);
            const __m256 al2 = _mm256_set1_ps(alpha[2]), al3 = _mm256_set1_ps(alpha[3]);
            float *c0p = acc + vi[0] * hd, *c1p = acc + vi[1] * hd, *c2p = acc + vi[2] * hd, *c3p = acc + vi[3] * hd;
            for (int64_t j = 0; j < hd; j += 16) {
                __m256 c00, c01, c10, c11, c20, c21, c30, c31;
                if (first) {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm256_setzero_ps();
                } else {
                    c00 = _mm256_mul_ps(_mm256_loadu_ps(c0p + j), al0), c01 = _mm256_mul_ps(_mm256_loadu_ps(c0p + j + 8), al0);
                    c10 = _mm256_mul_ps(_mm256_loadu_ps(c1p + j), al1), c11 = _mm256_mul_ps(_mm256_loadu_ps(c1p + j + 8), al1);
                    c20 = _mm256_mul_ps(_mm256_loadu_ps(c2p + j), al2), c21 = _mm256_mul_ps(_mm256_loadu_ps(c2p + j + 8), al2);
                    c30 = _mm256_mul_ps(_mm256_loadu_ps(c3p + j), al3), c31 = _mm256_mul_ps(_mm256_loadu_ps(c3p + j + 8), al3);
                }
                const float *vr = vb + t0 * ks + j;
                int64_t t = t0;
                for (; t < tall; t++, vr += ks) {
                    const __m256 y0 = _mm256_loadu_ps(vr), y1 = _mm256_loadu_ps(vr + 8);
                    __m256 p = _mm256_broadcast_ss(P[0] + (t - t0));
                    c00 = _mm256_fmadd_ps(p, y0, c00), c01 = _mm256_fmadd_ps(p, y1, c01);
                    p = _mm256_broadcast_ss(P[1] + (t - t0));
                    c10 = _mm256_fmadd_ps(p, y0, c10), c11 = _mm256_fmadd_ps(p, y1, c11);
                    p = _mm256_broadcast_ss(P[2] + (t - t0));
                    c20 = _mm256_fmadd_ps(p, y0, c20), c21 = _mm256_fmadd_ps(p, y1, c21);
                    p = _mm256_broadcast_ss(P[3] + (t - t0));
                    c30 = _mm256_fmadd_ps(p, y0, c30), c31 = _mm256_fmadd_ps(p, y1, c31);
                }
                for (; t < tend; t++, vr += ks) { /* keys only the later vectors of the group see */
                    const __m256 y0 = _mm256_loadu_ps(vr), y1 = _mm256_loadu_ps(vr + 8);
                    __m256 p;
                    if (t < Lv[0]) p = _mm256_broadcast_ss(P[0] + (t - t0)), c00 = _mm256_fmadd_ps(p, y0, c00), c01 = _mm256_fmadd_ps(p, y1, c01);
                    if (t < Lv[1]) p = _mm256_broadcast_ss(P[1] + (t - t0)), c10 = _mm256_fmadd_ps(p, y0, c10), c11 = _mm256_fmadd_ps(p, y1, c11);
                    if (t < Lv[2]) p = _mm256_broadcast_ss(P[2] + (t - t0)), c20 = _mm256_fmadd_ps(p, y0, c20), c21 = _mm256_fmadd_ps(p, y1, c21);
                    if (t < Lv[3]) p = _mm256_broadcast_ss(P[3] + (t - t0)), c30 = _mm256_fmadd_ps(p, y0, c30), c31 = _mm256_fmadd_ps(p, y1, c31);
                }
                /* repeated vectors (i >= nv) store the same values to the same place */
                _mm256_storeu_ps(c3p + j, c30), _mm256_storeu_ps(c3p + j + 8, c31);
                _mm256_storeu_ps(c2p + j, c20), _mm256_storeu_ps(c2p + j + 8, c21);
                _mm256_storeu_ps(c1p + j, c10), _mm256_storeu_ps(c1p + j + 8, c11);
                _mm256_storeu_ps(c0p + j, c00), _mm256_storeu_ps(c0p + j + 8, c01);
            }
        }
    }
    /* o = acc / l */
    for (int64_t v = 0; v < nq; v++) {
        const int64_t r = v / G, g = v % G;
        const __m256 w = _mm256_set1_ps(1.0f / lv[v]);
        float *o = b->o + r * qs + g * hd;
        for (int64_t j = 0; j < hd; j += 8) _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(acc + v * hd + j), w));
    }
}
#undef QV

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
        } else if (u->k16) {
            s.k16 = u->k16 + off, s.v16 = u->v16 + off;
        } else {
            s.k = u->k + off, s.v = u->v + off;
        }
        one(&s, scratch);
    }
}
/* The per-head unit kernels (attend_f32_1, attend_i8_1, attend_f16_1, attend_bf16_1) beside the
 * streaming seq_* and the prefill blocks are not an old loop left behind: dispatch still runs them
 * for every int8 cache, for a float or 16-bit cache whose kv heads are not one contiguous row
 * (H * hd != kstride) or hd % 8 != 0,
 * and for the prefill units attend_block does not take (hd % 16 != 0, split rows);
 * set_attention_variant("units") selects them everywhere, for `bench model --attention
 * tiled,units` and for tests/native/test_attention.py's `variant` fixture, which checks both
 * paths against the reference. */
static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    if (ryz_attn_tiled && u->H * u->hd == u->kstride && u->hd % 8 == 0)
        seq_f32(u, scratch);
    else
        each_head(u, scratch, attend_f32_1);
}
static void attend_i8(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { each_head(u, scratch, attend_i8_1); }
static void seq_f16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { seq_16(u, scratch, RYZ_KV_F16); }
static void seq_bf16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { seq_16(u, scratch, RYZ_KV_BF16); }
static void attend_f16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    if (ryz_attn_tiled && u->H * u->hd == u->kstride && u->hd % 8 == 0)
        seq_f16(u, scratch);
    else
        each_head(u, scratch, attend_f16_1);
}
static void attend_bf16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    if (ryz_attn_tiled && u->H * u->hd == u->kstride && u->hd % 8 == 0)
        seq_bf16(u, scratch);
    else
        each_head(u, scratch, attend_bf16_1);
}
static void widen16(float *RYZ_RESTRICT dst, const uint16_t *RYZ_RESTRICT src, int64_t n, int fmt) {
    int64_t i = 0;
    if (fmt == RYZ_KV_BF16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8_16(src + i, RYZ_KV_BF16));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8_16(src + i, RYZ_KV_F16));
    for (; i < n; i++) dst[i] = ryz_kv16_to_f32(src[i], fmt);
}

const ryz_attention_kernels ryz_attention_avx2 = {
    .name = "avx2",
    .attend_block = attend_block,
    .transpose_k = transpose_k,
    .attend = attend,
    .attend_i8 = attend_i8,
    .attend_f16 = attend_f16,
    .attend_bf16 = attend_bf16,
    .widen16 = widen16,
};
