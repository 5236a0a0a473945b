/* Shared numerics for the fastloss kernels.
 *
 * 1. Vector math: exp, log, log1p and tanh as inline C that the compiler vectorises in
 *    the kernels' loops, with any compiler and C library (no libm call, no libmvec),
 *    and the choice between them and glibc's libmvec for the kernels.
 *
 * 2. Numerical helpers that must be written in C (a vectorised row max, an opaque copy).
 *    When and how many threads run is in _parallel.h.
 */
#ifndef FASTLOSS_NUMERICS_H
#define FASTLOSS_NUMERICS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- 1. Vector math --------------------------------------------------------------------
 *
 * Branch-free C that gcc and clang vectorise when a loop calls it (SSE2 at the baseline,
 * AVX2/AVX-512 at the higher levels): every case is computed, then the result selected
 * with ternaries; the bits of a float are reached through memcpy; no libm call remains.
 * Range reductions as in fdlibm/SLEEF; polynomials are Chebyshev fits of this file's
 * own.  Accuracy (tests/test_vector_math.py): <= 2 ulp in float32 (every float32 tested)
 * and in float64; NaN, +-inf, +-0, subnormal arguments and results as libm gives them.
 *
 * The kernels are compiled with -fassociative-math (setup.py), which lets gcc regroup a
 * sum or a product: x - k ln2_hi - k ln2_lo into x - k (ln2_hi + ln2_lo), the rounding
 * (z + 1.5 2^23) - 1.5 2^23 into z, the error term x - ((1 + x) - 1) into 0, (p 2^k1) 2^k2
 * into p 2^(k1 + k2), which overflows.  Each step whose grouping matters passes through
 * FASTLOSS_ASSOC_BARRIER: its bits ORed with fastloss_opaque_zero, an integer operation
 * no floating-point rule crosses, one instruction in the loop.  Not gcc's
 * __builtin_assoc_barrier: gcc 12 vectorises it as a plain copy and then folds across it
 * ((z + C) - C became z: exp returned 2^round(x/ln2)); not the asm barrier
 * fastloss_opaque_* (section 2): gcc does not vectorise a loop containing asm.  The
 * barrier also hides the clamping bounds: gcc otherwise propagates a constant bound
 * through the following bit operations into a select of 64-bit integers on a double
 * comparison, which SSE2 cannot vectorise. */

/* Every function of this section is inlined, always: the kernels' translation unit is
 * large enough that gcc stops inlining plain `static inline` functions (see setup.py),
 * and a loop calling one does not vectorise. */
#if defined(__GNUC__) || defined(__clang__)
#  define FASTLOSS_VECTOR_INLINE static inline __attribute__((always_inline))
#else
#  define FASTLOSS_VECTOR_INLINE static inline
#endif

/* Zero, as far as the compiler knows any value: a weak definition may be replaced at
 * link time, so its value is never folded.  Nothing stores to it.  (MSVC builds without
 * reassociation, /fp:precise, so a plain zero serves there.) */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((weak, visibility("hidden"))) uint64_t fastloss_opaque_zero = 0;
#else
static const uint64_t fastloss_opaque_zero = 0;
#endif

FASTLOSS_VECTOR_INLINE float fastloss_barrier_float(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u |= (uint32_t)fastloss_opaque_zero;
    memcpy(&x, &u, 4);
    return x;
}

FASTLOSS_VECTOR_INLINE double fastloss_barrier_double(double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    u |= fastloss_opaque_zero;
    memcpy(&x, &u, 8);
    return x;
}

#define FASTLOSS_ASSOC_BARRIER(x) \
    _Generic((x), float: fastloss_barrier_float, default: fastloss_barrier_double)(x)

FASTLOSS_VECTOR_INLINE uint32_t fastloss_bits_float(float x)
{ uint32_t u; memcpy(&u, &x, 4); return u; }
FASTLOSS_VECTOR_INLINE float fastloss_float_bits(uint32_t u)
{ float x; memcpy(&x, &u, 4); return x; }
FASTLOSS_VECTOR_INLINE uint64_t fastloss_bits_double(double x)
{ uint64_t u; memcpy(&u, &x, 8); return u; }
FASTLOSS_VECTOR_INLINE double fastloss_double_bits(uint64_t u)
{ double x; memcpy(&x, &u, 8); return x; }

/* ln2 = LN2_HI + LN2_LO, LN2_HI with trailing zeros so that k LN2_HI is exact for every
 * exponent k the functions meet (|k| < 2^9 in float, < 2^11 in double). */
#define FASTLOSS_LN2_HI_F 0x1.62e4p-1f
#define FASTLOSS_LN2_LO_F 0x1.7f7d1cp-20f
#define FASTLOSS_LN2_HI_D 0x1.62e42feep-1
#define FASTLOSS_LN2_LO_D 0x1.a39ef35793c76p-33

/* x = k ln2 + r with |r| <= ln2/2 (k = round(x / ln2), |x / ln2| < 2^22 resp. 2^51);
 * returns expm1(r) = r + r^2 P(r) and stores k + FASTLOSS_EXP_BIAS (> 0: the halves of
 * k are taken by an unsigned shift, SSE2 has no 64-bit arithmetic one) in *kb. */
#define FASTLOSS_EXP_BIAS 2048u
FASTLOSS_VECTOR_INLINE float fastloss_expm1f_reduced(float x, uint32_t* kb)
{
    const float shift = 0x1.8p23f;   /* z + shift rounds z to an integer, kept in the
                                        low bits of the sum */
    float z = FASTLOSS_ASSOC_BARRIER(x * 0x1.715476p0f + shift);
    float k = z - shift;
    float r = FASTLOSS_ASSOC_BARRIER(x - k * FASTLOSS_LN2_HI_F) - k * FASTLOSS_LN2_LO_F;
    float p = 0x1.a12a42p-13f;
    p = p * r + 0x1.6d492p-10f;
    p = p * r + 0x1.1110ep-7f;
    p = p * r + 0x1.5554e4p-5f;
    p = p * r + 0x1.555556p-3f;
    p = p * r + 0x1p-1f;
    *kb = fastloss_bits_float(z) - fastloss_bits_float(shift) + FASTLOSS_EXP_BIAS;
    return r + FASTLOSS_ASSOC_BARRIER(r * r) * p;
}

FASTLOSS_VECTOR_INLINE double fastloss_expm1_reduced(double x, uint64_t* kb)
{
    const double shift = 0x1.8p52;
    double z = FASTLOSS_ASSOC_BARRIER(x * 0x1.71547652b82fep0 + shift);
    double k = z - shift;
    double r = FASTLOSS_ASSOC_BARRIER(x - k * FASTLOSS_LN2_HI_D) - k * FASTLOSS_LN2_LO_D;
    double p = 0x1.1f75aba0b1e2ep-29;
    p = p * r + 0x1.af52906239de4p-26;
    p = p * r + 0x1.27e4da1a3bf04p-22;
    p = p * r + 0x1.71ddffef9e7b1p-19;
    p = p * r + 0x1.a01a01a741b3cp-16;
    p = p * r + 0x1.a01a01aca0134p-13;
    p = p * r + 0x1.6c16c16c16212p-10;
    p = p * r + 0x1.111111110ff87p-7;
    p = p * r + 0x1.5555555555556p-5;
    p = p * r + 0x1.5555555555557p-3;
    p = p * r + 0x1p-1;
    *kb = fastloss_bits_double(z) - fastloss_bits_double(shift) + FASTLOSS_EXP_BIAS;
    return r + FASTLOSS_ASSOC_BARRIER(r * r) * p;
}

/* exp(x).  x is clamped to where exp is 0 or inf anyway; the scaling by 2^k is done in
 * two halves so that neither factor over- or underflows: p 2^k1 is normal, and the
 * second product rounds once, into a subnormal or to inf where exp does. */
FASTLOSS_VECTOR_INLINE float fastloss_expf(float x)
{
    uint32_t kb;
    float lo = FASTLOSS_ASSOC_BARRIER(-104.0f), hi = FASTLOSS_ASSOC_BARRIER(89.0f);
    float xc = lo > x ? lo : x;           /* NaN stays; this order of the operands is */
    xc = hi < xc ? hi : xc;               /* the one of SSE's maxps and minps */
    float p = 1.0f + fastloss_expm1f_reduced(xc, &kb);
    uint32_t k1b = kb >> 1;                           /* floor(k / 2) + BIAS / 2 */
    float s1 = fastloss_float_bits((k1b - FASTLOSS_EXP_BIAS / 2 + 127) << 23);
    float s2 = fastloss_float_bits((kb - k1b - FASTLOSS_EXP_BIAS / 2 + 127) << 23);
    return FASTLOSS_ASSOC_BARRIER(p * s1) * s2;
}

FASTLOSS_VECTOR_INLINE double fastloss_exp(double x)
{
    uint64_t kb;
    double lo = FASTLOSS_ASSOC_BARRIER(-746.0), hi = FASTLOSS_ASSOC_BARRIER(710.0);
    double xc = lo > x ? lo : x;
    xc = hi < xc ? hi : xc;
    double p = 1.0 + fastloss_expm1_reduced(xc, &kb);
    uint64_t k1b = kb >> 1;
    double s1 = fastloss_double_bits((k1b - FASTLOSS_EXP_BIAS / 2 + 1023) << 52);
    double s2 = fastloss_double_bits((kb - k1b - FASTLOSS_EXP_BIAS / 2 + 1023) << 52);
    return FASTLOSS_ASSOC_BARRIER(p * s1) * s2;
}

/* k ln2 + log(1 + f) + c for f in [sqrt(1/2) - 1, sqrt(2) - 1] and a small c, as fdlibm:
 * with s = f / (2 + f), log(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2)), summed
 * so that the exact f comes last. */
FASTLOSS_VECTOR_INLINE float fastloss_logf_reduced(float k, float f, float c)
{
    float s = f / (2.0f + f);
    float z = s * s;
    float q = 0x1.ddd4dap-3f;
    q = q * z + 0x1.245c28p-2f;
    q = q * z + 0x1.9999ecp-2f;
    q = q * z + 0x1.555556p-1f;
    float hfsq = 0.5f * f * f;
    float t = FASTLOSS_ASSOC_BARRIER(s * (hfsq + z * q) + FASTLOSS_ASSOC_BARRIER(
        k * FASTLOSS_LN2_LO_F + c));
    t = FASTLOSS_ASSOC_BARRIER(FASTLOSS_ASSOC_BARRIER(t - hfsq) + f);
    return t + k * FASTLOSS_LN2_HI_F;
}

FASTLOSS_VECTOR_INLINE double fastloss_log_reduced(double k, double f, double c)
{
    double s = f / (2.0 + f);
    double z = s * s;
    double q = 0x1.2b5f68a50d903p-3;
    q = q * z + 0x1.39fdcceb4bb45p-3;
    q = q * z + 0x1.7462b91b8df65p-3;
    q = q * z + 0x1.c71c62d5e53e0p-3;
    q = q * z + 0x1.2492492dfd86cp-2;
    q = q * z + 0x1.9999999995273p-2;
    q = q * z + 0x1.5555555555558p-1;
    double hfsq = 0.5 * f * f;
    double t = FASTLOSS_ASSOC_BARRIER(s * (hfsq + z * q) + FASTLOSS_ASSOC_BARRIER(
        k * FASTLOSS_LN2_LO_D + c));
    t = FASTLOSS_ASSOC_BARRIER(FASTLOSS_ASSOC_BARRIER(t - hfsq) + f);
    return t + k * FASTLOSS_LN2_HI_D;
}

/* The bits of u > 0 (normal) offset so that the exponent field holds k with
 * u = 2^k m, m in [sqrt(1/2), sqrt(2)); the mantissa of m - sqrt(1/2) below it. */
#define FASTLOSS_SQRT_HALF_BITS_F 0x3f3504f3u
#define FASTLOSS_SQRT_HALF_BITS_D 0x3fe6a09e667f3bcdull

/* log and log1p where the argument a (x, resp. 1 + x) is not positive or x not finite:
 * NaN for a < 0 or NaN, -inf at 0, +inf at +inf.  Selects of two values each: gcc turns
 * one select of more values into branches, and the loop would not vectorise. */
#define FASTLOSS_LOG_SPECIAL(T, x, a, result) do {                   \
        T special_ = (a) < 0 ? (T)NAN : (x);                          \
        special_ = (a) == 0 ? -(T)INFINITY : special_;                \
        result = ((a) > 0) & ((x) < (T)INFINITY) ? result : special_; \
    } while (0)

FASTLOSS_VECTOR_INLINE float fastloss_logf(float x)
{
    float xn = x < 0x1p-126f ? x * 0x1p23f : x;     /* subnormal (or not positive) */
    float shift = x < 0x1p-126f ? 23.0f : 0.0f;
    uint32_t ix = fastloss_bits_float(xn) + (0x3f800000u - FASTLOSS_SQRT_HALF_BITS_F);
    float k = (float)((int32_t)(ix >> 23) - 127) - shift;
    float f = fastloss_float_bits((ix & 0x007fffffu) + FASTLOSS_SQRT_HALF_BITS_F) - 1.0f;
    float r = fastloss_logf_reduced(k, f, 0.0f);
    FASTLOSS_LOG_SPECIAL(float, x, x, r);
    return r;
}

FASTLOSS_VECTOR_INLINE double fastloss_log(double x)
{
    double xn = x < 0x1p-1022 ? x * 0x1p54 : x;     /* subnormal (or not positive) */
    double shift = x < 0x1p-1022 ? 54.0 : 0.0;
    uint64_t ix = fastloss_bits_double(xn)
                  + (0x3ff0000000000000ull - FASTLOSS_SQRT_HALF_BITS_D);
    /* k as a double without an int64 conversion (none in SSE2/AVX2): the exponent field
     * placed in the mantissa of 2^52 */
    double k = fastloss_double_bits(0x4330000000000000ull | (ix >> 52))
               - (0x1p52 + 1023.0) - shift;
    double f = fastloss_double_bits((ix & 0x000fffffffffffffull)
                                    + FASTLOSS_SQRT_HALF_BITS_D) - 1.0;
    double r = fastloss_log_reduced(k, f, 0.0);
    FASTLOSS_LOG_SPECIAL(double, x, x, r);
    return r;
}

/* log1p(x) = log(u) + log(1 + c/u), u = 1 + x rounded and c = 1 + x - u its exact error
 * (Fast2Sum, the larger of 1 and x first); log(1 + c/u) = c/u to the precision needed.
 * |x| below half an ulp of 1: x itself (also keeps the sign of -0).  The argument itself
 * passes the barrier too: inlined into a kernel, 1 + x would otherwise be regrouped with
 * the caller's expression for x, e.g. 1 + -(1 - e) folded to e, which is not the value
 * 1 - (1 - e) rounded that a log1p call receives. */
FASTLOSS_VECTOR_INLINE float fastloss_log1pf(float x)
{
    x = FASTLOSS_ASSOC_BARRIER(x);
    float u = FASTLOSS_ASSOC_BARRIER(1.0f + x);
    uint32_t iu = fastloss_bits_float(u) + (0x3f800000u - FASTLOSS_SQRT_HALF_BITS_F);
    int32_t ki = (int32_t)(iu >> 23) - 127;
    float c = ki >= 2 ? 1.0f - FASTLOSS_ASSOC_BARRIER(u - x)
                      : x - FASTLOSS_ASSOC_BARRIER(u - 1.0f);
    float f = fastloss_float_bits((iu & 0x007fffffu) + FASTLOSS_SQRT_HALF_BITS_F) - 1.0f;
    float r = fastloss_logf_reduced((float)ki, f, c / u);
    r = (x < 0x1p-24f && x > -0x1p-24f) ? x : r;
    FASTLOSS_LOG_SPECIAL(float, x, u, r);
    return r;
}

FASTLOSS_VECTOR_INLINE double fastloss_log1p(double x)
{
    x = FASTLOSS_ASSOC_BARRIER(x);
    double u = FASTLOSS_ASSOC_BARRIER(1.0 + x);
    uint64_t iu = fastloss_bits_double(u)
                  + (0x3ff0000000000000ull - FASTLOSS_SQRT_HALF_BITS_D);
    double k = fastloss_double_bits(0x4330000000000000ull | (iu >> 52)) - (0x1p52 + 1023.0);
    double c = k >= 2.0 ? 1.0 - FASTLOSS_ASSOC_BARRIER(u - x)
                        : x - FASTLOSS_ASSOC_BARRIER(u - 1.0);
    double f = fastloss_double_bits((iu & 0x000fffffffffffffull)
                                    + FASTLOSS_SQRT_HALF_BITS_D) - 1.0;
    double r = fastloss_log_reduced(k, f, c / u);
    r = (x < 0x1p-53 && x > -0x1p-53) ? x : r;
    FASTLOSS_LOG_SPECIAL(double, x, u, r);
    return r;
}

/* tanh|x|: below 0.55 an odd polynomial, a + a^3 P(a^2); above, 1 - 2E/(1 + E) with
 * E = exp(-2|x|) <= 1/3, whose rounding errors the subtraction from 1 shrinks (the
 * division form -m/(2 + m), m = expm1(-2|x|), reaches 2.5 ulp).  |x| > 20 computes as 20
 * (tanh rounds to 1 from 9.1 in float, 19.1 in double).  The sign is x's own bit, so
 * tanh(-0) = -0. */
FASTLOSS_VECTOR_INLINE float fastloss_tanhf(float x)
{
    uint32_t kb;
    float a = fabsf(x);
    float big = FASTLOSS_ASSOC_BARRIER(20.0f);
    a = big < a ? big : a;                            /* NaN stays (minps) */
    float e = fastloss_expm1f_reduced(-2.0f * a, &kb);
    float E = fastloss_float_bits((kb - FASTLOSS_EXP_BIAS + 127) << 23) * (1.0f + e);
    float t_large = 1.0f - 2.0f * E / (1.0f + E);
    float z = a * a;
    float p = -0x1.b08b3ap-8f;
    p = p * z + 0x1.5d0b66p-6f;
    p = p * z + -0x1.b99e6ap-5f;
    p = p * z + 0x1.110fe4p-3f;
    p = p * z + -0x1.555554p-2f;
    float t = a < 0.55f ? a + FASTLOSS_ASSOC_BARRIER(a * z) * p : t_large;
    return fastloss_float_bits(fastloss_bits_float(t)
                               | (fastloss_bits_float(x) & 0x80000000u));
}

FASTLOSS_VECTOR_INLINE double fastloss_tanh(double x)
{
    uint64_t kb;
    double a = fabs(x);
    double big = FASTLOSS_ASSOC_BARRIER(20.0);
    a = big < a ? big : a;
    double e = fastloss_expm1_reduced(-2.0 * a, &kb);
    double E = fastloss_double_bits((kb - FASTLOSS_EXP_BIAS + 1023) << 52) * (1.0 + e);
    double t_large = 1.0 - 2.0 * E / (1.0 + E);
    double z = a * a;
    double p = -0x1.587e1331ed0fbp-16;
    p = p * z + 0x1.6491fc42e3b3fp-14;
    p = p * z + -0x1.ebefacabf2529p-13;
    p = p * z + 0x1.34c2e1d0c4cf5p-11;
    p = p * z + -0x1.7d97878672daep-10;
    p = p * z + 0x1.d6d334aa9d78cp-9;
    p = p * z + -0x1.226e32d9fc5afp-7;
    p = p * z + 0x1.664f4876986f6p-6;
    p = p * z + -0x1.ba1ba1b9fd6f2p-5;
    p = p * z + 0x1.1111111111027p-3;
    p = p * z + -0x1.5555555555555p-2;
    double t = a < 0.55 ? a + FASTLOSS_ASSOC_BARRIER(a * z) * p : t_large;
    return fastloss_double_bits(fastloss_bits_double(t)
                                | (fastloss_bits_double(x) & 0x8000000000000000ull));
}

/* ---- 2. Numerical helpers -------------------------------------------------------------- */

/* ---- The kernels' exp, log, log1p and tanh ------------------------------------------
 *
 * gcc calls glibc's vector math library (libmvec, <= 4 ulp) inside a vectorised loop when
 * the scalar function is declared `simd`; glibc makes that declaration only under
 * -ffast-math, which fastloss never uses, so it is made here.  Where that is possible
 * (gcc, glibc >= 2.35 for all four functions, x86-64) the kernels use libmvec: measured
 * on this project's machines it is faster per element than the functions above
 * (1.3-2.4x for exp, log, log1p), which compute every special case inline.  Everywhere
 * else (clang, macOS, Windows, musl, aarch64, older glibc) the kernels use the functions
 * above, vectorised by the compiler: the scalar libm calls they replace kept every such
 * loop scalar.  FASTLOSS_OWN_VECTOR_MATH forces the functions above. */
#if defined(__GLIBC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) \
    && !defined(FASTLOSS_OWN_VECTOR_MATH)
#  if __GLIBC_PREREQ(2, 35)
#    define FASTLOSS_SIMD_DECL __attribute__((__simd__("notinbranch")))
extern double exp(double) FASTLOSS_SIMD_DECL;
extern float expf(float) FASTLOSS_SIMD_DECL;
extern double log(double) FASTLOSS_SIMD_DECL;
extern float logf(float) FASTLOSS_SIMD_DECL;
extern double log1p(double) FASTLOSS_SIMD_DECL;
extern float log1pf(float) FASTLOSS_SIMD_DECL;
extern double tanh(double) FASTLOSS_SIMD_DECL;
extern float tanhf(float) FASTLOSS_SIMD_DECL;
#    define FASTLOSS_LIBMVEC 1
#  endif
#endif

#if defined(FASTLOSS_LIBMVEC)
#  define FASTLOSS_VECTOR_MATH "glibc libmvec"   /* build_info() */
#  define fastloss_kernel_exp exp
#  define fastloss_kernel_expf expf
#  define fastloss_kernel_log log
#  define fastloss_kernel_logf logf
#  define fastloss_kernel_log1p log1p
#  define fastloss_kernel_log1pf log1pf
#  define fastloss_kernel_tanh tanh
#  define fastloss_kernel_tanhf tanhf
#else
#  define FASTLOSS_VECTOR_MATH "fastloss polynomial"
#  define fastloss_kernel_exp fastloss_exp
#  define fastloss_kernel_expf fastloss_expf
#  define fastloss_kernel_log fastloss_log
#  define fastloss_kernel_logf fastloss_logf
#  define fastloss_kernel_log1p fastloss_log1p
#  define fastloss_kernel_log1pf fastloss_log1pf
#  define fastloss_kernel_tanh fastloss_tanh
#  define fastloss_kernel_tanhf fastloss_tanhf
#endif

/* Row maximum (n >= 1) as a vectorised reduction.  gcc does not vectorise a max written
 * as a ternary (NaN semantics), and a scalar max is a chain of dependent compares; the
 * OpenMP simd reduction allows it.  Which element wins when one is NaN is unspecified:
 * the softmax callers propagate NaN through exp(x - max) anyway. */
#if defined(_MSC_VER) && !defined(__clang__)
#  define FASTLOSS_SIMD_MAX_LOOP   /* MSVC's OpenMP 2.0 has no simd construct */
#else
#  define FASTLOSS_SIMD_MAX_LOOP _Pragma("omp simd reduction(max:m)")
#endif
#define FASTLOSS_DEFINE_ROW_MAX(name, type)                         \
    static inline type name(const type* x, ptrdiff_t n) {           \
        type m = x[0];                                              \
        FASTLOSS_SIMD_MAX_LOOP                                      \
        for (ptrdiff_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;  \
        return m;                                                   \
    }
FASTLOSS_DEFINE_ROW_MAX(fastloss_row_max_float, float)
FASTLOSS_DEFINE_ROW_MAX(fastloss_row_max_double, double)

/* An opaque copy of x.  The kernels are compiled with -fassociative-math so that gcc
 * vectorises their reductions; that flag also lets gcc regroup any sum, e.g.
 * log_s - (x_y - m) into (log_s + m) - x_y, which loses every digit of a small loss
 * against logits of 1e12.  An expression whose grouping matters passes its inner part
 * through this barrier: gcc cannot see through an asm statement, so it keeps the value
 * as computed.  It costs nothing but the register move. */
#if defined(__GNUC__) || defined(__clang__)
static inline double fastloss_opaque_double(double x) { __asm__("" : "+g"(x)); return x; }
static inline float fastloss_opaque_float(float x) { __asm__("" : "+g"(x)); return x; }
#else
static inline double fastloss_opaque_double(double x) { volatile double v = x; return v; }
static inline float fastloss_opaque_float(float x) { volatile float v = x; return v; }
#endif

#endif
