/* ops_scalar.c: reference float ops (the specification; see ops.h). */
#include <math.h>

#include "ops.h"

static void rmsnorm_row(float *out, const float *x, const float *RYZ_RESTRICT w, int64_t D,
                        float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < D; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t i = 0; i < D; i++) out[i] = (x[i] * r) * w[i];
}

static void rope_row(float *RYZ_RESTRICT x, int64_t H, int64_t hd, const float *RYZ_RESTRICT cs) {
    int64_t half = hd / 2;
    const float *c = cs, *s = cs + half;
    for (int64_t h = 0; h < H; h++) {
        float *x1 = x + h * hd, *x2 = x1 + half;
        for (int64_t j = 0; j < half; j++) {
            float a = x1[j], b = x2[j];
            x1[j] = a * c[j] - b * s[j];
            x2[j] = b * c[j] + a * s[j];
        }
    }
}

static void softmax_row(float *RYZ_RESTRICT x, int64_t N) {
    if (N <= 0) return;
    float m = -INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < N; i++) {
        if (x[i] > m) m = x[i];
        nan |= x[i] != x[i];
    }
    if (nan) m = NAN;
    if (m == -INFINITY) { /* every entry masked: documented as all zeros */
        for (int64_t i = 0; i < N; i++) x[i] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int64_t i = 0; i < N; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < N; i++) x[i] *= inv;
}

static void silu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + expf(-x[i]));
}

static void relu2(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float r = x[i] > 0.0f ? x[i] : (x[i] != x[i] ? x[i] : 0.0f);
        out[i] = r * r;
    }
}

static void mul(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* LayerNorm over one row: mean, then the variance of the centred row (two passes, as the
 * definition; no E[x^2] - mu^2 cancellation) */
static void layernorm_row(float *out, const float *x, const float *RYZ_RESTRICT w,
                          const float *RYZ_RESTRICT b, int64_t D, float eps) {
    float s = 0.0f;
    for (int64_t i = 0; i < D; i++) s += x[i];
    const float mu = s / (float)D;
    float ss = 0.0f;
    for (int64_t i = 0; i < D; i++) ss += (x[i] - mu) * (x[i] - mu);
    const float r = 1.0f / sqrtf(ss / (float)D + eps);
    for (int64_t i = 0; i < D; i++) out[i] = (x[i] - mu) * r * w[i] + b[i];
}

/* exact GELU: x * Phi(x) = x * 0.5 * (1 + erf(x / sqrt 2)) */
static void gelu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
}

const ryz_ops_kernels ryz_ops_scalar = {
    .name = "scalar",
    .rmsnorm_row = rmsnorm_row,
    .rope_row = rope_row,
    .softmax_row = softmax_row,
    .silu = silu,
    .relu2 = relu2,
    .mul = mul,
    .add = add,
    .layernorm_row = layernorm_row,
    .gelu = gelu,
    .encoder_name = "scalar",
};
