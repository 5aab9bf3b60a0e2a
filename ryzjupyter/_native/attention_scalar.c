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
    .attend = attend,
    .attend_i8 = attend_i8,
};
