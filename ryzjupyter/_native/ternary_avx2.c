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
#include <stdlib.h>

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
    int64_t step[2];  /* bytes from one block of a row to its next (ternary.h: 64 x rows of its tile) */
    const int8_t *q[2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++) {
        w[r] = j->w + ryz_i2_offset(n + r, 0, j->N, j->rb);
        step[r] = ryz_i2_tile_rows((n + r) / RYZ_I2_TILE * RYZ_I2_TILE, j->N) * RYZ_I2_BLOCK_BYTES;
    }
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
                raw[r] = _mm256_loadu_si256((const __m256i *)(w[r] + b * step[r] + 32 * h));
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


/* ---- T5: five codes a byte (ternary.h), decoded as in ternary_avx512.c ------------
 * code = ((3 x) >> 8) per byte via vpmaddubsw with (3, 0) / (0, 3), x <- 3 x mod 256.
 * The 10 products of a block (5 codes x 2 halves) are summed in int16
 * (|sum| <= 10 * 512 = 5120) and flushed to int32 every block. */
static ALWAYS_INLINE __m256i t5_code(__m256i x) {
    __m256i ye = _mm256_srli_epi16(_mm256_maddubs_epi16(x, _mm256_set1_epi16(3)), 8);
    __m256i yo = _mm256_maddubs_epi16(x, _mm256_set1_epi16(3 << 8));
    return _mm256_or_si256(ye, _mm256_and_si256(yo, _mm256_set1_epi16((short)0xff00)));
}

static ALWAYS_INLINE void tile_t5(const ryz_ternary_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t nb = j->Kp / RYZ_T5_BLOCK;
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
            __m256i x[2];
#pragma GCC unroll 2
            for (int r = 0; r < NR; r++)
                x[r] = _mm256_loadu_si256((const __m256i *)(w[r] + b * RYZ_T5_BLOCK_BYTES + 32 * h));
#pragma GCC unroll 5
            for (int i = 0; i < 5; i++) {
                __m256i wv[2];
#pragma GCC unroll 2
                for (int r = 0; r < NR; r++) {
                    wv[r] = t5_code(x[r]);
                    if (i < 4) x[r] = _mm256_add_epi8(_mm256_add_epi8(x[r], x[r]), x[r]);
                }
#pragma GCC unroll 2
                for (int t = 0; t < NT; t++) {
                    __m256i a = _mm256_loadu_si256(
                        (const __m256i *)(q[t] + b * RYZ_T5_BLOCK + 64 * i + 32 * h));
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

static void tile5_1x1(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_t5(j, n, m, 1, 1); }
static void tile5_1x2(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_t5(j, n, m, 1, 2); }
static void tile5_2x1(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_t5(j, n, m, 2, 1); }
static void tile5_2x2(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_t5(j, n, m, 2, 2); }
static const tile_fn tiles5[2][2] = {{tile5_1x1, tile5_1x2}, {tile5_2x1, tile5_2x2}};

static void run_tiles(const tile_fn t[2][2], const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < j->M; m0 += TOK_BLOCK) {
        int64_t m1 = m0 + TOK_BLOCK < j->M ? m0 + TOK_BLOCK : j->M;
        for (int64_t n = n0; n < n1; n += 2) {
            int nr = n1 - n < 2 ? (int)(n1 - n) : 2;
            for (int64_t m = m0; m < m1; m += 2) {
                int nt = m1 - m < 2 ? (int)(m1 - m) : 2;
                t[nr - 1][nt - 1](j, n, m);
            }
        }
    }
}


/* ---- I2 for a few tokens (M = 2..RYZ_I2_SMALL_M: the verify pass of speculative decoding) ----
 * Decode (M = 1) streams each weight once per token; verifying k draft tokens must not cost k
 * decode steps. Here each 64-byte block of two rows is loaded and unpacked once ((v >> 2i) & 3)
 * and multiplied with up to 4 tokens' activations (the activation vector is vpmaddubsw's memory
 * operand, so a token costs one multiply and one add per 32 weights). The int16 sums of a
 * (row, token) grow by at most 8 * 512 = 4096 per block (|pair| <= 2 * 2 * 128), so they are
 * flushed to int32 (vpmaddwd with ones) every 8 blocks: |sum| <= 32768 never leaves int16
 * (-32768 is the most negative value a lane can reach). A tile's rows 2r, 2r + 1 are walked
 * in one pass per group of 4 tokens; the tile (4 rows x Kp / 4 bytes, 2.5 KB at K = 2560)
 * stays in L1 for the next pass. Same integers as the reference. */
#define SMALL_FLUSH_BLOCKS 8
/* acc += vpmaddubsw(w, the 32 bytes at p) (int16 lanes), as inline asm: with the intrinsics GCC
 * hoisted all multiplies of an unrolled block ahead of their adds and spilled the products */
#define MADD_ACC(acc, w, p)                                                                      \
    do {                                                                                         \
        __m256i tmp_;                                                                            \
        __asm__("vpmaddubsw %2, %3, %1\n\tvpaddw %1, %0, %0"                                    \
                : "+x"(acc), "=&x"(tmp_)                                                         \
                : "m"(*(const __m256i *)(const void *)(p)), "x"(w));                              \
    } while (0)

static ALWAYS_INLINE void small_i2(const ryz_ternary_job *j, int64_t n, int64_t m, const int NR, const int NT) {
    const __m256i mask3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    __m256i acc[2][4];
    const uint8_t *w[2];
    int64_t step[2];
    const int8_t *q[4];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++) {
        w[r] = j->w + ryz_i2_offset(n + r, 0, j->N, j->rb);
        step[r] = ryz_i2_tile_rows((n + r) / RYZ_I2_TILE * RYZ_I2_TILE, j->N) * RYZ_I2_BLOCK_BYTES;
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) q[t] = j->q + (m + t) * j->ldq;
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_si256();
    for (int64_t b0 = 0; b0 < nb; b0 += SMALL_FLUSH_BLOCKS) {
        const int64_t b1 = b0 + SMALL_FLUSH_BLOCKS < nb ? b0 + SMALL_FLUSH_BLOCKS : nb;
        __m256i s16[2][4];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) s16[r][t] = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) {
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256i raw[2];
#pragma GCC unroll 2
                for (int r = 0; r < NR; r++)
                    raw[r] = _mm256_loadu_si256((const __m256i *)(w[r] + b * step[r] + 32 * h));
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
#pragma GCC unroll 2
                    for (int r = 0; r < NR; r++) {
                        const __m256i wv = _mm256_and_si256(i ? _mm256_srli_epi16(raw[r], 2 * i) : raw[r], mask3);
#pragma GCC unroll 4
                        for (int t = 0; t < NT; t++)
                            MADD_ACC(s16[r][t], wv, q[t] + b * RYZ_I2_BLOCK + 64 * i + 32 * h);
                    }
                }
            }
        }
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(s16[r][t], ones));
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            ryz_ternary_store(j, m + t, n + r, hsum_epi32(acc[r][t]) - j->qsum[m + t]);
}

#define SMALL(NR, NT) \
    static void small_##NR##x##NT(const ryz_ternary_job *j, int64_t n, int64_t m) { small_i2(j, n, m, NR, NT); }
SMALL(1, 1) SMALL(1, 2) SMALL(1, 3) SMALL(1, 4) SMALL(2, 1) SMALL(2, 2) SMALL(2, 3) SMALL(2, 4)
static const tile_fn small_tiles[2][4] = {{small_1x1, small_1x2, small_1x3, small_1x4},
                                          {small_2x1, small_2x2, small_2x3, small_2x4}};

/* rows [n0, n1), all M tokens: in chunks of SMALL_CHUNK_ROWS rows (their weights stay in L2
 * while every group of up to 4 tokens walks them: the activations of one group stay in L1, of
 * all 16 tokens they would not), per tile of 4 rows (a sequential 256-byte run per block) its
 * row pairs */
#define SMALL_CHUNK_ROWS 64
static void gemm_i2_small(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    for (int64_t c0 = n0; c0 < n1; c0 += SMALL_CHUNK_ROWS) {
        const int64_t c1 = c0 + SMALL_CHUNK_ROWS < n1 ? c0 + SMALL_CHUNK_ROWS : n1;
        /* tokens in ceil(M / 4) groups as even as can be (5 = 3 + 2, not 4 + 1: a group of one
         * unpacks the weights for a single token) */
        const int64_t groups = (j->M + 3) / 4;
        for (int64_t gi = 0, m = 0; gi < groups; gi++) {
            const int nt = (int)((j->M - m) / (groups - gi));
            int64_t n = c0;
            while (n < c1) {
                const int64_t tile_end = (n / RYZ_I2_TILE + 1) * RYZ_I2_TILE, e = tile_end < c1 ? tile_end : c1;
                for (int64_t r = n; r < e; r += 2) {
                    const int nr = e - r < 2 ? (int)(e - r) : 2;
                    small_tiles[nr - 1][nt - 1](j, r, m);
                }
                n = e;
            }
            m += nt;
        }
    }
}

/* Both I2 loops are live, picked by M: the few-token kernels for the verify pass and batched
 * decode steps (M = 2..RYZ_I2_SMALL_M) and the 2x2 tiles for one token and for prefill
 * (M > RYZ_I2_SMALL_M); test_ternary.py's SHAPES hold M on both sides of the cut. */
static void gemm_i2(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    if (j->M >= 2 && j->M <= RYZ_I2_SMALL_M)
        gemm_i2_small(j, n0, n1);
    else
        run_tiles(tiles, j, n0, n1);
}
static void gemm_t5(const ryz_ternary_job *j, int64_t n0, int64_t n1) { run_tiles(tiles5, j, n0, n1); }

/* ---- TL: vpshufb lookups over 64 interleaved rows (two ymm halves) ---------------
 * Same scheme as ternary_avx512.c: 32-byte split tables per pair (low bytes of the 16
 * int16 entries, then high bytes), vpshufb on the nibbles of byte c of 32 rows at a
 * time, unpacklo/hi_epi8 back to int16, widened to int32 every 32 bytes (each byte
 * adds at most 2 * 256 to an int16 lane, 32 * 512 < 32768). */
static void tl_build_split(uint8_t *TB, const int8_t *q, int64_t Kp) {
    const __m256i A = _mm256_setr_epi16(-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0);
    const __m256i B = _mm256_setr_epi16(-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0);
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t g = 0; g < Kp / 2; g++) {
        __m256i t = _mm256_add_epi16(_mm256_mullo_epi16(_mm256_set1_epi16(q[2 * g]), A),
                                     _mm256_mullo_epi16(_mm256_set1_epi16(q[2 * g + 1]), B));
        t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), 0xd8);
        _mm256_storeu_si256((__m256i *)(TB + g * 32), t);
    }
}

static void tl_tile64(const ryz_ternary_job *j, int64_t m, const uint8_t *TB, int64_t n0t) {
    const int64_t rb = j->rb;
    const uint8_t *w = j->w + n0t * rb;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    int32_t acc[64] = {0};
    for (int64_t c0 = 0; c0 < rb; c0 += 32) {
        int64_t c1 = c0 + 32 < rb ? c0 + 32 : rb;
        __m256i s0[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        __m256i s1[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t c = c0; c < c1; c++) {
            const uint8_t *t0 = TB + (2 * c) * 32, *t1 = t0 + 32;
            const __m256i tl0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t0));
            const __m256i th0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t0 + 16)));
            const __m256i tl1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t1));
            const __m256i th1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t1 + 16)));
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + 64 * c + 32 * h));
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                __m256i bl0 = _mm256_shuffle_epi8(tl0, lo), bh0 = _mm256_shuffle_epi8(th0, lo);
                __m256i bl1 = _mm256_shuffle_epi8(tl1, hi), bh1 = _mm256_shuffle_epi8(th1, hi);
                s0[h] = _mm256_add_epi16(s0[h], _mm256_add_epi16(_mm256_unpacklo_epi8(bl0, bh0),
                                                                 _mm256_unpacklo_epi8(bl1, bh1)));
                s1[h] = _mm256_add_epi16(s1[h], _mm256_add_epi16(_mm256_unpackhi_epi8(bl0, bh0),
                                                                 _mm256_unpackhi_epi8(bl1, bh1)));
            }
        }
        /* int16 lane 8L + i of s0[h] is row 32h + 16L + i; of s1[h], row 32h + 16L + 8 + i */
        for (int h = 0; h < 2; h++) {
            int16_t a[16], b[16];
            _mm256_storeu_si256((__m256i *)a, s0[h]);
            _mm256_storeu_si256((__m256i *)b, s1[h]);
            for (int lane = 0; lane < 16; lane++) {
                int row = 32 * h + 16 * (lane / 8) + (lane % 8);
                acc[row] += a[lane];
                acc[row + 8] += b[lane];
            }
        }
    }
    for (int r = 0; r < 64; r++) ryz_ternary_store(j, m, n0t + r, acc[r]);
}

static void gemm_tl(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    uint8_t *TB = aligned_alloc(64, (size_t)((j->Kp / 2) * 32 + 64));
    if (!TB) {
        ryz_gemm_tl_scalar(j, n0, n1);
        return;
    }
    for (int64_t m = 0; m < j->M; m++) {
        tl_build_split(TB, j->q + m * j->ldq, j->Kp);
        int64_t n = n0;
        while (n < n1) {
            int64_t n0t = n / RYZ_TL_ROWS * RYZ_TL_ROWS;
            if (n == n0t && n + RYZ_TL_ROWS <= n1 && n + RYZ_TL_ROWS <= j->N) {
                tl_tile64(j, m, TB, n);
                n += RYZ_TL_ROWS;
            } else {
                int64_t e = n0t + RYZ_TL_ROWS < n1 ? n0t + RYZ_TL_ROWS : n1;
                ryz_tl_rows_scalar(j, m, NULL, n, e);
                n = e;
            }
        }
    }
    free(TB);
}

const ryz_ternary_kernels ryz_ternary_avx2 = {
    .name = "avx2",
    .tl_name = "avx2",
    .t5_name = "avx2",
    .gemm_i2 = gemm_i2,
    .gemm_tl = gemm_tl,
    .gemm_t5 = gemm_t5,
};
