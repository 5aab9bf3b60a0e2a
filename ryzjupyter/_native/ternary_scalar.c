/* ternary_scalar.c: reference ternary kernels and the layout conversions (see ternary.h). */
#include <stdlib.h>
#include <string.h>

#include "ternary.h"

/* ---- I2 layout ------------------------------------------------------------- */
void ryz_pack_i2(uint8_t *out, const int8_t *trits, int64_t N, int64_t K) {
    const int64_t Kp = ryz_i2_padded_k(K), rb = ryz_i2_row_bytes(K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < Kp / RYZ_I2_BLOCK; b++) {
            uint8_t *o = out + ryz_i2_offset(n, b, N, rb);
            for (int j = 0; j < RYZ_I2_BLOCK_BYTES; j++) {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    int64_t k = b * RYZ_I2_BLOCK + 64 * i + j;
                    unsigned c = k < K ? (unsigned)(trits[n * K + k] + 1) : 1u;
                    v |= c << (2 * i);
                }
                o[j] = (uint8_t)v;
            }
        }
}

void ryz_unpack_i2(int8_t *trits, const uint8_t *in, int64_t N, int64_t K) {
    const int64_t rb = ryz_i2_row_bytes(K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            int64_t b = k / RYZ_I2_BLOCK, r = k % RYZ_I2_BLOCK;
            unsigned byte = in[ryz_i2_offset(n, b, N, rb) + r % 64];
            trits[n * K + k] = (int8_t)((int)((byte >> (2 * (r / 64))) & 3u) - 1);
        }
}

/* acc = sum_k code[k] q[k] over the padded row, minus the activation sum */
void ryz_gemm_i2_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < j->M; m++) {
            const int8_t *q = j->q + m * j->ldq;
            int32_t acc = 0;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *w = j->w + ryz_i2_offset(n, b, j->N, j->rb);
                for (int i = 0; i < 4; i++)
                    for (int jj = 0; jj < RYZ_I2_BLOCK_BYTES; jj++)
                        acc += (int32_t)((w[jj] >> (2 * i)) & 3) * q[b * RYZ_I2_BLOCK + 64 * i + jj];
            }
            ryz_ternary_store(j, m, n, acc - j->qsum[m]);
        }
    }
}

/* ---- T5 layout ------------------------------------------------------------- */
void ryz_pack_t5(uint8_t *out, const int8_t *trits, int64_t K) {
    int64_t Kp = ryz_t5_padded_k(K);
    for (int64_t b = 0; b < Kp / RYZ_T5_BLOCK; b++)
        for (int j = 0; j < RYZ_T5_BLOCK_BYTES; j++) {
            unsigned c[5];
            for (int i = 0; i < 5; i++) {
                int64_t k = b * RYZ_T5_BLOCK + 64 * i + j;
                c[i] = k < K ? (unsigned)(trits[k] + 1) : 1u;
            }
            out[b * RYZ_T5_BLOCK_BYTES + j] = ryz_t5_encode(c);
        }
}

void ryz_unpack_t5(int8_t *trits, const uint8_t *in, int64_t K) {
    for (int64_t k = 0; k < K; k++) {
        int64_t b = k / RYZ_T5_BLOCK, r = k % RYZ_T5_BLOCK;
        unsigned c[5];
        ryz_t5_decode(c, in[b * RYZ_T5_BLOCK_BYTES + r % 64]);
        trits[k] = (int8_t)((int)c[r / 64] - 1);
    }
}

void ryz_gemm_t5_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    const int64_t nb = j->Kp / RYZ_T5_BLOCK;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *w = j->w + n * j->rb;
        for (int64_t m = 0; m < j->M; m++) {
            const int8_t *q = j->q + m * j->ldq;
            int32_t acc = 0;
            for (int64_t b = 0; b < nb; b++)
                for (int jj = 0; jj < RYZ_T5_BLOCK_BYTES; jj++) {
                    unsigned x = w[b * RYZ_T5_BLOCK_BYTES + jj];
                    for (int i = 0; i < 5; i++) {
                        acc += (int32_t)((3 * x) >> 8) * q[b * RYZ_T5_BLOCK + 64 * i + jj];
                        x = (3 * x) & 255;
                    }
                }
            ryz_ternary_store(j, m, n, acc - j->qsum[m]);
        }
    }
}

/* ---- TL layout ------------------------------------------------------------- */
static inline unsigned tl_index(int64_t k, const int8_t *trits, int64_t K) {
    int a = k < K ? trits[k] : 0, b = k + 1 < K ? trits[k + 1] : 0;
    return (unsigned)(3 * (a + 1) + (b + 1));
}

void ryz_pack_tl(uint8_t *out, const int8_t *trits, int64_t N, int64_t K) {
    int64_t rb = ryz_tl_row_bytes(K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < rb; c++)
            out[ryz_tl_offset(n, c, N, rb)] = (uint8_t)(tl_index(4 * c, trits + n * K, K) |
                                                        tl_index(4 * c + 2, trits + n * K, K) << 4);
}

void ryz_unpack_tl(int8_t *trits, const uint8_t *in, int64_t N, int64_t K) {
    int64_t rb = ryz_tl_row_bytes(K);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            unsigned idx = (in[ryz_tl_offset(n, k / 4, N, rb)] >> (4 * ((k / 2) & 1))) & 15u;
            trits[n * K + k] = (int8_t)((k & 1) ? (int)(idx % 3) - 1 : (int)(idx / 3) - 1);
        }
}

/* Table of one token: T[g * 16 + idx] = a0 (idx/3 - 1) + a1 (idx%3 - 1), idx 0..8
 * (16 slots so a SIMD variant can use the same table with vpshufb). */
void ryz_tl_build_table(int16_t *T, const int8_t *q, int64_t Kp) {
    for (int64_t g = 0; g < Kp / 2; g++) {
        int a0 = q[2 * g], a1 = q[2 * g + 1];
        int16_t *t = T + g * 16;
        for (int idx = 0; idx < 16; idx++)
            t[idx] = idx < 9 ? (int16_t)(a0 * (idx / 3 - 1) + a1 * (idx % 3 - 1)) : 0;
    }
}

/* the TL dot products of rows [n0, n1) with one token (T: its table, or NULL) */
void ryz_tl_rows_scalar(const ryz_ternary_job *j, int64_t m, const int16_t *T, int64_t n0, int64_t n1) {
    const int8_t *q = j->q + m * j->ldq;
    const int64_t rb = j->rb;
    for (int64_t n = n0; n < n1; n++) {
        int64_t n0t = n / RYZ_TL_ROWS * RYZ_TL_ROWS;
        int64_t h = j->N - n0t < RYZ_TL_ROWS ? j->N - n0t : RYZ_TL_ROWS;
        const uint8_t *w = j->w + n0t * rb + (n - n0t); /* byte c at w[c * h] */
        int32_t acc = 0;
        if (T) {
            for (int64_t c = 0; c < rb; c++) {
                unsigned b = w[c * h];
                acc += T[(2 * c) * 16 + (b & 15)];
                acc += T[(2 * c + 1) * 16 + (b >> 4)];
            }
        } else { /* no memory for the table: same sums without it */
            for (int64_t c = 0; c < rb; c++)
                for (int hh = 0; hh < 2; hh++) {
                    unsigned idx = (w[c * h] >> (4 * hh)) & 15u;
                    acc += q[4 * c + 2 * hh] * ((int)(idx / 3) - 1) +
                           q[4 * c + 2 * hh + 1] * ((int)(idx % 3) - 1);
                }
        }
        ryz_ternary_store(j, m, n, acc);
    }
}

void ryz_gemm_tl_scalar(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    int16_t *T = malloc((size_t)(j->Kp / 2) * 16 * sizeof(int16_t));
    for (int64_t m = 0; m < j->M; m++) {
        if (T) ryz_tl_build_table(T, j->q + m * j->ldq, j->Kp);
        ryz_tl_rows_scalar(j, m, T, n0, n1);
    }
    free(T);
}

/* ---- I2 at the scalar level: each block unpacked once for every token ------------------
 * The reference above unpacks a row again for every token. Here the activations are widened to
 * int16 once per call, a block of a row is unpacked once into 256 int16 codes (in L1), and the
 * codes are dotted with each token's activations (int16 x int16 into int32: plain C loops that
 * the compiler turns into SSE2 pmaddwd), up to RYZ_I2_SMALL_M tokens a pass, so the batched
 * decode step and the verify pass read and unpack each weight once for all their tokens. Same
 * integer sums as the reference. */
static int32_t dot_codes(const int16_t *c, const int16_t *q) {
    int32_t s = 0;
    for (int k = 0; k < RYZ_I2_BLOCK; k++) s += (int32_t)c[k] * q[k];
    return s;
}

static void gemm_i2_blocks(const ryz_ternary_job *j, int64_t n0, int64_t n1) {
    const int64_t nb = j->Kp / RYZ_I2_BLOCK;
    int16_t *q16 = malloc(sizeof(int16_t) * (size_t)(j->M * j->Kp));
    if (!q16) {   /* no memory for the widened activations: the reference */
        ryz_gemm_i2_scalar(j, n0, n1);
        return;
    }
    for (int64_t m = 0; m < j->M; m++)
        for (int64_t k = 0; k < j->Kp; k++) q16[m * j->Kp + k] = j->q[m * j->ldq + k];
    int16_t codes[RYZ_I2_BLOCK];
    int32_t acc[RYZ_I2_SMALL_M];
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m0 = 0; m0 < j->M; m0 += RYZ_I2_SMALL_M) {
            const int64_t nt = j->M - m0 < RYZ_I2_SMALL_M ? j->M - m0 : RYZ_I2_SMALL_M;
            memset(acc, 0, sizeof acc);
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *w = j->w + ryz_i2_offset(n, b, j->N, j->rb);
                for (int i = 0; i < 4; i++)   /* code c[64 i + jj] = bits 2i..2i+1 of byte jj */
                    for (int jj = 0; jj < RYZ_I2_BLOCK_BYTES; jj++)
                        codes[64 * i + jj] = (int16_t)((w[jj] >> (2 * i)) & 3);
                for (int64_t t = 0; t < nt; t++) acc[t] += dot_codes(codes, q16 + (m0 + t) * j->Kp + b * RYZ_I2_BLOCK);
            }
            for (int64_t t = 0; t < nt; t++) ryz_ternary_store(j, m0 + t, n, acc[t] - j->qsum[m0 + t]);
        }
    free(q16);
}

const ryz_ternary_kernels ryz_ternary_scalar = {
    .name = "scalar",
    .tl_name = "scalar",
    .t5_name = "scalar",
    .gemm_i2 = gemm_i2_blocks,
    .gemm_tl = ryz_gemm_tl_scalar,
    .gemm_t5 = ryz_gemm_t5_scalar,
};
