/* bitnet_layer.h: BitNet b1.58 decode (ONE token) in C, without Python (bitnet_layer.c), and
 * one decode step for several sequences at once (bitnet_batch.c).
 *
 * ryz_bitnet_decode_layer runs one decoder layer; ryz_bitnet_decode_token runs every layer
 * and then the final norm and the int8 lm_head, so that nothing but C sits between the last
 * GEMV of a layer and the first reads of the next (py_layer.c binds both). Every step calls
 * the dispatch tables of the other families (ops, quant, ternary, attention, layer), so the
 * selected ISA level runs and the result is bitwise that of bitnet.py's Python forward pass.
 * The caller has checked every shape, pointer and overlap; nothing here checks again. */
#ifndef RYZ_BITNET_LAYER_H
#define RYZ_BITNET_LAYER_H
#include "ryz.h"

/* shapes and constants, the same for every layer */
typedef struct {
    int64_t D, Q, KVD, I;    /* model dim, q rows (Hq * hd), k/v rows (Hkv * hd), FFN dim */
    int64_t Hq, Hkv, hd;     /* query heads, kv heads, head dim */
    float eps, scale;        /* rms_norm_eps, attention scale (hd ** -0.5) */
    double theta;            /* rope_theta */
    int act;                 /* 0 relu2, 1 silu */
    int t5;                  /* the seven matrices are T5-packed, else I2 */
} ryz_bitnet_config;

/* one layer's weights: four norms, seven packed ternary matrices and their scales */
typedef struct {
    const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
    const uint8_t *wq, *wk, *wv, *wo, *wg, *wu, *wd;
    float mult[7];           /* w_mult of q, k, v, o, gate, up, down */
} ryz_bitnet_weights;

/* one layer's KV cache [T, Hkv, hd]: float32 (kc, vc), or int8 (kc8, vc8) with float32
 * scales [T, Hkv] (ks, vs), or float16 / bfloat16 bits (kc16, vc16; fmt16 RYZ_KV_F16 or
 * RYZ_KV_BF16, attention.h); the pointers of the other kinds are NULL */
typedef struct {
    float *kc, *vc;
    int8_t *kc8, *vc8;
    float *ks, *vs;
    uint16_t *kc16, *vc16;
    int fmt16;
} ryz_bitnet_kv;

/* the int8 lm_head after the final norm: logits[n] = sum_k q(x)[k] w[n, k] / (xs * s[n]) */
typedef struct {
    const float *norm;       /* [D] */
    const int8_t *w;         /* [V, D] */
    const float *s;          /* [V] */
    int64_t V;
} ryz_bitnet_head;

/* Rows [b, e) of the int8 head GEMV for one quantized token (a ryz_task_fn: ctx is a
 * ryz_head_i8_job): out[n] = float(sum_k x[k] w[n, k]) / (xs * ws[n]), bitwise matmul_i8's. */
typedef struct {
    float *out;
    const int8_t *w, *x;     /* w [N, K], x [K] */
    const float *ws;         /* [N] */
    int64_t K;
    int32_t xsum;            /* sum_k x[k] */
    float xs;
} ryz_head_i8_job;
void ryz_head_i8_task(void *ctx, int64_t b, int64_t e, int tid);

/* Return codes: 0, -1 out of memory, -2 NaN or inf in the activations, -3 a new key / value
 * row a 16-bit cache cannot hold (NaN, inf, or |x| >= 65520 for float16). */

/* One layer for the token at position pos: x [D] (the residual stream) is updated in place,
 * row pos of the cache is written and rows 0..pos are attended. */
int ryz_bitnet_decode_layer(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            float *x, int64_t pos);

/* Every layer (w[l], kv[l] for l < n_layers), then, if head is not NULL, the final norm and
 * the lm_head into logits [V]. ns[0] gets the nanoseconds the layers took, ns[1] the head's
 * (0 without). */
int ryz_bitnet_decode_token(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            int n_layers, float *x, int64_t pos, const ryz_bitnet_head *head, float *logits,
                            int64_t ns[2]);

/* cs [hd] = cos | sin (hd / 2 each) of RoPE at position pos, as py_ops.c's rope_table */
void ryz_bitnet_rope_table(float *cs, int64_t pos, double theta, int64_t hd);

/* One decode step for B streams at once (bitnet_batch.c, continuous batching): stream m's token
 * embedding is row m of x [B, D] (updated in place), it sits at position pos[m] of its own cache
 * kv[m * n_layers + l] (all float32 or all int8; streams share no cache memory); then, if head
 * is not NULL, the final norm and the int8 head write row m of logits [B, V]. Bitwise what
 * ryz_bitnet_decode_token gives each stream alone; the seven linears of a layer run as GEMMs
 * with M = B. ns as ryz_bitnet_decode_token. */
int ryz_bitnet_decode_batch(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                            int n_layers, int64_t B, float *x, const int64_t *pos, const ryz_bitnet_head *head,
                            float *logits, int64_t ns[2]);

/* ---- the verify pass of speculative decoding (bitnet_verify.c) ----------------------------
 * n tokens through every layer as one batch: x [n, D] (their embeddings, updated in place to
 * the last layer's output), node i at position pos + depth[i]. depth describes a tree in
 * depth-first preorder: depth[0] = 0 (the root, right after the cached rows 0..pos-1),
 * 1 <= depth[i] <= depth[i-1] + 1 for i > 0, a node's parent being the last earlier node one
 * level up (a chain: depth[i] = i). Row i of the result (x, logits) is bitwise what
 * ryz_bitnet_decode_token gives for token i decoded right after its ancestors. The cache rows
 * pos + d are written as the walk goes (after the call they hold its last path); stash (NULL,
 * or one per layer) receives every node's key / value row: float32 kf, vf [n, KVD] for a float
 * cache, int8 k8, v8 [n, KVD] with scales ks, vs [n, Hkv] for an int8 one, the 16-bit bits k16,
 * v16 [n, KVD] for a float16 / bfloat16 one. With head: the
 * final norm and the int8 lm_head into logits [n, V]. ns as ryz_bitnet_decode_token. */
typedef struct {
    float *kf, *vf;
    int8_t *k8, *v8;
    float *ks, *vs;
    uint16_t *k16, *v16;
} ryz_bitnet_stash;

int ryz_bitnet_verify(const ryz_bitnet_config *c, const ryz_bitnet_weights *w, const ryz_bitnet_kv *kv,
                      const ryz_bitnet_stash *st, int n_layers, float *x, int64_t n, const int32_t *depth,
                      int64_t pos, const ryz_bitnet_head *head, float *logits, int64_t ns[2]);

#endif
