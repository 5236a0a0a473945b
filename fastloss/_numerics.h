/* Shared numerics for the fastloss kernels.
 *
 * 1. Vector math.  gcc only calls glibc's vector math library (libmvec) for exp/log/...
 *    inside a vectorised loop when the scalar function is declared `simd`.  glibc makes
 *    that declaration only under -ffast-math, which fastloss must never use (it breaks
 *    NaN handling and can switch the process to flush-to-zero), so we make it here.
 *    Each variant is <= 4 ulp (glibc's documented bound for libmvec).  Without glibc,
 *    or on an older one, the plain scalar libm is used: slower, same results.
 *
 * 2. Numerical helpers that must be written in C (a vectorised row max, an opaque copy).
 *    When and how many threads run is in _parallel.h.
 */
#ifndef FASTLOSS_NUMERICS_H
#define FASTLOSS_NUMERICS_H

#include <math.h>
#include <stddef.h>

#if defined(__GLIBC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) \
    && !defined(FASTLOSS_NO_VECTOR_MATH)
#  define FASTLOSS_SIMD_DECL __attribute__((__simd__("notinbranch")))
#  if __GLIBC_PREREQ(2, 22)
extern double exp(double) FASTLOSS_SIMD_DECL;
extern float expf(float) FASTLOSS_SIMD_DECL;
extern double log(double) FASTLOSS_SIMD_DECL;
extern float logf(float) FASTLOSS_SIMD_DECL;
#    define FASTLOSS_VECTOR_EXP_LOG 1
#  endif
#  if __GLIBC_PREREQ(2, 35)
extern double log1p(double) FASTLOSS_SIMD_DECL;
extern float log1pf(float) FASTLOSS_SIMD_DECL;
extern double tanh(double) FASTLOSS_SIMD_DECL;
extern float tanhf(float) FASTLOSS_SIMD_DECL;
#    define FASTLOSS_VECTOR_LOG1P_TANH 1
#  endif
#endif

#ifndef FASTLOSS_VECTOR_EXP_LOG
#  define FASTLOSS_VECTOR_EXP_LOG 0
#endif
#ifndef FASTLOSS_VECTOR_LOG1P_TANH
#  define FASTLOSS_VECTOR_LOG1P_TANH 0
#endif

/* Row maximum (n >= 1) as a vectorised reduction.  gcc does not vectorise a max written
 * as a ternary (NaN semantics), and a scalar max is a chain of dependent compares; the
 * OpenMP simd reduction allows it.  Which element wins when one is NaN is unspecified:
 * the softmax callers propagate NaN through exp(x - max) anyway. */
#define FASTLOSS_DEFINE_ROW_MAX(name, type)                         \
    static inline type name(const type* x, ptrdiff_t n) {           \
        type m = x[0];                                              \
        _Pragma("omp simd reduction(max:m)")                        \
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
