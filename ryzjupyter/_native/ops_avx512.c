/* ops_avx512.c: AVX-512F float ops (see ops.h). Tails use masked loads/stores, so
 * a row is computed by one code path whatever its length; whole vectors use plain
 * loads and stores (ryz_ld16/ryz_st16 in ops.h). */
#if !defined(__AVX512F__)
#error "ops_avx512.c must be compiled with -mavx512f"
#endif
#include <immintrin.h>
#include <math.h>

#include "ops.h"

static void rmsnorm_row(float *out, const float *x, const float *RYZ_RESTRICT w, int64_t D,
                        float eps) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= D; i += 32) {
        __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        a0 = _mm512_fmadd_ps(v0, v0, a0);
        a1 = _mm512_fmadd_ps(v1, v1, a1);
    }
    for (; i < D; i += 16) {
        __m512 v = ryz_ld16(x + i, ryz_tail16(D - i));
        a0 = _mm512_fmadd_ps(v, v, a0);
    }
    float ss = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    __m512 r = _mm512_set1_ps(1.0f / sqrtf(ss / (float)D + eps));
    for (i = 0; i < D; i += 16) {
        __mmask16 m = ryz_tail16(D - i);
        ryz_st16(out + i, m, _mm512_mul_ps(_mm512_mul_ps(ryz_ld16(x + i, m), r),
                                                        ryz_ld16(w + i, m)));
    }
}

static void rope_row(float *RYZ_RESTRICT x, int64_t H, int64_t hd, const float *RYZ_RESTRICT cs) {
    int64_t half = hd / 2;
    const float *c = cs, *s = cs + half;
    for (int64_t h = 0; h < H; h++) {
        float *x1 = x + h * hd, *x2 = x1 + half;
        for (int64_t j = 0; j < half; j += 16) {
            __mmask16 m = ryz_tail16(half - j);
            __m512 a = ryz_ld16(x1 + j, m), b = ryz_ld16(x2 + j, m);
            __m512 vc = ryz_ld16(c + j, m), vs = ryz_ld16(s + j, m);
            /* separate multiplies and add, as torch computes q*cos + rotate_half(q)*sin */
            ryz_st16(x1 + j, m, _mm512_sub_ps(_mm512_mul_ps(a, vc), _mm512_mul_ps(b, vs)));
            ryz_st16(x2 + j, m, _mm512_add_ps(_mm512_mul_ps(b, vc), _mm512_mul_ps(a, vs)));
        }
    }
}

static void softmax_row(float *RYZ_RESTRICT x, int64_t N) {
    if (N <= 0) return;
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 vm = ninf;
    __mmask16 nan = 0;
    for (int64_t i = 0; i < N; i += 16) {
        __mmask16 m = ryz_tail16(N - i);
        __m512 v = m == 0xffff ? _mm512_loadu_ps(x + i) : _mm512_mask_loadu_ps(ninf, m, x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        vm = _mm512_max_ps(vm, v);
    }
    float mx = nan ? NAN : _mm512_reduce_max_ps(vm);
    if (mx == -INFINITY) {
        for (int64_t i = 0; i < N; i++) x[i] = 0.0f;
        return;
    }
    __m512 vmx = _mm512_set1_ps(mx), vs = _mm512_setzero_ps();
    for (int64_t i = 0; i < N; i += 16) {
        __mmask16 m = ryz_tail16(N - i);
        __m512 e = ryz_exp_avx512(_mm512_sub_ps(ryz_ld16(x + i, m), vmx));
        vs = _mm512_mask_add_ps(vs, m, vs, e);
        ryz_st16(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (int64_t i = 0; i < N; i += 16) {
        __mmask16 m = ryz_tail16(N - i);
        ryz_st16(x + i, m, _mm512_mul_ps(ryz_ld16(x + i, m), inv));
    }
}

static void silu(float *out, const float *x, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = ryz_tail16(n - i);
        __m512 v = ryz_ld16(x + i, m);
        __m512 e = ryz_exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        ryz_st16(out + i, m, _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
}

static void relu2(float *out, const float *x, int64_t n) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = ryz_tail16(n - i);
        __m512 r = _mm512_max_ps(zero, ryz_ld16(x + i, m)); /* NaN passes (2nd operand) */
        ryz_st16(out + i, m, _mm512_mul_ps(r, r));
    }
}

static void mul(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = ryz_tail16(n - i);
        ryz_st16(out + i, m, _mm512_mul_ps(ryz_ld16(a + i, m),
                                                        ryz_ld16(b + i, m)));
    }
}

static void add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = ryz_tail16(n - i);
        ryz_st16(out + i, m, _mm512_add_ps(ryz_ld16(a + i, m),
                                                        ryz_ld16(b + i, m)));
    }
}

const ryz_ops_kernels ryz_ops_avx512 = {
    .name = "avx512vnni",
    .rmsnorm_row = rmsnorm_row,
    .rope_row = rope_row,
    .softmax_row = softmax_row,
    .silu = silu,
    .relu2 = relu2,
    .mul = mul,
    .add = add,
    /* LayerNorm and GELU (the encoder's): the AVX2 variants; this level has none of its own */
    .layernorm_row = ryz_layernorm_row_avx2,
    .gelu = ryz_gelu_avx2,
    .encoder_name = "avx2",
};
