/* layer_avx512.c: AVX-512 VNNI int8 GEMV of the lm_head (see layer.h). vpdpbusd wants an
 * unsigned operand: w + 128 = w ^ 0x80, and 128 * sum_k x[k] is subtracted (int32 lanes wrap
 * modulo 2^32; the true sum fits int32, so the result is exact), as matmul_avx512.c does. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "layer_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>

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

/* gemm_i8 (the verify pass's head for several tokens): the AVX2 variant; this level has none of its own */
const ryz_layer_kernels ryz_layer_avx512 = {.name = "avx512vnni", .gemv_i8 = gemv_i8, .gemm_name = "avx2",
                                            .gemm_i8 = ryz_layer_gemm_i8_avx2};
