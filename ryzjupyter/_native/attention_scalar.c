/* attention_scalar.c: reference causal GQA attention (the specification; see attention.h). */
#include <math.h>

#include "attention.h"

static void attend(float *RYZ_RESTRICT out, const float *RYZ_RESTRICT q, const float *RYZ_RESTRICT k,
                   const float *RYZ_RESTRICT v, const ryz_attn_shape *s, int64_t i, int64_t kvh,
                   float *RYZ_RESTRICT scratch) {
    const int64_t G = s->Hq / s->Hkv, hd = s->hd, L = s->n_past + i + 1;
    const int64_t kstride = s->Hkv * hd;
    for (int64_t g = 0; g < G; g++) {
        const int64_t h = kvh * G + g;
        const float *qh = q + (i * s->Hq + h) * hd;
        float *o = out + (i * s->Hq + h) * hd;
        float *sc = scratch;
        float m = -INFINITY;
        for (int64_t t = 0; t < L; t++) {
            const float *kt = k + t * kstride + kvh * hd;
            float d = 0.0f;
            for (int64_t j = 0; j < hd; j++) d += qh[j] * kt[j];
            sc[t] = d * s->scale;
            if (sc[t] > m) m = sc[t];
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        for (int64_t j = 0; j < hd; j++) o[j] = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            const float *vt = v + t * kstride + kvh * hd;
            for (int64_t j = 0; j < hd; j++) o[j] += sc[t] * vt[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < hd; j++) o[j] *= inv;
    }
}

const ryz_attention_kernels ryz_attention_scalar = {
    .name = "scalar",
    .attend = attend,
};
