/* head4_scalar.c: the 4-bit lm_head in plain C (see head4.h): the load-time quantizer
 * (used at every ISA level) and the reference GEMV (the specification of the others). */
#include <float.h>

#include "head4.h"

int64_t ryz_head4_quantize(uint8_t *packed, uint16_t *scales, const float *w, int64_t V, int64_t K,
                           int64_t G, int64_t t0, int64_t t1) {
    const int64_t ng = (K + G - 1) / G, tile_bytes = ng * 8 * G;
    int8_t q[128];
    for (int64_t t = t0; t < t1; t++) {
        uint8_t *pt = packed + t * tile_bytes;
        uint16_t *st = scales + t * ng * RYZ_H4_ROWS;
        memset(pt, 0x88, (size_t)tile_bytes);                   /* q = 0 everywhere */
        memset(st, 0, (size_t)(ng * RYZ_H4_ROWS) * sizeof(uint16_t));
        for (int r = 0; r < RYZ_H4_ROWS; r++) {
            const int64_t n = t * RYZ_H4_ROWS + r;
            if (n >= V) break;
            const float *row = w + n * K;
            for (int64_t g = 0; g < ng; g++) {
                const int64_t k0 = g * G, kn = K - k0 < G ? K - k0 : G;
                float amax = 0.0f;
                for (int64_t k = 0; k < kn; k++) {
                    float a = fabsf(row[k0 + k]);
                    if (!(a <= FLT_MAX)) return n + 1;          /* NaN or inf */
                    if (a > amax) amax = a;
                }
                const uint16_t dh = ryz_f32_to_f16(amax / (float)RYZ_H4_QMAX);
                if ((dh & 0x7c00u) == 0x7c00u) return n + 1;    /* scale overflows float16 */
                const float d = ryz_f16_to_f32(dh), inv = d > 0.0f ? 1.0f / d : 0.0f;
                memset(q, 0, sizeof q);
                for (int64_t k = 0; k < kn; k++) {
                    float v = rintf(row[k0 + k] * inv);
                    q[k] = (int8_t)(v > RYZ_H4_QMAX ? RYZ_H4_QMAX : (v < -RYZ_H4_QMAX ? -RYZ_H4_QMAX : v));
                }
                st[g * RYZ_H4_ROWS + r] = dh;
                uint8_t *pg = pt + g * 8 * G;
                for (int64_t p = 0; p < G / 8; p++)
                    for (int i = 0; i < 4; i++) {
                        const uint8_t lo = (uint8_t)(q[4 * p + i] + 8), hi = (uint8_t)(q[G / 2 + 4 * p + i] + 8);
                        pg[p * 64 + 4 * r + i] = (uint8_t)(lo | (hi << 4));
                    }
            }
        }
    }
    return 0;
}

static void gemv(float *out, int64_t ldo, int64_t V, const uint8_t *packed, const uint16_t *scales,
                 int64_t ng, int64_t G, const int8_t *x, const int32_t *negc, const float *xs, int64_t M,
                 int64_t t0, int64_t t1) {
    const int64_t Kp = ng * G, tile_bytes = ng * 8 * G;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xm = x + m * Kp;
            for (int r = 0; r < RYZ_H4_ROWS; r++) {
                const int64_t n = t * RYZ_H4_ROWS + r;
                if (n >= V) break;
                float acc = 0.0f;
                for (int64_t g = 0; g < ng; g++) {
                    const uint8_t *pg = packed + t * tile_bytes + g * 8 * G;
                    const int8_t *xg = xm + g * G;
                    int32_t s = negc[m * ng + g];              /* sum x (q + 8) - 8 sum x */
                    for (int64_t p = 0; p < G / 8; p++)
                        for (int i = 0; i < 4; i++) {
                            const uint8_t b = pg[p * 64 + 4 * r + i];
                            s += (int32_t)(b & 15) * xg[4 * p + i] + (int32_t)(b >> 4) * xg[G / 2 + 4 * p + i];
                        }
                    const float d = ryz_f16_to_f32(scales[(t * ng + g) * RYZ_H4_ROWS + r]);
                    const float prod = (float)s * d;
                    acc = acc + prod;
                }
                out[m * ldo + n] = acc / xs[m];
            }
        }
}

const ryz_head4_kernels ryz_head4_scalar = {.name = "scalar", .gemv = gemv};
