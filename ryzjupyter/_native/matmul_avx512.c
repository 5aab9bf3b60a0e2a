/* matmul_avx512.c: AVX-512 VNNI int8 and AVX-512F float32 products, plus the machine
 * probes of the benchmark (streaming read, register-only vpdpbusd). Tiles of up to
 * 4 rows x 4 tokens keep 16 accumulators in registers; the K tail uses masked loads. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "matmul_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vnni"
#endif
#include <immintrin.h>

#include "matmul.h"

#define TOK_BLOCK 64
/* software prefetch distance for weights streamed from DRAM (decode), as in ternary_avx512.c */
#define PF_BYTES 8192
#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE void tile_i8(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                  const int NT) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int64_t K = j->K;
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        __mmask64 mk = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        __m512i wv[4], xv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) { /* w + 128 as u8; masked-off lanes meet x = 0 */
            _mm_prefetch((const char *)(j->wq + (n + r) * K + k) + PF_BYTES, _MM_HINT_T0);
            wv[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, j->wq + (n + r) * K + k), flip);
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) xv[t] = _mm512_maskz_loadu_epi8(mk, j->xq + (m + t) * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xv[t]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            /* modulo 2^32, then exact: the true sum fits int32 */
            uint32_t s = (uint32_t)_mm512_reduce_add_epi32(acc[r][t]) - 128u * (uint32_t)j->xsum[m + t];
            j->out[(m + t) * j->ldo + n + r] = ryz_i8_epilogue((int32_t)s, j->xs[m + t], j->ws[n + r]);
        }
}

static ALWAYS_INLINE void tile_f32(const ryz_matmul_job *j, int64_t n, int64_t m, const int NR,
                                   const int NT) {
    const int64_t K = j->K;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[4], xv[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            _mm_prefetch((const char *)(j->w + (n + r) * K + k) + PF_BYTES, _MM_HINT_T0);
            wv[r] = _mm512_maskz_loadu_ps(mk, j->w + (n + r) * K + k);
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) xv[t] = _mm512_maskz_loadu_ps(mk, j->x + (m + t) * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv[t], acc[r][t]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) j->out[(m + t) * j->ldo + n + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define TILE(KIND, NR, NT) static void KIND##_##NR##x##NT(const ryz_matmul_job *j, int64_t n, int64_t m) \
    { tile_##KIND(j, n, m, NR, NT); }
#define TILES(KIND, NR) TILE(KIND, NR, 1) TILE(KIND, NR, 2) TILE(KIND, NR, 3) TILE(KIND, NR, 4)
TILES(i8, 1) TILES(i8, 2) TILES(i8, 3) TILES(i8, 4)
TILES(f32, 1) TILES(f32, 2) TILES(f32, 3) TILES(f32, 4)
typedef void (*tile_fn)(const ryz_matmul_job *, int64_t, int64_t);
static const tile_fn tiles_i8[4][4] = {
    {i8_1x1, i8_1x2, i8_1x3, i8_1x4}, {i8_2x1, i8_2x2, i8_2x3, i8_2x4},
    {i8_3x1, i8_3x2, i8_3x3, i8_3x4}, {i8_4x1, i8_4x2, i8_4x3, i8_4x4}};
static const tile_fn tiles_f32[4][4] = {
    {f32_1x1, f32_1x2, f32_1x3, f32_1x4}, {f32_2x1, f32_2x2, f32_2x3, f32_2x4},
    {f32_3x1, f32_3x2, f32_3x3, f32_3x4}, {f32_4x1, f32_4x2, f32_4x3, f32_4x4}};

static void run_tiles(const tile_fn tiles[4][4], const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < j->M; m0 += TOK_BLOCK) {
        int64_t m1 = m0 + TOK_BLOCK < j->M ? m0 + TOK_BLOCK : j->M;
        for (int64_t n = n0; n < n1; n += 4) {
            int nr = n1 - n < 4 ? (int)(n1 - n) : 4;
            for (int64_t m = m0; m < m1; m += 4) {
                int nt = m1 - m < 4 ? (int)(m1 - m) : 4;
                tiles[nr - 1][nt - 1](j, n, m);
            }
        }
    }
}

/* The 16 int32 sums of acc[0..15] as one vector: lane r = sum of acc[r]'s 16 lanes (a transpose
 * by unpacks and 128-bit shuffles: 15 adds for 16 rows, where reducing each row alone costs ~8
 * dependent steps a row) */
static ALWAYS_INLINE __m512i sum16_epi32(const __m512i acc[16]) {
    __m512i t[8], u[4], w[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[2 * i], acc[2 * i + 1]),
                                _mm512_unpackhi_epi32(acc[2 * i], acc[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* per 128-bit lane: partial sums of rows 4i .. 4i+3 */
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                                _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* lanes: u[2i] (L0+L1, L2+L3), u[2i+1] (L0+L1, L2+L3) */
        w[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* One query (M = 1, the bank's scan): 16 rows a step, one vpdpbusd accumulator per row, the 16
 * sums transposed into one vector and dequantized together (the 4x4 tiles reduce every row
 * alone: with K = 384 that is 6 vpdpbusd and a full horizontal reduction per row, and the scan
 * of 100k rows ran at half the AVX2 kernel's speed). Same integer sums, same epilogue. */
/* software prefetch two 16-row blocks ahead: the scan of 100k x 384 int8 rows from DRAM went
 * from ~1.6 to ~1.3 ms on one Zen 4 core (the AVX2 kernel's time; 4 blocks ahead: the same) */
#define SCAN_PF_BLOCKS 2
static void i8_one_query(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int64_t K = j->K;
    const __m512 xs = _mm512_set1_ps(j->xs[0]);
    const __m512i bias = _mm512_set1_epi32((int32_t)(128u * (uint32_t)j->xsum[0]));
    int64_t n = n0;
    for (; n + 16 <= n1; n += 16) {
        __m512i acc[16];
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_si512();
        const int8_t *w = j->wq + n * K;
        /* the block's 16 rows are one contiguous run of 16 K bytes: read it in order (k inside a
         * row), so the hardware prefetcher streams it; the 16 rows are independent chains */
        const int64_t K64 = K / 64 * 64;
        const __mmask64 mk = ((__mmask64)1 << (K - K64)) - 1; /* K % 64 lanes; masked-off lanes meet x = 0 */
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++) {
            const int8_t *wr = w + r * K;
            for (int64_t k = 0; k < K64; k += 64) { /* w + 128 as u8 */
                _mm_prefetch((const char *)(wr + k) + SCAN_PF_BLOCKS * 16 * K, _MM_HINT_T0);
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_xor_si512(_mm512_loadu_si512(wr + k), flip),
                                             _mm512_loadu_si512(j->xq + k));
            }
            if (K64 < K)
                acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, wr + K64), flip),
                                             _mm512_maskz_loadu_epi8(mk, j->xq + K64));
        }
        /* modulo 2^32, then exact: the true sums fit int32 */
        const __m512i s = _mm512_sub_epi32(sum16_epi32(acc), bias);
        const __m512 den = _mm512_mul_ps(xs, _mm512_loadu_ps(j->ws + n));
        _mm512_storeu_ps(j->out + n, _mm512_div_ps(_mm512_cvtepi32_ps(s), den));
    }
    if (n < n1) run_tiles(tiles_i8, j, n, n1);
}

static void i8(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    if (j->M == 1) i8_one_query(j, n0, n1);
    else run_tiles(tiles_i8, j, n0, n1);
}
/* One token (a decode GEMV): row after row, four independent sums over k (64 floats a step), the
 * weights read as one contiguous stream (matmul_avx2.c's gemv_f32: the read probe's pattern);
 * a row's result does not depend on how the rows are split between threads. */
static void gemv_f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, K64 = K / 64 * 64;
    const float *x = j->x;
    for (int64_t n = n0; n < n1; n++) {
        const float *w = j->w + n * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K64; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
        }
        for (int64_t k = K64; k < K; k += 16) {
            const __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, w + k), _mm512_maskz_loadu_ps(mk, x + k), a0);
        }
        j->out[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
}

static void f32(const ryz_matmul_job *j, int64_t n0, int64_t n1) { run_tiles(tiles_f32, j, n0, n1); }

/* gemm_f32 and gemm_f16 (the encoder's linears): the AVX2 variants; this level has none of its own */
const ryz_matmul_kernels ryz_matmul_avx512 = {.name = "avx512vnni", .i8 = i8, .f32 = f32, .gemv_f32 = gemv_f32,
                                              .gemm_f32 = ryz_gemm_f32_avx2, .gemm_name = "avx2",
                                              .gemm_f16 = ryz_gemm_f16_avx2, .gemm_f16_name = "avx2"};

/* ---- probes ------------------------------------------------------------------- */
uint64_t ryz_probe_read_avx512(const void *p, int64_t bytes, int prefetch) {
    const char *c = p;
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    /* `prefetch`: software prefetch PF_BYTES ahead, non-temporal. On a Zen 5
     * it read ~10 % more than plain loads with 2 threads (and ~1.5 % more than T0); on a Zen 4
     * plain loads read 5-10 % more with 1 thread. The binding times both and keeps
     * the faster, so the kernels are measured against the best streaming read we know. */
    for (int64_t i = 0; i < bytes; i += 256) {
        if (prefetch) {
            _mm_prefetch(c + i + PF_BYTES, _MM_HINT_NTA);
            _mm_prefetch(c + i + PF_BYTES + 64, _MM_HINT_NTA);
            _mm_prefetch(c + i + PF_BYTES + 128, _MM_HINT_NTA);
            _mm_prefetch(c + i + PF_BYTES + 192, _MM_HINT_NTA);
        }
        s0 = _mm512_add_epi64(s0, _mm512_load_si512(c + i));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512(c + i + 64));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512(c + i + 128));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512(c + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
}

int64_t ryz_probe_vnni_avx512(int64_t iters) {
    /* 16 named accumulators (an array would live on the stack): 16 independent chains
     * hide the vpdpbusd latency; the empty asm keeps them in registers and the loop alive */
    const __m512i u = _mm512_set1_epi8(1), v = _mm512_set1_epi8(1);
    __m512i a0 = _mm512_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    for (int64_t it = 0; it < iters; it++) {
#define D(a) a = _mm512_dpbusd_epi32(a, u, v)
        D(a0); D(a1); D(a2); D(a3); D(a4); D(a5); D(a6); D(a7);
        D(a8); D(a9); D(a10); D(a11); D(a12); D(a13); D(a14); D(a15);
#undef D
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
        __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                                             _mm512_add_epi32(_mm512_add_epi32(a12, a13), _mm512_add_epi32(a14, a15))));
    return _mm512_reduce_add_epi32(s);
}
