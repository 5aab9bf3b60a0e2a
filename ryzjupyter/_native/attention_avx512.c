/* attention_avx512.c: AVX-512 causal GQA attention (see attention.h), float32 or int8
 * KV cache (one template, specialised twice). Query heads are taken 4 at a time (a
 * group smaller than 4 repeats its last head and drops the copies), so every k/v row
 * loaded from the cache feeds 4 dot products or 4 accumulations. Two passes: scores of
 * all rows, softmax, then the weighted sum of v, blocked over rows.
 * Whole vectors use plain loads: masked loads that miss the cache stream about 4x
 * slower on Zen 4 (measured at 20k cached rows); masks only for row tails. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "attention_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vl"
#endif
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "ops.h"

/* 16 cache values from column j of a row, as floats (`left` = columns left in the row) */
static inline __m512 ld_f32(const float *p, int64_t left) { return ryz_ld16(p, ryz_tail16(left)); }
static inline __m512 ld_i8(const int8_t *p, int64_t left) {
    __m128i b = left >= 16 ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(ryz_tail16(left), p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

/* ---- float32 cache ---- */
static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride;
    const float *kb = u->k, *vb = u->v;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gn = G - g0 < 4 ? G - g0 : 4;
        const float *qh[4];
        float *sc[4];
        for (int gg = 0; gg < 4; gg++) {
            qh[gg] = u->q + (g0 + (gg < gn ? gg : gn - 1)) * hd;
            sc[gg] = scratch + (gg < gn ? gg : gn - 1) * L;
        }
        /* ---- scores ---- */
        for (int64_t t = 0; t < L; t++) {
            const float *kt = kb + t * kstride;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            /* plain loads for whole vectors: masked loads that miss the cache stream
             * several times slower on Zen 4 (measured: 4x at 20k cached rows) */
            int64_t j = 0;
            for (; j + 16 <= hd; j += 16) {
                __m512 kv = _mm512_loadu_ps(kt + j);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[0] + j), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[1] + j), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[2] + j), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[3] + j), kv, a3);
            }
            if (j < hd) {
                __mmask16 m = ryz_tail16(hd - j);
                __m512 kv = _mm512_maskz_loadu_ps(m, kt + j);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[0] + j), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[1] + j), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[2] + j), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[3] + j), kv, a3);
            }
            /* the copies of a repeated head write the same value to the same place */
            sc[0][t] = _mm512_reduce_add_ps(a0) * u->scale;
            sc[1][t] = _mm512_reduce_add_ps(a1) * u->scale;
            sc[2][t] = _mm512_reduce_add_ps(a2) * u->scale;
            sc[3][t] = _mm512_reduce_add_ps(a3) * u->scale;
        }
        /* ---- softmax numerators, in place ---- */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int gg = 0; gg < gn; gg++) {
            float *p = sc[gg];
            __m512 vm = _mm512_set1_ps(-INFINITY);
            for (int64_t t = 0; t < L; t += 16)
                vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), ryz_tail16(L - t), p + t));
            const float mxs = _mm512_reduce_max_ps(vm);
            __m512 mx = _mm512_set1_ps(mxs), sum = _mm512_setzero_ps();
            for (int64_t t = 0; t < L; t += 16) {
                __mmask16 m = ryz_tail16(L - t);
                __m512 e = ryz_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + t), mx));
                sum = _mm512_mask_add_ps(sum, m, sum, e);
                _mm512_mask_storeu_ps(p + t, m, e);
            }
            const float l = _mm512_reduce_add_ps(sum);
            inv[gg] = 1.0f / l;
            if (u->ml) u->ml[2 * (g0 + gg)] = mxs, u->ml[2 * (g0 + gg) + 1] = l;
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t]: 32 columns (8 accumulators) per pass, rows in
         * blocks so that every column pass of a block finds its v rows in cache; partial
         * sums between blocks live in acc (4 rows of hd) ---- */
        float *oh[4], *acc = scratch + 4 * L;
        for (int gg = 0; gg < 4; gg++)
            oh[gg] = u->o + (g0 + (gg < gn ? gg : gn - 1)) * hd;
        for (int64_t tb = 0; tb < L; tb += RYZ_ATTN_VBLOCK) {
            const int64_t te = L - tb < RYZ_ATTN_VBLOCK ? L : tb + RYZ_ATTN_VBLOCK;
            for (int64_t j = 0; j < hd; j += 32) {
                __mmask16 m0 = ryz_tail16(hd - j), m1 = hd - j > 16 ? ryz_tail16(hd - j - 16) : 0;
                __m512 c00, c01, c10, c11, c20, c21, c30, c31;
                if (tb == 0) {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
                } else {
                    c00 = _mm512_maskz_loadu_ps(m0, acc + j), c01 = _mm512_maskz_loadu_ps(m1, acc + j + 16);
                    c10 = _mm512_maskz_loadu_ps(m0, acc + hd + j), c11 = _mm512_maskz_loadu_ps(m1, acc + hd + j + 16);
                    c20 = _mm512_maskz_loadu_ps(m0, acc + 2 * hd + j), c21 = _mm512_maskz_loadu_ps(m1, acc + 2 * hd + j + 16);
                    c30 = _mm512_maskz_loadu_ps(m0, acc + 3 * hd + j), c31 = _mm512_maskz_loadu_ps(m1, acc + 3 * hd + j + 16);
                }
                const float *vt = vb + tb * kstride + j;
                const int full = hd - j >= 32;
                for (int64_t t = tb; t < te; t++, vt += kstride) {
                    __m512 v0, v1;
                    if (full) { /* hoisted by the compiler; plain loads stream faster (see above) */
                        v0 = _mm512_loadu_ps(vt);
                        v1 = _mm512_loadu_ps(vt + 16);
                    } else {
                        v0 = _mm512_maskz_loadu_ps(m0, vt);
                        v1 = _mm512_maskz_loadu_ps(m1, vt + 16);
                    }
                    __m512 p0 = _mm512_set1_ps(sc[0][t]), p1 = _mm512_set1_ps(sc[1][t]);
                    __m512 p2 = _mm512_set1_ps(sc[2][t]), p3 = _mm512_set1_ps(sc[3][t]);
                    c00 = _mm512_fmadd_ps(p0, v0, c00); c01 = _mm512_fmadd_ps(p0, v1, c01);
                    c10 = _mm512_fmadd_ps(p1, v0, c10); c11 = _mm512_fmadd_ps(p1, v1, c11);
                    c20 = _mm512_fmadd_ps(p2, v0, c20); c21 = _mm512_fmadd_ps(p2, v1, c21);
                    c30 = _mm512_fmadd_ps(p3, v0, c30); c31 = _mm512_fmadd_ps(p3, v1, c31);
                }
                if (te < L) {
                    _mm512_mask_storeu_ps(acc + j, m0, c00); _mm512_mask_storeu_ps(acc + j + 16, m1, c01);
                    _mm512_mask_storeu_ps(acc + hd + j, m0, c10); _mm512_mask_storeu_ps(acc + hd + j + 16, m1, c11);
                    _mm512_mask_storeu_ps(acc + 2 * hd + j, m0, c20); _mm512_mask_storeu_ps(acc + 2 * hd + j + 16, m1, c21);
                    _mm512_mask_storeu_ps(acc + 3 * hd + j, m0, c30); _mm512_mask_storeu_ps(acc + 3 * hd + j + 16, m1, c31);
                    continue;
                }
                /* last block: scale and store (repeated heads store the same values twice) */
                _mm512_mask_storeu_ps(oh[0] + j, m0, _mm512_mul_ps(c00, _mm512_set1_ps(inv[0])));
                _mm512_mask_storeu_ps(oh[0] + j + 16, m1, _mm512_mul_ps(c01, _mm512_set1_ps(inv[0])));
                _mm512_mask_storeu_ps(oh[1] + j, m0, _mm512_mul_ps(c10, _mm512_set1_ps(inv[1])));
                _mm512_mask_storeu_ps(oh[1] + j + 16, m1, _mm512_mul_ps(c11, _mm512_set1_ps(inv[1])));
                _mm512_mask_storeu_ps(oh[2] + j, m0, _mm512_mul_ps(c20, _mm512_set1_ps(inv[2])));
                _mm512_mask_storeu_ps(oh[2] + j + 16, m1, _mm512_mul_ps(c21, _mm512_set1_ps(inv[2])));
                _mm512_mask_storeu_ps(oh[3] + j, m0, _mm512_mul_ps(c30, _mm512_set1_ps(inv[3])));
                _mm512_mask_storeu_ps(oh[3] + j + 16, m1, _mm512_mul_ps(c31, _mm512_set1_ps(inv[3])));
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
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            int64_t j = 0;
            for (; j + 16 <= hd; j += 16) {
                __m512 kv = LOADK(t, j, 16);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[0] + j), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[1] + j), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[2] + j), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(qh[3] + j), kv, a3);
            }
            if (j < hd) {
                __mmask16 m = ryz_tail16(hd - j);
                __m512 kv = LOADK(t, j, hd - j);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[0] + j), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[1] + j), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[2] + j), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[3] + j), kv, a3);
            }
            /* the copies of a repeated head write the same value to the same place */
            if (i8) {
                const float kst = ks[t * ss];
                sc[0][t] = _mm512_reduce_add_ps(a0) * kst * scale;
                sc[1][t] = _mm512_reduce_add_ps(a1) * kst * scale;
                sc[2][t] = _mm512_reduce_add_ps(a2) * kst * scale;
                sc[3][t] = _mm512_reduce_add_ps(a3) * kst * scale;
            } else {
                sc[0][t] = _mm512_reduce_add_ps(a0) * scale;
                sc[1][t] = _mm512_reduce_add_ps(a1) * scale;
                sc[2][t] = _mm512_reduce_add_ps(a2) * scale;
                sc[3][t] = _mm512_reduce_add_ps(a3) * scale;
            }
        }
        /* ---- softmax numerators, in place (scores are in L1: masks are cheap here) ---- */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int gg = 0; gg < gn; gg++) {
            float *p = sc[gg];
            __m512 vm = _mm512_set1_ps(-INFINITY);
            for (int64_t t = 0; t < L; t += 16)
                vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), ryz_tail16(L - t), p + t));
            const float mxs = _mm512_reduce_max_ps(vm);
            __m512 mx = _mm512_set1_ps(mxs), sum = _mm512_setzero_ps();
            for (int64_t t = 0; t < L; t += 16) {
                __mmask16 m = ryz_tail16(L - t);
                __m512 e = ryz_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + t), mx));
                sum = _mm512_mask_add_ps(sum, m, sum, e);
                _mm512_mask_storeu_ps(p + t, m, e);
            }
            const float l = _mm512_reduce_add_ps(sum);
            inv[gg] = 1.0f / l;
            if (ml) ml[2 * (g0 + gg)] = mxs, ml[2 * (g0 + gg) + 1] = l;
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t]: 32 columns (8 accumulators) per pass, rows in
         * blocks of RYZ_ATTN_VBLOCK so that every column pass of a block finds its v rows
         * in cache; partial sums between blocks live in acc (4 rows of hd) ---- */
        float *acc = scratch + 4 * L;
        for (int64_t tb = 0; tb < L; tb += RYZ_ATTN_VBLOCK) {
            const int64_t te = L - tb < RYZ_ATTN_VBLOCK ? L : tb + RYZ_ATTN_VBLOCK;
            for (int64_t j = 0; j < hd; j += 32) {
                const int64_t l0 = hd - j, l1 = hd - j - 16;
                const __mmask16 m0 = ryz_tail16(l0), m1 = ryz_tail16(l1);
                __m512 c00, c01, c10, c11, c20, c21, c30, c31;
                if (tb == 0) {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = _mm512_setzero_ps();
                } else {
                    c00 = _mm512_maskz_loadu_ps(m0, acc + j), c01 = _mm512_maskz_loadu_ps(m1, acc + j + 16);
                    c10 = _mm512_maskz_loadu_ps(m0, acc + hd + j), c11 = _mm512_maskz_loadu_ps(m1, acc + hd + j + 16);
                    c20 = _mm512_maskz_loadu_ps(m0, acc + 2 * hd + j), c21 = _mm512_maskz_loadu_ps(m1, acc + 2 * hd + j + 16);
                    c30 = _mm512_maskz_loadu_ps(m0, acc + 3 * hd + j), c31 = _mm512_maskz_loadu_ps(m1, acc + 3 * hd + j + 16);
                }
#define V_ROWS(LEFT0, LEFT1)                                                                  \
                for (int64_t t = tb; t < te; t++) {                                           \
                    __m512 v0 = LOADV(t, j, LEFT0), v1 = LOADV(t, j + 16, LEFT1);            \
                    const float w = i8 ? vs[t * ss] : 1.0f;                                   \
                    __m512 p0 = _mm512_set1_ps(sc[0][t] * w), p1 = _mm512_set1_ps(sc[1][t] * w); \
                    __m512 p2 = _mm512_set1_ps(sc[2][t] * w), p3 = _mm512_set1_ps(sc[3][t] * w); \
                    c00 = _mm512_fmadd_ps(p0, v0, c00); c01 = _mm512_fmadd_ps(p0, v1, c01);   \
                    c10 = _mm512_fmadd_ps(p1, v0, c10); c11 = _mm512_fmadd_ps(p1, v1, c11);   \
                    c20 = _mm512_fmadd_ps(p2, v0, c20); c21 = _mm512_fmadd_ps(p2, v1, c21);   \
                    c30 = _mm512_fmadd_ps(p3, v0, c30); c31 = _mm512_fmadd_ps(p3, v1, c31);   \
                }
                if (l0 >= 32) {
                    V_ROWS(16, 16)
                } else {
                    V_ROWS(l0, l1)
                }
#undef V_ROWS
                if (te < L) {
                    _mm512_mask_storeu_ps(acc + j, m0, c00); _mm512_mask_storeu_ps(acc + j + 16, m1, c01);
                    _mm512_mask_storeu_ps(acc + hd + j, m0, c10); _mm512_mask_storeu_ps(acc + hd + j + 16, m1, c11);
                    _mm512_mask_storeu_ps(acc + 2 * hd + j, m0, c20); _mm512_mask_storeu_ps(acc + 2 * hd + j + 16, m1, c21);
                    _mm512_mask_storeu_ps(acc + 3 * hd + j, m0, c30); _mm512_mask_storeu_ps(acc + 3 * hd + j + 16, m1, c31);
                    continue;
                }
                /* last block: scale and store (repeated heads store the same values twice) */
                _mm512_mask_storeu_ps(oh[0] + j, m0, _mm512_mul_ps(c00, _mm512_set1_ps(inv[0])));
                _mm512_mask_storeu_ps(oh[0] + j + 16, m1, _mm512_mul_ps(c01, _mm512_set1_ps(inv[0])));
                _mm512_mask_storeu_ps(oh[1] + j, m0, _mm512_mul_ps(c10, _mm512_set1_ps(inv[1])));
                _mm512_mask_storeu_ps(oh[1] + j + 16, m1, _mm512_mul_ps(c11, _mm512_set1_ps(inv[1])));
                _mm512_mask_storeu_ps(oh[2] + j, m0, _mm512_mul_ps(c20, _mm512_set1_ps(inv[2])));
                _mm512_mask_storeu_ps(oh[2] + j + 16, m1, _mm512_mul_ps(c21, _mm512_set1_ps(inv[2])));
                _mm512_mask_storeu_ps(oh[3] + j, m0, _mm512_mul_ps(c30, _mm512_set1_ps(inv[3])));
                _mm512_mask_storeu_ps(oh[3] + j + 16, m1, _mm512_mul_ps(c31, _mm512_set1_ps(inv[3])));
            }
        }
    }
#undef LOADK
#undef LOADV
}

static void attend_i8(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, 1); }

const ryz_attention_kernels ryz_attention_avx512 = {
    .name = "avx512vnni",
    .attend = attend,
    .attend_i8 = attend_i8,
};
