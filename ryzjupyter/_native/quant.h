/* quant.h: int8 quantization of activations, exactly as BitNet b1.58 does it.
 *
 * For one row x[0..K):  s = 127 / max(max_k |x[k]|, 1e-5)        (fp32)
 *                       q[k] = clamp(rint(x[k] * s), -128, 127)   (round half to even)
 * and s is returned. x * s is one fp32 multiply and rint uses the default rounding
 * mode (nearest, ties to even), which is torch.round's rule, so q is bit-identical
 * to transformers' ActQuant. A row with NaN or +-inf is refused (return 1): there
 * is no meaningful scale for it. */
#ifndef RYZ_QUANT_H
#define RYZ_QUANT_H
#include "ryz.h"

typedef struct {
    const char *name;
    /* returns 0, or 1 if x holds a NaN/inf (q and *scale are then unspecified) */
    int (*quantize_row_i8)(int8_t *RYZ_RESTRICT q, float *RYZ_RESTRICT scale,
                           const float *RYZ_RESTRICT x, int64_t K);
    /* sum_k q[k], exact (the ternary kernels subtract it: codes are trit + 1); K < 2^23 */
    int32_t (*sum_i8)(const int8_t *q, int64_t K);
} ryz_quant_kernels;

extern const ryz_quant_kernels ryz_quant_scalar;
extern const ryz_quant_kernels ryz_quant_avx2;
extern const ryz_quant_kernels ryz_quant_avx512;
/* the table in use, set by ryz_quant_select; other families call through it */
extern const ryz_quant_kernels *ryz_quant;

#define RYZ_ACT_EPS 1e-5f
#endif
