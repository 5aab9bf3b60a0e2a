/* ternary_avx512.c: AVX-512 VNNI ternary kernels (same integers as the reference).
 *
 * I2: one 64-byte block of a row gives four zmm of u8 codes ((v >> 2i) & 3), each
 * multiplied with 64 int8 activations by vpdpbusd into int32 lanes. The GEMM is
 * register-blocked: a tile of up to 4 rows x 4 tokens keeps 16 accumulators in
 * registers, unpacks each weight vector once and uses it for every token of the
 * tile (decode has its own loop over a tile's rows: gemv_i2_rows). Tokens are walked in
 * blocks of TOK_BLOCK and rows in blocks of ROW_BLOCK_BYTES (run_tiles). A tile's rows are
 * stored block by block (ternary.h), so a tile reads one sequential stream. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "ternary_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>
#include <stdlib.h>

#include "ternary.h"

#define TOK_BLOCK 64
/* T5 prefill: tokens per transcoded row group; 128 halves the transcoding per token and was
 * 0-4 % faster than 64 at M = 128 / 512 (128 x 6912 activations still fit L2) */
#define T5_TOK_BLOCK 128
/* software prefetch distance; 8 KiB measured best among 2-32 KiB for decode (M = 1) */
#define PF_BYTES 8192
/* Decode (gemv_i2_rows): no software prefetch. On Zen 4 a 4-row tile streamed 30 GB/s a core
 * from DRAM without and 22-24 GB/s with NTA or T0 prefetches 8 KiB ahead (standalone loop;
 * the hardware prefetcher follows the single sequential stream). */
#ifndef DECODE_PF
#define DECODE_PF 0
#endif
/* T5 decode walks one row at a time (gemv_t5_row): T5 rows follow each other, so that is one
 * sequential stream (4 rows of a tile would be 4 streams 512-1408 bytes apart). */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Reduce the 16 accumulators of a full 4 x 4 tile at once (45 vector ops instead of 16
 * horizontal sums) into one zmm whose 128-bit lane t holds rows n..n+3 of token m+t, then
 * store each lane with the same epilogue as ryz_ternary_store (same fp32 operations). */
static ALWAYS_INLINE __m512i sum4_lanes(__m512i a, __m512i b, __m512i c, __m512i d) {
    __m512i x1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    __m512i x2 = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    /* per 128-bit lane: [sum a, sum b, sum c, sum d] of that lane */
    return _mm512_add_epi32(_mm512_unpacklo_epi64(x1, x2), _mm512_unpackhi_epi64(x1, x2));
}

static ALWAYS_INLINE __m512i fold_lanes(__m512i y0, __m512i y1) {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(y0, y1, 0x88), _mm512_shuffle_i32x4(y0, y1, 0xdd));
}

static ALWAYS_INLINE void store_4x4(const ryz_ternary_job *j, int64_t n, int64_t m, __m512i acc[4][4]) {
    __m512i y[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) y[t] = sum4_lanes(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
    __m512i w = fold_lanes(fold_lanes(y[0], y[1]), fold_lanes(y[2], y[3]));
    const int32_t *qs = j->qsum + m;
    w = _mm512_sub_epi32(w, _mm512_setr_epi32(qs[0], qs[0], qs[0], qs[0], qs[1], qs[1], qs[1], qs[1],
                                              qs[2], qs[2], qs[2], qs[2], qs[3], qs[3], qs[3], qs[3]));
    if (j->out_i) {
        _mm_storeu_si128((__m128i *)(j->out_i + (m + 0) * j->ldo + n), _mm512_extracti32x4_epi32(w, 0));
        _mm_storeu_si128((__m128i *)(j->out_i + (m + 1) * j->ldo + n), _mm512_extracti32x4_epi32(w, 1));
        _mm_storeu_si128((__m128i *)(j->out_i + (m + 2) * j->ldo + n), _mm512_extracti32x4_epi32(w, 2));
        _mm_storeu_si128((__m128i *)(j->out_i + (m + 3) * j->ldo + n), _mm512_extracti32x4_epi32(w, 3));
    } else {
        const float *sx = j->sx + m;
        __m512 f = _mm512_div_ps(_mm512_cvtepi32_ps(w),
                                 _mm512_setr_ps(sx[0], sx[0], sx[0], sx[0], sx[1], sx[1], sx[1], sx[1],
                                                sx[2], sx[2], sx[2], sx[2], sx[3], sx[3], sx[3], sx[3]));
        f = _mm512_mul_ps(f, _mm512_set1_ps(j->w_mult));
        _mm_storeu_ps(j->out_f + (m + 0) * j->ldo + n, _mm512_extractf32x4_ps(f, 0));
        _mm_storeu_ps(j->out_f + (m + 1) * j->ldo + n, _mm512_extractf32x4_ps(f, 1));
        _mm_storeu_ps(j->out_f + (m + 2) * j->ldo + n, _mm512_extractf32x4_ps(f, 2));
        _mm_storeu_ps(j->out_f + (m + 3) * j->ldo + n, _mm512_extractf32x4_ps(f, 3));
    }
}

/* Load block b of NR rows that lie in one I2 tile (ternary.h): row r's block b is at
 * w + b * step + 64 r (step = 64 x the tile's rows; a T5 row: NR = 1, step = 64). The tile's
 * blocks follow each other, so the rows are one sequential stream. `pf`: prefetch the lines
 * PF_BYTES ahead in address order, non-temporally when `once` (decode: every byte read once
 * per token; into L1, not kept in L2 / L3 when evicted), else T0 (prefill tiles read a row
 * block again for every token tile and need it in L2). */
static ALWAYS_INLINE void load_rows(__m512i raw[4], const uint8_t *w, int64_t step, int64_t b,
                                    const int NR, const int pf, const int once) {
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
        const uint8_t *p = w + b * step + 64 * r;
        if (pf && once)
            _mm_prefetch((const char *)(p + PF_BYTES), _MM_HINT_NTA);
        else if (pf)
            _mm_prefetch((const char *)(p + PF_BYTES), _MM_HINT_T0);
        raw[r] = _mm512_loadu_si512(p);
    }
}

/* acc[r][t] += code plane i of raw[r] . activations q[t] + off + 64 i, for the first ni planes
 * (4 unless the last group of a T5-transcoded row is partial): each unpacked weight vector is
 * used by NT vpdpbusd, each activation vector by NR. */
static ALWAYS_INLINE void mac_planes(__m512i acc[4][4], const __m512i raw[4], const int8_t *const q[4],
                                     int64_t off, int ni, const int NR, const int NT) {
    const __m512i mask3 = _mm512_set1_epi8(3);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        if (i >= ni) break;
        __m512i wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            wv[r] = _mm512_and_si512(i ? _mm512_srli_epi16(raw[r], 2 * i) : raw[r], mask3);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            __m512i a = _mm512_loadu_si512(q[t] + off + 64 * i);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], a);
        }
    }
}

/* the tile's outputs: store_4x4 for a full tile, else one reduction each */
static ALWAYS_INLINE void store_tile(const ryz_ternary_job *j, int64_t n, int64_t m, __m512i acc[4][4],
                                     const int NR, const int NT) {
    if (NR == 4 && NT == 4) {
        store_4x4(j, n, m, acc);
        return;
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            ryz_ternary_store(j, m + t, n + r, _mm512_reduce_add_epi32(acc[r][t]) - j->qsum[m + t]);
}

static ALWAYS_INLINE void tile_i2(const ryz_ternary_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    __m512i acc[4][4];
    const uint8_t *w = j->w + n * j->rb;  /* n starts a tile (gemm_i2) */
    const int64_t step = ryz_i2_tile_rows(n, j->N) * RYZ_I2_BLOCK_BYTES;
    const int8_t *q[4];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) q[t] = j->q + (m + t) * j->ldq;
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b++) {
        __m512i raw[4];
        load_rows(raw, w, step, b, NR, 1, 0);
        mac_planes(acc, raw, q, b * RYZ_I2_BLOCK, 4, NR, NT);
    }
    store_tile(j, n, m, acc, NR, NT);
}

/* Decode (M = 1), rows n .. n+NR-1 of one tile: the sums of tile_i2 with NT = 1, with fewer
 * ops. Code plane i of a byte is masked in place, (raw & 3 << 2i) = 4^i c_i, so no shifts: one
 * accumulator per row and plane, and plane i's sum is acc[r][i] >> 2i, exact (every product
 * is a multiple of 4^i; |sum| <= Kp / 256 * 4 * 192 * 128 < 1.7e9 for Kp <= RYZ_TERNARY_MAX_K).
 * The same int32 result as tile_i2. Each vector of activations is loaded once for the tile's
 * 4 rows: one row at a time loaded 4 of them per 64 bytes of weights, and on Zen 4 that L1
 * traffic held the DRAM stream to 11 GB/s a core against 30 for a 4-row tile (standalone
 * loop). vpdpbusd goes through RYZ_DPBUSD: with the intrinsic GCC 12 copied the
 * accumulators between registers (and the stack) every block (1.5x slower from L1/L2).
 * Software prefetch: DECODE_PF below. */
static ALWAYS_INLINE void gemv_i2_rows(const ryz_ternary_job *j, int64_t n, const int NR) {
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    const int64_t step = ryz_i2_tile_rows(n, j->N) * RYZ_I2_BLOCK_BYTES;
    const uint8_t *w = j->w + n * j->rb;
    const int8_t *q = j->q;
    const __m512i mask[4] = {_mm512_set1_epi8(3), _mm512_set1_epi8(12), _mm512_set1_epi8(48),
                             _mm512_set1_epi8((char)192)};
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) acc[r][i] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b++) {
        __m512i raw[4];
        load_rows(raw, w, step, b, NR, DECODE_PF, 1);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m512i a = _mm512_loadu_si512(q + b * RYZ_I2_BLOCK + 64 * i);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) RYZ_DPBUSD(acc[r][i], _mm512_and_si512(raw[r], mask[i]), a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) {
        const __m512i s = _mm512_add_epi32(_mm512_add_epi32(acc[r][0], _mm512_srai_epi32(acc[r][1], 2)),
                                           _mm512_add_epi32(_mm512_srai_epi32(acc[r][2], 4),
                                                            _mm512_srai_epi32(acc[r][3], 6)));
        ryz_ternary_store(j, 0, n + r, _mm512_reduce_add_epi32(s) - j->qsum[0]);
    }
}
static void gemv_i2_1(const ryz_ternary_job *j, int64_t n) { gemv_i2_rows(j, n, 1); }
static void gemv_i2_2(const ryz_ternary_job *j, int64_t n) { gemv_i2_rows(j, n, 2); }
static void gemv_i2_3(const ryz_ternary_job *j, int64_t n) { gemv_i2_rows(j, n, 3); }
static void gemv_i2_4(const ryz_ternary_job *j, int64_t n) { gemv_i2_rows(j, n, 4); }
static void (*const gemv_i2[4])(const ryz_ternary_job *, int64_t) = {gemv_i2_1, gemv_i2_2, gemv_i2_3, gemv_i2_4};

#define TILE(NR, NT) static void tile_##NR##x##NT(const ryz_ternary_job *j, int64_t n, int64_t m) \
    { tile_i2(j, n, m, NR, NT); }
#define TILES(NR) TILE(NR, 1) TILE(NR, 2) TILE(NR, 3) TILE(NR, 4)
TILES(1) TILES(2) TILES(3) TILES(4)
typedef void (*tile_fn)(const ryz_ternary_job *, int64_t, int64_t);
static const tile_fn tiles[4][4] = {
    {tile_1x1, tile_1x2, tile_1x3, tile_1x4}, {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
    {tile_3x1, tile_3x2, tile_3x3, tile_3x4}, {tile_4x1, tile_4x2, tile_4x3, tile_4x4}};


/* Five tokens: a tile of up to 4 rows x 5 tokens (20 accumulators). Token tiles are 4 wide, so
 * 5 tokens (the verify pass of 4 drafted tokens: 5 positions; 9 = 4 + 5 for 8) ran a 4 x 4 and a
 * 4 x 1 tile: the rows read and unpacked twice, the second time for one token. One 4 x 5 pass:
 * Intel Xeon (Ice Lake, 2.8 GHz), 2B-4T linears, 4 layers from DRAM, 2 threads: 5 tokens 8.6 ->
 * 7.2 ms, 9 tokens 15.3 -> 13.0 ms (median of 7, builds alternated in one process). Wider tiles
 * (2 rows x 5..8 tokens) measured slower than 4 x 4 tiles there: 8 tokens 10.4 -> 14.1 ms. */
static ALWAYS_INLINE void tile_i2_5(const ryz_ternary_job *j, int64_t n, int64_t m, const int NR) {
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    __m512i acc[4][5];
    const uint8_t *w = j->w + n * j->rb;  /* n starts a tile */
    const int64_t step = ryz_i2_tile_rows(n, j->N) * RYZ_I2_BLOCK_BYTES;
    const __m512i mask3 = _mm512_set1_epi8(3);
    const int8_t *q[5];
#pragma GCC unroll 5
    for (int t = 0; t < 5; t++) q[t] = j->q + (m + t) * j->ldq;
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 5
        for (int t = 0; t < 5; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t b = 0; b < nb; b++) {
        __m512i raw[4];
        load_rows(raw, w, step, b, NR, 1, 0);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m512i wv[4];
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) wv[r] = _mm512_and_si512(i ? _mm512_srli_epi16(raw[r], 2 * i) : raw[r], mask3);
#pragma GCC unroll 5
            for (int t = 0; t < 5; t++) {
                const __m512i a = _mm512_loadu_si512(q[t] + b * RYZ_I2_BLOCK + 64 * i);
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], a);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 5
        for (int t = 0; t < 5; t++)
            ryz_ternary_store(j, m + t, n + r, _mm512_reduce_add_epi32(acc[r][t]) - j->qsum[m + t]);
}
static void tile5_1(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2_5(j, n, m, 1); }
static void tile5_2(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2_5(j, n, m, 2); }
static void tile5_3(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2_5(j, n, m, 3); }
static void tile5_4(const ryz_ternary_job *j, int64_t n, int64_t m) { tile_i2_5(j, n, m, 4); }

/* ---- T5: five codes a byte, decoded with integer ops -----------------------------
 * x_0 = the byte; code i = (3 x_i) >> 8, x_{i+1} = 3 x_i mod 256 (ternary.h). vpmaddubsw
 * with (3, 0) / (0, 3) pairs gives 3 x of the even / odd bytes as int16 (<= 765): the
 * code is the high byte of each, shifted down (even) or kept in place (odd) and merged
 * by one vpternlogd; 3 x mod 256 is x + x + x in u8 (wrapping). Decode (M = 1) uses no
 * codes (gemv_t5_row below); prefill transcodes rows to 2-bit codes with t5_code
 * (gemm_t5). */
static ALWAYS_INLINE __m512i t5_code(__m512i x) {
    const __m512i e3 = _mm512_set1_epi16(3), o3 = _mm512_set1_epi16(3 << 8);
    __m512i ye = _mm512_srli_epi16(_mm512_maddubs_epi16(x, e3), 8);
    __m512i yo = _mm512_maddubs_epi16(x, o3);
    return _mm512_ternarylogic_epi32(ye, yo, _mm512_set1_epi16((short)0xff00), 0xf8); /* a | (b & c) */
}

/* Decode (M = 1) needs no codes at all: 3 x_i = 256 c_i + x_{i+1} byte by byte, so
 *     sum_j c_i[j] a[j] = (3 sum_j x_i[j] a[j] - sum_j x_{i+1}[j] a[j]) / 256,
 * exactly, in every int32 lane of vpdpbusd (its 4 bytes obey the identity one by one). The
 * states x_i are u8 and the activations s8: two vpdpbusd per code vector (into P and N)
 * plus x + x + x, 20 ops per 64 bytes instead of 35 (measured 1.4x faster from L2).
 * |3 P - N| grows by <= 4 * 5 * 4 * 255 * 128 per block and lane, so P and N are folded
 * into the accumulator ((3 P - N) >> 8, exact) every T5_FOLD blocks, far below 2^31. */
#define T5_FOLD 512
static ALWAYS_INLINE void gemv_t5_row(const ryz_ternary_job *j, int64_t n) {
    const int64_t nb = j->Kp / RYZ_T5_BLOCK;
    const int8_t *q = j->q;
    const uint8_t *w = j->w + n * j->rb;
    __m512i acc = _mm512_setzero_si512();
    for (int64_t c0 = 0; c0 < nb; c0 += T5_FOLD) {
        const int64_t c1 = c0 + T5_FOLD < nb ? c0 + T5_FOLD : nb;
        __m512i P = _mm512_setzero_si512(), N = P;
        for (int64_t b = c0; b < c1; b++) {
            __m512i x[4];
            load_rows(x, w, RYZ_T5_BLOCK_BYTES, b, 1, 1, 1);
#pragma GCC unroll 5
            for (int i = 0; i < 5; i++) {  /* in place (RYZ_DPBUSD): 1.1x from L2 */
                const __m512i a = _mm512_loadu_si512(q + b * RYZ_T5_BLOCK + 64 * i);
                RYZ_DPBUSD(P, x[0], a);
                x[0] = _mm512_add_epi8(_mm512_add_epi8(x[0], x[0]), x[0]);
                RYZ_DPBUSD(N, x[0], a);
            }
        }
        const __m512i t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_add_epi32(P, P), P), N);
        acc = _mm512_add_epi32(acc, _mm512_srai_epi32(t, 8));
    }
    ryz_ternary_store(j, 0, n, _mm512_reduce_add_epi32(acc) - j->qsum[0]);
}

/* The tile walk of a thread's rows [n0, n1): blocks of ROW_BLOCK_BYTES of weight rows, and in
 * each block every 4-token tile of a TOK_BLOCK passes over all its rows. A tile's activations
 * (4 tokens x K int8: 10 KiB at K = 2560, 27 KiB at 6912) then stay in L1 while weight rows,
 * which feed 4x more vpdpbusd per byte (2-bit codes), come from L2; walking all tiles of one
 * 4-row group instead streams 4 x 64 bytes of activations from L2 per 64 vpdpbusd. 64 KiB:
 * 1.05-1.07x the GEMM GOPS of the 4-row-group walk for the 2B-4T linears at M = 64, 2 threads
 * (32 KiB 1.06x, 128 KiB 1.05x, 256 KiB 0.97x on a Zen 5; the commit that set it says how). */
#define ROW_BLOCK_BYTES 65536
static const tile_fn tiles5[4] = {tile5_1, tile5_2, tile5_3, tile5_4};
static void run_tiles(const tile_fn t[4][4], const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    int64_t rows = j->rb > 0 ? ROW_BLOCK_BYTES / j->rb / 4 * 4 : n1 - n0; /* rb = 0: K = 0 */
    if (rows < 4) rows = 4;
    for (int64_t m0 = 0; m0 < j->M; m0 += TOK_BLOCK) {
        int64_t m1 = m0 + TOK_BLOCK < j->M ? m0 + TOK_BLOCK : j->M;
        for (int64_t nb = n0; nb < n1; nb += rows) {
            int64_t ne = nb + rows < n1 ? nb + rows : n1;
            for (int64_t m = m0; m < m1;) {
                const int nt = m1 - m == 5 ? 5 : m1 - m < 4 ? (int)(m1 - m) : 4;  /* 4 + 1 -> one 5 */
                for (int64_t n = nb; n < ne; n += 4) {
                    int nr = ne - n < 4 ? (int)(ne - n) : 4;
                    if (nt == 5)
                        tiles5[nr - 1](j, n, m);
                    else
                        t[nr - 1][nt - 1](j, n, m);
                }
                m += nt;
            }
        }
    }
}

static void gemm_i2(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    /* rows before the first whole tile (never with the engine's 16-row grains): the reference */
    const int64_t a = (n0 + RYZ_I2_TILE - 1) / RYZ_I2_TILE * RYZ_I2_TILE;
    if (n0 < a) {
        ryz_gemm_i2_scalar(j, n0, a < n1 ? a : n1);
        n0 = a;
    }
    if (n0 >= n1) return;
    if (j->M == 1) { /* decode: a tile's rows at a time */
        for (int64_t n = n0; n < n1; n += RYZ_I2_TILE)
            gemv_i2[(n1 - n < RYZ_I2_TILE ? n1 - n : RYZ_I2_TILE) - 1](j, n);
        return;
    }
    run_tiles(tiles, j, n0, n1);
}

/* Prefill (M > 1): decoding in registers costs 16 ops per 64 bytes and row, repeated for
 * every 4-token tile (~40 % slower than I2). Instead 4 rows are transcoded once per block of
 * T5_TOK_BLOCK tokens into 2-bit codes (the I2 packing of the same vectors: byte j of group g,
 * bits 2i = code vector 4 g + i) and the tiles run the I2 inner loop on that buffer
 * (4 x Kp / 4 bytes, L1). A u8 code buffer instead was slower for K = 6912: with the
 * activations of 4 tokens it no longer fits L1. */
static void t5_transcode_rows(uint8_t *C, uint8_t *tmp, const ryz_ternary_job *j, int64_t n, int nr) {
    const int64_t nb = j->Kp / RYZ_T5_BLOCK, nv = j->Kp / 64, ng = (nv + 3) / 4;
    for (int r = 0; r < nr; r++) {
        const uint8_t *w = j->w + (n + r) * j->rb;
        for (int64_t b = 0; b < nb; b++) { /* codes of the row, u8, vector v at tmp + 64 v */
            __m512i x = _mm512_loadu_si512(w + b * RYZ_T5_BLOCK_BYTES);
#pragma GCC unroll 5
            for (int i = 0; i < 5; i++) {
                _mm512_store_si512(tmp + b * RYZ_T5_BLOCK + 64 * i, t5_code(x));
                x = _mm512_add_epi8(_mm512_add_epi8(x, x), x);
            }
        }
        for (int64_t v = nv; v < 4 * ng; v++) _mm512_store_si512(tmp + 64 * v, _mm512_setzero_si512());
        uint8_t *c = C + r * ng * 64;
        for (int64_t g = 0; g < ng; g++) { /* codes <= 2: the byte shifts never carry over */
            const uint8_t *t = tmp + 256 * g;
            __m512i v = _mm512_or_si512(
                _mm512_or_si512(_mm512_load_si512(t), _mm512_slli_epi16(_mm512_load_si512(t + 64), 2)),
                _mm512_or_si512(_mm512_slli_epi16(_mm512_load_si512(t + 128), 4),
                                _mm512_slli_epi16(_mm512_load_si512(t + 192), 6)));
            _mm512_store_si512(c + 64 * g, v);
        }
    }
}

static ALWAYS_INLINE void tile_codes(const ryz_ternary_job *j, const uint8_t *C, int64_t n, int64_t m,
                                     const int NR, const int NT) {
    const int64_t nv = j->Kp / 64, ng = (nv + 3) / 4, full = nv / 4;
    __m512i acc[4][4];
    const int8_t *q[4];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) q[t] = j->q + (m + t) * j->ldq;
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t g = 0; g < ng; g++) {
        __m512i raw[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) raw[r] = _mm512_load_si512(C + (r * ng + g) * 64);
        /* the last group may be partial */
        mac_planes(acc, raw, q, g * 256, g < full ? 4 : (int)(nv - 4 * full), NR, NT);
    }
    store_tile(j, n, m, acc, NR, NT);
}

typedef void (*ctile_fn)(const ryz_ternary_job *, const uint8_t *, int64_t, int64_t);
#define CTILE(NR, NT) static void ctile_##NR##x##NT(const ryz_ternary_job *j, const uint8_t *C, int64_t n, \
                                                   int64_t m) { tile_codes(j, C, n, m, NR, NT); }
#define CTILES(NR) CTILE(NR, 1) CTILE(NR, 2) CTILE(NR, 3) CTILE(NR, 4)
CTILES(1) CTILES(2) CTILES(3) CTILES(4)
static const ctile_fn ctiles[4][4] = {
    {ctile_1x1, ctile_1x2, ctile_1x3, ctile_1x4}, {ctile_2x1, ctile_2x2, ctile_2x3, ctile_2x4},
    {ctile_3x1, ctile_3x2, ctile_3x3, ctile_3x4}, {ctile_4x1, ctile_4x2, ctile_4x3, ctile_4x4}};

static void gemm_t5(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    const int64_t ng = (j->Kp / 64 + 3) / 4;
    /* 2-bit buffer of 4 rows, then the u8 codes of one row (256 ng bytes) */
    if (j->M == 1) {
        for (int64_t n = n0; n < n1; n++) gemv_t5_row(j, n);
        return;
    }
    uint8_t *C = aligned_alloc(64, (size_t)(4 * ng * 64 + 256 * ng + 64));
    if (!C) { /* no memory for the buffer: the reference */
        ryz_gemm_t5_scalar(j, n0, n1);
        return;
    }
    for (int64_t m0 = 0; m0 < j->M; m0 += T5_TOK_BLOCK) {
        int64_t m1 = m0 + T5_TOK_BLOCK < j->M ? m0 + T5_TOK_BLOCK : j->M;
        for (int64_t n = n0; n < n1; n += 4) {
            int nr = n1 - n < 4 ? (int)(n1 - n) : 4;
            t5_transcode_rows(C, C + 4 * ng * 64, j, n, nr);
            for (int64_t m = m0; m < m1; m += 4) {
                int nt = m1 - m < 4 ? (int)(m1 - m) : 4;
                ctiles[nr - 1][nt - 1](j, C, n, m);
            }
        }
    }
    free(C);
}

/* ---- TL: vpshufb lookups over 64 interleaved rows ------------------------------
 * Per token, every pair g gets a 32-byte table: the low bytes of its 16 int16 entries,
 * then the high bytes. Byte c of the tile's 64 rows is one zmm; its low / high nibbles
 * index the tables of pairs 2c / 2c+1 (vpshufb on the broadcast table), and the low and
 * high result bytes are interleaved back into int16 (unpacklo/hi_epi8). Each c adds at
 * most 2 * 256 to an int16 lane, so the int16 sums are widened to int32 every 32 bytes. */
static void tl_build_split(uint8_t *TB, const int8_t *q, int64_t Kp) {
    const __m256i A = _mm256_setr_epi16(-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0);
    const __m256i B = _mm256_setr_epi16(-1, 0, 1, -1, 0, 1, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0);
    /* gather the low bytes of the 8 int16 of each 128-bit lane, then the high bytes */
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int64_t g = 0; g < Kp / 2; g++) {
        __m256i t = _mm256_add_epi16(_mm256_mullo_epi16(_mm256_set1_epi16(q[2 * g]), A),
                                     _mm256_mullo_epi16(_mm256_set1_epi16(q[2 * g + 1]), B));
        t = _mm256_shuffle_epi8(t, split);              /* [lo0-7 hi0-7 | lo8-15 hi8-15] */
        t = _mm256_permute4x64_epi64(t, 0xd8);          /* [lo0-7 lo8-15 | hi0-7 hi8-15] */
        _mm256_storeu_si256((__m256i *)(TB + g * 32), t);
    }
}

static void tl_tile64(const ryz_ternary_job *j, int64_t m, const uint8_t *TB, int64_t n0t) {
    const int64_t rb = j->rb;
    const uint8_t *w = j->w + n0t * rb; /* byte c of the 64 rows at w + 64 c */
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i a32[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    for (int64_t c0 = 0; c0 < rb; c0 += 32) {
        int64_t c1 = c0 + 32 < rb ? c0 + 32 : rb;
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        for (int64_t c = c0; c < c1; c++) {
            __m512i v = _mm512_loadu_si512(w + 64 * c);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            const uint8_t *t0 = TB + (2 * c) * 32, *t1 = t0 + 32;
            __m512i bl0 = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t0)), lo);
            __m512i bh0 = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t0 + 16))), lo);
            __m512i bl1 = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t1)), hi);
            __m512i bh1 = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t1 + 16))), hi);
            s0 = _mm512_add_epi16(s0, _mm512_add_epi16(_mm512_unpacklo_epi8(bl0, bh0), _mm512_unpacklo_epi8(bl1, bh1)));
            s1 = _mm512_add_epi16(s1, _mm512_add_epi16(_mm512_unpackhi_epi8(bl0, bh0), _mm512_unpackhi_epi8(bl1, bh1)));
        }
        a32[0] = _mm512_add_epi32(a32[0], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s0)));
        a32[1] = _mm512_add_epi32(a32[1], _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s0, 1)));
        a32[2] = _mm512_add_epi32(a32[2], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(s1)));
        a32[3] = _mm512_add_epi32(a32[3], _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(s1, 1)));
    }
    int32_t acc[4][16];
    for (int i = 0; i < 4; i++) _mm512_storeu_si512(acc[i], a32[i]);
    /* s0 int16 lane 8L + i holds row 16L + i, s1 lane 8L + i holds row 16L + 8 + i;
     * a32[0] / a32[1] are s0 lanes 0-15 / 16-31, a32[2] / a32[3] the same for s1 */
    for (int v = 0; v < 4; v++)
        for (int e = 0; e < 16; e++) {
            int lane = (v & 1) * 16 + e; /* int16 lane in s0 or s1 */
            int row = 16 * (lane / 8) + (lane % 8) + (v >= 2 ? 8 : 0);
            ryz_ternary_store(j, m, n0t + row, acc[v][e]);
        }
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
            } else { /* partial tile: the reference, row by row (it builds no table) */
                int64_t e = n0t + RYZ_TL_ROWS < n1 ? n0t + RYZ_TL_ROWS : n1;
                ryz_tl_rows_scalar(j, m, NULL, n, e);
                n = e;
            }
        }
    }
    free(TB);
}

const ryz_ternary_kernels ryz_ternary_avx512 = {
    .name = "avx512vnni",
    .tl_name = "avx512vnni",
    .t5_name = "avx512vnni",
    .gemm_i2 = gemm_i2,
    .gemm_tl = gemm_tl,
    .gemm_t5 = gemm_t5,
};
