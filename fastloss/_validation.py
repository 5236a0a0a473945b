"""Per-call input checks and conversions, shared by every loss.

The fast path (a C-contiguous float32/float64 ndarray) is one C-level check; any other
input is read by ``as_array`` (which names the argument in its errors) and converted once
(``as_kernel_array``), never modified.  The kernels only ever see aligned, native-order,
C-contiguous arrays.
"""
import math
import numbers

import numpy as np

from ._dispatch import kernels

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
KERNEL_FLOATS = (FLOAT32, FLOAT64)


class InvalidParameterError(ValueError, TypeError):
    """A bad loss parameter (unknown name, wrong type or out of its domain)."""


INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


def as_array(name, value):
    """``value`` (argument ``name``) as an ndarray, for the general path of a call.

    What ``np.asarray`` would misread, or fail on with a message that does not say which
    argument is wrong, is an error naming ``name``: None, a masked array (its mask would be
    dropped), a torch tensor NumPy cannot read (one that requires grad, a bfloat16 or GPU
    tensor) and a ragged nested sequence.  torch is never imported: a tensor is recognised
    by its type's name and module.
    """
    if type(value) is np.ndarray:
        return value
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(_masked_message(name))
    if is_torch_tensor(value):
        return _tensor_as_array(name, value)
    try:
        return np.asarray(value)
    except ValueError as error:  # a ragged nested sequence
        raise ValueError(f"{name}: cannot be read as an array of numbers (nested sequences "
                         f"must all have the same length): {error}") from None
    except TypeError as error:
        raise TypeError(f"{name}: cannot be read as an array: {error}") from None


def _masked_message(name):
    if name == "out":
        return "out: a numpy.ma.MaskedArray is not supported; pass a plain numpy.ndarray"
    if name == "sample_weight":
        return ("sample_weight: a numpy.ma.MaskedArray is not supported (its mask would be "
                "ignored); pass sample_weight.filled(0), a weight of 0 leaves a sample out")
    return (f"{name}: a numpy.ma.MaskedArray is not supported (its mask would be ignored); "
            f"pass {name}.filled(...) and leave the masked samples out with a "
            f"sample_weight of 0")


def is_torch_tensor(value):
    """Whether ``value`` is a torch.Tensor (or a subclass), without importing torch."""
    return any(cls.__name__ == "Tensor" and cls.__module__ == "torch"
               for cls in type(value).__mro__)


def _tensor_as_array(name, tensor):
    """A CPU tensor of a NumPy dtype that needs no gradient, as an ndarray (a view)."""
    if tensor.requires_grad:
        raise TypeError(f"{name}: got a torch.Tensor that requires grad, which the NumPy "
                        f"API cannot differentiate: pass {name}.detach(), or use "
                        f"fastloss.torch (whose losses take part in autograd)")
    try:
        return np.asarray(tensor)
    except Exception as error:  # torch's TypeError (bfloat16, ...) or RuntimeError
        if tensor.device.type != "cpu":
            fix = f"move it to the CPU with {name}.cpu()"
        else:
            fix = f"convert it with {name}.float() (or .double())"
        raise TypeError(f"{name}: cannot read a torch.Tensor of dtype {tensor.dtype} on "
                        f"{tensor.device} as a NumPy array ({error}): {fix}, or use "
                        f"fastloss.torch") from None


def _out_type_message(out):
    if is_torch_tensor(out):
        return (f"out: expected a numpy.ndarray, got a torch.Tensor (dtype {out.dtype}, "
                f"requires_grad={out.requires_grad}): pass a NumPy array of the gradient's "
                f"dtype (t.detach().numpy() is one sharing a CPU float32/float64 tensor "
                f"t's memory), or use fastloss.torch, which takes tensors")
    return f"out: expected a numpy.ndarray, got {type(out).__name__}"


def shape_of(value):
    """``np.shape(value)`` for an error message, or a description if it has none."""
    try:
        return np.shape(value)
    except Exception:
        return f"unreadable ({type(value).__name__})"


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
    array = as_array("y_pred", y_pred)
    dtype = compute_dtype(array.dtype)
    is_half = array.dtype.kind == "f" and array.dtype.itemsize == 2  # any byte order
    grad_dtype = np.dtype(np.float16) if is_half else dtype
    return as_kernel_array(array, dtype), grad_dtype


def prepare_target(y_true, pred):
    """y_true as a C-contiguous array of pred's dtype and shape."""
    if kernels.matches(y_true, pred, False):
        return y_true
    array = as_array("y_true", y_true)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"y_true: expected a real-valued array, got dtype {array.dtype}")
    y_true = as_kernel_array(array, pred.dtype)
    if y_true.shape != pred.shape:
        raise ValueError(f"y_true: shape {y_true.shape} does not match "
                         f"y_pred shape {pred.shape}")
    return y_true


def prepare_labels(y_true, n_rows, n_classes, ignore_index=None, shape=None):
    """Integer class labels of shape (n_rows,): int32 or int64, C-contiguous.

    Other integer dtypes are widened; float labels are accepted when integral (Keras
    passes labels as floats), any other float label is a TypeError naming it and its row.
    A label beyond the int64 range (uint64, or an integral float) cannot be converted: it
    is the ValueError of a label outside [0, n_classes), as the kernel reports the labels
    it checks.  ``ignore_index`` (an int, or None) is only used for that message.

    With ``shape`` (one label per position of (N, C, d1, ..., dk) scores: n_rows
    positions), ``y_true`` must have that shape; the labels come back flat, and the
    messages name a label by its position.
    """
    if shape is None and kernels.is_label_array(y_true, n_rows):
        return y_true
    if y_true is None:
        raise TypeError("y_true: expected an array of integer labels, got None")
    array = as_array("y_true", y_true)
    kind = array.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"y_true: expected integer class labels, got dtype {array.dtype}")
    if shape is not None:
        if array.shape != shape:
            raise ValueError(f"y_true: expected labels of shape {shape}, one per position "
                             f"of y_pred, got shape {array.shape}")
        array = array.reshape(-1)   # a view of a C-contiguous array, else one copy
    elif array.shape != (n_rows,):
        raise ValueError(f"y_true: expected labels of shape ({n_rows},) for y_pred with "
                         f"{n_rows} rows, got shape {array.shape}")
    if kind == "f":
        return _float_labels(array, n_classes, ignore_index, shape)

    def beyond_int64():
        bad = array >= n_classes
        if ignore_index is not None and ignore_index >= 0:
            bad &= array != ignore_index
        return _first_label_out_of_range(array, bad, n_classes, ignore_index, shape)

    return _integer_labels(array, beyond_int64)


def _integer_labels(array, beyond_int64):
    """Integer labels for the kernels: int32 kept (any byte order), any other integer
    dtype as int64.  uint64 labels beyond int64 cannot be converted (int64 would wrap
    them: 2**64 - 100 would become -100, the default ignore_index); ``beyond_int64()``
    then gives the error raised."""
    if array.dtype.kind == "u" and array.dtype.itemsize == 8 and array.size \
            and array.max() > INT64_MAX:
        raise beyond_int64()
    is_int32 = array.dtype.kind == "i" and array.dtype.itemsize == 4  # any byte order
    return as_kernel_array(array, np.int32 if is_int32 else np.int64)


def _float_labels(array, n_classes, ignore_index, shape=None):
    """Float labels as int64: they must be integral, finite and within int64."""
    if array.size == 0:
        return as_kernel_array(array, np.int64)
    # min and max are nan when a label is: in range, the cast is exact and warns of nothing
    if -2.0 ** 63 <= float(array.min()) and float(array.max()) < 2.0 ** 63:
        labels = as_kernel_array(array, np.int64)
        if (labels == array).all():  # no fraction was cut off
            return labels
    not_integer = np.trunc(array) != array  # nan
    not_integer |= np.isinf(array)
    if np.any(not_integer):
        row = int(np.argmax(not_integer))
        raise TypeError(f"y_true: expected integer class labels, got dtype {array.dtype} "
                        f"with the value {array[row].item()!r} at {_where(row, shape)}")
    bad = (array < 0) | (array >= n_classes)  # the labels out of range, as the kernel's
    if ignore_index is not None:
        bad &= array != ignore_index
    raise _first_label_out_of_range(array, bad, n_classes, ignore_index, shape)


def _first_label_out_of_range(labels, bad, n_classes, ignore_index, shape=None):
    row = int(np.argmax(bad))
    label = labels[row].item()
    if isinstance(label, float) and abs(label) < 2.0 ** 63:
        label = int(label)  # an integral float label: shown as the kernel shows labels
    return label_out_of_range(label, row, n_classes, ignore_index, shape)


def _where(row, shape):
    """Row ``row`` of flat labels, named as a row, or as a position of ``shape``."""
    if shape is None:
        return f"row {row}"
    return f"position {tuple(int(i) for i in np.unravel_index(row, shape))}"


def label_out_of_range(label, row, n_classes, ignore_index, shape=None):
    """The ValueError of a label outside [0, n_classes) that is not ``ignore_index``;
    with ``shape`` (labels of more than one dimension), ``row`` is the flat index of its
    position, named as an index of that shape."""
    ignore = "" if ignore_index is None else f" and is not ignore_index={ignore_index}"
    return ValueError(f"y_true: label {label} at {_where(row, shape)} is outside [0, {n_classes}) "
                      f"(y_pred has {n_classes} classes){ignore}")


def prepare_label_matrix(y_true, pred):
    """An (N, C) matrix of class indices of ``pred``'s shape: int32 or int64, C-contiguous.

    int32 and int64 are used as they are, other integer dtypes widened to int64 (uint64
    beyond int64 is the ValueError of an index out of range, never wrapped).  Floats and
    bools are a TypeError: the matrix lists class indices, it is not a multi-hot
    indicator.  The range of the indices is checked by the kernel.
    """
    if kernels.is_label_matrix(y_true, pred):
        return y_true
    if y_true is None:
        raise TypeError("y_true: expected an (N, C) array of integer class indices, "
                        "got None")
    array = as_array("y_true", y_true)
    if array.dtype.kind not in "iu":
        raise TypeError(f"y_true: expected integer class indices (each row lists its "
                        f"target classes, ended by -1; not a multi-hot matrix), got "
                        f"dtype {array.dtype}")
    if array.shape != pred.shape:
        raise ValueError(f"y_true: shape {array.shape} does not match y_pred shape "
                         f"{pred.shape} (one row of C class indices per row of scores)")
    return _integer_labels(array, lambda: class_index_out_of_range(array, pred.shape[1]))


def class_index_out_of_range(indices, n_classes):
    """The ValueError of the first entry of an (N, C) matrix of class indices outside
    [-1, n_classes), in row-major order (there must be one)."""
    bad = indices >= n_classes
    if indices.dtype.kind == "i":
        bad |= indices < -1
    row, column = np.unravel_index(int(np.argmax(bad)), indices.shape)
    return ValueError(f"y_true: class index {indices[row, column].item()} at row {row}, "
                      f"column {column} is outside [-1, {n_classes}) (y_pred has "
                      f"{n_classes} classes; -1 ends a row's list, and every entry, also "
                      f"after it, must be in that range)")


def prepare_sample_weight(sample_weight, pred, terms_shape=None):
    """(weights of shape (N,) in pred's dtype, elements per weight), or (None, 1).

    With ``terms_shape`` (the shape of the terms of a loss with one term per position,
    such as a cross-entropy of (N, C, d1, ..., dk) scores): weights of that shape (one per
    term) or of shape (N,) (one per sample, repeated over its terms), returned flat, one
    per term.
    """
    if sample_weight is None:
        return None, 1
    if pred.ndim == 0:
        raise ValueError("sample_weight: y_pred is a scalar (0-d), it has no samples")
    if not (kernels.is_kernel_float_array(sample_weight)
            and sample_weight.dtype == pred.dtype):
        # anything else (other dtype or layout, misaligned, byte-swapped) is copied
        array = as_array("sample_weight", sample_weight)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight: expected a real-valued array, "
                            f"got dtype {array.dtype}")
        sample_weight = as_kernel_array(array, pred.dtype)
    if terms_shape is not None:
        if sample_weight.shape == terms_shape:
            return sample_weight.reshape(-1), 1
        if len(terms_shape) and sample_weight.shape == terms_shape[:1]:
            n = terms_shape[0]
            return np.repeat(sample_weight, math.prod(terms_shape) // n if n else 0), 1
        raise ValueError(f"sample_weight: expected shape {terms_shape} (one weight per term) "
                         f"or ({terms_shape[0]},) (one per sample) for y_pred with shape "
                         f"{pred.shape}, got shape {sample_weight.shape}")
    n = pred.shape[0]
    if sample_weight.shape != (n,):
        raise ValueError(f"sample_weight: expected shape ({n},), one weight per sample of "
                         f"y_pred with shape {pred.shape}, got shape {sample_weight.shape}")
    return sample_weight, (pred.size // n if n else 1)


def prepare_out(out, pred, grad_dtype):
    """The gradient buffer: ``out`` checked, or a new array.

    Returns (buffer the kernel writes, array handed back to the caller); they differ when
    the kernel cannot write ``out`` itself: a gradient dtype that is not a kernel dtype
    (float16 input), or an ``out`` that is not aligned.  The kernel then writes a new
    aligned buffer, copied into ``out`` once it succeeded (``finish_grad``).
    """
    if out is None:
        buffer = np.empty(pred.shape, dtype=pred.dtype)
        return buffer, (buffer if grad_dtype == pred.dtype else None)
    if grad_dtype is pred.dtype and kernels.matches(out, pred, True):
        return out, out
    if type(out) is not np.ndarray:
        if isinstance(out, np.ma.MaskedArray):
            raise TypeError(_masked_message("out"))
        if not isinstance(out, np.ndarray):
            raise TypeError(_out_type_message(out))
    if out.shape != pred.shape:
        raise ValueError(f"out: shape {out.shape} does not match y_pred shape {pred.shape}")
    if out.dtype != grad_dtype:
        raise ValueError(f"out: dtype {out.dtype} does not match the gradient dtype "
                         f"{grad_dtype} of y_pred")
    if not out.flags.c_contiguous:
        raise ValueError("out: must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out: is read-only")
    if grad_dtype != pred.dtype or not out.flags.aligned:
        return np.empty(pred.shape, dtype=pred.dtype), out
    return out, out


def check_no_overlap(out, *inputs):
    """``out`` must not share memory with an input: the kernels read the inputs while
    they write the gradient, and inputs are never modified.

    Each input is a tuple (name, the caller's argument, the array the kernel reads).  For
    an ndarray argument that array is the argument or a copy of it; for anything else
    (a torch tensor, a memmap, a buffer) it may be a view of the argument's memory, so
    it is checked too.
    """
    for name, given, used in inputs:
        if given is None:
            continue
        arrays = (given,)
        if type(given) is not np.ndarray:
            arrays = (used,)
            if isinstance(given, np.ndarray):
                arrays = (given, used)
            elif is_torch_tensor(given):
                try:
                    arrays = (np.asarray(given), used)  # a view of the tensor's memory
                except Exception:
                    pass
        for array in arrays:
            if np.may_share_memory(out, array):
                raise ValueError(f"out: shares memory with {name}; pass a separate array")


def finish_grad(buffer, result, grad_dtype):
    """Hand the gradient back in the caller's dtype and array: ``buffer`` copied into
    ``result`` (``out``) when they differ, or cast to a new float16 array."""
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


def check_finite(name, value):
    """A finite real number (as a float)."""
    value = check_real(name, value)
    if not np.isfinite(value):
        raise InvalidParameterError(f"{name} must be finite, got {value!r}")
    return value


def check_nonnegative(name, value):
    """A finite real number >= 0 (as a float)."""
    value = check_real(name, value)
    if not (value >= 0 and np.isfinite(value)):
        raise InvalidParameterError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_fraction(name, value):
    """A real number in [0, 1]."""
    value = check_real(name, value)
    if not 0.0 <= value <= 1.0:
        raise InvalidParameterError(f"{name} must be in [0, 1], got {value!r}")
    return value


def check_axis(name, value):
    """None, an int or a non-empty sequence of distinct ints: as None or a tuple of ints."""
    if value is None:
        return None
    items = (value,) if _is_int(value) else value
    if not isinstance(items, (tuple, list)) or not items or not all(map(_is_int, items)):
        raise InvalidParameterError(
            f"{name} must be None, an int or a non-empty tuple of ints, got {value!r}")
    axes = tuple(int(item) for item in items)
    if len(set(axes)) != len(axes):
        raise InvalidParameterError(f"{name} must not repeat an axis, got {value!r}")
    return axes


def _is_int(value):
    """An integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


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
