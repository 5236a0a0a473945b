"""Per-call input checks and conversions, shared by every loss.

The fast path (a C-contiguous float32/float64 ndarray) is one C-level check; any other
input is converted once (``as_kernel_array``), never modified.
"""
import numbers

import numpy as np

from ._dispatch import kernels

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
KERNEL_FLOATS = (FLOAT32, FLOAT64)


class InvalidParameterError(ValueError, TypeError):
    """A bad loss parameter (unknown name, wrong type or out of its domain)."""


def as_kernel_array(array, dtype):
    """``array`` as a C-contiguous, aligned ndarray of ``dtype`` (native byte order),
    copied only when it is not one already; 0-d stays 0-d."""
    return np.require(np.asarray(array), dtype=dtype, requirements=("C", "A"))


def compute_dtype(dtype):
    """The kernel dtype for an input dtype: float16 -> float32, int/bool -> float64."""
    if not dtype.isnative:
        dtype = dtype.newbyteorder("=")
    if dtype in KERNEL_FLOATS:
        return dtype
    if dtype == np.float16:
        return FLOAT32
    if dtype.kind in "biu" or dtype.kind == "f":
        return FLOAT64
    raise TypeError(f"y_pred: expected a real-valued array, got dtype {dtype}")


def prepare_pred(y_pred):
    """Return (y_pred as a C-contiguous float32/float64 array, dtype of its gradient)."""
    if kernels.is_kernel_float_array(y_pred):
        return y_pred, y_pred.dtype
    if y_pred is None:
        raise TypeError("y_pred: expected an array, got None")
    array = np.asarray(y_pred)
    dtype = compute_dtype(array.dtype)
    is_half = array.dtype.kind == "f" and array.dtype.itemsize == 2  # any byte order
    grad_dtype = np.dtype(np.float16) if is_half else dtype
    return as_kernel_array(array, dtype), grad_dtype


def prepare_target(y_true, pred):
    """y_true as a C-contiguous array of pred's dtype and shape."""
    if kernels.matches(y_true, pred, False):
        return y_true
    if y_true is None:
        raise TypeError("y_true: expected an array, got None")
    array = np.asarray(y_true)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"y_true: expected a real-valued array, got dtype {array.dtype}")
    y_true = as_kernel_array(array, pred.dtype)
    if y_true.shape != pred.shape:
        raise ValueError(f"y_true: shape {y_true.shape} does not match "
                         f"y_pred shape {pred.shape}")
    return y_true


def prepare_labels(y_true, n_rows):
    """Integer class labels of shape (n_rows,): int32 or int64, C-contiguous.

    Other integer dtypes are widened; float labels are accepted when integral (Keras
    passes labels as floats), anything else is a TypeError.
    """
    if kernels.is_label_array(y_true, n_rows):
        return y_true
    if y_true is None:
        raise TypeError("y_true: expected an array of integer labels, got None")
    array = np.asarray(y_true)
    kind = array.dtype.kind
    if kind == "f":
        integral = array == np.trunc(array)
        if not np.all(integral & (np.abs(array) < 2.0 ** 62)):
            bad = array[~integral][0] if not np.all(integral) else array.max()
            raise TypeError(f"y_true: expected integer class labels, got dtype "
                            f"{array.dtype} with the value {bad!r}")
    elif kind not in "biu":
        raise TypeError(f"y_true: expected integer class labels, got dtype {array.dtype}")
    is_int32 = kind == "i" and array.dtype.itemsize == 4  # any byte order
    y_true = as_kernel_array(array, np.int32 if is_int32 else np.int64)
    if y_true.shape != (n_rows,):
        raise ValueError(f"y_true: expected labels of shape ({n_rows},) for y_pred with "
                         f"{n_rows} rows, got shape {y_true.shape}")
    return y_true


def prepare_sample_weight(sample_weight, pred):
    """(weights of shape (N,) in pred's dtype, elements per weight), or (None, 1)."""
    if sample_weight is None:
        return None, 1
    if pred.ndim == 0:
        raise ValueError("sample_weight: y_pred is a scalar (0-d), it has no samples")
    if not (type(sample_weight) is np.ndarray and sample_weight.dtype == pred.dtype
            and sample_weight.flags.c_contiguous):
        array = np.asarray(sample_weight)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight: expected a real-valued array, "
                            f"got dtype {array.dtype}")
        sample_weight = as_kernel_array(array, pred.dtype)
    n = pred.shape[0]
    if sample_weight.shape != (n,):
        raise ValueError(f"sample_weight: expected shape ({n},), one weight per sample of "
                         f"y_pred with shape {pred.shape}, got shape {sample_weight.shape}")
    return sample_weight, (pred.size // n if n else 1)


def prepare_out(out, pred, grad_dtype):
    """The gradient buffer: ``out`` checked, or a new array.

    Returns (buffer the kernel writes, array handed back to the caller); they differ only
    when the gradient's dtype is not a kernel dtype (float16 input), where the result is
    cast into ``out`` after the kernel ran.
    """
    if out is None:
        buffer = np.empty(pred.shape, dtype=pred.dtype)
        return buffer, (buffer if grad_dtype == pred.dtype else None)
    if grad_dtype is pred.dtype and kernels.matches(out, pred, True):
        return out, out
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
    if out.shape != pred.shape:
        raise ValueError(f"out: shape {out.shape} does not match y_pred shape {pred.shape}")
    if out.dtype != grad_dtype:
        raise ValueError(f"out: dtype {out.dtype} does not match the gradient dtype "
                         f"{grad_dtype} of y_pred")
    if not out.flags.c_contiguous:
        raise ValueError("out: must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out: is read-only")
    if grad_dtype != pred.dtype:
        return np.empty(pred.shape, dtype=pred.dtype), out
    return out, out


def check_no_overlap(out, **inputs):
    """``out`` must not share memory with an input: the kernels read the inputs while
    they write the gradient, and inputs are never modified."""
    for name, array in inputs.items():
        if isinstance(array, np.ndarray) and np.may_share_memory(out, array):
            raise ValueError(f"out: shares memory with {name}; pass a separate array")


def finish_grad(buffer, result, grad_dtype):
    """Hand the gradient back in the caller's dtype (a cast only for float16 input)."""
    if result is None:
        return buffer.astype(grad_dtype)
    if result is not buffer:
        np.copyto(result, buffer, casting="unsafe")
    return result


def check_positive(name, value):
    """A finite real number > 0 (as a float)."""
    check_real(name, value)
    if not (value > 0 and np.isfinite(value)):
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"{name} must be a real number, got "
                                    f"{type(value).__name__} {value!r}")
    return float(value)


def check_fraction(name, value):
    """A real number in [0, 1]."""
    value = check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise InvalidParameterError(f"{name} must be in [0, 1], got {value!r}")
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_class_vector(name, value):
    """A 1-D array of finite reals (per-class weights), kept as float64 and float32 copies."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf" or array.ndim != 1 or array.size == 0:
        raise InvalidParameterError(f"{name} must be a non-empty 1-D array of real numbers, "
                                    f"got {array.dtype} array of shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidParameterError(f"{name} must be finite, got {array!r}")
    array = np.array(array, dtype=np.float64)  # our own copy: later changes by the caller
    array.flags.writeable = False               # cannot alter a constructed loss
    single = array.astype(np.float32)
    single.flags.writeable = False
    return {FLOAT64: array, FLOAT32: single}
