/* matmul_scalar.c: reference int8 and float32 matrix products (see matmul.h). */
#include "attention.h" /* ryz_f16_to_f32 */
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

/* the reference: each output's k terms summed in increasing k order, starting from the bias;
 * F16: the panels are float16 bits (gemm_f16), widened exactly before the multiply */
static inline void gemm_ref(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1, const int F16) {
    const int64_t K = j->K;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t mb = it / j->P, p = it % j->P, n0 = p * RYZ_GEMM_NR;
        const int64_t m1 = (mb + 1) * RYZ_GEMM_MB < j->M ? (mb + 1) * RYZ_GEMM_MB : j->M;
        const int64_t nc = j->N - n0 < RYZ_GEMM_NR ? j->N - n0 : RYZ_GEMM_NR;
        const float *wp = F16 ? NULL : j->wp + p * K * RYZ_GEMM_NR;
        const uint16_t *wh = F16 ? j->wh + p * K * RYZ_GEMM_NR : NULL;
        for (int64_t m = mb * RYZ_GEMM_MB; m < m1; m++) {
            float acc[RYZ_GEMM_NR];
            for (int c = 0; c < RYZ_GEMM_NR; c++) acc[c] = j->bias && c < nc ? j->bias[n0 + c] : 0.0f;
            for (int64_t k = 0; k < K; k++) {
                const float xv = j->x[m * j->ldx + k];
                for (int c = 0; c < RYZ_GEMM_NR; c++)
                    acc[c] += xv * (F16 ? ryz_f16_to_f32(wh[k * RYZ_GEMM_NR + c]) : wp[k * RYZ_GEMM_NR + c]);
            }
            for (int64_t c = 0; c < nc; c++) j->out[m * j->ldo + n0 + c] = acc[c];
        }
    }
}
static void gemm_f32(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1) { gemm_ref(j, i0, i1, 0); }
static void gemm_f16(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1) { gemm_ref(j, i0, i1, 1); }

const ryz_matmul_kernels ryz_matmul_scalar = {.name = "scalar", .i8 = i8, .f32 = f32, .gemv_f32 = f32, .gemm_f32 = gemm_f32,
                                              .gemm_name = "scalar", .gemm_f16 = gemm_f16, .gemm_f16_name = "scalar"};
