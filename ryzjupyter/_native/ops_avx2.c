/* ops_avx2.c: AVX2+FMA float ops (see ops.h). Tails use masked loads/stores (ryz_ld8/
 * ryz_st8 in ops.h: plain ones for whole vectors). */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "ops_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <math.h>

#include "ops.h"

static void rmsnorm_row(float *out, const float *x, const float *RYZ_RESTRICT w, int64_t D,
                        float eps) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= D; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; i < D; i += 8) {
        __m256 v = _mm256_maskload_ps(x + i, ryz_tail8(D - i));
        a0 = _mm256_fmadd_ps(v, v, a0);
    }
    float ss = ryz_hsum_avx2(_mm256_add_ps(a0, a1));
    __m256 r = _mm256_set1_ps(1.0f / sqrtf(ss / (float)D + eps));
    for (i = 0; i + 8 <= D; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r),
                                                _mm256_loadu_ps(w + i)));
    if (i < D) {
        __m256i m = ryz_tail8(D - i);
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, m), r),
                                                      _mm256_maskload_ps(w + i, m)));
    }
}

static void rope_row(float *RYZ_RESTRICT x, int64_t H, int64_t hd, const float *RYZ_RESTRICT cs) {
    int64_t half = hd / 2;
    const float *c = cs, *s = cs + half;
    for (int64_t h = 0; h < H; h++) {
        float *x1 = x + h * hd, *x2 = x1 + half;
        for (int64_t j = 0; j < half; j += 8) {
            const int64_t m = half - j;
            __m256 a = ryz_ld8(x1 + j, m), b = ryz_ld8(x2 + j, m);
            __m256 vc = ryz_ld8(c + j, m), vs = ryz_ld8(s + j, m);
            /* separate multiplies and add, as torch computes q*cos + rotate_half(q)*sin */
            ryz_st8(x1 + j, m, _mm256_sub_ps(_mm256_mul_ps(a, vc), _mm256_mul_ps(b, vs)));
            ryz_st8(x2 + j, m, _mm256_add_ps(_mm256_mul_ps(b, vc), _mm256_mul_ps(a, vs)));
        }
    }
}

static void softmax_row(float *RYZ_RESTRICT x, int64_t N) {
    if (N <= 0) return;
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 vm = ninf, vnan = _mm256_setzero_ps();
    for (int64_t i = 0; i < N; i += 8) {
        __m256 v = N - i >= 8 ? _mm256_loadu_ps(x + i)
                              : _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, ryz_tail8(N - i)),
                                                 _mm256_castsi256_ps(ryz_tail8(N - i)));
        vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        vm = _mm256_max_ps(vm, v);
    }
    float mx = _mm256_movemask_ps(vnan) ? NAN : ryz_hmax_avx2(vm);
    if (mx == -INFINITY) {
        for (int64_t i = 0; i < N; i++) x[i] = 0.0f;
        return;
    }
    __m256 vmx = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
    for (int64_t i = 0; i < N; i += 8) {
        const int64_t m = N - i;
        __m256 e = ryz_exp_avx2(_mm256_sub_ps(ryz_ld8(x + i, m), vmx));
        if (m < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(ryz_tail8(m)));
        vs = _mm256_add_ps(vs, e);
        ryz_st8(x + i, m, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / ryz_hsum_avx2(vs));
    for (int64_t i = 0; i < N; i += 8) {
        const int64_t m = N - i;
        ryz_st8(x + i, m, _mm256_mul_ps(ryz_ld8(x + i, m), inv));
    }
}

static void silu(float *out, const float *x, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const int64_t m = n - i;
        __m256 v = ryz_ld8(x + i, m);
        __m256 e = ryz_exp_avx2(_mm256_xor_ps(v, sign));
        ryz_st8(out + i, m, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
}

static void relu2(float *out, const float *x, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        const int64_t m = n - i;
        __m256 r = _mm256_max_ps(zero, ryz_ld8(x + i, m)); /* NaN passes (2nd operand) */
        ryz_st8(out + i, m, _mm256_mul_ps(r, r));
    }
}

static void mul(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    if (i < n) {
        const int64_t m = n - i;
        ryz_st8(out + i, m, _mm256_mul_ps(ryz_ld8(a + i, m),
                                                      ryz_ld8(b + i, m)));
    }
}

static void add(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    if (i < n) {
        const int64_t m = n - i;
        ryz_st8(out + i, m, _mm256_add_ps(ryz_ld8(a + i, m),
                                                      ryz_ld8(b + i, m)));
    }
}

/* LayerNorm: sum, then the sum of squares of the centred row, then the affine output */
void ryz_layernorm_row_avx2(float *out, const float *x, const float *RYZ_RESTRICT w,
                            const float *RYZ_RESTRICT b, int64_t D, float eps) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= D; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
    }
    for (; i < D; i += 8) a0 = _mm256_add_ps(a0, _mm256_maskload_ps(x + i, ryz_tail8(D - i)));
    const __m256 mu = _mm256_set1_ps(ryz_hsum_avx2(_mm256_add_ps(a0, a1)) / (float)D);
    a0 = _mm256_setzero_ps();
    a1 = _mm256_setzero_ps();
    for (i = 0; i + 16 <= D; i += 16) {
        __m256 v0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), mu), v1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mu);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; i < D; i += 8) {
        __m256i m = ryz_tail8(D - i);
        __m256 v = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), mu), _mm256_castsi256_ps(m));
        a0 = _mm256_fmadd_ps(v, v, a0);
    }
    const float ss = ryz_hsum_avx2(_mm256_add_ps(a0, a1));
    const __m256 r = _mm256_set1_ps(1.0f / sqrtf(ss / (float)D + eps));
    for (i = 0; i < D; i += 8) {
        const int64_t m = D - i;
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(ryz_ld8(x + i, m), mu), r);
        ryz_st8(out + i, m, _mm256_fmadd_ps(v, ryz_ld8(w + i, m), ryz_ld8(b + i, m)));
    }
}

/* exact GELU with erf(z) = sign(z) (1 - poly(t) exp(-z^2)), t = 1 / (1 + p |z|)
 * (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7) */
void ryz_gelu_avx2(float *out, const float *x, int64_t n) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256 rs2 = _mm256_set1_ps(0.70710678118654752f), p = _mm256_set1_ps(0.3275911f);
    const __m256 a1 = _mm256_set1_ps(0.254829592f), a2 = _mm256_set1_ps(-0.284496736f),
                 a3 = _mm256_set1_ps(1.421413741f), a4 = _mm256_set1_ps(-1.453152027f),
                 a5 = _mm256_set1_ps(1.061405429f);
    for (int64_t i = 0; i < n; i += 8) {
        const int64_t m = n - i;
        const __m256 v = ryz_ld8(x + i, m);
        const __m256 z = _mm256_mul_ps(v, rs2);
        const __m256 az = _mm256_andnot_ps(sign, z);
        const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(p, az, one));
        __m256 y = _mm256_fmadd_ps(a5, t, a4);
        y = _mm256_fmadd_ps(y, t, a3);
        y = _mm256_fmadd_ps(y, t, a2);
        y = _mm256_fmadd_ps(y, t, a1);
        y = _mm256_mul_ps(y, t);
        const __m256 e = ryz_exp_avx2(_mm256_xor_ps(_mm256_mul_ps(az, az), sign));
        __m256 erf = _mm256_fnmadd_ps(y, e, one);                  /* erf(|z|) */
        erf = _mm256_or_ps(erf, _mm256_and_ps(z, sign));            /* sign of z */
        ryz_st8(out + i, m, _mm256_mul_ps(_mm256_mul_ps(v, half), _mm256_add_ps(one, erf)));
    }
}

const ryz_ops_kernels ryz_ops_avx2 = {
    .name = "avx2",
    .rmsnorm_row = rmsnorm_row,
    .rope_row = rope_row,
    .softmax_row = softmax_row,
    .silu = silu,
    .relu2 = relu2,
    .mul = mul,
    .add = add,
    .layernorm_row = ryz_layernorm_row_avx2,
    .gelu = ryz_gelu_avx2,
    .encoder_name = "avx2",
};
