"""The ratio losses (Dice, Tversky): one ratio of sums per group of elements, kernels in
``_ratio.pxi``.

``axis`` says which axes a ratio sums over: None, every axis (one value for the whole
input, as Keras); otherwise one value per index of the other axes ("none" gives them in
an array of those axes' shape).
"""
import numpy as np

from . import _threads
from . import _validation as v
from ._base import Loss, plain_ints
from ._dispatch import kernels

NAN = float("nan")

# The kernel table is defined once, in the kernels (_ratio.pxi); these are its Python names.
Kernel = plain_ints(kernels.RatioKernel)


def split_axes(axis, shape):
    """(kept axes, order) for an array of ``shape``: the kept axes (those not in
    ``axis``; none for None) ascending, and the transposition that brings the reduced
    axes last, or None when they are last already."""
    ndim = len(shape)
    if axis is None:
        return (), None
    reduced = set()
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"y_pred: axis {a} is out of range for y_pred with shape "
                             f"{shape} ({ndim} dimensions)")
        if a % ndim in reduced:
            raise ValueError(f"y_pred: axis={axis} names dimension {a % ndim} twice for "
                             f"y_pred with shape {shape}")
        reduced.add(a % ndim)
    kept = tuple(a for a in range(ndim) if a not in reduced)
    order = kept + tuple(sorted(reduced))
    return kept, (None if order == tuple(range(ndim)) else order)


class RatioLoss(Loss):
    """A loss whose value is a ratio of sums over groups of elements of ``y_pred`` and
    ``y_true`` (same shape).

    ``axis`` names the axes a ratio sums over (None: all).  The loss has one value per
    index of the other (kept) axes; ``"mean"`` divides their (weighted) sum by their
    count and ``"none"`` returns them, shaped like the kept axes (a 0-d array for
    ``axis=None``).  ``sample_weight`` of shape (N,) multiplies the values of sample n
    (index n of axis 0), so axis 0 must be kept.
    """

    _kernel_id = None
    #: work of one element relative to a squared error: the sums, then the gradient
    _cost = 2
    #: Tversky's coefficients (unused by Dice)
    _alpha = _beta = 0.5

    def __init__(self, axis=None, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.axis = v.check_axis("axis", axis)
        self._splits = {}     # ndim -> split_axes, which every call needs

    def get_params(self):
        return {"axis": self.axis, **super().get_params()}

    def _ready(self, y_pred, y_true, out):
        return kernels.is_ready_pair(y_pred, y_true, out)

    def _split(self, pred):
        split = self._splits.get(pred.ndim)
        if split is None:
            split = self._splits[pred.ndim] = split_axes(self.axis, pred.shape)
        return split

    def _values_shape(self, pred):
        return tuple(pred.shape[a] for a in self._split(pred)[0])

    def _run(self, pred, target, weight, weight_block, grad, values, want_value):
        kept, order = self._split(pred)
        shape = pred.shape
        n_groups = 1
        for a in kept:    # (math.prod of a generator costs ~0.8 us a call)
            n_groups *= shape[a]
        groups_per_weight = 1
        if weight is not None:
            if not kept or kept[0] != 0:
                raise ValueError(self._unweighable(pred))
            groups_per_weight = n_groups // shape[0] if shape[0] else 1
        p, t, g = pred, target, grad
        if order is not None:
            # the kernel reads each ratio's elements consecutively: the reduced axes are
            # brought last in copies, and the gradient is transposed back
            p = np.ascontiguousarray(pred.transpose(order))
            t = np.ascontiguousarray(target.transpose(order))
            g = None if grad is None else np.empty(p.shape, p.dtype)
        mean = self.reduction == "mean"
        total, flags = kernels.ratio(
            self._kernel_id, self._alpha, self._beta, p, t, g, values, weight, n_groups,
            groups_per_weight, (1.0 / n_groups if n_groups else NAN) if mean else 1.0,
            _threads.threads_for(pred.size * self._cost), self._cost)
        if flags:
            self._raise_for_flags(flags, pred, target)
        if g is not grad:
            np.copyto(grad, g.transpose(np.argsort(order)))
        if mean:
            return total / n_groups if n_groups else NAN
        return total

    def _unweighable(self, pred):
        """The error of a sample_weight given while axis 0 is summed over."""
        what = "all of y_pred" if self.axis is None else "axis 0 of y_pred"
        if pred.ndim < 2:
            fix = "a 1-D y_pred has no axis to sum over per sample"
        else:
            fix = f"give an axis that keeps axis 0, e.g. axis={tuple(range(1, pred.ndim))}"
        return (f"sample_weight: {self.name} with axis={self.axis} sums over {what} "
                f"(shape {pred.shape}), so its values are not per sample; {fix}")


class Dice(RatioLoss):
    """Dice loss: ``1 - 2 sum(t p) / (sum(t) + sum(p) + 1e-7)``, the sums over ``axis``.

    Matches Keras ``dice`` (Keras 3, its epsilon 1e-7 in the denominator): one value for
    the whole input with ``axis=None``, one per sample with ``axis=(1, ..., ndim - 1)``.
    With S the denominator and I = sum(t p), the gradient is
    ``d/dp_i = -2 (t_i S - I) / S^2``.  As in Keras, neither ``y_pred`` nor ``y_true``
    is range-checked: any reals are used as they are (the loss is meant for
    probabilities and targets in [0, 1]).

    Parameters
    ----------
    axis : None, int or tuple of ints, default None
        The axes each ratio sums over (negative ones count from the end): None for all
        of them.  The other axes index the values of the loss.  ``sample_weight``
        needs axis 0 kept.  Axes other than the trailing ones cost a copy of the
        inputs (the kernel reads each ratio's elements consecutively).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the values by their count; "none" returns
        them in an array of the kept axes' shape (0-d for ``axis=None``).
    """

    name = "dice"
    _kernel_id = Kernel.DICE


class Tversky(RatioLoss):
    """Tversky loss: ``1 - I / (I + alpha FP + beta FN + 1e-7)``, the sums over ``axis``.

    ``I = sum(t p)``, ``FP = sum((1 - t) p)``, ``FN = sum(t (1 - p))``: Keras
    ``tversky`` (Keras 3).  ``alpha = beta = 0.5`` is Dice's ratio with half its
    epsilon.  With S the denominator, ``dS/dp_i = t_i + alpha (1 - t_i) - beta t_i``
    and ``d/dp_i = -(t_i S - I dS/dp_i) / S^2``.  Inputs are not range-checked (as
    Keras).

    Parameters
    ----------
    alpha : float >= 0, default 0.5
        The weight of the false positives; finite.
    beta : float >= 0, default 0.5
        The weight of the false negatives; finite.
    axis : None, int or tuple of ints, default None
        As for :class:`Dice`.
    reduction : {"mean", "sum", "none"}, default "mean"
        As for :class:`Dice`.
    """

    name = "tversky"
    _kernel_id = Kernel.TVERSKY

    def __init__(self, alpha=0.5, beta=0.5, axis=None, *, reduction="mean"):
        super().__init__(axis=axis, reduction=reduction)
        self.alpha = self._alpha = v.check_nonnegative("alpha", alpha)
        self.beta = self._beta = v.check_nonnegative("beta", beta)

    def get_params(self):
        return {"alpha": self.alpha, "beta": self.beta, **super().get_params()}


RATIO_LOSSES = (Dice, Tversky)
