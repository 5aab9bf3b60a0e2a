/* layer_scalar.c: reference int8 GEMV of the lm_head (see layer.h). */
#include "layer.h"
#include "matmul.h"

static void gemv_i8(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x, int32_t xsum,
                    float xs, int64_t n0, int64_t n1) {
    RYZ_UNUSED(xsum);
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *r = w + n * K;
        int32_t acc = 0;
        for (int64_t k = 0; k < K; k++) acc += (int32_t)x[k] * r[k];
        out[n] = ryz_i8_epilogue(acc, xs, ws[n]);
    }
}

static void gemm_i8(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                    int64_t ldx, const float *xs, int64_t M, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *r = w + n * K;
        for (int64_t m = 0; m < M; m++) {
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int32_t)x[m * ldx + k] * r[k];
            out[m * ldo + n] = ryz_i8_epilogue(acc, xs[m], ws[n]);
        }
    }
}

const ryz_layer_kernels ryz_layer_scalar = {.name = "scalar", .gemv_i8 = gemv_i8, .gemm_name = "scalar",
                                            .gemm_i8 = gemm_i8};
