/* layer_avx512.c: AVX-512 VNNI int8 GEMV of the lm_head (see layer.h). vpdpbusd wants an
 * unsigned operand: w + 128 = w ^ 0x80, and 128 * sum_k x[k] is subtracted (int32 lanes wrap
 * modulo 2^32; the true sum fits int32, so the result is exact), as matmul_avx512.c does. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "layer_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>

#include "layer.h"
#include "matmul.h"

/* software prefetch distance: the 4 rows of a tile are contiguous, so each step prefetches
 * the next 4 lines of the tile's bytes PF_BYTES ahead, in address order (one sequential
 * stream; per-row strided prefetches streamed slower, as in ternary_avx512.c); non-temporal,
 * as the decode GEMVs: the head is read once per token */
#define PF_BYTES 8192

static inline void rows4(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                         int32_t xsum, float xs, int64_t n) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *r0 = w + n * K, *r1 = r0 + K, *r2 = r1 + K, *r3 = r2 + K;
    const int8_t *pf = r0 + PF_BYTES; /* prefetching past the end is harmless: no fault */
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(pf + 4 * k), _MM_HINT_NTA);
        _mm_prefetch((const char *)(pf + 4 * k + 64), _MM_HINT_NTA);
        _mm_prefetch((const char *)(pf + 4 * k + 128), _MM_HINT_NTA);
        _mm_prefetch((const char *)(pf + 4 * k + 192), _MM_HINT_NTA);
        const __m512i xv = _mm512_loadu_si512(x + k);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(r0 + k), flip), xv);
        a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512(r1 + k), flip), xv);
        a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_loadu_si512(r2 + k), flip), xv);
        a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_loadu_si512(r3 + k), flip), xv);
    }
    if (k < K) {  /* masked tail: masked-off lanes meet x = 0 */
        const __mmask64 mk = ((__mmask64)1 << (K - k)) - 1;
        const __m512i xv = _mm512_maskz_loadu_epi8(mk, x + k);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r0 + k), flip), xv);
        a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r1 + k), flip), xv);
        a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r2 + k), flip), xv);
        a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r3 + k), flip), xv);
    }
    const uint32_t corr = 128u * (uint32_t)xsum;
    out[n] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a0) - corr), xs, ws[n]);
    out[n + 1] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a1) - corr), xs, ws[n + 1]);
    out[n + 2] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a2) - corr), xs, ws[n + 2]);
    out[n + 3] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a3) - corr), xs, ws[n + 3]);
}

static void gemv_i8(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x, int32_t xsum,
                    float xs, int64_t n0, int64_t n1) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) rows4(out, w, ws, K, x, xsum, xs, n);
    for (; n < n1; n++) {
        const int8_t *r = w + n * K;
        __m512i a = _mm512_setzero_si512();
        for (int64_t k = 0; k < K; k += 64) {
            const __mmask64 mk = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            a = _mm512_dpbusd_epi32(a, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, r + k), flip),
                                    _mm512_maskz_loadu_epi8(mk, x + k));
        }
        out[n] = ryz_i8_epilogue((int32_t)((uint32_t)_mm512_reduce_add_epi32(a) - 128u * (uint32_t)xsum), xs,
                                 ws[n]);
    }
}

const ryz_layer_kernels ryz_layer_avx512 = {.name = "avx512vnni", .gemv_i8 = gemv_i8};
