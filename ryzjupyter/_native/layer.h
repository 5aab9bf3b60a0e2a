/* layer.h: kernels of the fused decode family (py_layer.c).
 *
 * gemv_i8: the int8 lm_head for ONE token, out[n] = float(sum_k x[k] w[n, k]) / (xs * ws[n])
 * for n in [n0, n1): the same integer sum and the same epilogue (ryz_i8_epilogue) as
 * matmul_i8, so the logits are bitwise those of matmul_i8 with M = 1. matmul_i8's 4 x 4 tiles
 * use masked loads everywhere (slow streaming on Zen 4) and no prefetch; a decode step reads
 * the whole head (V x D bytes, 328 MB for 2B-4T) for one token, so it gets its own loop:
 * one row at a time (one sequential stream), unmasked 64-byte loads (one masked tail),
 * non-temporal software prefetch 8 KiB ahead.
 * x is zero padded by nobody: K is the true length; xsum = sum_k x[k]. */
#ifndef RYZ_LAYER_H
#define RYZ_LAYER_H
#include "ryz.h"

typedef struct {
    const char *name;
    void (*gemv_i8)(float *out, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                    int32_t xsum, float xs, int64_t n0, int64_t n1);
    /* gemm_i8: the int8 lm_head for M tokens at once (the verify pass of speculative decoding):
     * out[m * ldo + n] = float(sum_k x[m * ldx + k] w[n, k]) / (xs[m] * ws[n]) for n in [n0, n1),
     * m < M, each weight row read once for all M tokens; bitwise gemv_i8's result for each token
     * (exact integer sum, ryz_i8_epilogue). Any M >= 1, any int8 values. */
    const char *gemm_name;
    void (*gemm_i8)(float *out, int64_t ldo, const int8_t *w, const float *ws, int64_t K, const int8_t *x,
                    int64_t ldx, const float *xs, int64_t M, int64_t n0, int64_t n1);
} ryz_layer_kernels;

extern const ryz_layer_kernels ryz_layer_scalar;
extern const ryz_layer_kernels ryz_layer_avx2;
extern const ryz_layer_kernels ryz_layer_avx512;
extern const ryz_layer_kernels *ryz_layer;

#endif
