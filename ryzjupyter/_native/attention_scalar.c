/* attention_scalar.c: reference causal GQA attention (the specification; see attention.h). */
#include <math.h>

#include "attention.h"

static void attend(const ryz_attn_unit *u, float *RYZ_RESTRICT scratch) {
    const int64_t G = u->G, hd = u->hd, L = u->L, kstride = u->kstride;
    for (int64_t g = 0; g < G; g++) {
        const float *qh = u->q + g * hd;
        float *o = u->o + g * hd;
        float *sc = scratch;
        float m = -INFINITY;
        for (int64_t t = 0; t < L; t++) {
            const float *kt = u->k + t * kstride;
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
            const float *vt = u->v + t * kstride;
            for (int64_t j = 0; j < hd; j++) o[j] += sc[t] * vt[j];
        }
        float inv = 1.0f / sum;
        if (u->ml) u->ml[2 * g] = m, u->ml[2 * g + 1] = sum;
        for (int64_t j = 0; j < hd; j++) o[j] *= inv;
    }
}

const ryz_attention_kernels ryz_attention_scalar = {
    .name = "scalar",
    .attend = attend,
};
