# Ratio losses: one value per group of elements, a ratio of sums over the whole group
# (Dice, Tversky), not a sum of per-element terms.
#
# Layout of the work:
#   * The Python layer (fastloss/_ratio.py) hands the kernel y_pred and y_true as
#     ``n_groups`` consecutive groups of ``group_len`` elements each (C order, the reduced
#     axes last): one group per value of the loss.
#   * A group's value needs three sums over it, I = sum t p, T = sum t and P = sum p
#     (float64, per block, blocks added in order), and its gradient is
#     slope * t_i + offset with two coefficients of the group: so the gradient is a
#     second pass over y_true once the sums are known, never a temporary of the input's
#     size.
#   * Short groups (a group's work at most a block's, see _kernels.pxi): ``ratio_groups``
#     takes whole groups per block, each group's sums and then its gradient while the
#     group is still in cache, so the data comes from memory once.
#   * Long groups (one ratio over a whole image or batch): each group is cut into chunks
#     whose size depends only on the call; ``run_chunks`` computes every chunk's sums,
#     a group's sums are the ordered sum of its chunks', then ``run_chunks`` writes the
#     gradient of every chunk; batch by batch of whole groups, so that the second pass
#     finds y_true in a shared cache when a batch fits there.
#   Either way threads take whole blocks or chunks and every sum is added in an order
#   fixed by the call, so the results have the same bits with any thread count.
#   * No input is range-checked (as Keras): any real y_pred and y_true are used as they
#     are, and NaN propagates to the value and gradient of its group.


# -- the kernel table ---------------------------------------------------------------
#
# As in _rows.pxi: per loss an id (kernels.RatioKernel), a tag type named after the public
# loss, its branch of ``ratio_of`` and a line in ratio_dispatch.  A tag holds nothing
# (the parameters are RatioParams); the dispatch passes a NULL pointer of its type.

cpdef enum RatioKernel:
    DICE
    TVERSKY


cdef struct RatioParams:
    double alpha              # tversky: the weight of the false positives
    double beta               # tversky: the weight of the false negatives


cdef struct Dice:
    char unused
cdef struct Tversky:
    char unused

ctypedef fused RatioLoss:
    Dice
    Tversky


cdef enum:
    # Long groups are done in batches of whole groups of about this many elements (one
    # group if longer): y_pred and y_true of a batch, 4 MiB in float32, stay in a
    # shared cache between the sums and the gradient.
    RATIO_BATCH_ELEMENTS = 1 << 19


cdef struct GroupSums:
    double overlap            # I = sum t p
    double target             # T = sum t
    double pred               # P = sum p


# -- per-group math --------------------------------------------------------------------

cdef inline double over_square(double x, double inv_s) noexcept nogil:
    """x / S^2, as (x / S) / S: S^2 overflows for sums beyond 1e154, and (1 / S)^2
    underflows, which is what -fassociative-math would make of x * inv_s * inv_s
    without the barrier."""
    return exactly(x * inv_s) * inv_s


cdef inline double ratio_of(const RatioLoss* loss, const RatioParams* prm, GroupSums s,
                            double* restrict slope, double* restrict offset) noexcept nogil:
    """The value of a group from its sums; stores the coefficients of its gradient,
    d value / d p_i = slope * t_i + offset."""
    cdef double S, inv_s
    if RatioLoss is Dice:
        # Keras dice: 1 - 2 I / S with S = T + P + eps; d/dp_i = -2 (t_i S - I) / S^2
        S = s.target + s.pred + KERAS_EPSILON
        inv_s = 1 / S
        slope[0] = -2 * inv_s
        offset[0] = 2 * over_square(s.overlap, inv_s)
        return 1 - 2 * s.overlap * inv_s
    elif RatioLoss is Tversky:
        # Keras tversky: 1 - I / S, S = I + alpha FP + beta FN + eps with the false
        # positives FP = sum (1 - t) p = P - I and negatives FN = sum t (1 - p) = T - I.
        # With dS/dp_i = t_i + alpha (1 - t_i) - beta t_i,
        # d/dp_i = -(t_i S - I dS/dp_i) / S^2
        #        = -(t_i (alpha P + beta T + eps) - alpha I) / S^2:
        # written so, the slope has no cancellation for non-negative inputs.
        S = (s.overlap + prm.alpha * (s.pred - s.overlap)
             + prm.beta * (s.target - s.overlap) + KERAS_EPSILON)
        inv_s = 1 / S
        slope[0] = -over_square(prm.alpha * s.pred + prm.beta * s.target + KERAS_EPSILON,
                                inv_s)
        offset[0] = prm.alpha * over_square(s.overlap, inv_s)
        return 1 - s.overlap * inv_s


cdef inline GroupSums group_sums(const floating* restrict p, const floating* restrict t,
                                 Py_ssize_t n) noexcept nogil:
    """I, T and P over n elements, in float64 (a float32 product t p is exact there)."""
    cdef GroupSums s
    cdef double overlap = 0, target = 0, pred = 0
    cdef Py_ssize_t i
    for i in range(n):
        overlap += <double>t[i] * <double>p[i]
        target += t[i]
        pred += p[i]
    s.overlap = overlap
    s.target = target
    s.pred = pred
    return s


cdef inline void ratio_gradient(const floating* restrict t, floating* restrict g,
                                Py_ssize_t n, double slope, double offset) noexcept nogil:
    """g_i = slope t_i + offset: a group's (scaled) gradient, which needs only y_true.

    In float64 also for float32 data: the two terms cancel where t_i (alpha P + beta T +
    eps) is close to alpha I (Tversky with beta = 0 on a group of equal targets, whose
    gradient is ~eps / S^2), and coefficients rounded to float32 first would leave only
    their rounding error there.
    """
    cdef Py_ssize_t i
    for i in range(n):
        g[i] = <floating>(slope * t[i] + offset)


cdef inline floating group_weight(const floating* restrict weight,
                                  Py_ssize_t groups_per_weight,
                                  Py_ssize_t group) noexcept nogil:
    """The sample weight of a group (1 without sample_weight)."""
    return 1 if weight == NULL else weight[group // groups_per_weight]


# -- short groups: whole groups per block ----------------------------------------------

cdef double ratio_groups(const RatioLoss* loss, const RatioParams* prm,
                         const floating* restrict p, const floating* restrict t,
                         floating* restrict g, floating* restrict values,
                         const floating* restrict weight, Py_ssize_t groups_per_weight,
                         Py_ssize_t group_len, Py_ssize_t start, Py_ssize_t stop,
                         floating grad_scale) noexcept nogil:
    """Groups start..stop-1: each group's sums, value and (if ``g``) gradient, the
    group still in cache for the gradient; returns the sum of the weighted values."""
    cdef double acc = 0, v, slope, offset, scale
    cdef floating w
    cdef Py_ssize_t k, at
    for k in range(start, stop):
        at = k * group_len
        v = ratio_of(loss, prm, group_sums(p + at, t + at, group_len), &slope, &offset)
        w = group_weight(weight, groups_per_weight, k)
        acc += w * v
        if values != NULL:
            values[k] = <floating>(w * v)
        if g != NULL:
            scale = <double>grad_scale * w
            ratio_gradient(t + at, g + at, group_len, scale * slope, scale * offset)
    return acc


cdef double ratio_blocks(const RatioLoss* loss, const RatioParams* prm,
                         const floating* restrict p, const floating* restrict t,
                         floating* restrict g, floating* restrict values,
                         const floating* restrict weight, Py_ssize_t groups_per_weight,
                         Py_ssize_t n_groups, Py_ssize_t group_len, Py_ssize_t block,
                         floating grad_scale, int n_threads) noexcept nogil:
    """All groups, ``block`` whole groups a block: serially, or by a team of up to
    ``n_threads`` threads; the blocks' sums added in order."""
    cdef double partial[MAX_BLOCKS]
    cdef Py_ssize_t b, n_blocks = block_count(n_groups, block)
    cdef Team team = team_for(n_blocks, n_threads)
    if team.size <= 1:
        for b in range(n_blocks):
            partial[b] = ratio_groups(loss, prm, p, t, g, values, weight,
                                      groups_per_weight, group_len, b * block,
                                      min((b + 1) * block, n_groups), grad_scale)
        return ordered_sum(partial, n_blocks)
    for b in prange(n_blocks, nogil=True, schedule="static", num_threads=team.size):
        partial[b] = ratio_groups(loss, prm, p, t, g, values, weight, groups_per_weight,
                                  group_len, b * block, min((b + 1) * block, n_groups),
                                  grad_scale)
        block_done(&team, b)
    team_finished(&team)
    return ordered_sum(partial, n_blocks)


# -- long groups: chunks, two passes ---------------------------------------------------

cdef struct Chunks:
    # how the groups are cut: chunk c is piece c % per_group of group c // per_group
    Py_ssize_t group_len
    Py_ssize_t length         # elements of a chunk (the last of a group may be shorter)
    Py_ssize_t per_group
    Py_ssize_t count          # n_groups * per_group


cdef inline void chunk_pass(const Chunks* chunks, Py_ssize_t c,
                            const floating* restrict p, const floating* restrict t,
                            double* restrict sums, floating* restrict g,
                            const double* restrict coefficients) noexcept nogil:
    """Chunk c: with ``g`` NULL its sums (into sums[c], sums[count + c] and
    sums[2 count + c]), else its gradient from its group's two coefficients."""
    cdef Py_ssize_t group = c // chunks.per_group
    cdef Py_ssize_t first = (c % chunks.per_group) * chunks.length
    cdef Py_ssize_t at = group * chunks.group_len + first
    cdef Py_ssize_t n = min(chunks.length, chunks.group_len - first)
    cdef GroupSums s
    if g == NULL:
        s = group_sums(p + at, t + at, n)
        sums[c] = s.overlap
        sums[chunks.count + c] = s.target
        sums[2 * chunks.count + c] = s.pred
    else:
        ratio_gradient(t + at, g + at, n, coefficients[2 * group],
                       coefficients[2 * group + 1])


cdef void run_chunks(const Chunks* chunks, Py_ssize_t start, Py_ssize_t stop,
                     const floating* restrict p, const floating* restrict t,
                     double* restrict sums, floating* restrict g,
                     const double* restrict coefficients, int n_threads) noexcept nogil:
    """chunk_pass over chunks start..stop-1: serially, or by a team of up to
    ``n_threads``."""
    cdef Py_ssize_t c
    cdef Team team = team_for(stop - start, n_threads)
    if team.size <= 1:
        for c in range(start, stop):
            chunk_pass(chunks, c, p, t, sums, g, coefficients)
        return
    for c in prange(start, stop, nogil=True, schedule="static", num_threads=team.size):
        chunk_pass(chunks, c, p, t, sums, g, coefficients)
        block_done(&team, c - start)
    team_finished(&team)


cdef double ratio_chunked(const RatioLoss* loss, const RatioParams* prm,
                          const floating* restrict p, const floating* restrict t,
                          floating* restrict g, floating* restrict values,
                          const floating* restrict weight, Py_ssize_t groups_per_weight,
                          Py_ssize_t n_groups, Py_ssize_t group_len, Py_ssize_t chunk,
                          floating grad_scale, int n_threads,
                          int* restrict flags) noexcept nogil:
    """Groups longer than a block: the chunks' sums (pass 1), each group's value and
    gradient coefficients from its chunks' sums in order, the gradient (pass 2).  The
    scratch is 3 doubles a chunk and 2 a group, a small fraction of the input.

    The passes run over batches of whole groups of about RATIO_BATCH_ELEMENTS elements
    (one group if longer), so that pass 2 finds a batch's y_true still in the cache where
    it fits (the bits do not depend on the batches: a group's chunks are added in order
    whatever they are)."""
    cdef Chunks chunks
    cdef double acc = 0, v, slope, offset, scale
    cdef GroupSums s
    cdef floating w
    cdef Py_ssize_t k, first, batch, stop
    cdef Py_ssize_t per_batch = max(RATIO_BATCH_ELEMENTS // group_len, 1)
    chunks.group_len = group_len
    chunks.length = chunk
    chunks.per_group = block_count(group_len, chunk)
    chunks.count = n_groups * chunks.per_group
    cdef double* sums = <double*>malloc(3 * chunks.count * sizeof(double))
    cdef double* coefficients = NULL
    if g != NULL:
        coefficients = <double*>malloc(2 * n_groups * sizeof(double))
    if sums == NULL or (g != NULL and coefficients == NULL):
        free(sums)
        free(coefficients)
        flags[0] |= OUT_OF_MEMORY
        return 0
    batch = 0
    while batch < n_groups:
        stop = min(batch + per_batch, n_groups)
        run_chunks(&chunks, batch * chunks.per_group, stop * chunks.per_group, p, t, sums,
                   <floating*>NULL, coefficients, n_threads)
        for k in range(batch, stop):
            first = k * chunks.per_group
            s.overlap = ordered_sum(sums + first, chunks.per_group)
            s.target = ordered_sum(sums + chunks.count + first, chunks.per_group)
            s.pred = ordered_sum(sums + 2 * chunks.count + first, chunks.per_group)
            v = ratio_of(loss, prm, s, &slope, &offset)
            w = group_weight(weight, groups_per_weight, k)
            acc += w * v
            if values != NULL:
                values[k] = <floating>(w * v)
            if g != NULL:
                scale = <double>grad_scale * w
                coefficients[2 * k] = scale * slope
                coefficients[2 * k + 1] = scale * offset
        if g != NULL:
            run_chunks(&chunks, batch * chunks.per_group, stop * chunks.per_group, p, t,
                       sums, g, coefficients, n_threads)
        batch = stop
    free(sums)
    free(coefficients)
    return acc


# -- entry point -----------------------------------------------------------------------

cdef struct RatioCall:
    # the arrays (of the call's float type) and options of one call
    const void* y_pred
    const void* y_true
    void* grad                # NULL: not wanted
    void* values              # NULL: not wanted (reduced value only)
    const void* sample_weight # NULL, or one weight per groups_per_weight groups
    Py_ssize_t groups_per_weight
    Py_ssize_t n_groups
    Py_ssize_t group_len
    Py_ssize_t cost           # work of one element
    int n_threads


cdef inline double ratio_run(const RatioLoss* loss, const RatioParams* prm,
                             const RatioCall* call, floating grad_scale,
                             int* flags) noexcept nogil:
    """Whole groups per block when a group is at most a block's work, else chunks."""
    cdef const floating* p = <const floating*>call.y_pred
    cdef const floating* t = <const floating*>call.y_true
    cdef floating* g = <floating*>call.grad
    cdef floating* values = <floating*>call.values
    cdef const floating* weight = <const floating*>call.sample_weight
    cdef Py_ssize_t group_cost = max(call.group_len, 1) * call.cost
    if group_cost <= min_block_work:
        return ratio_blocks(loss, prm, p, t, g, values, weight, call.groups_per_weight,
                            call.n_groups, call.group_len,
                            block_size(call.n_groups, group_cost, 1), grad_scale,
                            call.n_threads)
    return ratio_chunked(loss, prm, p, t, g, values, weight, call.groups_per_weight,
                         call.n_groups, call.group_len,
                         block_size(call.n_groups * call.group_len, call.cost, 16),
                         grad_scale, call.n_threads, flags)


cdef double ratio_dispatch(int kernel, const RatioParams* prm, const RatioCall* call,
                           floating grad_scale, int* flags) noexcept nogil:
    """Run the ratio loss ``kernel`` (a RatioKernel id): one line per loss."""
    if kernel == DICE:
        return ratio_run(<const Dice*>NULL, prm, call, grad_scale, flags)
    if kernel == TVERSKY:
        return ratio_run(<const Tversky*>NULL, prm, call, grad_scale, flags)
    flags[0] |= UNKNOWN_KERNEL
    return 0


def ratio(int kernel, double alpha, double beta, cnp.ndarray y_pred, cnp.ndarray y_true,
          object grad, object values, object sample_weight, Py_ssize_t n_groups,
          Py_ssize_t groups_per_weight, double grad_scale, int n_threads, int cost):
    """Run the ratio loss ``kernel`` (a RatioKernel id) over C-contiguous arrays of one
    float dtype holding ``n_groups`` consecutive groups of equal length.

    The Python layer has checked shapes, dtypes, contiguity and that ``grad`` and
    ``values`` overlap no input.  ``values`` (or None) receives the n_groups weighted
    values; ``sample_weight`` (or None) has one weight per ``groups_per_weight``
    consecutive groups; ``grad`` (or None) receives grad_scale times the gradient of
    the sum of the weighted values.  ``alpha`` and ``beta`` are Tversky's (unused by
    Dice).  ``cost`` is the work of one element (sets the blocks); up to ``n_threads``
    threads run them.  Returns ``(sum of the weighted values, flags)``.
    """
    cdef RatioParams prm
    cdef RatioCall call
    cdef int flags = 0
    cdef double total
    prm.alpha = alpha
    prm.beta = beta
    call.y_pred = cnp.PyArray_DATA(y_pred)
    call.y_true = cnp.PyArray_DATA(y_true)
    call.grad = data_or_null(grad)
    call.values = data_or_null(values)
    call.sample_weight = data_or_null(sample_weight)
    call.groups_per_weight = max(groups_per_weight, 1)
    call.n_groups = n_groups
    call.group_len = cnp.PyArray_SIZE(y_pred) // n_groups if n_groups > 0 else 0
    call.cost = max(cost, 1)
    call.n_threads = n_threads
    if cnp.PyArray_TYPE(y_pred) == cnp.NPY_FLOAT:
        with nogil:
            total = ratio_dispatch(kernel, &prm, &call, <float>grad_scale, &flags)
    else:
        with nogil:
            total = ratio_dispatch(kernel, &prm, &call, grad_scale, &flags)
    return total, flags
