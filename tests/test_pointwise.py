"""The nine pointwise losses against PyTorch autograd and the Keras formulas.

Every reference is computed in float64 from the very values fastloss received (float32
inputs are widened exactly), so the only differences are fastloss's own rounding: tight
tolerances for float64, float32-sized ones for float32.

References (the losses table of docs/losses.rst):
- mse, mae, huber, binary_cross_entropy (probabilities and logits with pos_weight):
  ``torch.nn.functional.mse_loss / l1_loss / huber_loss / binary_cross_entropy /
  binary_cross_entropy_with_logits`` with ``reduction="none"``, gradient by autograd.
- pseudo_huber: the documented formula delta**2 (sqrt(1 + (d/delta)**2) - 1), through torch
  autograd.
- log_cosh: Keras 3 ``keras.losses.log_cosh`` (keras/src/losses/losses.py, ``_logcosh``):
  x + softplus(-2x) - log 2, through torch autograd.
- msle, hinge, squared_hinge: Keras 3 (keras/src/losses/losses.py,
  ``mean_squared_logarithmic_error``, ``hinge``, ``squared_hinge`` and
  ``convert_binary_labels_to_hinge``), written below in NumPy with their derivatives.
- label smoothing: Keras ``binary_crossentropy``: y_true * (1 - ε) + 0.5 ε.
- sample_weight and "mean": Keras ``sum_over_batch_size`` (weighted sum / element count).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastloss as fl
from fastloss import _threads

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()

# Every configuration tested: id -> (registry name, constructor parameters, kind of data).
# The pos_weight value "per_class" is replaced by one weight per entry of the last axis.
CASES = {
    "mse": ("mse", {}, "regression"),
    "mae": ("mae", {}, "regression"),
    "msle": ("msle", {}, "msle"),
    "huber": ("huber", {}, "regression"),
    "huber_delta_0.7": ("huber", {"delta": 0.7}, "regression"),
    "pseudo_huber": ("pseudo_huber", {}, "regression"),
    "pseudo_huber_delta_2.5": ("pseudo_huber", {"delta": 2.5}, "regression"),
    "log_cosh": ("log_cosh", {}, "regression"),
    "hinge_pm1": ("hinge", {}, "labels_pm1"),
    "hinge_01": ("hinge", {}, "labels_01"),
    "squared_hinge_pm1": ("squared_hinge", {}, "labels_pm1"),
    "squared_hinge_01": ("squared_hinge", {}, "labels_01"),
    "bce": ("binary_cross_entropy", {}, "probabilities"),
    "bce_smoothing": ("binary_cross_entropy", {"label_smoothing": 0.2}, "probabilities"),
    "bce_logits": ("binary_cross_entropy", {"from_logits": True}, "logits"),
    "bce_logits_smoothing": ("binary_cross_entropy",
                             {"from_logits": True, "label_smoothing": 0.1}, "logits"),
    "bce_logits_pos_weight": ("binary_cross_entropy",
                              {"from_logits": True, "pos_weight": "per_class"}, "logits"),
    "bce_logits_pos_weight_1": ("binary_cross_entropy",
                                {"from_logits": True, "pos_weight": [3.0]}, "logits"),
    "bce_logits_pos_weight_smoothing": (
        "binary_cross_entropy",
        {"from_logits": True, "pos_weight": "per_class", "label_smoothing": 0.3}, "logits"),
}

# 1-D (one weight per element), 2-D with rows of >= 64 elements (the per-row tight
# loop), 3-D with short rows (the general loop; weights along the first axis).
SHAPES = [(37,), (5, 70), (3, 4, 5)]


# ---------------------------------------------------------------------------------------
# data and references
# ---------------------------------------------------------------------------------------
def make_data(kind, shape, rng):
    """(y_pred, y_true) in float64 for a kind of loss."""
    if kind == "regression":
        return rng.normal(0, 2, shape), rng.normal(0, 2, shape)
    if kind == "msle":
        # some negative values: Keras clips both at epsilon (no gradient there)
        return rng.uniform(-0.5, 5, shape), rng.uniform(-0.2, 5, shape)
    if kind == "labels_pm1":
        return rng.normal(0, 1.5, shape), rng.choice([-1.0, 1.0], shape)
    if kind == "labels_01":
        return rng.normal(0, 1.5, shape), rng.choice([0.0, 1.0], shape)
    # soft targets with some exact 0 and 1
    target = np.where(rng.random(shape) < 0.5, rng.choice([0.0, 1.0], shape),
                      rng.uniform(0, 1, shape))
    if kind == "probabilities":
        return rng.uniform(0.01, 0.99, shape), target
    assert kind == "logits"
    return rng.normal(0, 4, shape), target


def make_params(params, shape, rng):
    params = dict(params)
    if isinstance(params.get("pos_weight"), str):
        params["pos_weight"] = rng.uniform(0.2, 4, shape[-1] if shape and shape[-1] else 1)
    return params


def make_case(case_id, shape, dtype, rng):
    """(loss params, y_pred, y_true) for one configuration, inputs in ``dtype``."""
    name, params, kind = CASES[case_id]
    pred, target = make_data(kind, shape, rng)
    return make_params(params, shape, rng), pred.astype(dtype), target.astype(dtype)


def _torch_terms(fn, pred, target):
    x = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target, dtype=torch.float64)
    terms = fn(x, t)
    terms.sum().backward()  # each term depends on its own element only
    return terms.detach().numpy(), x.grad.numpy()


def _hinge_labels(target):
    # Keras convert_binary_labels_to_hinge: labels all in {0, 1} become 2 y - 1
    if np.all((target == 0) | (target == 1)):
        return 2.0 * target - 1.0
    return target


def _smoothed(target, params):
    eps = params.get("label_smoothing", 0.0)
    return target * (1.0 - eps) + 0.5 * eps  # Keras binary_crossentropy


def _keras_log_cosh(d):
    # Keras: x + softplus(-2x) - log 2.  softplus as logaddexp(z, 0): torch's F.softplus
    # turns linear above its threshold 20, whose gradient is then off by ~1e-12.
    return d + torch.logaddexp(-2.0 * d, torch.zeros_like(d)) - math.log(2.0)


def _pseudo_huber(d, delta):
    # the documented formula: delta**2 (sqrt(1 + (d / delta)**2) - 1)
    return delta ** 2 * (torch.sqrt(1 + (d / delta) ** 2) - 1)


def reference_terms(name, params, pred, target):
    """Unreduced, unweighted terms and their derivatives d term_i / d pred_i (float64)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if name == "mse":
        return _torch_terms(lambda x, t: F.mse_loss(x, t, reduction="none"), pred, target)
    if name == "mae":
        return _torch_terms(lambda x, t: F.l1_loss(x, t, reduction="none"), pred, target)
    if name == "huber":
        delta = params.get("delta", 1.0)
        return _torch_terms(lambda x, t: F.huber_loss(x, t, reduction="none", delta=delta),
                            pred, target)
    if name == "pseudo_huber":
        delta = params.get("delta", 1.0)
        return _torch_terms(lambda x, t: _pseudo_huber(x - t, delta), pred, target)
    if name == "log_cosh":
        return _torch_terms(lambda x, t: _keras_log_cosh(x - t), pred, target)
    if name == "msle":
        # Keras: square(log(maximum(y_pred, eps) + 1) - log(maximum(y_true, eps) + 1))
        first = np.maximum(pred, KERAS_EPSILON) + 1.0
        diff = np.log(first) - np.log(np.maximum(target, KERAS_EPSILON) + 1.0)
        return diff ** 2, np.where(pred > KERAS_EPSILON, 2.0 * diff / first, 0.0)
    if name in ("hinge", "squared_hinge"):
        # Keras: maximum(1 - y_true * y_pred, 0), squared for squared_hinge
        labels = _hinge_labels(target)
        margin = np.maximum(1.0 - labels * pred, 0.0)
        active = margin > 0
        if name == "hinge":
            return margin, np.where(active, -labels, 0.0)
        return margin ** 2, -2.0 * labels * margin
    assert name == "binary_cross_entropy"
    target = _smoothed(target, params)
    if not params.get("from_logits", False):
        return _torch_terms(lambda x, t: F.binary_cross_entropy(x, t, reduction="none"),
                            pred, target)
    pos_weight = params.get("pos_weight")
    if pos_weight is not None:
        pos_weight = torch.tensor(np.asarray(pos_weight, dtype=np.float64))
    return _torch_terms(lambda x, t: F.binary_cross_entropy_with_logits(
        x, t, reduction="none", pos_weight=pos_weight), pred, target)


def reference(name, params, pred, target, sample_weight, reduction):
    """(value, gradient) of the reduced loss, Keras sum_over_batch_size weighting."""
    terms, grads = reference_terms(name, params, pred, target)
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        w = w.reshape(w.shape + (1,) * (terms.ndim - 1))
        terms, grads = terms * w, grads * w
    if reduction == "none":
        return terms, grads
    if reduction == "sum":
        return terms.sum(), grads
    return terms.sum() / terms.size, grads / terms.size


def tolerances(dtype):
    """(rtol, atol relative to the largest reference magnitude) for a result dtype."""
    if np.dtype(dtype) == np.float32:
        return 2e-5, 2e-6
    return 1e-11, 1e-13


def assert_close(got, want, dtype, rtol=None):
    want = np.asarray(want, dtype=np.float64)
    default_rtol, atol = tolerances(dtype)
    scale = np.max(np.abs(want), initial=0.0) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want,
                               rtol=default_rtol if rtol is None else rtol,
                               atol=atol * max(scale, 1e-300))


def assert_rounding_close(got, want, dtype):
    """Equal to float rounding: what differs between 1 and 2 threads.

    The float64 sum is added in another order, and an element may fall in a vectorised
    loop with one thread and in a scalar remainder loop with two (libmvec and libm differ
    by a few ulp, which a cancellation like msle's log difference can enlarge); so a few
    ulp of the result's scale.
    """
    eps = np.finfo(dtype).eps
    want = np.asarray(want, dtype=np.float64)
    scale = np.max(np.abs(want), initial=0.0) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=16 * eps, atol=16 * eps * scale)


# ---------------------------------------------------------------------------------------
# values and gradients: dtype x reduction x sample_weight x out= x threads
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_reference(case_id, dtype, reduction, shape, weighted, rng):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, shape, dtype, rng)
    weight = None
    if weighted:
        weight = rng.uniform(0, 2, shape[0]).astype(dtype)
        weight[1] = 0.0
    loss = fl.get(name, reduction=reduction, **params)
    want_value, want_grad = reference(name, params, pred, target, weight, reduction)

    value = loss(pred, target, weight)
    grad = loss.grad(pred, target, weight)
    out = np.full_like(pred, np.nan)
    fused_value, fused_grad = loss.value_and_grad(pred, target, weight, out=out)
    assert fused_grad is out
    out2 = np.full_like(pred, np.nan)
    assert loss.grad(pred, target, weight, out=out2) is out2
    for g in (grad, fused_grad, out2):
        assert g.dtype == pred.dtype and g.shape == pred.shape
        assert_close(g, want_grad, dtype)
    for v in (value, fused_value):
        if reduction == "none":
            assert isinstance(v, np.ndarray)
            assert v.dtype == pred.dtype and v.shape == pred.shape
        else:
            assert type(v) is float
        assert_close(v, want_value, dtype)


# Threaded runs are few (a parallel region can cost milliseconds on a loaded machine):
# each loop of the kernel once, on a shape whose chunk boundary falls inside a row.
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_two_threads_match_one_and_the_reference(case_id, dtype, weighted, rng, set_threads,
                                                 parallel_always):
    name = CASES[case_id][0]
    shape = (9, 70)  # 2 chunks of 320 elements: the boundary is 40 elements into row 4
    params, pred, target = make_case(case_id, shape, dtype, rng)
    weight = rng.uniform(0, 2, shape[0]).astype(dtype) if weighted else None
    mean = fl.get(name, **params)
    none = fl.get(name, reduction="none", **params)

    def run():
        # the value-only, gradient-only, fused and per-element loops
        return (mean(pred, target, weight), mean.grad(pred, target, weight),
                *mean.value_and_grad(pred, target, weight),
                *none.value_and_grad(pred, target, weight))

    set_threads(1)
    serial = run()
    set_threads(2)
    threaded = run()
    for got, want in zip(threaded, serial):
        assert_rounding_close(got, want, dtype)
    want_mean = reference(name, params, pred, target, weight, "mean")
    want_none = reference(name, params, pred, target, weight, "none")
    for got, want in zip(threaded, (*want_mean, *want_mean, *want_none)):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("case_id", list(CASES))
def test_threads_agree_on_larger_input(case_id, rng, set_threads):
    """Above the real PARALLEL_MIN_WORK threshold (no monkeypatch), many chunks of rows."""
    name = CASES[case_id][0]
    # just above the threshold (whatever it is tuned to), in rows of 130 elements
    shape = (_threads.PARALLEL_MIN_WORK // 130 + 2, 130)
    params, pred, target = make_case(case_id, shape, np.float32, rng)
    weight = rng.uniform(0, 2, shape[0]).astype(np.float32)
    loss = fl.get(name, **params)
    set_threads(1)
    serial = loss.value_and_grad(pred, target, weight)
    set_threads(2)
    threaded = loss.value_and_grad(pred, target, weight)
    assert threaded[0] == serial[0]          # same bits: blocks depend on the input only
    np.testing.assert_array_equal(threaded[1], serial[1])
    want_value, want_grad = reference(name, params, pred, target, weight, "mean")
    assert_close(threaded[0], want_value, np.float32)
    assert_close(threaded[1], want_grad, np.float32)


# ---------------------------------------------------------------------------------------
# the three entry points and the gradient of "none"
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_call_grad_and_value_and_grad_agree(case_id, reduction, rng):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, (9, 70), np.float64, rng)
    weight = rng.uniform(0, 2, 9)
    loss = fl.get(name, reduction=reduction, **params)
    value, grad = loss.value_and_grad(pred, target, weight)
    # the same arithmetic, maybe in another loop (vectorised or not): a few ulp apart
    assert_rounding_close(loss(pred, target, weight), value, np.float64)
    assert_rounding_close(loss.grad(pred, target, weight), grad, np.float64)


@pytest.mark.parametrize("case_id", list(CASES))
def test_none_gradient_is_gradient_of_the_sum(case_id, rng):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, (8, 9), np.float64, rng)
    weight = rng.uniform(0.5, 2, 8)
    none = fl.get(name, reduction="none", **params)
    total = fl.get(name, reduction="sum", **params)
    mean = fl.get(name, reduction="mean", **params)
    values, grad_none = none.value_and_grad(pred, target, weight)
    value_sum, grad_sum = total.value_and_grad(pred, target, weight)
    value_mean, grad_mean = mean.value_and_grad(pred, target, weight)
    assert values.sum() == pytest.approx(value_sum, rel=1e-13)
    assert value_mean == pytest.approx(value_sum / pred.size, rel=1e-13)
    np.testing.assert_allclose(grad_none, grad_sum, rtol=1e-14)
    np.testing.assert_allclose(grad_mean, grad_sum / pred.size, rtol=1e-14)


# ---------------------------------------------------------------------------------------
# central finite differences of fastloss's own values
# ---------------------------------------------------------------------------------------
def _away_from_kinks(name, params, pred, target):
    """Elements where the loss is smooth within the finite-difference step."""
    d = pred - target
    gap = 1e-3
    if name == "mae":
        return np.abs(d) > gap
    if name == "huber":
        return np.abs(np.abs(d) - params.get("delta", 1.0)) > gap
    if name in ("hinge", "squared_hinge"):
        return np.abs(1 - _hinge_labels(target) * pred) > gap
    if name == "msle":
        return np.abs(pred - KERAS_EPSILON) > gap
    return np.ones(pred.shape, dtype=bool)


@pytest.mark.parametrize("case_id", list(CASES))
def test_central_finite_differences(case_id, rng):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, (6, 8), np.float64, rng)
    weight = rng.uniform(0.5, 2, 6)
    loss = fl.get(name, reduction="none", **params)
    grad = loss.grad(pred, target, weight)
    # every term depends on its own element only: perturb all elements at once
    h = 1e-6
    if CASES[case_id][2] == "probabilities":
        h = 1e-7  # stay inside (0, 1)
    numeric = (loss(pred + h, target, weight) - loss(pred - h, target, weight)) / (2 * h)
    smooth = _away_from_kinks(name, params, pred, target)
    assert smooth.sum() > pred.size // 2
    np.testing.assert_allclose(grad[smooth], numeric[smooth], rtol=1e-6, atol=1e-7)
    # and the "mean" gradient is that of the mean value
    mean = fl.get(name, **params)
    direction = rng.normal(size=pred.shape) * smooth
    numeric_mean = (mean(pred + h * direction, target, weight)
                    - mean(pred - h * direction, target, weight)) / (2 * h)
    assert np.sum(mean.grad(pred, target, weight) * direction) == pytest.approx(
        numeric_mean, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------
# extremes, tiny and empty batches, NaN
# ---------------------------------------------------------------------------------------
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def torch_same_dtype(fn, pred, target, reduction):
    """The torch value and gradient computed in the input's own dtype."""
    x = torch.tensor(pred, requires_grad=True)
    value = fn(x, torch.tensor(target), reduction)
    value.sum().backward()
    return value.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bce_probabilities_exactly_zero_and_one(dtype, reduction):
    """log(0) is clamped at -100 as in torch; the gradient's denominator at 1e-12."""
    pred = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, 1e-30], dtype=dtype)
    target = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 1.0], dtype=dtype)
    loss = fl.BinaryCrossEntropy(reduction=reduction)
    value, grad = loss.value_and_grad(pred, target)
    want_value, want_grad = torch_same_dtype(
        lambda x, t, r: F.binary_cross_entropy(x, t, reduction=r), pred, target, reduction)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, want_value, rtol=1e-6 if dtype == np.float32 else 1e-12)
    # torch divides by max(p (1 - p), 1e-12) with 1e-12 rounded to float32 even for
    # float64 (-1 / 9.9999999600e-13 at p = 0, t = 1): 4e-9 apart from 1e-12 itself
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("pos_weight", [None, [0.5, 2.0]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bce_huge_logits_finite_like_torch(dtype, pos_weight):
    pred = np.array([[1e4, -1e4], [-1e4, 1e4], [1e30, -1e30], [-1e30, 1e30], [0.0, 88.0],
                     [-104.0, 750.0]], dtype=dtype)
    target = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.25, 0.75], [1.0, 0.0],
                       [1.0, 0.5]], dtype=dtype)
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight, reduction="none")
    value, grad = loss.value_and_grad(pred, target)
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=TORCH_DTYPES[dtype])
    want_value, want_grad = torch_same_dtype(
        lambda x, t, r: F.binary_cross_entropy_with_logits(x, t, reduction=r, pos_weight=pw),
        pred, target, "none")
    assert np.array_equal(np.isfinite(value), np.isfinite(want_value))
    assert np.all(np.isfinite(grad))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value, want_value, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=1e-30)


HUGE = {np.float32: 1e18, np.float64: 1e150}

TORCH_HUGE = {
    "mse": lambda x, t: F.mse_loss(x, t, reduction="none"),
    "mae": lambda x, t: F.l1_loss(x, t, reduction="none"),
    "huber": lambda x, t: F.huber_loss(x, t, reduction="none"),
    "pseudo_huber": lambda x, t: _pseudo_huber(x - t, 1.0),
    "log_cosh": lambda x, t: _keras_log_cosh(x - t),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(TORCH_HUGE))
def test_huge_residuals_like_torch(name, dtype):
    """Residuals up to the dtype's overflow, torch computing in the same dtype."""
    big = HUGE[dtype]
    top = np.finfo(dtype).max / 2
    pred = np.array([big, -big, 3 * big, 1.0, -7.0, top, -top, 30.0], dtype=dtype)
    target = np.array([-big, big, 0.0, -big, 7.0, 0.0, 0.0, -30.0], dtype=dtype)
    value, grad = fl.get(name, reduction="none").value_and_grad(pred, target)
    want_value, want_grad = torch_same_dtype(lambda x, t, r: TORCH_HUGE[name](x, t),
                                             pred, target, "none")
    if name == "pseudo_huber":
        # torch's naive formula squares d / delta and overflows where the value itself
        # (~ delta |d|) is representable; fastloss stays finite, equal elsewhere
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
        keep = np.isfinite(want_value) & np.isfinite(want_grad)
        value, grad, want_value, want_grad = (a[keep] for a in (value, grad, want_value,
                                                                 want_grad))
    # inf (an overflow of the formula, e.g. d**2) exactly where torch has inf
    assert np.array_equal(np.isinf(value), np.isinf(want_value)), (value, want_value)
    assert np.array_equal(np.isinf(grad), np.isinf(want_grad)), (grad, want_grad)
    if name in ("huber", "log_cosh"):
        assert np.all(np.isfinite(value))  # linear growth: never overflows here
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value, want_value, rtol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pseudo_huber_does_not_overflow_before_its_value(dtype):
    # the value ~ delta |d| is representable, so is the gradient ~ delta sign(d)
    big = np.finfo(dtype).max / 4
    pred = np.array([big, -big], dtype=dtype)
    target = np.zeros(2, dtype=dtype)
    value, grad = fl.PseudoHuber(delta=1.0, reduction="none").value_and_grad(pred, target)
    np.testing.assert_allclose(value, [big, big], rtol=1e-6)
    np.testing.assert_allclose(grad, [1.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case_id", ["hinge_pm1", "squared_hinge_01", "msle"])
def test_huge_values_keras_formulas(case_id, dtype):
    name = CASES[case_id][0]
    big = HUGE[dtype]
    pred = np.array([big, -big, big, -big, 0.5], dtype=dtype)
    labels = {"hinge_pm1": [1, -1, -1, 1, 1], "squared_hinge_01": [1, 0, 0, 1, 1],
              "msle": [0, big, big, 0, 2]}[case_id]
    target = np.array(labels, dtype=dtype)
    value, grad = fl.get(name, reduction="none").value_and_grad(pred, target)
    terms, grads = reference_terms(name, {}, pred, target)
    with np.errstate(over="ignore"):
        terms_in_dtype = terms.astype(dtype)
    assert np.array_equal(np.isinf(value), np.isinf(terms_in_dtype))
    finite = np.isfinite(terms_in_dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value[finite], terms[finite], rtol=rtol)
    np.testing.assert_allclose(grad, grads, rtol=rtol)


TORCH_FUNCTIONS = {
    "mse": lambda x, t, r: F.mse_loss(x, t, reduction=r),
    "mae": lambda x, t, r: F.l1_loss(x, t, reduction=r),
    "huber": lambda x, t, r: F.huber_loss(x, t, reduction=r),
    "bce": lambda x, t, r: F.binary_cross_entropy(x, t, reduction=r),
    "bce_logits": lambda x, t, r: F.binary_cross_entropy_with_logits(x, t, reduction=r),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (0,), (0, 3), (3, 0)],
                         ids=["0d", "1", "1x1", "empty", "0x3", "3x0"])
@pytest.mark.parametrize("case_id", list(TORCH_FUNCTIONS))
def test_tiny_and_empty_batches_like_torch(case_id, shape, reduction):
    name, params, _ = CASES[case_id]
    pred = np.full(shape, 0.3)
    target = np.full(shape, 1.0)
    loss = fl.get(name, reduction=reduction, **params)
    value, grad = loss.value_and_grad(pred, target)
    want_value, want_grad = torch_same_dtype(TORCH_FUNCTIONS[case_id], pred, target, reduction)
    if reduction == "none":
        assert isinstance(value, np.ndarray) and value.shape == shape
    else:
        assert type(value) is float
    np.testing.assert_allclose(value, want_value, rtol=1e-14)  # nan == nan here
    assert grad.shape == shape
    np.testing.assert_allclose(grad, want_grad, rtol=1e-14)
    np.testing.assert_allclose(loss(pred, target), value, rtol=1e-15)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)], ids=["0x4", "3x0"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_empty_batch_every_loss(case_id, reduction, shape):
    """Mean of nothing is NaN (torch), a sum 0, "none" an empty array; weights allowed."""
    name, params, _ = CASES[case_id]
    params = make_params(params, shape, np.random.default_rng(0))
    pred = np.zeros(shape)
    loss = fl.get(name, reduction=reduction, **params)
    value, grad = loss.value_and_grad(pred, pred.copy(), sample_weight=np.ones(shape[0]))
    assert grad.shape == shape
    if reduction == "mean":
        assert math.isnan(value)
    elif reduction == "sum":
        assert value == 0.0
    else:
        assert value.shape == shape


NAN_TORCH_REFERENCE = ["mse", "mae", "huber", "pseudo_huber", "log_cosh", "bce_logits",
                       "bce_logits_pos_weight"]


@pytest.mark.parametrize("case_id", list(CASES))
def test_nan_prediction_propagates(case_id, rng, set_threads, parallel_always):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, (4, 20), np.float64, rng)
    pred[2, 7] = np.nan
    for n_threads in (1, 2):
        set_threads(n_threads)
        assert math.isnan(fl.get(name, **params)(pred, target))
        assert math.isnan(fl.get(name, reduction="sum", **params)(pred, target))
        values, grad = fl.get(name, reduction="none", **params).value_and_grad(pred, target)
        assert np.isnan(values[2, 7])
        finite = np.ones(pred.shape, dtype=bool)
        finite[2, 7] = False
        assert np.all(np.isfinite(values[finite])) and np.all(np.isfinite(grad[finite]))


@pytest.mark.parametrize("case_id", NAN_TORCH_REFERENCE)
def test_nan_prediction_gradient_like_torch(case_id, rng):
    name = CASES[case_id][0]
    params, pred, target = make_case(case_id, (3, 5), np.float64, rng)
    pred[1, 2] = np.nan
    pred[0, 0] = target[0, 0]  # also the kink of mae (torch: subgradient 0)
    _, grad = fl.get(name, reduction="none", **params).value_and_grad(pred, target)
    _, want = reference_terms(name, params, pred, target)
    np.testing.assert_allclose(grad, want, rtol=1e-12)  # NaN where torch has NaN


def test_nan_target_bce_propagates():
    loss = fl.BinaryCrossEntropy(reduction="none")
    values = loss(np.array([0.3, 0.4]), np.array([np.nan, 1.0]))
    assert np.isnan(values[0]) and np.isfinite(values[1])
    loss = fl.BinaryCrossEntropy(from_logits=True, reduction="none")
    values = loss(np.array([0.3, 0.4]), np.array([np.nan, 1.0]))
    assert np.isnan(values[0]) and np.isfinite(values[1])


# ---------------------------------------------------------------------------------------
# loss-specific semantics
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
def test_hinge_zero_one_labels_mean_minus_one(name, rng):
    pred = rng.normal(size=(5, 7))
    labels01 = rng.choice([0.0, 1.0], (5, 7))
    loss = fl.get(name, reduction="none")
    v01, g01 = loss.value_and_grad(pred, labels01)
    vpm, gpm = loss.value_and_grad(pred, 2 * labels01 - 1)
    np.testing.assert_array_equal(v01, vpm)
    np.testing.assert_array_equal(g01, gpm)
    # labels all 1 are in both conventions
    ones = np.ones((5, 7))
    np.testing.assert_allclose(loss(pred, ones), np.maximum(1 - pred, 0) ** (
        1 if name == "hinge" else 2))


def test_msle_clips_like_keras():
    pred = np.array([-3.0, 0.0, 1e-9, 2.0])
    target = np.array([-1.0, 0.0, 0.5, -2.0])
    values, grad = fl.MeanSquaredLogarithmicError(reduction="none").value_and_grad(pred, target)
    first = np.log(np.maximum(pred, 1e-7) + 1)
    second = np.log(np.maximum(target, 1e-7) + 1)
    np.testing.assert_allclose(values, (first - second) ** 2, rtol=1e-12)
    assert grad[0] == 0 and grad[1] == 0 and grad[2] == 0  # clipped: no gradient
    assert grad[3] == pytest.approx(2 * (first[3] - second[3]) / 3.0, rel=1e-12)


def test_mae_subgradient_zero_at_zero():
    pred = np.array([1.0, 2.0, -3.0])
    _, grad = fl.MeanAbsoluteError(reduction="sum").value_and_grad(pred, pred.copy())
    np.testing.assert_array_equal(grad, np.zeros(3))


def test_label_smoothing_one_gives_half_targets(rng):
    pred = rng.uniform(0.05, 0.95, 20)
    target = rng.choice([0.0, 1.0], 20)
    smoothed = fl.BinaryCrossEntropy(label_smoothing=1.0)
    half = fl.BinaryCrossEntropy()
    assert smoothed(pred, target) == pytest.approx(half(pred, np.full(20, 0.5)), rel=1e-13)


def test_pos_weight_broadcasts_over_last_axis(rng):
    pred = rng.normal(size=(4, 3, 5))
    target = rng.choice([0.0, 1.0], (4, 3, 5))
    pos_weight = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight)
    want = F.binary_cross_entropy_with_logits(torch.tensor(pred), torch.tensor(target),
                                              pos_weight=torch.tensor(pos_weight))
    assert loss(pred, target) == pytest.approx(want.item(), rel=1e-13)


def test_pos_weight_of_ones_changes_nothing(rng):
    pred = rng.normal(size=(6, 4))
    target = rng.uniform(size=(6, 4))
    plain = fl.BinaryCrossEntropy(from_logits=True).value_and_grad(pred, target)
    ones = fl.BinaryCrossEntropy(from_logits=True, pos_weight=np.ones(4)).value_and_grad(
        pred, target)
    assert ones[0] == pytest.approx(plain[0], rel=1e-14)
    np.testing.assert_allclose(ones[1], plain[1], rtol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_large_random_sweep(case_id, dtype, set_threads):
    """Many sizes (every remainder of the vector loops, chunks and rows)."""
    rng = np.random.default_rng(7)
    name = CASES[case_id][0]
    for n in list(range(1, 70)) + [1000, 4099, 65537]:
        for shape in ((n,), (3, n)):
            params, pred, target = make_case(case_id, shape, dtype, rng)
            weight = rng.uniform(0, 2, shape[0]).astype(dtype)
            loss = fl.get(name, **params)
            want_value, want_grad = reference(name, params, pred, target, weight, "mean")
            for n_threads in (1, 2):
                set_threads(n_threads)
                value, grad = loss.value_and_grad(pred, target, weight)
                assert_close(value, want_value, dtype)
                assert_close(grad, want_grad, dtype)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float32_terms_are_accumulated_in_float64(reduction, set_threads):
    """A float32 accumulator would drop the small terms after the large ones."""
    set_threads(1)
    pred = np.ones(100_064, dtype=np.float32)
    pred[:64] = 1e4  # one large term in every vector lane first: 1e8 each
    target = np.zeros_like(pred)
    exact = math.fsum([1e8] * 64 + [1.0] * 100_000)
    if reduction == "mean":
        exact /= pred.size
    loss = fl.MeanSquaredError(reduction=reduction)
    assert loss(pred, target) == pytest.approx(exact, rel=1e-12)
    assert loss.value_and_grad(pred, target)[0] == pytest.approx(exact, rel=1e-12)
