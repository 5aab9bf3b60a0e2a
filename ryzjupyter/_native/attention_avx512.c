/* attention_avx512.c: AVX-512F causal GQA attention (see attention.h).
 * Query heads are taken 4 at a time (a group smaller than 4 repeats its last head and
 * drops the copies), so every k/v row loaded from the cache feeds 4 dot products or 4
 * accumulations. Two passes: scores of all rows, softmax, then the weighted sum of v. */
#if !defined(__AVX512F__)
#error "attention_avx512.c must be compiled with -mavx512f"
#endif
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "ops.h"

static void attend(float *RYZ_RESTRICT out, const float *RYZ_RESTRICT q, const float *RYZ_RESTRICT k,
                   const float *RYZ_RESTRICT v, const ryz_attn_shape *s, int64_t i, int64_t kvh,
                   float *RYZ_RESTRICT scratch) {
    const int64_t G = s->Hq / s->Hkv, hd = s->hd, L = s->n_past + i + 1;
    const int64_t kstride = s->Hkv * hd;
    const float *kb = k + kvh * hd, *vb = v + kvh * hd;
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t gn = G - g0 < 4 ? G - g0 : 4;
        const float *qh[4];
        float *sc[4];
        for (int gg = 0; gg < 4; gg++) {
            int64_t h = kvh * G + g0 + (gg < gn ? gg : gn - 1);
            qh[gg] = q + (i * s->Hq + h) * hd;
            sc[gg] = scratch + (gg < gn ? gg : gn - 1) * L;
        }
        /* ---- scores ---- */
        for (int64_t t = 0; t < L; t++) {
            const float *kt = kb + t * kstride;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
            for (int64_t j = 0; j < hd; j += 16) {
                __mmask16 m = ryz_tail16(hd - j);
                __m512 kv = _mm512_maskz_loadu_ps(m, kt + j);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[0] + j), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[1] + j), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[2] + j), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qh[3] + j), kv, a3);
            }
            /* the copies of a repeated head write the same value to the same place */
            sc[0][t] = _mm512_reduce_add_ps(a0) * s->scale;
            sc[1][t] = _mm512_reduce_add_ps(a1) * s->scale;
            sc[2][t] = _mm512_reduce_add_ps(a2) * s->scale;
            sc[3][t] = _mm512_reduce_add_ps(a3) * s->scale;
        }
        /* ---- softmax numerators, in place ---- */
        float inv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int gg = 0; gg < gn; gg++) {
            float *p = sc[gg];
            __m512 vm = _mm512_set1_ps(-INFINITY);
            for (int64_t t = 0; t < L; t += 16)
                vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), ryz_tail16(L - t), p + t));
            __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vm)), sum = _mm512_setzero_ps();
            for (int64_t t = 0; t < L; t += 16) {
                __mmask16 m = ryz_tail16(L - t);
                __m512 e = ryz_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + t), mx));
                sum = _mm512_mask_add_ps(sum, m, sum, e);
                _mm512_mask_storeu_ps(p + t, m, e);
            }
            inv[gg] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        for (int gg = gn; gg < 4; gg++) inv[gg] = inv[gn - 1];
        /* ---- out = inv * sum_t p[t] v[t], 32 columns (8 accumulators) at a time ---- */
        float *oh[4];
        for (int gg = 0; gg < 4; gg++)
            oh[gg] = out + (i * s->Hq + kvh * G + g0 + (gg < gn ? gg : gn - 1)) * hd;
        for (int64_t j = 0; j < hd; j += 32) {
            __mmask16 m0 = ryz_tail16(hd - j), m1 = hd - j > 16 ? ryz_tail16(hd - j - 16) : 0;
            __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(),
                   c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(),
                   c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
            const float *vt = vb + j;
            for (int64_t t = 0; t < L; t++, vt += kstride) {
                __m512 v0 = _mm512_maskz_loadu_ps(m0, vt), v1 = _mm512_maskz_loadu_ps(m1, vt + 16);
                __m512 p0 = _mm512_set1_ps(sc[0][t]), p1 = _mm512_set1_ps(sc[1][t]);
                __m512 p2 = _mm512_set1_ps(sc[2][t]), p3 = _mm512_set1_ps(sc[3][t]);
                c00 = _mm512_fmadd_ps(p0, v0, c00); c01 = _mm512_fmadd_ps(p0, v1, c01);
                c10 = _mm512_fmadd_ps(p1, v0, c10); c11 = _mm512_fmadd_ps(p1, v1, c11);
                c20 = _mm512_fmadd_ps(p2, v0, c20); c21 = _mm512_fmadd_ps(p2, v1, c21);
                c30 = _mm512_fmadd_ps(p3, v0, c30); c31 = _mm512_fmadd_ps(p3, v1, c31);
            }
            /* stores of repeated heads go to the same place with the same values */
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

const ryz_attention_kernels ryz_attention_avx512 = {
    .name = "avx512vnni",
    .attend = attend,
};
