# Row losses: one term per row of an (N, C) y_pred (categorical and sparse categorical
# cross-entropy, KL divergence, multi-margin, multilabel margin), value and gradient in
# one pass.
#
# Layout of the work:
#   * ``rows_run`` cuts the rows into blocks (see _kernels.pxi) run serially or by a team
#     of threads; ``rows_chunk`` walks the rows of one block in softmax blocks.
#   * Losses of logits share a blocked softmax pass (``softmax_block``): the rows of a block
#     are shifted by their max and exponentiated into the gradient rows themselves (or a
#     per-thread scratch of at most max(C, SOFTMAX_BLOCK_ELEMS) elements when no gradient is
#     wanted), so there is never an N x C temporary.  Small C takes many rows per block, so
#     the exp, log and 1/sum loops run over long contiguous stretches (per-row overhead
#     dominates at C ~ 10); for C <= 32 the max, shift and sum loops run across the rows,
#     and sparse cross-entropy finishes the block across its rows too
#     (``sparse_logits_positions``, shared with class-strided scores).  C > 256 (fewer
#     than 8 rows a block) goes one row at a time: in float32 through the online pass
#     (``softmax_row_online``): the row is read once for its max and sum, chunk by chunk
#     with the lines ahead prefetched, its exponentials stored against the running max and
#     rescaled by the gradient loop (``exp_chunk_factor``), which reads them back from
#     cache once; in float64 (where that measured slower) twice, max then exp and sum.
#   * The per-row function of each loss (``*_row``) turns exp(x - max) into the scaled
#     gradient in place and returns the row's weighted loss.  ``scale_row`` is
#     grad_scale * sample_weight[row]: the reduction's denominator is folded in.
#   * Loss values are accumulated across rows in float64.
#   * Bad input (a probability outside [0, 1], a label outside [0, C)) raises a bit in
#     ``flags``, turned into a ValueError by the Python layer (fastloss/_rows.py).
#     Labels are checked in a cheap O(N) pass before the main pass (which also computes
#     the weighted-mean denominator of sparse cross-entropy), so the main pass never
#     indexes with a bad label.  An (N, C) matrix of class indices (multilabel margin)
#     is checked row by row in the main pass, before the row indexes with it.

from libc.math cimport INFINITY, NAN
from libc.float cimport FLT_MAX, DBL_MAX
from libc.stdint cimport int32_t, int64_t

cdef enum:
    # A block of the softmax pass holds at most this many elements (stays in L1 with its
    # rows of y_pred) and at most SOFTMAX_MAX_BLOCK_ROWS rows.
    SOFTMAX_BLOCK_ELEMS = 2048
    SOFTMAX_MAX_BLOCK_ROWS = 256
    # Fewer rows than this in a block: one row at a time, through the online pass
    # (softmax_row_online; the separate shift and sum passes of a block only pay off
    # for short rows).
    SOFTMAX_MIN_BLOCK_ROWS = 8
    # Rows of at most this many classes take their maxes across the rows (rows_max).
    SOFTMAX_ROWS_MAX_CLASSES = 32
    # The online pass reads a row in chunks of this many elements (2 KiB of float32,
    # 4 KiB of float64: the chunk is read twice, max then exp, from L1) ...
    ONLINE_CHUNK = 512
    # ... and asks for the cache lines this many bytes ahead of the chunk it reads, so
    # the next rows stream in while a row's exp and gradient run on cached data (the
    # hardware prefetcher stops at every 4 KiB page: a 1000-class float32 row is one)
    ONLINE_PREFETCH_BYTES = 4096
    CACHE_LINE_BYTES = 64

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define fastloss_prefetch(p) __builtin_prefetch((p), 0, 3)
    #else
    #define fastloss_prefetch(p) ((void)(p))
    #endif
    """
    void fastloss_prefetch(const void* p) noexcept nogil

cdef double KL_LOG_FLOOR = -100    # log q of kl_divergence from probabilities is >= this


# -- the kernel table ---------------------------------------------------------------
#
# As in _pointwise.pxi: per loss an id (kernels.RowKernel), a tag type named after the
# public loss, its ``*_row`` function and a line in dense_dispatch or sparse_dispatch.
# A row tag holds nothing (the parameters are RowParams); it only selects the
# specialisation, so the dispatch passes a NULL pointer of its type.

cpdef enum RowKernel:
    CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS
    CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES
    KL_DIVERGENCE_FROM_LOGITS
    KL_DIVERGENCE_FROM_PROBABILITIES
    SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS
    SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES
    MULTI_MARGIN
    CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_LOGITS
    CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES
    CATEGORICAL_HINGE
    COSINE_SIMILARITY
    MULTILABEL_SOFT_MARGIN
    MULTILABEL_MARGIN


cdef struct CategoricalCrossEntropyFromLogits:
    char unused
cdef struct CategoricalCrossEntropyFromProbabilities:
    char unused
cdef struct KLDivergenceFromLogits:
    char unused
cdef struct KLDivergenceFromProbabilities:
    char unused
cdef struct SparseCategoricalCrossEntropyFromLogits:
    char unused
cdef struct SparseCategoricalCrossEntropyFromProbabilities:
    char unused
cdef struct MultiMargin:
    char unused
cdef struct CategoricalFocalCrossEntropyFromLogits:
    char unused
cdef struct CategoricalFocalCrossEntropyFromProbabilities:
    char unused
cdef struct CategoricalHinge:
    char unused
cdef struct CosineSimilarity:
    char unused
cdef struct MultilabelSoftMargin:
    char unused
cdef struct MultilabelMargin:
    char unused

ctypedef fused RowLoss:
    CategoricalCrossEntropyFromLogits
    CategoricalCrossEntropyFromProbabilities
    KLDivergenceFromLogits
    KLDivergenceFromProbabilities
    SparseCategoricalCrossEntropyFromLogits
    SparseCategoricalCrossEntropyFromProbabilities
    MultiMargin
    CategoricalFocalCrossEntropyFromLogits
    CategoricalFocalCrossEntropyFromProbabilities
    CategoricalHinge
    CosineSimilarity
    MultilabelSoftMargin
    MultilabelMargin

ctypedef fused label_t:
    int32_t
    int64_t


cdef struct RowParams:
    Py_ssize_t n_classes
    double keep               # label smoothing eps: a label keeps 1 - eps
    double spread             # and eps / C goes to every class
    double z_loss
    double margin
    int power                 # multi-margin p (1 or 2)
    bint log_target           # kl_divergence: y_true holds log p
    bint has_ignore_index     # sparse cross-entropy: rows labelled ignore_index are skipped
    int64_t ignore_index
    double class_weight_sum   # sum of the class weights (C without class weights)
    double gamma              # focal: the focusing exponent


# -- the exp rows of the softmax losses ----------------------------------------------
#
# The logits losses receive in ``g`` the exponentials of their row, and its max m, 1 / sum
# and log(sum) of exp(x - m).  From the block pass (softmax_block) g holds exp(x - m)
# itself (``shifts`` NULL); from the online pass (softmax_row_online) each chunk of
# ONLINE_CHUNK elements holds exp(x - its shift), the running max when it was read, so
# the gradient loop multiplies that chunk by exp(shift - m) (exactly 1 from the chunk
# of the max on).  Both come through exp_chunk_end and exp_chunk_factor.

cdef inline Py_ssize_t exp_chunk_end(const floating* shifts, Py_ssize_t start,
                                     Py_ssize_t n) noexcept nogil:
    """The end of the chunk of an exp row of ``n`` elements that starts at ``start``."""
    return n if shifts == NULL else min(start + <Py_ssize_t>ONLINE_CHUNK, n)


cdef inline floating exp_chunk_factor(const floating* shifts, Py_ssize_t start,
                                      floating m) noexcept nogil:
    """What turns the stored exponentials of the chunk at ``start`` into exp(x - m)."""
    if shifts == NULL:
        return 1
    return exp_(shifts[start // ONLINE_CHUNK] - m)


# -- per-row math --------------------------------------------------------------------

cdef inline double categorical_logits_value(const RowParams* restrict prm, floating m,
                                            floating inv_s, floating log_s, floating dot,
                                            floating total_t, floating total_wt,
                                            floating scale_row,
                                            floating* restrict k) noexcept nogil:
    """The value of categorical_logits_row from the sums over its classes (``dot`` =
    sum_c a_c (x_c - m), ``total_t`` = sum_c t_c, ``total_wt`` = sum_c w_c t_c), and in
    ``k`` the factor of exp(x - m) in its gradient.  Shared by the row and the
    class-strided loops."""
    cdef double lse = <double>m + log_s
    cdef double a_sum = <floating>prm.keep * total_wt + <floating>prm.spread * prm.class_weight_sum
    cdef double z_weight = prm.z_loss * (total_wt / total_t if total_t != 0 else 0)
    k[0] = <floating>(scale_row * (a_sum + 2 * z_weight * lse) * inv_s)
    return a_sum * log_s - dot + z_weight * lse * lse


cdef inline double categorical_logits_row(const RowParams* restrict prm,
                                          const floating* restrict x, floating* restrict g,
                                          floating m, floating inv_s, floating log_s,
                                          const floating* restrict shifts,
                                          const floating* restrict t,
                                          const floating* restrict cw, floating sw,
                                          floating scale_row,
                                          int* restrict flags) noexcept nogil:
    """-sum_c a_c log_softmax(x)_c + z_loss W lse^2, a_c = w_c (t_c (1 - eps) + eps / C).

    torch cross_entropy with probability targets (label_smoothing, weight).  The z-loss is
    weighted by W = sum_c w_c t_c / sum_c t_c, the target-weighted mean class weight (1
    without class weights, w_y for a one-hot row, 0 for a row whose targets sum to 0).
    On entry ``g`` holds the row's exponentials (exp(x - m) once multiplied by their
    exp_chunk_factor), whose sum is 1 / ``inv_s``; on exit the gradient
    (A + 2 z W lse) softmax - a, times ``scale_row``.

    The value is computed as A log_s - sum_c a_c (x_c - m), A = sum_c a_c: the shifted
    logit x_c - m only ever enters a product.  (Under -fassociative-math gcc may regroup
    a sum such as log_s - (x_c - m) into (log_s + m) - x_c, which loses the digits of a
    small loss against logits of 1e4 in float32.)
    """
    cdef Py_ssize_t c, start, end, C = prm.n_classes
    cdef floating keep = <floating>prm.keep
    cdef floating spread = <floating>prm.spread
    cdef floating tc, k, kc
    # the row sums run in the element type (full vector width): their terms all have
    # one sign, so they are accurate to float rounding; the per-row scalars are float64
    cdef floating dot = 0, total_t = 0, total_wt = 0
    cdef double value
    cdef int bad = 0
    if cw == NULL:
        for c in range(C):
            tc = t[c]
            bad |= (tc < 0) | (tc > 1)
            total_t += tc
            dot += (tc * keep + spread) * (x[c] - m)
        total_wt = total_t
    else:
        for c in range(C):
            tc = t[c]
            bad |= (tc < 0) | (tc > 1)
            total_t += tc
            total_wt += cw[c] * tc
            dot += cw[c] * (tc * keep + spread) * (x[c] - m)
    flags[0] |= bad * TARGET_NOT_PROBABILITY
    value = categorical_logits_value(prm, m, inv_s, log_s, dot, total_t, total_wt,
                                     scale_row, &k)
    start = 0
    while start < C:
        end = exp_chunk_end(shifts, start, C)
        kc = k * exp_chunk_factor(shifts, start, m)
        if cw == NULL:
            for c in range(start, end):
                g[c] = kc * g[c] - scale_row * (t[c] * keep + spread)
        else:
            for c in range(start, end):
                g[c] = kc * g[c] - scale_row * cw[c] * (t[c] * keep + spread)
        start = end
    return sw * value


cdef inline double sparse_logits_value(const RowParams* restrict prm, floating m,
                                       floating inv_s, floating log_s, double shifted_y,
                                       double dot, floating wy, floating scale_row,
                                       floating* restrict k) noexcept nogil:
    """The value of sparse_logits_row from the shifted logit of the label ``shifted_y``
    = x_y - m (passed through exactly() by the caller), its class weight ``wy`` and
    (with smoothing) ``dot`` = sum_c w_c (x_c - m), and in ``k`` the factor of
    exp(x - m) in its gradient.  Shared by the row and the class-strided loops (where,
    without the opaque exactly() inside, the loop over a tile's positions vectorises)."""
    cdef floating keep = <floating>prm.keep
    cdef floating spread = <floating>prm.spread
    cdef double lse = <double>m + log_s, value
    value = keep * wy * (log_s - shifted_y)
    if spread != 0:
        value += spread * (prm.class_weight_sum * log_s - dot)
    value += prm.z_loss * wy * lse * lse
    k[0] = <floating>(scale_row * (keep * wy + spread * prm.class_weight_sum
                                   + 2 * prm.z_loss * wy * lse) * inv_s)
    return value


cdef inline double sparse_logits_row(const RowParams* restrict prm,
                                     const floating* restrict x, floating* restrict g,
                                     floating m, floating inv_s, floating log_s,
                                     const floating* restrict shifts, int64_t y,
                                     const floating* restrict cw, floating sw,
                                     floating scale_row, int* restrict flags) noexcept nogil:
    """torch cross_entropy with a class index: (1 - eps) w_y (-log p_y)
    + eps / C sum_c w_c (-log p_c) + z_loss w_y lse^2; zero for an ignored row.

    Without smoothing only x_y enters the value, so -inf in another class stays finite.
    ``g`` and the product form of the smoothing sum as in categorical_logits_row; the
    scalar part is computed in float64.
    """
    cdef Py_ssize_t c, start, end, C = prm.n_classes
    cdef floating keep = <floating>prm.keep
    cdef floating spread = <floating>prm.spread
    cdef floating wy, k, kc, b
    cdef double dot = 0, value
    if prm.has_ignore_index and y == prm.ignore_index:
        memset(g, 0, C * sizeof(floating))
        return 0
    wy = 1 if cw == NULL else cw[y]
    if spread != 0:
        if cw == NULL:
            for c in range(C):
                dot += x[c] - m
        else:
            for c in range(C):
                dot += cw[c] * (x[c] - m)
    value = sparse_logits_value(prm, m, inv_s, log_s, exactly(<double>x[y] - <double>m),
                                dot, wy, scale_row, &k)
    b = scale_row * spread
    start = 0
    while start < C:
        end = exp_chunk_end(shifts, start, C)
        kc = k * exp_chunk_factor(shifts, start, m)
        if cw == NULL or spread == 0:
            for c in range(start, end):
                g[c] = kc * g[c] - b
        else:
            for c in range(start, end):
                g[c] = kc * g[c] - b * cw[c]
        start = end
    g[y] -= scale_row * keep * wy
    return sw * value


cdef inline double kl_logits_row(const RowParams* restrict prm, const floating* restrict x,
                                 floating* restrict g, floating m, floating inv_s,
                                 floating log_s, const floating* restrict shifts,
                                 const floating* restrict t, floating sw,
                                 floating scale_row, int* restrict flags) noexcept nogil:
    """torch kl_div(log_softmax(x), p) summed over the row: sum_c p_c (log p_c - log q_c)
    (0 log 0 = 0), or with log_target sum_c exp(lp_c) (lp_c - log q_c).

    Computed as sum_c p_c log p_c + P log_s - sum_c p_c (x_c - m), P = sum_c p_c (product
    form as in categorical_logits_row); gradient P softmax - p.  ``g`` as there.
    """
    cdef Py_ssize_t c, start, end, C = prm.n_classes
    cdef floating p, lp, k, kc
    cdef floating entropy = 0, dot = 0, p_sum = 0  # single-signed sums: as categorical
    cdef int bad = 0
    if prm.log_target:
        for c in range(C):
            lp = t[c]
            bad |= lp > 0
            p = exp_(lp)
            p_sum += p
            entropy += p * lp
            dot += p * (x[c] - m)
        flags[0] |= bad * TARGET_NOT_LOG_PROBABILITY
    else:
        for c in range(C):
            p = t[c]
            bad |= (p < 0) | (p > 1)
            p_sum += p
            entropy += xlogx(p)
            dot += p * (x[c] - m)
        flags[0] |= bad * TARGET_NOT_PROBABILITY
    k = <floating>(scale_row * p_sum * inv_s)
    start = 0
    while start < C:
        end = exp_chunk_end(shifts, start, C)
        kc = k * exp_chunk_factor(shifts, start, m)
        if prm.log_target:
            for c in range(start, end):
                g[c] = kc * g[c] - scale_row * exp_(t[c])
        else:
            for c in range(start, end):
                g[c] = kc * g[c] - scale_row * t[c]
        start = end
    return sw * (<double>entropy + <double>p_sum * log_s - <double>dot)


cdef inline floating probability_sum(const floating* restrict p, Py_ssize_t n,
                                     int* restrict flags) noexcept nogil:
    """sum_c p_c, flagging any p_c outside [0, 1]."""
    cdef floating total = 0
    cdef int bad = 0
    cdef Py_ssize_t c
    for c in range(n):
        bad |= (p[c] < 0) | (p[c] > 1)
        total += p[c]
    flags[0] |= bad * PRED_NOT_PROBABILITY
    return total


cdef inline double categorical_probs_row(const RowParams* restrict prm,
                                         const floating* restrict x, floating* restrict g,
                                         const floating* restrict t,
                                         const floating* restrict cw, floating sw,
                                         floating scale_row,
                                         int* restrict flags) noexcept nogil:
    """Keras categorical_crossentropy of probabilities: -sum_c a_c log clip(x_c / X),
    X = sum_c x_c, clip to [1e-7, 1 - 1e-7], a_c as in categorical_logits_row.

    Gradient through the renormalisation and the clip:
    d/dx_j = (sum_{c unclipped} a_c - [j unclipped] a_j / q_j) / X.
    """
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating keep = <floating>prm.keep
    cdef floating spread = <floating>prm.spread
    cdef floating total = probability_sum(x, C, flags)
    cdef floating passed = 0, q, a, k
    cdef double loss = 0
    cdef int bad = 0
    for c in range(C):
        bad |= (t[c] < 0) | (t[c] > 1)
        a = t[c] * keep + spread
        if cw != NULL:
            a = a * cw[c]
        q = x[c] / total
        loss -= a * log_(keras_clip(q))
        passed += a if keras_unclipped(q) else 0
    flags[0] |= bad * TARGET_NOT_PROBABILITY
    k = scale_row / total
    for c in range(C):
        a = t[c] * keep + spread
        if cw != NULL:
            a = a * cw[c]
        q = x[c] / total
        g[c] = k * (passed - (a / q if keras_unclipped(q) else 0))
    return sw * loss


cdef inline double sparse_probs_row(const RowParams* restrict prm,
                                    const floating* restrict x, floating* restrict g,
                                    int64_t y, const floating* restrict cw, floating sw,
                                    floating scale_row, int* restrict flags) noexcept nogil:
    """categorical_probs_row with the one-hot target of label y (Keras
    sparse_categorical_crossentropy), smoothing and weights as torch; 0 if ignored."""
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating keep = <floating>prm.keep
    cdef floating spread = <floating>prm.spread
    cdef floating total = probability_sum(x, C, flags)
    cdef floating passed, q, a, k, wy, qy
    cdef double loss
    if prm.has_ignore_index and y == prm.ignore_index:
        memset(g, 0, C * sizeof(floating))
        return 0
    wy = 1 if cw == NULL else cw[y]
    qy = x[y] / total
    loss = -keep * wy * log_(keras_clip(qy))
    passed = keep * wy if keras_unclipped(qy) else 0
    k = scale_row / total
    if spread == 0:
        for c in range(C):
            g[c] = k * passed
    else:
        for c in range(C):
            a = spread if cw == NULL else spread * cw[c]
            q = x[c] / total
            loss -= a * log_(keras_clip(q))
            passed += a if keras_unclipped(q) else 0
        for c in range(C):
            a = spread if cw == NULL else spread * cw[c]
            q = x[c] / total
            g[c] = k * (passed - (a / q if keras_unclipped(q) else 0))
    if keras_unclipped(qy):
        g[y] -= k * keep * wy / qy
    return sw * loss


cdef inline floating kl_probs_gradient(floating q, floating log_q, floating p,
                                       floating scale_row) noexcept nogil:
    """-scale_row p / q, 0 where log q is floored."""
    return -scale_row * p / q if log_q > <floating>KL_LOG_FLOOR else 0


cdef inline double kl_probs_row(const RowParams* restrict prm, const floating* restrict x,
                                floating* restrict g, const floating* restrict t,
                                floating sw, floating scale_row,
                                int* restrict flags) noexcept nogil:
    """kl_div(log q, p) with q = x given as probabilities: log q floored at -100 (as torch
    binary_cross_entropy floors its logs), gradient -p / q where the floor is not active."""
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating q, log_q, p, lp
    cdef double loss = 0
    cdef int bad_q = 0, bad_t = 0
    # one loop per case: with exp and log inlined the loop is too large for gcc to take
    # the test of log_target out of it, and a loop containing it does not vectorise
    if prm.log_target:
        for c in range(C):
            q = x[c]
            bad_q |= (q < 0) | (q > 1)
            log_q = log_(q)
            lp = t[c]
            bad_t |= lp > 0
            p = exp_(lp)
            loss += p * (lp - max_(log_q, <floating>KL_LOG_FLOOR))
            g[c] = kl_probs_gradient(q, log_q, p, scale_row)
    else:
        for c in range(C):
            q = x[c]
            bad_q |= (q < 0) | (q > 1)
            log_q = log_(q)
            p = t[c]
            bad_t |= (p < 0) | (p > 1)
            loss += xlogx(p) - p * max_(log_q, <floating>KL_LOG_FLOOR)
            g[c] = kl_probs_gradient(q, log_q, p, scale_row)
    flags[0] |= bad_q * PRED_NOT_PROBABILITY
    flags[0] |= bad_t * (TARGET_NOT_LOG_PROBABILITY if prm.log_target
                         else TARGET_NOT_PROBABILITY)
    return sw * loss


cdef inline double multi_margin_row(const RowParams* restrict prm,
                                    const floating* restrict x, floating* restrict g,
                                    int64_t y, const floating* restrict cw, floating sw,
                                    floating scale_row) noexcept nogil:
    """torch multi_margin_loss: w_y / C sum_{c != y} max(0, margin - x_y + x_c)^p.

    A term is counted only where margin - x_y + x_c > 0, as torch (so a NaN term counts
    nothing).  Gradient w_y / C * (1 or 2 h_c) on x_c, minus their sum on x_y.
    """
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating wy = 1 if cw == NULL else cw[y]
    # torch's grouping of margin - x_y + x_c, which decides the value at large scores
    cdef floating shift = exactly(<floating>prm.margin - x[y])
    # fixed groupings: under -fassociative-math a compiler may regroup these products
    # differently in each specialisation (clang did for int32 and int64 labels), and the
    # gradient's last bit must not depend on the labels' dtype
    cdef floating coef = exactly(exactly(scale_row * wy) / C)
    cdef floating coef2 = exactly(2 * coef)
    cdef floating g_sum = 0, z, h, gc
    cdef double total = 0
    if prm.power == 1:
        for c in range(C):
            z = shift + x[c]
            h = z if (z > 0) & (c != y) else 0
            gc = coef if h > 0 else 0
            total += h
            g_sum += gc
            g[c] = gc
    else:
        for c in range(C):
            z = shift + x[c]
            h = z if (z > 0) & (c != y) else 0
            gc = coef2 * h
            total += h * h
            g_sum += gc
            g[c] = gc
    g[y] = -g_sum
    return sw * (wy * total / C)


cdef inline floating focal_term(floating q, floating a, double gamma,
                                floating* slope) noexcept nogil:
    """Keras' categorical focal term a (1 - c)^gamma (-log c) of the clipped probability
    c = clip(q); stores its derivative in q (0 where the clip is active)."""
    cdef floating one = 1, df
    cdef floating clipped = keras_clip(q)
    cdef floating f = power_and_slope(one - clipped, gamma, &df)
    cdef floating nll = -log_(clipped)
    # the division before the select: under a branch it would keep the loop scalar
    cdef floating derivative = -a * (df * nll + f / clipped)
    slope[0] = derivative if keras_unclipped(q) else 0
    return a * f * nll


cdef inline double focal_probs_row(const RowParams* restrict prm,
                                   const floating* restrict x, floating* restrict g,
                                   const floating* restrict t,
                                   const floating* restrict alpha, floating sw,
                                   floating scale_row, int* restrict flags) noexcept nogil:
    """Keras categorical_focal_crossentropy of probabilities: sum_c alpha_c t'_c
    (1 - q_c)^gamma (-log q_c), q = clip(x / X) as categorical_probs_row; ``alpha``
    holds C class weights (the Python layer expands a scalar alpha).

    With G_c the derivative of term c in q_c (0 where clipped), the gradient through the
    renormalisation is (G_j - sum_c G_c x_c / X) / X.
    """
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating keep = <floating>prm.keep, spread = <floating>prm.spread
    cdef floating total = probability_sum(x, C, flags)
    cdef floating q, slope, through = 0, k
    cdef double loss = 0
    cdef int bad = 0
    for c in range(C):
        bad |= (t[c] < 0) | (t[c] > 1)
        q = x[c] / total
        loss += focal_term(q, alpha[c] * (t[c] * keep + spread), prm.gamma, &slope)
        through += slope * q
        g[c] = slope
    flags[0] |= bad * TARGET_NOT_PROBABILITY
    k = scale_row / total
    for c in range(C):
        g[c] = k * (g[c] - through)
    return sw * loss


cdef inline double focal_logits_row(const RowParams* restrict prm,
                                    const floating* restrict x, floating* restrict g,
                                    floating m, floating inv_s,
                                    const floating* restrict shifts,
                                    const floating* restrict t,
                                    const floating* restrict alpha, floating sw,
                                    floating scale_row, int* restrict flags) noexcept nogil:
    """focal_probs_row of q = softmax(x) (Keras from_logits: the softmax, renormalised and
    clipped; where the clip is active the term is capped and passes no gradient).

    On entry ``g`` holds the row's exponentials, as for categorical_logits_row; the
    gradient through the softmax is q_j (G_j - sum_c G_c q_c).
    """
    cdef Py_ssize_t c, start, end, C = prm.n_classes
    cdef floating keep = <floating>prm.keep, spread = <floating>prm.spread
    cdef floating q, slope, through = 0, kc
    cdef double loss = 0
    cdef int bad = 0
    start = 0
    while start < C:
        end = exp_chunk_end(shifts, start, C)
        kc = inv_s * exp_chunk_factor(shifts, start, m)
        for c in range(start, end):
            bad |= (t[c] < 0) | (t[c] > 1)
            q = g[c] * kc
            loss += focal_term(q, alpha[c] * (t[c] * keep + spread), prm.gamma, &slope)
            slope = q * slope
            through += slope
            g[c] = slope
        start = end
    flags[0] |= bad * TARGET_NOT_PROBABILITY
    for c in range(C):  # q again: exp is cheaper than a second log and power
        g[c] = scale_row * (g[c] - exp_(x[c] - m) * inv_s * through)
    return sw * loss


cdef inline double categorical_hinge_row(const RowParams* restrict prm,
                                         const floating* restrict x, floating* restrict g,
                                         const floating* restrict t, floating sw,
                                         floating scale_row) noexcept nogil:
    """Keras categorical_hinge: max(0, 1 + max_c (1 - t_c) x_c - sum_c t_c x_c).

    The gradient is that of the formula under autograd (torch, JAX): the max shares its
    gradient equally between tied classes, and max(a, 0) passes half at a = 0.
    """
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating one = 1, pos = 0, neg = (one - t[0]) * x[0], share, half = 0.5
    cdef floating a, k
    cdef Py_ssize_t ties = 0
    for c in range(C):
        pos += t[c] * x[c]
        neg = max_((one - t[c]) * x[c], neg)
    for c in range(C):
        ties += (one - t[c]) * x[c] == neg
    a = neg - pos + one
    k = scale_row * (0 if a < 0 else (half if a == 0 else one))
    share = k / ties if ties else 0
    for c in range(C):
        g[c] = (one - t[c]) * (share if (one - t[c]) * x[c] == neg else 0) - k * t[c]
    return sw * (a if not a < 0 else 0)


cdef inline double cosine_similarity_row(const RowParams* restrict prm,
                                         const floating* restrict x, floating* restrict g,
                                         const floating* restrict t, floating sw,
                                         floating scale_row) noexcept nogil:
    """Keras cosine_similarity: -sum_c x_c t_c / (|x| |t|), each norm at least 1e-7
    (Keras' epsilon: the squared norm is clamped at 1e-14).

    Gradient -t_c / (|x| |t|) + (x.t) x_c / (|x|^3 |t|), without the second term where
    the norm of x is clamped.
    """
    cdef Py_ssize_t c, C = prm.n_classes
    # float64 sums and gradient arithmetic, also for float32 data: a row parallel to its
    # target has a gradient that cancels exactly, and coefficients rounded to float32
    # would leave 1e-5 of noise there (the products of floats are exact in float64)
    cdef double xx = 0, tt = 0, xt = 0
    cdef double inv_x, inv_t, value, k_t, k_x
    cdef double floor = KERAS_EPSILON * KERAS_EPSILON
    for c in range(C):
        xx += <double>x[c] * x[c]
        tt += <double>t[c] * t[c]
        xt += <double>x[c] * t[c]
    inv_x = 1 / sqrt(max_(xx, floor))
    inv_t = 1 / sqrt(max_(tt, floor))
    value = -xt * inv_x * inv_t
    k_t = -scale_row * inv_x * inv_t
    k_x = -scale_row * value * inv_x * inv_x if xx > floor else 0
    for c in range(C):
        g[c] = <floating>(k_t * t[c] + k_x * x[c])
    return sw * value


cdef inline double multilabel_soft_margin_row(const RowParams* restrict prm,
                                              const floating* restrict x,
                                              floating* restrict g,
                                              const floating* restrict t,
                                              const floating* restrict cw, floating sw,
                                              floating scale_row) noexcept nogil:
    """torch multilabel_soft_margin_loss: the mean over the classes of w_c (t_c
    softplus(-x_c) + (1 - t_c) softplus(x_c)); any real target, as torch."""
    cdef Py_ssize_t c, C = prm.n_classes
    cdef floating one = 1, term, grad, sig, sig_minus
    cdef floating k = scale_row / <floating>C
    cdef double total = 0
    if cw == NULL:    # two loops: a test of cw per element would keep gcc from vectorising
        for c in range(C):
            total += logistic_cross_entropy(x[c], t[c], one, &grad, &sig, &sig_minus)
            g[c] = k * grad
    else:
        for c in range(C):
            total += cw[c] * logistic_cross_entropy(x[c], t[c], one, &grad, &sig,
                                                    &sig_minus)
            g[c] = k * cw[c] * grad
    return sw * (total / C)


cdef inline double multilabel_margin_row(const RowParams* restrict prm,
                                         const floating* restrict x, floating* restrict g,
                                         const label_t* restrict y,
                                         floating* restrict masked, floating sw,
                                         floating scale_row,
                                         int* restrict flags) noexcept nogil:
    """torch multilabel_margin_loss: 1/C sum_k sum_{c not a target} max(0, 1 - x_{y_k} + x_c)
    over the entries y_k before the row's first -1 (a repeated target counts once per
    entry, as torch), the targets being the classes those entries name.

    Every entry of ``y``, also after the end, must lie in [-1, C), as torch checks the
    whole matrix: else LABEL_OUT_OF_RANGE is raised and the row left at zero before
    anything is indexed with it.  A term counts only where z = 1 - x_j + x_c > 0, as
    torch (a NaN score drops its term; at z = 0 the gradient is 0).  Gradient: 1/C per
    counted term on x_c, minus 1/C per counted term of target j on x_j, times
    ``scale_row``.

    ``masked`` (C elements of scratch) receives the row with its targets at -inf, so the
    inner loop has no membership test: -inf plus a score is -inf or NaN, never > 0.  The
    gradient row first counts the terms (small integers, exact in floating point), then
    is scaled once.
    """
    cdef Py_ssize_t c, k, C = prm.n_classes, end = prm.n_classes
    cdef int64_t j
    cdef int bad = 0
    cdef floating shift, z, hit, n_counted
    cdef floating coef = scale_row / C
    cdef double total = 0
    for c in range(C):
        bad |= (y[c] < -1) | (y[c] >= C)
    memset(g, 0, C * sizeof(floating))
    if bad:
        flags[0] |= LABEL_OUT_OF_RANGE
        return 0
    memcpy(masked, x, C * sizeof(floating))
    for k in range(C):
        if y[k] < 0:
            end = k
            break
        masked[y[k]] = -INFINITY
    for k in range(end):
        j = y[k]
        # torch's grouping (1 - x_j) + x_c, which decides the value at large scores
        shift = exactly(1 - x[j])
        n_counted = 0
        for c in range(C):
            z = shift + masked[c]
            hit = <floating>(z > 0)
            total += z if z > 0 else 0
            n_counted += hit
            g[c] += hit
        g[j] -= n_counted
    for c in range(C):
        g[c] *= coef
    return sw * (total / C)


# -- the loops -------------------------------------------------------------------------

cdef inline void softmax_block(const floating* restrict x, Py_ssize_t n_rows,
                               Py_ssize_t n_classes, floating* restrict e,
                               floating* restrict maxes, floating* restrict inv_sums,
                               floating* restrict log_sums) noexcept nogil:
    """For rows 0..n_rows-1 of x: e = exp(x - max(row)), the maxes, and 1 / sum and
    log(sum) of each row of e (vectorised over the block: no division per row)."""
    cdef Py_ssize_t r, c
    cdef floating m, one = 1
    cdef const floating* row
    cdef floating* out
    if n_rows == 1:
        maxes[0] = row_max(x, n_classes)
        log_sums[0] = exp_shifted_sum(x, maxes[0], e, n_classes)
    elif n_classes <= SOFTMAX_ROWS_MAX_CLASSES:
        # short rows: every loop but the exp runs across the rows, as rows_max (a loop
        # of a few elements per row would be all prologue and epilogue)
        rows_max(x, n_rows, n_classes, maxes)
        for c in range(n_classes):
            for r in range(n_rows):
                e[r * n_classes + c] = x[r * n_classes + c] - maxes[r]
        exp_inplace(e, n_rows * n_classes)
        for r in range(n_rows):
            log_sums[r] = e[r * n_classes]
        for c in range(1, n_classes):
            for r in range(n_rows):
                log_sums[r] += e[r * n_classes + c]
    else:
        # shift row by row, then one long exp loop over the whole block
        for r in range(n_rows):
            maxes[r] = row_max(x + r * n_classes, n_classes)
        for r in range(n_rows):
            row = x + r * n_classes
            out = e + r * n_classes
            m = maxes[r]
            for c in range(n_classes):
                out[c] = row[c] - m
        exp_inplace(e, n_rows * n_classes)
        for r in range(n_rows):
            log_sums[r] = row_sum(e + r * n_classes, n_classes)
    for r in range(n_rows):  # log_sums holds the sums until here
        inv_sums[r] = one / log_sums[r]
    log_inplace(log_sums, n_rows)


cdef inline void prefetch_ahead(const floating* p, Py_ssize_t n,
                                const floating* end) noexcept nogil:
    """Ask for the cache lines of the n elements that lie ONLINE_PREFETCH_BYTES after
    ``p``, those before ``end`` only (a hint: no fault, no effect on the results)."""
    cdef Py_ssize_t ahead = ONLINE_PREFETCH_BYTES // sizeof(floating)
    cdef Py_ssize_t line = CACHE_LINE_BYTES // sizeof(floating)
    cdef Py_ssize_t i = 0, left = end - p - ahead
    n = min(n, left)
    while i < n:
        fastloss_prefetch(p + ahead + i)
        i += line


cdef inline floating softmax_row_online(const floating* restrict x, Py_ssize_t n,
                                        floating* restrict e, floating* restrict shifts,
                                        const floating* stream_end,
                                        floating* restrict total) noexcept nogil:
    """The softmax of one long row in one read of it: returns its max m, sets ``total``
    to sum_c exp(x_c - m) and e to the row's exponentials by chunks (see
    exp_chunk_factor): chunk i (ONLINE_CHUNK elements) holds exp(x - shifts[i]), shifts[i]
    the running max when it was read, the sum rescaled when the max grows (online
    softmax: Milakov and Gimelshein, arXiv:1805.02867).  Each chunk is read twice from
    L1 (max, then exp and sum); the lines ahead, up to ``stream_end`` (the end of the
    block's rows), are prefetched meanwhile.

    A shift is never below the lowest finite value, so a run of -inf logits before the
    first finite one stores exp(-inf) = 0, not exp(-inf + inf) = NaN.  NaN propagates
    through the sum (never through the shift: comparisons with NaN are false); a row of
    -inf only gives a NaN softmax, as torch's.
    """
    cdef floating lowest = -FLT_MAX if floating is float else -DBL_MAX
    cdef floating m = -INFINITY, shift = lowest, s = 0, chunk_max
    cdef Py_ssize_t start = 0, end, i = 0
    while start < n:
        end = min(start + <Py_ssize_t>ONLINE_CHUNK, n)
        prefetch_ahead(x + start, end - start, stream_end)
        chunk_max = row_max(x + start, end - start)
        if chunk_max > m:
            m = chunk_max
        if chunk_max > shift:
            s = s * exp_(shift - chunk_max)
            shift = chunk_max
        shifts[i] = shift
        s += exp_shifted_sum(x + start, shift, e + start, end - start)
        start = end
        i += 1
    total[0] = s
    return m


cdef double rows_chunk(const RowLoss* restrict loss, const RowParams* restrict prm,
                       const floating* restrict x, const floating* restrict target,
                       const label_t* restrict labels, const floating* restrict class_weight,
                       const floating* restrict sample_weight, floating* restrict grad,
                       floating* restrict values, floating scale, Py_ssize_t start,
                       Py_ssize_t stop, int* restrict flags) noexcept nogil:
    """Rows start..stop-1: returns the sum of their weighted losses.

    ``grad`` (may be NULL: then a scratch buffer receives the unused gradient) gets the
    gradient times ``scale``; ``values`` (may be NULL) each row's weighted loss.
    """
    cdef Py_ssize_t C = prm.n_classes
    cdef Py_ssize_t block_rows = 1, block, n_block, r, row
    cdef floating maxes[SOFTMAX_MAX_BLOCK_ROWS]
    cdef floating inv_sums[SOFTMAX_MAX_BLOCK_ROWS]
    cdef floating log_sums[SOFTMAX_MAX_BLOCK_ROWS]
    cdef floating* scratch = NULL
    cdef floating* masked = NULL  # multilabel margin: a row with its targets masked
    cdef floating* shifts = NULL  # one row at a time: the shifts of its exp chunks
    cdef floating* buf
    cdef floating* g
    cdef floating sw = 1, one = 1, total
    cdef double acc = 0, v = 0
    if RowLoss is CategoricalCrossEntropyFromLogits or RowLoss is KLDivergenceFromLogits or RowLoss is SparseCategoricalCrossEntropyFromLogits or RowLoss is CategoricalFocalCrossEntropyFromLogits:
        block_rows = min(<Py_ssize_t>SOFTMAX_MAX_BLOCK_ROWS, SOFTMAX_BLOCK_ELEMS // C)
        if block_rows < SOFTMAX_MIN_BLOCK_ROWS:
            block_rows = 1
            # float32 rows take the online pass (measured against the two passes of
            # softmax_block: 512 x 32000 1.1-1.2x faster, 8192 x 1000 even); float64
            # rows were 10-25% slower through it, so they keep the two passes
            if floating is float:
                shifts = <floating*>malloc((C + ONLINE_CHUNK - 1) // ONLINE_CHUNK
                                           * sizeof(floating))
                if shifts == NULL:
                    flags[0] |= OUT_OF_MEMORY
                    return 0
    if grad == NULL:
        scratch = <floating*>malloc(block_rows * C * sizeof(floating))
        if scratch == NULL:
            free(shifts)
            flags[0] |= OUT_OF_MEMORY
            return 0
    if RowLoss is MultilabelMargin:
        masked = <floating*>malloc(C * sizeof(floating))
        if masked == NULL:
            free(scratch)
            flags[0] |= OUT_OF_MEMORY
            return 0
    block = start
    while block < stop:
        n_block = min(block_rows, stop - block)
        buf = scratch if grad == NULL else grad + block * C
        if RowLoss is CategoricalCrossEntropyFromLogits or RowLoss is KLDivergenceFromLogits or RowLoss is SparseCategoricalCrossEntropyFromLogits or RowLoss is CategoricalFocalCrossEntropyFromLogits:
            if shifts != NULL:
                maxes[0] = softmax_row_online(x + block * C, C, buf, shifts, x + stop * C,
                                              &total)
                inv_sums[0] = one / total
                log_sums[0] = log_(total)
            else:
                softmax_block(x + block * C, n_block, C, buf, maxes, inv_sums, log_sums)
        if RowLoss is SparseCategoricalCrossEntropyFromLogits:
            if C <= SOFTMAX_ROWS_MAX_CLASSES and n_block > 1:
                acc += sparse_logits_positions(
                    prm, x + block * C, 1, C, n_block, labels + block, class_weight,
                    NULL if sample_weight == NULL else sample_weight + block,
                    NULL if values == NULL else values + block, scale, maxes, inv_sums,
                    log_sums, NULL if grad == NULL else buf)
                block += n_block
                continue
        for r in range(n_block):
            row = block + r
            g = buf + r * C
            if sample_weight != NULL:
                sw = sample_weight[row]
            if RowLoss is CategoricalCrossEntropyFromLogits:
                v = categorical_logits_row(prm, x + row * C, g, maxes[r], inv_sums[r],
                                           log_sums[r], shifts, target + row * C,
                                           class_weight, sw, scale * sw, flags)
            elif RowLoss is KLDivergenceFromLogits:
                v = kl_logits_row(prm, x + row * C, g, maxes[r], inv_sums[r], log_sums[r],
                                  shifts, target + row * C, sw, scale * sw, flags)
            elif RowLoss is SparseCategoricalCrossEntropyFromLogits:
                v = sparse_logits_row(prm, x + row * C, g, maxes[r], inv_sums[r], log_sums[r],
                                      shifts, labels[row], class_weight, sw, scale * sw,
                                      flags)
            elif RowLoss is CategoricalCrossEntropyFromProbabilities:
                v = categorical_probs_row(prm, x + row * C, g, target + row * C,
                                          class_weight, sw, scale * sw, flags)
            elif RowLoss is SparseCategoricalCrossEntropyFromProbabilities:
                v = sparse_probs_row(prm, x + row * C, g, labels[row], class_weight, sw,
                                     scale * sw, flags)
            elif RowLoss is KLDivergenceFromProbabilities:
                v = kl_probs_row(prm, x + row * C, g, target + row * C, sw, scale * sw,
                                 flags)
            elif RowLoss is MultiMargin:
                v = multi_margin_row(prm, x + row * C, g, labels[row], class_weight, sw,
                                     scale * sw)
            elif RowLoss is CategoricalFocalCrossEntropyFromLogits:
                v = focal_logits_row(prm, x + row * C, g, maxes[r], inv_sums[r], shifts,
                                     target + row * C, class_weight, sw, scale * sw, flags)
            elif RowLoss is CategoricalFocalCrossEntropyFromProbabilities:
                v = focal_probs_row(prm, x + row * C, g, target + row * C, class_weight, sw,
                                    scale * sw, flags)
            elif RowLoss is CategoricalHinge:
                v = categorical_hinge_row(prm, x + row * C, g, target + row * C, sw,
                                          scale * sw)
            elif RowLoss is CosineSimilarity:
                v = cosine_similarity_row(prm, x + row * C, g, target + row * C, sw,
                                          scale * sw)
            elif RowLoss is MultilabelSoftMargin:
                v = multilabel_soft_margin_row(prm, x + row * C, g, target + row * C,
                                               class_weight, sw, scale * sw)
            elif RowLoss is MultilabelMargin:
                v = multilabel_margin_row(prm, x + row * C, g, labels + row * C, masked, sw,
                                          scale * sw, flags)
            acc += v
            if values != NULL:
                values[row] = <floating>v
        block += n_block
    free(scratch)
    free(masked)
    free(shifts)
    return acc


# -- class-strided scores ----------------------------------------------------------------
#
# Scores of shape (outer, C, S), S > 1 (torch's (N, C, d1, ..., dk) with S = d1 * ... * dk):
# the C scores of position (n, s) lie S elements apart.  The loops run over tiles of up to
# STRIDED_MAX_TILE consecutive positions of one n, and every loop of a tile runs over its
# positions, contiguous in memory: per class a vectorised max, exp and sum across the
# positions, so any C (even C = 2) runs at the full vector width.  The gradient is
# written in the same layout.  The per-position scalars are those of the row functions
# (sparse_logits_value, categorical_logits_value).

cdef enum:
    # positions x classes of a tile (its rows of y_pred and of the gradient stay in L1)
    STRIDED_TILE_ELEMS = 4096
    # positions of a tile: at most this many (per-position arrays on the stack), at least
    # STRIDED_MIN_TILE (one 64-byte line of float32 per class), a multiple of it
    STRIDED_MAX_TILE = 256
    STRIDED_MIN_TILE = 16


cdef inline Py_ssize_t strided_tile(Py_ssize_t n_classes, Py_ssize_t inner) noexcept nogil:
    """Positions per tile for C = ``n_classes`` and S = ``inner`` positions per n."""
    cdef Py_ssize_t t = STRIDED_TILE_ELEMS // max(n_classes, 1)
    t = t // STRIDED_MIN_TILE * STRIDED_MIN_TILE
    t = min(max(t, <Py_ssize_t>STRIDED_MIN_TILE), <Py_ssize_t>STRIDED_MAX_TILE)
    return min(t, inner)


cdef inline void softmax_tile(const floating* restrict x, Py_ssize_t stride, Py_ssize_t n,
                              Py_ssize_t n_classes, floating* restrict e,
                              Py_ssize_t e_stride, floating* restrict maxes,
                              floating* restrict inv_sums,
                              floating* restrict log_sums) noexcept nogil:
    """softmax_block for the ``n`` positions of a tile whose class c lies at
    x[c * stride + t]: e[c * e_stride + t] = exp(x - max over the classes), the maxes,
    and 1 / sum and log(sum) per position.  NaN as row_max."""
    cdef Py_ssize_t c, t
    cdef floating one = 1, v
    cdef const floating* xc
    cdef floating* ec
    for t in range(n):
        maxes[t] = x[t]
        log_sums[t] = 0
    for c in range(1, n_classes):
        xc = x + c * stride
        for t in range(n):
            maxes[t] = max_(maxes[t], xc[t])
    for c in range(n_classes):
        xc = x + c * stride
        ec = e + c * e_stride
        for t in range(n):
            v = exp_(xc[t] - maxes[t])
            ec[t] = v
            log_sums[t] += v
    for t in range(n):  # log_sums holds the sums until here
        inv_sums[t] = one / log_sums[t]
    log_inplace(log_sums, n)


cdef inline double sparse_logits_positions(
        const RowParams* restrict prm, const floating* restrict x, Py_ssize_t class_stride,
        Py_ssize_t pos_stride, Py_ssize_t n, const label_t* restrict labels,
        const floating* restrict class_weight, const floating* restrict sample_weight,
        floating* restrict values, floating scale, const floating* restrict maxes,
        const floating* restrict inv_sums, const floating* restrict log_sums,
        floating* restrict g) noexcept nogil:
    """Sparse cross-entropy from logits at ``n`` <= STRIDED_MAX_TILE positions whose class
    c lies at x[c * class_stride + t * pos_stride], every loop running across the
    positions: the positions of a tile of class-strided scores (``pos_stride`` 1), or
    a block of short rows (``class_stride`` 1, rows of C <= SOFTMAX_ROWS_MAX_CLASSES,
    whose per-row loops would be all overhead).  Returns the sum of their weighted
    losses; ``values`` (NULL: not wanted) gets each.  ``g`` (NULL: no gradient) holds
    exp(x - max) in the layout of x, turned into the gradient in place.

    Labels were checked before; an ignored position gets value 0 and a zero gradient,
    as in sparse_logits_row, whose scalars (sparse_logits_value) these are.
    """
    cdef Py_ssize_t c, t, C = prm.n_classes
    cdef floating ks[STRIDED_MAX_TILE]       # factor of exp(x - m) in the gradient
    cdef floating bs[STRIDED_MAX_TILE]       # scale_row * spread
    cdef floating hits[STRIDED_MAX_TILE]     # subtracted at the label
    cdef floating lives[STRIDED_MAX_TILE]    # 0 at an ignored position
    cdef Py_ssize_t ys[STRIDED_MAX_TILE]     # the label (0 if ignored)
    cdef double dots[STRIDED_MAX_TILE]       # sum_c w_c (x_c - m), float64
    cdef double shifted[STRIDED_MAX_TILE]    # x_y - m
    cdef floating sws[STRIDED_MAX_TILE]      # the sample weight
    cdef floating wys[STRIDED_MAX_TILE]      # the class weight of the label
    cdef floating keep = <floating>prm.keep, spread = <floating>prm.spread
    cdef floating w, srow, k
    cdef const floating* xc
    cdef floating* gc
    cdef int64_t y
    cdef bint live
    cdef double acc = 0, v
    for t in range(n):
        dots[t] = 0
    if spread != 0:
        for c in range(C):
            w = 1 if class_weight == NULL else class_weight[c]
            xc = x + c * class_stride
            for t in range(n):
                dots[t] += w * (xc[t * pos_stride] - maxes[t])
    for t in range(n):  # the gathers, by label
        y = labels[t]
        live = not (prm.has_ignore_index and y == prm.ignore_index)
        ys[t] = y if live else 0
        lives[t] = live
        sws[t] = 1 if sample_weight == NULL else sample_weight[t]
        wys[t] = 1 if class_weight == NULL else class_weight[ys[t]]
        shifted[t] = exactly(<double>x[ys[t] * class_stride + t * pos_stride]
                             - <double>maxes[t])
    for t in range(n):  # the per-position scalars, vectorised
        srow = scale * sws[t]
        v = sparse_logits_value(prm, maxes[t], inv_sums[t], log_sums[t], shifted[t],
                                dots[t], wys[t], srow, &k)
        v = sws[t] * v if lives[t] != 0 else 0
        ks[t] = k if lives[t] != 0 else 0
        bs[t] = srow * spread
        hits[t] = srow * keep * wys[t] if lives[t] != 0 else 0
        acc += v
        if values != NULL:
            values[t] = <floating>v
    if g == NULL:
        return acc
    for c in range(C):
        w = 1 if class_weight == NULL else class_weight[c]
        gc = g + c * class_stride
        # an ignored position is 0 even where exp(x - m) is NaN, as in the row loop
        for t in range(n):
            gc[t * pos_stride] = ((ks[t] * gc[t * pos_stride] - bs[t] * w)
                                  if lives[t] != 0 else 0)
    for t in range(n):
        g[ys[t] * class_stride + t * pos_stride] -= hits[t]
    return acc


cdef double strided_chunk(const RowLoss* restrict loss, const RowParams* restrict prm,
                          const floating* restrict x, const floating* restrict target,
                          const label_t* restrict labels,
                          const floating* restrict class_weight,
                          const floating* restrict sample_weight, floating* restrict grad,
                          floating* restrict values, floating scale, Py_ssize_t inner,
                          Py_ssize_t tile, Py_ssize_t start, Py_ssize_t stop,
                          int* restrict flags) noexcept nogil:
    """Tiles start..stop-1 of class-strided scores (outer, C, S = ``inner``), ``tile``
    positions each (the last tile of an n may be shorter): returns the sum of their
    weighted losses.  Labels, sample weights and values have one entry per position
    (outer * S, in order); ``grad`` (may be NULL: a scratch tile then receives the unused
    exp values) and ``target`` (categorical) have the layout of ``x``.

    Only the softmax cross-entropies: the sparse one (labels checked before, ignored
    positions get value 0 and a zero gradient, as sparse_logits_row) and the
    categorical one (targets outside [0, 1] flagged).
    """
    cdef Py_ssize_t C = prm.n_classes, per_outer = (inner + tile - 1) // tile
    cdef Py_ssize_t i, c, t, n, s0, base, pos, g_stride
    cdef floating maxes[STRIDED_MAX_TILE]
    cdef floating inv_sums[STRIDED_MAX_TILE]
    cdef floating log_sums[STRIDED_MAX_TILE]
    cdef floating ks[STRIDED_MAX_TILE]       # categorical: factor of exp(x - m) in the
    cdef floating bs[STRIDED_MAX_TILE]       # gradient, and scale_row
    cdef floating fdots[STRIDED_MAX_TILE]    # categorical: the sums of its row function
    cdef floating totals[STRIDED_MAX_TILE]
    cdef floating wtotals[STRIDED_MAX_TILE]
    cdef floating* scratch = NULL
    cdef floating* g
    cdef floating* gc
    cdef const floating* xc
    cdef const floating* tc_row
    cdef floating keep = <floating>prm.keep, spread = <floating>prm.spread
    cdef floating w, sw, srow, k, tc
    cdef int bad = 0
    cdef double acc = 0, v
    if grad == NULL:
        scratch = <floating*>malloc(C * tile * sizeof(floating))
        if scratch == NULL:
            flags[0] |= OUT_OF_MEMORY
            return 0
    for i in range(start, stop):
        s0 = (i % per_outer) * tile
        n = min(tile, inner - s0)
        base = (i // per_outer) * C * inner + s0
        pos = (i // per_outer) * inner + s0
        if grad == NULL:
            g = scratch
            g_stride = n
        else:
            g = grad + base
            g_stride = inner
        softmax_tile(x + base, inner, n, C, g, g_stride, maxes, inv_sums, log_sums)
        if RowLoss is SparseCategoricalCrossEntropyFromLogits:
            acc += sparse_logits_positions(
                prm, x + base, inner, 1, n, labels + pos, class_weight,
                NULL if sample_weight == NULL else sample_weight + pos,
                NULL if values == NULL else values + pos, scale, maxes, inv_sums,
                log_sums, NULL if grad == NULL else g)
        else:
            for t in range(n):
                fdots[t] = 0
                totals[t] = 0
                wtotals[t] = 0
            for c in range(C):
                w = 1 if class_weight == NULL else class_weight[c]
                xc = x + base + c * inner
                tc_row = target + base + c * inner
                for t in range(n):
                    tc = tc_row[t]
                    bad |= (tc < 0) | (tc > 1)
                    totals[t] += tc
                    wtotals[t] += w * tc
                    fdots[t] += w * (tc * keep + spread) * (xc[t] - maxes[t])
            for t in range(n):
                sw = 1 if sample_weight == NULL else sample_weight[pos + t]
                srow = scale * sw
                v = sw * categorical_logits_value(prm, maxes[t], inv_sums[t], log_sums[t],
                                                  fdots[t], totals[t], wtotals[t], srow,
                                                  &k)
                ks[t] = k
                bs[t] = srow
                acc += v
                if values != NULL:
                    values[pos + t] = <floating>v
            if grad == NULL:
                continue
            for c in range(C):
                w = 1 if class_weight == NULL else class_weight[c]
                gc = g + c * inner
                tc_row = target + base + c * inner
                for t in range(n):
                    gc[t] = ks[t] * gc[t] - bs[t] * w * (tc_row[t] * keep + spread)
    if RowLoss is CategoricalCrossEntropyFromLogits:
        flags[0] |= bad * TARGET_NOT_PROBABILITY
    free(scratch)
    return acc


cdef inline double block_chunk(const RowLoss* restrict loss, const RowParams* restrict prm,
                               const floating* restrict x, const floating* restrict target,
                               const label_t* restrict labels,
                               const floating* restrict class_weight,
                               const floating* restrict sample_weight,
                               floating* restrict grad, floating* restrict values,
                               floating scale, Py_ssize_t inner, Py_ssize_t tile,
                               Py_ssize_t start, Py_ssize_t stop,
                               int* restrict flags) noexcept nogil:
    """Items start..stop-1 of a block: rows (``inner`` = 1) or tiles of class-strided
    scores (only the softmax cross-entropies have that loop: see rows_call)."""
    if RowLoss is SparseCategoricalCrossEntropyFromLogits or RowLoss is CategoricalCrossEntropyFromLogits:
        if inner > 1:
            return strided_chunk(loss, prm, x, target, labels, class_weight, sample_weight,
                                 grad, values, scale, inner, tile, start, stop, flags)
    return rows_chunk(loss, prm, x, target, labels, class_weight, sample_weight, grad,
                      values, scale, start, stop, flags)


cdef double rows_run(const RowLoss* restrict loss, const RowParams* restrict prm,
                     const floating* restrict x, const floating* restrict target,
                     const label_t* restrict labels, const floating* restrict class_weight,
                     const floating* restrict sample_weight, floating* restrict grad,
                     floating* restrict values, floating scale, Py_ssize_t n_items,
                     Py_ssize_t inner, Py_ssize_t tile, int n_threads, Py_ssize_t block,
                     int* restrict flags) noexcept nogil:
    """All items (rows, or tiles of class-strided scores: see block_chunk), in blocks of
    ``block`` items (see _kernels.pxi): serially, or by a team of up to ``n_threads``
    threads."""
    cdef double partial[MAX_BLOCKS]
    cdef Py_ssize_t b, n_blocks = block_count(n_items, block)
    cdef Team team = team_for(n_blocks, n_threads)
    cdef int f = 0, block_flags
    if team.size <= 1:
        for b in range(n_blocks):
            partial[b] = block_chunk(loss, prm, x, target, labels, class_weight,
                                     sample_weight, grad, values, scale, inner, tile,
                                     b * block, min((b + 1) * block, n_items), flags)
        return ordered_sum(partial, n_blocks)
    for b in prange(n_blocks, nogil=True, schedule="static", num_threads=team.size):
        block_flags = 0
        partial[b] = block_chunk(loss, prm, x, target, labels, class_weight, sample_weight,
                                 grad, values, scale, inner, tile, b * block,
                                 min((b + 1) * block, n_items), &block_flags)
        f |= block_flags
        block_done(&team, b)
    team_finished(&team)
    flags[0] |= f
    return ordered_sum(partial, n_blocks)


# -- labels ----------------------------------------------------------------------------

cdef double label_weights_chunk(const label_t* labels, const RowParams* prm,
                                const floating* class_weight, Py_ssize_t start,
                                Py_ssize_t stop, Py_ssize_t* n_bad) noexcept nogil:
    """Sum of the class weights (or count) of the non-ignored rows start..stop-1; counts
    into ``n_bad`` the labels outside [0, C) that are not ignore_index."""
    cdef double total = 0
    cdef Py_ssize_t i, bad = 0
    cdef int64_t y
    cdef bint ignored, valid
    for i in range(start, stop):
        y = labels[i]
        ignored = prm.has_ignore_index & (y == prm.ignore_index)
        valid = (y >= 0) & (y < prm.n_classes)
        bad += (not valid) & (not ignored)
        if class_weight == NULL:
            total += valid & (not ignored)
        else:
            total += class_weight[y if valid else 0] if valid & (not ignored) else 0
    n_bad[0] += bad
    return total


cdef double label_weights(const label_t* labels, const RowParams* prm,
                          const floating* class_weight, Py_ssize_t n_rows, int n_threads,
                          Py_ssize_t block, Py_ssize_t* first_bad_row) noexcept nogil:
    """The pass over the labels before the main pass: returns the denominator of the
    sparse cross-entropy mean (torch: summed weights of the non-ignored targets) and sets
    ``first_bad_row`` to the first row with a bad label (-1 if none).  Blocks and their
    ordered sum as in rows_run."""
    cdef double partial[MAX_BLOCKS]
    cdef Py_ssize_t b, n_blocks = block_count(n_rows, block)
    cdef Team team = team_for(n_blocks, n_threads)
    cdef Py_ssize_t n_bad = 0, block_bad, i
    cdef int64_t y
    if team.size <= 1:
        for b in range(n_blocks):
            partial[b] = label_weights_chunk(labels, prm, class_weight, b * block,
                                             min((b + 1) * block, n_rows), &n_bad)
    else:
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=team.size):
            block_bad = 0
            partial[b] = label_weights_chunk(labels, prm, class_weight, b * block,
                                             min((b + 1) * block, n_rows), &block_bad)
            n_bad += block_bad
            block_done(&team, b)
        team_finished(&team)
    first_bad_row[0] = -1
    if n_bad:
        for i in range(n_rows):  # the error path only
            y = labels[i]
            if (y < 0 or y >= prm.n_classes) and not (prm.has_ignore_index
                                                     and y == prm.ignore_index):
                first_bad_row[0] = i
                break
    return ordered_sum(partial, n_blocks)


# -- entry points ----------------------------------------------------------------------

cdef struct RowCall:
    # the arrays (of the call's float type) and options of one call
    const void* x
    const void* target        # the targets of a dense loss (x's layout), else NULL
    const void* class_weight  # NULL, or C weights
    const void* sample_weight # NULL, or one weight per row (position)
    void* grad                # NULL: not wanted
    void* values              # NULL: not wanted (reduced value only)
    Py_ssize_t n_rows         # rows, or positions (outer * inner) of class-strided scores
    Py_ssize_t inner          # 1: (N, C) rows; S > 1: (outer, C, S) class-strided scores
    Py_ssize_t tile           # positions per tile of class-strided scores
    Py_ssize_t item_cost      # the work of one row (cost x C)
    int n_threads
    Py_ssize_t block          # rows (positions) per block of the labels pass and the rows


cdef inline double rows_call(const RowLoss* loss, const RowParams* prm,
                             const RowCall* call, const label_t* labels,
                             floating grad_scale, int* flags) noexcept nogil:
    """rows_run on the arrays of ``call``, read as ``floating``: over its rows, or over
    the tiles of class-strided scores (blocks of whole tiles, their size set by the
    call's shape alone, as every block)."""
    cdef Py_ssize_t n_items = call.n_rows, block = call.block, n_tiles
    if call.inner > 1:
        if not (RowLoss is SparseCategoricalCrossEntropyFromLogits
                or RowLoss is CategoricalCrossEntropyFromLogits):
            flags[0] |= UNKNOWN_KERNEL  # the Python layer sends no other loss here
            return 0
        n_items = call.n_rows // call.inner * ((call.inner + call.tile - 1) // call.tile)
        block = block_size(n_items, call.item_cost * call.tile, 1)
    return rows_run(loss, prm, <const floating*>call.x, <const floating*>call.target,
                    labels, <const floating*>call.class_weight,
                    <const floating*>call.sample_weight, <floating*>call.grad,
                    <floating*>call.values, grad_scale, n_items, call.inner, call.tile,
                    call.n_threads, block, flags)


cdef double dense_dispatch(int kernel, const RowParams* prm, const RowCall* call,
                           floating grad_scale, int* flags) noexcept nogil:
    """Run the dense-target row loss ``kernel`` (a RowKernel id): one line per loss."""
    cdef const int32_t* no_labels = NULL
    if kernel == CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS:
        return rows_call(<const CategoricalCrossEntropyFromLogits*>NULL, prm, call,
                         no_labels, grad_scale, flags)
    if kernel == CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES:
        return rows_call(<const CategoricalCrossEntropyFromProbabilities*>NULL, prm, call,
                         no_labels, grad_scale, flags)
    if kernel == KL_DIVERGENCE_FROM_LOGITS:
        return rows_call(<const KLDivergenceFromLogits*>NULL, prm, call, no_labels,
                         grad_scale, flags)
    if kernel == KL_DIVERGENCE_FROM_PROBABILITIES:
        return rows_call(<const KLDivergenceFromProbabilities*>NULL, prm, call, no_labels,
                         grad_scale, flags)
    if kernel == CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_LOGITS:
        return rows_call(<const CategoricalFocalCrossEntropyFromLogits*>NULL, prm, call,
                         no_labels, grad_scale, flags)
    if kernel == CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES:
        return rows_call(<const CategoricalFocalCrossEntropyFromProbabilities*>NULL, prm,
                         call, no_labels, grad_scale, flags)
    if kernel == CATEGORICAL_HINGE:
        return rows_call(<const CategoricalHinge*>NULL, prm, call, no_labels, grad_scale,
                         flags)
    if kernel == COSINE_SIMILARITY:
        return rows_call(<const CosineSimilarity*>NULL, prm, call, no_labels, grad_scale,
                         flags)
    if kernel == MULTILABEL_SOFT_MARGIN:
        return rows_call(<const MultilabelSoftMargin*>NULL, prm, call, no_labels,
                         grad_scale, flags)
    flags[0] |= UNKNOWN_KERNEL
    return 0


cdef double sparse_dispatch(int kernel, const RowParams* prm, const RowCall* call,
                            const label_t* labels, floating grad_scale,
                            int* flags) noexcept nogil:
    """Run the label row loss ``kernel`` (a RowKernel id): one line per loss."""
    if kernel == SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS:
        return rows_call(<const SparseCategoricalCrossEntropyFromLogits*>NULL, prm, call,
                         labels, grad_scale, flags)
    if kernel == SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES:
        return rows_call(<const SparseCategoricalCrossEntropyFromProbabilities*>NULL, prm,
                         call, labels, grad_scale, flags)
    if kernel == MULTI_MARGIN:
        return rows_call(<const MultiMargin*>NULL, prm, call, labels, grad_scale, flags)
    flags[0] |= UNKNOWN_KERNEL
    return 0


cdef double label_matrix_dispatch(int kernel, const RowParams* prm, const RowCall* call,
                                  const label_t* labels, floating grad_scale,
                                  int* flags) noexcept nogil:
    """Run the row loss ``kernel`` (a RowKernel id) of an (N, C) matrix of class
    indices: one line per loss."""
    if kernel == MULTILABEL_MARGIN:
        return rows_call(<const MultilabelMargin*>NULL, prm, call, labels, grad_scale,
                         flags)
    flags[0] |= UNKNOWN_KERNEL
    return 0


cdef (double, int, double, Py_ssize_t) sparse_run(
        int kernel, const RowParams* prm, const RowCall* call, const label_t* labels,
        bint weighted_mean, floating grad_scale) noexcept nogil:
    """The labels pass (bad labels, the weighted-mean denominator), then the loss."""
    cdef int flags = 0
    cdef double total = 0, denominator
    cdef Py_ssize_t first_bad_row
    denominator = label_weights(labels, prm, <const floating*>call.class_weight,
                                call.n_rows, call.n_threads, call.block, &first_bad_row)
    if first_bad_row >= 0:
        return 0.0, LABEL_OUT_OF_RANGE, denominator, first_bad_row
    if weighted_mean:
        # torch: a zero denominator (every row ignored, or zero weights) gives nan, the
        # NLL part being 0/0; ignored rows still get a zero gradient row
        grad_scale = <floating>(1.0 / denominator if denominator != 0 else NAN)
    total = sparse_dispatch(kernel, prm, call, labels, grad_scale, &flags)
    return total, flags, denominator, first_bad_row


cdef RowParams row_params(cnp.ndarray y_pred, object class_weight, double label_smoothing,
                          double z_loss, double margin, int power, bint log_target,
                          object ignore_index, double gamma=0):
    cdef RowParams prm
    prm.gamma = gamma
    prm.n_classes = cnp.PyArray_DIMS(y_pred)[1]
    prm.keep = 1 - label_smoothing
    prm.spread = label_smoothing / prm.n_classes
    prm.z_loss = z_loss
    prm.margin = margin
    prm.power = power
    prm.log_target = log_target
    prm.has_ignore_index = ignore_index is not None
    prm.ignore_index = 0 if ignore_index is None else ignore_index
    prm.class_weight_sum = prm.n_classes
    if class_weight is not None:  # a C loop: cheaper per call than ndarray.sum()
        if cnp.PyArray_TYPE(class_weight) == cnp.NPY_FLOAT:
            prm.class_weight_sum = row_sum(<float*>cnp.PyArray_DATA(class_weight),
                                           prm.n_classes)
        else:
            prm.class_weight_sum = row_sum(<double*>cnp.PyArray_DATA(class_weight),
                                           prm.n_classes)
    return prm


cdef RowCall row_call(cnp.ndarray y_pred, object target, object class_weight,
                      object grad, object values, object sample_weight, int n_threads,
                      Py_ssize_t cost):
    """The call on (N, C) rows, or on (outer, C, S) class-strided scores for a 3-D
    ``y_pred`` (S = 1 is rows)."""
    cdef RowCall call
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(y_pred)
    call.x = cnp.PyArray_DATA(y_pred)
    call.target = data_or_null(target)
    call.class_weight = data_or_null(class_weight)
    call.sample_weight = data_or_null(sample_weight)
    call.grad = data_or_null(grad)
    call.values = data_or_null(values)
    call.inner = dims[2] if cnp.PyArray_NDIM(y_pred) == 3 else 1
    call.n_rows = dims[0] * call.inner
    call.tile = strided_tile(dims[1], call.inner)
    call.item_cost = cost * dims[1]
    call.n_threads = n_threads
    call.block = block_size(call.n_rows, call.item_cost, 1)
    return call


def dense_rows(int kernel, cnp.ndarray y_pred, cnp.ndarray y_true, object class_weight,
               object grad, object values, object sample_weight, double label_smoothing,
               double z_loss, bint log_target, double gamma, double grad_scale,
               int n_threads, int cost):
    """Run the row loss ``kernel`` (a RowKernel id) with (N, C) float targets over
    C-contiguous arrays of one dtype.

    ``y_pred`` may also be 3-D, (outer, C, S) scores whose C classes lie S apart, with
    targets and gradient of its shape and values and sample weights of shape (outer * S,)
    (categorical cross-entropy from logits only).  The Python layer has checked shapes, dtypes, contiguity, overlap and the class-weight
    length; the focal losses need their per-class alpha there (never None).  ``cost``
    is the work of one element (sets the block size); up to ``n_threads`` threads run
    the blocks.  Returns ``(sum of the weighted row losses, flags)``.
    """
    cdef RowParams prm
    if class_weight is None and kernel in (CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_LOGITS,
                                           CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES):
        raise ValueError("class_weight: the focal kernels need the per-class alpha")
    prm = row_params(y_pred, class_weight, label_smoothing, z_loss, 0.0, 1, log_target,
                     None, gamma)
    cdef RowCall call = row_call(y_pred, y_true, class_weight, grad, values,
                                 sample_weight, n_threads, cost)
    cdef int flags = 0
    cdef double total
    if cnp.PyArray_TYPE(y_pred) == cnp.NPY_FLOAT:
        with nogil:
            total = dense_dispatch(kernel, &prm, &call, <float>grad_scale, &flags)
    else:
        with nogil:
            total = dense_dispatch(kernel, &prm, &call, grad_scale, &flags)
    return total, flags


def sparse_rows(int kernel, cnp.ndarray y_pred, cnp.ndarray labels, object class_weight,
                object grad, object values, object sample_weight, double label_smoothing,
                double z_loss, object ignore_index, double margin, int power,
                bint weighted_mean, double grad_scale, int n_threads, int cost):
    """Run the row loss ``kernel`` (a RowKernel id) with (N,) int32/int64 labels over
    C-contiguous arrays.

    ``y_pred`` may also be 3-D, (outer, C, S) scores whose C classes lie S apart, with a
    gradient of its shape and labels, values and sample weights of shape (outer * S,),
    one per position (sparse cross-entropy from logits only; "row" then means position).

    ``ignore_index`` is an int or None.  With ``weighted_mean`` the gradient is scaled by
    1 / (summed class weights, or count, of the non-ignored rows), else by
    ``grad_scale``.  Returns ``(sum of the weighted row losses, flags, that denominator,
    first row with a bad label or -1)``; nothing is computed when a label is bad.
    ``cost`` and ``n_threads`` as for dense_rows.
    """
    cdef RowParams prm = row_params(y_pred, class_weight, label_smoothing, z_loss, margin,
                                    power, False, ignore_index)
    cdef RowCall call = row_call(y_pred, None, class_weight, grad, values, sample_weight,
                                 n_threads, cost)
    cdef const void* y = cnp.PyArray_DATA(labels)
    cdef bint single = cnp.PyArray_TYPE(y_pred) == cnp.NPY_FLOAT
    cdef bint int32_labels = cnp.PyArray_TYPE(labels) == cnp.NPY_INT32
    cdef (double, int, double, Py_ssize_t) result
    with nogil:
        if single and int32_labels:
            result = sparse_run(kernel, &prm, &call, <const int32_t*>y, weighted_mean,
                                <float>grad_scale)
        elif single:
            result = sparse_run(kernel, &prm, &call, <const int64_t*>y, weighted_mean,
                                <float>grad_scale)
        elif int32_labels:
            result = sparse_run(kernel, &prm, &call, <const int32_t*>y, weighted_mean,
                                grad_scale)
        else:
            result = sparse_run(kernel, &prm, &call, <const int64_t*>y, weighted_mean,
                                grad_scale)
    return result


def label_matrix_rows(int kernel, cnp.ndarray y_pred, cnp.ndarray labels, object grad,
                      object values, object sample_weight, double grad_scale,
                      int n_threads, int cost):
    """Run the row loss ``kernel`` (a RowKernel id) with an (N, C) int32/int64 matrix of
    class indices over C-contiguous arrays.

    The Python layer has checked shapes, dtypes, contiguity and overlap; the indices are
    range-checked by the kernel, row by row (``Flag.LABEL_OUT_OF_RANGE``).  Returns
    ``(sum of the weighted row losses, flags)``; ``cost`` and ``n_threads`` as for
    dense_rows.
    """
    cdef RowParams prm = row_params(y_pred, None, 0.0, 0.0, 0.0, 1, False, None)
    cdef RowCall call = row_call(y_pred, None, None, grad, values, sample_weight,
                                 n_threads, cost)
    cdef const void* y = cnp.PyArray_DATA(labels)
    cdef bint single = cnp.PyArray_TYPE(y_pred) == cnp.NPY_FLOAT
    cdef bint int32_labels = cnp.PyArray_TYPE(labels) == cnp.NPY_INT32
    cdef int flags = 0
    cdef double total
    with nogil:
        if single and int32_labels:
            total = label_matrix_dispatch(kernel, &prm, &call, <const int32_t*>y,
                                          <float>grad_scale, &flags)
        elif single:
            total = label_matrix_dispatch(kernel, &prm, &call, <const int64_t*>y,
                                          <float>grad_scale, &flags)
        elif int32_labels:
            total = label_matrix_dispatch(kernel, &prm, &call, <const int32_t*>y,
                                          grad_scale, &flags)
        else:
            total = label_matrix_dispatch(kernel, &prm, &call, <const int64_t*>y,
                                          grad_scale, &flags)
    return total, flags
