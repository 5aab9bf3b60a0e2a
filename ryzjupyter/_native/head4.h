/* head4.h: the 4-bit lm_head ("int4", lossy): symmetric int4 weights in groups of G along K
 * with one float16 scale per (row, group), and its GEMV for int8-quantized activations.
 *
 * ---- quantization (head4_quantize, plain C, load time) -----------------------------------
 * For row n of the float head w [V, K] and group g (columns gG .. gG+G-1, cut at K):
 *     amax = max |w[n, k]|                          (over the group's real columns)
 *     d    = f16(amax / 7)                          (f32 division, then round to nearest
 *                                                    even float16, exactly numpy's float16)
 *     inv  = d > 0 ? 1 / float(d) : 0               (f32)
 *     q[k] = clamp(rint(w[n, k] * inv), -7, 7)      (f32 multiply, round half to even)
 * A NaN or inf anywhere in w is refused; amax / 7 that rounds to f16 inf (amax >= ~458k)
 * is refused too. Deterministic: the same bits on every machine and thread count.
 *
 * ---- layout (designed for vpdpbusd) ----------------------------------------------------
 * Rows are padded to Vp = 16 T (T tiles of RYZ_H4_ROWS = 16 rows), K to Kp = G ng; padding
 * has q = 0 and d = 0. A stored nibble is u = q + 8 in 1..15 (8 for padding).
 *     packed  uint8  [T, ng, 8 G]   tile t, group g: G/8 blocks of 64 bytes
 *     scales  uint16 [T, ng, 16]    float16 bits of d for rows 16 t + r, r = 0..15
 * Block p (p = 0 .. G/8-1) of (t, g), byte 4 r + i (r = 0..15, i = 0..3):
 *     low nibble  = u[16 t + r][g G + 4 p + i]
 *     high nibble = u[16 t + r][g G + G/2 + 4 p + i]
 * so one 64-byte load, after & 0x0F (or >> 4 & 0x0F), is 16 rows x 4 consecutive columns:
 * the u8 operand of vpdpbusd against the 4 activation bytes of those columns broadcast to
 * every lane, and the 16 int32 lanes are the 16 rows' partial sums (no horizontal sums).
 * AVX2 takes the two 32-byte halves (rows 0-7, 8-15) with vpmaddubsw + vpmaddwd.
 * A tile's bytes are contiguous in group order, so the GEMV reads both arrays in address
 * order. 4.5 bits a weight for G = 32 (4 + 16/32), 4.25 for G = 64.
 *
 * ---- the GEMV (head4_gemv), the result every ISA variant reproduces bit for bit --------
 * Activations: x int8 [K] with scale xs (x ~ xq / xs, quant.h), zero padded to Kp by the
 * binding, which also passes negc[g] = -8 sum_{k in g} x[k] (removes the +8 of u).
 *     isum[n, g] = sum_{k in g} x[k] q[n, k]        exact int32 (|.| <= 127 * 7 * G)
 *     acc = 0.0f; for g = 0 .. ng-1:  acc = acc + float(isum[n, g]) * float(d[n, g])
 *                                      (f32 multiply, then f32 add: two roundings, no FMA;
 *                                       the module is built with -std=c11, so no contraction)
 *     out[n] = acc / xs
 * Integer sums are exact in any order; the float steps are the same operations in the same
 * order in every variant (the lanes are rows), so scalar, AVX2 and AVX-512 agree bitwise,
 * and the row split over threads changes nothing. Non-finite inputs: x cannot be (int8);
 * xs = 0, NaN or inf and NaN/inf scale bits give what the formula gives (IEEE), with NaN
 * payloads unspecified.
 */
#ifndef RYZ_HEAD4_H
#define RYZ_HEAD4_H
#include <math.h>
#include <string.h>

#include "ryz.h"

#define RYZ_H4_ROWS 16            /* rows per tile: the 16 int32 lanes of a zmm */
#define RYZ_H4_QMAX 7             /* q in -7..7 */
#define RYZ_H4_MAX_K (1 << 20)    /* keeps float(isum) and all int32 sums exact */

static inline int ryz_h4_group_ok(int64_t G) { return G == 32 || G == 64 || G == 128; }

/* float16 <-> float32, bit-exact in plain C (round to nearest even, like numpy/F16C) */
static inline uint16_t ryz_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* rounds to inf */
    if (ax < 0x38800000u) {                                             /* f16 subnormal or 0 */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)rintf(a * 16777216.0f));    /* exact scaling */
    }
    ax += 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(sign | ((ax - 0x38000000u) >> 13));
}

static inline float ryz_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = (float)m * (1.0f / 16777216.0f);
        memcpy(&x, &f, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112u) << 23) | (m << 13);
    }
    memcpy(&f, &x, 4);
    return f;
}

typedef struct {
    const char *name;
    /* tiles [t0, t1) for M tokens: out[m * ldo + n] for the real rows n < V.
     * x: int8 [M, Kp] zero padded; negc: int32 [M, ng]; xs: float [M]. */
    void (*gemv)(float *out, int64_t ldo, int64_t V, const uint8_t *packed, const uint16_t *scales,
                 int64_t ng, int64_t G, const int8_t *x, const int32_t *negc, const float *xs,
                 int64_t M, int64_t t0, int64_t t1);
} ryz_head4_kernels;

extern const ryz_head4_kernels ryz_head4_scalar;
extern const ryz_head4_kernels ryz_head4_avx2;
extern const ryz_head4_kernels ryz_head4_avx512;
extern const ryz_head4_kernels *ryz_head4;

/* load-time quantization of tiles [t0, t1) (head4_scalar.c, plain C for every ISA).
 * Returns 0, or the first bad row + 1 (NaN/inf, or a scale that overflows float16). */
int64_t ryz_head4_quantize(uint8_t *packed, uint16_t *scales, const float *w, int64_t V, int64_t K,
                           int64_t G, int64_t t0, int64_t t1);

#endif
