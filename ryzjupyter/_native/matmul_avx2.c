/* matmul_avx2.c: AVX2 int8 (sign-extend to int16 + vpmaddwd, exact) and FMA float32
 * products; tiles of up to 2 rows x 2 tokens, scalar K tail. */
#if !defined(__AVX2__) || !defined(__FMA__)
#error "matmul_avx2.c must be compiled with -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <string.h>

#include "matmul.h"
#include "ops.h"

#define TOK_BLOCK 64
#define ALWAYS_INLINE inline __attribute__((always_inline))

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static ALWAYS_INLINE void tile_i8(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const int64_t K = j->K, K16 = K / 16 * 16;
    __m256i acc[2][2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K16; k += 16) {
        __m256i wv[2], xv[2];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
            wv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(j->wq + (n + r) * K + k)));
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++)
            xv[t] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(j->xq + (m + t) * K + k)));
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++)
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(wv[r], xv[t]));
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) {
            int32_t s = hsum_epi32(acc[r][t]);
            for (int64_t k = K16; k < K; k++) s += (int32_t)j->wq[(n + r) * K + k] * j->xq[(m + t) * K + k];
            j->out[(m + t) * j->ldo + n + r] = ryz_i8_epilogue(s, j->xs[m + t], j->ws[n + r]);
        }
}

static ALWAYS_INLINE void tile_f32(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                   const int NT) {
    const int64_t K = j->K, K8 = K / 8 * 8;
    __m256 acc[2][2];
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
        __m256 wv[2], xv[2];
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++) wv[r] = _mm256_loadu_ps(j->w + (n + r) * K + k);
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps(j->x + (m + t) * K + k);
#pragma GCC unroll 2
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv[t], acc[r][t]);
    }
#pragma GCC unroll 2
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) {
            float s = hsum_ps(acc[r][t]);
            for (int64_t k = K8; k < K; k++) s += j->w[(n + r) * K + k] * j->x[(m + t) * K + k];
            j->out[(m + t) * j->ldo + n + r] = s;
        }
}

typedef void (*tile_fn)(const ryz_matmul_job *, int64_t, int64_t);
#define TILE(KIND, NR, NT) static void KIND##_##NR##x##NT(const ryz_matmul_job *j, int64_t n, int64_t m) \
    { tile_##KIND(j, n, m, NR, NT); }
TILE(i8, 1, 1) TILE(i8, 1, 2) TILE(i8, 2, 1) TILE(i8, 2, 2)
TILE(f32, 1, 1) TILE(f32, 1, 2) TILE(f32, 2, 1) TILE(f32, 2, 2)
static const tile_fn tiles_i8[2][2] = {{i8_1x1, i8_1x2}, {i8_2x1, i8_2x2}};
static const tile_fn tiles_f32[2][2] = {{f32_1x1, f32_1x2}, {f32_2x1, f32_2x2}};

static void run_tiles(const tile_fn tiles[2][2], const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < j->M; m0 += TOK_BLOCK) {
        int64_t m1 = m0 + TOK_BLOCK < j->M ? m0 + TOK_BLOCK : j->M;
        for (int64_t n = n0; n < n1; n += 2) {
            int nr = n1 - n < 2 ? (int)(n1 - n) : 2;
            for (int64_t m = m0; m < m1; m += 2) {
                int nt = m1 - m < 2 ? (int)(m1 - m) : 2;
                tiles[nr - 1][nt - 1](j, n, m);
            }
        }
    }
}

static void i8(const ryz_matmul_job *j, int64_t n0, int64_t n1) { run_tiles(tiles_i8, j, n0, n1); }
/* One token (a decode GEMV): row after row, each with four independent sums over k (32 floats a
 * step), so the weights stream as one contiguous read, the access pattern of the read probe (W is
 * [N, K] row-major: row n + 1 follows row n). Tiles of 2 rows read two streams 4*K bytes apart
 * and chained one FMA per 4 cycles per row: ~50 % of the probe's bandwidth for a 256 MiB GEMV
 * (1 and 2 threads, Zen 4, 2026-12-07). The result of a row does not depend on its neighbours,
 * so any split of the rows between threads gives the same output. */
static void gemv_f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, K32 = K / 32 * 32, K8 = K / 8 * 8;
    const float *x = j->x;
    for (int64_t n = n0; n < n1; n++) {
        const float *w = j->w + n * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K32; k += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
        }
        for (int64_t k = K32; k < K8; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (int64_t k = K8; k < K; k++) s += w[k] * x[k];
        j->out[n] = s;
    }
}

static void f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) { run_tiles(tiles_f32, j, n0, n1); }

/* software prefetch distance of the panels (bytes ahead of the k being read): a one-query
 * encoder call reads each panel once from DRAM, and 4 KB ahead took its time from 6.2 to 4.8 ms
 * (float32) and 4.7 to 3.7 ms (float16) on one Zen 4 core; for long inputs the panel is in L1
 * after its first tile and the prefetch costs one instruction per 12 FMAs */
#define GEMM_PF_BYTES 4096
/* gemm_f32: ROWS rows of x x one 16-wide panel over k in [k0, k1); acc starts from the bias
 * (first K block) or from out (later blocks), so every output is one FMA chain in k order.
 * F16 (gemm_f16): the panel holds float16 bits, widened by vcvtph2ps (exact) as they are read. */
static ALWAYS_INLINE void gemm_tile(const ryz_gemm_f32_job *j, int64_t m, const void *w, int64_t n0,
                                    int64_t k0, int64_t k1, const int ROWS, const int F16) {
    const float *wp = w;
    const uint16_t *wh = w;
    const int64_t ldx = j->ldx, ldo = j->ldo, left = j->N - n0;
    __m256 acc[6][2];
    float tmp[16];
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; r++) {
        if (k0 == 0) {
            if (j->bias) {
                acc[r][0] = ryz_ld8(j->bias + n0, left);
                acc[r][1] = left > 8 ? ryz_ld8(j->bias + n0 + 8, left - 8) : _mm256_setzero_ps();
            } else {
                acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            }
        } else {
            acc[r][0] = ryz_ld8(j->out + (m + r) * ldo + n0, left);
            acc[r][1] = left > 8 ? ryz_ld8(j->out + (m + r) * ldo + n0 + 8, left - 8) : _mm256_setzero_ps();
        }
    }
    const float *x = j->x + m * ldx;
    for (int64_t k = k0; k < k1; k++) {
        __m256 b0, b1;
        _mm_prefetch((const char *)w + (k * 16) * (F16 ? 2 : 4) + GEMM_PF_BYTES, _MM_HINT_T0);
        if (F16) {
            b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wh + k * 16)));
            b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wh + k * 16 + 8)));
        } else {
            b0 = _mm256_loadu_ps(wp + k * 16);
            b1 = _mm256_loadu_ps(wp + k * 16 + 8);
        }
#pragma GCC unroll 6
        for (int r = 0; r < ROWS; r++) {
            const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; r++) {
        float *o = j->out + (m + r) * ldo + n0;
        if (left >= 16) {
            _mm256_storeu_ps(o, acc[r][0]);
            _mm256_storeu_ps(o + 8, acc[r][1]);
        } else {
            _mm256_storeu_ps(tmp, acc[r][0]);
            _mm256_storeu_ps(tmp + 8, acc[r][1]);
            memcpy(o, tmp, sizeof(float) * (size_t)left);
        }
    }
}

#define GEMM_TILE(R, F16, NAME) static void NAME##_##R(const ryz_gemm_f32_job *j, int64_t m, const void *w, \
                                                   int64_t n0, int64_t k0, int64_t k1) { gemm_tile(j, m, w, n0, k0, k1, R, F16); }
#define GEMM_TILES(F16, NAME) GEMM_TILE(1, F16, NAME) GEMM_TILE(2, F16, NAME) GEMM_TILE(3, F16, NAME) \
    GEMM_TILE(4, F16, NAME) GEMM_TILE(5, F16, NAME) GEMM_TILE(6, F16, NAME)
GEMM_TILES(0, gemm_tile) GEMM_TILES(1, gemm_tile_h)
typedef void (*gemm_tile_fn)(const ryz_gemm_f32_job *, int64_t, const void *, int64_t, int64_t, int64_t);
static const gemm_tile_fn gemm_tiles[2][7] = {
    {NULL, gemm_tile_1, gemm_tile_2, gemm_tile_3, gemm_tile_4, gemm_tile_5, gemm_tile_6},
    {NULL, gemm_tile_h_1, gemm_tile_h_2, gemm_tile_h_3, gemm_tile_h_4, gemm_tile_h_5, gemm_tile_h_6}};

static ALWAYS_INLINE void gemm_run(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1, const int F16) {
    const int64_t K = j->K;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t mb = it / j->P, p = it % j->P, n0 = p * RYZ_GEMM_NR;
        const int64_t m0 = mb * RYZ_GEMM_MB, m1 = m0 + RYZ_GEMM_MB < j->M ? m0 + RYZ_GEMM_MB : j->M;
        const void *wp = F16 ? (const void *)(j->wh + p * K * RYZ_GEMM_NR) : (const void *)(j->wp + p * K * RYZ_GEMM_NR);
        if (K == 0) {  /* out = bias */
            for (int64_t m = m0; m < m1; m++)
                for (int64_t c = 0; c < RYZ_GEMM_NR && n0 + c < j->N; c++)
                    j->out[m * j->ldo + n0 + c] = j->bias ? j->bias[n0 + c] : 0.0f;
            continue;
        }
        for (int64_t k0 = 0; k0 < K; k0 += RYZ_GEMM_KC) {
            const int64_t k1 = k0 + RYZ_GEMM_KC < K ? k0 + RYZ_GEMM_KC : K;
            for (int64_t m = m0; m < m1; m += 6) {
                const int rows = m1 - m < 6 ? (int)(m1 - m) : 6;
                gemm_tiles[F16][rows](j, m, wp, n0, k0, k1);
            }
        }
    }
}
void ryz_gemm_f32_avx2(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1) { gemm_run(j, i0, i1, 0); }
void ryz_gemm_f16_avx2(const ryz_gemm_f32_job *j, int64_t i0, int64_t i1) { gemm_run(j, i0, i1, 1); }

const ryz_matmul_kernels ryz_matmul_avx2 = {.name = "avx2", .i8 = i8, .f32 = f32, .gemv_f32 = gemv_f32, .gemm_f32 = ryz_gemm_f32_avx2,
                                            .gemm_name = "avx2", .gemm_f16 = ryz_gemm_f16_avx2, .gemm_f16_name = "avx2"};

/* ---- probes (matmul.h) ----------------------------------------------------------- */
#define PROBE_PF_BYTES 8192

uint64_t ryz_probe_read_avx2(const void *p, int64_t bytes, int prefetch) {
    const char *c = p;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < bytes; i += 256) {
        if (prefetch) {
            _mm_prefetch(c + i + PROBE_PF_BYTES, _MM_HINT_NTA);
            _mm_prefetch(c + i + PROBE_PF_BYTES + 64, _MM_HINT_NTA);
            _mm_prefetch(c + i + PROBE_PF_BYTES + 128, _MM_HINT_NTA);
            _mm_prefetch(c + i + PROBE_PF_BYTES + 192, _MM_HINT_NTA);
        }
        /* 8 aligned 32-byte loads, into 4 independent 64-bit sums */
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(c + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(c + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(c + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(c + i + 96)));
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(c + i + 128)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(c + i + 160)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(c + i + 192)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(c + i + 224)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (uint64_t)_mm_cvtsi128_si64(h) + (uint64_t)_mm_extract_epi64(h, 1);
}

/* One step of chain S: 32 u8 x s8 products summed in pairs into int16 (vpmaddubsw, here into a
 * scratch register T), added to the chain's int16 sum (vpaddw). The first step of a block writes
 * the sum directly (the kernel's zeroed sum plus the first product). AT&T operand order. */
#define P_FIRST(S) "vpmaddubsw %[v], %[u], %[" #S "]\n\t"
#define P_STEP(S) "vpmaddubsw %[v], %[u], %[t]\n\tvpaddw %[t], %[" #S "], %[" #S "]\n\t"
/* the block's int16 sum widened to int32 pairs (vpmaddwd by 1) and added to the accumulator */
#define P_FLUSH(S, A) "vpmaddwd %[one], %[" #S "], %[t]\n\tvpaddd %[t], %[" #A "], %[" #A "]\n\t"
#define P_STEP4 P_STEP(s0) P_STEP(s1) P_STEP(s2) P_STEP(s3)

int64_t ryz_probe_int8_avx2(int64_t iters) {
    /* written in asm so that the compiler can neither hoist the products of constant inputs
     * out of the loop nor fold the four chains into one: the instructions are the kernel's */
    const __m256i u = _mm256_set1_epi8(1), v = _mm256_set1_epi8(1), one = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, s0, s1, s2, s3, t;
    for (int64_t it = 0; it < iters; it++) {
        __asm__ volatile(P_FIRST(s0) P_FIRST(s1) P_FIRST(s2) P_FIRST(s3)
                         P_STEP4 P_STEP4 P_STEP4 P_STEP4 P_STEP4 P_STEP4 P_STEP4
                         P_FLUSH(s0, a0) P_FLUSH(s1, a1) P_FLUSH(s2, a2) P_FLUSH(s3, a3)
                         : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3),
                           [s0] "=&x"(s0), [s1] "=&x"(s1), [s2] "=&x"(s2), [s3] "=&x"(s3), [t] "=&x"(t)
                         : [u] "x"(u), [v] "x"(v), [one] "x"(one));
    }
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
    return hsum_epi32(s);
}
#undef P_FIRST
#undef P_STEP
#undef P_FLUSH
#undef P_STEP4
