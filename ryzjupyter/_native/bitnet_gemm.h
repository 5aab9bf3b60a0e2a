/* bitnet_gemm.h: what the multi-token BitNet paths share (bitnet_gemm.c): the batched decode
 * step (bitnet_batch.c) and the verify pass of speculative decoding (bitnet_verify.c) both run
 * M tokens through the layers with each weight row read once for all of them.
 *
 * ryz_bitnet_quantize_rows   M rows of activations -> int8 rows for the ternary GEMMs
 * ryz_bitnet_gemm_run        up to three ternary matrices over the same rows as one job
 * ryz_bitnet_head_run        the int8 lm_head over M quantized tokens
 *
 * Both runners split their output rows between the threads with work stealing
 * (ryz_parallel_ranges): one range of whole 16-row tiles per thread, walked in chunks; a thread
 * that has finished its range takes the others' last chunks. Each output row is one thread's
 * exact integer sum with a per-row float epilogue, so the split changes no result. */
#ifndef RYZ_BITNET_GEMM_H
#define RYZ_BITNET_GEMM_H
#include "bitnet_layer.h"
#include "ternary.h"

/* M rows of quantized activations */
typedef struct {
    int8_t *q;       /* [M, ldq], each row zero padded past K */
    int32_t *qsum;   /* [M] */
    float *sx;       /* [M] */
    int64_t ldq, M;
    int t5;          /* the matrices they meet are T5-packed, else I2 */
} ryz_bitnet_rows;

/* rows x [M, ldx] (K used) -> a; -2 on NaN / inf (as quantize_act in bitnet_layer.c) */
int ryz_bitnet_quantize_rows(const ryz_bitnet_rows *a, const float *x, int64_t ldx, int64_t K);

/* up to 3 matrices over the same activations as one job (their rows concatenated) */
typedef struct {
    ryz_ternary_job job[3];
    int64_t start[4];        /* matrix i owns the job's rows [start[i], start[i + 1]) */
    int n, t5;
} ryz_bitnet_gemm;

/* out [M, N] (row stride N) = the linear of w [N, K] on the M quantized rows of a */
ryz_ternary_job ryz_bitnet_gemm_job(float *out, const uint8_t *w, int64_t N, int64_t K, const ryz_bitnet_rows *a,
                                    float w_mult);
void ryz_bitnet_gemm_run(ryz_bitnet_gemm *g, const ryz_bitnet_rows *a);

/* logits [M, V] = the int8 head on M tokens q [M, ldq] (D used) with scales xs [M]; each token's
 * row bitwise gemv_i8's (layer.h) */
void ryz_bitnet_head_run(float *logits, const ryz_bitnet_head *h, const int8_t *q, int64_t ldq, const float *xs,
                         int64_t M, int64_t D);

/* Carve nbytes (64-byte aligned) from a scratch at *off (base NULL: only count). */
static inline void *ryz_carve(char *base, size_t *off, int64_t nbytes) {
    void *p = base ? base + *off : NULL;
    *off += ((size_t)nbytes + 63) / 64 * 64;
    return p;
}

/* CLOCK_MONOTONIC in nanoseconds (the ns[] the passes report) */
int64_t ryz_now_ns(void);

#endif
