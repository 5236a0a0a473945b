"""The pointwise losses: one term per element, kernels in ``_pointwise.pxi``."""
import numpy as np

from . import _threads
from . import _validation as v
from ._base import Flag, Loss, plain_ints
from ._dispatch import kernels

NAN = float("nan")

# The kernel table and the flag bits are defined once, in the kernels (_pointwise.pxi,
# _kernels.pxi); these are their Python names.
Kernel = plain_ints(kernels.PointwiseKernel)


class PointwiseLoss(Loss):
    """A loss with one term l(p, t) per element of ``y_pred``.

    ``y_pred`` and ``y_true`` have the same shape (any rank); ``sample_weight`` of shape
    (N,) weights the rows along the first axis.  ``"mean"`` divides by the element count.
    """

    _kernel_id = None
    #: the kernel's parameters (kernels.pointwise_parameters), set by the constructor
    _kernel_parameters = kernels.pointwise_parameters()
    #: per-class positive weights {dtype: array} (binary cross-entropy from logits)
    _pos_weights = None
    #: time of one term relative to a squared error (measured, float32, AVX-512): the
    #: size at which threads start to pay off is PARALLEL_MIN_WORK / _cost elements
    _cost = 1
    #: flag bits that alone report no error (hinge: which label convention is used);
    #: all of them together do (hinge: the conventions mixed)
    _informational_flags = 0

    def _ready(self, y_pred, y_true, out):
        return kernels.is_ready_pair(y_pred, y_true, out)

    def _run(self, pred, target, weight, weight_block, grad, values, want_value):
        # the per-call path of every pointwise loss: kept to one kernel call and a few
        # attribute reads (small arrays are dominated by it)
        n = pred.size
        mean = self.reduction == "mean"
        total, flags = kernels.pointwise(
            self._kernel_id, self._kernel_parameters, pred, target, grad, values, weight,
            weight_block, None if self._pos_weights is None else self._pos_weight(pred),
            want_value, (1.0 / n if n else NAN) if mean else 1.0,
            _threads.threads_for(n * self._cost), self._cost)
        if flags and (flags & ~self._informational_flags
                      or flags == self._informational_flags):
            self._raise_for_flags(flags, pred, target)
        if mean:
            return total / n if n else NAN
        return total


def _first_index(bad):
    """The index (a tuple) of the first True of a boolean array."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def raise_for_probability_flags(flags, pred, target):
    """The ValueError of Flag.PRED/TARGET_NOT_PROBABILITY (shared by every loss that
    takes probabilities), naming the first offending value; nothing for other flags."""
    if flags & Flag.PRED_NOT_PROBABILITY:
        raise ValueError(f"y_pred: probabilities must be in [0, 1], got "
                         f"{_first_bad(pred, (pred < 0) | (pred > 1))}")
    if flags & Flag.TARGET_NOT_PROBABILITY:
        raise ValueError(f"y_true: targets must be probabilities in [0, 1], got "
                         f"{_first_bad(target, (target < 0) | (target > 1))}")


def _first_bad(array, bad):
    index = _first_index(bad)
    return f"{array[index].item()!r} at index {index}"


class MeanSquaredError(PointwiseLoss):
    """Mean squared error, ``(p - t)**2``.

    Matches ``torch.nn.functional.mse_loss``; gradient ``2 (p - t)``.  ``y_pred`` and
    ``y_true`` may be any reals.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "mse"
    _kernel_id = Kernel.MEAN_SQUARED_ERROR


class MeanAbsoluteError(PointwiseLoss):
    """Mean absolute error, ``|p - t|``.

    Matches ``torch.nn.functional.l1_loss``; gradient ``sign(p - t)`` (0 at 0).
    ``y_pred`` and ``y_true`` may be any reals.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "mae"
    _kernel_id = Kernel.MEAN_ABSOLUTE_ERROR


class MeanSquaredLogarithmicError(PointwiseLoss):
    """Mean squared logarithmic error, ``(log(max(p, 1e-7) + 1) - log(max(t, 1e-7) + 1))**2``.

    Matches Keras ``mean_squared_logarithmic_error`` (inputs clipped at its epsilon 1e-7,
    no gradient where ``p`` is clipped), averaged over all elements.  Gradient
    ``2 d / (p + 1)`` for ``p > 1e-7``, else 0, where d is the difference of the logs.
    ``y_pred`` and ``y_true`` may be any reals (values below 1e-7 are clipped).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "msle"
    _kernel_id = Kernel.MEAN_SQUARED_LOGARITHMIC_ERROR
    _cost = 6


class _DeltaLoss(PointwiseLoss):
    def __init__(self, delta=1.0, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.delta = v.check_positive("delta", delta)
        self._kernel_parameters = kernels.pointwise_parameters(delta=self.delta)

    def get_params(self):
        return {"delta": self.delta, **super().get_params()}


class Huber(_DeltaLoss):
    """Huber loss: ``0.5 d**2`` if ``|d| <= delta`` else ``delta (|d| - 0.5 delta)``, d = p - t.

    Matches ``torch.nn.functional.huber_loss(delta=delta)``.  ``delta`` > 0.  Gradient
    ``clip(d, -delta, delta)``.

    Parameters
    ----------
    delta : float > 0, default 1
        Where the quadratic part turns linear; a finite real number > 0.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "huber"
    _kernel_id = Kernel.HUBER


class PseudoHuber(_DeltaLoss):
    """Pseudo-Huber loss: ``delta**2 (sqrt(1 + (d / delta)**2) - 1)``, d = p - t.

    Smooth everywhere; gradient ``d / sqrt(1 + (d / delta)**2)``.  ``delta`` > 0.

    Parameters
    ----------
    delta : float > 0, default 1
        The scale of the transition from quadratic to linear; a finite real number > 0.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "pseudo_huber"
    _kernel_id = Kernel.PSEUDO_HUBER
    _cost = 2


class LogCosh(PointwiseLoss):
    """Log-cosh loss: ``log(cosh(p - t))``, computed as ``|d| + log1p(exp(-2|d|)) - log 2``.

    Finite for every finite input (the value of optax / Keras ``log_cosh``); gradient
    ``tanh(p - t)``.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "log_cosh"
    _kernel_id = Kernel.LOG_COSH
    _cost = 9


class Hinge(PointwiseLoss):
    """Hinge loss: ``max(1 - t p, 0)``, Keras ``hinge``, averaged over all elements.

    Labels are all in {-1, 1}, or all in {0, 1} (0 then means -1); other labels, or a mix
    of 0 and -1, raise ValueError.  Gradient ``-t`` where ``t p < 1``, else 0 (with
    ``t`` in {-1, 1}).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "hinge"
    _kernel_id = Kernel.HINGE
    _informational_flags = Flag.LABEL_ZERO | Flag.LABEL_MINUS_ONE

    def _raise_for_input_flags(self, flags, pred, target):
        # LABEL_ZERO or LABEL_MINUS_ONE alone only says which convention the labels
        # follow (_informational_flags); the error is a label outside {-1, 0, 1} or both
        # conventions mixed
        if flags & Flag.LABEL_NOT_BINARY:
            bad = (target != 1) & (target != 0) & (target != -1)
            raise ValueError(f"y_true: {self.name} labels must be in {{-1, 1}} or {{0, 1}}, "
                             f"got {_first_bad(target, bad)}")
        raise ValueError(f"y_true: {self.name} labels must be all in {{-1, 1}} or all in "
                         f"{{0, 1}}, got a mix of 0 (at index {_first_index(target == 0)}) "
                         f"and -1 (at index {_first_index(target == -1)})")


class SquaredHinge(Hinge):
    """Squared hinge loss: ``max(1 - t p, 0)**2``, Keras ``squared_hinge``.

    Labels as for :class:`Hinge`.  Gradient ``-2 t max(1 - t p, 0)`` (with ``t`` in
    {-1, 1}).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "squared_hinge"
    _kernel_id = Kernel.SQUARED_HINGE


class BinaryCrossEntropy(PointwiseLoss):
    """Binary cross-entropy, from probabilities or from logits.

    Probabilities (``from_logits=False``): ``-(t log p + (1 - t) log(1 - p))`` with each log
    clamped at -100, as ``torch.nn.functional.binary_cross_entropy`` (gradient
    ``(p - t) / max(p (1 - p), 1e-12)``); ``y_pred`` must lie in [0, 1].

    Logits (``from_logits=True``): ``(1 - t) x + (1 + (w - 1) t) softplus(-x)`` with
    ``w = pos_weight`` per class (the last axis), as
    ``torch.nn.functional.binary_cross_entropy_with_logits``; finite for every finite x.

    Targets lie in [0, 1]; ``label_smoothing`` ε replaces t by ``t (1 - ε) + ε / 2``.

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities in [0, 1]).
    pos_weight : array of reals, optional
        Weight of the positive term, one value or one per class (the last axis of
        ``y_pred``, checked at each call); finite.  Logits only (torch's
        ``pos_weight``).
    label_smoothing : float in [0, 1], default 0
        ε above.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "binary_cross_entropy"

    def __init__(self, from_logits=False, pos_weight=None, label_smoothing=0.0, *,
                 reduction="mean"):
        super().__init__(reduction=reduction)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.label_smoothing = v.check_fraction("label_smoothing", label_smoothing)
        self._kernel_parameters = kernels.pointwise_parameters(
            label_smoothing=self.label_smoothing)
        self._pos_weights = v.check_class_vector("pos_weight", pos_weight)
        if self._pos_weights is not None and not self.from_logits:
            raise v.InvalidParameterError(
                "pos_weight is only defined for logits: use from_logits=True "
                "(as torch's binary_cross_entropy_with_logits)")
        self._kernel_id = (Kernel.BINARY_CROSS_ENTROPY_FROM_LOGITS if self.from_logits
                           else Kernel.BINARY_CROSS_ENTROPY_FROM_PROBABILITIES)
        self._cost = 5 if self.from_logits else 6

    @property
    def pos_weight(self):
        return None if self._pos_weights is None else self._pos_weights[v.FLOAT64]

    def get_params(self):
        return {"from_logits": self.from_logits, "pos_weight": self.pos_weight,
                "label_smoothing": self.label_smoothing, **super().get_params()}

    def _pos_weight(self, pred):
        if self._pos_weights is None:
            return None
        pos_weight = self._pos_weights[pred.dtype]
        n_classes = pred.shape[-1] if pred.ndim else 1
        if pos_weight.size not in (1, n_classes):
            raise ValueError(f"pos_weight: {pos_weight.size} weights do not broadcast over "
                             f"the last axis of y_pred with shape {pred.shape}")
        return pos_weight

    def _raise_for_input_flags(self, flags, pred, target):
        raise_for_probability_flags(flags, pred, target)


class BinaryFocalCrossEntropy(PointwiseLoss):
    """Binary focal cross-entropy (Lin et al.): the binary cross-entropy of each element
    times ``(1 - p_t)^gamma``, down-weighting the elements already predicted well.

    Keras ``binary_focal_crossentropy``, elementwise: with the smoothed target
    ``t' = t (1 - ε) + ε / 2``, the probability ``p`` (``sigmoid(x)`` from logits) and
    ``p_t = t' p + (1 - t') (1 - p)``, each term is
    ``w (1 - p_t)^gamma bce(p, t')`` with ``w = α t' + (1 - α) (1 - t')`` when ``alpha``
    is given (class balancing), else 1.

    Probabilities (``from_logits=False``): ``bce = -(t' log p_c + (1 - t') log(1 - p_c))``
    with ``p_c`` = p clipped to [1e-7, 1 - 1e-7] (Keras' epsilon; the clip passes no
    gradient), and ``y_pred`` must lie in [0, 1].

    Logits (``from_logits=True``): ``bce`` is the cross-entropy of the logit itself,
    ``(1 - t') x + softplus(-x)`` (torch ``binary_cross_entropy_with_logits``), finite
    for every finite x.  With ``alpha=0.25`` this is torchvision's
    ``sigmoid_focal_loss`` (reduced afterwards).  Keras instead clips ``sigmoid(x)`` to
    [1e-7, 1 - 1e-7], which caps each term near 16.1 and differs from this only where
    ``|x| > ~16``.

    The gradient is the exact derivative of the above (through the focal factor too);
    the focal factor's derivative ``gamma (1 - p_t)^(gamma - 1)`` is infinite at
    ``p_t = 1`` for ``gamma < 1``, as in torch's autograd.

    Parameters
    ----------
    from_logits : bool, default False
        Whether ``y_pred`` holds logits (else probabilities in [0, 1]).
    gamma : float >= 0, default 2
        The focusing exponent (0 gives the plain binary cross-entropy).
    alpha : float in [0, 1], optional
        Weight of the positive class (``1 - alpha`` for the negative one); None (the
        default) turns class balancing off.  Keras' ``apply_class_balancing=True,
        alpha=a`` is ``alpha=a`` here.
    label_smoothing : float in [0, 1], default 0
        ε above.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "binary_focal_cross_entropy"

    def __init__(self, from_logits=False, gamma=2.0, alpha=None, label_smoothing=0.0, *,
                 reduction="mean"):
        super().__init__(reduction=reduction)
        self.from_logits = v.check_bool("from_logits", from_logits)
        self.gamma = v.check_nonnegative("gamma", gamma)
        self.alpha = None if alpha is None else v.check_fraction("alpha", alpha)
        self.label_smoothing = v.check_fraction("label_smoothing", label_smoothing)
        self._kernel_parameters = kernels.pointwise_parameters(
            label_smoothing=self.label_smoothing, gamma=self.gamma, alpha=self.alpha)
        self._kernel_id = (Kernel.BINARY_FOCAL_CROSS_ENTROPY_FROM_LOGITS if self.from_logits
                           else Kernel.BINARY_FOCAL_CROSS_ENTROPY_FROM_PROBABILITIES)
        self._cost = 6 if self.gamma in (0.0, 1.0, 2.0) else 10

    def get_params(self):
        return {"from_logits": self.from_logits, "gamma": self.gamma, "alpha": self.alpha,
                "label_smoothing": self.label_smoothing, **super().get_params()}

    def _raise_for_input_flags(self, flags, pred, target):
        raise_for_probability_flags(flags, pred, target)


class PointwiseKLDivergence(PointwiseLoss):
    """torch's ``kl_div(input, target)`` elementwise: ``xlogy(p, p) - p input`` with
    ``input`` = log q as given (not renormalised), or ``exp(t) (t - input)`` with
    ``log_target``; gradient ``-p``.

    The kernel behind ``fastloss.torch.kl_div``; not in the registry (the public
    ``kl_divergence`` is the row loss of :class:`KLDivergence`).

    Parameters
    ----------
    log_target : bool, default False
        Whether ``y_true`` holds log p (else p).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the (weighted) sum of the terms by the element count; "none"
        returns one value per element, of ``y_pred``'s shape.
    """

    name = "pointwise_kl_divergence"
    _cost = 4

    def __init__(self, log_target=False, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.log_target = v.check_bool("log_target", log_target)
        self._kernel_id = (Kernel.POINTWISE_KL_DIVERGENCE_LOG_TARGET if self.log_target
                           else Kernel.POINTWISE_KL_DIVERGENCE)

    def get_params(self):
        return {"log_target": self.log_target, **super().get_params()}


class Poisson(PointwiseLoss):
    """Poisson negative log-likelihood of counts ``t`` given a rate.

    ``log_input=True`` (``y_pred`` is the log rate x): ``exp(x) - t x``, gradient
    ``exp(x) - t``.  ``log_input=False`` (``y_pred`` is the rate r): ``r - t log(r +
    eps)``, gradient ``1 - t / (r + eps)``.  ``full=True`` adds Stirling's approximation
    of ``log(t!)``, ``t log t - t + log(2 pi t) / 2`` where ``t > 1`` (no gradient).

    Matches ``torch.nn.functional.poisson_nll_loss(log_input, full, eps)``; with
    ``log_input=False, eps=1e-7`` it equals Keras ``poisson`` (averaged over all
    elements).  As in both, neither the rates nor the counts are range-checked.

    Parameters
    ----------
    log_input : bool, default True
        Whether ``y_pred`` holds log rates (else rates).
    full : bool, default False
        Whether to add the Stirling term.
    eps : float >= 0, default 1e-8
        Added to the rate inside the log when ``log_input=False``.
    reduction : {"mean", "sum", "none"}, default "mean"
        "none" returns one value per element.
    """

    name = "poisson"
    _cost = 4

    def __init__(self, log_input=True, full=False, eps=1e-8, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.log_input = v.check_bool("log_input", log_input)
        self.full = v.check_bool("full", full)
        self.eps = v.check_nonnegative("eps", eps)
        self._kernel_parameters = kernels.pointwise_parameters(eps=self.eps, full=self.full)
        self._kernel_id = (Kernel.POISSON_FROM_LOG_RATE if self.log_input
                           else Kernel.POISSON_FROM_RATE)

    def get_params(self):
        return {"log_input": self.log_input, "full": self.full, "eps": self.eps,
                **super().get_params()}


class SoftMargin(PointwiseLoss):
    """Soft-margin loss of two-class scores: ``log(1 + exp(-t p))``, labels t = +-1.

    Matches ``torch.nn.functional.soft_margin_loss``; gradient ``-t sigmoid(-t p)``;
    finite for every finite score (a stable softplus), where torch's literal formula
    overflows to inf beyond ``-t p`` of ~88 (float32) or ~709 (float64).  As in torch,
    the labels are not checked: any real t is used as it is.

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" averages over all elements; "none" returns one value per element.
    """

    name = "soft_margin"
    _kernel_id = Kernel.SOFT_MARGIN
    _cost = 5


class HingeEmbedding(PointwiseLoss):
    """Hinge embedding loss: ``p`` where ``t = 1``, ``max(0, margin - p)`` where
    ``t = -1`` (p is typically a distance).

    Matches ``torch.nn.functional.hinge_embedding_loss(margin)`` exactly, including its
    treatment of other labels (both terms apply); gradient ``[t != -1] - [t != 1]
    [margin - p >= 0]``.

    Parameters
    ----------
    margin : float, default 1.0
        Any finite real.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" averages over all elements; "none" returns one value per element.
    """

    name = "hinge_embedding"
    _kernel_id = Kernel.HINGE_EMBEDDING

    def __init__(self, margin=1.0, *, reduction="mean"):
        super().__init__(reduction=reduction)
        self.margin = v.check_finite("margin", margin)
        self._kernel_parameters = kernels.pointwise_parameters(margin=self.margin)

    def get_params(self):
        return {"margin": self.margin, **super().get_params()}


class MeanAbsolutePercentageError(PointwiseLoss):
    """Mean absolute percentage error: ``100 |t - p| / max(|t|, 1e-7)``.

    Matches Keras ``mean_absolute_percentage_error`` (its epsilon 1e-7 in the
    denominator), averaged over all elements; gradient ``100 sign(p - t) / max(|t|,
    1e-7)`` (0 at p = t).

    Parameters
    ----------
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" averages over all elements; "none" returns one value per element.
    """

    name = "mape"
    _kernel_id = Kernel.MEAN_ABSOLUTE_PERCENTAGE_ERROR
    _cost = 2


POINTWISE_LOSSES = (MeanSquaredError, MeanAbsoluteError, MeanSquaredLogarithmicError, Huber,
                    PseudoHuber, LogCosh, Hinge, SquaredHinge, BinaryCrossEntropy, Poisson,
                    SoftMargin, HingeEmbedding, MeanAbsolutePercentageError,
                    BinaryFocalCrossEntropy)
