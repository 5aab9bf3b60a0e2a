/* recurrent_avx512.c: AVX-512F Mamba conv1d / selective scan and RWKV-4 WKV (see
 * recurrent.h). conv1d and wkv run 16 channels per vector (rows of x, k, v are
 * contiguous across channels). The scan with N <= 16 (Mamba) also runs 16 channels at a
 * time (vector softplus and silu across channels, one register of state per channel);
 * larger N runs one channel at a time with its state in vectors of 16, using the libm
 * softplus of recurrent.h. */
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
        __m512 bv = bias ? ryz_ld16(bias + c, m) : _mm512_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t j = 0; j < K; j++) {
                int64_t s = t - (K - 1) + j;
                __m512 xv = s >= 0 ? ryz_ld16(x + s * D + c, m)
                                   : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                         _mm512_add_epi32(rowidx, _mm512_set1_epi32((int)(K + s))), state, 4);
                acc = _mm512_fmadd_ps(wv[j], xv, acc);
            }
            ryz_st16(out + t * D + c, m, silu16(_mm512_add_ps(acc, bv)));
        }
        int64_t ce = c + 16 < c1 ? c + 16 : c1;
        for (int64_t cc = c; cc < ce; cc++) ryz_conv_state_update(state + cc * K, x, T, D, K, cc);
    }
}

/* log(y) for y >= 1 (finite): Cephes logf, mantissa in [sqrt(1/2), sqrt(2)), ~1-2 ulp */
static inline __m512 log16_ge1(__m512 y) {
    __m512 m = _mm512_getmant_ps(y, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src); /* [1, 2) */
    __m512 k = _mm512_getexp_ps(y);                                        /* floor(log2 y) */
    __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    k = _mm512_mask_add_ps(k, big, k, _mm512_set1_ps(1.0f));
    __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f)), z = _mm512_mul_ps(f, f);
    __m512 p = _mm512_set1_ps(7.0376836292e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174e-1f));
    __m512 r = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
    r = _mm512_fmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    r = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), r);
    r = _mm512_add_ps(f, r);
    return _mm512_fmadd_ps(k, _mm512_set1_ps(0.693359375f), r);
}

/* torch softplus (threshold 20): x > 20 ? x : log1p(exp(x)), with log1p(e) computed as
 * log(1+e) - ((1+e)-1-e)/(1+e) so that tiny e keep full relative precision */
static inline __m512 softplus16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f), lim = _mm512_set1_ps(20.0f);
    __m512 e = ryz_exp_avx512(_mm512_min_ps(x, lim));
    __m512 y = _mm512_add_ps(one, e);
    __m512 r = _mm512_sub_ps(log16_ge1(y), _mm512_div_ps(_mm512_sub_ps(_mm512_sub_ps(y, one), e), y));
    __mmask16 keep = _mm512_cmp_ps_mask(x, lim, _CMP_GT_OQ) | _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_mov_ps(r, keep, x);
}

/* Mamba's N <= 16: 16 channels at a time, so softplus(dt), u and silu(z) are vector
 * operations across channels; each channel's state is one register-sized row of hb,
 * B[t] and C[t] are loaded once per token for all 16 channels. */
static void scan_small(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                       const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A,
                       const float *RYZ_RESTRICT B, const float *RYZ_RESTRICT C,
                       const float *RYZ_RESTRICT Dskip, const float *RYZ_RESTRICT z, int64_t T,
                       int64_t D, int64_t N, int64_t c0, int64_t c1) {
    const __mmask16 mn = ryz_tail16(N);
    for (int64_t c = c0; c < c1; c += 16) {
        const int64_t cb = c1 - c < 16 ? c1 - c : 16;
        const __mmask16 mc = ryz_tail16(cb);
        __m512 hv[16], av[16];
        for (int64_t cc = 0; cc < cb; cc++) {
            hv[cc] = _mm512_maskz_loadu_ps(mn, h + (c + cc) * N);
            av[cc] = _mm512_maskz_loadu_ps(mn, A + (c + cc) * N);
        }
        const __m512 dsk = ryz_ld16(Dskip + c, mc);
        float dd[16], uu[16], yy[16];
        for (int64_t t = 0; t < T; t++) {
            __m512 uv = ryz_ld16(u + t * D + c, mc);
            _mm512_storeu_ps(dd, softplus16(ryz_ld16(dt + t * D + c, mc)));
            _mm512_storeu_ps(uu, uv);
            const __m512 Bt = _mm512_maskz_loadu_ps(mn, B + t * N), Ct = _mm512_maskz_loadu_ps(mn, C + t * N);
            for (int64_t cc = 0; cc < cb; cc++) {
                __m512 dv = _mm512_set1_ps(dd[cc]);
                __m512 dA = ryz_exp_avx512(_mm512_mul_ps(av[cc], dv));
                __m512 dBu = _mm512_mul_ps(_mm512_mul_ps(dv, Bt), _mm512_set1_ps(uu[cc]));
                hv[cc] = _mm512_add_ps(_mm512_mul_ps(dA, hv[cc]), dBu);
                yy[cc] = _mm512_reduce_add_ps(_mm512_mul_ps(hv[cc], Ct));
            }
            /* y = (h @ C + u * D) * silu(z), as the slow path: the add, then the gate */
            __m512 yv = _mm512_add_ps(_mm512_maskz_loadu_ps(mc, yy), _mm512_mul_ps(uv, dsk));
            if (z) yv = _mm512_mul_ps(yv, silu16(ryz_ld16(z + t * D + c, mc)));
            ryz_st16(y + t * D + c, mc, yv);
        }
        for (int64_t cc = 0; cc < cb; cc++) _mm512_mask_storeu_ps(h + (c + cc) * N, mn, hv[cc]);
    }
}

static void scan(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                 const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A, const float *RYZ_RESTRICT B,
                 const float *RYZ_RESTRICT C, const float *RYZ_RESTRICT Dskip,
                 const float *RYZ_RESTRICT z, int64_t T, int64_t D, int64_t N, int64_t c0, int64_t c1) {
    if (N <= 16) {
        scan_small(y, h, u, dt, A, B, C, Dskip, z, T, D, N, c0, c1);
        return;
    }
    for (int64_t c = c0; c < c1; c++) {
        float *hc = h + c * N;
        const float *Ac = A + c * N;
        {
            for (int64_t t = 0; t < T; t++) {
                float d = ryz_softplus(dt[t * D + c]), uc = u[t * D + c];
                __m512 dv = _mm512_set1_ps(d), uv = _mm512_set1_ps(uc), acc = _mm512_setzero_ps();
                for (int64_t n = 0; n < N; n += 16) {
                    __mmask16 m = ryz_tail16(N - n);
                    __m512 dA = ryz_exp_avx512(_mm512_mul_ps(ryz_ld16(Ac + n, m), dv));
                    __m512 dBu = _mm512_mul_ps(_mm512_mul_ps(dv, ryz_ld16(B + t * N + n, m)), uv);
                    __m512 hv = _mm512_add_ps(_mm512_mul_ps(dA, ryz_ld16(hc + n, m)), dBu);
                    ryz_st16(hc + n, m, hv);
                    acc = _mm512_fmadd_ps(hv, ryz_ld16(C + t * N + n, m), acc);
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
        __m512 a = ryz_ld16(aa + c, m), b = ryz_ld16(bb + c, m);
        __m512 p = ryz_ld16(pp + c, m), u = ryz_ld16(time_first + c, m);
        __m512 w = _mm512_sub_ps(_mm512_setzero_ps(), ryz_exp_avx512(ryz_ld16(time_decay + c, m)));
        for (int64_t t = 0; t < T; t++) {
            __m512 kt = ryz_ld16(k + t * A + c, m), vt = ryz_ld16(v + t * A + c, m);
            __m512 uk = _mm512_add_ps(u, kt);
            __m512 q = _mm512_max_ps(p, uk);
            __m512 e1 = ryz_exp_avx512(_mm512_sub_ps(p, q)), e2 = ryz_exp_avx512(_mm512_sub_ps(uk, q));
            __m512 num = _mm512_add_ps(_mm512_mul_ps(e1, a), _mm512_mul_ps(e2, vt));
            __m512 den = _mm512_add_ps(_mm512_mul_ps(e1, b), e2);
            /* masked lanes: den = 1*0 + exp(0) = 1, so no 0/0 there */
            ryz_st16(out + t * A + c, m, _mm512_div_ps(num, den));
            __m512 pw = _mm512_add_ps(p, w);
            __m512 q2 = _mm512_max_ps(pw, kt);
            e1 = ryz_exp_avx512(_mm512_sub_ps(pw, q2));
            e2 = ryz_exp_avx512(_mm512_sub_ps(kt, q2));
            a = _mm512_add_ps(_mm512_mul_ps(e1, a), _mm512_mul_ps(e2, vt));
            b = _mm512_add_ps(_mm512_mul_ps(e1, b), e2);
            p = q2;
        }
        ryz_st16(aa + c, m, a);
        ryz_st16(bb + c, m, b);
        ryz_st16(pp + c, m, p);
    }
}

const ryz_recurrent_kernels ryz_recurrent_avx512 = {
    .name = "avx512vnni",
    .conv1d = conv1d,
    .scan = scan,
    .wkv = wkv,
    .wkv7 = ryz_wkv7_avx2, /* no AVX-512 code of its own */
};
