/* ops.h: float32 element-wise and row operations of the transformer block.
 *
 * Numerics follow transformers (float32 everywhere):
 *   rmsnorm  var = sum(x^2)/D (fp32), r = 1/sqrt(var + eps), out = (x * r) * w
 *   rope     x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin  (half split, rotate_half);
 *            cos/sin come precomputed per row (see py_ops.c for how, as torch does)
 *   softmax  m = max(x), e = exp(x - m), x = e * (1/sum(e)); a row that is all -inf
 *            becomes all zeros (torch gives NaN there); NaN / +inf entries give NaN
 *   silu     x / (1 + exp(-x));  relu2  max(x, 0)^2;  mul a*b;  add a+b
 *   layernorm  mu = sum(x)/D, var = sum((x - mu)^2)/D (two passes, fp32),
 *            out = (x - mu) * (1/sqrt(var + eps)) * w + b   (BERT's post-LN blocks)
 *   gelu     x * 0.5 * (1 + erf(x / sqrt(2)))  (the exact GELU of BERT / torch's default);
 *            the reference uses libm erff, the AVX2 variant erf from Abramowitz & Stegun
 *            7.1.26 (|error| <= 1.5e-7 in erf), so gelu differs by <= 1e-7 * |x| + 1 ulp
 * Element-wise kernels take no restrict on out: out may be exactly a (or b).
 *
 * The vector exp used by every float family (ops, attention, recurrent) lives
 * here too, as static inline functions compiled only inside the ISA files. */
#ifndef RYZ_OPS_H
#define RYZ_OPS_H
#include "ryz.h"

typedef struct {
    const char *name;
    void (*rmsnorm_row)(float *out, const float *x, const float *RYZ_RESTRICT w, int64_t D,
                        float eps);
    /* rotate H heads of hd floats in place; cs = cos[hd/2] followed by sin[hd/2] */
    void (*rope_row)(float *RYZ_RESTRICT x, int64_t H, int64_t hd, const float *RYZ_RESTRICT cs);
    void (*softmax_row)(float *RYZ_RESTRICT x, int64_t N);
    void (*silu)(float *out, const float *x, int64_t n);
    void (*relu2)(float *out, const float *x, int64_t n);
    void (*mul)(float *out, const float *a, const float *b, int64_t n);
    void (*add)(float *out, const float *a, const float *b, int64_t n);
    void (*layernorm_row)(float *out, const float *x, const float *RYZ_RESTRICT w,
                          const float *RYZ_RESTRICT b, int64_t D, float eps);
    void (*gelu)(float *out, const float *x, int64_t n);
    const char *encoder_name; /* the variant layernorm and gelu are (avx512vnni uses AVX2's) */
} ryz_ops_kernels;

/* the AVX2 layernorm / gelu (ops_avx2.c), also the AVX-512 level's */
void ryz_layernorm_row_avx2(float *out, const float *x, const float *RYZ_RESTRICT w,
                            const float *RYZ_RESTRICT b, int64_t D, float eps);
void ryz_gelu_avx2(float *out, const float *x, int64_t n);

extern const ryz_ops_kernels ryz_ops_scalar;
extern const ryz_ops_kernels ryz_ops_avx2;
extern const ryz_ops_kernels ryz_ops_avx512;
extern const ryz_ops_kernels *ryz_ops;

/* ---- vector exp (Cephes expf polynomial, ~1-2 ulp on normal results) ------------
 * x is clamped to [-104, 89] first so the reduction stays finite; results below
 * the float range flush to 0 (so exp(-inf) = 0), above it give +inf, NaN stays NaN. */
#define RYZ_EXP_LO (-104.0f)
#define RYZ_EXP_HI 89.0f
#define RYZ_EXP_C1 0.693359375f
#define RYZ_EXP_C2 (-2.12194440e-4f)
#define RYZ_EXP_P0 1.9875691500e-4f
#define RYZ_EXP_P1 1.3981999507e-3f
#define RYZ_EXP_P2 8.3334519073e-3f
#define RYZ_EXP_P3 4.1665795894e-2f
#define RYZ_EXP_P4 1.6666665459e-1f
#define RYZ_EXP_P5 5.0000001201e-1f

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
static inline __m256 ryz_exp_avx2(__m256 x0) {
    __m256 x = _mm256_min_ps(_mm256_max_ps(x0, _mm256_set1_ps(RYZ_EXP_LO)), _mm256_set1_ps(RYZ_EXP_HI));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(RYZ_EXP_C1), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(RYZ_EXP_C2), x);
    __m256 y = _mm256_set1_ps(RYZ_EXP_P0);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(RYZ_EXP_P1));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(RYZ_EXP_P2));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(RYZ_EXP_P3));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(RYZ_EXP_P4));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(RYZ_EXP_P5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    /* 2^n in two factors so that n in [-150, 129] never leaves the normal exponents */
    __m256i n = _mm256_cvtps_epi32(fx);
    __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    y = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    y = _mm256_andnot_ps(_mm256_cmp_ps(x0, _mm256_set1_ps(-103.5f), _CMP_LT_OQ), y); /* -> 0 */
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()),
                         _mm256_cmp_ps(x0, _mm256_set1_ps(88.8f), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q)); /* NaN stays */
}
static inline __m256i ryz_tail8(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? (left < 0 ? 0 : left) : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* plain load/store for whole vectors, vmaskmov (slow on AMD, microcoded store) for tails */
static inline __m256 ryz_ld8(const float *p, int64_t left) {
    return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, ryz_tail8(left));
}
static inline void ryz_st8(float *p, int64_t left, __m256 v) {
    if (left >= 8)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, ryz_tail8(left), v);
}
static inline float ryz_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float ryz_hmax_avx2(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
static inline __m512 ryz_exp_avx512(__m512 x0) {
    __m512 x = _mm512_min_ps(_mm512_max_ps(x0, _mm512_set1_ps(RYZ_EXP_LO)), _mm512_set1_ps(RYZ_EXP_HI));
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(RYZ_EXP_C1), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(RYZ_EXP_C2), x);
    __m512 y = _mm512_set1_ps(RYZ_EXP_P0);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(RYZ_EXP_P1));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(RYZ_EXP_P2));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(RYZ_EXP_P3));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(RYZ_EXP_P4));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(RYZ_EXP_P5));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    y = _mm512_scalef_ps(y, fx); /* y * 2^fx: overflows to inf, underflows to 0 */
    y = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(-103.5f), _CMP_GE_OQ) |
                                _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q), y);
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q), x0);
}
static inline __mmask16 ryz_tail16(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}
/* Load/store under a tail mask, plain when the mask is full: masked loads that miss
 * the cache stream several times slower on Zen 4 (measured 4x in attention at 20k rows). */
static inline __m512 ryz_ld16(const float *p, __mmask16 m) {
    return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
static inline void ryz_st16(float *p, __mmask16 m, __m512 v) {
    if (m == 0xffff)
        _mm512_storeu_ps(p, v);
    else
        _mm512_mask_storeu_ps(p, m, v);
}
#endif

#endif /* RYZ_OPS_H */
