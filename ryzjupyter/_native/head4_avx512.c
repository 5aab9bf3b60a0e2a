/* head4_avx512.c: AVX-512 VNNI GEMV of the 4-bit lm_head (layout and result: head4.h).
 * One 64-byte load = 16 rows x 4 columns twice (low and high nibbles); vpdpbusd of the u8
 * nibbles (q + 8) against 4 broadcast activation bytes puts row r's partial sum in lane r.
 * The accumulators of a group start at negc[g] = -8 sum x (removes the + 8), so the int32
 * lanes end as the exact isum[n, g]; then acc += float(isum) * d in lane order = row order. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "head4_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>

#include "head4.h"

/* software prefetch PF_BYTES ahead of the packed stream, in address order (one sequential
 * stream, as layer_avx512.c); the scales stream (32 bytes a group) gets the same lead in time */
#define PF_BYTES 8192

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

static inline void tile(float *o, int64_t nvalid, const uint8_t *pt, const uint16_t *st, int64_t ng,
                        int64_t G, const int8_t *xm, const int32_t *nc, float xs) {
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const int64_t spf = PF_BYTES * 4 / G; /* scales bytes per group / packed bytes per group */
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *pg = pt + g * 8 * G;
        const int8_t *xg = xm + g * G, *xh = xg + G / 2;
        _mm_prefetch((const char *)(st + g * RYZ_H4_ROWS) + spf, _MM_HINT_T0);
        __m512i s0 = _mm512_set1_epi32(nc[g]), s1 = _mm512_setzero_si512(), s2 = s1, s3 = s1;
        for (int64_t p = 0; p < G / 8; p += 2) {
            const uint8_t *b = pg + p * 64;
            _mm_prefetch((const char *)b + PF_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_BYTES + 64, _MM_HINT_T0);
            const __m512i v0 = _mm512_loadu_si512(b), v1 = _mm512_loadu_si512(b + 64);
            s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v0, lo4), bcast4(xg + 4 * p));
            s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v0, 4), lo4), bcast4(xh + 4 * p));
            s2 = _mm512_dpbusd_epi32(s2, _mm512_and_si512(v1, lo4), bcast4(xg + 4 * p + 4));
            s3 = _mm512_dpbusd_epi32(s3, _mm512_and_si512(_mm512_srli_epi16(v1, 4), lo4), bcast4(xh + 4 * p + 4));
        }
        const __m512i isum = _mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3));
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(st + g * RYZ_H4_ROWS)));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d));
    }
    const __m512 res = _mm512_div_ps(acc, _mm512_set1_ps(xs));
    if (nvalid >= RYZ_H4_ROWS)
        _mm512_storeu_ps(o, res);
    else
        _mm512_mask_storeu_ps(o, (__mmask16)((1u << nvalid) - 1), res);
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

const ryz_head4_kernels ryz_head4_avx512 = {.name = "avx512vnni", .gemv = gemv};
