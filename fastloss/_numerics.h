/* Shared numerics for the fastloss kernels.
 *
 * 1. Vector math.  gcc only calls glibc's vector math library (libmvec) for exp/log/...
 *    inside a vectorised loop when the scalar function is declared `simd`.  glibc makes
 *    that declaration only under -ffast-math, which fastloss must never use (it breaks
 *    NaN handling and can switch the process to flush-to-zero), so we make it here.
 *    Each variant is <= 4 ulp (glibc's documented bound for libmvec).  Without glibc,
 *    or on an older one, the plain scalar libm is used: slower, same results.
 *
 * 2. Thread bookkeeping shared by every kernel module (fork safety).
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

/* Set by a kernel the first time it enters an OpenMP parallel region.  libgomp cannot
 * start a parallel region in a child forked after the parent used one (GCC bug 60035),
 * so the Python layer forces the serial path in such children. */
static int fastloss_parallel_used = 0;

#endif
