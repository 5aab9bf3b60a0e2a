/* bitnet_gemm.c: the batched ternary GEMMs and int8 head of bitnet_batch.c and bitnet_verify.c
 * (bitnet_gemm.h). No ISA code: the ternary, quant and layer dispatch tables do the work. */
#include <string.h>
#include <time.h>

#include "bitnet_gemm.h"
#include "layer.h"
#include "quant.h"

int ryz_bitnet_quantize_rows(const ryz_bitnet_rows *a, const float *x, int64_t ldx, int64_t K) {
    for (int64_t m = 0; m < a->M; m++) {
        int8_t *q = a->q + m * a->ldq;
        if (ryz_quant->quantize_row_i8(q, &a->sx[m], x + m * ldx, K)) return -2;
        memset(q + K, 0, (size_t)(a->ldq - K));
        a->qsum[m] = ryz_quant->sum_i8(q, K);
    }
    return 0;
}

ryz_ternary_job ryz_bitnet_gemm_job(float *out, const uint8_t *w, int64_t N, int64_t K, const ryz_bitnet_rows *a,
                                    float w_mult) {
    const int64_t Kp = a->t5 ? ryz_t5_padded_k(K) : ryz_i2_padded_k(K);
    const int64_t rb = a->t5 ? ryz_t5_row_bytes(K) : ryz_i2_row_bytes(K);
    return (ryz_ternary_job){.out_i = NULL, .out_f = out, .ldo = N, .w = w, .rb = rb, .q = a->q, .ldq = a->ldq,
                             .qsum = a->qsum, .sx = a->sx, .w_mult = w_mult, .M = a->M, .Kp = Kp, .N = N};
}

static void gemm_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const ryz_bitnet_gemm *g = ctx;
    for (int i = 0; i < g->n; i++) {
        const int64_t lo = b > g->start[i] ? b : g->start[i];
        const int64_t hi = e < g->start[i + 1] ? e : g->start[i + 1];
        if (lo < hi)
            (g->t5 ? ryz_ternary->gemm_t5 : ryz_ternary->gemm_i2)(&g->job[i], lo - g->start[i], hi - g->start[i]);
    }
}

/* Rows [0, N) of a job: one range of whole 16-row tiles per thread, walked in chunks of `chunk`
 * rows with work stealing. With a static split the job ended with the slower thread; on a
 * loaded machine that was often the caller doing both halves while the worker was descheduled
 * (8 streams, 2B-4T: the caller ran 3x the worker's GEMM rows, the worker spun between jobs). */
#define MAX_RANGES 64
static void run_stealing(ryz_task_fn fn, void *ctx, int64_t N, int64_t chunk) {
    const int64_t T = ryz_num_threads(), tiles = (N + 15) / 16;
    if (T < 2 || T > MAX_RANGES || tiles < 2 * T) {
        ryz_parallel_for(fn, ctx, N, 16);
        return;
    }
    int64_t ranges[MAX_RANGES][2];
    for (int64_t i = 0; i < T; i++) {
        ranges[i][0] = 16 * (i * (tiles / T) + (i < tiles % T ? i : tiles % T));
        const int64_t hi = ranges[i][0] + 16 * (tiles / T + (i < tiles % T ? 1 : 0));
        ranges[i][1] = hi < N ? hi : N;
    }
    ryz_parallel_ranges(fn, ctx, (const int64_t (*)[2])ranges, (int)T, chunk);
}

/* 64 rows a chunk: at 8 tokens and K = 2560, ~1.3 M multiply-adds (tens of microseconds) */
#define GEMM_CHUNK 64
void ryz_bitnet_gemm_run(ryz_bitnet_gemm *g, const ryz_bitnet_rows *a) {
    g->t5 = a->t5;
    run_stealing(gemm_task, g, g->start[g->n], GEMM_CHUNK);
}

typedef struct {
    float *logits;           /* [M, V] */
    const int8_t *w, *q;     /* head [V, D]; tokens [M, ldq] */
    const float *ws, *xs;    /* [V]; [M] */
    int64_t D, V, ldq, M;
} head_job;

static void head_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const head_job *h = ctx;
    ryz_layer->gemm_i8(h->logits, h->V, h->w, h->ws, h->D, h->q, h->ldq, h->xs, h->M, b, e);
}

/* 256 head rows a chunk: 0.6 MB of int8 weights at D = 2560 */
#define HEAD_CHUNK 256
void ryz_bitnet_head_run(float *logits, const ryz_bitnet_head *h, const int8_t *q, int64_t ldq, const float *xs,
                         int64_t M, int64_t D) {
    head_job j = {logits, h->w, q, h->s, xs, D, h->V, ldq, M};
    run_stealing(head_task, &j, h->V, HEAD_CHUNK);
}

int64_t ryz_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
