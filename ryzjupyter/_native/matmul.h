/* matmul.h: dense int8 x int8 and float32 matrix products (out = x @ w.T).
 *
 * matmul_i8:  out[m, n] = (float)sum_k xq[m, k] wq[n, k] / (xs[m] * ws[n])   (fp32)
 *   The integer sum is exact. xs, ws are "127/absmax" style scales (quantized value =
 *   real value * scale), so dividing by their product dequantizes. The AVX-512 variant
 *   uses vpdpbusd (u8 x s8) on w + 128 (w ^ 0x80) and subtracts 128 * sum_k xq[m, k];
 *   vpdpbusd wraps modulo 2^32 and the true sum fits int32 for K <= RYZ_MATMUL_I8_MAX_K,
 *   so the result is exact. AVX2 widens to int16 and uses vpmaddwd (exact).
 * matmul_f32: out[m, n] = sum_k x[m, k] w[n, k] in fp32 with FMA; per ISA the order of
 *   the additions differs (reference: sequential), so results agree within the usual
 *   bound |err| <= K * 2^-24 * sum_k |x w| (tests use it).
 * Both are register-blocked (tiles of rows x tokens) and threaded over N (rows of w). */
#ifndef RYZ_MATMUL_H
#define RYZ_MATMUL_H
#include "ryz.h"

#define RYZ_MATMUL_I8_MAX_K 131071 /* 128 * 128 * K < 2^31 */

typedef struct {
    float *out;
    int64_t ldo;
    /* matmul_i8 */
    const int8_t *xq;
    const float *xs;
    const int8_t *wq;
    const float *ws;
    const int32_t *xsum; /* [M] sum_k xq[m, k] */
    /* matmul_f32 */
    const float *x;
    const float *w;
    int64_t M, K;
} ryz_matmul_job;

/* gemm_f32 (the encoder's linears, families/bert.py): out[m, n] = bias[n] + sum_k x[m, k] w[n, k]
 * with w packed once into panels of 16 rows, wp[p][k][c] = w[16 p + c, k] (zeros past N), so
 * the microkernel reads 16 outputs' weights for one k with two vector loads and multiplies them
 * by ROWS broadcast activations (BLIS's 6x16 tile on AVX2: 12 accumulators). Work items are
 * (block of GEMM_MB rows of x, panel), panel-minor: a thread keeps its x block in L2 while the
 * panels stream. K is walked in blocks of GEMM_KC (a panel's block, 16 KB, stays in L1).
 * Each output sums its k terms in increasing k order (one FMA chain), at every level. */
#define RYZ_GEMM_NR 16
#define RYZ_GEMM_MB 96
#define RYZ_GEMM_KC 256
typedef struct {
    float *out;
    const float *x, *wp, *bias; /* bias may be NULL */
    int64_t M, K, N, P;         /* P = panels = ceil(N / 16) */
    int64_t ldx, ldo;           /* floats between rows of x, of out (K and N when packed) */
    const uint16_t *wh;         /* gemm_f16: the panels in IEEE float16 bits (wp unused) */
} ryz_gemm_f32_job;

/* gemm_f16: gemm_f32 with the panels stored as IEEE float16 (wh[p][k][c], same layout), each
 * weight widened to float32 exactly (F16C's vcvtph2ps; the reference in plain C) and then
 * multiplied and added as in gemm_f32: the result equals gemm_f32 on the widened weights
 * (bit for bit at the same ISA level). Half the weight bytes: the encoder's one-query call
 * is bound by streaming its weights (docs/memory.md). */

typedef struct {
    const char *name;
    void (*i8)(const ryz_matmul_job *j, int64_t n0, int64_t n1);
    void (*f32)(const ryz_matmul_job *j, int64_t n0, int64_t n1);
    /* gemv_f32: one token (M = 1) of f32, rows [n0, n1), for the recurrent decode step: row after
     * row, the weights read as one contiguous stream (the read probe's pattern); a row's result
     * does not depend on its neighbours. Its addition order differs from f32's tiles, which the
     * BitNet head keeps so that its decode and its batched/verify passes agree bit for bit. */
    void (*gemv_f32)(const ryz_matmul_job *j, int64_t n0, int64_t n1);
    /* gemm_f32 items [i0, i1): item i = (row block i / P, panel i % P) */
    void (*gemm_f32)(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1);
    const char *gemm_name; /* the variant gemm_f32 is (avx512vnni uses AVX2's) */
    void (*gemm_f16)(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1);
    const char *gemm_f16_name;
} ryz_matmul_kernels;

void ryz_gemm_f32_avx2(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1);
void ryz_gemm_f16_avx2(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1);

static inline float ryz_i8_epilogue(int32_t acc, float xs, float ws) {
    return (float)acc / (xs * ws);
}

extern const ryz_matmul_kernels ryz_matmul_scalar;
extern const ryz_matmul_kernels ryz_matmul_avx2;
extern const ryz_matmul_kernels ryz_matmul_avx512;
extern const ryz_matmul_kernels *ryz_matmul;

/* ---- probes for `python -m ryzjupyter.bench` (matmul_{scalar,avx2,avx512}.c) ---------- */
/* Stream-read `bytes` bytes (multiple of 256, p 32-byte aligned) from p once; return the sum of
 * the little-endian uint64 words read (mod 2^64: every variant returns the same checksum, so a
 * test can check each byte was read exactly once). `prefetch`: software prefetch ahead,
 * non-temporal (the binding times a pass with it and one without and keeps the faster). */
uint64_t ryz_probe_read_scalar(const void *p, int64_t bytes);
uint64_t ryz_probe_read_avx2(const void *p, int64_t bytes, int prefetch);
uint64_t ryz_probe_read_avx512(const void *p, int64_t bytes, int prefetch);
/* int8 compute peaks: `iters` iterations of a register-only loop of 1024 int8 multiply-adds
 * (u8 1 x s8 1) in the instruction sequence of that level's ternary kernels; the return value
 * is the sum of the int32 accumulators, which is the number of multiply-adds done (1024 iters,
 * exact for iters <= 2^20).
 *   avx512vnni: 16 independent vpdpbusd zmm (64 MACs each).
 *   avx2: 4 independent chains of 8 x (vpmaddubsw ymm -> int16 pair sums, vpaddw into an int16
 *         sum) then vpmaddwd (x 1) + vpaddd into an int32 accumulator: what ternary_avx2.c does
 *         per 64-weight block (8 x 32 MACs). */
int64_t ryz_probe_vnni_avx512(int64_t iters);
int64_t ryz_probe_int8_avx2(int64_t iters);
#endif
