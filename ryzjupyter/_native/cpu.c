/* cpu.c: what the CPU has (CPUID) and what the OS lets us use (XGETBV/XCR0).
 * AVX state is usable only when XCR0 has SSE|AVX (bits 1-2); AVX-512 also needs
 * opmask|ZMM_Hi256|Hi16_ZMM (bits 5-7). CPUID alone is not enough. */
#include <cpuid.h>
#include <string.h>

#include "ryz.h"

static ryz_cpu_features g_cpu;
static int g_cpu_done = 0;

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    /* xgetbv with ecx = 0; encoded as bytes so no -mxsave flag is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect(void) {
    unsigned a, b, c, d;
    memset(&g_cpu, 0, sizeof g_cpu);
    unsigned max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 1) return;
    __cpuid(1, a, b, c, d);
    g_cpu.sse2 = (d >> 26) & 1;
    g_cpu.fma = (c >> 12) & 1;
    int osxsave = (c >> 27) & 1;
    g_cpu.avx = (c >> 28) & 1;
    g_cpu.f16c = (c >> 29) & 1;
    if (osxsave) {
        uint64_t xcr0 = read_xcr0();
        g_cpu.os_ymm = (xcr0 & 0x6) == 0x6;
        g_cpu.os_zmm = (xcr0 & 0xe6) == 0xe6;
    }
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        g_cpu.avx2 = (b >> 5) & 1;
        g_cpu.avx512f = (b >> 16) & 1;
        g_cpu.avx512dq = (b >> 17) & 1;
        g_cpu.avx512bw = (b >> 30) & 1;
        g_cpu.avx512vl = (b >> 31) & 1;
        g_cpu.avx512vbmi = (c >> 1) & 1;
        g_cpu.avx512vnni = (c >> 11) & 1;
        unsigned max_sub = a;
        if (max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            g_cpu.avxvnni = (a >> 4) & 1;
            g_cpu.avx512bf16 = (a >> 5) & 1;
        }
    }
}

const ryz_cpu_features *ryz_cpu(void) {
    if (!g_cpu_done) {
        detect();
        g_cpu_done = 1;
    }
    return &g_cpu;
}

int ryz_isa_supported(ryz_isa isa) {
    const ryz_cpu_features *f = ryz_cpu();
    switch (isa) {
    case RYZ_ISA_SCALAR:
        return 1;
    case RYZ_ISA_AVX2:
        return f->avx && f->avx2 && f->fma && f->f16c && f->os_ymm;
    case RYZ_ISA_AVX512VNNI:
        return ryz_isa_supported(RYZ_ISA_AVX2) && f->avx512f && f->avx512bw && f->avx512vl &&
               f->avx512vnni && f->os_zmm;
    default:
        return 0;
    }
}

ryz_isa ryz_best_isa(void) {
    for (int i = RYZ_ISA_COUNT - 1; i > 0; i--)
        if (ryz_isa_supported((ryz_isa)i)) return (ryz_isa)i;
    return RYZ_ISA_SCALAR;
}

static const char *const ISA_NAMES[RYZ_ISA_COUNT] = {"scalar", "avx2", "avx512vnni"};

const char *ryz_isa_name(ryz_isa isa) {
    return (isa >= 0 && isa < RYZ_ISA_COUNT) ? ISA_NAMES[isa] : "unknown";
}

int ryz_isa_from_name(const char *name, ryz_isa *out) {
    for (int i = 0; i < RYZ_ISA_COUNT; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            *out = (ryz_isa)i;
            return 0;
        }
    return -1;
}
