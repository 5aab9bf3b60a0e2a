/* recurrent_avx512.c: AVX-512F Mamba conv1d / selective scan and RWKV-4 WKV (see
 * recurrent.h). conv1d and wkv run 16 channels per vector (rows of x, k, v are
 * contiguous across channels); the scan runs one channel at a time with its N state
 * entries in vectors (N = 16 for Mamba: one register). The scalar softplus of dt and
 * the final silu(z) of each (token, channel) use the shared libm helpers. */
#if !defined(__AVX512F__)
#error "recurrent_avx512.c must be compiled with -mavx512f"
#endif
#include <immintrin.h>
#include <math.h>

#include "ops.h"
#include "recurrent.h"

static inline __m512 silu16(__m512 x) {
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), ryz_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static void conv1d(float *RYZ_RESTRICT out, float *RYZ_RESTRICT state, const float *RYZ_RESTRICT x,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT bias, int64_t T, int64_t D,
                   int64_t K, int64_t c0, int64_t c1) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t c = c0; c < c1; c += 16) {
        __mmask16 m = ryz_tail16(c1 - c);
        /* element (lane, j) of the [D, K] arrays is at (c + lane) * K + j */
        __m512i rowidx = _mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32((int)c)),
                                            _mm512_set1_epi32((int)K));
        __m512 wv[RYZ_CONV_MAX_K];
        for (int64_t j = 0; j < K; j++)
            wv[j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                             _mm512_add_epi32(rowidx, _mm512_set1_epi32((int)j)), w, 4);
        __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t j = 0; j < K; j++) {
                int64_t s = t - (K - 1) + j;
                __m512 xv = s >= 0 ? _mm512_maskz_loadu_ps(m, x + s * D + c)
                                   : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                         _mm512_add_epi32(rowidx, _mm512_set1_epi32((int)(K + s))), state, 4);
                acc = _mm512_fmadd_ps(wv[j], xv, acc);
            }
            _mm512_mask_storeu_ps(out + t * D + c, m, silu16(_mm512_add_ps(acc, bv)));
        }
        int64_t ce = c + 16 < c1 ? c + 16 : c1;
        for (int64_t cc = c; cc < ce; cc++) ryz_conv_state_update(state + cc * K, x, T, D, K, cc);
    }
}

static void scan(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                 const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A, const float *RYZ_RESTRICT B,
                 const float *RYZ_RESTRICT C, const float *RYZ_RESTRICT Dskip,
                 const float *RYZ_RESTRICT z, int64_t T, int64_t D, int64_t N, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        float *hc = h + c * N;
        const float *Ac = A + c * N;
        if (N <= 16) { /* Mamba's N = 16: the state lives in one register over all T */
            __mmask16 m = ryz_tail16(N);
            __m512 hv = _mm512_maskz_loadu_ps(m, hc), av = _mm512_maskz_loadu_ps(m, Ac);
            for (int64_t t = 0; t < T; t++) {
                float d = ryz_softplus(dt[t * D + c]), uc = u[t * D + c];
                __m512 dv = _mm512_set1_ps(d);
                __m512 dA = ryz_exp_avx512(_mm512_mul_ps(av, dv));
                __m512 dBu = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_maskz_loadu_ps(m, B + t * N)),
                                           _mm512_set1_ps(uc));
                hv = _mm512_add_ps(_mm512_mul_ps(dA, hv), dBu);
                float out = _mm512_reduce_add_ps(_mm512_mul_ps(hv, _mm512_maskz_loadu_ps(m, C + t * N)));
                out += uc * Dskip[c];
                if (z) out *= z[t * D + c] / (1.0f + expf(-z[t * D + c]));
                y[t * D + c] = out;
            }
            _mm512_mask_storeu_ps(hc, m, hv);
        } else {
            for (int64_t t = 0; t < T; t++) {
                float d = ryz_softplus(dt[t * D + c]), uc = u[t * D + c];
                __m512 dv = _mm512_set1_ps(d), uv = _mm512_set1_ps(uc), acc = _mm512_setzero_ps();
                for (int64_t n = 0; n < N; n += 16) {
                    __mmask16 m = ryz_tail16(N - n);
                    __m512 dA = ryz_exp_avx512(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, Ac + n), dv));
                    __m512 dBu = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_maskz_loadu_ps(m, B + t * N + n)), uv);
                    __m512 hv = _mm512_add_ps(_mm512_mul_ps(dA, _mm512_maskz_loadu_ps(m, hc + n)), dBu);
                    _mm512_mask_storeu_ps(hc + n, m, hv);
                    acc = _mm512_fmadd_ps(hv, _mm512_maskz_loadu_ps(m, C + t * N + n), acc);
                }
                float out = _mm512_reduce_add_ps(acc) + uc * Dskip[c];
                if (z) out *= z[t * D + c] / (1.0f + expf(-z[t * D + c]));
                y[t * D + c] = out;
            }
        }
    }
}

static void wkv(float *RYZ_RESTRICT out, float *RYZ_RESTRICT aa, float *RYZ_RESTRICT bb,
                float *RYZ_RESTRICT pp, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                const float *RYZ_RESTRICT time_decay, const float *RYZ_RESTRICT time_first, int64_t T,
                int64_t A, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += 16) {
        __mmask16 m = ryz_tail16(c1 - c);
        __m512 a = _mm512_maskz_loadu_ps(m, aa + c), b = _mm512_maskz_loadu_ps(m, bb + c);
        __m512 p = _mm512_maskz_loadu_ps(m, pp + c), u = _mm512_maskz_loadu_ps(m, time_first + c);
        __m512 w = _mm512_sub_ps(_mm512_setzero_ps(), ryz_exp_avx512(_mm512_maskz_loadu_ps(m, time_decay + c)));
        for (int64_t t = 0; t < T; t++) {
            __m512 kt = _mm512_maskz_loadu_ps(m, k + t * A + c), vt = _mm512_maskz_loadu_ps(m, v + t * A + c);
            __m512 uk = _mm512_add_ps(u, kt);
            __m512 q = _mm512_max_ps(p, uk);
            __m512 e1 = ryz_exp_avx512(_mm512_sub_ps(p, q)), e2 = ryz_exp_avx512(_mm512_sub_ps(uk, q));
            __m512 num = _mm512_add_ps(_mm512_mul_ps(e1, a), _mm512_mul_ps(e2, vt));
            __m512 den = _mm512_add_ps(_mm512_mul_ps(e1, b), e2);
            /* masked lanes: den = 1*0 + exp(0) = 1, so no 0/0 there */
            _mm512_mask_storeu_ps(out + t * A + c, m, _mm512_div_ps(num, den));
            __m512 pw = _mm512_add_ps(p, w);
            __m512 q2 = _mm512_max_ps(pw, kt);
            e1 = ryz_exp_avx512(_mm512_sub_ps(pw, q2));
            e2 = ryz_exp_avx512(_mm512_sub_ps(kt, q2));
            a = _mm512_add_ps(_mm512_mul_ps(e1, a), _mm512_mul_ps(e2, vt));
            b = _mm512_add_ps(_mm512_mul_ps(e1, b), e2);
            p = q2;
        }
        _mm512_mask_storeu_ps(aa + c, m, a);
        _mm512_mask_storeu_ps(bb + c, m, b);
        _mm512_mask_storeu_ps(pp + c, m, p);
    }
}

const ryz_recurrent_kernels ryz_recurrent_avx512 = {
    .name = "avx512vnni",
    .conv1d = conv1d,
    .scan = scan,
    .wkv = wkv,
};
