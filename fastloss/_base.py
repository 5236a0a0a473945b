"""The Loss base class: the public call protocol shared by every loss.

A loss validates its parameters once, in its constructor.  Each call then prepares the
arrays (cheap for C-contiguous float32/float64 input), runs one kernel pass that computes
the value, the gradient or both, and reduces.  Subclasses provide ``_run``.
"""
from types import SimpleNamespace

import numpy as np

from . import _validation as v
from ._dispatch import kernels

REDUCTIONS = ("mean", "sum", "none")


def plain_ints(enum):
    """The members of one of the kernels' enums (ids, flag bits) as plain ints: Python's
    enum arithmetic costs a few hundred nanoseconds, too much for the per-call path."""
    return SimpleNamespace(**{member.name: int(member) for member in enum})


#: the flag bits of the kernels (kernels.Flag), as plain ints
Flag = plain_ints(kernels.Flag)


class Loss:
    """Base class of the fastloss losses.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by their count, "sum" returns the
        sum, "none" returns the terms themselves (one per element for pointwise losses,
        one per row for row losses, one per ratio for ratio losses).
    """

    #: registry name, as used by :func:`fastloss.get`
    name = None
    #: "none" returns one value per row (shape (N,)) rather than one per element
    per_row = False


    def __init__(self, *, reduction="mean"):
        if reduction not in REDUCTIONS:
            raise v.InvalidParameterError(
                f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                f"got {reduction!r}")
        self.reduction = reduction

    # -- public protocol -------------------------------------------------------------
    def __call__(self, y_pred, y_true, sample_weight=None):
        """The loss value: a float, or an ndarray for ``reduction="none"``.

        Parameters
        ----------
        y_pred : array_like
            The predictions: any shape for a pointwise or ratio loss, (N, C) scores for
            a row loss (for the two cross-entropies also scores of more axes, the
            classes on their ``axis``).  float32 and float64 are computed in their own precision, float16 in
            float32, integers and booleans in float64.  Any layout (strided,
            byte-swapped, unaligned, nested lists) is accepted and copied once.
        y_true : array_like
            The targets: an array of ``y_pred``'s shape (converted to the dtype
            ``y_pred`` is computed in), or (N,) integer class labels for
            ``sparse_categorical_cross_entropy`` (one per position of scores of more
            axes: ``y_pred``'s shape without the class axis) and ``multi_margin``, or an (N, C)
            integer matrix of class indices (each row's targets, ended by -1) for
            ``multilabel_margin``.
        sample_weight : array_like of shape (N,), optional
            One weight per sample along the first axis of ``y_pred``, multiplying that
            sample's terms; ``"mean"`` still divides by the unweighted count.  (A ratio
            loss takes it only with axis 0 kept; a cross-entropy of scores of more axes
            also takes one weight per term, of the terms' shape.)

        Returns
        -------
        float or ndarray
            A Python float for ``"mean"`` and ``"sum"``.  For ``"none"`` a new ndarray
            of the (weighted) terms in the dtype ``y_pred`` is computed in: ``y_pred``'s
            shape for a pointwise loss, (N,) for a row loss (the positions' shape for
            a cross-entropy of scores of more axes), the shape of the axes not
            summed over for a ratio loss (0-d for ``axis=None``).

        Raises
        ------
        ValueError, TypeError
            For bad input; the message starts with the argument's name (``y_pred``,
            ``y_true``, ``sample_weight``) and names the offending value or shapes.
        """
        return self._evaluate(y_pred, y_true, sample_weight, True, False, None)[0]

    def grad(self, y_pred, y_true, sample_weight=None, out=None):
        """d(loss)/d(y_pred), shaped like ``y_pred`` (written into ``out`` if given).

        For ``reduction="none"`` it is the derivative of the sum of the terms.

        ``out``, if given, is a writeable C-contiguous ndarray of ``y_pred``'s shape and of
        the gradient's dtype (float16 for float16 ``y_pred``) that shares no memory with an
        input; the gradient is written into it and ``out`` itself is returned.  When the
        call raises, ``out`` is untouched if the error was found before the gradient pass
        (a wrong type, shape, dtype or layout, shared memory, a class label outside
        [0, C)); after a ValueError about a value found during the pass (a probability
        outside [0, 1], a hinge label, a log-target > 0, a class index of
        ``multilabel_margin`` outside [-1, C)), the contents of ``out`` are
        unspecified, as with NumPy's ufuncs.  The inputs are never modified.

        Parameters
        ----------
        y_pred, y_true, sample_weight
            As for :meth:`__call__`.
        out : ndarray, optional
            Receives the gradient: an ndarray of ``y_pred``'s shape and of the gradient's
            dtype, C-contiguous, writeable, sharing no memory with an input.  An
            unaligned ``out`` is filled through an aligned buffer (one copy).

        Returns
        -------
        ndarray
            The gradient, of ``y_pred``'s shape and of the dtype ``y_pred`` is computed
            in (float16 for float16 ``y_pred``): ``out`` itself when given, else a new
            array.

        Raises
        ------
        ValueError, TypeError
            As for :meth:`__call__`, and for a bad ``out`` (its message starts with
            ``out``).
        """
        return self._evaluate(y_pred, y_true, sample_weight, False, True, out)[1]

    def value_and_grad(self, y_pred, y_true, sample_weight=None, out=None):
        """``(value, grad)`` from one fused pass over the data.

        ``out`` as for :meth:`grad`: untouched when the call fails before the pass, its
        contents unspecified after a ValueError about a value found during the pass.

        Parameters
        ----------
        y_pred, y_true, sample_weight
            As for :meth:`__call__`.
        out : ndarray, optional
            As for :meth:`grad`.

        Returns
        -------
        value : float or ndarray
            What :meth:`__call__` returns.
        grad : ndarray
            What :meth:`grad` returns (``out`` itself when given).

        Raises
        ------
        ValueError, TypeError
            As for :meth:`grad`.
        """
        return self._evaluate(y_pred, y_true, sample_weight, True, True, out)

    def __repr__(self):
        params = ", ".join(f"{k}={val!r}" for k, val in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def get_params(self):
        """The constructor parameters, as a dict.

        Returns
        -------
        dict
            Every constructor parameter by name, ``reduction`` included, as normalised
            by the constructor (floats as float, per-class weights as read-only float64
            arrays); ``type(loss)(**loss.get_params())`` equals ``loss``.
        """
        return {"reduction": self.reduction}

    def __reduce__(self):
        # pickle and copy rebuild through the constructor, so every parameter is
        # validated again and per-class weights come back as the loss's own read-only
        # arrays (a copy of the internal state could be written to)
        return _rebuild, (type(self), self.get_params())

    def __eq__(self, other):
        return type(self) is type(other) and _params_equal(self.get_params(),
                                                           other.get_params())

    __hash__ = None

    # -- the shared call path --------------------------------------------------------
    def _evaluate(self, y_pred, y_true, sample_weight, want_value, want_grad, out):
        if sample_weight is None and self._ready(y_pred, y_true, out):
            # the common case, checked by one C call: arrays used as they are
            grad = None
            if want_grad:
                grad = np.empty_like(y_pred) if out is None else out
            values = None
            if want_value and self.reduction == "none":
                values = np.empty(self._values_shape(y_pred), dtype=y_pred.dtype)
            value = self._run(y_pred, y_true, None, 1, grad, values, want_value)
            return (value if values is None else values), grad
        pred, grad_dtype = v.prepare_pred(y_pred)
        target = self._prepare_target(y_true, pred)
        weight, weight_block = (None, 1) if sample_weight is None else \
            self._prepare_sample_weight(sample_weight, pred)
        grad = result = None
        if want_grad:
            grad, result = v.prepare_out(out, pred, grad_dtype)
            if out is not None:
                v.check_no_overlap(out, ("y_pred", y_pred, pred),
                                   ("y_true", y_true, target),
                                   ("sample_weight", sample_weight, weight))
        values = None
        if want_value and self.reduction == "none":
            values = np.empty(self._values_shape(pred), dtype=pred.dtype)
        # out (or its buffer) is written from here on; what can still raise: the check of
        # per-class weights against C (before the kernel), a label out of range (found by
        # the kernel before its pass) and the values the pass finds out of their domain
        value = self._run(pred, target, weight, weight_block, grad, values, want_value)
        if values is not None:
            value = values
        if result is not grad:  # float16 gradient, or an out the kernel could not write
            result = v.finish_grad(grad, result, grad_dtype)
        return value, result

    def _ready(self, y_pred, y_true, out):
        """Whether the arrays can go to the kernel as they are (no conversion, no check
        left to do): the fast path of a call."""
        return False

    def _prepare_target(self, y_true, pred):
        return v.prepare_target(y_true, pred)

    def _values_shape(self, pred):
        return pred.shape[:1] if self.per_row else pred.shape

    def _prepare_sample_weight(self, sample_weight, pred):
        """(weights in pred's dtype, elements per weight): see prepare_sample_weight."""
        return v.prepare_sample_weight(sample_weight, pred)

    def _run(self, pred, target, weight, weight_block, grad, values, want_value):
        """Run the kernel; return the reduced value (ignored for "none").

        ``grad`` and ``values`` are None when not wanted; without ``want_value`` a kernel
        may skip computing the value.
        """
        raise NotImplementedError

    def _raise_for_flags(self, flags, pred, target):
        """Raise the error that a kernel's nonzero ``flags`` report (some flags only
        inform, e.g. which label convention hinge labels follow, and raise nothing)."""
        if flags & Flag.UNKNOWN_KERNEL:
            raise RuntimeError(
                f"{self.name}: kernel {self._kernel_id!r} is unknown to "
                f"{kernels.__file__}: the compiled kernels do not belong to this fastloss "
                f"(reinstall it, or rebuild: python setup.py build_ext --inplace)")
        if flags & Flag.OUT_OF_MEMORY:
            raise MemoryError(f"{self.name}: could not allocate a scratch buffer")
        self._raise_for_input_flags(flags, pred, target)

    def _raise_for_input_flags(self, flags, pred, target):
        """Raise the ValueError of the input flags (bad labels or probabilities) of this
        loss; the kernel raised no other."""
        raise RuntimeError(f"{self.name}: unexpected kernel flags {flags}")

    def _mean_scale(self, count):
        """The factor turning a sum of ``count`` terms into this reduction."""
        if self.reduction == "mean":
            return 1.0 / count if count else float("nan")
        return 1.0

    def _reduce(self, total, count):
        if self.reduction == "mean":
            return total / count if count else float("nan")
        return total


def _rebuild(cls, params):
    """``cls(**params)``: how a pickled or copied loss is made again."""
    return cls(**params)


def _params_equal(a, b):
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if x is None or y is None or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True
