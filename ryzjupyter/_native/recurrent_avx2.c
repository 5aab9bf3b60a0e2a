/* recurrent_avx2.c: AVX2+FMA Mamba conv1d / selective scan and RWKV-4 WKV (see
 * recurrent.h). conv1d and wkv run 8 channels per vector; the scan runs one channel
 * at a time with its N state entries in vectors of 8. The scalar softplus of dt and
 * the final silu(z) of each (token, channel) use the shared libm helpers. */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "recurrent_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <math.h>

#include "ops.h"
#include "recurrent.h"

static inline __m256i tail8(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? (left < 0 ? 0 : left) : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 silu8(__m256 x) {
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), ryz_exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static void conv1d(float *RYZ_RESTRICT out, float *RYZ_RESTRICT state, const float *RYZ_RESTRICT x,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT bias, int64_t T, int64_t D,
                   int64_t K, int64_t c0, int64_t c1) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = c0; c < c1; c += 8) {
        __m256i m = tail8(c1 - c);
        __m256 mf = _mm256_castsi256_ps(m);
        __m256i rowidx = _mm256_mullo_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32((int)c)),
                                            _mm256_set1_epi32((int)K));
        __m256 wv[RYZ_CONV_MAX_K];
        for (int64_t j = 0; j < K; j++)
            wv[j] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), w,
                                             _mm256_add_epi32(rowidx, _mm256_set1_epi32((int)j)), mf, 4);
        __m256 bv = bias ? _mm256_maskload_ps(bias + c, m) : _mm256_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t j = 0; j < K; j++) {
                int64_t s = t - (K - 1) + j;
                __m256 xv = s >= 0 ? _mm256_maskload_ps(x + s * D + c, m)
                                   : _mm256_mask_i32gather_ps(_mm256_setzero_ps(), state,
                                         _mm256_add_epi32(rowidx, _mm256_set1_epi32((int)(K + s))), mf, 4);
                acc = _mm256_fmadd_ps(wv[j], xv, acc);
            }
            _mm256_maskstore_ps(out + t * D + c, m, silu8(_mm256_add_ps(acc, bv)));
        }
        int64_t ce = c + 8 < c1 ? c + 8 : c1;
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
        for (int64_t t = 0; t < T; t++) {
            float d = ryz_softplus(dt[t * D + c]), uc = u[t * D + c];
            __m256 dv = _mm256_set1_ps(d), uv = _mm256_set1_ps(uc), acc = _mm256_setzero_ps();
            for (int64_t n = 0; n < N; n += 8) {
                __m256i m = tail8(N - n);
                __m256 dA = ryz_exp_avx2(_mm256_mul_ps(_mm256_maskload_ps(Ac + n, m), dv));
                __m256 dBu = _mm256_mul_ps(_mm256_mul_ps(dv, _mm256_maskload_ps(B + t * N + n, m)), uv);
                __m256 hv = _mm256_add_ps(_mm256_mul_ps(dA, _mm256_maskload_ps(hc + n, m)), dBu);
                _mm256_maskstore_ps(hc + n, m, hv);
                acc = _mm256_fmadd_ps(hv, _mm256_maskload_ps(C + t * N + n, m), acc);
            }
            float out = ryz_hsum_avx2(acc) + uc * Dskip[c];
            if (z) out *= z[t * D + c] / (1.0f + expf(-z[t * D + c]));
            y[t * D + c] = out;
        }
    }
}

static void wkv(float *RYZ_RESTRICT out, float *RYZ_RESTRICT aa, float *RYZ_RESTRICT bb,
                float *RYZ_RESTRICT pp, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                const float *RYZ_RESTRICT time_decay, const float *RYZ_RESTRICT time_first, int64_t T,
                int64_t A, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += 8) {
        __m256i m = tail8(c1 - c);
        __m256 a = _mm256_maskload_ps(aa + c, m), b = _mm256_maskload_ps(bb + c, m);
        __m256 p = _mm256_maskload_ps(pp + c, m), u = _mm256_maskload_ps(time_first + c, m);
        __m256 w = _mm256_sub_ps(_mm256_setzero_ps(), ryz_exp_avx2(_mm256_maskload_ps(time_decay + c, m)));
        for (int64_t t = 0; t < T; t++) {
            __m256 kt = _mm256_maskload_ps(k + t * A + c, m), vt = _mm256_maskload_ps(v + t * A + c, m);
            __m256 uk = _mm256_add_ps(u, kt);
            __m256 q = _mm256_max_ps(p, uk);
            __m256 e1 = ryz_exp_avx2(_mm256_sub_ps(p, q)), e2 = ryz_exp_avx2(_mm256_sub_ps(uk, q));
            __m256 num = _mm256_add_ps(_mm256_mul_ps(e1, a), _mm256_mul_ps(e2, vt));
            __m256 den = _mm256_add_ps(_mm256_mul_ps(e1, b), e2);
            _mm256_maskstore_ps(out + t * A + c, m, _mm256_div_ps(num, den));
            __m256 pw = _mm256_add_ps(p, w);
            __m256 q2 = _mm256_max_ps(pw, kt);
            e1 = ryz_exp_avx2(_mm256_sub_ps(pw, q2));
            e2 = ryz_exp_avx2(_mm256_sub_ps(kt, q2));
            a = _mm256_add_ps(_mm256_mul_ps(e1, a), _mm256_mul_ps(e2, vt));
            b = _mm256_add_ps(_mm256_mul_ps(e1, b), e2);
            p = q2;
        }
        _mm256_maskstore_ps(aa + c, m, a);
        _mm256_maskstore_ps(bb + c, m, b);
        _mm256_maskstore_ps(pp + c, m, p);
    }
}

const ryz_recurrent_kernels ryz_recurrent_avx2 = {
    .name = "avx2",
    .conv1d = conv1d,
    .scan = scan,
    .wkv = wkv,
};
