# The C entry of the kernels: one call described by a fastloss_native_call (see
# _native_call.h), for callers that hold raw memory rather than NumPy arrays (the C++
# operators of fastloss.torch, where a Python call path would cost more than a small
# kernel).  The same dispatch functions run as for the Python entries, so a call gives
# the same bits whichever way it comes.

from cpython.pycapsule cimport PyCapsule_New

cdef extern from "_native_call.h":
    int FASTLOSS_NATIVE_ABI
    int FASTLOSS_NATIVE_POINTWISE
    int FASTLOSS_NATIVE_SPARSE_ROWS
    int FASTLOSS_NATIVE_DENSE_ROWS
    ctypedef struct fastloss_native_call:
        int32_t abi
        int32_t family
        int32_t kernel
        int32_t is_double
        int32_t threads
        int32_t cost
        int32_t want_value
        const void* y_pred
        const void* y_true
        const void* weight
        int64_t weight_len
        void* grad
        void* values
        int64_t n
        int64_t classes
        const void* pointwise_params
        double grad_scale
        double label_smoothing
        double z_loss
        int64_t ignore_index
        int32_t has_ignore_index
        int32_t weighted_mean
        double total
        double denominator
        int32_t flags


cdef inline int threads_for_work(Py_ssize_t work, int threads) noexcept nogil:
    """The Python layer's threads_for: serial below two blocks' worth of work."""
    return 1 if work < 2 * min_block_work else threads


cdef void native_pointwise(fastloss_native_call* c) noexcept nogil:
    cdef PointwiseCall call
    cdef int flags = 0
    call.y_pred = c.y_pred
    call.y_true = c.y_true
    call.n = c.n
    call.grad = c.grad
    call.values = c.values
    call.sample_weight = NULL
    call.weight_block = 1
    call.pos_weight = c.weight
    call.pos_len = 1 if c.weight == NULL else max(c.weight_len, 1)
    call.want_value = c.want_value
    call.n_threads = threads_for_work(c.n * c.cost, c.threads)
    call.block = block_size(call.n, c.cost, 16)
    cdef const PointwiseParams* params = <const PointwiseParams*>c.pointwise_params
    if c.is_double:
        c.total = pointwise_dispatch(c.kernel, params, &call, c.grad_scale, &flags)
    else:
        c.total = pointwise_dispatch(c.kernel, params, &call, <float>c.grad_scale, &flags)
    c.flags = flags


cdef void native_rows(fastloss_native_call* c) noexcept nogil:
    """The row families: (n, classes) scores with labels or with dense targets."""
    cdef RowParams prm
    cdef RowCall call
    cdef (double, int, double, Py_ssize_t) result
    cdef int flags = 0
    memset(&prm, 0, sizeof(prm))
    prm.n_classes = c.classes
    prm.keep = 1 - c.label_smoothing
    prm.spread = c.label_smoothing / c.classes
    prm.z_loss = c.z_loss
    prm.power = 1
    prm.has_ignore_index = c.has_ignore_index
    prm.ignore_index = c.ignore_index
    prm.class_weight_sum = c.classes
    if c.weight != NULL:
        if c.is_double:
            prm.class_weight_sum = row_sum(<const double*>c.weight, c.classes)
        else:
            prm.class_weight_sum = row_sum(<const float*>c.weight, c.classes)
    call.x = c.y_pred
    call.target = c.y_true if c.family == FASTLOSS_NATIVE_DENSE_ROWS else NULL
    call.class_weight = c.weight
    call.sample_weight = NULL
    call.grad = c.grad
    call.values = c.values
    call.n_rows = c.n
    call.inner = 1
    call.tile = 1
    call.item_cost = c.cost * c.classes
    call.n_threads = threads_for_work(c.n * c.classes * c.cost, c.threads)
    call.block = block_size(call.n_rows, call.item_cost, 1)
    if c.family == FASTLOSS_NATIVE_DENSE_ROWS:
        if c.weight == NULL and (c.kernel == CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_LOGITS or
                                 c.kernel == CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES):
            c.flags = UNKNOWN_KERNEL   # the focal kernels read their alpha per class
            return
        if c.is_double:
            c.total = dense_dispatch(c.kernel, &prm, &call, c.grad_scale, &flags)
        else:
            c.total = dense_dispatch(c.kernel, &prm, &call, <float>c.grad_scale, &flags)
        c.flags = flags
        return
    if c.is_double:
        result = sparse_run(c.kernel, &prm, &call, <const int64_t*>c.y_true,
                            c.weighted_mean, c.grad_scale)
    else:
        result = sparse_run(c.kernel, &prm, &call, <const int64_t*>c.y_true,
                            c.weighted_mean, <float>c.grad_scale)
    c.total, c.flags, c.denominator = result[0], result[1], result[2]


cdef void fastloss_native_run(fastloss_native_call* c) noexcept nogil:
    """Run the call ``c`` describes (see _native_call.h) and store its results in it."""
    c.flags = 0
    c.total = 0
    c.denominator = 0
    if c.abi != FASTLOSS_NATIVE_ABI:
        c.flags = UNKNOWN_KERNEL
    elif c.family == FASTLOSS_NATIVE_POINTWISE:
        native_pointwise(c)
    elif ((c.family == FASTLOSS_NATIVE_SPARSE_ROWS or c.family == FASTLOSS_NATIVE_DENSE_ROWS)
          and c.classes >= 1):
        native_rows(c)
    else:
        c.flags = UNKNOWN_KERNEL


def native_entry():
    """The C entry ``void fastloss_native_run(fastloss_native_call*)`` as a PyCapsule
    named ``"fastloss_native_run"`` (see _native_call.h)."""
    return PyCapsule_New(<void*>fastloss_native_run, b"fastloss_native_run", NULL)


def native_abi():
    """The FASTLOSS_NATIVE_ABI this module was built with."""
    return FASTLOSS_NATIVE_ABI
