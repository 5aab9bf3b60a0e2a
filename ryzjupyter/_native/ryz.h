/* ryz.h: what every compilation unit of ryzjupyter._native shares.
 *
 * Layout (ggml-style): each kernel family <fam> has
 *   <fam>.h            the dispatch table type and the per-ISA tables' declarations
 *   <fam>_scalar.c     the reference implementation in plain C (the specification)
 *   <fam>_avx2.c       AVX2+FMA variants, compiled with -mavx2 -mfma
 *   <fam>_avx512.c     AVX-512 F/BW/VL/VNNI variants, compiled with -mavx512*
 *   py_<fam>.c         the Python bindings: argument checks, GIL release, dispatch
 * and a function ryz_<fam>_select(isa) that points the family's table at the
 * variant for an ISA level and registers kernel name -> variant for native_info().
 * Fallback happens only at table level: an ISA file never hides a scalar path.
 */
#ifndef RYZ_H
#define RYZ_H

#include <stddef.h>
#include <stdint.h>

#define RYZ_VERSION "0.1.0"

#if defined(__GNUC__)
#define RYZ_RESTRICT __restrict__
#define RYZ_UNUSED(x) ((void)(x))
#define RYZ_LIKELY(x) __builtin_expect(!!(x), 1)
#define RYZ_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define RYZ_RESTRICT
#define RYZ_UNUSED(x) ((void)(x))
#define RYZ_LIKELY(x) (x)
#define RYZ_UNLIKELY(x) (x)
#endif

#define RYZ_EXPORT __attribute__((visibility("hidden")))

/* ---- ISA levels, lowest first --------------------------------------------- */
typedef enum {
    RYZ_ISA_SCALAR = 0,     /* plain C, any x86-64 */
    RYZ_ISA_AVX2 = 1,       /* AVX2 + FMA */
    RYZ_ISA_AVX512VNNI = 2, /* AVX-512 F/BW/VL + VNNI */
    RYZ_ISA_COUNT = 3
} ryz_isa;

const char *ryz_isa_name(ryz_isa isa);
int ryz_isa_from_name(const char *name, ryz_isa *out); /* 0 ok, -1 unknown name */

/* ---- CPU features (cpu.c) -------------------------------------------------- */
typedef struct {
    int sse2, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16, avx512vbmi;
    int avxvnni;
    int os_ymm, os_zmm; /* XCR0 says the OS saves YMM / ZMM state */
} ryz_cpu_features;

const ryz_cpu_features *ryz_cpu(void);
int ryz_isa_supported(ryz_isa isa); /* CPU has it and the OS enables it */
ryz_isa ryz_best_isa(void);
/* The selected level (what the dispatch tables point at). */
ryz_isa ryz_active_isa(void);

/* ---- kernel registry for native_info()["kernels"] ------------------------- */
void ryz_register_kernel(const char *name, const char *variant);

/* ---- persistent thread pool (threadpool.c) -------------------------------- */
/* A task gets a half-open range [begin, end) of items and the worker's index. */
typedef void (*ryz_task_fn)(void *ctx, int64_t begin, int64_t end, int tid);

int ryz_num_threads(void);        /* threads the pool uses (caller included) */
int ryz_physical_cores(void);     /* physical cores this process may run on */
int ryz_set_num_threads(int n);   /* 0 ok, -1 bad value; call with no job running */
/* The calling OS thread's jobs use at most n threads of the pool (n <= 0: all of them), until it
 * sets another limit; returns the previous limit (0: none). Other threads are not affected. */
int ryz_set_thread_limit(int n);

/* Run fn over [0, n) split into one contiguous range per thread, each range a
 * multiple of `grain` items (except the last). Blocks until all ranges are done.
 * Must be called WITHOUT the GIL held (it never touches Python). The split
 * depends only on n, grain and the thread count, and each item is computed by
 * exactly one thread, so integer kernels give identical results for any count. */
void ryz_parallel_for(ryz_task_fn fn, void *ctx, int64_t n, int64_t grain);
/* Same, with at most `max_threads` threads (>= 1). */
void ryz_parallel_for_n(ryz_task_fn fn, void *ctx, int64_t n, int64_t grain, int max_threads);

/* Work stealing over explicit ranges: range i is meant for thread i and is walked in chunks of
 * `chunk` items claimed from its front; a thread that has finished its own range takes the
 * last chunks of the others', so the job ends when its items do. Every item is still computed
 * exactly once, by a call fn(ctx, b, e, tid) with tid the index of the range whose thread runs
 * it. With more than 64 ranges, or inside a side job: one call a range, no stealing. */
void ryz_parallel_ranges(ryz_task_fn fn, void *ctx, const int64_t (*ranges)[2], int n, int64_t chunk);

/* Side job: ryz_side_begin(fn, ctx) has one worker run fn(ctx) while the caller goes on
 * with other work; ryz_side_end(started) asks fn to stop (fn polls ryz_side_should_stop())
 * and waits for it. Returns 1 if started (0: one thread, or a side job is already open;
 * pass the result to ryz_side_end). Until ryz_side_end the caller's parallel_for calls run
 * on the caller alone. For work that may stop anywhere, e.g. prefetching. */
typedef void (*ryz_side_fn)(void *ctx);
int ryz_side_begin(ryz_side_fn fn, void *ctx);
void ryz_side_end(int started);
int ryz_side_should_stop(void);

#if defined(__AVX512VNNI__)
/* acc += vpdpbusd(w, a) (u8 w times s8 a, summed 4 by 4 into int32 lanes) in place, as inline
 * asm: with the intrinsic GCC 12 copied the decode loops' accumulators between registers every
 * block. RYZ_DPBUSD_M takes the 64 bytes at p as the memory operand (one fused
 * load-and-multiply instead of a load and a multiply). */
#define RYZ_DPBUSD(acc, w, a) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(a))
#define RYZ_DPBUSD_M(acc, w, p) \
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const __m512i *)(const void *)(p)))
#endif

#endif /* RYZ_H */
