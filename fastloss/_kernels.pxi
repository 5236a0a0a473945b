# The body of every fastloss kernel module.
#
# setup.py compiles this file once per ISA level (fastloss/_kernels_<level>.pyx includes
# it); fastloss._dispatch imports the best module the CPU runs.  Every loss lives in its
# own included file; the shared numerics are in _numerics.pxd / _numerics.h.
#
# Pointer arguments of the loops are ``restrict``: the Python layer guarantees that no
# output overlaps an input.  Without it gcc versions each vectorised loop on a runtime
# overlap test whose conservative answer for nearby buffers picks a scalar loop, with
# other rounding (scalar libm, another summation order): the same call would then give
# other bits depending on where its buffers lie.

cimport numpy as cnp
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from cython cimport floating
from libc.stdint cimport int64_t, INT64_MAX

from fastloss._numerics cimport *

cnp.import_array()

cdef extern from "_numerics.h":
    const char* FASTLOSS_ISA_LEVEL
    const char* FASTLOSS_COMPILER
    const char* FASTLOSS_COMPILE_FLAGS
    const char* FASTLOSS_SOURCE_HASH

cdef extern from "_cpu_features.h" nogil:
    int fastloss_x86_64_level()


def x86_64_level():
    """The x86-64 micro-architecture level (1 = baseline, 2, 3 or 4, as gcc's
    -march=x86-64-vN) this CPU and its operating system support, asked of the CPU
    (CPUID and XGETBV); 0 on a CPU that is not x86-64."""
    return fastloss_x86_64_level()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastloss_openmp_enabled(void) { return 1; }
    static int fastloss_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastloss_openmp_enabled(void) { return 0; }
    static int fastloss_omp_max_threads(void) { return 1; }
    #endif
    """
    int fastloss_openmp_enabled()
    int fastloss_omp_max_threads()


cdef double KERAS_EPSILON = 1e-7   # keras.backend.epsilon(): msle, mape, probabilities,
                                   # dice and tversky


cdef inline floating keras_clip(floating q) noexcept nogil:
    """Keras clips probabilities to [eps, 1 - eps] before a log (NaN propagates)."""
    return min_(max_(q, <floating>KERAS_EPSILON), <floating>(1.0 - KERAS_EPSILON))


cdef inline bint keras_unclipped(floating q) noexcept nogil:
    """Where the clip passes the gradient (torch.clip / tf.clip_by_value: inclusive)."""
    return (q >= <floating>KERAS_EPSILON) & (q <= <floating>(1.0 - KERAS_EPSILON))


cpdef enum Flag:
    # Bits a kernel raises in its ``flags`` (OR-reduced over the loop): the Python layer
    # turns them into errors after the call, so no separate validation pass is needed.
    LABEL_NOT_BINARY = 1             # hinge: a label outside {-1, 0, 1}
    LABEL_ZERO = 2                   # hinge: a label 0 seen (labels in {0, 1})
    LABEL_MINUS_ONE = 4              # hinge: a label -1 seen (labels in {-1, 1})
    PRED_NOT_PROBABILITY = 8         # y_pred outside [0, 1]
    TARGET_NOT_PROBABILITY = 16      # y_true outside [0, 1]
    LABEL_OUT_OF_RANGE = 32          # a label outside [0, C), not ignore_index
    OUT_OF_MEMORY = 64               # malloc of a scratch buffer failed
    TARGET_NOT_LOG_PROBABILITY = 128 # kl_divergence(log_target=True): a log p > 0
    UNKNOWN_KERNEL = 256             # a kernel id no dispatch knows (an internal error)


cdef extern from "_parallel.h" nogil:
    int64_t fastloss_now_ns()
    int fastloss_team_size(int requested)
    void fastloss_team_done(int team, int64_t start, int64_t paced_end, int64_t end)
    void fastloss_keep_fastest(int64_t* slot, int64_t value)
    int fastloss_install_fork_handler()
    void fastloss_initialise_openmp()
    int64_t fastloss_serial_process
    int64_t fastloss_serial_until_ns
    int64_t fastloss_backoff_ns
    int64_t fastloss_punctual_streak
    int64_t fastloss_late_regions

if fastloss_install_fork_handler() != 0:
    raise ImportError("fastloss: could not install its fork handler (pthread_atfork)")
fastloss_initialise_openmp()


def serial_process():
    """True in a process forked from the one that imported this module, or made serial
    by ``make_process_serial``: every kernel then runs serially (libgomp cannot start
    threads in a child forked after the parent used it, see _parallel.h)."""
    return bool(fastloss_serial_process)


def make_process_serial():
    """Run every kernel of this process serially from now on."""
    global fastloss_serial_process
    fastloss_serial_process = 1


def team_size(int requested):
    """The threads a region asking for ``requested`` would get now (see _parallel.h)."""
    return fastloss_team_size(requested)


def load_state():
    """The busy-machine back-off: a dict of ``serial_for`` (seconds left of running
    serially), ``backoff`` (seconds the next late region adds) and ``late_regions``."""
    return {"serial_for": max(0, fastloss_serial_until_ns - fastloss_now_ns()) * 1e-9,
            "backoff": fastloss_backoff_ns * 1e-9,
            "late_regions": fastloss_late_regions}


def report_region(int team, double elapsed, double first_chunk):
    """Tell the back-off about a region of ``team`` threads that took ``elapsed``
    seconds, whose fastest thread did its chunk of blocks in ``first_chunk`` seconds
    (for tests of the mechanism)."""
    cdef int64_t now = fastloss_now_ns()
    fastloss_team_done(team, now - <int64_t>(elapsed * 1e9),
                       now - <int64_t>((elapsed - first_chunk) * 1e9), now)


def report_region_of_blocks(int team_size, Py_ssize_t n_blocks, chunk_done, double end):
    """Tell the back-off about a region of ``n_blocks`` blocks run by ``team_size``
    threads whose chunks ended at the times ``chunk_done`` (seconds after the start,
    one per thread, in thread order) and which ended at ``end``: the path of a real
    region, through each thread's pace (for tests of the mechanism)."""
    cdef Team team
    cdef int64_t now = fastloss_now_ns()
    cdef Py_ssize_t thread, last
    team.size = team_size
    team.chunk = (n_blocks + team_size - 1) // team_size
    team.n_blocks = n_blocks
    team.start = now - <int64_t>(end * 1e9)
    team.fastest_per_block = INT64_MAX
    for thread, done in enumerate(chunk_done):
        last = min((thread + 1) * team.chunk, n_blocks) - 1
        offer_pace(&team, last, team.start + <int64_t>(done * 1e9))
    fastloss_team_done(team.size, team.start,
                       team.start + team.fastest_per_block * team.chunk, now)


def reset_load_state():
    """Forget the back-off (for tests)."""
    global fastloss_serial_until_ns, fastloss_backoff_ns, fastloss_punctual_streak
    fastloss_serial_until_ns = 0
    fastloss_backoff_ns = 10000000
    fastloss_punctual_streak = 0


# -- blocks: the unit of parallel work ------------------------------------------------
#
# A call's items (elements or rows) are cut into blocks whose size depends only on the
# call (its size and the loss's cost), never on the threads: each block's partial sum
# is stored and the partials are added in block order.  So the value has the same bits
# with 1 thread, 2 threads, a team cut short (busy machine, forked child, failed thread
# start) or any schedule.

cdef enum:
    MAX_BLOCKS = 1024     # partial sums live on the stack: 8 KiB

# Work (items x relative cost) of one block: large enough that the per-block call is
# noise, small enough that 2 threads split 2 blocks' worth of work evenly.  Tests lower
# it (set_min_block_work) to exercise the threaded path on small arrays.
cdef Py_ssize_t min_block_work = 16384


def set_min_block_work(Py_ssize_t work):
    """Set the work of one block (default 16384); returns the previous value."""
    global min_block_work
    previous = min_block_work
    min_block_work = max(work, 1)
    return previous


cdef inline Py_ssize_t block_size(Py_ssize_t n, Py_ssize_t item_cost,
                                  Py_ssize_t multiple) noexcept nogil:
    """Items per block for ``n`` items of cost ``item_cost``: about min_block_work of
    work, at most MAX_BLOCKS blocks, rounded up to a ``multiple``."""
    cdef Py_ssize_t b = max(min_block_work // max(item_cost, 1), 1)
    b = max(b, (n + MAX_BLOCKS - 1) // MAX_BLOCKS)
    return (b + multiple - 1) // multiple * multiple


cdef inline Py_ssize_t block_count(Py_ssize_t n, Py_ssize_t block) noexcept nogil:
    return (n + block - 1) // block


cdef inline double ordered_sum(const double* partial, Py_ssize_t n) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += partial[i]
    return total


cdef struct Team:
    int size                  # threads running the blocks (1: serially, no region)
    Py_ssize_t chunk          # blocks per thread (static schedule: thread t runs
                              # blocks t*chunk .. (t+1)*chunk-1)
    Py_ssize_t n_blocks
    int64_t start             # when the region started (ns)
    int64_t fastest_per_block # the fastest thread's time per block (ns)


cdef inline Team team_for(Py_ssize_t n_blocks, int n_threads) noexcept nogil:
    """The team that runs ``n_blocks`` blocks (static schedule) for a call allowed
    ``n_threads`` threads; starts its clock (see fastloss_team_size)."""
    cdef Team team
    team.size = fastloss_team_size(n_threads) if n_blocks > 1 else 1
    team.chunk = (n_blocks + team.size - 1) // team.size
    team.n_blocks = n_blocks
    team.start = fastloss_now_ns() if team.size > 1 else 0
    team.fastest_per_block = INT64_MAX
    return team


cdef inline void block_done(Team* team, Py_ssize_t block) noexcept nogil:
    """Called by the thread that ran ``block``, inside the region: after the last block
    of its chunk, a thread offers its pace (time per block since the start)."""
    cdef Py_ssize_t in_chunk = block % team.chunk
    if in_chunk == team.chunk - 1 or block == team.n_blocks - 1:
        offer_pace(team, block, fastloss_now_ns())


cdef inline void offer_pace(Team* team, Py_ssize_t block, int64_t now) noexcept nogil:
    """The pace of the thread whose chunk ends with ``block``, done at ``now``."""
    fastloss_keep_fastest(&team.fastest_per_block,
                          (now - team.start) // (block % team.chunk + 1))


cdef inline void team_finished(const Team* team) noexcept nogil:
    """After the region: report how punctual it was (see fastloss_team_done): when
    every thread would have been done at the fastest one's pace, against when the
    region ended."""
    fastloss_team_done(team.size, team.start,
                       team.start + team.fastest_per_block * team.chunk, fastloss_now_ns())


cdef inline void* data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(array)


cpdef bint is_kernel_float_array(object a):
    """True for an exact ndarray, float32 or float64, C-contiguous, aligned, native order.

    The per-call fast path of the Python layer: one C call instead of several attribute
    reads (each ``.flags`` access builds an object).  ``cpdef``, as the other checks the
    ``is_ready_*`` functions call: a ``def`` function called from here would go through
    a module lookup and a Python call each time (about half of is_ready_rows' cost).
    """
    if type(a) is not cnp.ndarray:
        return False
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return ((typenum == cnp.NPY_FLOAT or typenum == cnp.NPY_DOUBLE)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


cdef bint same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int d
    if a.ndim != b.ndim:
        return False
    for d in range(a.ndim):
        if a.shape[d] != b.shape[d]:
            return False
    return True


cpdef bint matches(object a, cnp.ndarray like, bint writeable):
    """True when ``a`` is an exact ndarray with ``like``'s dtype and shape, C-contiguous,
    aligned, in native byte order (and writeable if asked): usable by a kernel next to
    ``like`` as it is."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray b = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(b) != cnp.PyArray_TYPE(like)
            or not cnp.PyArray_IS_C_CONTIGUOUS(b) or not cnp.PyArray_ISBEHAVED_RO(b)
            or (writeable and not cnp.PyArray_ISWRITEABLE(b))):
        return False
    return same_shape(b, like)


cdef bint shares_memory(object a, object b):
    """Whether the data of two ndarrays (either may be None) overlap."""
    if a is None or b is None:
        return False
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


def is_ready_pair(object y_pred, object y_true, object out):
    """True when a pointwise call can use its arrays as they are: ``y_pred`` a kernel
    float array, ``y_true`` of its dtype and shape, ``out`` None or a writeable array of
    its dtype and shape, not overlapping an input (all C-contiguous, aligned, native
    order).  One C call for the whole per-call check of the common case."""
    if not is_kernel_float_array(y_pred):
        return False
    if not matches(y_true, <cnp.ndarray>y_pred, False):
        return False
    return out is None or (matches(out, <cnp.ndarray>y_pred, True)
                           and not shares_memory(out, y_pred)
                           and not shares_memory(out, y_true))


cpdef enum RowTargets:
    # what y_true of a row loss holds (the ``targets`` of is_ready_rows)
    SCORES_LIKE_PRED = 0    # (N, C) floats of y_pred's dtype
    CLASS_LABELS = 1        # (N,) int32/int64 class labels
    LABEL_MATRIX = 2        # (N, C) int32/int64 class indices


def is_ready_rows(object y_pred, object y_true, object out, int targets):
    """is_ready_pair for a row loss: ``y_pred`` of shape (N, C) with C >= 1, and
    ``y_true`` as ``targets`` (a RowTargets value; False and True are the first two)
    says: an array like ``y_pred``, its (N,) int32/int64 labels, or an (N, C)
    int32/int64 matrix of class indices."""
    if not is_kernel_float_array(y_pred):
        return False
    cdef cnp.ndarray pred = <cnp.ndarray>y_pred
    if pred.ndim != 2 or pred.shape[1] < 1:
        return False
    if targets == CLASS_LABELS:
        if not is_label_array(y_true, pred.shape[0]):
            return False
    elif targets == LABEL_MATRIX:
        if not (is_kernel_label_array(y_true) and same_shape(<cnp.ndarray>y_true, pred)):
            return False
    elif not matches(y_true, pred, False):
        return False
    return out is None or (matches(out, pred, True) and not shares_memory(out, y_pred)
                           and not shares_memory(out, y_true))


cdef bint is_kernel_label_array(object a):
    """An exact ndarray of int32/int64, C-contiguous, aligned, native byte order."""
    if type(a) is not cnp.ndarray:
        return False
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return ((typenum == cnp.NPY_INT32 or typenum == cnp.NPY_INT64)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


cpdef bint is_label_array(object a, Py_ssize_t n_rows):
    """True for an exact 1-D ndarray of ``n_rows`` int32/int64 labels, C-contiguous,
    aligned, native byte order: usable by a kernel as it is."""
    return (is_kernel_label_array(a) and (<cnp.ndarray>a).ndim == 1
            and (<cnp.ndarray>a).shape[0] == n_rows)


cpdef bint is_label_matrix(object a, cnp.ndarray like):
    """True for an exact ndarray of int32/int64 class indices of ``like``'s shape,
    C-contiguous, aligned, native byte order: usable by a kernel as it is."""
    return is_kernel_label_array(a) and same_shape(<cnp.ndarray>a, like)


def build_info():
    """What this module was compiled with: a dict for fastloss.show_config()."""
    return {
        "isa_level": FASTLOSS_ISA_LEVEL.decode(),
        "source_hash": FASTLOSS_SOURCE_HASH.decode(),
        "compiler": FASTLOSS_COMPILER.decode(),
        "compile_flags": FASTLOSS_COMPILE_FLAGS.decode(),
        "openmp": bool(fastloss_openmp_enabled()),
        "openmp_max_threads": fastloss_omp_max_threads(),
        "vector_math": FASTLOSS_VECTOR_MATH.decode(),
    }


cdef inline floating own_function(int function, floating x) noexcept nogil:
    """fastloss's own exp, log, log1p or tanh (``function`` 0 to 3; _numerics.h), whatever
    the kernels use in this build."""
    if floating is float:
        return (fastloss_expf(x) if function == 0 else fastloss_logf(x) if function == 1
                else fastloss_log1pf(x) if function == 2 else fastloss_tanhf(x))
    else:
        return (fastloss_exp(x) if function == 0 else fastloss_log(x) if function == 1
                else fastloss_log1p(x) if function == 2 else fastloss_tanh(x))


cdef void vector_math_loop(int function, const floating* restrict x,
                           floating* restrict out, Py_ssize_t n) noexcept nogil:
    """out[i] = f(x[i]), f fastloss's own exp, log, log1p or tanh (``function`` 0 to 3):
    plain loops compiled with the kernels' flags, so that they vectorise as the kernels'
    loops do (gcc unswitches the loop on ``function``)."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = own_function(function, x[i])


VECTOR_MATH_FUNCTIONS = ("exp", "log", "log1p", "tanh")


def vector_math(str name, object x, object out):
    """out[...] = name(x) elementwise, ``name`` in exp, log, log1p, tanh: the functions
    every kernel inlines (_numerics.h), for the accuracy tests.  ``x`` and ``out``:
    C-contiguous arrays of one float dtype and size, not overlapping."""
    if name not in VECTOR_MATH_FUNCTIONS:
        raise ValueError(f"name: expected one of {VECTOR_MATH_FUNCTIONS}, got {name!r}")
    if not (is_kernel_float_array(x) and is_kernel_float_array(out)
            and x.dtype == out.dtype and x.size == out.size and out.flags.writeable):
        raise TypeError("x, out: C-contiguous float32/float64 arrays of one dtype and size "
                        f"expected, got {getattr(x, 'dtype', type(x))} and "
                        f"{getattr(out, 'dtype', type(out))}")
    cdef int function = VECTOR_MATH_FUNCTIONS.index(name)
    cdef cnp.ndarray a = x, b = out
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT:
        with nogil:
            vector_math_loop(function, <const float*>cnp.PyArray_DATA(a),
                             <float*>cnp.PyArray_DATA(b), n)
    else:
        with nogil:
            vector_math_loop(function, <const double*>cnp.PyArray_DATA(a),
                             <double*>cnp.PyArray_DATA(b), n)


include "_pointwise.pxi"
include "_rows.pxi"
include "_ratio.pxi"
include "_native.pxi"
