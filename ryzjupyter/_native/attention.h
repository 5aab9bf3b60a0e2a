/* attention.h: causal grouped-query attention over a float32 KV cache.
 *
 * Shapes: q, out [M, Hq, hd]; k, v [T, Hkv, hd] (the cache, rows 0..T-1 filled as
 * far as needed). Query row i sits at position n_past + i and attends to cache rows
 * 0..n_past+i. Query head h reads kv head h / G, G = Hq / Hkv (transformers'
 * repeat_kv). Per query head, as transformers' eager attention in float32:
 *   s[t] = (q . k[t]) * scale;  p = softmax(s);  out = sum_t p[t] v[t]
 * computed as out = (sum_t exp(s[t] - max) v[t]) * (1 / sum_t exp(s[t] - max)).
 *
 * The unit of work is one query row i and H consecutive kv heads (1, or all of them for
 * decode: see ryz_attn_plan) over a range of cache rows: the G query heads sharing a kv
 * head are computed together so each cached k/v row is loaded once for all of them. For
 * decode (few units) the binding splits the rows of a unit into parts and merges their partial softmax results (flash-decoding):
 *   out = sum_s w_s o_s / sum_s w_s,  w_s = l_s exp(m_s - max_s m_s)
 * where part s returns o_s (its own normalised output), m_s (its max score) and l_s
 * (its sum of exp(score - m_s)). */
#ifndef RYZ_ATTENTION_H
#define RYZ_ATTENTION_H
#include <math.h>

#include <string.h>

#include "ryz.h"

/* KV cache formats: float32 (exact), int8 rows with a float32 scale per (row, kv head), and
 * the 16-bit floats float16 (IEEE binary16: 10-bit mantissa, |x| < 65520) and bfloat16 (the
 * top half of a float32: 7-bit mantissa, float32's range). */
enum { RYZ_KV_F32 = 0, RYZ_KV_I8 = 1, RYZ_KV_F16 = 2, RYZ_KV_BF16 = 3 };

/* ---- 16-bit conversions (the reference: plain C, bit-exact with F16C's vcvtph2ps and the
 * vcvtps2ph rounding mode 0) ---- */
static inline uint32_t ryz_f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float ryz_bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
static inline float ryz_bf16_to_f32(uint16_t h) { return ryz_bits_f32((uint32_t)h << 16); }
static inline float ryz_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return ryz_bits_f32(sign | 0x7f800000u | (m << 13));            /* inf, NaN */
    if (e) return ryz_bits_f32(sign | ((e + 112) << 23) | (m << 13));              /* normal */
    return ryz_bits_f32(sign) + (float)m * (sign ? -0x1p-24f : 0x1p-24f);          /* subnormal, 0 */
}
/* round to nearest, ties to even; NaN stays NaN (quiet), overflow gives inf */
static inline uint16_t ryz_f32_to_bf16(float x) {
    const uint32_t u = ryz_f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
static inline uint16_t ryz_f32_to_f16(float x) {
    const uint32_t u = ryz_f32_bits(x), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));   /* NaN, quiet */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  /* >= 65520 (or inf): rounds to inf */
    if (a >= 0x38800000u) {                                   /* >= 2^-14: a normal float16 */
        const uint32_t r = a + 0xfffu + ((a >> 13) & 1) - (112u << 23); /* rebias, round at bit 13 */
        return (uint16_t)(sign | (r >> 13));
    }
    /* subnormal float16 (or 0): value / 2^-24 rounded to an integer, ties to even; exact in float */
    const float v = ryz_bits_f32(a) * 0x1p24f;                /* 0 <= v < 1024 */
    float f = (float)(int32_t)v, d = v - f;
    if (d > 0.5f || (d == 0.5f && ((int32_t)f & 1))) f += 1.0f;
    return (uint16_t)(sign | (uint32_t)f);
}
static inline float ryz_kv16_to_f32(uint16_t h, int fmt) {
    return fmt == RYZ_KV_BF16 ? ryz_bf16_to_f32(h) : ryz_f16_to_f32(h);
}

typedef struct {
    const float *q;       /* G query rows of hd floats (consecutive heads) */
    const float *k, *v;   /* first cache row of the range, at the unit's kv head */
    /* int8 cache (attend_i8 only): rows of int8 values, value = q8 * scale; the scales
     * of consecutive rows are sstride floats apart */
    const int8_t *k8, *v8;
    const float *ks, *vs;
    int64_t sstride;
    /* 16-bit cache (attend_f16 / attend_bf16 only): rows of float16 or bfloat16 bits */
    const uint16_t *k16, *v16;
    float *o;             /* G output rows of hd floats */
    float *ml;            /* NULL, or 2HG floats: (max score, sum of exp) per head */
    int64_t H;            /* kv heads in the unit (>= 1), consecutive in a cache row: kv
                           * head h of the unit is at k + h * hd; its query heads are q
                           * rows h*G .. h*G+G-1 (and o, ml the same) */
    int64_t G, hd, kstride, L; /* kstride: floats between cache rows; L: rows (>= 1) */
    float scale;
} ryz_attn_unit;

/* floats between the score rows of two query heads in the scratch: L rounded up to 16 */
static inline int64_t ryz_attn_score_stride(int64_t L) { return (L + 15) / 16 * 16; }
/* floats of scratch a unit of HG = H * G query heads and at most L rows needs: scores of
 * every head, partial sums of every output row (the SIMD v pass is blocked over rows) and
 * one normaliser per head; at least 4 heads' worth (kernels take heads 4 at a time) */
static inline int64_t ryz_attn_scratch_floats(int64_t HG, int64_t hd, int64_t L) {
    if (HG < 4) HG = 4;
    return HG * (ryz_attn_score_stride(L) + hd + 1) + 16;
}

/* rows of v per block in the SIMD v pass: every column pass of a block over one kv head
 * finds its rows in L1 (16 rows x hd 128 floats = 8 KiB per head), and the next block's
 * rows are prefetched while this one runs */
#define RYZ_ATTN_VBLOCK 16

/* Prefill over a float32 cache, blocked (the kernel tables that have it; NULL elsewhere):
 * R consecutive query rows x the G query heads of one kv head, scores as a matrix product
 * against the kv head's keys transposed (ryz_attn_transpose_k), so no dot product needs a
 * horizontal sum and every key / value vector loaded feeds several query vectors. Query vector
 * v = r * G + g (row r of the block, head g) attends to keys 0 .. L0 + r - 1.
 * Scalar and AVX2 (flash-attention style): tiles of 16 keys in order, each against every query
 * vector of the block that sees it, with the online softmax per vector:
 *   m' = max(m, max_t s[t]);  a = exp(m - m');  l' = a l + sum_t exp(s[t] - m');
 *   acc' = a acc + sum_t exp(s[t] - m') v[t];  finally o = acc / l
 * keys past a vector's causal limit are left out (not multiplied by zero), and tiles no vector
 * of a group sees are skipped whole. AVX-512: all scores of 8 query vectors, then one softmax. */
#define RYZ_ATTN_BLOCK_ROWS 8   /* query rows per block (the binding's unit of work) */
#define RYZ_ATTN_KT_KEYS 32     /* keys per transposed tile pair: kt is padded to a multiple */
#define RYZ_ATTN_TILE_KEYS 16   /* keys per tile of the online-softmax kernels */
typedef struct {
    const float *q;       /* row 0, head 0 of the block; rows qstride floats apart, heads hd */
    const float *kt;      /* this kv head's keys transposed: [keys / 16][hd][16], zero padded */
    const float *v;       /* cache row 0 of this kv head; rows kstride floats apart */
    float *o;             /* like q */
    int64_t qstride, kstride, R, G, hd, L0;
    float scale;
} ryz_attn_block;
/* floats of scratch ryz_attn_block needs for L keys and G query heads per kv head at most:
 * 8 rows of scores (AVX-512), or the running state of every query vector (R G accumulators of
 * hd floats, a max and a sum each: the online-softmax kernels) */
static inline int64_t ryz_attn_block_scratch_floats(int64_t L, int64_t hd, int64_t G) {
    const int64_t rows = 8 * ((L + RYZ_ATTN_KT_KEYS - 1) / RYZ_ATTN_KT_KEYS * RYZ_ATTN_KT_KEYS) + 8 * hd + 64;
    const int64_t state = RYZ_ATTN_BLOCK_ROWS * G * (hd + 2) + 64;
    return rows > state ? rows : state;
}
/* floats of one kv head's transposed keys for L keys */
static inline int64_t ryz_attn_kt_floats(int64_t L, int64_t hd) {
    return (L + RYZ_ATTN_KT_KEYS - 1) / RYZ_ATTN_KT_KEYS * RYZ_ATTN_KT_KEYS * hd;
}

/* Which paths the bindings take (set_attention_variant): 1 (default) the blocked prefill and the
 * streaming decode where the kernel table has them; 0 the per-(row, head) units and the per-head
 * decode pass everywhere (the kernels they replaced, kept for the shapes the others do not take
 * and for side-by-side benchmarks). */
extern int ryz_attn_tiled;

typedef struct {
    const char *name;
    /* prefill blocks (NULL: the binding runs units); needs hd % 16 == 0 */
    void (*attend_block)(const ryz_attn_block *b, float *RYZ_RESTRICT scratch);
    /* kt[(t / 16) * hd * 16 + d * 16 + t % 16] = k[t * kstride + d] for keys t0 <= t < t1 (t0 a
     * multiple of 16), zeros for t1 <= t < tp (tp: t1 rounded up to 16) */
    void (*transpose_k)(float *RYZ_RESTRICT kt, const float *k, int64_t kstride, int64_t hd, int64_t t0,
                        int64_t t1);
    void (*attend)(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch);
    /* the same over an int8 cache: k = k8 * ks, v = v8 * vs per (row, kv head) */
    void (*attend_i8)(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch);
    /* the same over a float16 / bfloat16 cache (k16, v16), widened to float32 in registers */
    void (*attend_f16)(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch);
    void (*attend_bf16)(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch);
    /* dst[i] = float32 of the 16-bit value src[i] (fmt RYZ_KV_F16 or RYZ_KV_BF16), i < n: exact */
    void (*widen16)(float *RYZ_RESTRICT dst, const uint16_t *RYZ_RESTRICT src, int64_t n, int fmt);
} ryz_attention_kernels;

extern const ryz_attention_kernels ryz_attention_scalar;
extern const ryz_attention_kernels ryz_attention_avx2;
extern const ryz_attention_kernels ryz_attention_avx512;
extern const ryz_attention_kernels *ryz_attention;

/* The KV cache an attention call reads: float32 k, v [T, Hkv, hd], or (k8 != NULL) int8 k8, v8
 * with float32 scales ks, vs [T, Hkv], or (k16 != NULL) 16-bit k16, v16 [T, Hkv, hd] in format
 * fmt16 (RYZ_KV_F16 or RYZ_KV_BF16). */
typedef struct {
    const float *k, *v;
    const int8_t *k8, *v8;
    const float *ks, *vs;
    int64_t Hkv, hd;
    const uint16_t *k16, *v16;
    int fmt16;
} ryz_attn_cache;

/* One unit with the selected kernel: the H kv heads from kvh (q: their H * G query vectors)
 * over cache rows [t0, t1), into o (and ml when the rows are one part of a split). */
static inline void ryz_attn_run_unit(const ryz_attn_cache *c, const float *q, int64_t kvh, int64_t H, int64_t G,
                                     int64_t t0, int64_t t1, float scale, float *o, float *ml, float *scratch) {
    const int64_t kstride = c->Hkv * c->hd, off = t0 * kstride + kvh * c->hd, soff = t0 * c->Hkv + kvh;
    const int f32 = !c->k8 && !c->k16;
    const ryz_attn_unit u = {
        .q = q, .k = f32 ? c->k + off : NULL, .v = f32 ? c->v + off : NULL,
        .k8 = c->k8 ? c->k8 + off : NULL, .v8 = c->k8 ? c->v8 + off : NULL,
        .ks = c->k8 ? c->ks + soff : NULL, .vs = c->k8 ? c->vs + soff : NULL, .sstride = c->Hkv,
        .k16 = c->k16 ? c->k16 + off : NULL, .v16 = c->k16 ? c->v16 + off : NULL,
        .o = o, .ml = ml, .H = H, .G = G, .hd = c->hd, .kstride = kstride, .L = t1 - t0, .scale = scale,
    };
    if (c->k8)
        ryz_attention->attend_i8(&u, scratch);
    else if (c->k16)
        (c->fmt16 == RYZ_KV_BF16 ? ryz_attention->attend_bf16 : ryz_attention->attend_f16)(&u, scratch);
    else
        ryz_attention->attend(&u, scratch);
}
/* 16-bit KV cache rows (see py_attention.c store_kv16): x rounded to the nearest float16 /
 * bfloat16, ties to even (ryz_f32_to_f16, ryz_f32_to_bf16). Returns 1 if x holds NaN/inf or a
 * value float16 cannot hold (|x| >= 65520 rounds to inf); the row is written anyway. Plain C,
 * shared by every ISA level (it touches only the new rows). */
int ryz_store_kv16_row(uint16_t *RYZ_RESTRICT dst, const float *RYZ_RESTRICT x, int64_t n, int fmt);

/* int8 KV cache rows (see py_attention.c quantize_kv_i8): symmetric per (row, head),
 * d = max|x| / 127, q8 = clamp(rint(x * (127 / max|x|)), -127, 127); d = 0 and q8 = 0 for
 * an all-zero row. Returns 1 if x holds NaN/inf. Plain C, shared by every ISA level. */
int ryz_quantize_kv_row(int8_t *RYZ_RESTRICT q8, float *RYZ_RESTRICT d, const float *RYZ_RESTRICT x,
                        int64_t n);

/* How the bindings (py_attention.c, py_layer.c) cut the work of M query rows over Hkv kv
 * heads whose shortest causal row range is `shortest_row` rows. Many (row, kv head) pairs
 * (prefill): one unit per pair (*H = 1), no split. Few (decode): one unit per query row
 * covering all Hkv kv heads (*H = Hkv), so a unit reads one contiguous stretch of every
 * cache row, and its rows split into S parts, S a power of two (2 or 4 threads get equal
 * contiguous shares) of at least RYZ_ATTN_MIN_PART_ROWS(_I8) rows, aiming at 16 items in all.
 * Depends on the shapes only, never on the thread count, so results do not change with
 * the number of threads. Returns S. */
#define RYZ_ATTN_MIN_UNITS 16
/* rows per part at least: float cache 64, int8 cache 128 (measured at 130-200 cached rows,
 * BitNet-2B shapes, 2 threads: 64 instead of 128 made the float kernel 1.4x faster and the
 * int8 one 1.1-1.2x slower) */
#define RYZ_ATTN_MIN_PART_ROWS 64
#define RYZ_ATTN_MIN_PART_ROWS_I8 128
static inline int64_t ryz_attn_plan(int64_t M, int64_t Hkv, int64_t shortest_row, int i8, int64_t *H) {
    if (M * Hkv >= RYZ_ATTN_MIN_UNITS) {
        *H = 1;
        return 1;
    }
    *H = Hkv;
    const int64_t min_rows = i8 ? RYZ_ATTN_MIN_PART_ROWS_I8 : RYZ_ATTN_MIN_PART_ROWS;
    int64_t S = 1;
    while (S * M < RYZ_ATTN_MIN_UNITS && 2 * S * min_rows <= shortest_row) S *= 2;
    return S;
}

/* Merge the S partial results of one query head of a split unit (flash-decoding): part p
 * holds the head's output normalised over its rows, with its running max m_p and sum l_p in
 * ml[2p], ml[2p+1]; o = sum_p w_p part_p / sum_p w_p with w_p = l_p exp(m_p - max_p m_p).
 * `part` and `ml` point at the unit's first part; consecutive parts are G heads apart (pass
 * the unit's H * G query heads as G). */
static inline void ryz_attn_merge_head(float *RYZ_RESTRICT o, const float *RYZ_RESTRICT part,
                                       const float *RYZ_RESTRICT ml, int64_t S, int64_t G,
                                       int64_t g, int64_t hd) {
    float mx = -INFINITY, wsum = 0.0f;
    for (int64_t p = 0; p < S; p++) {
        float m = ml[(p * G + g) * 2];
        mx = m > mx ? m : mx;
    }
    for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
    for (int64_t p = 0; p < S; p++) {
        const float *mlp = ml + (p * G + g) * 2;
        const float w = mlp[1] * expf(mlp[0] - mx);
        const float *po = part + (p * G + g) * hd;
        wsum += w;
        for (int64_t d = 0; d < hd; d++) o[d] += w * po[d];
    }
    const float inv = 1.0f / wsum;
    for (int64_t d = 0; d < hd; d++) o[d] *= inv;
}

#endif
