# The body of every fastloss kernel module.
#
# setup.py compiles this file once per ISA level (fastloss/_kernels_<level>.pyx includes
# it); fastloss._dispatch imports the best module the CPU runs.  Every loss lives in its
# own included file; the shared numerics are in _numerics.pxd / _numerics.h.

cimport numpy as cnp
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cython cimport floating

from fastloss._numerics cimport *

cnp.import_array()

cdef extern from "_numerics.h":
    const char* FASTLOSS_ISA_LEVEL
    const char* FASTLOSS_COMPILE_FLAGS

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


cdef inline void* data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(array)


def is_kernel_float_array(object a):
    """True for an exact ndarray, float32 or float64, C-contiguous, aligned, native order.

    The per-call fast path of the Python layer: one C call instead of several attribute
    reads (each ``.flags`` access builds an object).
    """
    if type(a) is not cnp.ndarray:
        return False
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>a)
    return ((typenum == cnp.NPY_FLOAT or typenum == cnp.NPY_DOUBLE)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


def matches(object a, cnp.ndarray like, bint writeable):
    """True when ``a`` is an exact ndarray with ``like``'s dtype and shape, C-contiguous,
    aligned, in native byte order (and writeable if asked): usable by a kernel next to
    ``like`` as it is."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray b = <cnp.ndarray>a
    cdef int d
    if (cnp.PyArray_TYPE(b) != cnp.PyArray_TYPE(like) or b.ndim != like.ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(b) or not cnp.PyArray_ISBEHAVED_RO(b)
            or (writeable and not cnp.PyArray_ISWRITEABLE(b))):
        return False
    for d in range(b.ndim):
        if b.shape[d] != like.shape[d]:
            return False
    return True


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


def is_ready_rows(object y_pred, object y_true, object out, bint labels):
    """is_ready_pair for a row loss: ``y_pred`` of shape (N, C) with C >= 1, and
    ``y_true`` its (N,) int32/int64 labels (``labels``) or an array like ``y_pred``."""
    if not is_kernel_float_array(y_pred):
        return False
    cdef cnp.ndarray pred = <cnp.ndarray>y_pred
    if pred.ndim != 2 or pred.shape[1] < 1:
        return False
    if labels:
        if not is_label_array(y_true, pred.shape[0]):
            return False
    elif not matches(y_true, pred, False):
        return False
    return out is None or (matches(out, pred, True) and not shares_memory(out, y_pred)
                           and not shares_memory(out, y_true))


def is_label_array(object a, Py_ssize_t n_rows):
    """True for an exact 1-D ndarray of ``n_rows`` int32/int64 labels, C-contiguous,
    aligned, native byte order: usable by a kernel as it is."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray b = <cnp.ndarray>a
    cdef int typenum = cnp.PyArray_TYPE(b)
    return ((typenum == cnp.NPY_INT32 or typenum == cnp.NPY_INT64) and b.ndim == 1
            and b.shape[0] == n_rows and cnp.PyArray_IS_C_CONTIGUOUS(b)
            and cnp.PyArray_ISBEHAVED_RO(b))


def build_info():
    """What this module was compiled with: a dict for fastloss.show_config()."""
    return {
        "isa_level": FASTLOSS_ISA_LEVEL.decode(),
        "compile_flags": FASTLOSS_COMPILE_FLAGS.decode(),
        "openmp": bool(fastloss_openmp_enabled()),
        "openmp_max_threads": fastloss_omp_max_threads(),
        "vector_exp_log": bool(FASTLOSS_VECTOR_EXP_LOG),
        "vector_log1p_tanh": bool(FASTLOSS_VECTOR_LOG1P_TANH),
    }


def parallel_used():
    """True once a kernel of this module has entered an OpenMP parallel region."""
    return bool(fastloss_parallel_used)


include "_pointwise.pxi"
include "_multiclass.pxi"
