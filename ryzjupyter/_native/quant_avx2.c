/* quant_avx2.c: AVX2 int8 activation quantization (same results as the reference). */
#ifndef __AVX2__
#error "quant_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <float.h>
#include <immintrin.h>
#include <math.h>

#include "quant.h"

static int quantize_row_i8(int8_t *RYZ_RESTRICT q, float *RYZ_RESTRICT scale,
                           const float *RYZ_RESTRICT x, int64_t K) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 vmax = _mm256_setzero_ps();
    __m256 vbad = _mm256_setzero_ps(); /* x - x is NaN exactly when x is NaN or inf */
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_sub_ps(v, v), _CMP_UNORD_Q));
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
    }
    if (_mm256_movemask_ps(vbad)) return 1;
    float buf[8];
    _mm256_storeu_ps(buf, vmax);
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = buf[i] > amax ? buf[i] : amax;
    for (; k < K; k++) {
        float a = fabsf(x[k]);
        if (!(a <= FLT_MAX)) return 1;
        if (a > amax) amax = a;
    }
    float s = 127.0f / (amax > RYZ_ACT_EPS ? amax : RYZ_ACT_EPS);
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256i i0 = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))));
        /* packs work per 128-bit lane: the permute restores element order */
        __m256i w01 = _mm256_packs_epi32(i0, i1), w23 = _mm256_packs_epi32(i2, i3);
        __m256i b = _mm256_packs_epi16(w01, w23);
        b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + k), b);
    }
    for (; k < K; k++) {
        float v = rintf(x[k] * s);
        q[k] = (int8_t)(v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v));
    }
    *scale = s;
    return 0;
}

/* sum of signed bytes: sum (q ^ 0x80) as unsigned bytes (vpsadbw: 8 bytes per 64-bit lane)
 * minus 128 per byte */
static int32_t sum_i8(const int8_t *q, int64_t K) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256i acc = zero;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32)
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + k)), flip), zero));
    int64_t s = _mm256_extract_epi64(acc, 0) + _mm256_extract_epi64(acc, 1) + _mm256_extract_epi64(acc, 2) +
                _mm256_extract_epi64(acc, 3) - 128 * k;
    for (; k < K; k++) s += q[k];
    return (int32_t)s;
}

const ryz_quant_kernels ryz_quant_avx2 = {
    .name = "avx2",
    .quantize_row_i8 = quantize_row_i8,
    .sum_i8 = sum_i8,
};
