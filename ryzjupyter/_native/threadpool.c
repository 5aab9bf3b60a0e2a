/* threadpool.c: one persistent pool of pthreads, sized to the physical cores the
 * process may use (RYZ_NUM_THREADS overrides). The calling thread is worker 0 and
 * does a share of every job, so a pool of n threads starts n-1 pthreads.
 *
 * A job is published by bumping a generation counter. Workers spin briefly on it
 * (decode issues hundreds of short jobs per token, and a futex wake costs more
 * than the job), then sleep on a condition variable. A job is cut into one part
 * per thread; any thread may run any part, claiming it first (a compare-and-swap
 * of the part's generation tag; part 0 is the caller's alone), and the caller, after
 * its own part and a few microseconds of waiting (HELP_SPINS), runs the parts no worker
 * has claimed yet. On a loaded machine a descheduled worker then costs little: the
 * caller does its share instead of waiting for it to get a CPU. The partition does not
 * depend on who runs a part, so results are the same.
 * Started lazily; after fork() the child starts a fresh pool on first use. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ryz.h"

#define SPIN_ITERS 20000 /* ~ tens of microseconds of pause before sleeping */
/* What one thread writes while another spins on it sits alone in LINE bytes (two 64-byte lines:
 * the L2 fetches lines in pairs). A write to a line another core keeps reading costs a round
 * trip between the cores, and when the two cores of this machine type sit far apart (the
 * minutes in which it reads ~90 GB/s) that is ~0.3-0.5 us: with the job fields, the mutex and
 * `done` in the line the workers spun on, publishing a job took ~0.7 us and a worker started its
 * part ~1 us after the caller (an instrumented decode on a Zen 5). */
#define LINE 128

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

typedef struct {
    /* configuration */
    int nthreads;        /* total, caller included */
    int started;         /* workers running */
    pthread_t *threads;  /* nthreads - 1 workers */
    unsigned start_gen;  /* generation when the workers were created */
    /* job: written by the caller before it bumps gen, read by the workers after; fields_seq is
     * 2 gen - 1 while the fields of job gen are written, 2 gen once they are (a worker checks
     * it around its reads: see try_run_part) */
    atomic_uint fields_seq;
    ryz_task_fn fn;
    void *ctx;
    int64_t n, grain;
    int nparts;          /* threads taking part in this job */
    /* sleeping workers */
    _Alignas(LINE) pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int sleepers; /* workers blocked on cv (or about to be) */
    /* what idle workers spin on: written only to publish a job or to stop */
    _Alignas(LINE) atomic_uint gen;  /* bumped to publish a job */
    atomic_int stop;
    /* what the caller spins on at the end of a job */
    _Alignas(LINE) atomic_int done;  /* parts of the current job finished */
} pool_t;

static pool_t g_pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
static int g_requested = 0; /* 0: not decided yet */
/* One job at a time: Python threads that release the GIL may call in together. */
static pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER;

/* Contiguous range of part `i` out of `parts`, in units of `grain`. */
static void part_range(int64_t n, int64_t grain, int parts, int i, int64_t *b, int64_t *e) {
    int64_t blocks = (n + grain - 1) / grain;
    int64_t per = blocks / parts, rem = blocks % parts;
    int64_t bb = i * per + (i < rem ? i : rem);
    int64_t eb = bb + per + (i < rem ? 1 : 0);
    *b = bb * grain;
    *e = eb * grain < n ? eb * grain : n;
    if (*b > n) *b = n;
}

#define MAX_PARTS 1024
/* g_claim[i].tag: the newest generation that has claimed part i (a line each: the caller and a
 * worker claim parts 0 and 1 at the same moment) */
typedef struct {
    _Alignas(LINE) atomic_uint tag;
} claim_tag;
static claim_tag g_claim[MAX_PARTS];

/* Claim part i of job `gen` and run it. A thread still holding an old generation
 * can never claim a part of a newer job (the tag would have to equal its old
 * generation), and the job's fields are read only after a successful claim and only used
 * if they are job gen's (fields_seq == 2 gen before and after reading them): a worker that
 * saw gen late, when every part of job gen is done and the caller is already writing the
 * next job's fields, claims a part job gen did not have and must not run it with them. */
static int try_run_part(pool_t *p, int i, unsigned gen) {
    /* Tags only move forward: a part is claimable by job `gen` only while its tag
     * is older than `gen` (wrap-safe), so a stale thread can never take back a
     * part that a newer job has claimed. */
    unsigned cur = atomic_load_explicit(&g_claim[i].tag, memory_order_relaxed);
    for (;;) {
        if ((int)(cur - gen) >= 0) return 0;
        if (atomic_compare_exchange_weak_explicit(&g_claim[i].tag, &cur, gen, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    /* A thread with a stale part count may claim a part the current job does not
     * have, or claim under a generation that has ended: neither is run nor
     * counted (the tag it left is older than any later job's, so it is harmless). */
    if (atomic_load_explicit(&p->fields_seq, memory_order_acquire) != 2 * gen) return 0;
    const ryz_task_fn fn = p->fn;
    void *const ctx = p->ctx;
    const int64_t n = p->n, grain = p->grain;
    const int nparts = p->nparts;
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&p->fields_seq, memory_order_relaxed) != 2 * gen || i >= nparts) return 0;
    int64_t b, e;
    part_range(n, grain, nparts, i, &b, &e);
    if (b < e) fn(ctx, b, e, i);
    atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    return 1;
}

/* The caller's part 0: no claim (no worker ever takes part 0) and not counted in done, so that
 * nothing between publishing a job and starting its work is a locked instruction, which would
 * wait for the workers' line to change hands (~0.5 us when the cores sit far apart). */
static void run_own_part(pool_t *p) {
    int64_t b, e;
    part_range(p->n, p->grain, p->nparts, 0, &b, &e);
    if (b < e) p->fn(p->ctx, b, e, 0);
}

/* A worker: its own part, then any part still unclaimed but the caller's (part 0, which only
 * the caller runs). */
static void run_parts(pool_t *p, int self, unsigned gen, int nparts) {
    try_run_part(p, self, gen);
    for (int k = 1; k < nparts; k++)
        if ((self + k) % nparts) try_run_part(p, (self + k) % nparts, gen);
}

/* The caller, after its own part: wait for parts 1 .. parts - 1; only after HELP_SPINS pauses
 * (a worker not running: descheduled or asleep) run the parts nobody has claimed. Looking at
 * the workers' tags at once would cost each worker a round trip at its next claim. */
#define HELP_SPINS 256  /* ~ a few microseconds */
static void finish_parts(pool_t *p, unsigned gen, int parts) {
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < parts - 1; spins++) {
        if (spins == HELP_SPINS)
            for (int k = 1; k < parts; k++) try_run_part(p, k, gen);
        cpu_relax();
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    pool_t *p = &g_pool;
    /* Start from the generation at creation, not the current one: a job may be
     * published before this thread first runs, and it must not be skipped. */
    unsigned seen = p->start_gen;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            /* sleepers++ then a check of gen under mu; publish stores gen and then reads
             * sleepers without a fence, so a job published just now may be missed (the
             * caller runs its part, the next job's broadcast wakes this worker) */
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
        seen = g;
        /* nparts is read before claiming: a stale value only changes which
         * claims are tried, and a claim of a finished job always fails. */
        int nparts = p->nparts;
        if (id < nparts) run_parts(p, id, g, nparts);
    }
}

/* Physical cores among the CPUs this process may run on: count distinct
 * (package, core) pairs from sysfs; fall back to the affinity count. */
int ryz_physical_cores(void) {
    cpu_set_t set;
    int logical = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        logical = CPU_COUNT(&set);
    else
        logical = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (logical < 1) logical = 1;
    long seen_keys[1024];
    int nkeys = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && nkeys < 1024; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        char path[128];
        long core = -1, pkg = -1;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        FILE *f = fopen(path, "r");
        if (!f) return logical;
        if (fscanf(f, "%ld", &core) != 1) core = -1;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%ld", &pkg) != 1) pkg = 0;
            fclose(f);
        }
        if (core < 0) return logical;
        long key = pkg * 100000 + core;
        int dup = 0;
        for (int k = 0; k < nkeys; k++) dup |= seen_keys[k] == key;
        if (!dup) seen_keys[nkeys++] = key;
    }
    return nkeys > 0 ? nkeys : logical;
}

static int default_threads(void) {
    const char *env = getenv("RYZ_NUM_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == 0 && v >= 1 && v <= 1024) return (int)v;
        fprintf(stderr, "ryzjupyter: ignoring RYZ_NUM_THREADS=%s (want an integer 1..1024)\n", env);
    }
    return ryz_physical_cores();
}

static void pool_stop(pool_t *p) {
    if (!p->started) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads - 1; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    p->threads = NULL;
    p->started = 0;
    atomic_store(&p->stop, 0);
}

static void pool_start(pool_t *p) {
    if (g_requested == 0) g_requested = default_threads();
    p->nthreads = g_requested;
    p->started = 1;
    if (p->nthreads <= 1) return;
    p->start_gen = atomic_load(&p->gen);
    p->threads = calloc((size_t)p->nthreads - 1, sizeof(pthread_t));
    if (!p->threads) {
        p->nthreads = 1;
        return;
    }
    for (int i = 1; i < p->nthreads; i++) {
        if (pthread_create(&p->threads[i - 1], NULL, worker_main, (void *)(intptr_t)i) != 0) {
            /* could not start all: stop the ones we have and run single-threaded */
            int started = i - 1;
            p->nthreads = started + 1;
            pool_stop(p);
            p->nthreads = 1;
            p->started = 1;
            return;
        }
    }
}

static void atfork_child(void) {
    /* The child has only the forking thread: forget the parent's workers. */
    g_pool.started = 0;
    g_pool.threads = NULL;
    pthread_mutex_init(&g_job_mu, NULL);
    pthread_mutex_init(&g_pool.mu, NULL);
    pthread_cond_init(&g_pool.cv, NULL);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void install_atfork(void) { pthread_atfork(NULL, NULL, atfork_child); }

int ryz_num_threads(void) {
    if (g_requested == 0) g_requested = default_threads();
    return g_requested;
}

int ryz_set_num_threads(int n) {
    if (n < 1 || n > 1024) return -1;
    pthread_mutex_lock(&g_job_mu);
    pool_stop(&g_pool);
    g_requested = n;
    pthread_mutex_unlock(&g_job_mu);
    return 0;
}

/* Publish a job of `parts` parts (g_job_mu held); returns its generation. One plain store to
 * the line the workers spin on (only the caller, holding g_job_mu, writes gen), the mutex only
 * when a worker sleeps. A worker falling asleep just as the job is published may miss it (no
 * fence orders this store before the sleepers load): the caller then runs its part
 * (finish_parts) and the next job wakes it. */
static unsigned publish(pool_t *p, ryz_task_fn fn, void *ctx, int64_t n, int64_t grain, int parts) {
    const unsigned gen = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&p->fields_seq, 2 * gen - 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);  /* the odd value is seen before any new field */
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->grain = grain;
    p->nparts = parts;
    atomic_store_explicit(&p->fields_seq, 2 * gen, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->gen, gen, memory_order_release);
    if (atomic_load_explicit(&p->sleepers, memory_order_relaxed)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return gen;
}

/* The calling thread has a side job open (ryz_side_begin): it holds g_job_mu, so a
 * parallel_for it calls meanwhile runs on the caller alone. */
static _Thread_local int t_in_side = 0;

/* ryz_set_thread_limit: the calling thread's jobs use at most this many threads (0: no limit) */
static _Thread_local int t_limit = 0;
int ryz_set_thread_limit(int n) {
    const int old = t_limit;
    t_limit = n > 0 ? n : 0;
    return old;
}

void ryz_parallel_for_n(ryz_task_fn fn, void *ctx, int64_t n, int64_t grain, int max_threads) {
    pool_t *p = &g_pool;
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    pthread_once(&g_once, install_atfork);
    if (!p->started) pool_start(p);
    int64_t blocks = (n + grain - 1) / grain;
    int parts = p->nthreads;
    if (max_threads >= 1 && parts > max_threads) parts = max_threads;
    if (t_limit >= 1 && parts > t_limit) parts = t_limit;
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    if (parts > blocks) parts = (int)blocks;
    if (parts <= 1 || t_in_side) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&g_job_mu);
    unsigned gen = publish(p, fn, ctx, n, grain, parts);
    run_own_part(p);  /* own part first, then whatever no worker took */
    finish_parts(p, gen, parts);
    pthread_mutex_unlock(&g_job_mu);
}

/* ---- work stealing: ranges walked in chunks, the last chunks taken by whoever is free -----
 * Range i is meant for thread i (it runs part i of a pool job first). Its thread claims its
 * chunks from the front; a thread that has finished its own range claims the others' chunks
 * from the back, so a job ends when its items do, not when the slowest thread does (on a
 * shared machine one core is often slower for a while). Front and end of a range are one
 * 64-bit word changed by compare-and-swap, so every chunk is claimed exactly once; a range's
 * first chunk is never claimed (its front starts at 1): whoever runs part i runs it, at once
 * (part i is run exactly once), with no locked instruction before the first work. */
#define MAX_STEAL 64
typedef struct {
    _Alignas(LINE) _Atomic uint64_t fb;  /* next chunk from the front (low 32 bits), end (high) */
    int64_t lo, hi;
} steal_range;

typedef struct {
    ryz_task_fn fn;
    void *ctx;
    int64_t chunk;
    int n;
    steal_range *r;
} steal_job;

static int claim_chunk(steal_range *r, int back, int64_t *c) {
    uint64_t v = atomic_load_explicit(&r->fb, memory_order_relaxed);
    for (;;) {
        const uint64_t f = v & 0xffffffffu, e = v >> 32;
        if (f >= e) return 0;
        const uint64_t nv = back ? v - ((uint64_t)1 << 32) : v + 1;
        if (atomic_compare_exchange_weak_explicit(&r->fb, &v, nv, memory_order_relaxed, memory_order_relaxed)) {
            *c = (int64_t)(back ? e - 1 : f);
            return 1;
        }
    }
}

static void steal_task(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    steal_job *j = vctx;
    for (int64_t p = b; p < e; p++) {
        int64_t c;
        const steal_range *own = &j->r[p];
        if (own->lo < own->hi)   /* the first chunk of its own range: unclaimed, its own */
            j->fn(j->ctx, own->lo, own->lo + j->chunk < own->hi ? own->lo + j->chunk : own->hi, (int)p);
        for (int k = 0; k < j->n; k++) {  /* own range from the front, then the others' backs */
            steal_range *r = &j->r[(p + k) % j->n];
            while (claim_chunk(r, k > 0, &c)) {
                const int64_t lo = r->lo + c * j->chunk;
                j->fn(j->ctx, lo, lo + j->chunk < r->hi ? lo + j->chunk : r->hi, (int)p);
            }
        }
    }
}

typedef struct {
    ryz_task_fn fn;
    void *ctx;
    const int64_t (*ranges)[2];
} ranges_job;

static void ranges_task(void *vctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const ranges_job *j = vctx;
    for (int64_t i = b; i < e; i++)
        if (j->ranges[i][0] < j->ranges[i][1]) j->fn(j->ctx, j->ranges[i][0], j->ranges[i][1], (int)i);
}

void ryz_parallel_ranges(ryz_task_fn fn, void *ctx, const int64_t (*ranges)[2], int n, int64_t chunk) {
    if (n <= 0) return;
    if (chunk < 1) chunk = 1;
    if (n == 1 || n > MAX_STEAL || t_in_side) {  /* no stealing: one call a range */
        ranges_job j = {fn, ctx, ranges};
        ryz_parallel_for_n(ranges_task, &j, n, 1, n);
        return;
    }
    steal_range r[MAX_STEAL];
    for (int i = 0; i < n; i++) {
        r[i].lo = ranges[i][0];
        r[i].hi = ranges[i][1];
        const int64_t len = ranges[i][1] - ranges[i][0];
        atomic_init(&r[i].fb, len > 0 ? (uint64_t)((len + chunk - 1) / chunk) << 32 | 1 : 0);
    }
    steal_job j = {fn, ctx, chunk, n, r};
    ryz_parallel_for_n(steal_task, &j, n, 1, n);
}

/* ---- side job: one worker runs a function while the caller goes on ----------------------
 * Published as a job of two parts: part 0 (the caller's) is empty and never run, part 1
 * runs fn on whichever worker claims it (worker 1 with two threads). fn polls
 * ryz_side_should_stop() and returns soon after ryz_side_end() sets it; if no worker has
 * claimed part 1 by then, the caller runs it, and fn sees the stop at once. */
static ryz_side_fn g_side_fn;
static void *g_side_ctx;
static unsigned g_side_gen;
static struct {
    _Alignas(LINE) atomic_int v;  /* polled by the side job's worker: a line of its own */
} g_side_stop;

static void side_task(void *ctx, int64_t b, int64_t e, int part) {
    RYZ_UNUSED(ctx); RYZ_UNUSED(b); RYZ_UNUSED(e);
    if (part == 1) g_side_fn(g_side_ctx);
}

int ryz_side_should_stop(void) { return atomic_load_explicit(&g_side_stop.v, memory_order_acquire); }

int ryz_side_begin(ryz_side_fn fn, void *ctx) {
    pool_t *p = &g_pool;
    if (t_in_side) return 0;
    pthread_once(&g_once, install_atfork);
    if (!p->started) pool_start(p);
    if (p->nthreads < 2) return 0;
    pthread_mutex_lock(&g_job_mu);
    g_side_fn = fn;
    g_side_ctx = ctx;
    atomic_store_explicit(&g_side_stop.v, 0, memory_order_relaxed);
    g_side_gen = publish(p, side_task, NULL, 2, 1, 2);
    t_in_side = 1;
    return 1;
}

void ryz_side_end(int started) {
    pool_t *p = &g_pool;
    if (!started) return;
    atomic_store_explicit(&g_side_stop.v, 1, memory_order_release);
    finish_parts(p, g_side_gen, 2);  /* part 1 not claimed yet: fn returns at once */
    t_in_side = 0;
    pthread_mutex_unlock(&g_job_mu);
}

void ryz_parallel_for(ryz_task_fn fn, void *ctx, int64_t n, int64_t grain) {
    ryz_parallel_for_n(fn, ctx, n, grain, 0);
}
