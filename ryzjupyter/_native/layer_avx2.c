/* layer_avx2.c: AVX2 int8 GEMV of the lm_head (sign-extend to int16 + vpmaddwd: exact). */
#if !defined(__AVX2__)
#error "layer_avx2.c must be compiled with -mavx2"
#endif
#include <immintrin.h>
#include <stdlib.h>

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

/* M tokens: the activations are widened to int16 once per call; then each weight row is loaded
 * and widened once per 16 columns and multiplied (vpmaddwd, its memory operand the token's
 * int16 activations) with up to 4 tokens held in int32 accumulators (4 tokens' widened
 * activations, 20 KB at K = 2560, stay in L1; 5 spilled to L2 and ran 2.4x slower than 3). int16 x int16 pair sums
 * never overflow int32 for int8 inputs, and the int32 sum is exact for K <= RYZ_MATMUL_I8_MAX_K. */
#define GEMM_TOKENS 4
/* acc += vpmaddwd(w, the 16 int16 at p), as inline asm (GCC hoists the multiplies of an unrolled
 * loop ahead of their adds and spills them) */
#define MADDWD_ACC(acc, w, p)                                                               \
    do {                                                                                    \
        __m256i tmp_;                                                                       \
        __asm__("vpmaddwd %2, %3, %1\n\tvpaddd %1, %0, %0"                                 \
                : "+x"(acc), "=&x"(tmp_)                                                    \
                : "m"(*(const __m256i *)(const void *)(p)), "x"(w));                         \
    } while (0)

static inline __attribute__((always_inline)) void gemm_rows(float *out, int64_t ldo, const int8_t *w,
                                                            const float *ws, int64_t K, const int16_t *x16,
                                                            const int8_t *x, int64_t ldx, const float *xs,
                                                            int64_t m0, const int NT, int64_t n0, int64_t n1) {
    const int64_t K16 = K / 16 * 16;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *r = w + n * K;
        __m256i acc[GEMM_TOKENS];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_si256();
        for (int64_t k = 0; k < K16; k += 16) {
            const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(r + k)));
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) MADDWD_ACC(acc[t], wv, x16 + (m0 + t) * K16 + k);
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const int8_t *xt = x + (m0 + t) * ldx;
            int32_t s = hsum8(acc[t]);
            for (int64_t k = K16; k < K; k++) s += (int32_t)xt[k] * r[k];
            out[(m0 + t) * ldo + n] = ryz_i8_epilogue(s, xs[m0 + t], ws[n]);
        }
    }
}

#define GEMM_NT(NT)                                                                                           \
    static void gemm_##NT(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K,              \
                          const int16_t *x16, const int8_t *x, int64_t ldx, const float *xs, int64_t m0,      \
                          int64_t n0, int64_t n1) {                                                          \
        gemm_rows(out, ldo, w, ws, K, x16, x, ldx, xs, m0, NT, n0, n1);                                     \
    }
GEMM_NT(1) GEMM_NT(2) GEMM_NT(3) GEMM_NT(4)
typedef void (*gemm_fn)(float *, int64_t, const int8_t *, const float *, int64_t, const int16_t *, const int8_t *,
                        int64_t, const float *, int64_t, int64_t, int64_t);
static const gemm_fn gemm_nt[GEMM_TOKENS] = {gemm_1, gemm_2, gemm_3, gemm_4};

/* rows per pass over one token group: their weights stay in L2 for the next group */
#define GEMM_CHUNK_ROWS 64

static void gemm_i8(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                    int64_t ldx, const float *xs, int64_t M, int64_t n0, int64_t n1) {
    const int64_t K16 = K / 16 * 16;
    int16_t *x16 = K16 ? aligned_alloc(32, (size_t)(M * K16 * 2 + 32) / 32 * 32) : NULL;
    if (K16 && !x16) {   /* no memory for the widened activations: one token at a time */
        for (int64_t m = 0; m < M; m++) {
            int32_t xsum = 0;
            gemv_i8(out + m * ldo, w, ws, K, x + m * ldx, xsum, xs[m], n0, n1);
        }
        return;
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K16; k += 16)
            _mm256_store_si256((__m256i *)(x16 + m * K16 + k),
                               _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + m * ldx + k))));
    const int64_t groups = (M + GEMM_TOKENS - 1) / GEMM_TOKENS;   /* as even as can be: 5 = 3 + 2 */
    for (int64_t c0 = n0; c0 < n1; c0 += GEMM_CHUNK_ROWS) {
        const int64_t c1 = c0 + GEMM_CHUNK_ROWS < n1 ? c0 + GEMM_CHUNK_ROWS : n1;
        for (int64_t g = 0, m0 = 0; g < groups; g++) {
            const int nt = (int)((M - m0) / (groups - g));
            gemm_nt[nt - 1](out, ldo, w, ws, K, x16, x, ldx, xs, m0, c0, c1);
            m0 += nt;
        }
    }
    free(x16);
}

const ryz_layer_kernels ryz_layer_avx2 = {.name = "avx2", .gemv_i8 = gemv_i8, .gemm_name = "avx2",
                                          .gemm_i8 = gemm_i8};
