/* layer_avx2.c: AVX2 int8 GEMV of the lm_head (sign-extend to int16 + vpmaddwd: exact). */
#if !defined(__AVX2__)
#error "layer_avx2.c must be compiled with -mavx2"
#endif
#include <immintrin.h>

#include "layer.h"
#include "matmul.h"

static inline int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static void gemv_i8(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x, int32_t xsum,
                    float xs, int64_t n0, int64_t n1) {
    RYZ_UNUSED(xsum);
    const int64_t K16 = K / 16 * 16;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *r = w + n * K;
        __m256i acc = _mm256_setzero_si256();
        for (int64_t k = 0; k < K16; k += 16) {
            __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(r + k)));
            __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + k)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(wv, xv));
        }
        int32_t s = hsum8(acc);
        for (int64_t k = K16; k < K; k++) s += (int32_t)x[k] * r[k];
        out[n] = ryz_i8_epilogue(s, xs, ws[n]);
    }
}

const ryz_layer_kernels ryz_layer_avx2 = {.name = "avx2", .gemv_i8 = gemv_i8};
