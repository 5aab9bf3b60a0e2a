/* head4_avx2.c: AVX2 GEMV of the 4-bit lm_head (layout and result: head4.h). The two
 * 32-byte halves of a block are rows 0-7 and 8-15; vpmaddubsw (u8 nibble x s8, pairs summed
 * in int16: |15 * 127 * 2| < 2^15, no saturation) + vpmaddwd with ones = vpdpbusd, exact. */
#if !defined(__AVX2__) || !defined(__F16C__)
#error "head4_avx2.c must be compiled with -mavx2 -mf16c"
#endif
#include <immintrin.h>

#include "head4.h"

#define PF_BYTES 8192

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static inline __m256i dot4(__m256i s, __m256i u, __m256i x) {
    return _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}

static inline void tile(float *o, int64_t nvalid, const uint8_t *pt, const uint16_t *st, int64_t ng,
                        int64_t G, const int8_t *xm, const int32_t *nc, float xs) {
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    const int64_t spf = PF_BYTES * 4 / G;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *pg = pt + g * 8 * G;
        const int8_t *xg = xm + g * G, *xh = xg + G / 2;
        _mm_prefetch((const char *)(st + g * RYZ_H4_ROWS) + spf, _MM_HINT_T0);
        __m256i a0 = _mm256_set1_epi32(nc[g]), a1 = a0, b0 = _mm256_setzero_si256(), b1 = b0;
        for (int64_t p = 0; p < G / 8; p++) {
            const uint8_t *b = pg + p * 64;
            _mm_prefetch((const char *)b + PF_BYTES, _MM_HINT_T0);
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)b);        /* rows 0-7 */
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(b + 32)); /* rows 8-15 */
            const __m256i xl = bcast4(xg + 4 * p), xu = bcast4(xh + 4 * p);
            a0 = dot4(a0, _mm256_and_si256(v0, lo4), xl);
            a1 = dot4(a1, _mm256_and_si256(v1, lo4), xl);
            b0 = dot4(b0, _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4), xu);
            b1 = dot4(b1, _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4), xu);
        }
        const uint16_t *sg = st + g * RYZ_H4_ROWS;
        const __m256 d0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sg));
        const __m256 d1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sg + 8)));
        acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a0, b0)), d0));
        acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(a1, b1)), d1));
    }
    const __m256 vx = _mm256_set1_ps(xs);
    float res[RYZ_H4_ROWS];
    _mm256_storeu_ps(res, _mm256_div_ps(acc0, vx));
    _mm256_storeu_ps(res + 8, _mm256_div_ps(acc1, vx));
    const int64_t nv = nvalid < RYZ_H4_ROWS ? nvalid : RYZ_H4_ROWS;
    memcpy(o, res, (size_t)nv * sizeof(float));
}

static void gemv(float *out, int64_t ldo, int64_t V, const uint8_t *packed, const uint16_t *scales,
                 int64_t ng, int64_t G, const int8_t *x, const int32_t *negc, const float *xs, int64_t M,
                 int64_t t0, int64_t t1) {
    const int64_t Kp = ng * G, tile_bytes = ng * 8 * G;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t n0 = t * RYZ_H4_ROWS;
        for (int64_t m = 0; m < M; m++)
            tile(out + m * ldo + n0, V - n0, packed + t * tile_bytes, scales + t * ng * RYZ_H4_ROWS, ng, G,
                 x + m * Kp, negc + m * ng, xs[m]);
    }
}

const ryz_head4_kernels ryz_head4_avx2 = {.name = "avx2", .gemv = gemv};
