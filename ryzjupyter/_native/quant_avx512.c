/* quant_avx512.c: AVX-512 int8 activation quantization (same results as the reference). */
#if !defined(__AVX512F__) || !defined(__AVX512BW__)
#error "quant_avx512.c must be compiled with -mavx512f -mavx512bw"
#endif
#include <immintrin.h>

#include "quant.h"

static int quantize_row_i8(int8_t *RYZ_RESTRICT q, float *RYZ_RESTRICT scale,
                           const float *RYZ_RESTRICT x, int64_t K) {
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + k);
        __m512 d = _mm512_sub_ps(v, v); /* NaN exactly for NaN/inf lanes */
        bad |= _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
    }
    if (bad) return 1;
    float amax = _mm512_reduce_max_ps(vmax);
    float s = 127.0f / (amax > RYZ_ACT_EPS ? amax : RYZ_ACT_EPS);
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vs);
        /* round half to even, then a saturating narrow clamps to [-128, 127] */
        __m512i i = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_mask_cvtsepi32_storeu_epi8(q + k, m, i);
    }
    *scale = s;
    return 0;
}

/* sum of signed bytes: sum (q ^ 0x80) as unsigned bytes (vpsadbw: 8 bytes per 64-bit lane)
 * minus 128 per byte */
static int32_t sum_i8(const int8_t *q, int64_t K) {
    const __m512i flip = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m512i acc = zero;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64)
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(_mm512_loadu_si512(q + k), flip), zero));
    int64_t s = _mm512_reduce_add_epi64(acc) - 128 * k;
    for (; k < K; k++) s += q[k];
    return (int32_t)s;
}

const ryz_quant_kernels ryz_quant_avx512 = {
    .name = "avx512vnni",
    .quantize_row_i8 = quantize_row_i8,
    .sum_i8 = sum_i8,
};
