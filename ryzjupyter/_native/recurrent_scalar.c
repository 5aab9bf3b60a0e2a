/* recurrent_scalar.c: reference Mamba conv1d / selective scan and RWKV-4 WKV (the
 * specification; see recurrent.h). */
#include <math.h>

#include "recurrent.h"

static inline float silu1(float x) { return x / (1.0f + expf(-x)); }

static void conv1d(float *RYZ_RESTRICT out, float *RYZ_RESTRICT state, const float *RYZ_RESTRICT x,
                   const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT bias, int64_t T, int64_t D,
                   int64_t K, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        float *st = state + c * K;
        const float *wc = w + c * K;
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < K; j++) {
                int64_t s = t - (K - 1) + j;
                acc += wc[j] * (s >= 0 ? x[s * D + c] : st[K + s]);
            }
            if (bias) acc += bias[c];
            out[t * D + c] = silu1(acc);
        }
        ryz_conv_state_update(st, x, T, D, K, c);
    }
}

static void scan(float *RYZ_RESTRICT y, float *RYZ_RESTRICT h, const float *RYZ_RESTRICT u,
                 const float *RYZ_RESTRICT dt, const float *RYZ_RESTRICT A, const float *RYZ_RESTRICT B,
                 const float *RYZ_RESTRICT C, const float *RYZ_RESTRICT Dskip,
                 const float *RYZ_RESTRICT z, int64_t T, int64_t D, int64_t N, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        float *hc = h + c * N;
        const float *Ac = A + c * N;
        for (int64_t t = 0; t < T; t++) {
            float d = ryz_softplus(dt[t * D + c]), uc = u[t * D + c];
            const float *Bt = B + t * N, *Ct = C + t * N;
            float acc = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                hc[n] = expf(Ac[n] * d) * hc[n] + (d * Bt[n]) * uc;
                acc += hc[n] * Ct[n];
            }
            float out = acc + uc * Dskip[c];
            if (z) out *= silu1(z[t * D + c]);
            y[t * D + c] = out;
        }
    }
}

static void wkv(float *RYZ_RESTRICT out, float *RYZ_RESTRICT aa, float *RYZ_RESTRICT bb,
                float *RYZ_RESTRICT pp, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                const float *RYZ_RESTRICT time_decay, const float *RYZ_RESTRICT time_first, int64_t T,
                int64_t A, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
        float a = aa[c], b = bb[c], p = pp[c];
        const float w = -expf(time_decay[c]), u = time_first[c];
        for (int64_t t = 0; t < T; t++) {
            float kt = k[t * A + c], vt = v[t * A + c];
            float q = fmaxf(p, u + kt);
            float e1 = expf(p - q), e2 = expf(u + kt - q);
            out[t * A + c] = (e1 * a + e2 * vt) / (e1 * b + e2);
            float q2 = fmaxf(p + w, kt);
            e1 = expf(p + w - q2);
            e2 = expf(kt - q2);
            a = e1 * a + e2 * vt;
            b = e1 * b + e2;
            p = q2;
        }
        aa[c] = a;
        bb[c] = b;
        pp[c] = p;
    }
}

static void wkv7(float *RYZ_RESTRICT out, float *RYZ_RESTRICT S, const float *RYZ_RESTRICT r,
                 const float *RYZ_RESTRICT w, const float *RYZ_RESTRICT k, const float *RYZ_RESTRICT v,
                 const float *RYZ_RESTRICT a, const float *RYZ_RESTRICT b, int64_t T, int64_t H, int64_t N,
                 int64_t h0, int64_t h1) {
    int64_t C = H * N;
    for (int64_t h = h0; h < h1; h++) {
        float *st = S + h * N * N;
        for (int64_t t = 0; t < T; t++) {
            int64_t o = t * C + h * N;
            for (int64_t i = 0; i < N; i++) {
                float *row = st + i * N;
                float sa = 0.0f, acc = 0.0f;
                for (int64_t j = 0; j < N; j++) sa += row[j] * a[o + j];
                for (int64_t j = 0; j < N; j++) {
                    float x = row[j] * w[o + j] + sa * b[o + j] + v[o + i] * k[o + j];
                    row[j] = x;
                    acc += x * r[o + j];
                }
                out[o + i] = acc;
            }
        }
    }
}

const ryz_recurrent_kernels ryz_recurrent_scalar = {
    .name = "scalar",
    .conv1d = conv1d,
    .scan = scan,
    .wkv = wkv,
    .wkv7 = wkv7,
};
