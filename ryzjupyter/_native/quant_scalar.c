/* quant_scalar.c: reference int8 activation quantization (see quant.h). */
#include <float.h>
#include <math.h>

#include "quant.h"

static int quantize_row_i8(int8_t *RYZ_RESTRICT q, float *RYZ_RESTRICT scale,
                           const float *RYZ_RESTRICT x, int64_t K) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        if (!(a <= FLT_MAX)) return 1; /* NaN or inf */
        if (a > amax) amax = a;
    }
    float s = 127.0f / (amax > RYZ_ACT_EPS ? amax : RYZ_ACT_EPS);
    for (int64_t k = 0; k < K; k++) {
        float v = rintf(x[k] * s);
        q[k] = (int8_t)(v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v));
    }
    *scale = s;
    return 0;
}

static int32_t sum_i8(const int8_t *q, int64_t K) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; k++) s += q[k];
    return s;
}

const ryz_quant_kernels ryz_quant_scalar = {
    .name = "scalar",
    .quantize_row_i8 = quantize_row_i8,
    .sum_i8 = sum_i8,
};
