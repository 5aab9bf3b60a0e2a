/* recurrent.h: the sequential kernels of Mamba (v1) and RWKV-4, matching the slow
 * (pure torch) paths of transformers 5.23 in float32. Every kernel works on a range of
 * channels [c0, c1) over T tokens (channels are independent), so the bindings thread
 * over channels; a single decode step is the T = 1 case of the same function.
 * Activations are token-major: row t of a [T, D] array is token t.
 *
 * conv1d (Mamba's causal depthwise conv + SiLU), state [D, K] = the last K inputs of
 * each channel, oldest first (transformers' conv_state):
 *   out[t,c] = silu( sum_j w[c,j] * xin(t-(K-1)+j, c) + bias[c] )
 *   xin(s,c) = x[s,c] for s >= 0, state[c, K+s] for s < 0 (zeros on a fresh state);
 *   afterwards state[c,:] = the last K inputs. bias may be NULL (no bias).
 * scan (Mamba's selective scan), h [D, N] carried:
 *   d = softplus(dt[t,c])   (torch: x > 20 ? x : log1p(exp(x)); dt = dt_proj output)
 *   h[c,n] = exp(A[c,n] * d) * h[c,n] + (d * B[t,n]) * u[t,c]
 *   y[t,c] = (sum_n h[c,n] * C[t,n] + u[t,c] * Dskip[c]) * silu(z[t,c])   (z NULL: no gate)
 *   A = -exp(A_log) precomputed by the caller.
 * wkv (RWKV-4 time mixing core, rwkv_linear_attention_cpu), state aa, bb, pp [A]:
 *   w = -exp(time_decay[c]), u = time_first[c]
 *   q = max(pp, u+k); e1 = exp(pp-q); e2 = exp(u+k-q); out = (e1*aa + e2*v) / (e1*bb + e2)
 *   q = max(pp+w, k); e1 = exp(pp+w-q); e2 = exp(k-q); aa = e1*aa + e2*v; bb = e1*bb + e2; pp = q
 *   fresh state: aa = bb = 0, pp = -1e38.
 * wkv7 (RWKV-7 "Goose" state update), state S [H, N, N] per head (rows: value index i,
 *   columns: key index j), activations [T, H*N] token-major, heads [h0, h1):
 *   sa_i = sum_j S[i,j] a[j]                       (a = -kk, b = kk * a_gate: the caller's)
 *   S[i,j] = S[i,j] w[j] + sa_i b[j] + v[i] k[j]   (w = the decay, already exp'd)
 *   out[i] = sum_j S[i,j] r[j]
 *   The AVX2 variant vectorises over j (8 lanes); sums run in another order than the scalar
 *   reference. The AVX-512 table uses the AVX2 function (no AVX-512 code of its own). */
#ifndef RYZ_RECURRENT_H
#define RYZ_RECURRENT_H
#include <math.h>

#include "ryz.h"

#define RYZ_CONV_MAX_K 16

typedef struct {
    const char *name;
    void (*conv1d)(float *RYZ_RESTRICT out, float *RYZ_RESTRICT state, const float *RYZ_RESTRICT x,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT bias, int64_t T, int64_t D,
                   int64_t K, int64_t c0, int64_t c1);
    void (*scan)(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                 const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A, const float *RYZ_RESTRICT B,
                 const float *RYZ_RESTRICT C, const float *RYZ_RESTRICT Dskip,
                 const float *RYZ_RESTRICT z, int64_t T, int64_t D, int64_t N, int64_t c0, int64_t c1);
    void (*wkv)(float *RYZ_RESTRICT out, float *RYZ_RESTRICT aa, float *RYZ_RESTRICT bb,
                float *RYZ_RESTRICT pp, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                const float *RYZ_RESTRICT time_decay, const float *RYZ_RESTRICT time_first, int64_t T,
                int64_t A, int64_t c0, int64_t c1);
    void (*wkv7)(float *RYZ_RESTRICT out, float *RYZ_RESTRICT S, const float *RYZ_RESTRICT r,
                 const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                 const float *RYZ_RESTRICT a, const float *RYZ_RESTRICT b, int64_t T, int64_t H, int64_t N,
                 int64_t h0, int64_t h1);
} ryz_recurrent_kernels;

void ryz_wkv7_avx2(float *RYZ_RESTRICT out, float *RYZ_RESTRICT S, const float *RYZ_RESTRICT r,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                   const float *RYZ_RESTRICT a, const float *RYZ_RESTRICT b, int64_t T, int64_t H, int64_t N,
                   int64_t h0, int64_t h1);

extern const ryz_recurrent_kernels ryz_recurrent_scalar;
extern const ryz_recurrent_kernels ryz_recurrent_avx2;
extern const ryz_recurrent_kernels ryz_recurrent_avx512;
extern const ryz_recurrent_kernels *ryz_recurrent;

/* torch.nn.functional.softplus(x) with beta 1, threshold 20 (shared by all variants) */
static inline float ryz_softplus(float x) {
    return x > 20.0f ? x : log1pf(expf(x));
}

/* state update of conv1d for channel c (plain C in every variant: K floats) */
static inline void ryz_conv_state_update(float *RYZ_RESTRICT st, const float *RYZ_RESTRICT x,
                                         int64_t T, int64_t D, int64_t K, int64_t c) {
    /* new st[j] = input at s = T-K+j; for s < 0 that is old st[T+j], an index > j not
     * yet overwritten when j goes up */
    for (int64_t j = 0; j < K; j++) {
        int64_t s = T - K + j;
        st[j] = s >= 0 ? x[s * D + c] : st[T + j];
    }
}
#endif
