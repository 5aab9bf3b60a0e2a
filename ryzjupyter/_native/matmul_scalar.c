/* matmul_scalar.c: reference int8 and float32 matrix products (see matmul.h). */
#include "matmul.h"

static void i8(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = j->wq + n * j->K;
        for (int64_t m = 0; m < j->M; m++) {
            const int8_t *x = j->xq + m * j->K;
            int32_t acc = 0;
            for (int64_t k = 0; k < j->K; k++) acc += (int32_t)x[k] * w[k];
            j->out[m * j->ldo + n] = ryz_i8_epilogue(acc, j->xs[m], j->ws[n]);
        }
    }
}

static void f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const float *w = j->w + n * j->K;
        for (int64_t m = 0; m < j->M; m++) {
            const float *x = j->x + m * j->K;
            float acc = 0.0f;
            for (int64_t k = 0; k < j->K; k++) acc += x[k] * w[k];
            j->out[m * j->ldo + n] = acc;
        }
    }
}

uint64_t ryz_probe_read_scalar(const void *p, int64_t bytes) {
    const uint64_t *q = p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = 0; i < bytes / 8; i += 4) {
        s0 += q[i];
        s1 += q[i + 1];
        s2 += q[i + 2];
        s3 += q[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

const ryz_matmul_kernels ryz_matmul_scalar = {.name = "scalar", .i8 = i8, .f32 = f32};
