/* attention.h: causal grouped-query attention over a float32 KV cache.
 *
 * Shapes: q, out [M, Hq, hd]; k, v [T, Hkv, hd] (the cache, rows 0..T-1 filled as
 * far as needed). Query row i sits at position n_past + i and attends to cache rows
 * 0..n_past+i. Query head h reads kv head h / G, G = Hq / Hkv (transformers'
 * repeat_kv). Per query head, as transformers' eager attention in float32:
 *   s[t] = (q . k[t]) * scale;  p = softmax(s);  out = sum_t p[t] v[t]
 * computed as out = (sum_t exp(s[t] - max) v[t]) * (1 / sum_t exp(s[t] - max)).
 *
 * The unit of work is one (query row i, kv head): the G query heads sharing that kv
 * head are computed together so each cached k/v row is loaded once for all of them. */
#ifndef RYZ_ATTENTION_H
#define RYZ_ATTENTION_H
#include "ryz.h"

typedef struct {
    int64_t M, Hq, Hkv, hd, T, n_past;
    float scale;
} ryz_attn_shape;

/* floats of scratch one unit needs: scores of the G heads over the longest row */
static inline int64_t ryz_attn_scratch_floats(const ryz_attn_shape *s) {
    return (s->Hq / s->Hkv) * (s->n_past + s->M) + 16;
}

typedef struct {
    const char *name;
    void (*attend)(float *RYZ_RESTRICT out, const float *RYZ_RESTRICT q, const float *RYZ_RESTRICT k,
                   const float *RYZ_RESTRICT v, const ryz_attn_shape *s, int64_t i, int64_t kvh,
                   float *RYZ_RESTRICT scratch);
} ryz_attention_kernels;

extern const ryz_attention_kernels ryz_attention_scalar;
extern const ryz_attention_kernels ryz_attention_avx2;
extern const ryz_attention_kernels ryz_attention_avx512;
extern const ryz_attention_kernels *ryz_attention;
#endif
