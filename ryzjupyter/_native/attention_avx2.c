/* attention_avx2.c: AVX2+FMA causal GQA attention (see attention.h), the same
 * structure as attention_avx512.c with 8-float vectors: query heads 4 at a time (a
 * smaller group repeats its last head), scores, softmax, then the weighted sum of v. */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "attention_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "ops.h"

static inline __m256i tail8(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? (left < 0 ? 0 : left) : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void attend(float *RYZ_RESTRICT out, const float *RYZ_RESTRICT q, const float *RYZ_RESTRICT k,
                   const float *RYZ_RESTRICT v, const ryz_attn_shape *s, int64_t i, int64_t kvh,
                   float *RYZ_RESTRICT scratch) {
    const int64_t G = s->Hq / s->Hkv, hd = s->hd, L = s->n_past + i + 1;
    const int64_t kstride = s->Hkv * hd;
    const float *kb = k + kvh * hd, *vb = v + kvh * hd;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gn = G - g0 < 4 ? G - g0 : 4;
        const float *qh[4];
        float *sc[4], *oh[4];
        for (int gg = 0; gg < 4; gg++) {
            int64_t r = gg < gn ? gg : gn - 1, h = kvh * G + g0 + r;
            qh[gg] = q + (i * s->Hq + h) * hd;
            oh[gg] = out + (i * s->Hq + h) * hd;
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
                __m256i m = tail8(hd - j);
                __m256 kv = _mm256_maskload_ps(kt + j, m);
                a0 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[0] + j, m), kv, a0);
                a1 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[1] + j, m), kv, a1);
                a2 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[2] + j, m), kv, a2);
                a3 = _mm256_fmadd_ps(_mm256_maskload_ps(qh[3] + j, m), kv, a3);
            }
            sc[0][t] = ryz_hsum_avx2(a0) * s->scale;
            sc[1][t] = ryz_hsum_avx2(a1) * s->scale;
            sc[2][t] = ryz_hsum_avx2(a2) * s->scale;
            sc[3][t] = ryz_hsum_avx2(a3) * s->scale;
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
                __m256i m = tail8(L - t);
                __m256 e = ryz_exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(p + t, m), mx));
                e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
                sum = _mm256_add_ps(sum, e);
                _mm256_maskstore_ps(p + t, m, e);
            }
            inv[gg] = 1.0f / ryz_hsum_avx2(sum);
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t], 16 columns (8 accumulators) at a time ---- */
        for (int64_t j = 0; j < hd; j += 16) {
            __m256i m0 = tail8(hd - j), m1 = tail8(hd - j - 8);
            __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
                   c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
                   c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
            const float *vt = vb + j;
            if (hd - j >= 16) {
                for (int64_t t = 0; t < L; t++, vt += kstride) {
                    __m256 v0 = _mm256_loadu_ps(vt), v1 = _mm256_loadu_ps(vt + 8);
                    __m256 p0 = _mm256_broadcast_ss(sc[0] + t), p1 = _mm256_broadcast_ss(sc[1] + t);
                    __m256 p2 = _mm256_broadcast_ss(sc[2] + t), p3 = _mm256_broadcast_ss(sc[3] + t);
                    c00 = _mm256_fmadd_ps(p0, v0, c00); c01 = _mm256_fmadd_ps(p0, v1, c01);
                    c10 = _mm256_fmadd_ps(p1, v0, c10); c11 = _mm256_fmadd_ps(p1, v1, c11);
                    c20 = _mm256_fmadd_ps(p2, v0, c20); c21 = _mm256_fmadd_ps(p2, v1, c21);
                    c30 = _mm256_fmadd_ps(p3, v0, c30); c31 = _mm256_fmadd_ps(p3, v1, c31);
                }
            } else {
                for (int64_t t = 0; t < L; t++, vt += kstride) {
                    __m256 v0 = _mm256_maskload_ps(vt, m0), v1 = _mm256_maskload_ps(vt + 8, m1);
                    __m256 p0 = _mm256_broadcast_ss(sc[0] + t), p1 = _mm256_broadcast_ss(sc[1] + t);
                    __m256 p2 = _mm256_broadcast_ss(sc[2] + t), p3 = _mm256_broadcast_ss(sc[3] + t);
                    c00 = _mm256_fmadd_ps(p0, v0, c00); c01 = _mm256_fmadd_ps(p0, v1, c01);
                    c10 = _mm256_fmadd_ps(p1, v0, c10); c11 = _mm256_fmadd_ps(p1, v1, c11);
                    c20 = _mm256_fmadd_ps(p2, v0, c20); c21 = _mm256_fmadd_ps(p2, v1, c21);
                    c30 = _mm256_fmadd_ps(p3, v0, c30); c31 = _mm256_fmadd_ps(p3, v1, c31);
                }
            }
            __m256 i0 = _mm256_set1_ps(inv[0]), i1 = _mm256_set1_ps(inv[1]);
            __m256 i2 = _mm256_set1_ps(inv[2]), i3 = _mm256_set1_ps(inv[3]);
            _mm256_maskstore_ps(oh[0] + j, m0, _mm256_mul_ps(c00, i0));
            _mm256_maskstore_ps(oh[0] + j + 8, m1, _mm256_mul_ps(c01, i0));
            _mm256_maskstore_ps(oh[1] + j, m0, _mm256_mul_ps(c10, i1));
            _mm256_maskstore_ps(oh[1] + j + 8, m1, _mm256_mul_ps(c11, i1));
            _mm256_maskstore_ps(oh[2] + j, m0, _mm256_mul_ps(c20, i2));
            _mm256_maskstore_ps(oh[2] + j + 8, m1, _mm256_mul_ps(c21, i2));
            _mm256_maskstore_ps(oh[3] + j, m0, _mm256_mul_ps(c30, i3));
            _mm256_maskstore_ps(oh[3] + j + 8, m1, _mm256_mul_ps(c31, i3));
        }
    }
}

const ryz_attention_kernels ryz_attention_avx2 = {
    .name = "avx2",
    .attend = attend,
};
