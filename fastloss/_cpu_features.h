/* Which x86-64 micro-architecture level the running CPU (and operating system) supports,
 * asked of the CPU itself: CPUID for the instruction sets, XGETBV for the register state
 * the OS saves on a context switch (AVX needs the YMM state, AVX-512 the opmask and ZMM
 * states; a CPU with AVX-512 under an OS that does not save them must not run it).
 * Works on every OS and compiler the kernels build with; compiled into every kernel
 * module, but only ever asked through the baseline one (which runs on any x86-64).
 *
 * The levels are those of gcc/clang's -march=x86-64-vN (the x86-64 psABI):
 *   v2: CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3, SSSE3, SSE4.1, SSE4.2
 *   v3: v2 + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, OSXSAVE
 *   v4: v3 + AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL
 */
#ifndef FASTLOSS_CPU_FEATURES_H
#define FASTLOSS_CPU_FEATURES_H

#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#  define FASTLOSS_X86_64 1
#  if defined(_MSC_VER) && !defined(__clang__)
#    include <intrin.h>
#    include <immintrin.h>
static void fastloss_cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
    int regs[4];
    __cpuidex(regs, (int)leaf, (int)subleaf);
    r[0] = (unsigned)regs[0]; r[1] = (unsigned)regs[1];
    r[2] = (unsigned)regs[2]; r[3] = (unsigned)regs[3];
}
static unsigned long long fastloss_xgetbv0(void) { return _xgetbv(0); }
#  else
#    include <cpuid.h>
static void fastloss_cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
    __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
}
static unsigned long long fastloss_xgetbv0(void) {
    unsigned eax, edx;
    /* xgetbv by its opcode: no -mxsave needed to compile the baseline module */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#  endif
#else
#  define FASTLOSS_X86_64 0
#endif

#define FASTLOSS_HAS(reg, bit) (((reg) >> (bit)) & 1u)

/* 0 on a CPU that is not x86-64; else the highest level of 1 (baseline), 2, 3, 4 it
 * and the OS support. */
static int fastloss_x86_64_level(void) {
#if FASTLOSS_X86_64
    unsigned r0[4], r1[4], r7[4] = {0, 0, 0, 0}, rx0[4], rx1[4] = {0, 0, 0, 0};
    unsigned long long saved;
    int v2, v3, v4;
    fastloss_cpuid(0, 0, r0);
    fastloss_cpuid(1, 0, r1);
    if (r0[0] >= 7) fastloss_cpuid(7, 0, r7);
    fastloss_cpuid(0x80000000u, 0, rx0);
    if (rx0[0] >= 0x80000001u) fastloss_cpuid(0x80000001u, 0, rx1);
    /* leaf 1 ecx = r1[2]; leaf 7 ebx = r7[1]; leaf 0x80000001 ecx = rx1[2] */
    v2 = FASTLOSS_HAS(r1[2], 0) && FASTLOSS_HAS(r1[2], 9) && FASTLOSS_HAS(r1[2], 13)
         && FASTLOSS_HAS(r1[2], 19) && FASTLOSS_HAS(r1[2], 20) && FASTLOSS_HAS(r1[2], 23)
         && FASTLOSS_HAS(rx1[2], 0);
    if (!v2) return 1;
    v3 = FASTLOSS_HAS(r1[2], 12) && FASTLOSS_HAS(r1[2], 22) && FASTLOSS_HAS(r1[2], 27)
         && FASTLOSS_HAS(r1[2], 28) && FASTLOSS_HAS(r1[2], 29)
         && FASTLOSS_HAS(r7[1], 3) && FASTLOSS_HAS(r7[1], 5) && FASTLOSS_HAS(r7[1], 8)
         && FASTLOSS_HAS(rx1[2], 5);
    if (!v3) return 2;
    saved = fastloss_xgetbv0();         /* OSXSAVE is set: xgetbv is allowed */
    if ((saved & 0x6) != 0x6) return 2;  /* the OS does not save the XMM/YMM state */
    v4 = FASTLOSS_HAS(r7[1], 16) && FASTLOSS_HAS(r7[1], 17) && FASTLOSS_HAS(r7[1], 28)
         && FASTLOSS_HAS(r7[1], 30) && FASTLOSS_HAS(r7[1], 31)
         && (saved & 0xe0) == 0xe0;     /* opmask, ZMM0-15 upper halves, ZMM16-31 */
    return v4 ? 4 : 3;
#else
    return 0;
#endif
}

#endif
