/* attention_avx512.c: AVX-512 causal GQA attention (see attention.h), float32, int8, float16
 * or bfloat16 KV cache (one template, specialised per format; 16-bit values are widened in
 * registers: vcvtph2ps, or a shift for bfloat16). Query heads are taken 4 at a time (a
 * group smaller than 4 repeats its last head and drops the copies), so every k/v value
 * loaded from the cache feeds 4 dot products or 4 accumulations. Two passes over the
 * unit's rows, both in address order across its H kv heads (a decode unit covers every
 * kv head of its rows, so it streams one contiguous region; see attention.h):
 *   scores: blocks of 4 rows x 4 query heads = 16 accumulators, reduced together
 *           (one transpose-add tree instead of 16 horizontal sums);
 *   v:      blocks of RYZ_ATTN_VBLOCK rows; per (kv head, 4 query heads, 64 columns)
 *           16 accumulators, partial sums between blocks in scratch.
 * Both passes prefetch the rows they will read next (software prefetch in address order).
 * Over a float cache, a decode unit (every kv head of its rows) takes seq_scores / seq_v
 * instead: the same sums, the rows read in address order, each SEQ_PF_ROWS rows ahead
 * prefetched, the v pass SEQ_V_ROWS rows at a time.
 * Prefill over a float cache uses attend_block instead (blocks of query rows, scores against
 * transposed keys: see attention.h and the comment above it). 
 * Whole vectors use plain loads: masked loads that miss the cache stream about 4x
 * slower on Zen 4 (measured at 20k cached rows); masks only for row tails. */
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__)
#error "attention_avx512.c must be compiled with -mavx512f -mavx512bw -mavx512vl"
#endif
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attention.h"
#include "ops.h"

/* score pass: prefetch the k rows this far ahead (measured at 2k rows, 1 thread, BitNet-2B
 * shapes: 4, 8 and 16 rows within 3 % of each other; T1/T2/NTA hints no better than T0) */
#ifndef RYZ_ATTN_PF_ROWS
#define RYZ_ATTN_PF_ROWS 16
#endif
#ifndef RYZ_ATTN_PF_HINT
#define RYZ_ATTN_PF_HINT _MM_HINT_T0
#endif
/* decode passes over a float / 16-bit cache (seq_scores, seq_v): software prefetch of the row
 * this many rows ahead, one line per line read. Intel Xeon (2.8 GHz, AVX-512 VNNI, ~23 GB/s), 2
 * threads, 30 layers of 2B-4T heads at 2k rows: 14.3 GB/s without, 19.8 with 4 rows, 18.2 with 2,
 * 18.6 with 8, 17.9 with 16 (1 thread: 9.3 -> 11.8). Zen 4 read the rows at 21-23 GB/s a core
 * without it (not re-measured with it). 0 turns it off. */
#ifndef SEQ_PF_ROWS
#define SEQ_PF_ROWS 4
#endif

/* 16 cache values from column j of a row, as floats (`m` = the columns left, as a mask) */
static inline __m512 ld_f32(const float *p, __mmask16 m) { return ryz_ld16(p, m); }
static inline __m512 ld_i8(const int8_t *p, __mmask16 m) {
    __m128i b = m == 0xffff ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(m, p);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

/* 16 float16 / bfloat16 values (fmt) widened to floats (exact): vcvtph2ps, or a shift */
static inline __m512 widen16v(__m256i b, const int fmt) {
    return fmt == RYZ_KV_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16))
                              : _mm512_cvtph_ps(b);
}
static inline __m512 ld_16(const uint16_t *p, __mmask16 m, const int fmt) {
    return widen16v(m == 0xffff ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(m, p), fmt);
}

/* s[i] = sum of the 16 lanes of a[i]: a transpose-add tree (45 shuffles/adds for 16 sums) */
static inline __m512 reduce16(const __m512 a[16]) {
    __m512 p[8], q[4], r[2];
    for (int k = 0; k < 8; k++)  /* per 128-bit lane: [A0+A2, B0+B2, A1+A3, B1+B3] */
        p[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k], a[2 * k + 1]), _mm512_unpackhi_ps(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 4; k++) { /* per 128-bit lane: partial sums of a[4k .. 4k+3] */
        __m512d x = _mm512_castps_pd(p[2 * k]), y = _mm512_castps_pd(p[2 * k + 1]);
        q[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int k = 0; k < 2; k++)
        r[k] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* prefetch the bytes [p, p + n) into L1 */
static inline void prefetch_bytes(const void *p, int64_t n) {
    const char *c = (const char *)((uintptr_t)p & ~(uintptr_t)63), *e = (const char *)p + n;
    for (; c < e; c += 64) _mm_prefetch(c, RYZ_ATTN_PF_HINT);
}

/* Scores of 4 rows x 4 query heads: lanes 4 gg .. 4 gg + 3 of s are head gg's rows, stored at
 * dst + gg * Lp; heads gn.. repeat head gn - 1 (they store its values to the same place). */
static inline void store_scores(float *dst, int64_t Lp, int64_t gn, __m512 s) {
    _mm_storeu_ps(dst, _mm512_castps512_ps128(s));
    _mm_storeu_ps(dst + (gn > 1 ? 1 : gn - 1) * Lp, _mm512_extractf32x4_ps(s, 1));
    _mm_storeu_ps(dst + (gn > 2 ? 2 : gn - 1) * Lp, _mm512_extractf32x4_ps(s, 2));
    _mm_storeu_ps(dst + (gn > 3 ? 3 : gn - 1) * Lp, _mm512_extractf32x4_ps(s, 3));
}

/* ---- float cache, rows in address order (decode units: every kv head of a row) ---------
 * seq_scores: the rows of a block of 4 one after the other, each over all its kv heads; the
 * 4 accumulators of (row r, kv head h, query heads g0..g0+3) go to blk[h, g0 / 4][4 gg + r],
 * and the block's 16 vectors per (h, g0) are reduced at once as in the blocked pass (same
 * FMAs per lane in the same order, same tree): the same scores. */
#define SEQ_MAX_GROUPS 16   /* kv heads x query-head groups of 4 per unit (16 KiB of stack) */
static void seq_scores(const ryz_attn_unit *u, float *RYZ_RESTRICT sc, int64_t Lp) {
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride;
    const int64_t NG = (G + 3) / 4;
    const float *RYZ_RESTRICT kf = u->k, *RYZ_RESTRICT qb = u->q;
    const __m512 kscale = _mm512_set1_ps(u->scale);
    __m512 blk[SEQ_MAX_GROUPS][16];
    for (int64_t t = 0; t < L; t += 4) {
        for (int r = 0; r < 4; r++) {
            const float *row = kf + (t + r < L ? t + r : L - 1) * kstride;  /* a short last block
                                                                  * repeats its last row */
            for (int64_t h = 0; h < H; h++)
                for (int64_t g0 = 0; g0 < G; g0 += 4) {
                    const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                    const float *qh[4];
                    for (int gg = 0; gg < 4; gg++) qh[gg] = qb + (h * G + g0 + (gg < gn ? gg : gn - 1)) * hd;
                    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                   _mm512_setzero_ps()};
                    int64_t j = 0;
                    for (; j + 16 <= hd; j += 16) {
                        const __m512 kv = _mm512_loadu_ps(row + h * hd + j);
#if SEQ_PF_ROWS
                        if (g0 == 0) _mm_prefetch((const char *)(row + SEQ_PF_ROWS * kstride + h * hd + j), _MM_HINT_T0);
#endif
                        for (int gg = 0; gg < 4; gg++) a[gg] = _mm512_fmadd_ps(_mm512_loadu_ps(qh[gg] + j), kv, a[gg]);
                    }
                    if (j < hd) {
                        const __mmask16 m = ryz_tail16(hd - j);
                        const __m512 kv = ryz_ld16(row + h * hd + j, m);
                        for (int gg = 0; gg < 4; gg++) a[gg] = _mm512_fmadd_ps(ryz_ld16(qh[gg] + j, m), kv, a[gg]);
                    }
                    for (int gg = 0; gg < 4; gg++) blk[h * NG + g0 / 4][gg * 4 + r] = a[gg];
                }
        }
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                store_scores(sc + (h * G + g0) * Lp + t, Lp, gn, _mm512_mul_ps(reduce16(blk[h * NG + g0 / 4]), kscale));
            }
    }
}

/* seq_v: out[hg] = inv[hg] * sum_t p[hg][t] v[t, h] over a float (fmt RYZ_KV_F32) or 16-bit
 * cache, the partial sums in acc (L1). Rows go SEQ_V_ROWS at a time: per (kv head, 16
 * columns) the block's SEQ_V_ROWS value vectors are loaded once and each of the G heads'
 * partial sums is loaded, takes the block's FMAs in row order and is stored once, so the pass
 * does SEQ_V_ROWS times fewer loads and stores of acc than FMAs (one row at a time it was
 * bound by them: 3 memory operations per FMA). Per lane the same FMAs in the same order
 * (t ascending) as the blocked pass, so the same outputs. */
#ifndef SEQ_V_ROWS
#define SEQ_V_ROWS 4
#endif
static inline __attribute__((always_inline)) __m512 ld_kv(const void *p, int64_t i, __mmask16 m, const int fmt) {
    return fmt == RYZ_KV_F32 ? ryz_ld16((const float *)p + i, m) : ld_16((const uint16_t *)p + i, m, fmt);
}
static inline __attribute__((always_inline)) void
seq_v_impl(const ryz_attn_unit *u, const float *RYZ_RESTRICT sc, int64_t Lp, float *RYZ_RESTRICT acc,
           const float *RYZ_RESTRICT inv, const int fmt) {
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride, HG = H * G;
    const int64_t esz = fmt == RYZ_KV_F32 ? 4 : 2;
    const char *RYZ_RESTRICT vb = fmt == RYZ_KV_F32 ? (const char *)u->v : (const char *)u->v16;
    memset(acc, 0, sizeof(float) * (size_t)(HG * hd));  /* exactly: inv follows acc */
    const __mmask16 mt = ryz_tail16(hd % 16);
    int64_t t = 0;
#define SEQ_V_BLOCK(NR)                                                                            \
    for (int64_t h = 0; h < H; h++) {                                                              \
        const char *vr[NR];                                                                        \
        for (int r = 0; r < NR; r++) vr[r] = vb + ((t + r) * kstride + h * hd) * esz;              \
        for (int64_t j = 0; j < hd; j += 16) {                                                     \
            const __mmask16 m = hd - j >= 16 ? (__mmask16)0xffff : mt;                             \
            __m512 v[NR];                                                                          \
            for (int r = 0; r < NR; r++) v[r] = ld_kv(vr[r], j, m, fmt);                           \
            if (SEQ_PF_ROWS && (j * esz) % 64 == 0)         /* a line at a time */                   \
                for (int r = 0; r < NR; r++) _mm_prefetch(vr[r] + (SEQ_PF_ROWS * kstride + j) * esz, _MM_HINT_T0); \
            for (int64_t g = 0, hg = h * G; g < G; g++, hg++) {                                     \
                float *a = acc + hg * hd + j;                                                      \
                __m512 x = ryz_ld16(a, m);                                                         \
                for (int r = 0; r < NR; r++) x = _mm512_fmadd_ps(_mm512_set1_ps(sc[hg * Lp + t + r]), v[r], x); \
                if (m == 0xffff) _mm512_storeu_ps(a, x); else _mm512_mask_storeu_ps(a, m, x);        \
            }                                                                                      \
        }                                                                                          \
    }
    for (; t + SEQ_V_ROWS <= L; t += SEQ_V_ROWS) SEQ_V_BLOCK(SEQ_V_ROWS)
    for (; t < L; t++) SEQ_V_BLOCK(1)
#undef SEQ_V_BLOCK
    for (int64_t hg = 0; hg < HG; hg++) {
        const __m512 s = _mm512_set1_ps(inv[hg]);
        int64_t j = 0;
        for (; j + 16 <= hd; j += 16) _mm512_storeu_ps(u->o + hg * hd + j, _mm512_mul_ps(_mm512_loadu_ps(acc + hg * hd + j), s));
        if (j < hd) _mm512_mask_storeu_ps(u->o + hg * hd + j, mt, _mm512_mul_ps(ryz_ld16(acc + hg * hd + j, mt), s));
    }
}

/* seq_scores / seq_v over a float16 / bfloat16 cache: the same sums, each value widened in
 * registers (half the bytes streamed) */
static inline __attribute__((always_inline)) void
seq_scores16(const ryz_attn_unit *u, float *RYZ_RESTRICT sc, int64_t Lp, const int fmt) {
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride;
    const int64_t NG = (G + 3) / 4;
    const uint16_t *RYZ_RESTRICT kf = u->k16;
    const float *RYZ_RESTRICT qb = u->q;
    const __m512 kscale = _mm512_set1_ps(u->scale);
    __m512 blk[SEQ_MAX_GROUPS][16];
    for (int64_t t = 0; t < L; t += 4) {
        for (int r = 0; r < 4; r++) {
            const uint16_t *row = kf + (t + r < L ? t + r : L - 1) * kstride;  /* a short last block
                                                                  * repeats its last row */
            for (int64_t h = 0; h < H; h++)
                for (int64_t g0 = 0; g0 < G; g0 += 4) {
                    const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                    const float *qh[4];
                    for (int gg = 0; gg < 4; gg++) qh[gg] = qb + (h * G + g0 + (gg < gn ? gg : gn - 1)) * hd;
                    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                   _mm512_setzero_ps()};
                    int64_t j = 0;
                    for (; j + 16 <= hd; j += 16) {
                        const __m512 kv = ld_16(row + h * hd + j, (__mmask16)0xffff, fmt);
#if SEQ_PF_ROWS
                        if (g0 == 0 && (j & 31) == 0)  /* a line at a time */
                            _mm_prefetch((const char *)(row + SEQ_PF_ROWS * kstride + h * hd + j), _MM_HINT_T0);
#endif
                        for (int gg = 0; gg < 4; gg++) a[gg] = _mm512_fmadd_ps(_mm512_loadu_ps(qh[gg] + j), kv, a[gg]);
                    }
                    if (j < hd) {
                        const __mmask16 m = ryz_tail16(hd - j);
                        const __m512 kv = ld_16(row + h * hd + j, m, fmt);
                        for (int gg = 0; gg < 4; gg++) a[gg] = _mm512_fmadd_ps(ryz_ld16(qh[gg] + j, m), kv, a[gg]);
                    }
                    for (int gg = 0; gg < 4; gg++) blk[h * NG + g0 / 4][gg * 4 + r] = a[gg];
                }
        }
        for (int64_t h = 0; h < H; h++)
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                store_scores(sc + (h * G + g0) * Lp + t, Lp, gn, _mm512_mul_ps(reduce16(blk[h * NG + g0 / 4]), kscale));
            }
    }
}

static inline __attribute__((always_inline)) void
attend_impl(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch, const int fmt) {
    const int i8 = fmt == RYZ_KV_I8, h16 = fmt >= RYZ_KV_F16;
    /* fields copied to locals: stores to the float scratch could otherwise alias them
     * (-fno-strict-aliasing) and force reloads in the inner loops */
    const int64_t G = u->G, H = u->H, hd = u->hd, L = u->L, kstride = u->kstride, ss = u->sstride;
    const int64_t HG = H * G, Lp = ryz_attn_score_stride(L), esz = i8 ? 1 : h16 ? 2 : 4;
    const float *RYZ_RESTRICT kf = u->k, *RYZ_RESTRICT vf = u->v, *RYZ_RESTRICT ks = u->ks, *RYZ_RESTRICT vs = u->vs;
    const int8_t *RYZ_RESTRICT k8 = u->k8, *RYZ_RESTRICT v8 = u->v8;
    const uint16_t *RYZ_RESTRICT k16 = u->k16, *RYZ_RESTRICT v16 = u->v16;
    const float *RYZ_RESTRICT qb = u->q;
    float *RYZ_RESTRICT ob = u->o, *RYZ_RESTRICT ml = u->ml;
    const float scale = u->scale;
    float *RYZ_RESTRICT sc = scratch;            /* [HG][Lp] scores, then softmax numerators */
    float *RYZ_RESTRICT acc = scratch + HG * Lp; /* [HG][hd] v-pass partial sums */
    float *RYZ_RESTRICT inv = acc + HG * hd;     /* [HG] 1 / sum of the numerators */
    const char *kbytes = i8 ? (const char *)k8 : h16 ? (const char *)k16 : (const char *)kf;
    const char *vbytes = i8 ? (const char *)v8 : h16 ? (const char *)v16 : (const char *)vf;
    /* int8 decode unit (its rows are one range): the score pass also prefetches the v rows it
     * passes, so the v pass (int8 -> float conversions, compute-heavy) runs from L2 while
     * DRAM streams during the scores: 10.8 -> 7.0 ms per token at 2k, 30 layers, 1 thread
     * (6.1 -> 4.3 ms with 2). The float cache gained nothing from it (its unit's k and v
     * rows, 640 KB, crowd the 1 MB L2), so it keeps the v prefetch of the v pass. */
    const int contig = i8 && H * hd == kstride;
#define LOADK(t, h, j, m) (i8 ? ld_i8(k8 + (t) * kstride + (h) * hd + (j), m) : h16 ? ld_16(k16 + (t) * kstride + (h) * hd + (j), m, fmt) \
                               : ld_f32(kf + (t) * kstride + (h) * hd + (j), m))
#define LOADV(t, h, j, m) (i8 ? ld_i8(v8 + (t) * kstride + (h) * hd + (j), m) : h16 ? ld_16(v16 + (t) * kstride + (h) * hd + (j), m, fmt) \
                               : ld_f32(vf + (t) * kstride + (h) * hd + (j), m))

    /* Float cache, every kv head of each row (decode units): both passes read the rows in
     * address order (seq_scores, seq_v_impl above; prefetch: SEQ_PF_ROWS). On
     * Zen 4 the blocked passes, which read 4 or 16 rows 2.5 KB apart column block by column
     * block, streamed ~12 GB/s a core; one row after the other 21-23 (the probe: 23-24;
     * standalone loop). Same float operations in the same order: same results. */
    const int seq = !i8 && H * hd == kstride && H * ((G + 3) / 4) <= SEQ_MAX_GROUPS;
    if (seq && h16) seq_scores16(u, sc, Lp, fmt);
    else if (seq) seq_scores(u, sc, Lp);
    /* ---- scores: rows 4 at a time (a short last block repeats its last row; the copies
     * land in the padding of sc, Lp >= L rounded up to 16) ---- */
    for (int64_t t = 0; t < (seq ? 0 : L); t += 4) {
        int64_t tr[4];
        for (int r = 0; r < 4; r++) tr[r] = t + r < L ? t + r : L - 1;
        /* the rows RYZ_ATTN_PF_ROWS ahead (then the first v rows), one line per line read */
        const char *pfr[4], *pfv[4];
        for (int r = 0; r < 4; r++) pfv[r] = vbytes + tr[r] * kstride * esz;
        for (int r = 0; r < 4; r++) {
            const int64_t tp = t + RYZ_ATTN_PF_ROWS + r;
            pfr[r] = tp < L ? kbytes + tp * kstride * esz : vbytes + (tp - L < L ? tp - L : L - 1) * kstride * esz;
        }
        for (int64_t h = 0; h < H; h++) {
            __m512 kscale = _mm512_set1_ps(scale);
            if (i8) {
                const float s0 = ks[tr[0] * ss + h] * scale, s1 = ks[tr[1] * ss + h] * scale;
                const float s2 = ks[tr[2] * ss + h] * scale, s3 = ks[tr[3] * ss + h] * scale;
                kscale = _mm512_setr_ps(s0, s1, s2, s3, s0, s1, s2, s3, s0, s1, s2, s3, s0, s1, s2, s3);
            }
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                const float *qh[4];
                for (int gg = 0; gg < 4; gg++) qh[gg] = qb + (h * G + g0 + (gg < gn ? gg : gn - 1)) * hd;
                __m512 a[16];
                for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
#define SCORE_COLS(M)                                                                             \
                {                                                                                 \
                    __m512 kv[4], qv[4];                                                          \
                    for (int r = 0; r < 4; r++) kv[r] = LOADK(tr[r], h, j, M);                    \
                    for (int gg = 0; gg < 4; gg++) qv[gg] = ryz_ld16(qh[gg] + j, M);              \
                    for (int gg = 0; gg < 4; gg++)                                                \
                        for (int r = 0; r < 4; r++)                                               \
                            a[gg * 4 + r] = _mm512_fmadd_ps(qv[gg], kv[r], a[gg * 4 + r]);        \
                }
                int64_t j = 0;
                for (; j + 16 <= hd; j += 16) {
                    if (g0 == 0 && (i8 ? (j & 63) == 0 : h16 ? (j & 31) == 0 : 1))   /* a line at a time */
                        for (int r = 0; r < 4; r++) {
                            _mm_prefetch(pfr[r] + (h * hd + j) * esz, RYZ_ATTN_PF_HINT);
                            if (contig) _mm_prefetch(pfv[r] + (h * hd + j) * esz, _MM_HINT_T1);
                        }
                    SCORE_COLS((__mmask16)0xffff)
                }
                if (j < hd) SCORE_COLS(ryz_tail16(hd - j))
#undef SCORE_COLS
                store_scores(sc + (h * G + g0) * Lp + t, Lp, gn, _mm512_mul_ps(reduce16(a), kscale));
            }
        }
    }
    /* the first block of v rows, while the softmax runs (later blocks: in the v pass) */
    for (int64_t t = 0; t < (contig || seq ? 0 : L < RYZ_ATTN_VBLOCK ? L : RYZ_ATTN_VBLOCK); t++)
        prefetch_bytes(vbytes + t * kstride * esz, H * hd * esz);
    /* ---- softmax numerators, in place (scores are in L1/L2: masks are cheap here) ---- */
    for (int64_t hg = 0; hg < HG; hg++) {
        float *p = sc + hg * Lp;
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (int64_t t = 0; t < L; t += 16)
            vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), ryz_tail16(L - t), p + t));
        const float mxs = _mm512_reduce_max_ps(vm);
        __m512 mx = _mm512_set1_ps(mxs), sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < L; t += 16) {
            __mmask16 m = ryz_tail16(L - t);
            __m512 e = ryz_exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + t), mx));
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            _mm512_mask_storeu_ps(p + t, m, e);
        }
        const float l = _mm512_reduce_add_ps(sum);
        inv[hg] = 1.0f / l;
        if (ml) ml[2 * hg] = mxs, ml[2 * hg + 1] = l;
    }
    /* ---- out = inv * sum_t p[t] v[t] ---- */
    /* The v pass walks a block (h, 64 columns, row) by (h, 64 columns, row) and prefetches the
     * next block as it goes. When the unit's rows are contiguous (it has every kv head: decode),
     * the next block is one stretch of memory and is prefetched in address order, pstep bytes per
     * step (as the GEMVs do): 41 -> 28 us for 128 rows of 2B-4T heads from DRAM, 1 thread. */
    const int rows_contig = H * hd == kstride;
    if (seq) seq_v_impl(u, sc, Lp, acc, inv, fmt);
    for (int64_t tb = 0; tb < (seq ? 0 : L); tb += RYZ_ATTN_VBLOCK) {
        const int64_t te = L - tb < RYZ_ATTN_VBLOCK ? L : tb + RYZ_ATTN_VBLOCK;
        const int64_t ne = L - te < RYZ_ATTN_VBLOCK ? L : te + RYZ_ATTN_VBLOCK;
        const char *pwk = vbytes + te * kstride * esz, *const pwe = vbytes + ne * kstride * esz;
        const int64_t pstep = te < L && rows_contig
            ? ((pwe - pwk) / (H * ((hd + 63) / 64) * (te - tb)) + 63) / 64 * 64 : 0;
        const int first = tb == 0, last = te == L;
        for (int64_t h = 0; h < H; h++) {
            for (int64_t g0 = 0; g0 < G; g0 += 4) {
                const int64_t gn = G - g0 < 4 ? G - g0 : 4;
                int64_t hh[4];
                const float *pw[4];
                for (int gg = 0; gg < 4; gg++) {
                    hh[gg] = h * G + g0 + (gg < gn ? gg : gn - 1);
                    pw[gg] = sc + hh[gg] * Lp;
                }
                for (int64_t j = 0; j < hd; j += 64) {
                    __mmask16 mk[4];
                    for (int c = 0; c < 4; c++) mk[c] = ryz_tail16(hd - j - 16 * c);
                    __m512 cacc[16];
                    if (first) {
                        for (int i = 0; i < 16; i++) cacc[i] = _mm512_setzero_ps();
                    } else {
                        for (int gg = 0; gg < 4; gg++)
                            for (int c = 0; c < 4; c++)
                                cacc[gg * 4 + c] = _mm512_maskz_loadu_ps(mk[c], acc + hh[gg] * hd + j + 16 * c);
                    }
                    const int pf = g0 == 0 && te < L && !rows_contig, pfw = g0 == 0 && pstep > 0;
                    /* the same (row, head, columns) of the next block */
#define V_ROWS(M0, M1, M2, M3)                                                                     \
                    for (int64_t t = tb; t < te; t++) {                                            \
                        if (pfw) {                                                                 \
                            for (int64_t o = 0; o < pstep; o += 64)                                \
                                if (pwk + o < pwe) _mm_prefetch(pwk + o, RYZ_ATTN_PF_HINT);        \
                            pwk += pstep;                                                          \
                        }                                                                          \
                        if (pf)                                                                    \
                            prefetch_bytes(vbytes + ((t + RYZ_ATTN_VBLOCK < L ? t + RYZ_ATTN_VBLOCK : L - 1) * kstride + h * hd + j) * esz, \
                                           (hd - j < 64 ? hd - j : 64) * esz);                     \
                        const __m512 v0 = LOADV(t, h, j, M0), v1 = LOADV(t, h, j + 16, M1);        \
                        const __m512 v2 = LOADV(t, h, j + 32, M2), v3 = LOADV(t, h, j + 48, M3);   \
                        const float w = i8 ? vs[t * ss + h] : 1.0f;                                \
                        for (int gg = 0; gg < 4; gg++) {                                           \
                            const __m512 pg = _mm512_set1_ps(i8 ? pw[gg][t] * w : pw[gg][t]);      \
                            cacc[gg * 4 + 0] = _mm512_fmadd_ps(pg, v0, cacc[gg * 4 + 0]);           \
                            cacc[gg * 4 + 1] = _mm512_fmadd_ps(pg, v1, cacc[gg * 4 + 1]);           \
                            cacc[gg * 4 + 2] = _mm512_fmadd_ps(pg, v2, cacc[gg * 4 + 2]);           \
                            cacc[gg * 4 + 3] = _mm512_fmadd_ps(pg, v3, cacc[gg * 4 + 3]);           \
                        }                                                                          \
                    }
                    if (hd - j >= 64) {
                        V_ROWS((__mmask16)0xffff, (__mmask16)0xffff, (__mmask16)0xffff, (__mmask16)0xffff)
                    } else {
                        V_ROWS(mk[0], mk[1], mk[2], mk[3])
                    }
#undef V_ROWS
                    for (int gg = 0; gg < 4; gg++)
                        for (int c = 0; c < 4; c++) {
                            if (!mk[c]) continue;
                            if (last)  /* repeated heads store the same values twice */
                                _mm512_mask_storeu_ps(ob + hh[gg] * hd + j + 16 * c, mk[c],
                                                      _mm512_mul_ps(cacc[gg * 4 + c], _mm512_set1_ps(inv[hh[gg]])));
                            else
                                _mm512_mask_storeu_ps(acc + hh[gg] * hd + j + 16 * c, mk[c], cacc[gg * 4 + c]);
                        }
                }
            }
        }
    }
#undef LOADK
#undef LOADV
}

/* ---- prefill blocks (ryz_attn_block, see attention.h) ------------------------------------ */

/* 16 x 16 floats: out row d = column d of the 16 input rows */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) {
            __m512d a = _mm512_castps_pd(t[4 * i + j]), b = _mm512_castps_pd(t[4 * i + j + 2]);
            r[4 * i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[4 * i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    /* r[4i + c]: rows 4i..4i+3, column c + 4 lane128 -> gather the 4 row groups per column */
    for (int c = 0; c < 4; c++) {
        __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(a, e, 0x88);      /* column c */
        t[c + 8] = _mm512_shuffle_f32x4(a, e, 0xdd);  /* column c + 8 */
        t[c + 4] = _mm512_shuffle_f32x4(b, f, 0x88);  /* column c + 4 */
        t[c + 12] = _mm512_shuffle_f32x4(b, f, 0xdd); /* column c + 12 */
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

static void transpose_k(float *RYZ_RESTRICT kt, const float *k, int64_t kstride, int64_t hd, int64_t t0,
                        int64_t t1) {
    for (int64_t tb = t0; tb < t1; tb += 16) {
        const int64_t n = t1 - tb < 16 ? t1 - tb : 16;
        float *dst = kt + tb / 16 * hd * 16;
        for (int64_t d = 0; d < hd; d += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < n ? _mm512_loadu_ps(k + (tb + i) * kstride + d) : _mm512_setzero_ps();
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (d + i) * 16, r[i]);
        }
    }
}

/* Per group of 8 query vectors (a shorter last group repeats its last vector and stores
 * nothing for the copies):
 *   scores  S[v][t] = scale * q_v . k_t for 32 keys at a time: acc[v][0..1] += q_v[d] * kt[d]
 *           (16 accumulators, a broadcast per query vector and d, two key vectors per d);
 *   softmax over t < L_v (later keys belong to later rows of the block: left out, not
 *           multiplied by zero, so a non-finite value there cannot leak in);
 *   output  o_v = (sum_t p_v[t] v_t) / sum_t p_v[t], 32 columns at a time, 16 accumulators. */
static void attend_block(const ryz_attn_block *b, float *RYZ_RESTRICT scratch) {
    const int64_t G = b->G, hd = b->hd, nq = b->R * G, qs = b->qstride, ks = b->kstride;
    const float *RYZ_RESTRICT kt = b->kt;
    const float *RYZ_RESTRICT vb = b->v;
    const __m512 scale = _mm512_set1_ps(b->scale);
    for (int64_t v0 = 0; v0 < nq; v0 += 8) {
        const int64_t nv = nq - v0 < 8 ? nq - v0 : 8;
        const float *qp[8];
        int64_t L[8];
        float *op[8];
        for (int i = 0; i < 8; i++) {
            const int64_t v = v0 + (i < nv ? i : nv - 1), r = v / G, g = v % G;
            qp[i] = b->q + r * qs + g * hd;
            op[i] = b->o + r * qs + g * hd;
            L[i] = b->L0 + r;
        }
        const int64_t Lmin = L[0], Lmax = L[7];
        const int64_t Lp = (Lmax + RYZ_ATTN_KT_KEYS - 1) / RYZ_ATTN_KT_KEYS * RYZ_ATTN_KT_KEYS;
        float *RYZ_RESTRICT S = scratch; /* [8][Lp] */
        /* scores */
        for (int64_t t = 0; t < Lmax; t += 32) {
            const float *k0 = kt + t * hd, *k1 = k0 + 16 * hd;
            __m512 a[8][2];
            for (int i = 0; i < 8; i++) a[i][0] = a[i][1] = _mm512_setzero_ps();
            for (int64_t d = 0; d < hd; d++) {
                const __m512 x0 = _mm512_loadu_ps(k0 + d * 16), x1 = _mm512_loadu_ps(k1 + d * 16);
                for (int i = 0; i < 8; i++) {
                    const __m512 qd = _mm512_set1_ps(qp[i][d]);
                    a[i][0] = _mm512_fmadd_ps(qd, x0, a[i][0]);
                    a[i][1] = _mm512_fmadd_ps(qd, x1, a[i][1]);
                }
            }
            for (int i = 0; i < 8; i++) {
                _mm512_storeu_ps(S + i * Lp + t, _mm512_mul_ps(a[i][0], scale));
                _mm512_storeu_ps(S + i * Lp + t + 16, _mm512_mul_ps(a[i][1], scale));
            }
        }
        /* softmax numerators over t < L[i], zero up to Lmax; inv[i] = 1 / their sum */
        float inv[8];
        for (int i = 0; i < 8; i++) {
            float *p = S + i * Lp;
            __m512 vm = _mm512_set1_ps(-INFINITY);
            for (int64_t t = 0; t < L[i]; t += 16)
                vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), ryz_tail16(L[i] - t), p + t));
            const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
            __m512 sum = _mm512_setzero_ps();
            for (int64_t t = 0; t < Lmax; t += 16) {
                const __mmask16 m = ryz_tail16(L[i] - t);
                const __m512 e = _mm512_maskz_mov_ps(m, ryz_exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(p + t), mx)));
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(p + t, e);
            }
            inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        /* output: tiles of 32 keys (16 KiB of values at hd 128: L1) x 32 columns, partial sums
         * of the 8 vectors between tiles in scratch */
        float *RYZ_RESTRICT part = S + 8 * Lp; /* [8][hd] */
        for (int64_t t0 = 0; t0 < Lmax; t0 += 32) {
            const int64_t te = Lmax - t0 < 32 ? Lmax : t0 + 32, tf = te < Lmin ? te : Lmin > t0 ? Lmin : t0;
            const int first = t0 == 0, last = te == Lmax;
            if (!last) /* the next tile's values, while this one runs */
                for (int64_t t = te; t < (Lmax - te < 32 ? Lmax : te + 32); t++)
                    for (int64_t c = 0; c < hd; c += 16) _mm_prefetch((const char *)(vb + t * ks + c), _MM_HINT_T0);
            for (int64_t c = 0; c < hd; c += 32) {
                const __mmask16 m1 = c + 16 < hd ? (__mmask16)0xffff : 0;
                __m512 a[8][2];
                for (int i = 0; i < 8; i++) {
                    a[i][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(part + i * hd + c);
                    a[i][1] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, part + i * hd + c + 16);
                }
                const float *vr = vb + t0 * ks + c;
                int64_t t = t0;
                for (; t < tf; t++, vr += ks) {
                    const __m512 x0 = _mm512_loadu_ps(vr), x1 = _mm512_maskz_loadu_ps(m1, vr + 16);
                    for (int i = 0; i < 8; i++) {
                        const __m512 p = _mm512_set1_ps(S[i * Lp + t]);
                        a[i][0] = _mm512_fmadd_ps(p, x0, a[i][0]);
                        a[i][1] = _mm512_fmadd_ps(p, x1, a[i][1]);
                    }
                }
                for (; t < te; t++, vr += ks) { /* keys only the later rows of the group see */
                    const __m512 x0 = _mm512_loadu_ps(vr), x1 = _mm512_maskz_loadu_ps(m1, vr + 16);
                    for (int i = 0; i < 8; i++) {
                        if (t >= L[i]) continue;
                        const __m512 p = _mm512_set1_ps(S[i * Lp + t]);
                        a[i][0] = _mm512_fmadd_ps(p, x0, a[i][0]);
                        a[i][1] = _mm512_fmadd_ps(p, x1, a[i][1]);
                    }
                }
                for (int i = 0; i < 8; i++) {
                    if (last) {
                        if (i >= nv) continue;
                        const __m512 w = _mm512_set1_ps(inv[i]);
                        _mm512_storeu_ps(op[i] + c, _mm512_mul_ps(a[i][0], w));
                        _mm512_mask_storeu_ps(op[i] + c + 16, m1, _mm512_mul_ps(a[i][1], w));
                    } else {
                        _mm512_storeu_ps(part + i * hd + c, a[i][0]);
                        _mm512_mask_storeu_ps(part + i * hd + c + 16, m1, a[i][1]);
                    }
                }
            }
        }
    }
}

static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_F32); }
static void attend_i8(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_I8); }
static void attend_f16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_F16); }
static void attend_bf16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_impl(u, scratch, RYZ_KV_BF16); }
static void widen16(float *RYZ_RESTRICT dst, const uint16_t *RYZ_RESTRICT src, int64_t n, int fmt) {
    int64_t i = 0;
    if (fmt == RYZ_KV_BF16)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld_16(src + i, (__mmask16)0xffff, RYZ_KV_BF16));
    else
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, ld_16(src + i, (__mmask16)0xffff, RYZ_KV_F16));
    for (; i < n; i++) dst[i] = ryz_kv16_to_f32(src[i], fmt);
}

const ryz_attention_kernels ryz_attention_avx512 = {
    .name = "avx512vnni",
    .attend_block = attend_block,
    .transpose_k = transpose_k,
    .attend = attend,
    .attend_i8 = attend_i8,
    .attend_f16 = attend_f16,
    .attend_bf16 = attend_bf16,
    .widen16 = widen16,
};
