/* recurrent_avx2.c: AVX2+FMA Mamba conv1d / selective scan and RWKV-4 WKV (see
 * recurrent.h). conv1d, wkv and the scan run 8 channels at a time (vector softplus and
 * silu across channels; the scan's state rows in vectors of 8). */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "recurrent_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <math.h>

#include "ops.h"
#include "recurrent.h"


static inline __m256 silu8(__m256 x) {
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), ryz_exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static void conv1d(float *RYZ_RESTRICT out, float *RYZ_RESTRICT state, const float *RYZ_RESTRICT x,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT bias, int64_t T, int64_t D,
                   int64_t K, int64_t c0, int64_t c1) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = c0; c < c1; c += 8) {
        const int64_t m = c1 - c;
        __m256 mf = _mm256_castsi256_ps(ryz_tail8(m));
        __m256i rowidx = _mm256_mullo_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32((int)c)),
                                            _mm256_set1_epi32((int)K));
        __m256 wv[RYZ_CONV_MAX_K];
        for (int64_t j = 0; j < K; j++)
            wv[j] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), w,
                                             _mm256_add_epi32(rowidx, _mm256_set1_epi32((int)j)), mf, 4);
        __m256 bv = bias ? ryz_ld8(bias + c, m) : _mm256_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t j = 0; j < K; j++) {
                int64_t s = t - (K - 1) + j;
                __m256 xv = s >= 0 ? ryz_ld8(x + s * D + c, m)
                                   : _mm256_mask_i32gather_ps(_mm256_setzero_ps(), state,
                                         _mm256_add_epi32(rowidx, _mm256_set1_epi32((int)(K + s))), mf, 4);
                acc = _mm256_fmadd_ps(wv[j], xv, acc);
            }
            ryz_st8(out + t * D + c, m, silu8(_mm256_add_ps(acc, bv)));
        }
        int64_t ce = c + 8 < c1 ? c + 8 : c1;
        for (int64_t cc = c; cc < ce; cc++) ryz_conv_state_update(state + cc * K, x, T, D, K, cc);
    }
}

/* log(y) for y >= 1 (finite): Cephes logf with the mantissa in [sqrt(1/2), sqrt(2)) */
static inline __m256 log8_ge1(__m256 y) {
    __m256i bits = _mm256_castps_si256(y);
    __m256 k = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                   _mm256_set1_epi32(0x3f800000))); /* [1, 2) */
    __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    k = _mm256_add_ps(k, _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
    __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f)), z = _mm256_mul_ps(f, f);
    __m256 p = _mm256_set1_ps(7.0376836292e-2f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.1514610310e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.1676998740e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.2420140846e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.4249322787e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.6668057665e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0000714765e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-2.4999993993e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(3.3333331174e-1f));
    __m256 r = _mm256_mul_ps(_mm256_mul_ps(p, f), z);
    r = _mm256_fmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    r = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), r);
    r = _mm256_add_ps(f, r);
    return _mm256_fmadd_ps(k, _mm256_set1_ps(0.693359375f), r);
}

/* torch softplus (threshold 20): x > 20 ? x : log1p(exp(x)), log1p(e) computed as
 * log(1+e) - ((1+e)-1-e)/(1+e) so that tiny e keep full relative precision */
static inline __m256 softplus8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f), lim = _mm256_set1_ps(20.0f);
    __m256 e = ryz_exp_avx2(_mm256_min_ps(x, lim));
    __m256 y = _mm256_add_ps(one, e);
    __m256 r = _mm256_sub_ps(log8_ge1(y), _mm256_div_ps(_mm256_sub_ps(_mm256_sub_ps(y, one), e), y));
    __m256 keep = _mm256_or_ps(_mm256_cmp_ps(x, lim, _CMP_GT_OQ), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    return _mm256_blendv_ps(r, x, keep);
}

/* 8 channels at a time: softplus(dt), u and silu(z) are vector operations across
 * channels; each channel's state row (N floats, in L1) is updated in vectors of 8, with
 * B[t] and C[t] shared by the 8 channels. */
static void scan(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                 const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A, const float *RYZ_RESTRICT B,
                 const float *RYZ_RESTRICT C, const float *RYZ_RESTRICT Dskip,
                 const float *RYZ_RESTRICT z, int64_t T, int64_t D, int64_t N, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += 8) {
        const int64_t cb = c1 - c < 8 ? c1 - c : 8;
        const __m256 dsk = ryz_ld8(Dskip + c, cb);
        float dd[8], uu[8], yy[8];
        for (int64_t t = 0; t < T; t++) {
            __m256 uv = ryz_ld8(u + t * D + c, cb);
            _mm256_storeu_ps(dd, softplus8(ryz_ld8(dt + t * D + c, cb)));
            _mm256_storeu_ps(uu, uv);
            for (int64_t cc = 0; cc < cb; cc++) {
                float *hc = h + (c + cc) * N;
                const float *Ac = A + (c + cc) * N;
                __m256 dv = _mm256_set1_ps(dd[cc]), ucv = _mm256_set1_ps(uu[cc]), acc = _mm256_setzero_ps();
                for (int64_t n = 0; n < N; n += 8) {
                    const int64_t m = N - n;
                    __m256 dA = ryz_exp_avx2(_mm256_mul_ps(ryz_ld8(Ac + n, m), dv));
                    __m256 dBu = _mm256_mul_ps(_mm256_mul_ps(dv, ryz_ld8(B + t * N + n, m)), ucv);
                    __m256 hv = _mm256_add_ps(_mm256_mul_ps(dA, ryz_ld8(hc + n, m)), dBu);
                    ryz_st8(hc + n, m, hv);
                    acc = _mm256_fmadd_ps(hv, ryz_ld8(C + t * N + n, m), acc);
                }
                yy[cc] = ryz_hsum_avx2(acc);
            }
            /* y = (h @ C + u * D) * silu(z), as the slow path: the add, then the gate */
            __m256 yv = _mm256_add_ps(ryz_ld8(yy, cb), _mm256_mul_ps(uv, dsk));
            if (z) yv = _mm256_mul_ps(yv, silu8(ryz_ld8(z + t * D + c, cb)));
            ryz_st8(y + t * D + c, cb, yv);
        }
    }
}

static void wkv(float *RYZ_RESTRICT out, float *RYZ_RESTRICT aa, float *RYZ_RESTRICT bb,
                float *RYZ_RESTRICT pp, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                const float *RYZ_RESTRICT time_decay, const float *RYZ_RESTRICT time_first, int64_t T,
                int64_t A, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c += 8) {
        const int64_t m = c1 - c;
        __m256 a = ryz_ld8(aa + c, m), b = ryz_ld8(bb + c, m);
        __m256 p = ryz_ld8(pp + c, m), u = ryz_ld8(time_first + c, m);
        __m256 w = _mm256_sub_ps(_mm256_setzero_ps(), ryz_exp_avx2(ryz_ld8(time_decay + c, m)));
        for (int64_t t = 0; t < T; t++) {
            __m256 kt = ryz_ld8(k + t * A + c, m), vt = ryz_ld8(v + t * A + c, m);
            __m256 uk = _mm256_add_ps(u, kt);
            __m256 q = _mm256_max_ps(p, uk);
            __m256 e1 = ryz_exp_avx2(_mm256_sub_ps(p, q)), e2 = ryz_exp_avx2(_mm256_sub_ps(uk, q));
            __m256 num = _mm256_add_ps(_mm256_mul_ps(e1, a), _mm256_mul_ps(e2, vt));
            __m256 den = _mm256_add_ps(_mm256_mul_ps(e1, b), e2);
            ryz_st8(out + t * A + c, m, _mm256_div_ps(num, den));
            __m256 pw = _mm256_add_ps(p, w);
            __m256 q2 = _mm256_max_ps(pw, kt);
            e1 = ryz_exp_avx2(_mm256_sub_ps(pw, q2));
            e2 = ryz_exp_avx2(_mm256_sub_ps(kt, q2));
            a = _mm256_add_ps(_mm256_mul_ps(e1, a), _mm256_mul_ps(e2, vt));
            b = _mm256_add_ps(_mm256_mul_ps(e1, b), e2);
            p = q2;
        }
        ryz_st8(aa + c, m, a);
        ryz_st8(bb + c, m, b);
        ryz_st8(pp + c, m, p);
    }
}

static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

void ryz_wkv7_avx2(float *RYZ_RESTRICT out, float *RYZ_RESTRICT S, const float *RYZ_RESTRICT r,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                   const float *RYZ_RESTRICT a, const float *RYZ_RESTRICT b, int64_t T, int64_t H, int64_t N,
                   int64_t h0, int64_t h1) {
    int64_t C = H * N, N8 = N / 8 * 8;
    for (int64_t h = h0; h < h1; h++) {
        float *st = S + h * N * N;
        for (int64_t t = 0; t < T; t++) {
            int64_t o = t * C + h * N;
            const float *ar = a + o, *br = b + o, *wr = w + o, *kr = k + o, *rr = r + o;
            for (int64_t i = 0; i < N; i++) {
                float *row = st + i * N;
                __m256 s8 = _mm256_setzero_ps();
                int64_t j = 0;
                for (; j < N8; j += 8) s8 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(ar + j), s8);
                float sa = hsum8(s8);
                for (; j < N; j++) sa += row[j] * ar[j];
                __m256 vsa = _mm256_set1_ps(sa), vv = _mm256_set1_ps(v[o + i]), acc = _mm256_setzero_ps();
                for (j = 0; j < N8; j += 8) {
                    __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(wr + j));
                    x = _mm256_fmadd_ps(vsa, _mm256_loadu_ps(br + j), x);
                    x = _mm256_fmadd_ps(vv, _mm256_loadu_ps(kr + j), x);
                    _mm256_storeu_ps(row + j, x);
                    acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(rr + j), acc);
                }
                float o1 = hsum8(acc);
                for (; j < N; j++) {
                    float x = row[j] * wr[j] + sa * br[j] + v[o + i] * kr[j];
                    row[j] = x;
                    o1 += x * rr[j];
                }
                out[o + i] = o1;
            }
        }
    }
}

const ryz_recurrent_kernels ryz_recurrent_avx2 = {
    .name = "avx2",
    .conv1d = conv1d,
    .scan = scan,
    .wkv = wkv,
    .wkv7 = ryz_wkv7_avx2,
};
