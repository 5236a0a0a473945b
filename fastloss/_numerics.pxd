# Shared scalar numerics of every kernel: one definition of each stable formula.
#
# All functions are generic over the element type (``floating``: float or double) and
# call the single- or double-precision function, so that a float32 kernel stays in
# float32 registers.  exp, log, log1p and tanh are glibc's vector math (libmvec) where gcc
# can call it, else fastloss's own inline C (section 1 of _numerics.h), which the compiler
# vectorises inside the kernels' loops.

from cython cimport floating
from libc.math cimport INFINITY

cdef extern from "_numerics.h" nogil:
    const char* FASTLOSS_VECTOR_MATH
    # fastloss's own (every build; the accuracy tests call these) ...
    double fastloss_exp(double)
    float fastloss_expf(float)
    double fastloss_log(double)
    float fastloss_logf(float)
    double fastloss_log1p(double)
    float fastloss_log1pf(float)
    double fastloss_tanh(double)
    float fastloss_tanhf(float)
    # ... and what the kernels use: these, or glibc's libmvec where gcc can call it
    double fastloss_kernel_exp(double)
    float fastloss_kernel_expf(float)
    double fastloss_kernel_log(double)
    float fastloss_kernel_logf(float)
    double fastloss_kernel_log1p(double)
    float fastloss_kernel_log1pf(float)
    double fastloss_kernel_tanh(double)
    float fastloss_kernel_tanhf(float)
    double sqrt(double)
    float sqrtf(float)
    double fabs(double)
    float fabsf(float)
    double fastloss_opaque_double(double x)
    float fastloss_opaque_float(float x)
    float fastloss_row_max_float(const float* x, Py_ssize_t n)
    double fastloss_row_max_double(const double* x, Py_ssize_t n)


cdef inline floating exp_(floating x) noexcept nogil:
    if floating is float:
        return fastloss_kernel_expf(x)
    else:
        return fastloss_kernel_exp(x)


cdef inline floating log_(floating x) noexcept nogil:
    if floating is float:
        return fastloss_kernel_logf(x)
    else:
        return fastloss_kernel_log(x)


cdef inline floating log1p_(floating x) noexcept nogil:
    if floating is float:
        return fastloss_kernel_log1pf(x)
    else:
        return fastloss_kernel_log1p(x)


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return fastloss_kernel_tanhf(x)
    else:
        return fastloss_kernel_tanh(x)


cdef inline floating sqrt_(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating abs_(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating exactly(floating x) noexcept nogil:
    """``x`` as computed: a sum containing it is never regrouped across it (see
    fastloss_opaque_double in _numerics.h).  For the few places where the grouping of a
    sum decides its accuracy, e.g. log_s - exactly(x_y - m)."""
    if floating is float:
        return fastloss_opaque_float(x)
    else:
        return fastloss_opaque_double(x)


# Ternaries, not fmax/fmin: gcc vectorises these, not the libm calls.  NaN in ``a``
# propagates (a comparison with NaN is false, so ``a`` is returned).
cdef inline floating max_(floating a, floating b) noexcept nogil:
    return b if a < b else a


cdef inline floating min_(floating a, floating b) noexcept nogil:
    return b if a > b else a


cdef inline floating clamped_log(floating x, floating floor) noexcept nogil:
    """max(log(x), floor): PyTorch's binary_cross_entropy clamps its logs at -100."""
    return max_(log_(x), floor)


cdef inline floating log1p_unit(floating e) noexcept nogil:
    """log(1 + e) for e in [0, 1], to float rounding, as a polynomial gcc vectorises.

    Every softplus needs log1p(exp(-|x|)) with exp(-|x|) in (0, 1]; on that domain this
    is cheaper than the general log1p_ (one division, no range reduction).  With
    s = e / (2 + e) in [0, 1/3], log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...);
    the terms shrink by 1/9 at least, so 7 (float) or 16 (double) of them reach the
    type's precision, and the result keeps full relative accuracy as e -> 0.
    """
    cdef floating one = 1, two = 2     # typed: a bare literal would be a C double
    cdef floating s = e / (two + e)
    cdef floating z = s * s
    cdef floating p
    if floating is float:
        p = (one + z * (<float>(1. / 3) + z * (<float>(1. / 5) + z * (<float>(1. / 7)
             + z * (<float>(1. / 9) + z * (<float>(1. / 11) + z * <float>(1. / 13)))))))
    else:
        p = (1 + z * (1. / 3 + z * (1. / 5 + z * (1. / 7 + z * (1. / 9 + z * (1. / 11
             + z * (1. / 13 + z * (1. / 15 + z * (1. / 17 + z * (1. / 19 + z * (1. / 21
             + z * (1. / 23 + z * (1. / 25 + z * (1. / 27 + z * (1. / 29
             + z * (1. / 31))))))))))))))))
    return two * s * p


cdef inline floating log1p_exp_neg_abs(floating x) noexcept nogil:
    """log(1 + exp(-|x|)), in (0, log 2]: the bounded part of every softplus."""
    return log1p_unit(exp_(-abs_(x)))


cdef inline floating softplus(floating x) noexcept nogil:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for every finite x."""
    return max_(x, <floating>0) + log1p_exp_neg_abs(x)


cdef inline floating sigmoid(floating x) noexcept nogil:
    """1 / (1 + exp(-x)) without overflow: exp is only taken of -|x|."""
    cdef floating one = 1
    cdef floating e = exp_(-abs_(x))
    cdef floating r = one / (one + e)
    return r if x >= 0 else e * r


cdef inline floating logistic(floating x, floating* sigmoid_x,
                             floating* sigmoid_minus_x) noexcept nogil:
    """log(1 + exp(-|x|)) (the bounded part of softplus(x) and softplus(-x)), with
    sigmoid(x) and sigmoid(-x) stored: every logistic loss needs the three, and one exp
    gives them all."""
    cdef floating one = 1
    cdef floating e = exp_(-abs_(x))
    cdef floating r = one / (one + e)
    sigmoid_x[0] = r if x >= 0 else e * r
    sigmoid_minus_x[0] = e * r if x >= 0 else r
    return log1p_unit(e)


cdef inline floating power_and_slope(floating b, double exponent,
                                     floating* slope) noexcept nogil:
    """b**e for b >= 0 and e >= 0, storing its derivative e b**(e - 1) in ``slope``, as
    torch.pow and its autograd: 0**0 = 1 with slope 0; at b = 0 the slope is inf for
    e < 1; e = 1 and 2 (the focal losses' usual gamma) are the exact products.

    Written without branches (every case computed, then selected) so that a loop
    calling it vectorises: gcc does not take a branch on ``exponent`` out of a loop as
    large as a loss's, and it keeps a libm call or a division under a branch as a
    branch, which leaves the loop scalar.
    """
    cdef floating e = <floating>exponent
    cdef floating one = 1, zero = 0
    cdef floating r = exp_(e * log_(b))
    cdef floating s = e * r / b     # computed before the select: a division inside a
    s = s if b > 0 else (<floating>INFINITY if e < 1 else zero)   # branch blocks it
    slope[0] = b + b if e == 2 else (one if e == 1 else (zero if e == 0 else s))
    return b * b if e == 2 else (b if e == 1 else (one if e == 0 else r))


cdef inline floating log_cosh(floating x) noexcept nogil:
    """log(cosh(x)) = |x| + log1p(exp(-2|x|)) - log 2, finite for every finite x."""
    cdef floating a = abs_(x)
    return a + log1p_unit(exp_(-(a + a))) - <floating>0.6931471805599453


# -- row helpers of the row losses (softmax family) -----------------------------------
# Plain loops over a contiguous row: the translation unit is compiled with reassociation
# (setup.py), so gcc vectorises the max/sum reductions, and the exp/log loops with the
# inline exp/log of _numerics.h.

cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max(x[0], ..., x[n-1]) for n >= 1, vectorised (a C helper: see _numerics.h).  With
    a NaN in x the result is unspecified: callers propagate NaN through exp(x - max)."""
    if floating is float:
        return fastloss_row_max_float(x, n)
    else:
        return fastloss_row_max_double(x, n)


cdef inline void rows_max(const floating* x, Py_ssize_t n_rows, Py_ssize_t n,
                          floating* maxes) noexcept nogil:
    """maxes[r] = max of row r of the (n_rows, n) array x, for short rows (n >= 1).

    The loop runs over the rows inside the loop over the columns: gcc vectorises it
    across rows (strided loads, no horizontal step), about 0.3 ns per element for any
    n, while a vectorised max of a single short row pays ~20 ns for its epilogue and
    reduction.  Worth it up to n ~ 32.  NaN: as row_max.
    """
    cdef Py_ssize_t r, c
    for r in range(n_rows):
        maxes[r] = x[r * n]
    for c in range(1, n):
        for r in range(n_rows):
            maxes[r] = max_(maxes[r], x[r * n + c])


cdef inline floating row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef floating s = 0
    cdef Py_ssize_t i
    for i in range(n):
        s += x[i]
    return s


cdef inline void exp_shifted(const floating* x, floating shift, floating* out,
                             Py_ssize_t n) noexcept nogil:
    """out[i] = exp(x[i] - shift); ``out`` may be ``x``."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = exp_(x[i] - shift)


cdef inline floating exp_shifted_sum(const floating* x, floating shift, floating* out,
                                     Py_ssize_t n) noexcept nogil:
    """out[i] = exp(x[i] - shift); returns their sum (one pass: exp and sum fused)."""
    cdef floating s = 0, e
    cdef Py_ssize_t i
    for i in range(n):
        e = exp_(x[i] - shift)
        out[i] = e
        s += e
    return s


cdef inline void exp_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = exp_(x[i])


cdef inline void log_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = log_(x[i])


cdef inline floating xlogx(floating x) noexcept nogil:
    """x log x with 0 log 0 = 0 (torch.xlogy(x, x)); NaN propagates.  The log is taken
    for every x, then selected: a libm call under a branch keeps a loop scalar."""
    cdef floating value = x * log_(x)
    return 0 if x == 0 else value
