/* layer_avx512.c: AVX-512 VNNI int8 GEMV of the lm_head (see layer.h). vpdpbusd wants an
 * unsigned operand: w + 128 = w ^ 0x80, and 128 * sum_k x[k] is subtracted (int32 lanes wrap
 * modulo 2^32; the true sum fits int32, so the result is exact), as matmul_avx512.c does. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "layer_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>
#include <stdlib.h>

#include "layer.h"
#include "matmul.h"

/* One row at a time: the head is read as one purely sequential stream (4 rows per step, sharing
 * each x load, read 4 rows K bytes apart per step and streamed ~8 % slower in the whole decode
 * when the machine reads ~90 GB/s; on a Zen 5, as the decode GEMVs of ternary_avx512.c). Two
 * accumulators: one was a chain of dependent vpdpbusd (one per 64 bytes, each waiting for the
 * last), from L2 0.64x as fast as two, and it streamed 5-7 % less from DRAM at ~80 GB/s
 * (standalone loop over a 128256 x 2560 head). The int32 sums wrap alike in any
 * order, so the result is the same. No software prefetch: on Zen 4 the row loop streamed
 * 30-31 GB/s a core from DRAM without and 27-29 with NTA prefetches 8 KiB ahead (standalone
 * loop over a 128256 x 2560 head), as the I2 decode GEMV (ternary_avx512.c). */
static inline void row1(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x, int32_t xsum,
                        float xs, int64_t n) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *r = w + n * K;
    __m512i a = _mm512_setzero_si512(), a1 = a;
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
        RYZ_DPBUSD_M(a, _mm512_xor_si512(_mm512_loadu_si512(r + k), flip), x + k);
        RYZ_DPBUSD_M(a1, _mm512_xor_si512(_mm512_loadu_si512(r + k + 64), flip), x + k + 64);
    }
    a = _mm512_add_epi32(a, a1);
    for (; k + 64 <= K; k += 64) {
        RYZ_DPBUSD_M(a, _mm512_xor_si512(_mm512_loadu_si512(r + k), flip), x + k);
    }
    if (k < K) {  /* masked tail: masked-off lanes meet x = 0 */
        const __mmask64 mk = ((__mmask64)1 << (K - k)) - 1;
        a = _mm512_dpbusd_epi32(a, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r + k), flip),
                                _mm512_maskz_loadu_epi8(mk, x + k));
    }
    out[n] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a) - 128u * (uint32_t)xsum), xs, ws[n]);
}

static void gemv_i8(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x, int32_t xsum,
                    float xs, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) row1(out, w, ws, K, x, xsum, xs, n);
}

/* gemm_i8: the head for M tokens at once (the batched decode of several streams, the verify pass
 * of speculative decoding). The activations are the signed operand of vpdpbusd (read from L1 as
 * its memory operand); each 64-byte block of a weight row is flipped to unsigned once and
 * multiplied with up to GEMM_TOKENS tokens, one int32 accumulator each. Each token's sum is
 * corrected by 128 * sum_k x[k] as in row1, so every logit is bitwise gemv_i8's for that token.
 * The AVX2 variant (vpmaddwd on widened int16) needed 4 times the instructions.
 * Prefetch: with 8 tokens a 64-byte block takes ~17 instructions, too few blocks are in flight
 * for the hardware prefetcher to keep up with DRAM; a prefetch into L2 64 KiB (25 rows at
 * K = 2560) ahead took 8 tokens over the 2B-4T head (128256 x 2560, one thread, Zen 4) from
 * 49.7 to 27.3 ms, 4 tokens from 43.6 to 30.2 (median of 15, alternating builds in one
 * process, machine shared). Rows of 2 sharing each activation load ran the same with it and
 * slower without. A prefetch past the end of w is harmless (prefetches never fault).
 * Up to 16 tokens a pass (16 accumulators): with 8, the 9 positions of a verify of 8 drafted
 * tokens read the head twice (5 + 4), 1.56x a decode step's head time on an Intel Xeon. */
#define GEMM_TOKENS 16
#define GEMM_PREFETCH_BYTES 65536
#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE int32_t sum_i8(const int8_t *x, int64_t K) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i a = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) RYZ_DPBUSD_M(a, ones, x + k);
    if (k < K) {
        const __mmask64 mk = ((__mmask64)1 << (K - k)) - 1;
        a = _mm512_dpbusd_epi32(a, ones, _mm512_maskz_loadu_epi8(mk, x + k));
    }
    return _mm512_reduce_add_epi32(a);
}

/* logits of row n for tokens m0 .. m0+NT-1 */
static ALWAYS_INLINE void gemm_row(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K,
                                   const int8_t *x, int64_t ldx, const float *xs, const int32_t *xsum,
                                   int64_t m0, const int NT, int64_t n) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *r = w + n * K, *xm = x + m0 * ldx;
    __m512i acc[GEMM_TOKENS];
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(r + k + GEMM_PREFETCH_BYTES), _MM_HINT_T1);
        const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(r + k), flip);
#pragma GCC unroll 16
        for (int t = 0; t < NT; t++) RYZ_DPBUSD_M(acc[t], wv, xm + t * ldx + k);
    }
    if (k < K) {  /* masked tail: masked-off lanes meet x = 0 */
        const __mmask64 mk = ((__mmask64)1 << (K - k)) - 1;
        const __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r + k), flip);
#pragma GCC unroll 16
        for (int t = 0; t < NT; t++) acc[t] = _mm512_dpbusd_epi32(acc[t], wv, _mm512_maskz_loadu_epi8(mk, xm + t * ldx + k));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) {
        const uint32_t s = (uint32_t)_mm512_reduce_add_epi32(acc[t]) - 128u * (uint32_t)xsum[m0 + t];
        out[(m0 + t) * ldo + n] = ryz_i8_epilogue((int32_t)s, xs[m0 + t], ws[n]);
    }
}

#define GEMM_NT(NT)                                                                                          \
    static void gemm_##NT(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K,             \
                          const int8_t *x, int64_t ldx, const float *xs, const int32_t *xsum, int64_t m0,    \
                          int64_t c0, int64_t c1) {                                                         \
        for (int64_t n = c0; n < c1; n++) gemm_row(out, ldo, w, ws, K, x, ldx, xs, xsum, m0, NT, n);       \
    }
GEMM_NT(1) GEMM_NT(2) GEMM_NT(3) GEMM_NT(4) GEMM_NT(5) GEMM_NT(6) GEMM_NT(7) GEMM_NT(8)
GEMM_NT(9) GEMM_NT(10) GEMM_NT(11) GEMM_NT(12) GEMM_NT(13) GEMM_NT(14) GEMM_NT(15) GEMM_NT(16)
typedef void (*gemm_fn)(float *, int64_t, const int8_t *, const float *, int64_t, const int8_t *, int64_t,
                        const float *, const int32_t *, int64_t, int64_t, int64_t);
static const gemm_fn gemm_nt[GEMM_TOKENS] = {gemm_1, gemm_2,  gemm_3,  gemm_4,  gemm_5,  gemm_6,  gemm_7,  gemm_8,
                                             gemm_9, gemm_10, gemm_11, gemm_12, gemm_13, gemm_14, gemm_15, gemm_16};

/* rows per pass over one token group: their weights (64 x K bytes) stay in L2 for the next group */
#define GEMM_CHUNK_ROWS 64
/* the token sums of a call on the stack up to this many tokens, else on the heap */
#define GEMM_STACK_TOKENS 64

static void gemm_i8(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                    int64_t ldx, const float *xs, int64_t M, int64_t n0, int64_t n1) {
    if (M == 1) {  /* one token: the streaming decode loop, the same sums */
        gemv_i8(out, w, ws, K, x, sum_i8(x, K), xs[0], n0, n1);
        return;
    }
    int32_t stack_sums[GEMM_STACK_TOKENS];
    int32_t *xsum = M <= GEMM_STACK_TOKENS ? stack_sums : malloc((size_t)M * sizeof(int32_t));
    if (!xsum) {   /* no memory for the token sums: one token at a time */
        for (int64_t m = 0; m < M; m++) gemv_i8(out + m * ldo, w, ws, K, x + m * ldx, sum_i8(x + m * ldx, K), xs[m], n0, n1);
        return;
    }
    for (int64_t m = 0; m < M; m++) xsum[m] = sum_i8(x + m * ldx, K);
    const int64_t groups = (M + GEMM_TOKENS - 1) / GEMM_TOKENS;   /* as even as can be: 17 = 9 + 8 */
    for (int64_t c0 = n0; c0 < n1; c0 += GEMM_CHUNK_ROWS) {
        const int64_t c1 = c0 + GEMM_CHUNK_ROWS < n1 ? c0 + GEMM_CHUNK_ROWS : n1;
        for (int64_t g = 0, m0 = 0; g < groups; g++) {
            const int nt = (int)((M - m0) / (groups - g));
            gemm_nt[nt - 1](out, ldo, w, ws, K, x, ldx, xs, xsum, m0, c0, c1);
            m0 += nt;
        }
    }
    if (xsum != stack_sums) free(xsum);
}

const ryz_layer_kernels ryz_layer_avx512 = {.name = "avx512vnni", .gemv_i8 = gemv_i8, .gemm_name = "avx512vnni",
                                            .gemm_i8 = gemm_i8};
