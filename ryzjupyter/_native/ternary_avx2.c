/* ternary_avx2.c: AVX2 ternary kernels (same integers as the reference).
 *
 * I2: the 64-byte block is two ymm halves; (v >> 2i) & 3 gives 32 u8 codes that
 * vpmaddubsw multiplies with 32 int8 activations into 16 int16 pair sums
 * (|pair| <= 2*128*2 = 512, no saturation). The 8 products of one block are summed
 * in int16 (|sum| <= 8 * 512 = 4096) and flushed to int32 with vpmaddwd every
 * block, so int16 never overflows. Tiles of up to 2 rows x 2 tokens. */
#if !defined(__AVX2__)
#error "ternary_avx2.c must be compiled with -mavx2"
#endif
#include <immintrin.h>

#include "ternary.h"

#define TOK_BLOCK 64
#define ALWAYS_INLINE inline __attribute__((always_inline))

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static ALWAYS_INLINE void tile_i2(const ryz_ternary_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const __m256i mask3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    __m256i acc[2][2];
    const uint8_t *w[2];
    const int8_t *q[2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++) w[r] = j->w + (n + r) * j->rb;
#pragma GCC unroll 2
    for (int t = 0; t < NT; t++) q[t] = j->q + (m + t) * j->ldq;
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s16[2][2];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) s16[r][t] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i raw[2];
#pragma GCC unroll 2
            for (int r = 0; r < NR; r++)
                raw[r] = _mm256_loadu_si256((const __m256i *)(w[r] + b * RYZ_I2_BLOCK_BYTES + 32 * h));
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                __m256i wv[2];
#pragma GCC unroll 2
                for (int r = 0; r < NR; r++)
                    wv[r] = _mm256_and_si256(i ? _mm256_srli_epi16(raw[r], 2 * i) : raw[r], mask3);
#pragma GCC unroll 2
                for (int t = 0; t < NT; t++) {
                    __m256i a = _mm256_loadu_si256(
                        (const __m256i *)(q[t] + b * RYZ_I2_BLOCK + 64 * i + 32 * h));
#pragma GCC unroll 2
                    for (int r = 0; r < NR; r++)
                        s16[r][t] = _mm256_add_epi16(s16[r][t], _mm256_maddubs_epi16(wv[r], a));
                }
            }
        }
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++)
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(s16[r][t], ones));
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++)
            ryz_ternary_store(j, m + t, n + r, hsum_epi32(acc[r][t]) - j->qsum[m + t]);
}

static void tile_1x1(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2(j, n, m, 1, 1); }
static void tile_1x2(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2(j, n, m, 1, 2); }
static void tile_2x1(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2(j, n, m, 2, 1); }
static void tile_2x2(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2(j, n, m, 2, 2); }
typedef void (*tile_fn)(const ryz_ternary_job *, int64_t, int64_t);
static const tile_fn tiles[2][2] = {{tile_1x1, tile_1x2}, {tile_2x1, tile_2x2}};

static void gemm_i2(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < j->M; m0 += TOK_BLOCK) {
        int64_t m1 = m0 + TOK_BLOCK < j->M ? m0 + TOK_BLOCK : j->M;
        for (int64_t n = n0; n < n1; n += 2) {
            int nr = n1 - n < 2 ? (int)(n1 - n) : 2;
            for (int64_t m = m0; m < m1; m += 2) {
                int nt = m1 - m < 2 ? (int)(m1 - m) : 2;
                tiles[nr - 1][nt - 1](j, n, m);
            }
        }
    }
}

const ryz_ternary_kernels ryz_ternary_avx2 = {
    .name = "avx2",
    .tl_name = "scalar",
    .gemm_i2 = gemm_i2,
    .gemm_tl = ryz_gemm_tl_scalar,
};
