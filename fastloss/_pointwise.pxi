# Pointwise losses: one term per element of y_pred, l(p, t), and its derivative dl/dp.
#
# Each loss is an entry of the kernel table below and one branch of ``pointwise_term``;
# the loops are written once and specialised by Cython for every (loss, dtype) pair, so
# the term is inlined into each loop and gcc can vectorise it.
#
# Conventions of every loop: the loss value is accumulated in float64; ``grad_scale`` folds
# the reduction's 1/N into the gradient; a term may raise bits in ``flags`` (an invalid
# label or probability), reduced with OR over the loop and turned into a ValueError by the
# Python layer, so no separate validation pass is needed.

# -- the kernel table ---------------------------------------------------------------
#
# One entry per loss: its id (the Python layer reads this enum: kernels.PointwiseKernel),
# its tag type (selects the loss's specialisation of the loops) and its branch of
# ``pointwise_term``; ``pointwise_dispatch`` maps the id to the tag in one line.

cpdef enum PointwiseKernel:
    MEAN_SQUARED_ERROR
    MEAN_ABSOLUTE_ERROR
    MEAN_SQUARED_LOGARITHMIC_ERROR
    HUBER
    PSEUDO_HUBER
    LOG_COSH
    HINGE
    SQUARED_HINGE
    BINARY_CROSS_ENTROPY_FROM_PROBABILITIES
    BINARY_CROSS_ENTROPY_FROM_LOGITS
    POINTWISE_KL_DIVERGENCE
    POINTWISE_KL_DIVERGENCE_LOG_TARGET
    POISSON_FROM_LOG_RATE
    POISSON_FROM_RATE
    SOFT_MARGIN
    HINGE_EMBEDDING
    MEAN_ABSOLUTE_PERCENTAGE_ERROR
    BINARY_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES
    BINARY_FOCAL_CROSS_ENTROPY_FROM_LOGITS


cdef struct PointwiseParams:
    # the parameters of every pointwise loss; each reads its own
    double delta              # huber, pseudo_huber
    double inv_delta          # pseudo_huber: 1 / delta (inf for delta < 1 / DBL_MAX)
    double label_smoothing    # binary_cross_entropy, binary_focal_cross_entropy
    double eps                # poisson
    bint full                 # poisson
    double margin             # hinge_embedding
    double gamma              # binary_focal_cross_entropy: the focusing exponent
    bint class_balancing      # binary_focal_cross_entropy: weight alpha / 1 - alpha
    double alpha


def pointwise_parameters(double delta=1.0, double label_smoothing=0.0, double eps=0.0,
                         bint full=False, double margin=1.0,
                         double gamma=2.0, object alpha=None):
    """The parameters of a pointwise kernel, converted to C once, when a loss is made:
    the bytes of a PointwiseParams (the same struct in every ISA module).  Each call
    then hands the kernel these bytes: no conversion per call."""
    cdef PointwiseParams params
    memset(&params, 0, sizeof(params))
    params.delta = delta
    params.inv_delta = 1.0 / delta
    params.label_smoothing = label_smoothing
    params.eps = eps
    params.full = full
    params.margin = margin
    params.gamma = gamma
    params.class_balancing = alpha is not None
    params.alpha = 0.0 if alpha is None else alpha
    return (<char*>&params)[:sizeof(PointwiseParams)]

# Tag types, named after the public losses.  Each holds the parameters as its only
# member, so a PointwiseParams* converts to any tag pointer (C: a pointer to a struct
# points to its first member and back).
cdef struct MeanSquaredError:
    PointwiseParams params
cdef struct MeanAbsoluteError:
    PointwiseParams params
cdef struct MeanSquaredLogarithmicError:
    PointwiseParams params
cdef struct Huber:
    PointwiseParams params
cdef struct PseudoHuber:
    PointwiseParams params
cdef struct LogCosh:
    PointwiseParams params
cdef struct Hinge:
    PointwiseParams params
cdef struct SquaredHinge:
    PointwiseParams params
cdef struct BinaryCrossEntropyFromProbabilities:
    PointwiseParams params
cdef struct BinaryCrossEntropyFromLogits:
    PointwiseParams params
cdef struct PointwiseKLDivergence:
    PointwiseParams params
cdef struct PointwiseKLDivergenceLogTarget:
    PointwiseParams params
cdef struct PoissonFromLogRate:
    PointwiseParams params
cdef struct PoissonFromRate:
    PointwiseParams params
cdef struct SoftMargin:
    PointwiseParams params
cdef struct HingeEmbedding:
    PointwiseParams params
cdef struct MeanAbsolutePercentageError:
    PointwiseParams params
cdef struct BinaryFocalCrossEntropyFromProbabilities:
    PointwiseParams params
cdef struct BinaryFocalCrossEntropyFromLogits:
    PointwiseParams params

ctypedef fused Pointwise:
    MeanSquaredError
    MeanAbsoluteError
    MeanSquaredLogarithmicError
    Huber
    PseudoHuber
    LogCosh
    Hinge
    SquaredHinge
    BinaryCrossEntropyFromProbabilities
    BinaryCrossEntropyFromLogits
    PointwiseKLDivergence
    PointwiseKLDivergenceLogTarget
    PoissonFromLogRate
    PoissonFromRate
    SoftMargin
    HingeEmbedding
    MeanAbsolutePercentageError
    BinaryFocalCrossEntropyFromProbabilities
    BinaryFocalCrossEntropyFromLogits

from libc.math cimport INFINITY

cdef double BCE_GRAD_EPSILON = 1e-12 # PyTorch binary_cross_entropy_backward


cdef inline floating logistic_cross_entropy(floating x, floating t, floating positive_weight,
                                            floating* grad, floating* sigmoid_x,
                                            floating* sigmoid_minus_x) noexcept nogil:
    """torch binary_cross_entropy_with_logits: (1 - t) x + lw softplus(-x) with
    lw = 1 + (pw - 1) t, finite for every finite x; stores the gradient (1 - t) -
    lw sigmoid(-x) and sigmoid(+-x).  Also the term of multilabel_soft_margin (pw = 1)."""
    cdef floating one = 1
    cdef floating lw = one + (positive_weight - one) * t
    cdef floating bounded = logistic(x, sigmoid_x, sigmoid_minus_x)
    grad[0] = (one - t) - lw * sigmoid_minus_x[0]
    return (one - t) * x + lw * (bounded + max_(-x, <floating>0))


cdef inline floating smoothed_binary_target(const PointwiseParams* params,
                                            floating t) noexcept nogil:
    """Keras binary label smoothing: t (1 - eps) + eps / 2."""
    return (t * <floating>(1 - params.label_smoothing)
            + <floating>(0.5 * params.label_smoothing))


cdef inline floating focal_weight(const PointwiseParams* params, floating t, floating q,
                                  floating dq, floating* slope) noexcept nogil:
    """The factor of a binary focal term: w q^gamma with q = 1 - p_t, w = alpha t +
    (1 - alpha) (1 - t) under class balancing (else 1); stores its derivative, given the
    derivative ``dq`` of q."""
    cdef floating one = 1
    cdef floating f = power_and_slope(q, params.gamma, slope)
    # both computed, then selected: a load of the parameters under a branch keeps gcc
    # from vectorising the loop
    cdef floating balanced = (<floating>params.alpha * t
                              + <floating>(1 - params.alpha) * (one - t))
    cdef floating w = balanced if params.class_balancing else one
    slope[0] = w * slope[0] * dq
    return w * f


cdef inline floating pointwise_term(const Pointwise* restrict loss, floating p, floating t,
                                    floating pos_weight, floating* grad,
                                    int* restrict flags) noexcept nogil:
    """Return l(p, t) and store dl/dp in ``grad[0]``.

    ``pos_weight`` only matters for BinaryCrossEntropyLogits (1 elsewhere).
    """
    cdef floating d, a, s, e, r, m
    # Typed constants: Cython writes a bare literal as a C double, which would turn the
    # float32 kernels' arithmetic into float64 arithmetic (half the vector width).
    cdef floating one = 1, two = 2, half = 0.5
    if Pointwise is MeanSquaredError:
        d = p - t
        grad[0] = two * d
        return d * d
    elif Pointwise is MeanAbsoluteError:
        d = p - t
        grad[0] = (d > 0) - (d < 0)          # subgradient 0 at 0, as torch.sign
        return abs_(d)
    elif Pointwise is MeanSquaredLogarithmicError:
        # Keras: (log(max(p, eps) + 1) - log(max(t, eps) + 1))^2; no gradient where clipped
        a = max_(p, <floating>KERAS_EPSILON)
        d = log_(a + one) - log_(max_(t, <floating>KERAS_EPSILON) + one)
        grad[0] = two * d / (a + one) if p > <floating>KERAS_EPSILON else 0
        return d * d
    elif Pointwise is Huber:
        d = p - t
        a = abs_(d)
        s = <floating>loss.params.delta
        grad[0] = min_(max_(d, -s), s)   # clamp(d, -delta, delta); NaN propagates
        if a <= s:
            return half * d * d
        return s * (a - half * s)
    elif Pointwise is PseudoHuber:
        # a = |d| / delta and r = sqrt(1 + a^2): the value delta^2 (r - 1), the gradient
        # d / r.  Beyond a = 1e8, r = a to float64 precision (a^2 and a itself may
        # overflow): value delta (|d| - delta), gradient delta sign(d).  For a <= 1 the
        # value d^2 / (r + 1) avoids the cancellation of r - 1; above it delta (delta
        # (r - 1)) keeps delta^2 from underflowing (tiny delta) or overflowing (huge).
        # 1 / delta is multiplied in (a division is 2x slower) unless it overflows the
        # element type; the branch is the same for every element, so gcc unswitches it.
        d = p - t
        s = <floating>loss.params.delta
        e = <floating>loss.params.inv_delta
        # a delta below the element type's range rounds to 0: divide by the smallest
        # positive number instead (0 / 0 would be NaN; the limit is the same)
        if floating is float:
            r = max_(s, <float>1.401298464324817e-45)
        else:
            r = max_(s, <double>4.9406564584124654e-324)
        a = abs_(d) * e if e < <floating>INFINITY else abs_(d) / r
        r = sqrt_(one + a * a)
        if a > <floating>1e8:
            grad[0] = s if d > 0 else -s
            return s * (abs_(d) - s)
        grad[0] = d / r
        return s * (s * (r - one)) if a > one else d * d / (r + one)
    elif Pointwise is LogCosh:
        d = p - t
        grad[0] = tanh_(d)
        return log_cosh(d)
    elif Pointwise is Hinge or Pointwise is SquaredHinge:
        # labels in {-1, 1} or in {0, 1} (0 means -1); anything else is flagged
        flags[0] |= ((t != 1) & (t != 0) & (t != -1)) * LABEL_NOT_BINARY \
            | (t == 0) * LABEL_ZERO | (t == -1) * LABEL_MINUS_ONE
        s = 1 if t == 1 else -1
        d = one - s * p
        # max(d, 0) written as (d + |d|) / 2 (exact, NaN propagates): gcc turns
        # "acc += max(d, 0)" into a conditional add that it cannot vectorise
        m = half * (d + abs_(d))
        if Pointwise is Hinge:
            grad[0] = -s if m > 0 else 0
            return m
        else:
            grad[0] = -two * s * m
            return m * m
    elif Pointwise is BinaryCrossEntropyFromProbabilities:
        flags[0] |= ((p < 0) | (p > 1)) * PRED_NOT_PROBABILITY \
            | ((t < 0) | (t > 1)) * TARGET_NOT_PROBABILITY
        t = smoothed_binary_target(&loss.params, t)
        grad[0] = (p - t) / max_((one - p) * p, <floating>BCE_GRAD_EPSILON)
        return -(t * clamped_log(p, <floating>-100)
                 + (one - t) * max_(log1p_(-p), <floating>-100))
    elif Pointwise is BinaryCrossEntropyFromLogits:
        flags[0] |= ((t < 0) | (t > 1)) * TARGET_NOT_PROBABILITY
        t = smoothed_binary_target(&loss.params, t)
        return logistic_cross_entropy(p, t, pos_weight, grad, &e, &r)
    elif Pointwise is PointwiseKLDivergence:
        # torch kl_div(input=log q, target=p), elementwise: xlogy(p, p) - p log q
        grad[0] = -t
        return xlogx(t) - t * p
    elif Pointwise is PointwiseKLDivergenceLogTarget:
        # torch kl_div(log_target=True): exp(lp) (lp - log q)
        e = exp_(t)
        grad[0] = -e
        return e * (t - p)
    elif Pointwise is PoissonFromLogRate or Pointwise is PoissonFromRate:
        # torch poisson_nll_loss: exp(x) - t x (log_input), else x - t log(x + eps);
        # full adds Stirling's t log t - t + log(2 pi t) / 2 where t > 1 (no gradient)
        if Pointwise is PoissonFromLogRate:
            e = exp_(p)
            grad[0] = e - t
            s = e - t * p
        else:
            a = p + <floating>loss.params.eps
            grad[0] = one - t / a
            s = p - t * log_(a)
        if loss.params.full:     # the same for every element: gcc unswitches the loop
            # computed for every t, then selected (a log under a data-dependent branch
            # would keep the loop scalar; for t <= 1 the discarded value may be NaN);
            # log(2 pi t) as log 2 pi + log t, one log
            a = log_(t)
            a = t * a - t + half * (a + <floating>1.8378770664093453)
            s += a if t > one else 0
        return s
    elif Pointwise is SoftMargin:
        # torch soft_margin_loss: log(1 + exp(-t p)) = softplus(-t p)
        d = -t * p
        grad[0] = -t * sigmoid(d)
        return softplus(d)
    elif Pointwise is HingeEmbedding:
        # torch hinge_embedding_loss: max(0, margin - p) where t != 1, plus p where
        # t != -1 (labels other than +-1 take both terms, as torch)
        s = <floating>loss.params.margin
        d = s - p
        # max(d, 0) with NaN propagating and 0 for d = -inf (p = +inf), where (d + |d|) / 2
        # alone is NaN.  Not max_(d, 0): -fassociative-math folds its sum with p below
        # into max(margin, p), which drops torch's NaN for p = NaN or -inf.
        m = 0 if d < 0 else half * (d + abs_(d))
        grad[0] = ((one if t != -1 else 0)        # the identity term applies
                   - (one if t != 1 and d >= 0 else 0))   # torch's clamp passes d = 0
        # each term selected, not multiplied by a 0/1 factor: 0 * inf would be NaN where
        # torch gives 0 or +-inf (p = +-inf)
        return (m if t != 1 else 0) + (p if t != -1 else 0)
    elif Pointwise is MeanAbsolutePercentageError:
        # Keras mean_absolute_percentage_error: 100 |t - p| / max(|t|, 1e-7)
        d = p - t
        a = <floating>100.0 / max_(abs_(t), <floating>KERAS_EPSILON)
        grad[0] = a * ((d > 0) - (d < 0))
        return a * abs_(d)
    elif Pointwise is BinaryFocalCrossEntropyFromProbabilities:
        # Keras binary_focal_crossentropy: (1 - p_t)^gamma bce with p_t = t p + (1 - t)
        # (1 - p), bce of p clipped to [1e-7, 1 - 1e-7] (no gradient where clipped)
        flags[0] |= ((p < 0) | (p > 1)) * PRED_NOT_PROBABILITY \
            | ((t < 0) | (t > 1)) * TARGET_NOT_PROBABILITY
        t = smoothed_binary_target(&loss.params, t)
        a = keras_clip(p)
        s = -(t * log_(a) + (one - t) * log1p_(-a))
        d = (a - t) / (a * (one - a))
        d = d if keras_unclipped(p) else 0
        m = focal_weight(&loss.params, t, t * (one - p) + (one - t) * p, one - two * t, &r)
        grad[0] = r * s + m * d
        return m * s
    elif Pointwise is BinaryFocalCrossEntropyFromLogits:
        # as from probabilities with p = sigmoid(x), but the cross-entropy of the logit
        # itself (torchvision sigmoid_focal_loss; Keras clips sigmoid(x), which differs
        # beyond |x| ~ 16)
        flags[0] |= ((t < 0) | (t > 1)) * TARGET_NOT_PROBABILITY
        t = smoothed_binary_target(&loss.params, t)
        s = logistic_cross_entropy(p, t, one, &d, &e, &r)
        m = focal_weight(&loss.params, t, t * r + (one - t) * e,
                         (one - two * t) * e * r, &a)
        grad[0] = a * s + m * d
        return m * s


# What a loop writes, fixed at compile time (Cython specialises each loop for every tag,
# so no per-element test of an output pointer blocks vectorisation):
cdef struct SumOnly:          # forward, reduced
    char unused
cdef struct SumAndGrad:       # fused pass, reduced
    char unused
cdef struct GradOnly:         # backward: the value's arithmetic is left out
    char unused
cdef struct ValuesOnly:       # forward, reduction "none"
    char unused
cdef struct ValuesAndGrad:    # fused pass, reduction "none"
    char unused

ctypedef fused Outputs:
    SumOnly
    SumAndGrad
    GradOnly
    ValuesOnly
    ValuesAndGrad

# Where the sample weight of an element comes from.
cdef struct OneWeight:        # one weight for the whole stretch (1 without sample_weight)
    char unused
cdef struct ElementWeights:   # one weight per element (1-D y_pred)
    char unused

ctypedef fused Weights:
    OneWeight
    ElementWeights

# Where the positive weight of an element (binary_cross_entropy's pos_weight) comes from.
cdef struct NoPosWeight:      # none: 1
    char unused
cdef struct ElementPosWeights:  # one per element, read from a contiguous stretch
    char unused

ctypedef fused PosWeights:
    NoPosWeight
    ElementPosWeights


cdef inline double pointwise_loop(const Pointwise* restrict loss,
                                  const Outputs* restrict outputs,
                                  const Weights* restrict weights,
                                  const PosWeights* restrict positives,
                                  const floating* restrict y_pred,
                                  const floating* restrict y_true, Py_ssize_t n,
                                  const floating* restrict weight, floating one_weight,
                                  const floating* restrict pos_weight,
                                  floating* restrict grad, floating* restrict values,
                                  floating grad_scale, int* restrict flags) noexcept nogil:
    """The tight loop over n elements: returns the sum of the weighted terms.

    The weight of element i is ``weight[i]`` (ElementWeights) or ``one_weight``, its
    positive weight ``pos_weight[i]`` (ElementPosWeights) or 1; ``grad[i]`` receives
    grad_scale * weight * dl/dp and ``values[i]`` the weighted term, as ``Outputs`` says.
    """
    cdef double acc = 0
    cdef floating g, v, w = one_weight, g_scale = grad_scale * one_weight, pw = 1
    cdef int f = 0
    cdef Py_ssize_t i
    for i in range(n):
        if PosWeights is ElementPosWeights:
            pw = pos_weight[i]
        v = pointwise_term(loss, y_pred[i], y_true[i], pw, &g, &f)
        if Weights is ElementWeights:
            w = weight[i]
            g_scale = grad_scale * w
        if Outputs is ValuesOnly or Outputs is ValuesAndGrad:
            values[i] = w * v
        if Outputs is SumAndGrad or Outputs is GradOnly or Outputs is ValuesAndGrad:
            grad[i] = g_scale * g
        if Outputs is not GradOnly:
            if Weights is ElementWeights:
                acc += w * v
            else:
                acc += v
    flags[0] |= f
    if Weights is OneWeight:
        return one_weight * acc
    return acc


cdef inline double pointwise_stretch(const Pointwise* restrict loss,
                                     const Weights* restrict weights,
                                     const PosWeights* restrict positives,
                                     const floating* restrict y_pred,
                                     const floating* restrict y_true, Py_ssize_t n,
                                     const floating* restrict weight, floating one_weight,
                                     const floating* restrict pos_weight,
                                     floating* restrict grad, floating* restrict values,
                                     bint want_value, floating grad_scale,
                                     int* restrict flags) noexcept nogil:
    """pointwise_loop specialised for the outputs asked for (pointers may be NULL)."""
    cdef SumOnly sum_only
    cdef SumAndGrad sum_and_grad
    cdef GradOnly grad_only
    cdef ValuesOnly values_only
    cdef ValuesAndGrad values_and_grad
    if values != NULL:
        if grad != NULL:
            return pointwise_loop(loss, &values_and_grad, weights, positives, y_pred,
                                  y_true, n, weight, one_weight, pos_weight, grad, values,
                                  grad_scale, flags)
        return pointwise_loop(loss, &values_only, weights, positives, y_pred, y_true, n,
                              weight, one_weight, pos_weight, grad, values, grad_scale,
                              flags)
    if grad == NULL:
        return pointwise_loop(loss, &sum_only, weights, positives, y_pred, y_true, n,
                              weight, one_weight, pos_weight, grad, values, grad_scale,
                              flags)
    if want_value:
        return pointwise_loop(loss, &sum_and_grad, weights, positives, y_pred, y_true, n,
                              weight, one_weight, pos_weight, grad, values, grad_scale,
                              flags)
    return pointwise_loop(loss, &grad_only, weights, positives, y_pred, y_true, n, weight,
                          one_weight, pos_weight, grad, values, grad_scale, flags)


# The weighted calls are cut into segments over which every weight an element needs lies
# in contiguous memory, so that each segment runs the tight loop, reading its weights
# like its inputs.  The segments depend only on the block, so the sums keep their order.
cdef enum:
    # Rows shorter than this get their sample weight expanded to one weight per element
    # (expand_row_weights); longer rows run one loop per row.  Measured (SSE, in cache):
    # a loop per row of 4 elements costs 3-6x the unweighted loop, the expansion 1.4-2x;
    # they break even near 24 elements, and from 32 on the loop per row is faster.
    SHORT_ROW = 24
    # the longest store of expand_row_weights, in elements
    ROW_STORE = 16
    # elements of one such expansion (the buffer is on the stack, in L1)
    WEIGHT_TILE = 1024
    # pos_weight of at most POS_REPEAT / 2 values is repeated along a buffer of at most
    # POS_REPEAT elements: the segments are then at least POS_REPEAT / 2 elements long
    POS_REPEAT = 1024


cdef inline void store_row_weights(floating* restrict out,
                                   const floating* restrict sample_weight,
                                   Py_ssize_t row, Py_ssize_t i, Py_ssize_t n,
                                   Py_ssize_t weight_block, int width) noexcept nogil:
    """From out[i] (the first element of ``row``) on, for every row that starts before
    out[n]: the row's weight in stores of ``width`` copies, the next row's overwriting
    those past the row's end.  ``width`` is a literal at each call: each store is whole
    vector stores, with no division and no per-element test."""
    cdef floating w
    cdef Py_ssize_t q
    cdef int k
    while i < n:
        w = sample_weight[row]
        q = 0
        while q < weight_block:
            for k in range(width):
                out[i + q + k] = w
            q += width
        i += weight_block
        row += 1


cdef inline void expand_row_weights(floating* restrict out,
                                    const floating* restrict sample_weight,
                                    Py_ssize_t weight_block, Py_ssize_t start,
                                    Py_ssize_t n) noexcept nogil:
    """out[i] = the sample weight of element start + i, for i < n, with one weight per
    row of ``weight_block`` < SHORT_ROW elements; ``out`` is writable from
    out[-SHORT_ROW] to out[n + SHORT_ROW + ROW_STORE - 1] (the first row may start
    before out[0] and the last row's stores end after out[n - 1])."""
    cdef Py_ssize_t row = start // weight_block
    cdef Py_ssize_t i = row * weight_block - start
    # stores no longer than the row (one store per row of 4 float32 elements on SSE,
    # whatever the vector length)
    if weight_block <= 4:
        store_row_weights(out, sample_weight, row, i, n, weight_block, 4)
    elif weight_block <= 8:
        store_row_weights(out, sample_weight, row, i, n, weight_block, 8)
    else:
        store_row_weights(out, sample_weight, row, i, n, weight_block, ROW_STORE)


cdef inline Py_ssize_t repeat_weights(floating* restrict out,
                                      const floating* restrict weights,
                                      Py_ssize_t n) noexcept nogil:
    """Fill ``out`` with as many copies of weights[0..n) as POS_REPEAT elements hold
    (n <= POS_REPEAT / 2), by doubling copies; returns their length, a multiple of n."""
    cdef Py_ssize_t total = (POS_REPEAT // n) * n
    cdef Py_ssize_t filled = n, copy
    memcpy(out, weights, n * sizeof(floating))
    while filled < total:
        copy = min(filled, total - filled)   # a multiple of n: the period is kept
        memcpy(out + filled, out, copy * sizeof(floating))
        filled += copy
    return total


cdef inline double pointwise_segments(const Pointwise* restrict loss,
                                      const PosWeights* restrict positives,
                                      const floating* restrict y_pred,
                                      const floating* restrict y_true, Py_ssize_t start,
                                      Py_ssize_t stop, floating* restrict grad,
                                      floating* restrict values,
                                      const floating* restrict sample_weight,
                                      Py_ssize_t weight_block,
                                      const floating* restrict pos_weight,
                                      Py_ssize_t pos_len, Py_ssize_t pos_period,
                                      bint want_value, floating grad_scale,
                                      int* restrict flags) noexcept nogil:
    """Elements start..stop-1, one tight loop per segment.

    A segment ends where a weight stops being contiguous: at the end of ``pos_weight``'s
    ``pos_period`` values (ElementPosWeights: element i's positive weight is
    pos_weight[i % pos_len], the first pos_period values repeating with period pos_len),
    at the end of a row of ``weight_block`` >= SHORT_ROW elements (one sample weight for
    the segment), or after WEIGHT_TILE elements of shorter rows (their weights expanded).
    Unweighted, the block is one segment.
    """
    cdef OneWeight one_weight
    cdef ElementWeights element_weights
    # expanded row weights, with the room expand_row_weights writes before and after
    cdef floating row_weights[SHORT_ROW + WEIGHT_TILE + SHORT_ROW + ROW_STORE]
    cdef floating* expanded = row_weights + SHORT_ROW
    cdef const floating* pos = NULL
    cdef double acc = 0
    cdef Py_ssize_t seg_start = start, seg_stop, phase, row
    while seg_start < stop:
        seg_stop = stop
        if PosWeights is ElementPosWeights:
            phase = seg_start % pos_len
            pos = pos_weight + phase
            seg_stop = min(seg_stop, seg_start + pos_period - phase)
        if sample_weight == NULL:
            acc += pointwise_stretch(loss, &one_weight, positives, y_pred + seg_start,
                                     y_true + seg_start, seg_stop - seg_start, NULL, 1,
                                     pos, offset(grad, seg_start),
                                     offset(values, seg_start), want_value, grad_scale,
                                     flags)
        elif weight_block == 1:
            acc += pointwise_stretch(loss, &element_weights, positives,
                                     y_pred + seg_start, y_true + seg_start,
                                     seg_stop - seg_start, sample_weight + seg_start, 1,
                                     pos, offset(grad, seg_start),
                                     offset(values, seg_start), want_value, grad_scale,
                                     flags)
        elif weight_block < SHORT_ROW:
            seg_stop = min(seg_stop, seg_start + WEIGHT_TILE)
            expand_row_weights(expanded, sample_weight, weight_block, seg_start,
                               seg_stop - seg_start)
            acc += pointwise_stretch(loss, &element_weights, positives,
                                     y_pred + seg_start, y_true + seg_start,
                                     seg_stop - seg_start, expanded, 1, pos,
                                     offset(grad, seg_start), offset(values, seg_start),
                                     want_value, grad_scale, flags)
        else:
            row = seg_start // weight_block
            seg_stop = min(seg_stop, (row + 1) * weight_block)
            acc += pointwise_stretch(loss, &one_weight, positives, y_pred + seg_start,
                                     y_true + seg_start, seg_stop - seg_start, NULL,
                                     sample_weight[row], pos, offset(grad, seg_start),
                                     offset(values, seg_start), want_value, grad_scale,
                                     flags)
        seg_start = seg_stop
    return acc


cdef double pointwise_chunk(const Pointwise* restrict loss, const floating* restrict y_pred,
                            const floating* restrict y_true, Py_ssize_t start,
                            Py_ssize_t stop, floating* restrict grad,
                            floating* restrict values,
                            const floating* restrict sample_weight, Py_ssize_t weight_block,
                            const floating* restrict pos_weight, Py_ssize_t pos_len,
                            Py_ssize_t pos_period, bint want_value, floating grad_scale,
                            int* restrict flags) noexcept nogil:
    """Elements start..stop-1 (see pointwise_segments)."""
    cdef NoPosWeight no_pos_weight
    cdef ElementPosWeights element_pos_weights
    # only binary_cross_entropy from logits has a pos_weight (the Python layer passes
    # none to the other losses): the other losses are compiled without its loops
    if Pointwise is BinaryCrossEntropyFromLogits:
        if pos_weight != NULL:
            return pointwise_segments(loss, &element_pos_weights, y_pred, y_true, start,
                                      stop, grad, values, sample_weight, weight_block,
                                      pos_weight, pos_len, pos_period, want_value,
                                      grad_scale, flags)
    return pointwise_segments(loss, &no_pos_weight, y_pred, y_true, start, stop, grad,
                              values, sample_weight, weight_block, NULL, 1, 1, want_value,
                              grad_scale, flags)


cdef inline floating* offset(floating* array, Py_ssize_t start) noexcept nogil:
    """array + start, or NULL for an output not asked for."""
    return NULL if array == NULL else array + start


cdef double pointwise_run(const Pointwise* restrict loss, const floating* restrict y_pred,
                          const floating* restrict y_true, Py_ssize_t n,
                          floating* restrict grad, floating* restrict values,
                          const floating* restrict sample_weight, Py_ssize_t weight_block,
                          const floating* restrict pos_weight, Py_ssize_t pos_len,
                          bint want_value, floating grad_scale, int n_threads,
                          Py_ssize_t block, int* restrict flags) noexcept nogil:
    """All n elements, in blocks of ``block`` (see _kernels.pxi): serially, or by a team
    of up to ``n_threads`` threads."""
    cdef double partial[MAX_BLOCKS]
    cdef floating repeated[POS_REPEAT]
    cdef Py_ssize_t pos_period = pos_len
    cdef Py_ssize_t b, n_blocks = block_count(n, block)
    cdef Team team = team_for(n_blocks, n_threads)
    cdef int f = 0, block_flags
    if pos_weight != NULL and pos_len <= POS_REPEAT // 2:
        # a few values: repeated once per call into a buffer the blocks share, so that
        # the segments of pointwise_segments stay long
        pos_period = repeat_weights(repeated, pos_weight, pos_len)
        pos_weight = repeated
    if team.size <= 1:
        for b in range(n_blocks):
            partial[b] = pointwise_chunk(loss, y_pred, y_true, b * block,
                                         min((b + 1) * block, n), grad, values,
                                         sample_weight, weight_block, pos_weight, pos_len,
                                         pos_period, want_value, grad_scale, flags)
        return ordered_sum(partial, n_blocks)
    for b in prange(n_blocks, nogil=True, schedule="static", num_threads=team.size):
        block_flags = 0
        partial[b] = pointwise_chunk(loss, y_pred, y_true, b * block,
                                     min((b + 1) * block, n), grad, values, sample_weight,
                                     weight_block, pos_weight, pos_len, pos_period,
                                     want_value, grad_scale, &block_flags)
        f |= block_flags
        block_done(&team, b)
    team_finished(&team)
    flags[0] |= f
    return ordered_sum(partial, n_blocks)


cdef struct PointwiseCall:
    # the arrays (of the call's float type) and options of one call
    const void* y_pred
    const void* y_true
    Py_ssize_t n
    void* grad                # NULL: not wanted
    void* values              # NULL: not wanted (reduced value only)
    const void* sample_weight # NULL, or one weight per weight_block elements
    Py_ssize_t weight_block
    const void* pos_weight    # NULL, or pos_len weights along the last axis
    Py_ssize_t pos_len
    bint want_value
    int n_threads
    Py_ssize_t block


cdef inline double pointwise_call(const Pointwise* loss, const PointwiseCall* call,
                                  floating grad_scale, int* flags) noexcept nogil:
    """pointwise_run on the arrays of ``call``, read as ``floating``."""
    return pointwise_run(loss, <const floating*>call.y_pred, <const floating*>call.y_true,
                         call.n, <floating*>call.grad, <floating*>call.values,
                         <const floating*>call.sample_weight, call.weight_block,
                         <const floating*>call.pos_weight, call.pos_len, call.want_value,
                         grad_scale, call.n_threads, call.block, flags)


cdef double pointwise_dispatch(int kernel, const PointwiseParams* p,
                               const PointwiseCall* call, floating grad_scale,
                               int* flags) noexcept nogil:
    """Run the loss ``kernel`` (a PointwiseKernel id): one line per loss."""
    if kernel == MEAN_SQUARED_ERROR:
        return pointwise_call(<const MeanSquaredError*>p, call, grad_scale, flags)
    if kernel == MEAN_ABSOLUTE_ERROR:
        return pointwise_call(<const MeanAbsoluteError*>p, call, grad_scale, flags)
    if kernel == MEAN_SQUARED_LOGARITHMIC_ERROR:
        return pointwise_call(<const MeanSquaredLogarithmicError*>p, call, grad_scale,
                              flags)
    if kernel == HUBER:
        return pointwise_call(<const Huber*>p, call, grad_scale, flags)
    if kernel == PSEUDO_HUBER:
        return pointwise_call(<const PseudoHuber*>p, call, grad_scale, flags)
    if kernel == LOG_COSH:
        return pointwise_call(<const LogCosh*>p, call, grad_scale, flags)
    if kernel == HINGE:
        return pointwise_call(<const Hinge*>p, call, grad_scale, flags)
    if kernel == SQUARED_HINGE:
        return pointwise_call(<const SquaredHinge*>p, call, grad_scale, flags)
    if kernel == BINARY_CROSS_ENTROPY_FROM_PROBABILITIES:
        return pointwise_call(<const BinaryCrossEntropyFromProbabilities*>p, call,
                              grad_scale, flags)
    if kernel == BINARY_CROSS_ENTROPY_FROM_LOGITS:
        return pointwise_call(<const BinaryCrossEntropyFromLogits*>p, call, grad_scale,
                              flags)
    if kernel == POINTWISE_KL_DIVERGENCE:
        return pointwise_call(<const PointwiseKLDivergence*>p, call, grad_scale, flags)
    if kernel == POINTWISE_KL_DIVERGENCE_LOG_TARGET:
        return pointwise_call(<const PointwiseKLDivergenceLogTarget*>p, call, grad_scale,
                              flags)
    if kernel == POISSON_FROM_LOG_RATE:
        return pointwise_call(<const PoissonFromLogRate*>p, call, grad_scale, flags)
    if kernel == POISSON_FROM_RATE:
        return pointwise_call(<const PoissonFromRate*>p, call, grad_scale, flags)
    if kernel == SOFT_MARGIN:
        return pointwise_call(<const SoftMargin*>p, call, grad_scale, flags)
    if kernel == HINGE_EMBEDDING:
        return pointwise_call(<const HingeEmbedding*>p, call, grad_scale, flags)
    if kernel == MEAN_ABSOLUTE_PERCENTAGE_ERROR:
        return pointwise_call(<const MeanAbsolutePercentageError*>p, call, grad_scale,
                              flags)
    if kernel == BINARY_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES:
        return pointwise_call(<const BinaryFocalCrossEntropyFromProbabilities*>p, call,
                              grad_scale, flags)
    if kernel == BINARY_FOCAL_CROSS_ENTROPY_FROM_LOGITS:
        return pointwise_call(<const BinaryFocalCrossEntropyFromLogits*>p, call,
                              grad_scale, flags)
    flags[0] |= UNKNOWN_KERNEL
    return 0


def pointwise(int kernel, bytes parameters, cnp.ndarray y_pred, cnp.ndarray y_true,
              object grad, object values, object sample_weight, Py_ssize_t weight_block,
              object pos_weight, bint want_value, double grad_scale, int n_threads,
              int cost):
    """Run the pointwise loss ``kernel`` (a PointwiseKernel id) with its ``parameters``
    (from pointwise_parameters) over C-contiguous arrays of one float dtype.

    The Python layer has checked shapes, dtypes, contiguity and that ``grad``/``values``
    overlap no input.  ``cost`` is the loss's work per element relative to a squared
    error (sets the block size); up to ``n_threads`` threads run the blocks.  Returns
    ``(sum of the weighted terms, flags)``; ``grad`` and ``values`` (or None) are written.
    Without ``want_value`` a gradient-only pass skips the value (the sum returned is 0).
    """
    cdef PointwiseParams params
    cdef PointwiseCall call
    cdef int flags = 0
    cdef double total
    if len(parameters) != sizeof(PointwiseParams):
        raise ValueError("parameters: not made by pointwise_parameters")
    memcpy(&params, <const char*>parameters, sizeof(PointwiseParams))
    call.y_pred = cnp.PyArray_DATA(y_pred)
    call.y_true = cnp.PyArray_DATA(y_true)
    call.n = cnp.PyArray_SIZE(y_pred)
    call.grad = data_or_null(grad)
    call.values = data_or_null(values)
    call.sample_weight = data_or_null(sample_weight)
    call.weight_block = max(weight_block, 1)
    call.pos_weight = data_or_null(pos_weight)
    call.pos_len = 1 if pos_weight is None else max(cnp.PyArray_SIZE(pos_weight), 1)
    call.want_value = want_value
    call.n_threads = n_threads
    call.block = block_size(call.n, cost, 16)  # 16: every block's loop aligned
    if cnp.PyArray_TYPE(y_pred) == cnp.NPY_FLOAT:
        with nogil:
            total = pointwise_dispatch(kernel, &params, &call, <float>grad_scale, &flags)
    else:
        with nogil:
            total = pointwise_dispatch(kernel, &params, &call, grad_scale, &flags)
    return total, flags
