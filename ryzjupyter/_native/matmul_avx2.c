/* matmul_avx2.c: AVX2 int8 (sign-extend to int16 + vpmaddwd, exact) and FMA float32
 * products; tiles of up to 2 rows x 2 tokens, scalar K tail. */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "matmul_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>

#include "matmul.h"

#define TOK_BLOCK 64
#define ALWAYS_INLINE inline __attribute__((always_inline))

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static ALWAYS_INLINE void tile_i8(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const int64_t K = j->K, K16 = K / 16 * 16;
    __m256i acc[2][2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K16; k += 16) {
        __m256i wv[2], xv[2];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
            wv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(j->wq + (n + r) * K + k)));
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++)
            xv[t] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(j->xq + (m + t) * K + k)));
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++)
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(wv[r], xv[t]));
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) {
            int32_t s = hsum_epi32(acc[r][t]);
            for (int64_t k = K16; k < K; k++) s += (int32_t)j->wq[(n + r) * K + k] * j->xq[(m + t) * K + k];
            j->out[(m + t) * j->ldo + n + r] = ryz_i8_epilogue(s, j->xs[m + t], j->ws[n + r]);
        }
}

static ALWAYS_INLINE void tile_f32(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                   const int NT) {
    const int64_t K = j->K, K8 = K / 8 * 8;
    __m256 acc[2][2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 wv[2], xv[2];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++) wv[r] = _mm256_loadu_ps(j->w + (n + r) * K + k);
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps(j->x + (m + t) * K + k);
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv[t], acc[r][t]);
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) {
            float s = hsum_ps(acc[r][t]);
            for (int64_t k = K8; k < K; k++) s += j->w[(n + r) * K + k] * j->x[(m + t) * K + k];
            j->out[(m + t) * j->ldo + n + r] = s;
        }
}

typedef void (*tile_fn)(const ryz_matmul_job *, int64_t, int64_t);
#define TILE(KIND, NR, NT) static void KIND##_##NR##x##NT(const ryz_matmul_job *j, int64_t n, int64_t m) \
    { tile_##KIND(j, n, m, NR, NT); }
TILE(i8, 1, 1) TILE(i8, 1, 2) TILE(i8, 2, 1) TILE(i8, 2, 2)
TILE(f32, 1, 1) TILE(f32, 1, 2) TILE(f32, 2, 1) TILE(f32, 2, 2)
static const tile_fn tiles_i8[2][2] = {{i8_1x1, i8_1x2}, {i8_2x1, i8_2x2}};
static const tile_fn tiles_f32[2][2] = {{f32_1x1, f32_1x2}, {f32_2x1, f32_2x2}};

static void run_tiles(const tile_fn tiles[2][2], const ryz_matmul_job *j, int64_t n0, int64_t n1) {
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

static void i8(const ryz_matmul_job *j, int64_t n0, int64_t n1) { run_tiles(tiles_i8, j, n0, n1); }
static void f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) { run_tiles(tiles_f32, j, n0, n1); }

const ryz_matmul_kernels ryz_matmul_avx2 = {.name = "avx2", .i8 = i8, .f32 = f32};
