/* attention_scalar.c: reference causal GQA attention (the specification; see attention.h). */
#include <math.h>

#include "attention.h"

/* query head g (of the unit's H * G) reads the unit's kv head g / G, hd floats into a row */
static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride;
    for (int64_t g = 0; g < u->H * G; g++) {
        const float *qh = u->q + g * hd;
        const float *kb = u->k + g / G * hd, *vb = u->v + g / G * hd;
        float *o = u->o + g * hd;
        float *sc = scratch;
        float m = -INFINITY;
        for (int64_t t = 0; t < L; t++) {
            const float *kt = kb + t * kstride;
            float d = 0.0f;
            for (int64_t j = 0; j < hd; j++) d += qh[j] * kt[j];
            sc[t] = d * u->scale;
            if (sc[t] > m) m = sc[t];
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        for (int64_t j = 0; j < hd; j++) o[j] = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            const float *vt = vb + t * kstride;
            for (int64_t j = 0; j < hd; j++) o[j] += sc[t] * vt[j];
        }
        float inv = 1.0f / sum;
        if (u->ml) u->ml[2 * g] = m, u->ml[2 * g + 1] = sum;
        for (int64_t j = 0; j < hd; j++) o[j] *= inv;
    }
}

static void attend_i8(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride, ss = u->sstride;
    for (int64_t g = 0; g < u->H * G; g++) {
        const float *qh = u->q + g * hd;
        const int64_t h = g / G;
        const int8_t *kb = u->k8 + h * hd, *vb = u->v8 + h * hd;
        float *o = u->o + g * hd;
        float *sc = scratch;
        float m = -INFINITY;
        for (int64_t t = 0; t < L; t++) {
            const int8_t *kt = kb + t * kstride;
            float d = 0.0f;
            for (int64_t j = 0; j < hd; j++) d += qh[j] * (float)kt[j];
            sc[t] = d * u->ks[t * ss + h] * u->scale;
            if (sc[t] > m) m = sc[t];
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        for (int64_t j = 0; j < hd; j++) o[j] = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            const int8_t *vt = vb + t * kstride;
            const float w = sc[t] * u->vs[t * ss + h];
            for (int64_t j = 0; j < hd; j++) o[j] += w * (float)vt[j];
        }
        float inv = 1.0f / sum;
        if (u->ml) u->ml[2 * g] = m, u->ml[2 * g + 1] = sum;
        for (int64_t j = 0; j < hd; j++) o[j] *= inv;
    }
}

/* 16-bit cache (fmt RYZ_KV_F16 or RYZ_KV_BF16): attend over the widened values */
static inline void attend_16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch, int fmt) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride;
    for (int64_t g = 0; g < u->H * G; g++) {
        const float *qh = u->q + g * hd;
        const uint16_t *kb = u->k16 + g / G * hd, *vb = u->v16 + g / G * hd;
        float *o = u->o + g * hd;
        float *sc = scratch;
        float m = -INFINITY;
        for (int64_t t = 0; t < L; t++) {
            const uint16_t *kt = kb + t * kstride;
            float d = 0.0f;
            for (int64_t j = 0; j < hd; j++) d += qh[j] * ryz_kv16_to_f32(kt[j], fmt);
            sc[t] = d * u->scale;
            if (sc[t] > m) m = sc[t];
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        for (int64_t j = 0; j < hd; j++) o[j] = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            const uint16_t *vt = vb + t * kstride;
            for (int64_t j = 0; j < hd; j++) o[j] += sc[t] * ryz_kv16_to_f32(vt[j], fmt);
        }
        float inv = 1.0f / sum;
        if (u->ml) u->ml[2 * g] = m, u->ml[2 * g + 1] = sum;
        for (int64_t j = 0; j < hd; j++) o[j] *= inv;
    }
}
static void attend_f16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_16(u, scratch, RYZ_KV_F16); }
static void attend_bf16(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) { attend_16(u, scratch, RYZ_KV_BF16); }

static void widen16(float *RYZ_RESTRICT dst, const uint16_t *RYZ_RESTRICT src, int64_t n, int fmt) {
    for (int64_t i = 0; i < n; i++) dst[i] = ryz_kv16_to_f32(src[i], fmt);
}

int ryz_store_kv16_row(uint16_t *RYZ_RESTRICT dst, const float *RYZ_RESTRICT x, int64_t n, int fmt) {
    int bad = 0;
    for (int64_t j = 0; j < n; j++) {
        const uint16_t h = fmt == RYZ_KV_BF16 ? ryz_f32_to_bf16(x[j]) : ryz_f32_to_f16(x[j]);
        bad |= fmt == RYZ_KV_BF16 ? (h & 0x7f80) == 0x7f80 : (h & 0x7c00) == 0x7c00; /* inf or NaN */
        dst[j] = h;
    }
    return bad;
}

/* ---- prefill blocks (ryz_attn_block, see attention.h): the online softmax over tiles of 16
 * keys, one query vector at a time ---- */
static void transpose_k(float *RYZ_RESTRICT kt, const float *k, int64_t kstride, int64_t hd, int64_t t0,
                        int64_t t1) {
    const int64_t tp = (t1 + 15) / 16 * 16;
    for (int64_t t = t0; t < tp; t++)
        for (int64_t d = 0; d < hd; d++) kt[t / 16 * hd * 16 + d * 16 + t % 16] = t < t1 ? k[t * kstride + d] : 0.0f;
}

static void attend_block(const ryz_attn_block *b, float *RYZ_RESTRICT scratch) {
    const int64_t G = b->G, hd = b->hd, TK = RYZ_ATTN_TILE_KEYS;
    float *acc = scratch, s[RYZ_ATTN_TILE_KEYS];
    for (int64_t v = 0; v < b->R * G; v++) {
        const int64_t r = v / G, g = v % G, L = b->L0 + r;
        const float *q = b->q + r * b->qstride + g * hd;
        float m = -INFINITY, l = 0.0f;
        for (int64_t d = 0; d < hd; d++) acc[d] = 0.0f;
        for (int64_t t0 = 0; t0 < L; t0 += TK) {
            const int64_t n = L - t0 < TK ? L - t0 : TK; /* keys of this tile the vector sees */
            const float *kt = b->kt + t0 * hd;
            float mt = -INFINITY;
            for (int64_t t = 0; t < n; t++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < hd; d++) dot += q[d] * kt[d * TK + t];
                s[t] = dot * b->scale;
                mt = s[t] > mt ? s[t] : mt;
            }
            const float mn = mt > m ? mt : m, a = expf(m - mn); /* m = -inf on the first tile: a = 0 */
            l *= a;
            for (int64_t d = 0; d < hd; d++) acc[d] *= a;
            for (int64_t t = 0; t < n; t++) {
                const float p = expf(s[t] - mn);
                const float *vr = b->v + (t0 + t) * b->kstride;
                l += p;
                for (int64_t d = 0; d < hd; d++) acc[d] += p * vr[d];
            }
            m = mn;
        }
        float *o = b->o + r * b->qstride + g * hd;
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < hd; d++) o[d] = acc[d] * inv;
    }
}

int ryz_quantize_kv_row(int8_t *RYZ_RESTRICT q8, float *RYZ_RESTRICT d, const float *RYZ_RESTRICT x,
                        int64_t n) {
    float amax = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        if (!(a <= 3.402823466e38f)) return 1; /* NaN or inf */
        amax = a > amax ? a : amax;
    }
    if (amax == 0.0f) {
        for (int64_t j = 0; j < n; j++) q8[j] = 0;
        *d = 0.0f;
        return 0;
    }
    const float s = 127.0f / amax;
    for (int64_t j = 0; j < n; j++) {
        float r = rintf(x[j] * s);
        q8[j] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
    *d = amax / 127.0f;
    return 0;
}

const ryz_attention_kernels ryz_attention_scalar = {
    .name = "scalar",
    .attend_block = attend_block,
    .transpose_k = transpose_k,
    .attend = attend,
    .attend_i8 = attend_i8,
    .attend_f16 = attend_f16,
    .attend_bf16 = attend_bf16,
    .widen16 = widen16,
};
