/* ternary.h: BitNet b1.58 ternary x int8 kernels, three weight layouts.
 *
 * ---- I2: 2 bits per weight, laid out for vpdpbusd ---------------------------
 * A row of K trits t in {-1,0,+1} is stored as codes c = t + 1 in {0,1,2}
 * (code 3 never occurs), K padded with t = 0 (code 1) up to a multiple of
 * RYZ_I2_BLOCK = 256 weights. Each block is RYZ_I2_BLOCK_BYTES = 64 bytes:
 *
 *     byte j of block b (j = 0..63), bits 2i..2i+1 (i = 0..3)  =  c[256 b + 64 i + j]
 *
 * so one 64-byte load gives, after (v >> 2i) & 3, four vectors of 64 consecutive
 * u8 codes, each lining up with 64 consecutive int8 activations: exactly the
 * operands of vpdpbusd (u8 x s8, 4 products summed into each int32 lane).
 * AVX2 uses the two 32-byte halves the same way with vpmaddubsw + vpmaddwd.
 * Rows are interleaved block by block in tiles of RYZ_I2_TILE = 4 (the last tile has
 * h = N % 4 rows if that is not 0): block b of row n of a tile starting at row n0 with h
 * rows lives at  n0 * rb + (b h + n - n0) * 64  (ryz_i2_offset), so a kernel that
 * computes a tile's rows together reads one sequential stream and loads each block of
 * activations once for all of them. The packed array is still [N, rb] (2.0 bpw), but
 * packed row n is not row n's bytes: only slices of whole tiles (multiples of 4 rows)
 * are matrices of their own. Why: one row at a time loads 4 activation vectors per 64
 * bytes of weights, and on Zen 4 that L1 traffic halved the DRAM stream (11 vs 30 GB/s
 * a core in a standalone loop); 4 rows in 4 separate streams read 18 GB/s.
 *
 * Math: sum_k t[k] q[k] = sum_k c[k] q[k] - sum_k q[k]. Kernels compute the first
 * sum on the padded row (activations are zero-padded to Kp, so padding adds
 * nothing) and subtract the activation sum qsum[m] computed once per token.
 * |sum c q| <= 2 * 128 * Kp, so int32 never overflows for Kp <= RYZ_TERNARY_MAX_K.
 *
 * ---- TL: lookup tables over pairs of activations -----------------------------
 * A row is split into pairs (t[2g], t[2g+1]); each pair is one 4-bit index
 * idx = 3 (t[2g] + 1) + (t[2g+1] + 1) in 0..8, K padded with t = 0 to a multiple
 * of RYZ_TL_GROUP_K = 4 (index 4 means (0, 0)). Byte c of a row holds the index of
 * pair 2c in its low nibble and pair 2c+1 in its high nibble (rb = Kp/4 bytes a row,
 * 2.0 bpw). Rows are interleaved in tiles of RYZ_TL_ROWS = 64 (the last tile has
 * h = N % 64 rows if that is not 0): byte c of row n of a tile starting at row n0
 * with h rows lives at  n0 * rb + c * h + (n - n0),  so one 64-byte load gives byte c
 * of 64 rows, the lanes of a vpshufb lookup. The packed array is still [N, rb].
 * Per token the kernel builds, for every pair g, the table
 * T[g][idx] = a0 (idx/3 - 1) + a1 (idx%3 - 1) (int16, |T| <= 256), and a row's dot
 * product is sum_g T[g][idx_g]: one table lookup and one add per two weights.
 * Exact: integer sums only, same result as I2.
 *
 * ---- T5: 5 trits per byte (1.6 bits per weight), for decode from DRAM ----------
 * Codes c = t + 1 as in I2, K padded with t = 0 (code 1) to a multiple of
 * RYZ_T5_BLOCK = 320. Each block is 64 bytes; byte j of block b holds the five codes
 * c_i = c[320 b + 64 i + j] (i = 0..4) as a base-3 fraction:
 *
 *     v = sum_i c_i 3^(4-i)  (0..242),   byte = ceil(256 v / 243)  (ryz_t5_encode)
 *
 * so digit i is read back with integer ops only (ryz_t5_decode): x_0 = byte,
 * c_i = (3 x_i) >> 8, x_{i+1} = 3 x_i mod 256. One 64-byte load thus gives five
 * vectors of 64 u8 codes for vpdpbusd (320 weights) where I2 gives four (256): 20 %
 * fewer bytes per token. Only the 243 bytes ryz_t5_encode produces are valid.
 * Rows follow each other (packed is uint8 [N, t5_row_bytes(K)] = Kp / 5 bytes a row).
 * Same math as I2 (sum c q - qsum); it pays where decode streams the weights from DRAM
 * (docs/performance.md, "1.6-bit packing"); from cache the extra decode work costs.
 */
#ifndef RYZ_TERNARY_H
#define RYZ_TERNARY_H
#include "ryz.h"

#define RYZ_I2_BLOCK 256        /* weights per block */
#define RYZ_I2_BLOCK_BYTES 64   /* bytes per block: 4 weights a byte */
#define RYZ_I2_TILE 4           /* rows interleaved block by block */
#define RYZ_I2_SMALL_M 16       /* up to this many tokens: the few-token kernels (verify passes) */
_Static_assert(RYZ_I2_BLOCK == 4 * RYZ_I2_BLOCK_BYTES, "I2 block: 4 codes per byte");
_Static_assert(RYZ_I2_BLOCK_BYTES == 64, "I2 block must be one zmm register (vpdpbusd)");

#define RYZ_TL_GROUP_K 4        /* weights per byte (two 4-bit pair indices) */
#define RYZ_TL_ROWS 64          /* rows interleaved per tile: one zmm of bytes */
_Static_assert(RYZ_TL_GROUP_K == 4, "TL: a byte holds two pairs");
_Static_assert(RYZ_TL_ROWS == 64, "TL tile must be one zmm of row bytes");

#define RYZ_T5_BLOCK 320        /* weights per block */
#define RYZ_T5_BLOCK_BYTES 64   /* bytes per block: 5 weights a byte */
_Static_assert(RYZ_T5_BLOCK == 5 * RYZ_T5_BLOCK_BYTES, "T5 block: 5 codes per byte");

/* Kp <= this (+ padding) keeps every int32 partial sum exact (2 * 128 * Kp < 2^31). */
#define RYZ_TERNARY_MAX_K (1 << 22)

static inline int64_t ryz_i2_padded_k(int64_t K) {
    return (K + RYZ_I2_BLOCK - 1) / RYZ_I2_BLOCK * RYZ_I2_BLOCK;
}
static inline int64_t ryz_i2_row_bytes(int64_t K) { return ryz_i2_padded_k(K) / 4; }
static inline int64_t ryz_tl_padded_k(int64_t K) {
    return (K + RYZ_TL_GROUP_K - 1) / RYZ_TL_GROUP_K * RYZ_TL_GROUP_K;
}
static inline int64_t ryz_tl_row_bytes(int64_t K) { return ryz_tl_padded_k(K) / 4; }
static inline int64_t ryz_t5_padded_k(int64_t K) {
    return (K + RYZ_T5_BLOCK - 1) / RYZ_T5_BLOCK * RYZ_T5_BLOCK;
}
static inline int64_t ryz_t5_row_bytes(int64_t K) { return ryz_t5_padded_k(K) / 5; }
/* codes c[0..4] in {0,1,2} -> one T5 byte */
static inline uint8_t ryz_t5_encode(const unsigned c[5]) {
    unsigned v = (((c[0] * 3 + c[1]) * 3 + c[2]) * 3 + c[3]) * 3 + c[4];
    return (uint8_t)((256 * v + 242) / 243);
}
/* one T5 byte -> codes c[0..4]; returns 0 if the byte is not one ryz_t5_encode makes */
static inline int ryz_t5_decode(unsigned c[5], unsigned byte) {
    unsigned x = byte;
    for (int i = 0; i < 5; i++) {
        c[i] = (3 * x) >> 8;
        x = (3 * x) & 255;
    }
    return ryz_t5_encode(c) == byte;
}
/* rows in the I2 tile that starts at row n0 (a multiple of RYZ_I2_TILE) of an N-row matrix */
static inline int64_t ryz_i2_tile_rows(int64_t n0, int64_t N) {
    return N - n0 < RYZ_I2_TILE ? N - n0 : RYZ_I2_TILE;
}
/* byte offset of block b of row n in an I2-packed [N, rb] matrix */
static inline int64_t ryz_i2_offset(int64_t n, int64_t b, int64_t N, int64_t rb) {
    const int64_t n0 = n / RYZ_I2_TILE * RYZ_I2_TILE;
    return n0 * rb + (b * ryz_i2_tile_rows(n0, N) + n - n0) * RYZ_I2_BLOCK_BYTES;
}
/* byte offset of byte c of row n in a TL-packed [N, rb] matrix */
static inline int64_t ryz_tl_offset(int64_t n, int64_t c, int64_t N, int64_t rb) {
    int64_t n0 = n / RYZ_TL_ROWS * RYZ_TL_ROWS;
    int64_t h = N - n0 < RYZ_TL_ROWS ? N - n0 : RYZ_TL_ROWS;
    return n0 * rb + c * h + (n - n0);
}

/* One ternary GEMM: rows n in [n0, n1) of
 *     acc[m, n] = sum_k t[n, k] q[m, k]                   (m in [0, M))
 * written as int32 to out_i[m * ldo + n], or, when out_i is NULL, as
 *     out_f[m * ldo + n] = (float)acc / sx[m] * w_mult    (fp32, left to right).
 * q is [M, ldq] int8 zero-padded to the layout's Kp (ldq >= Kp, multiple of 64);
 * qsum[m] = sum_k q[m, k]. w is the packed weight (I2, TL or T5), rb bytes a row. */
typedef struct {
    int32_t *out_i;
    float *out_f;
    int64_t ldo;
    const uint8_t *w;
    int64_t rb;
    const int8_t *q;
    int64_t ldq;
    const int32_t *qsum;
    const float *sx;
    float w_mult;
    int64_t M, Kp;
    int64_t N;            /* rows of the whole matrix (TL tiles depend on it) */
} ryz_ternary_job;

static inline void ryz_ternary_store(const ryz_ternary_job *j, int64_t m, int64_t n, int32_t acc) {
    if (j->out_i)
        j->out_i[m * j->ldo + n] = acc;
    else
        j->out_f[m * j->ldo + n] = (float)acc / j->sx[m] * j->w_mult;
}

typedef struct {
    const char *name;
    const char *tl_name;
    const char *t5_name;
    void (*gemm_i2)(const ryz_ternary_job *j, int64_t n0, int64_t n1);
    void (*gemm_tl)(const ryz_ternary_job *j, int64_t n0, int64_t n1);
    void (*gemm_t5)(const ryz_ternary_job *j, int64_t n0, int64_t n1);
} ryz_ternary_kernels;

extern const ryz_ternary_kernels ryz_ternary_scalar;
extern const ryz_ternary_kernels ryz_ternary_avx2;
extern const ryz_ternary_kernels ryz_ternary_avx512;
extern const ryz_ternary_kernels *ryz_ternary;

/* reference kernels, shared by the ISA tables where they have no own variant */
void ryz_gemm_i2_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1);
void ryz_gemm_tl_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1);
void ryz_gemm_t5_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1);
/* TL table of one token: T[g * 16 + idx] for pairs g in [0, Kp/2), idx 0..15 (9..15 zero) */
void ryz_tl_build_table(int16_t *T, const int8_t *q, int64_t Kp);
/* TL rows [n0, n1) of token m with its table T (NULL: compute without a table) */
void ryz_tl_rows_scalar(const ryz_ternary_job *j, int64_t m, const int16_t *T, int64_t n0, int64_t n1);

/* layout conversions (scalar, exact); trits must hold only -1, 0, +1 */
void ryz_pack_t5(uint8_t *out, const int8_t *trits, int64_t K);   /* one row */
void ryz_unpack_t5(int8_t *trits, const uint8_t *in, int64_t K);  /* one row, valid bytes */
/* I2 and TL interleave rows: whole matrices [N, K] */
void ryz_pack_i2(uint8_t *out, const int8_t *trits, int64_t N, int64_t K);
void ryz_unpack_i2(int8_t *trits, const uint8_t *in, int64_t N, int64_t K);
void ryz_pack_tl(uint8_t *out, const int8_t *trits, int64_t N, int64_t K);
void ryz_unpack_tl(int8_t *trits, const uint8_t *in, int64_t N, int64_t K);

#endif
