"""What each loss computes, written with the peers' tools: the yardstick of check and bench.

For every registered loss name this module holds a :class:`Reference`:

- ``inputs``: valid inputs for it, away from the kinks of piecewise losses (so central
  finite differences are meaningful) and from clipping thresholds;
- ``numpy``: value and gradient in NumPy, as a competent NumPy user writes them
  (vectorised, numerically stable, shared subexpressions, the 1/N folded into the
  gradient): the "NumPy" competitor of ``python -m fastloss bench``;
- ``torch``: the same loss through ``torch.nn.functional`` (or plain tensor operations
  where PyTorch has no such loss), differentiated by autograd: the semantics the docs
  name, and the "PyTorch" competitor;
- ``jax``: the value alone in the NumPy API (run on ``jax.numpy`` under
  ``jax.jit(jax.value_and_grad(...))``), for the benchmark's parameters only;
- the parameter variants ``python -m fastloss check`` tries, and the benchmark's.

Reductions and ``sample_weight`` are applied once, in :func:`numpy_value_and_grad` and
:func:`torch_loss`, on the per-term values ("none") of each loss: a term is one element
for pointwise losses and one row for row losses.
"""
import functools
import math

import numpy as np

#: Keras' backend epsilon: msle clips at it, probability cross-entropy clips to
#: [EPSILON, 1 - EPSILON]
EPSILON = 1e-7
#: PyTorch's binary_cross_entropy clamps each log at -100 ...
BCE_LOG_FLOOR = -100.0
#: ... and divides its gradient by max(p (1 - p), 1e-12)
BCE_GRAD_EPSILON = 1e-12


#: the kinds of loss a Reference describes (see Reference)
KINDS = ("pointwise", "dense_rows", "label_rows", "label_matrix_rows", "ratio")


class Reference:
    """How one loss is computed by the peers, and how to feed it.

    Parameters
    ----------
    name : str
        The registry name.
    kind : {"pointwise", "dense_rows", "label_rows", "label_matrix_rows", "ratio"}
        Pointwise: y_true has y_pred's shape, one term per element.  Dense rows: (N, C)
        y_pred and y_true, one term per row.  Label rows: (N, C) y_pred and (N,) integer
        labels, one term per row.  Label matrix rows: (N, C) y_pred and an (N, C)
        integer matrix of class indices (integers only), one term per row.  Ratio:
        y_true has y_pred's shape, one term (a ratio of sums) per index of the axes
        that the ``axis`` parameter does not name (a single term for ``axis=None``).
    inputs : callable
        ``inputs(rng, shape, params, **options) -> (y_pred, y_true)`` in float64 (labels
        int64), valid for the loss and away from its kinks.
    numpy : callable
        ``numpy(y_pred, y_true, grad_scale, **params) -> (terms, grad)``: the per-term
        values and the gradient of their sum times ``grad_scale`` (a scalar, or per-term
        weights broadcasting against y_pred).
    torch : callable
        ``torch(x, target, reduction, **params) -> tensor`` with the fastloss semantics of
        ``reduction`` ("none" gives the per-term values).
    variants : list of (params, input options)
        What ``python -m fastloss check`` tries.
    bench_params : dict
        The parameters of the benchmark (the common configuration, e.g. logits).
    jax : callable or None
        ``jax(xp, y_pred, y_true) -> per-term values`` with the bench parameters, in the
        NumPy API (``xp`` is ``jax.numpy``).
    count : callable or None
        ``count(y_pred, y_true, **params)``: the divisor of ``"mean"``; default the number
        of terms.

    ``terms_shape``, ``per_element`` and ``weighable`` say, from ``kind``, how the terms
    of a y_pred of a given shape are laid out and whether it takes a ``sample_weight``.
    """

    def __init__(self, name, kind, inputs, numpy, torch, variants, bench_params=None,
                 jax=None, count=None):
        if kind not in KINDS:
            raise ValueError(f"{name}: kind {kind!r} is not one of {KINDS}")
        self.name = name
        self.kind = kind
        self.inputs = inputs
        self.numpy = numpy
        self.torch = torch
        self.variants = variants
        self.bench_params = dict(bench_params or {})
        self.jax = jax
        self._count = count

    @property
    def pointwise(self):
        return self.kind == "pointwise"

    @property
    def rows(self):
        """One term per row of an (N, C) y_pred."""
        return self.kind in ("dense_rows", "label_rows", "label_matrix_rows")

    @property
    def labels(self):
        """y_true holds integer class labels or indices (kept as integers, never cast to
        y_pred's dtype)."""
        return self.kind in ("label_rows", "label_matrix_rows")

    @property
    def float_labels(self):
        """Integral float labels are accepted too (as Keras passes them)."""
        return self.kind == "label_rows"

    def count(self, y_pred, y_true, params):
        """The number the "mean" reduction divides the (weighted) sum of the terms by."""
        if self._count is not None:
            return self._count(y_pred, y_true, **params)
        return math.prod(self.terms_shape(np.shape(y_pred), params))

    def terms_shape(self, shape, params):
        """The shape of the per-term values ("none") for a y_pred of ``shape``: for a
        row loss, the axes other than the class axis (its ``axis``, default the last)."""
        if self.kind == "ratio":
            return tuple(shape[a] for a in _kept_axes(len(shape), params.get("axis")))
        if self.rows:
            axis = _class_axis(len(shape), params)
            return tuple(shape[:axis]) + tuple(shape[axis + 1:])
        return tuple(shape)

    def per_element(self, terms, shape, params):
        """Per-term values ``terms`` broadcasting against a y_pred of ``shape``."""
        terms = np.asarray(terms)
        if self.kind == "ratio":
            return np.expand_dims(terms, _reduced_axes(len(shape), params.get("axis")))
        if self.rows and terms.ndim == len(shape) - 1:
            return np.expand_dims(terms, _class_axis(len(shape), params))
        return terms.reshape(terms.shape + (1,) * (len(shape) - terms.ndim))

    def weighable(self, shape, params):
        """Whether a y_pred of ``shape`` takes a ``sample_weight`` (one weight per index
        of axis 0): with at least one axis, and for a ratio loss with axis 0 kept."""
        if self.kind == "ratio":
            return _kept_axes(len(shape), params.get("axis"))[:1] == (0,)
        return len(shape) >= 1


# ----------------------------------------------------------------------------------
# the public entry points


def numpy_value_and_grad(name, params=None, reduction="mean"):
    """The NumPy reference of loss ``name``: ``f(y_pred, y_true, sample_weight=None)``.

    Returns ``(value, grad)`` with the semantics of ``fastloss.get(name, **params,
    reduction=reduction).value_and_grad``.
    """
    ref = REFERENCES[name]
    params = dict(params or {})

    def value_and_grad(y_pred, y_true, sample_weight=None):
        scale = 1.0
        if reduction == "mean":
            count = ref.count(y_pred, y_true, params)
            scale = 1.0 / count if count else math.nan
        if sample_weight is None:
            terms, grad = ref.numpy(y_pred, y_true, scale, **params)
        else:
            weight = np.asarray(sample_weight, dtype=y_pred.dtype)
            terms, grad = ref.numpy(y_pred, y_true, _along_rows(weight, y_pred) * scale,
                                    **params)
            terms = terms * _along_rows(weight, terms)
        if reduction == "none":
            return terms, grad
        # summed in the input's dtype: NumPy's pairwise sum is accurate, and casting
        # to float64 first would cost the NumPy competitor an extra pass
        return float(terms.sum()) * scale, grad

    return value_and_grad


def torch_loss(name, x, target, params=None, reduction="mean", sample_weight=None):
    """Loss ``name`` of the tensors ``x``, ``target`` through PyTorch (autograd-ready).

    ``sample_weight`` (a tensor of shape (N,)) scales the per-term values, and ``"mean"``
    then divides by the unweighted count, as fastloss does (PyTorch has no per-sample
    weights).
    """
    ref = REFERENCES[name]
    params = dict(params or {})
    if sample_weight is None:
        return ref.torch(x, target, reduction, **params)
    terms = ref.torch(x, target, "none", **params)
    terms = terms * sample_weight.reshape((-1,) + (1,) * (terms.ndim - 1))
    if reduction == "none":
        return terms
    total = terms.sum()
    if reduction == "sum":
        return total
    return total / ref.count(x.detach().numpy(), target.numpy(), params)


def _along_rows(weight, array):
    """Per-row weights shaped to broadcast against ``array`` (first axis)."""
    return weight.reshape((-1,) + (1,) * (array.ndim - 1))


def _torch_reduce(terms, reduction, count=None):
    """Reduce per-term values the fastloss way: "mean" divides the sum by ``count``."""
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    return terms.sum() / (terms.numel() if count is None else count)


def _F():
    import torch.nn.functional
    return torch.nn.functional


def _torch():
    import torch
    return torch


def _as(value, like):
    """``value`` (a list or array of per-class numbers) as an array of ``like``'s dtype."""
    return None if value is None else np.asarray(value, dtype=like.dtype)


def _as_tensor(value, like):
    return None if value is None else _torch().as_tensor(np.asarray(value), dtype=like.dtype)


# ----------------------------------------------------------------------------------
# inputs (float64; the caller casts)


def _normal_pair(rng, shape, params, scale=1.0):
    return rng.normal(0, scale, shape), rng.normal(0, scale, shape)


def _away_from(rng, shape, kink, low, high):
    """Differences d with low <= |d - kink| <= high (either side of the kink)."""
    side = rng.choice([-1.0, 1.0], size=shape)
    return kink + side * rng.uniform(low, high, shape)


def _difference_inputs(kink_width):
    """y_true normal, y_pred = y_true + d with |d| away from the kinks of ``kink_width``."""
    def inputs(rng, shape, params, scale=1.0):
        target = rng.normal(0, scale, shape)
        if kink_width is None:                                # mae: kink at d = 0
            d = _away_from(rng, shape, 0.0, 0.05, 2.0) * scale
        else:                                                 # huber: kink at |d| = delta
            delta = params.get("delta", 1.0)
            d = np.abs(_away_from(rng, shape, delta, 0.05 * delta, 0.9 * delta))
            d *= rng.choice([-1.0, 1.0], size=shape)
        return target + d, target
    return inputs


def _msle_inputs(rng, shape, params):
    return rng.uniform(0.01, 3.0, shape), rng.uniform(0.01, 3.0, shape)


def _hinge_inputs(rng, shape, params, labels="plus_minus_one"):
    """Labels in {-1, 1} (or {0, 1}), predictions with the margin 1 - s p away from 0."""
    sign = rng.choice([-1.0, 1.0], size=shape)
    margin = _away_from(rng, shape, 0.0, 0.05, 1.5)
    target = sign if labels == "plus_minus_one" else (sign > 0).astype(np.float64)
    return sign * (1.0 - margin), target


def _bce_inputs(rng, shape, params):
    target = rng.uniform(0.0, 1.0, shape)
    if params.get("from_logits", False):
        return rng.normal(0.0, 3.0, shape), target
    return rng.uniform(0.05, 0.95, shape), target


def _poisson_inputs(rng, shape, params):
    """Counts (many above 1, where the Stirling term applies) and log rates, or rates."""
    target = rng.poisson(2.0, shape).astype(np.float64)
    if params.get("log_input", True):
        return rng.normal(0.5, 0.7, shape), target
    return rng.uniform(0.2, 4.0, shape), target


def _sign_label_inputs(rng, shape, params):
    """Labels +-1 and scores (kept off the hinge's kink at margin - p = 0)."""
    target = rng.choice([-1.0, 1.0], size=shape)
    margin = params.get("margin", 1.0)
    return margin + _away_from(rng, shape, 0.0, 0.05, 2.0), target


def _mape_inputs(rng, shape, params):
    """Targets away from 0 and predictions away from them (the kink at p = t)."""
    target = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 3.0, shape)
    return target + _away_from(rng, shape, 0.0, 0.05, 1.0), target


def _ratio_inputs(rng, shape, params):
    """Predictions in (0, 1) and binary masks (about 40% ones) as targets."""
    return rng.uniform(0.02, 0.98, shape), (rng.random(shape) < 0.4).astype(np.float64)


def _softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _class_axis(ndim, params):
    """The class axis (>= 0) of a row loss's y_pred: its ``axis``, default the last."""
    return params.get("axis", -1) % ndim


def _scores(rng, shape, params):
    """Logits, or probabilities in (0.01, 1) (rows roughly normalised) without logits."""
    logits = rng.normal(0.0, 2.0, shape)
    if params.get("from_logits", False):
        return logits
    axis = _class_axis(len(shape), params)
    probs = _softmax(logits, axis)
    # keep every probability well inside the (1e-7, 1 - 1e-7) clip
    return (probs + 0.02 / shape[axis]) / 1.02


def _dense_row_inputs(rng, shape, params):
    """Scores and soft targets (rows on the simplex, every entry > 0)."""
    target = _softmax(rng.normal(0.0, 1.0, shape), _class_axis(len(shape), params))
    if params.get("log_target", False):
        target = np.log(target)
    return _scores(rng, shape, params), target


def _label_row_inputs(rng, shape, params, ignored_rows=False):
    """Scores and integer labels, one per row (or position: the indices of the axes but
    the class axis), every 4th label ``ignore_index`` with ignored_rows."""
    axis = _class_axis(len(shape), params)
    labels = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
    if ignored_rows:
        labels.reshape(-1)[::4] = params.get("ignore_index", -100)
    return _scores(rng, shape, params), labels


def _any_class_axis(rows_function):
    """A NumPy reference of (N, C) rows extended to scores with their classes on any
    ``axis`` (one term per position): the classes moved last, the rows computed, the
    terms and gradient brought back to the layout of the scores."""
    @functools.wraps(rows_function)
    def function(x, t, scale, axis=-1, **params):
        axis %= x.ndim
        if x.ndim == 2 and axis == 1:
            return rows_function(x, t, scale, **params)
        moved = np.moveaxis(x, axis, -1)
        n_classes = moved.shape[-1]

        def as_rows(array):
            return np.moveaxis(np.broadcast_to(array, x.shape), axis, -1).reshape(
                -1, n_classes)

        t = as_rows(t) if np.shape(t) == x.shape else np.reshape(t, -1)
        scale = scale if np.ndim(scale) == 0 else as_rows(scale)
        terms, grad = rows_function(as_rows(x), t, scale, **params)
        return (terms.reshape(moved.shape[:-1]),
                np.moveaxis(grad.reshape(moved.shape), -1, axis))
    return function


def _any_class_axis_torch(rows_function):
    """A torch reference of (N, C) rows extended as :func:`_any_class_axis` (the rows a
    view of moved classes, differentiable)."""
    @functools.wraps(rows_function)
    def function(x, t, reduction, axis=-1, **params):
        axis %= x.ndim
        if x.ndim == 2 and axis == 1:
            return rows_function(x, t, reduction, **params)
        moved_shape = x.movedim(axis, -1).shape
        n_classes = moved_shape[-1]
        rows = x.movedim(axis, -1).reshape(-1, n_classes)
        t = (t.movedim(axis, -1).reshape(-1, n_classes) if t.shape == x.shape
             else t.reshape(-1))
        value = rows_function(rows, t, reduction, **params)
        return value.reshape(moved_shape[:-1]) if reduction == "none" else value
    return function


def _multi_margin_inputs(rng, shape, params):
    """Scores with every margin - x[y] + x[i] away from 0 (the hinge's kink)."""
    n_rows, n_classes = shape
    labels = rng.integers(0, n_classes, n_rows)
    true_score = rng.normal(0.0, 1.0, (n_rows, 1))
    margin = params.get("margin", 1.0)
    scores = true_score - margin + _away_from(rng, shape, 0.0, 0.05, 1.0)
    scores[np.arange(n_rows), labels] = true_score[:, 0]
    return scores, labels


def label_lists(rng, shape, max_targets=4, repeats=True):
    """(N, C) class indices: each row lists 0 to ``max_targets`` distinct classes (fewer
    when C is smaller; None: up to C), one of them listed twice in a quarter of the rows
    (``repeats``), then -1 and arbitrary valid entries that must be ignored.  Returns
    (indices, the (N, C) mask of each row's targets)."""
    n_rows, n_classes = shape
    indices = rng.integers(-1, n_classes, shape)   # what follows each row's end
    is_target = np.zeros(shape, dtype=bool)
    most = n_classes if max_targets is None else min(max_targets, n_classes)
    for row in range(n_rows):
        targets = rng.choice(n_classes, rng.integers(0, most + 1), replace=False)
        if repeats and targets.size and rng.random() < 0.25:
            targets = np.append(targets, targets[0])
        listed = targets[:n_classes]
        indices[row, :listed.size] = listed
        if listed.size < n_classes:
            indices[row, listed.size] = -1
        is_target[row, targets] = True
    return indices, is_target


def _label_matrix_inputs(rng, shape, params, targets="few"):
    """Scores on a lattice that keeps every 1 - x_j + x_c of a target j and another
    class c at least 0.1 away from 0 (the hinge's kink): multiples of 0.5, targets 0.1
    higher.  ``targets``: "few" (up to 4 a row) or "any" (up to C)."""
    indices, is_target = label_lists(rng, shape, 4 if targets == "few" else None)
    scores = 0.5 * rng.integers(-4, 5, shape) + np.where(is_target, 0.1, 0.0)
    return scores, indices


# ----------------------------------------------------------------------------------
# pointwise losses: numpy(p, t, scale, **params) -> (terms, grad)


def _mse(p, t, scale):
    d = p - t
    return d * d, d * (2 * scale)


def _mae(p, t, scale):
    d = p - t
    return np.abs(d), np.sign(d) * scale


def _msle(p, t, scale):
    a = np.maximum(p, EPSILON)
    d = np.log1p(a) - np.log1p(np.maximum(t, EPSILON))
    # no gradient where the prediction is clipped
    return d * d, np.where(p > EPSILON, 2 * d / (a + 1), 0) * scale


def _huber(p, t, scale, delta=1.0):
    d = p - t
    a = np.abs(d)
    terms = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    return terms, np.clip(d, -delta, delta) * scale


def _pseudo_huber(p, t, scale, delta=1.0):
    d = p - t
    with np.errstate(over="ignore"):
        a = np.abs(d) / delta
    # beyond a = 1e8, r = a to float64 precision: delta (|d| - delta) and delta sign(d)
    # (a and a^2 may overflow for a tiny delta); delta^2 (r - 1) = d^2 / (r + 1) without
    # the cancellation of r - 1 for small a, delta (delta (r - 1)) without underflow above
    big = a > 1e8
    r = np.sqrt(1 + np.where(big, 0.0, a) ** 2)
    terms = np.where(big, delta * (np.abs(d) - delta),
                     np.where(a > 1, delta * (delta * (r - 1)), d * d / (r + 1)))
    grad = np.where(big, delta * np.sign(d), d / r)
    return terms, grad * scale


def _log_cosh(p, t, scale):
    d = p - t
    a = np.abs(d)
    return a + np.log1p(np.exp(-2 * a)) - math.log(2), np.tanh(d) * scale


def _poisson(x, t, scale, log_input=True, full=False, eps=1e-8):
    if log_input:
        e = np.exp(x)
        terms, grad = e - t * x, e - t
    else:
        terms, grad = x - t * np.log(x + eps), 1 - t / (x + eps)
    if full:
        safe = np.where(t > 1, t, 2.0)
        terms = terms + np.where(t > 1, safe * np.log(safe) - safe
                                 + 0.5 * np.log(2 * math.pi * safe), 0)
    return terms, grad * scale


def _soft_margin(x, t, scale):
    z = -t * x
    return np.logaddexp(0, z), -t * (0.5 * (1 + np.tanh(0.5 * z))) * scale


def _hinge_embedding(x, t, scale, margin=1.0):
    d = margin - x
    use_margin, use_self = (t != 1), (t != -1)
    terms = np.where(use_margin, np.maximum(d, 0), 0) + np.where(use_self, x, 0)
    grad = use_self.astype(x.dtype) - (use_margin & (d >= 0)).astype(x.dtype)
    return terms, grad * scale


def _mape(p, t, scale):
    a = 100.0 / np.maximum(np.abs(t), EPSILON)
    return a * np.abs(p - t), a * np.sign(p - t) * scale


def _hinge_sign(t, dtype):
    """Labels in {-1, 1} or {0, 1} as signs (0 -> -1)."""
    return np.where(t > 0, 1, -1).astype(dtype)


def _hinge(p, t, scale):
    s = _hinge_sign(t, p.dtype)
    m = 1 - s * p
    return np.maximum(m, 0), np.where(m > 0, -s, 0) * scale


def _squared_hinge(p, t, scale):
    s = _hinge_sign(t, p.dtype)
    m = np.maximum(1 - s * p, 0)
    return m * m, -2 * s * m * scale


def _smooth_binary(t, label_smoothing):
    return t * (1 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else t


def _logistic_parts(x):
    """(softplus(-x), sigmoid(x), sigmoid(-x)) from one exp of -|x|."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.log1p(e) + np.maximum(-x, 0), np.where(x >= 0, r, e * r), \
        np.where(x >= 0, e * r, r)


def _bce(p, t, scale, from_logits=False, pos_weight=None, label_smoothing=0.0):
    t = _smooth_binary(t, label_smoothing)
    if not from_logits:
        terms = -(t * np.maximum(np.log(p), BCE_LOG_FLOOR)
                  + (1 - t) * np.maximum(np.log1p(-p), BCE_LOG_FLOOR))
        return terms, (p - t) / np.maximum(p * (1 - p), BCE_GRAD_EPSILON) * scale
    # (1 - t) x + (1 + (w - 1) t) softplus(-x), exp only of -|x|
    softplus_neg, _, sigmoid_neg = _logistic_parts(p)
    lw = 1 if pos_weight is None else 1 + (_as(pos_weight, p) - 1) * t
    terms = (1 - t) * p + lw * softplus_neg
    return terms, ((1 - t) - lw * sigmoid_neg) * scale


def _binary_focal(p, t, scale, from_logits=False, gamma=2.0, alpha=None,
                  label_smoothing=0.0):
    t = _smooth_binary(t, label_smoothing)
    if from_logits:
        softplus_neg, sig, sig_neg = _logistic_parts(p)
        bce, dbce = (1 - t) * p + softplus_neg, sig - t
        q, dq = t * sig_neg + (1 - t) * sig, (1 - 2 * t) * sig * sig_neg
    else:
        c = np.clip(p, EPSILON, 1 - EPSILON)
        bce = -(t * np.log(c) + (1 - t) * np.log1p(-c))
        dbce = np.where(p == c, (c - t) / (c * (1 - c)), 0)
        q, dq = t * (1 - p) + (1 - t) * p, 1 - 2 * t
    focal = q ** gamma
    dfocal = gamma * q ** (gamma - 1) * dq if gamma else 0
    w = 1 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return w * focal * bce, w * (dfocal * bce + focal * dbce) * scale


# ----------------------------------------------------------------------------------
# ratio losses: numpy(p, t, scale, axis=None, **params) -> (terms, grad)


def _reduced_axes(ndim, axis):
    """The axes a ratio sums over, ascending (every axis for None)."""
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(np.lib.array_utils.normalize_axis_tuple(axis, ndim)))


def _kept_axes(ndim, axis):
    """The axes that index the terms of a ratio loss."""
    reduced = _reduced_axes(ndim, axis)
    return tuple(a for a in range(ndim) if a not in reduced)


def _ratio_sums(p, t, axis):
    """(sum t p, sum t, sum p, a function spreading per-term values over the elements)."""
    reduced = _reduced_axes(p.ndim, axis)
    sums = [np.sum(x, axis=reduced) for x in (t * p, t, p)]
    return (*sums, lambda x: np.expand_dims(x, reduced))


def _dice(p, t, scale, axis=None):
    overlap, total_t, total_p, spread = _ratio_sums(p, t, axis)
    s = total_t + total_p + EPSILON
    grad = -2 * (t * spread(s) - spread(overlap)) / spread(s * s)
    return 1 - 2 * overlap / s, grad * scale


def _tversky(p, t, scale, alpha=0.5, beta=0.5, axis=None):
    overlap, total_t, total_p, spread = _ratio_sums(p, t, axis)
    s = overlap + alpha * (total_p - overlap) + beta * (total_t - overlap) + EPSILON
    ds = t + alpha * (1 - t) - beta * t
    grad = -(t * spread(s) - spread(overlap) * ds) / spread(s * s)
    return 1 - overlap / s, grad * scale


# torch: same semantics, reduction applied


def _t_mse(x, t, reduction):
    return _F().mse_loss(x, t, reduction=reduction)


def _t_mae(x, t, reduction):
    return _F().l1_loss(x, t, reduction=reduction)


def _t_msle(x, t, reduction):
    torch = _torch()
    d = torch.log1p(x.clamp(min=EPSILON)) - torch.log1p(t.clamp(min=EPSILON))
    return _torch_reduce(d * d, reduction)


def _t_huber(x, t, reduction, delta=1.0):
    return _F().huber_loss(x, t, reduction=reduction, delta=delta)


def _t_pseudo_huber(x, t, reduction, delta=1.0):
    d = x - t
    return _torch_reduce(delta ** 2 * (((d / delta) ** 2 + 1).sqrt() - 1), reduction)


def _t_log_cosh(x, t, reduction):
    a = (x - t).abs()
    return _torch_reduce(a + _F().softplus(-2 * a) - math.log(2), reduction)


def _t_poisson(x, t, reduction, log_input=True, full=False, eps=1e-8):
    return _F().poisson_nll_loss(x, t, log_input=log_input, full=full, eps=eps,
                                 reduction=reduction)


def _t_soft_margin(x, t, reduction):
    return _F().soft_margin_loss(x, t, reduction=reduction)


def _t_hinge_embedding(x, t, reduction, margin=1.0):
    return _F().hinge_embedding_loss(x, t, margin=margin, reduction=reduction)


def _t_mape(x, t, reduction):
    terms = 100.0 * (x - t).abs() / t.abs().clamp(min=EPSILON)
    return _torch_reduce(terms, reduction)


def _t_hinge_margin(x, t):
    sign = _torch().where(t > 0, 1.0, -1.0).to(x.dtype)
    return (1 - sign * x).clamp(min=0)


def _t_hinge(x, t, reduction):
    return _torch_reduce(_t_hinge_margin(x, t), reduction)


def _t_squared_hinge(x, t, reduction):
    return _torch_reduce(_t_hinge_margin(x, t) ** 2, reduction)


def _t_bce(x, t, reduction, from_logits=False, pos_weight=None, label_smoothing=0.0):
    t = _smooth_binary(t, label_smoothing)
    if from_logits:
        return _F().binary_cross_entropy_with_logits(
            x, t, reduction=reduction, pos_weight=_as_tensor(pos_weight, x))
    return _F().binary_cross_entropy(x, t, reduction=reduction)


def _t_binary_focal(x, t, reduction, from_logits=False, gamma=2.0, alpha=None,
                    label_smoothing=0.0):
    # Keras binary_focal_crossentropy, with torchvision's exact cross-entropy of logits
    t = _smooth_binary(t, label_smoothing)
    if from_logits:
        p = x.sigmoid()
        bce = _F().binary_cross_entropy_with_logits(x, t, reduction="none")
    else:
        p = x
        bce = _F().binary_cross_entropy(x.clamp(EPSILON, 1 - EPSILON), t, reduction="none")
    p_t = t * p + (1 - t) * (1 - p)
    terms = (1 - p_t) ** gamma * bce
    if alpha is not None:
        terms = (alpha * t + (1 - alpha) * (1 - t)) * terms
    return _torch_reduce(terms, reduction)


def _t_sum(x, axis):
    """Keras ops.sum(x, axis): every axis for None."""
    return x.sum() if axis is None else x.sum(dim=axis)


def _t_dice(x, t, reduction, axis=None):
    # keras.losses.dice, as written there
    intersection = _t_sum(t * x, axis)
    dice = 2.0 * intersection / (_t_sum(t, axis) + _t_sum(x, axis) + EPSILON)
    return _torch_reduce(1 - dice, reduction)


def _t_tversky(x, t, reduction, alpha=0.5, beta=0.5, axis=None):
    # keras.losses.tversky, as written there
    intersection = _t_sum(x * t, axis)
    fp = _t_sum((1 - t) * x, axis)
    fn = _t_sum(t * (1 - x), axis)
    tversky = intersection / (intersection + fp * alpha + fn * beta + EPSILON)
    return _torch_reduce(1 - tversky, reduction)


# jax: per-term values in the NumPy API, bench parameters only


def _j_poisson(xp, x, t):
    return xp.exp(x) - t * x


def _j_soft_margin(xp, x, t):
    return xp.logaddexp(0, -t * x)


def _j_hinge_embedding(xp, x, t):
    return xp.where(t == 1, x, xp.maximum(1.0 - x, 0))


def _j_mape(xp, p, t):
    return 100.0 * xp.abs(p - t) / xp.maximum(xp.abs(t), EPSILON)


def _j_dice(xp, p, t):
    return 1 - 2 * xp.sum(t * p, axis=-1) / (xp.sum(t, axis=-1) + xp.sum(p, axis=-1)
                                             + EPSILON)


def _j_tversky(xp, p, t):
    overlap = xp.sum(t * p, axis=-1)
    fp, fn = xp.sum((1 - t) * p, axis=-1), xp.sum(t * (1 - p), axis=-1)
    return 1 - overlap / (overlap + 0.5 * fp + 0.5 * fn + EPSILON)


def _j_mse(xp, p, t):
    return (p - t) ** 2


def _j_mae(xp, p, t):
    return xp.abs(p - t)


def _j_msle(xp, p, t):
    return (xp.log1p(xp.maximum(p, EPSILON)) - xp.log1p(xp.maximum(t, EPSILON))) ** 2


def _j_huber(xp, p, t):
    a = xp.abs(p - t)
    return xp.where(a <= 1.0, 0.5 * a * a, a - 0.5)


def _j_pseudo_huber(xp, p, t):
    return xp.sqrt(1 + (p - t) ** 2) - 1


def _j_log_cosh(xp, p, t):
    a = xp.abs(p - t)
    return a + xp.log1p(xp.exp(-2 * a)) - math.log(2)


def _j_hinge(xp, p, t):
    return xp.maximum(1 - xp.where(t > 0, 1.0, -1.0) * p, 0)


def _j_squared_hinge(xp, p, t):
    return _j_hinge(xp, p, t) ** 2


def _j_bce_logits(xp, p, t):
    return (1 - t) * p + xp.logaddexp(0, -p)


def _j_binary_focal_logits(xp, x, t):
    p = 1 / (1 + xp.exp(-x))
    q = t * (1 - p) + (1 - t) * p
    return q * q * _j_bce_logits(xp, x, t)


# ----------------------------------------------------------------------------------
# row losses


def _log_softmax(x):
    """(log_softmax(x), softmax(x), logsumexp(x) of shape (N, 1)) sharing one exp."""
    row_max = x.max(axis=1, keepdims=True)
    shifted = x - row_max
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    log_s = np.log(s)
    return shifted - log_s, e / s, row_max + log_s


def _renormalised_ce(p, weighted_target):
    """Keras' probability cross-entropy of rows ``p``: -sum(wt log clip(p / sum p)).

    Returns (terms, gradient with respect to p); the clip passes no gradient outside
    [EPSILON, 1 - EPSILON].
    """
    s = p.sum(axis=1, keepdims=True)
    q = p / s
    clipped = np.clip(q, EPSILON, 1 - EPSILON)
    terms = -(weighted_target * np.log(clipped)).sum(axis=1)
    dq = np.where(q == clipped, -weighted_target / clipped, 0)
    return terms, (dq - (dq * q).sum(axis=1, keepdims=True)) / s


@_any_class_axis
def _cce(x, t, scale, from_logits=False, label_smoothing=0.0, class_weight=None,
         z_loss=0.0):
    z_weight = _z_loss_row_weight(t, class_weight, x)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / x.shape[1]
    wt = t if class_weight is None else t * _as(class_weight, x)
    if not from_logits:
        terms, grad = _renormalised_ce(x, wt)
        return terms, grad * scale
    logp, softmax, lse = _log_softmax(x)
    terms = -(wt * logp).sum(axis=1)
    grad = softmax * wt.sum(axis=1, keepdims=True) - wt
    if z_loss:
        terms += z_loss * z_weight * lse[:, 0] ** 2
        grad += (2 * z_loss) * (z_weight[:, None] * lse) * softmax
    grad *= scale
    return terms, grad


def _z_loss_row_weight(t, class_weight, like):
    """W = sum_c w_c t_c / sum_c t_c per row (0 where the targets sum to 0): the
    target-weighted mean class weight that multiplies a dense row's z-loss term."""
    total = t.sum(axis=1)
    weighted = total if class_weight is None else (t * _as(class_weight, like)).sum(axis=1)
    safe = np.where(total != 0, total, 1)
    return np.where(total != 0, weighted / safe, 0)


def _label_weights(x, labels, class_weight, ignore_index):
    """(row index, labels with ignored rows set to 0, weight of each row: its class
    weight, 0 where ignored)."""
    keep = labels != ignore_index
    safe = np.where(keep, labels, 0)
    weight = keep.astype(x.dtype)
    if class_weight is not None:
        weight *= _as(class_weight, x)[safe]
    return np.arange(x.shape[0]), safe, weight


def _sparse_ce_count(x, labels, class_weight=None, ignore_index=-100, **unused):
    return float(_label_weights(x, labels, class_weight, ignore_index)[2].sum())


@_any_class_axis
def _sparse_ce(x, labels, scale, from_logits=False, label_smoothing=0.0,
               class_weight=None, ignore_index=-100, z_loss=0.0):
    n_classes = x.shape[1]
    rows, safe, w_row = _label_weights(x, labels, class_weight, ignore_index)
    eps = label_smoothing
    if not from_logits:
        keep = (labels != ignore_index)[:, None]
        target = np.zeros_like(x)
        target[rows, safe] = 1
        target = (target * (1 - eps) + eps / n_classes) * keep
        wt = target if class_weight is None else target * _as(class_weight, x)
        terms, grad = _renormalised_ce(x, wt)
        return terms, grad * scale
    # PyTorch: (1 - eps) w[y] (-log p[y]) + eps / C sum_c w[c] (-log p[c]), 0 if ignored
    logp, softmax, lse = _log_softmax(x)
    terms = -(1 - eps) * w_row * logp[rows, safe]
    grad = softmax * ((1 - eps) * w_row)[:, None]
    grad[rows, safe] -= (1 - eps) * w_row
    if eps:
        keep = (labels != ignore_index).astype(x.dtype)[:, None]
        w_class = np.ones(n_classes, x.dtype) if class_weight is None else _as(class_weight, x)
        terms -= eps / n_classes * keep[:, 0] * (logp * w_class).sum(axis=1)
        grad += eps / n_classes * keep * (softmax * w_class.sum() - w_class)
    if z_loss:
        terms += z_loss * w_row * lse[:, 0] ** 2
        grad += (2 * z_loss) * (w_row[:, None] * lse) * softmax
    grad *= scale
    return terms, grad


def _kl(x, t, scale, from_logits=False, log_target=False):
    if log_target:
        log_p, p = t, np.exp(t)
    else:
        p = t
        log_p = np.log(np.where(t > 0, t, 1))      # 0 log 0 = 0, as torch's xlogy
    if from_logits:
        log_q, softmax, _ = _log_softmax(x)
        grad = softmax * p.sum(axis=1, keepdims=True) - p
    else:
        log_q = np.log(x)
        grad = -p / x
    grad *= scale
    return (p * (log_p - log_q)).sum(axis=1), grad


def _multi_margin(x, labels, scale, margin=1.0, p=1, class_weight=None):
    n_rows, n_classes = x.shape
    rows = np.arange(n_rows)
    m = margin - x[rows, labels][:, None] + x
    m[rows, labels] = 0                        # the true class is not a violation
    h = np.maximum(m, 0)
    w_row = np.full(n_rows, 1 / n_classes, x.dtype)
    if class_weight is not None:
        w_row *= _as(class_weight, x)[labels]
    terms = (h if p == 1 else h * h).sum(axis=1) * w_row
    grad = (m > 0).astype(x.dtype) if p == 1 else 2 * h
    grad *= w_row[:, None] * scale
    grad[rows, labels] = -grad.sum(axis=1)
    return terms, grad


def _focal_alpha(alpha, like):
    return alpha if isinstance(alpha, (int, float)) else _as(alpha, like)


def _categorical_focal(x, t, scale, from_logits=False, gamma=2.0, alpha=0.25,
                       label_smoothing=0.0):
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / x.shape[1]
    a = t * _focal_alpha(alpha, x)
    if from_logits:
        total, q = 1.0, _log_softmax(x)[1]
    else:
        total = x.sum(axis=1, keepdims=True)
        q = x / total
    c = np.clip(q, EPSILON, 1 - EPSILON)
    focal, nll = (1 - c) ** gamma, -np.log(c)
    dfocal = gamma * (1 - c) ** (gamma - 1) if gamma else 0
    dq = np.where(q == c, -a * (dfocal * nll + focal / c), 0)
    through = (dq * q).sum(axis=1, keepdims=True)
    grad = q * (dq - through) if from_logits else (dq - through) / total
    return (a * focal * nll).sum(axis=1), grad * scale


def _categorical_hinge_inputs(rng, shape, params):
    """One-hot targets, scores with the hinge 1 + neg - pos away from 0."""
    n_rows, n_classes = shape
    labels = rng.integers(0, n_classes, n_rows)
    target = np.eye(n_classes)[labels]
    x = rng.normal(0.0, 1.0, shape)
    a = 1 + ((1 - target) * x).max(axis=1) - (target * x).sum(axis=1)
    x[np.arange(n_rows), labels] += np.where(np.abs(a) < 0.1, 0.3, 0.0)
    return x, target


def _categorical_hinge(x, t, scale):
    products = (1 - t) * x
    neg = products.max(axis=1)
    a = neg - (t * x).sum(axis=1) + 1
    tie = products == neg[:, None]
    share = tie / tie.sum(axis=1, keepdims=True)
    k = np.where(a > 0, 1.0, np.where(a == 0, 0.5, 0.0))[:, None]
    return np.maximum(a, 0), k * ((1 - t) * share - t) * scale


def _cosine_similarity(x, t, scale):
    floor = EPSILON * EPSILON
    xx, tt, xt = (x * x).sum(axis=1), (t * t).sum(axis=1), (x * t).sum(axis=1)
    inv_x = 1 / np.sqrt(np.maximum(xx, floor))
    inv_t = 1 / np.sqrt(np.maximum(tt, floor))
    terms = -xt * inv_x * inv_t
    grad = (-(inv_x * inv_t)[:, None] * t
            - np.where(xx > floor, terms * inv_x * inv_x, 0)[:, None] * x)
    return terms, grad * scale


def _multilabel_inputs(rng, shape, params):
    return rng.normal(0.0, 3.0, shape), (rng.uniform(size=shape) < 0.3).astype(np.float64)


def _multilabel_soft_margin(x, t, scale, class_weight=None):
    softplus_neg, sig, _ = _logistic_parts(x)
    terms, grad = (1 - t) * x + softplus_neg, sig - t
    if class_weight is not None:
        terms, grad = terms * _as(class_weight, x), grad * _as(class_weight, x)
    n_classes = x.shape[1]
    return terms.sum(axis=1) / n_classes, grad * (scale / n_classes)
def _listed_targets(indices):
    """(row, class) of every entry before its row's first -1, in row-major order
    (repeats kept), and the (N, C) mask of each row's targets."""
    listed = np.cumprod(indices >= 0, axis=1).astype(bool)
    rows, positions = np.nonzero(listed)
    classes = indices[rows, positions]
    is_target = np.zeros(indices.shape, dtype=bool)
    is_target[rows, classes] = True
    return rows, classes, is_target


def _multilabel_margin(x, indices, scale):
    """Per (row, target) entry, the hinges 1 - x_j + x_c of the other classes, a chunk
    of entries at a time (an entry x class temporary, never N x C x C)."""
    n_rows, n_classes = x.shape
    rows, classes, is_target = _listed_targets(indices)
    row_scale = np.broadcast_to(np.asarray(scale, dtype=x.dtype), (n_rows, 1))[:, 0]
    terms = np.zeros(n_rows)
    grad = np.zeros_like(x)
    chunk = max(1, (1 << 22) // n_classes)
    for start in range(0, rows.size, chunk):
        r, j = rows[start:start + chunk], classes[start:start + chunk]
        with np.errstate(invalid="ignore"):                 # inf - inf: not counted
            z = (1 - x[r, j])[:, None] + x[r]               # torch's grouping
            counted = (z > 0) & ~is_target[r]
        terms += np.bincount(r, weights=np.where(counted, z, 0).sum(axis=1),
                             minlength=n_rows)
        step = counted * (row_scale[r] / n_classes)[:, None]
        np.add.at(grad, r, step)
        np.subtract.at(grad, (r, j), step.sum(axis=1))
    return (terms / n_classes).astype(x.dtype), grad


# torch


def _t_log_softmax_parts(x):
    lse = x.logsumexp(dim=1)
    return x - lse[:, None], lse


def _t_renormalised_ce(p, weighted_target):
    q = (p / p.sum(dim=1, keepdim=True)).clamp(EPSILON, 1 - EPSILON)
    return -(weighted_target * q.log()).sum(dim=1)


@_any_class_axis_torch
def _t_cce(x, t, reduction, from_logits=False, label_smoothing=0.0, class_weight=None,
           z_loss=0.0):
    weight = _as_tensor(class_weight, x)
    if from_logits and not z_loss:
        return _F().cross_entropy(x, t, weight=weight, label_smoothing=label_smoothing,
                                  reduction=reduction)
    if from_logits:
        terms = _F().cross_entropy(x, t, weight=weight, label_smoothing=label_smoothing,
                                   reduction="none")
        z_weight = _as_tensor(_z_loss_row_weight(t.detach().numpy(), class_weight, t.detach().numpy()), x)
        terms = terms + z_loss * z_weight * x.logsumexp(dim=1) ** 2
    else:
        if label_smoothing:
            t = t * (1 - label_smoothing) + label_smoothing / x.shape[1]
        terms = _t_renormalised_ce(x, t if weight is None else t * weight)
    return _torch_reduce(terms, reduction)


@_any_class_axis_torch
def _t_sparse_ce(x, labels, reduction, from_logits=False, label_smoothing=0.0,
                 class_weight=None, ignore_index=-100, z_loss=0.0):
    torch = _torch()
    weight = _as_tensor(class_weight, x)
    if from_logits and not z_loss:
        return _F().cross_entropy(x, labels, weight=weight, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction=reduction)
    keep = labels != ignore_index
    safe = torch.where(keep, labels, 0)
    w_row = keep.to(x.dtype) if weight is None else keep * weight[safe]
    if from_logits:
        terms = _F().cross_entropy(x, labels, weight=weight, ignore_index=ignore_index,
                                   label_smoothing=label_smoothing, reduction="none")
        terms = terms + z_loss * w_row * x.logsumexp(dim=1) ** 2
    else:
        n_classes = x.shape[1]
        target = _F().one_hot(safe, n_classes).to(x.dtype)
        target = (target * (1 - label_smoothing) + label_smoothing / n_classes) * keep[:, None]
        terms = _t_renormalised_ce(x, target if weight is None else target * weight)
    return _torch_reduce(terms, reduction, w_row.sum())


def _t_kl(x, t, reduction, from_logits=False, log_target=False):
    log_q = _F().log_softmax(x, dim=1) if from_logits else x.log()
    if reduction == "none":
        return _F().kl_div(log_q, t, reduction="none", log_target=log_target).sum(dim=1)
    return _F().kl_div(log_q, t, reduction="batchmean" if reduction == "mean" else "sum",
                       log_target=log_target)


def _t_multi_margin(x, labels, reduction, margin=1.0, p=1, class_weight=None):
    return _F().multi_margin_loss(x, labels, p=p, margin=margin,
                                  weight=_as_tensor(class_weight, x), reduction=reduction)


def _t_categorical_focal(x, t, reduction, from_logits=False, gamma=2.0, alpha=0.25,
                         label_smoothing=0.0):
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / x.shape[1]
    p = _F().softmax(x, dim=1) if from_logits else x
    out = (p / p.sum(dim=1, keepdim=True)).clamp(EPSILON, 1 - EPSILON)
    alpha = alpha if isinstance(alpha, (int, float)) else _as_tensor(alpha, x)
    terms = ((1 - out) ** gamma * alpha * -(t * out.log())).sum(dim=1)
    return _torch_reduce(terms, reduction)


def _t_categorical_hinge(x, t, reduction):
    torch = _torch()
    a = ((1 - t) * x).amax(dim=1) - (t * x).sum(dim=1) + 1
    return _torch_reduce(torch.maximum(a, torch.zeros_like(a)), reduction)


def _t_cosine_similarity(x, t, reduction):
    floor = EPSILON * EPSILON
    x_n = x * (x * x).sum(dim=1, keepdim=True).clamp(min=floor).rsqrt()
    t_n = t * (t * t).sum(dim=1, keepdim=True).clamp(min=floor).rsqrt()
    return _torch_reduce(-(x_n * t_n).sum(dim=1), reduction)


def _t_multilabel_soft_margin(x, t, reduction, class_weight=None):
    return _F().multilabel_soft_margin_loss(x, t, weight=_as_tensor(class_weight, x),
                                            reduction=reduction)
def _t_multilabel_margin(x, indices, reduction):
    if x.shape[0] == 0:   # torch leaves the reduced value of an empty batch unwritten
        return _torch_reduce(_F().multilabel_margin_loss(x, indices.long(),
                                                         reduction="none"), reduction)
    return _F().multilabel_margin_loss(x, indices.long(), reduction=reduction)


# jax (bench parameters: logits for the cross-entropies and KL)


def _j_log_softmax(xp, x):
    shifted = x - xp.max(x, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def _j_cce_logits(xp, x, t):
    return -xp.sum(t * _j_log_softmax(xp, x), axis=1)


def _j_sparse_ce_logits(xp, x, labels):
    return -xp.take_along_axis(_j_log_softmax(xp, x), labels[:, None], axis=1)[:, 0]


def _j_kl_logits(xp, x, t):
    return xp.sum(t * (xp.log(t) - _j_log_softmax(xp, x)), axis=1)


def _j_categorical_focal_logits(xp, x, t):
    q = xp.clip(xp.exp(_j_log_softmax(xp, x)), EPSILON, 1 - EPSILON)
    return xp.sum(0.25 * (1 - q) ** 2 * -(t * xp.log(q)), axis=1)


def _j_categorical_hinge(xp, x, t):
    return xp.maximum(xp.max((1 - t) * x, axis=1) - xp.sum(t * x, axis=1) + 1, 0)


def _j_cosine_similarity(xp, x, t):
    x_n = x / xp.sqrt(xp.maximum(xp.sum(x * x, axis=1, keepdims=True), EPSILON ** 2))
    t_n = t / xp.sqrt(xp.maximum(xp.sum(t * t, axis=1, keepdims=True), EPSILON ** 2))
    return -xp.sum(x_n * t_n, axis=1)


def _j_multilabel_soft_margin(xp, x, t):
    return xp.mean((1 - t) * x + xp.logaddexp(0, -x), axis=1)


def _j_multi_margin(xp, x, labels):
    x_true = xp.take_along_axis(x, labels[:, None], axis=1)
    h = xp.maximum(1 - x_true + x, 0)
    # the true class contributes max(1 - 0, 0) = 1: remove it
    return (xp.sum(h, axis=1) - 1) / x.shape[1]


def _j_multilabel_margin(xp, x, indices):
    """Two stable sorts a row, no N x C x C temporary and no scatter (neither is in the
    NumPy API jit takes): which classes are listed, then for each listed entry j the
    count and the sum of the other classes' scores above x_j - 1, read off cumulative
    sums in sorted order (stable: a score equal to a threshold sorts before it, as a
    hinge of 0 counts nothing)."""
    n_rows, n_classes = x.shape
    listed = xp.cumprod(indices >= 0, axis=1) > 0           # before the first -1
    no = xp.zeros(x.shape, dtype=bool)
    # which classes are targets: sorted, the entries naming c come just before c
    keys = xp.concatenate([xp.where(listed, indices, n_classes),
                           xp.broadcast_to(xp.arange(n_classes), x.shape)], axis=1)
    order = xp.argsort(keys, axis=1, stable=True)
    ordered = xp.take_along_axis(keys, order, axis=1)
    named = xp.concatenate([no[:, :1], ordered[:, 1:] == ordered[:, :-1]], axis=1)
    is_target = xp.take_along_axis(named, xp.argsort(order, axis=1),
                                   axis=1)[:, n_classes:]
    # per entry, the hinges 1 - x_j + x_c > 0: the scores x_c above x_j - 1
    x_listed = xp.take_along_axis(x, xp.where(listed, indices, 0), axis=1)
    order = xp.argsort(xp.concatenate([x, x_listed - 1], axis=1), axis=1, stable=True)

    def in_order(first, second):
        return xp.take_along_axis(xp.concatenate([first, second], axis=1), order, axis=1)

    counts = in_order(xp.where(is_target, 0.0, 1.0), xp.zeros_like(x))
    sums = in_order(xp.where(is_target, 0.0, x), xp.zeros_like(x))
    above_count = counts.sum(axis=1, keepdims=True) - xp.cumsum(counts, axis=1)
    above_sum = sums.sum(axis=1, keepdims=True) - xp.cumsum(sums, axis=1)
    hinges = above_count * in_order(xp.zeros_like(x), 1 - x_listed) + above_sum
    return xp.sum(xp.where(in_order(no, listed), hinges, 0), axis=1) / n_classes


# ----------------------------------------------------------------------------------
# the table


_PLAIN = [({}, {})]
_CLASS_WEIGHT = [0.5, 1.0, 2.0, 1.5, 0.8]        # five classes: the check's row shape


def _pointwise(name, numpy, torch, jax, variants=_PLAIN, inputs=None, bench_params=None):
    return Reference(name, "pointwise", inputs or _normal_pair, numpy, torch, variants,
                     bench_params, jax)


REFERENCES = {ref.name: ref for ref in [
    _pointwise("mse", _mse, _t_mse, _j_mse),
    _pointwise("mae", _mae, _t_mae, _j_mae, inputs=_difference_inputs(None)),
    _pointwise("msle", _msle, _t_msle, _j_msle, inputs=_msle_inputs),
    _pointwise("huber", _huber, _t_huber, _j_huber, inputs=_difference_inputs("delta"),
               variants=[({}, {}), ({"delta": 0.3}, {}), ({"delta": 2.5}, {})]),
    _pointwise("pseudo_huber", _pseudo_huber, _t_pseudo_huber, _j_pseudo_huber,
               variants=[({}, {}), ({"delta": 0.3}, {"scale": 3.0})]),
    _pointwise("log_cosh", _log_cosh, _t_log_cosh, _j_log_cosh,
               variants=[({}, {}), ({}, {"scale": 20.0})]),
    _pointwise("hinge", _hinge, _t_hinge, _j_hinge, inputs=_hinge_inputs,
               variants=[({}, {}), ({}, {"labels": "zero_one"})]),
    _pointwise("squared_hinge", _squared_hinge, _t_squared_hinge, _j_squared_hinge,
               inputs=_hinge_inputs, variants=[({}, {}), ({}, {"labels": "zero_one"})]),
    _pointwise("binary_cross_entropy", _bce, _t_bce, _j_bce_logits, inputs=_bce_inputs,
               bench_params={"from_logits": True},
               variants=[({}, {}), ({"label_smoothing": 0.1}, {}),
                         ({"from_logits": True}, {}),
                         ({"from_logits": True, "pos_weight": _CLASS_WEIGHT}, {}),
                         ({"from_logits": True, "label_smoothing": 0.2}, {}),
                         ({"from_logits": True, "pos_weight": [3.0]}, {}),
                         ({"from_logits": True, "pos_weight": _CLASS_WEIGHT,
                           "label_smoothing": 0.3}, {})]),
    _pointwise("poisson", _poisson, _t_poisson, _j_poisson, inputs=_poisson_inputs,
               variants=[({}, {}), ({"full": True}, {}), ({"log_input": False}, {}),
                         ({"log_input": False, "eps": 1e-7, "full": True}, {})]),
    _pointwise("soft_margin", _soft_margin, _t_soft_margin, _j_soft_margin,
               inputs=_sign_label_inputs),
    _pointwise("hinge_embedding", _hinge_embedding, _t_hinge_embedding, _j_hinge_embedding,
               inputs=_sign_label_inputs,
               variants=[({}, {}), ({"margin": 0.5}, {}), ({"margin": 2.0}, {})]),
    _pointwise("mape", _mape, _t_mape, _j_mape, inputs=_mape_inputs),
    _pointwise("binary_focal_cross_entropy", _binary_focal, _t_binary_focal,
               _j_binary_focal_logits, inputs=_bce_inputs,
               bench_params={"from_logits": True},
               variants=[({}, {}), ({"alpha": 0.25}, {}),
                         ({"gamma": 0.5, "label_smoothing": 0.1}, {}),
                         ({"gamma": 3.0, "alpha": 0.7}, {}),
                         ({"from_logits": True}, {}),
                         ({"from_logits": True, "alpha": 0.25}, {}),
                         ({"from_logits": True, "gamma": 1.5, "alpha": 0.4,
                           "label_smoothing": 0.2}, {}),
                         ({"from_logits": True, "gamma": 0.0}, {})]),
    # the benchmark: one ratio per row (a sample flattened), as in segmentation
    Reference("dice", "ratio", _ratio_inputs, _dice, _t_dice, jax=_j_dice,
              bench_params={"axis": -1},
              variants=[({}, {}), ({"axis": -1}, {}), ({"axis": (1,)}, {})]),
    Reference("tversky", "ratio", _ratio_inputs, _tversky, _t_tversky, jax=_j_tversky,
              bench_params={"axis": -1},
              variants=[({}, {}), ({"alpha": 0.3, "beta": 0.7}, {}),
                        ({"alpha": 0.7, "beta": 0.2, "axis": -1}, {}),
                        ({"alpha": 0.8, "beta": 0.1, "axis": (1,)}, {})]),
    Reference("categorical_cross_entropy", "dense_rows", _dense_row_inputs, _cce, _t_cce,
              bench_params={"from_logits": True}, jax=_j_cce_logits,
              variants=[({"from_logits": True}, {}),
                        ({"from_logits": True, "label_smoothing": 0.1,
                          "class_weight": _CLASS_WEIGHT}, {}),
                        ({"from_logits": True, "z_loss": 0.01}, {}),
                        ({"from_logits": True, "label_smoothing": 0.1,
                          "class_weight": _CLASS_WEIGHT, "z_loss": 0.1}, {}),
                        ({}, {}),
                        ({"label_smoothing": 0.1}, {}),
                        ({"label_smoothing": 0.1, "class_weight": _CLASS_WEIGHT}, {}),
                        ({"from_logits": True, "axis": 1, "label_smoothing": 0.1,
                          "class_weight": _CLASS_WEIGHT, "z_loss": 0.05}, {}),
                        ({"from_logits": True, "axis": -1}, {}),
                        ({"axis": 1, "label_smoothing": 0.1}, {})]),
    Reference("sparse_categorical_cross_entropy", "label_rows", _label_row_inputs,
              _sparse_ce, _t_sparse_ce, count=_sparse_ce_count,
              bench_params={"from_logits": True}, jax=_j_sparse_ce_logits,
              variants=[({"from_logits": True}, {}),
                        ({"from_logits": True, "class_weight": _CLASS_WEIGHT},
                         {"ignored_rows": True}),
                        ({"from_logits": True, "label_smoothing": 0.1,
                          "class_weight": _CLASS_WEIGHT}, {}),
                        ({"from_logits": True, "z_loss": 0.01, "ignore_index": 2},
                         {"ignored_rows": True}),
                        ({"from_logits": True, "label_smoothing": 0.2,
                          "class_weight": _CLASS_WEIGHT, "z_loss": 0.05},
                         {"ignored_rows": True}),
                        ({}, {}),
                        ({"label_smoothing": 0.1}, {"ignored_rows": True}),
                        ({"label_smoothing": 0.1, "class_weight": _CLASS_WEIGHT},
                         {"ignored_rows": True}),
                        ({"from_logits": True, "axis": 1}, {}),
                        ({"from_logits": True, "axis": 1, "label_smoothing": 0.2,
                          "class_weight": _CLASS_WEIGHT, "z_loss": 0.05},
                         {"ignored_rows": True}),
                        ({"from_logits": True, "axis": -1, "ignore_index": 1},
                         {"ignored_rows": True}),
                        ({"axis": 1, "class_weight": _CLASS_WEIGHT},
                         {"ignored_rows": True})]),
    Reference("kl_divergence", "dense_rows", _dense_row_inputs, _kl, _t_kl,
              bench_params={"from_logits": True}, jax=_j_kl_logits,
              variants=[({}, {}), ({"from_logits": True}, {}), ({"log_target": True}, {}),
                        ({"from_logits": True, "log_target": True}, {})]),
    Reference("categorical_focal_cross_entropy", "dense_rows", _dense_row_inputs,
              _categorical_focal, _t_categorical_focal,
              bench_params={"from_logits": True}, jax=_j_categorical_focal_logits,
              variants=[({}, {}), ({"from_logits": True}, {}),
                        ({"gamma": 0.5, "alpha": _CLASS_WEIGHT}, {}),
                        ({"from_logits": True, "gamma": 3.0, "alpha": 1.0,
                          "label_smoothing": 0.1}, {}),
                        ({"from_logits": True, "gamma": 0.0, "alpha": _CLASS_WEIGHT}, {})]),
    Reference("categorical_hinge", "dense_rows", _categorical_hinge_inputs,
              _categorical_hinge, _t_categorical_hinge, jax=_j_categorical_hinge,
              variants=_PLAIN),
    Reference("cosine_similarity", "dense_rows", _normal_pair, _cosine_similarity,
              _t_cosine_similarity, jax=_j_cosine_similarity, variants=_PLAIN),
    Reference("multilabel_soft_margin", "dense_rows", _multilabel_inputs,
              _multilabel_soft_margin, _t_multilabel_soft_margin,
              jax=_j_multilabel_soft_margin,
              variants=[({}, {}), ({"class_weight": _CLASS_WEIGHT}, {})]),
    Reference("multi_margin", "label_rows", _multi_margin_inputs, _multi_margin,
              _t_multi_margin, jax=_j_multi_margin,
              variants=[({}, {}), ({"p": 2}, {}),
                        ({"margin": 0.5, "class_weight": _CLASS_WEIGHT}, {}),
                        ({"p": 2, "margin": 0.8, "class_weight": _CLASS_WEIGHT}, {})]),
    Reference("multilabel_margin", "label_matrix_rows", _label_matrix_inputs,
              _multilabel_margin, _t_multilabel_margin, jax=_j_multilabel_margin,
              variants=[({}, {}), ({}, {"targets": "any"})]),
]}
