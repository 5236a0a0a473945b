"""The row losses of an (N, C) y_pred: kernels in ``_rows.pxi``.

Categorical and sparse categorical cross-entropy (torch ``cross_entropy`` from logits,
Keras from probabilities), KL divergence (torch ``kl_div``), the multi-class margin
loss (torch ``multi_margin_loss``) and the multilabel margin loss (torch
``multilabel_margin_loss``).  ``reduction="none"`` gives one value per row.
"""
import math
import numbers

import numpy as np

from . import _threads
from . import _validation as v
from ._base import Flag, Loss, plain_ints
from ._dispatch import kernels
from ._pointwise import _first_bad, raise_for_probability_flags

# The kernel table and the flag bits are defined once, in the kernels (_rows.pxi,
# _kernels.pxi); these are their Python names.
Kernel = plain_ints(kernels.RowKernel)
#: what y_true holds (kernels.is_ready_rows)
Targets = plain_ints(kernels.RowTargets)

INT64_MIN, INT64_MAX = v.INT64_MIN, v.INT64_MAX


class RowLoss(Loss):
    """A loss with one term per row of an (N, C) ``y_pred`` (C >= 1 classes).

    ``sample_weight`` of shape (N,) multiplies each row's term; ``"mean"`` divides by N
    (sparse cross-entropy: see :class:`SparseCategoricalCrossEntropy`).

    The cross-entropies also take scores with the classes on any ``axis``: one term per
    position, the other axes (see :class:`CategoricalCrossEntropy`).
    """

    per_row = True
    _kernel_id = None
    #: what y_true holds (a Targets value): (N, C) floats like y_pred, (N,) integer
    #: labels, or an (N, C) matrix of class indices
    _labels = Targets.SCORES_LIKE_PRED
    #: per-class weights {dtype: array}, or None
    _class_weights = None
    #: the constructor parameter that gives them
    _class_weight_name = "class_weight"
    #: the class axis of y_pred of a loss that takes ``axis``; None: (N, C) scores only
    _axis = None
    #: whether 2-D scores have their classes on axis 1 (the rows of the fast path)
    _rows_ready = True
    #: the kernel has a loop for class-strided (outer, C, S) scores; without it they are
    #: copied with the classes last and the gradient copied back
    _strided = False

    @property
    def class_weight(self):
        """The per-class weights (float64, read-only), or None."""
        return None if self._class_weights is None else self._class_weights[v.FLOAT64]
    #: relative cost of one element (an exp or a log each), which sets the size at which
    #: threads start to pay off
    _cost = 8

    def _class_axis(self, ndim):
        """The class axis (>= 0) of a y_pred with ``ndim`` dimensions."""
        axis = -1 if self._axis is None else self._axis
        return axis + ndim if axis < 0 else axis

    def _prepare_target(self, y_true, pred):
        if self._axis is None:
            if pred.ndim != 2 or pred.shape[1] == 0:
                what = "a 2-D array" if pred.ndim != 2 else "at least one class (C >= 1)"
                raise ValueError(f"y_pred: {self.name} expects scores of shape (N, C) with "
                                 f"{what}, got y_pred shape {pred.shape} (y_true shape "
                                 f"{v.shape_of(y_true)})")
        elif pred.ndim < 2 or not -pred.ndim <= self._axis < pred.ndim \
                or pred.shape[self._axis] == 0:
            what = ("at least 2 dimensions" if pred.ndim < 2 else
                    f"an axis {self._axis}" if not -pred.ndim <= self._axis < pred.ndim
                    else f"at least one class (C >= 1) on axis {self._axis}")
            raise ValueError(f"y_pred: {self.name} expects scores of shape (N, C), or of "
                             f"more dimensions with the classes on axis={self._axis}, with "
                             f"{what}, got y_pred shape {pred.shape} (y_true shape "
                             f"{v.shape_of(y_true)})")
        return self._prepare_row_target(y_true, pred)

    def _prepare_row_target(self, y_true, pred):
        return v.prepare_target(y_true, pred)

    def _ready(self, y_pred, y_true, out):
        return self._rows_ready and kernels.is_ready_rows(y_pred, y_true, out, self._labels)

    def _values_shape(self, pred):
        axis = self._class_axis(pred.ndim)
        return pred.shape[:axis] + pred.shape[axis + 1:]

    def _is_rows(self, pred):
        """``pred`` is (N, C) rows as it is (the classes on axis 1 of a 2-D array)."""
        return pred.ndim == 2 and self._rows_ready

    def _prepare_sample_weight(self, sample_weight, pred):
        if self._is_rows(pred):
            return v.prepare_sample_weight(sample_weight, pred)
        return v.prepare_sample_weight(sample_weight, pred, self._values_shape(pred))

    def _kernel_arrays(self, pred, target, grad, values):
        """``pred``, a ``target`` of its shape (or None), ``grad`` and ``values`` as the
        kernel reads them, and the buffer to copy the gradient from afterwards (None when
        the kernel writes ``grad`` itself).

        Scores with their classes last are (N, C) rows (a view); with C classes on another
        axis they are (outer, C, S), S the product of the axes after it (a view), read in
        place by a loss with a class-strided loop, else copied with the classes last.
        Values come flat, one per row or position.
        """
        if self._is_rows(pred):
            return pred, target, grad, values, None
        axis = self._class_axis(pred.ndim)
        n_classes = pred.shape[axis]
        outer, inner = math.prod(pred.shape[:axis]), math.prod(pred.shape[axis + 1:])
        if values is not None:
            values = values.reshape(-1)
        if inner == 1 or self._strided:
            view = (outer, n_classes) if inner == 1 else (outer, n_classes, inner)
            return (pred.reshape(view), None if target is None else target.reshape(view),
                    None if grad is None else grad.reshape(view), values, None)

        def as_rows(array):
            return np.ascontiguousarray(
                array.reshape(outer, n_classes, inner).transpose(0, 2, 1)
            ).reshape(-1, n_classes)

        buffer = None if grad is None else np.empty((outer * inner, n_classes), pred.dtype)
        return (as_rows(pred), None if target is None else as_rows(target), buffer, values,
                buffer)

    def _finish_grad(self, grad, buffer):
        """Copy the gradient rows of ``buffer`` (see _kernel_arrays) into ``grad``."""
        if buffer is not None:
            axis = self._class_axis(grad.ndim)
            n_classes = grad.shape[axis]
            outer = math.prod(grad.shape[:axis])
            grad.reshape(outer, n_classes, -1)[...] = \
                buffer.reshape(outer, -1, n_classes).transpose(0, 2, 1)

    def _class_weight(self, pred):
        """The class weights in pred's dtype, checked against C, or None."""
        weights = self._class_weights
        if weights is None:
            return None
        weights = weights[pred.dtype]
        n_classes = pred.shape[self._class_axis(pred.ndim)]
        if weights.size != n_classes:
            raise ValueError(f"{self._class_weight_name}: {weights.size} weights for y_pred with "
                             f"{n_classes} classes (shape {pred.shape})")
        return weights

    def _n_threads(self, pred):
        return _threads.threads_for(pred.size * self._cost)

    def _raise_for_input_flags(self, flags, pred, target):
        raise_for_probability_flags(flags, pred, target)
        if flags & Flag.TARGET_NOT_LOG_PROBABILITY:
            raise ValueError(f"y_true: log_target=True expects log-probabilities <= 0, got "
                             f"{_first_bad(target, target > 0)}")
        super()._raise_for_input_flags(flags, pred, target)


def _check_class_axis(axis):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise v.InvalidParameterError(f"axis must be an int (the class axis), got "
                                      f"{type(axis).__name__} {axis!r}")
    return int(axis)


def _n_terms(x):
    """The rows of kernel scores x: N of (N, C), outer * S of (outer, C, S)."""
    return x.shape[0] if x.ndim == 2 else x.shape[0] * x.shape[2]


def _check_z_loss(z_loss, from_logits):
    z_loss = v.check_nonnegative("z_loss", z_loss)
    if z_loss and not from_logits:
        raise v.InvalidParameterError("z_loss is only defined for logits: use "
                                      "from_logits=True")
    return z_loss


class _DenseRowLoss(RowLoss):
    """y_true of the shape of y_pred, (N, C) floats."""

    #: (label_smoothing, z_loss, log_target, gamma) for the kernel, set by the constructor
    _kernel_options = (0.0, 0.0, False, 0.0)

    def _run(self, pred, target, weight, weight_block, grad, values, want_value):
        # the per-call path, as _SparseRowLoss._run's
        if pred.ndim == 2 and self._rows_ready:
            x, t, g, buffer, n = pred, target, grad, None, len(pred)
        else:
            x, t, g, values, buffer = self._kernel_arrays(pred, target, grad, values)
            n = _n_terms(x)
        smoothing, z_loss, log_target, gamma = self._kernel_options
        mean = self.reduction == "mean"
        total, flags = kernels.dense_rows(
            self._kernel_id, x, t, self._class_weight(pred), g, values, weight, smoothing,
            z_loss, log_target, gamma, (1.0 / n if n else math.nan) if mean else 1.0,
            _threads.threads_for(pred.size * self._cost), self._cost)
        if flags:
            self._raise_for_flags(flags, pred, target)
        if buffer is not None:
            self._finish_grad(grad, buffer)
        if mean:
            return total / n if n else math.nan
        return total


class CategoricalCrossEntropy(_DenseRowLoss):
    """Categorical cross-entropy of (N, C) scores against (N, C) probability targets.

    Logits (``from_logits=True``): ``-sum_c w_c t'_c log_softmax(x)_c`` with the smoothed
    target ``t' = t (1 - ε) + ε / C``: ``torch.nn.functional.cross_entropy(x, t, weight=w,
    label_smoothing=ε)`` with probability targets, so ``"mean"`` divides by N even with
    class weights.  ``z_loss`` z adds ``z W logsumexp(x)^2`` per row, with W = sum_c w_c
    t_c / sum_c t_c the target-weighted mean class weight (1 without class weights, w_y
    for a one-hot row, so that it equals the sparse result; 0 for a row of zero targets).

    Probabilities (``from_logits=False``): Keras ``categorical_crossentropy``: each row is
    renormalised to sum 1 and clipped to [1e-7, 1 - 1e-7] before the log; the gradient
    goes through the renormalisation and is 0 where the clip is active.  Class weights
    and smoothing enter as above.  ``y_pred`` must lie in [0, 1].

    Targets must lie in [0, 1] (they need not sum to 1).  The gradient with respect to
    logits is ``(A + 2 z W lse) softmax(x) - w t'``, A = sum_c w_c t'_c.

    Scores of more dimensions hold their C classes on ``axis``, e.g. (N, d1, ..., dk, C)
    with the default ``axis=-1`` (Keras' layout) or (N, C, d1, ..., dk) with ``axis=1``
    (torch's: ``cross_entropy`` of spatial logits), and have one term per position (the
    index of the other axes); ``y_true`` has ``y_pred``'s shape, ``"mean"`` divides by
    the number of positions, ``"none"`` returns the terms in the shape of the other axes,
    ``sample_weight`` has that shape (or (N,): one weight per sample).  Logits with
    their classes on an inner axis are read in place, vectorised across the positions;
    probabilities there are copied once with the classes last.

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities).
    label_smoothing : float in [0, 1], default 0
        ε of the smoothed target ``t (1 - ε) + ε / C``.
    class_weight : array of C reals, optional
        Per-class weights w (torch's ``weight``); checked against C at each call.
    z_loss : float >= 0, default 0
        Coefficient of the ``logsumexp(x)^2`` term (logits only).
    axis : int, default -1
        The class axis of ``y_pred`` (Keras' ``axis``; 1 is torch's layout).
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,) (per position for more dimensions).
    """

    name = "categorical_cross_entropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, class_weight=None,
                 z_loss=0.0, *, axis=-1, reduction="mean"):
        super().__init__(reduction=reduction)
        self.axis = self._axis = _check_class_axis(axis)
        self._rows_ready = self._axis in (-1, 1)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.label_smoothing = v.check_fraction("label_smoothing", label_smoothing)
        self._class_weights = v.check_class_vector("class_weight", class_weight)
        self.z_loss = _check_z_loss(z_loss, self.from_logits)
        self._kernel_id = (Kernel.CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS if self.from_logits
                           else Kernel.CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES)
        self._strided = self.from_logits
        self._kernel_options = (self.label_smoothing, self.z_loss, False, 0.0)

    def get_params(self):
        return {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
                "class_weight": self.class_weight, "z_loss": self.z_loss, "axis": self.axis,
                **super().get_params()}


class KLDivergence(_DenseRowLoss):
    """Kullback-Leibler divergence KL(p || q) = sum_c p_c (log p_c - log q_c) per row.

    ``torch.nn.functional.kl_div(log q, p)`` summed over each row: ``"mean"`` is torch's
    ``reduction="batchmean"`` (the sum divided by N), ``"sum"`` the sum, ``"none"`` the
    per-row sums.  ``0 log 0 = 0``.

    ``y_pred`` are logits with ``from_logits=True`` (``log q = log_softmax(y_pred)``,
    gradient ``P softmax(y_pred) - p`` with P = sum_c p_c), else probabilities q in
    [0, 1], used as given (not renormalised), with ``log q`` floored at -100 as torch's
    ``binary_cross_entropy`` floors its logs, so q = 0 gives a finite value; the gradient
    ``-p / q`` is 0 where the floor is active.  ``y_true`` holds p in [0, 1], or log p
    (<= 0) with ``log_target=True`` (torch's ``log_target``).

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities q).
    log_target : bool, default False
        Whether ``y_true`` holds log p (else p).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" is torch's "batchmean"; "none" returns one value per row, shape (N,).
    """

    name = "kl_divergence"

    def __init__(self, from_logits=False, log_target=False, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.log_target = v.check_bool("log_target", log_target)
        self._kernel_id = (Kernel.KL_DIVERGENCE_FROM_LOGITS if self.from_logits
                           else Kernel.KL_DIVERGENCE_FROM_PROBABILITIES)
        self._kernel_options = (0.0, 0.0, self.log_target, 0.0)

    def get_params(self):
        return {"from_logits": self.from_logits, "log_target": self.log_target,
                **super().get_params()}


class CategoricalFocalCrossEntropy(_DenseRowLoss):
    """Categorical focal cross-entropy (Lin et al.) of (N, C) scores against (N, C)
    probability targets: Keras ``categorical_focal_crossentropy``.

    Per row ``sum_c α_c t'_c (1 - q_c)^gamma (-log q_c)``, with the smoothed target
    ``t' = t (1 - ε) + ε / C`` and ``q`` the row's probabilities renormalised to sum 1
    (``softmax(y_pred)`` with ``from_logits=True``) and clipped to [1e-7, 1 - 1e-7], as
    :class:`CategoricalCrossEntropy` from probabilities (the clip passes no gradient:
    from logits, a class whose softmax is below 1e-7 contributes a capped term and no
    gradient, as in Keras).  The gradient is the exact derivative of this formula,
    through the renormalisation (or the softmax).  ``gamma=0, alpha=1`` is the
    categorical cross-entropy.  Targets must lie in [0, 1]; ``y_pred`` too when it
    holds probabilities.

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities).
    gamma : float >= 0, default 2
        The focusing exponent.
    alpha : float or array of C reals, default 0.25
        The weight of every class, or one per class (checked against C at each call).
    label_smoothing : float in [0, 1], default 0
        ε above.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "categorical_focal_cross_entropy"
    _cost = 12
    _class_weight_name = "alpha"

    def __init__(self, from_logits=False, gamma=2.0, alpha=0.25, label_smoothing=0.0, *,
                 reduction="mean"):
        super().__init__(reduction=reduction)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.gamma = v.check_nonnegative("gamma", gamma)
        self._alpha_rows = {}
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, (bool, np.bool_)):
            self._alpha = v.check_finite("alpha", alpha)
        else:
            self._alpha = 1.0
            self._class_weights = v.check_class_vector("alpha", alpha)
        self.label_smoothing = v.check_fraction("label_smoothing", label_smoothing)
        self._kernel_id = (Kernel.CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_LOGITS
                           if self.from_logits
                           else Kernel.CATEGORICAL_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES)
        self._kernel_options = (self.label_smoothing, 0.0, False, self.gamma)

    @property
    def alpha(self):
        """The class weight: a float, or the per-class weights (float64, read-only)."""
        return self._alpha if self._class_weights is None else self.class_weight

    def get_params(self):
        return {"from_logits": self.from_logits, "gamma": self.gamma, "alpha": self.alpha,
                "label_smoothing": self.label_smoothing, **super().get_params()}

    def _class_weight(self, pred):
        if self._class_weights is not None:
            return super()._class_weight(pred)
        # a scalar alpha goes to the kernel as C equal weights (one vectorised loop for
        # both forms), made once per class count and dtype
        key = pred.dtype, pred.shape[1]
        weights = self._alpha_rows.get(key)
        if weights is None:
            weights = np.full(pred.shape[1], self._alpha, dtype=pred.dtype)
            weights.flags.writeable = False
            self._alpha_rows[key] = weights
        return weights


class CategoricalHinge(_DenseRowLoss):
    """Categorical hinge loss of (N, C) scores and (N, C) one-hot targets: Keras
    ``categorical_hinge``, per row ``max(0, 1 + max_c (1 - t_c) x_c - sum_c t_c x_c)``.

    Targets are used as given (Keras expects one-hot rows, or rows of -1 and 1; nothing
    is checked).  The gradient is the formula's under autograd: the inner max shares its
    gradient equally among tied classes, the outer max passes half of it at 0.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "categorical_hinge"
    _kernel_id = Kernel.CATEGORICAL_HINGE
    _cost = 1


class CosineSimilarity(_DenseRowLoss):
    """Negative cosine similarity of each row of (N, C) predictions and targets: Keras
    ``cosine_similarity``, ``-sum_c x_c t_c / (max(|x|, 1e-7) max(|t|, 1e-7))``.

    The value lies in [-1, 1] (-1: same direction); a zero row gives 0.  Gradient
    ``-t / (|x| |t|) - loss x / |x|^2``, without the second term where ``|x|`` is
    below Keras' epsilon 1e-7 (clamped).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "cosine_similarity"
    _kernel_id = Kernel.COSINE_SIMILARITY
    _cost = 1


class MultilabelSoftMargin(_DenseRowLoss):
    """Multi-label soft-margin loss of (N, C) logits and (N, C) targets:
    ``torch.nn.functional.multilabel_soft_margin_loss``, per row the mean over the C
    classes of ``w_c (t_c softplus(-x_c) + (1 - t_c) softplus(x_c))`` (a binary
    cross-entropy with logits per class), gradient ``w_c (sigmoid(x_c) - t_c) / C``.

    Targets are used as given (1 for the labels of the row, 0 elsewhere; soft targets
    work as in torch, which checks nothing).  Finite for every finite logit.

    Parameters
    ----------
    class_weight : array of C reals, optional
        Per-class weights w (torch's ``weight``); checked against C at each call.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "multilabel_soft_margin"
    _cost = 5

    def __init__(self, class_weight=None, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self._class_weights = v.check_class_vector("class_weight", class_weight)
        self._kernel_id = Kernel.MULTILABEL_SOFT_MARGIN

    def get_params(self):
        return {"class_weight": self.class_weight, **super().get_params()}


class _SparseRowLoss(RowLoss):
    """y_true of shape (N,): int32/int64 class labels."""

    _ignore_index = None
    _weighted_mean = False
    _labels = Targets.CLASS_LABELS

    def _prepare_row_target(self, y_true, pred):
        if self._is_rows(pred):
            return v.prepare_labels(y_true, pred.shape[0], pred.shape[1],
                                    self._ignore_index)
        shape = self._values_shape(pred)
        return v.prepare_labels(y_true, math.prod(shape), pred.shape[self._class_axis(
            pred.ndim)], self._ignore_index, shape)

    #: (label_smoothing, z_loss, margin, p) for the kernel, set by the constructor
    _kernel_options = (0.0, 0.0, 0.0, 1)

    def _run(self, pred, labels, weight, weight_block, grad, values, want_value):
        # the per-call path: (N, C) rows go to the kernel as they are, through no call
        # but the kernel's and threads_for (a call on a small batch is mostly this path)
        if pred.ndim == 2 and self._rows_ready:
            x, g, buffer, n = pred, grad, None, len(pred)
        else:
            x, _, g, values, buffer = self._kernel_arrays(pred, None, grad, values)
            n = _n_terms(x)
        smoothing, z_loss, margin, power = self._kernel_options
        mean = self.reduction == "mean"
        weighted_mean = self._weighted_mean and mean
        total, flags, denominator, bad_row = kernels.sparse_rows(
            self._kernel_id, x, labels,
            None if self._class_weights is None else self._class_weight(pred), g, values,
            weight, smoothing, z_loss, self._ignore_index, margin, power, weighted_mean,
            (1.0 / n if n else math.nan) if mean else 1.0,
            _threads.threads_for(pred.size * self._cost), self._cost)
        if flags:
            if flags & Flag.LABEL_OUT_OF_RANGE:
                raise v.label_out_of_range(
                    labels[bad_row].item(), bad_row, x.shape[1], self._ignore_index,
                    None if self._is_rows(pred) else self._values_shape(pred))
            self._raise_for_flags(flags, pred, labels)
        if buffer is not None:
            self._finish_grad(grad, buffer)
        if weighted_mean:
            return total / denominator if denominator else math.nan
        if mean:
            return total / n if n else math.nan
        return total


def _check_ignore_index(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise v.InvalidParameterError(f"ignore_index must be an int, got "
                                      f"{type(value).__name__} {value!r}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise v.InvalidParameterError(f"ignore_index must fit in int64, got {value!r}")
    return value


class SparseCategoricalCrossEntropy(_SparseRowLoss):
    """Categorical cross-entropy of (N, C) scores against (N,) integer class labels.

    Logits (``from_logits=True``): exactly ``torch.nn.functional.cross_entropy(x, y,
    weight=w, ignore_index=ignore_index, label_smoothing=ε)``: per row
    ``(1 - ε) w_y (-log p_y) + ε / C sum_c w_c (-log p_c)`` with p = softmax(x).
    ``z_loss`` z adds ``z w_y logsumexp(x)^2`` per row.

    Probabilities (``from_logits=False``): the Keras formula of
    :class:`CategoricalCrossEntropy` with the one-hot target of each label (rows
    renormalised, clipped to [1e-7, 1 - 1e-7]); smoothing and class weights as above.

    Rows labelled ``ignore_index`` add nothing anywhere (value 0, gradient 0).  ``"mean"``
    divides by the number of non-ignored rows, or by their summed class weights ``w_y``
    when ``class_weight`` is given (torch's weighted mean; nan when every row is
    ignored); ``sample_weight`` only scales each row's term.  Any other label outside
    [0, C) is a ValueError.

    Scores of more dimensions hold their C classes on ``axis``, e.g. (N, C, d1, ..., dk)
    with ``axis=1``, torch's layout (``cross_entropy`` of spatial logits, the same
    result), or (N, d1, ..., dk, C) with the default ``axis=-1`` (Keras'), against labels
    of the shape of the other axes, one per position: everything above holds per
    position (a label out of range is named by its position), ``"none"`` returns that
    shape, ``sample_weight`` has it (or (N,): one weight per sample).  Logits with their
    classes on an inner axis are read in place, vectorised across the positions;
    probabilities there are copied once with the classes last.

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities).
    label_smoothing : float in [0, 1], default 0
        ε above (torch's ``label_smoothing``).
    class_weight : array of C reals, optional
        Per-class weights w (torch's ``weight``); checked against C at each call.
    ignore_index : int, default -100
        Label of the rows to skip.
    z_loss : float >= 0, default 0
        Coefficient of the ``logsumexp(x)^2`` term (logits only).
    axis : int, default -1
        The class axis of ``y_pred`` (Keras' ``axis``; 1 is torch's layout).
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,) (per position for more dimensions).
    """

    name = "sparse_categorical_cross_entropy"
    _weighted_mean = True

    def __init__(self, from_logits=False, label_smoothing=0.0, class_weight=None,
                 ignore_index=-100, z_loss=0.0, *, axis=-1, reduction="mean"):
        super().__init__(reduction=reduction)
        self.axis = self._axis = _check_class_axis(axis)
        self._rows_ready = self._axis in (-1, 1)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.label_smoothing = v.check_fraction("label_smoothing", label_smoothing)
        self._class_weights = v.check_class_vector("class_weight", class_weight)
        self.ignore_index = self._ignore_index = _check_ignore_index(ignore_index)
        self.z_loss = _check_z_loss(z_loss, self.from_logits)
        self._kernel_id = (Kernel.SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_LOGITS
                           if self.from_logits
                           else Kernel.SPARSE_CATEGORICAL_CROSS_ENTROPY_FROM_PROBABILITIES)
        self._strided = self.from_logits
        self._kernel_options = (self.label_smoothing, self.z_loss, 0.0, 1)

    def get_params(self):
        return {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
                "class_weight": self.class_weight, "ignore_index": self.ignore_index,
                "z_loss": self.z_loss, "axis": self.axis, **super().get_params()}


class MultiMargin(_SparseRowLoss):
    """Multi-class margin (Weston-Watkins hinge) loss of (N, C) scores and (N,) labels.

    ``torch.nn.functional.multi_margin_loss(x, y, p, margin, weight)``: per row
    ``w_y / C sum_{c != y} max(0, margin - x_y + x_c)^p``, p in {1, 2}; ``"mean"``
    divides by N.  As torch, a term counts only where ``margin - x_y + x_c > 0`` (a NaN
    score drops its term rather than propagating).  Labels must lie in [0, C).

    Parameters
    ----------
    margin : float, default 1
        The margin (any finite real).
    p : {1, 2}, default 1
        Power of each hinge term.
    class_weight : array of C reals, optional
        Per-class weights w (torch's ``weight``), applied by the row's label.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "multi_margin"
    _cost = 1

    def __init__(self, margin=1.0, p=1, class_weight=None, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.margin = v.check_finite("margin", margin)
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Integral) \
                or p not in (1, 2):
            raise v.InvalidParameterError(f"p must be 1 or 2, got {p!r}")
        self.p = int(p)
        self._class_weights = v.check_class_vector("class_weight", class_weight)
        self._kernel_id = Kernel.MULTI_MARGIN
        self._kernel_options = (0.0, 0.0, self.margin, self.p)

    def get_params(self):
        return {"margin": self.margin, "p": self.p, "class_weight": self.class_weight,
                **super().get_params()}


class MultilabelMargin(RowLoss):
    """Multilabel margin loss of (N, C) scores and an (N, C) matrix of class indices.

    ``torch.nn.functional.multilabel_margin_loss(x, y)``: row i's targets are the
    classes ``y[i, 0], y[i, 1], ...`` up to the first -1 (the entries after it are
    ignored; a row starting with -1 has no target), and its value is
    ``1 / C sum_{k} sum_{c not a target} max(0, 1 - x[y_k] + x[c])``, k running over
    those entries (a repeated target counts once per entry, as torch).  ``"mean"``
    divides by N.  As torch, a term counts only where ``1 - x[y_k] + x[c] > 0``: the
    gradient is 0 at 0, and a NaN score drops its term rather than propagating.

    ``y_true`` holds integers (int32 and int64 are used as they are, other integer dtypes
    are widened; floats and bools are a TypeError) in [-1, C), every entry, also those
    after the first -1, as torch checks them all.  The work of a row is O(targets x C).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per row, shape (N,).
    """

    name = "multilabel_margin"
    _labels = Targets.LABEL_MATRIX
    #: an element costs its check and copy, then one cheap pass per listed target: with
    #: the few targets of usual rows, about 4 squared errors (an estimate; a row of
    #: many targets costs more than this says)
    _cost = 4

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self._kernel_id = Kernel.MULTILABEL_MARGIN

    def _prepare_row_target(self, y_true, pred):
        return v.prepare_label_matrix(y_true, pred)

    def _run(self, pred, labels, weight, weight_block, grad, values, want_value):
        n = pred.shape[0]
        total, flags = kernels.label_matrix_rows(
            self._kernel_id, pred, labels, grad, values, weight, self._mean_scale(n),
            self._n_threads(pred), self._cost)
        if flags:
            self._raise_for_flags(flags, pred, labels)
        return self._reduce(total, n)

    def _raise_for_input_flags(self, flags, pred, target):
        if flags & Flag.LABEL_OUT_OF_RANGE:
            raise v.class_index_out_of_range(target, pred.shape[1])
        super()._raise_for_input_flags(flags, pred, target)


ROW_LOSSES = (CategoricalCrossEntropy, SparseCategoricalCrossEntropy, KLDivergence,
              MultiMargin, CategoricalFocalCrossEntropy, CategoricalHinge, CosineSimilarity,
              MultilabelSoftMargin, MultilabelMargin)
