"""The pointwise losses at their extremes and in their documented semantics.

What every loss keeps (values and gradients against the NumPy reference for every dtype,
reduction, weighting and layout, threads, finite differences) is checked for every
registered loss in test_contract.py.  Here: exact parity with PyTorch and the Keras
formulas where the inputs are extreme (probabilities 0 and 1, huge logits and residuals,
empty batches, NaN), and the semantics particular to each loss (label conventions,
clipping, smoothing, per-class weights, float64 accumulation).  The formulas of the
peers are those of ``fastloss/_tools/reference.py``.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastloss as fl
from fastloss._tools import reference
from fastloss._tools.reference import REFERENCES

#: every pointwise variant of the references: (name, params, input options) (a loss
#: without a reference fails test_contract.py)
POINTWISE_VARIANTS = [(name, params, options)
                      for name in fl.available()
                      if name in REFERENCES and REFERENCES[name].pointwise
                      for params, options in REFERENCES[name].variants]


def variant_id(variant):
    name, params, options = variant
    parts = [f"{k}={'per-class' if np.ndim(v) else v}" for k, v in params.items()]
    return f"{name}({','.join(parts + [f'{k}={v}' for k, v in options.items()])})"


def reference_inputs(name, params, options, shape, rng):
    return REFERENCES[name].inputs(rng, shape, params, **options)


def torch_terms(name, params, pred, target):
    """The per-element terms of the reference's PyTorch formulation and their
    derivatives by autograd, in the inputs' dtype."""
    x = torch.tensor(pred, requires_grad=True)
    terms = reference.torch_loss(name, x, torch.tensor(target), params, "none")
    terms.sum().backward()  # each term depends on its own element only
    return terms.detach().numpy(), x.grad.numpy()


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["mse", "mae", "huber", "pseudo_huber", "log_cosh"])
def test_huge_residuals_like_torch(name, dtype):
    """Residuals up to the dtype's overflow, torch computing in the same dtype."""
    big = HUGE[dtype]
    top = np.finfo(dtype).max / 2
    pred = np.array([big, -big, 3 * big, 1.0, -7.0, top, -top, 30.0], dtype=dtype)
    target = np.array([-big, big, 0.0, -big, 7.0, 0.0, 0.0, -30.0], dtype=dtype)
    value, grad = fl.get(name, reduction="none").value_and_grad(pred, target)
    want_value, want_grad = torch_terms(name, {}, pred, target)
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
@pytest.mark.parametrize("name, labels", [
    ("hinge", [1, -1, -1, 1, 1]), ("squared_hinge", [1, 0, 0, 1, 1]),
    ("msle", [0, "big", "big", 0, 2])], ids=["hinge_pm1", "squared_hinge_01", "msle"])
def test_huge_values_keras_formulas(name, labels, dtype):
    big = HUGE[dtype]
    pred = np.array([big, -big, big, -big, 0.5], dtype=dtype)
    target = np.array([big if label == "big" else label for label in labels], dtype=dtype)
    value, grad = fl.get(name, reduction="none").value_and_grad(pred, target)
    # the Keras formulas of the reference, in float64
    terms, grads = REFERENCES[name].numpy(pred.astype(np.float64),
                                          target.astype(np.float64), 1.0)
    with np.errstate(over="ignore"):
        terms_in_dtype = terms.astype(dtype)
    assert np.array_equal(np.isinf(value), np.isinf(terms_in_dtype))
    finite = np.isfinite(terms_in_dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(value[finite], terms[finite], rtol=rtol)
    np.testing.assert_allclose(grad, grads, rtol=rtol)


# losses that are a torch.nn.functional call (the reference's PyTorch formulation)
TORCH_FUNCTIONS = {
    "mse": ("mse", {}), "mae": ("mae", {}), "huber": ("huber", {}),
    "bce": ("binary_cross_entropy", {}),
    "bce_logits": ("binary_cross_entropy", {"from_logits": True}),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (0,), (0, 3), (3, 0)],
                         ids=["0d", "1", "1x1", "empty", "0x3", "3x0"])
@pytest.mark.parametrize("case_id", list(TORCH_FUNCTIONS))
def test_tiny_and_empty_batches_like_torch(case_id, shape, reduction):
    name, params = TORCH_FUNCTIONS[case_id]
    pred = np.full(shape, 0.3)
    target = np.full(shape, 1.0)
    loss = fl.get(name, reduction=reduction, **params)
    value, grad = loss.value_and_grad(pred, target)
    want_value, want_grad = torch_same_dtype(
        lambda x, t, r: reference.torch_loss(name, x, t, params, r), pred, target,
        reduction)
    if reduction == "none":
        assert isinstance(value, np.ndarray) and value.shape == shape
    else:
        assert type(value) is float
    np.testing.assert_allclose(value, want_value, rtol=1e-14)  # nan == nan here
    assert grad.shape == shape
    np.testing.assert_allclose(grad, want_grad, rtol=1e-14)
    np.testing.assert_allclose(loss(pred, target), value, rtol=1e-15)


@pytest.mark.parametrize("variant", POINTWISE_VARIANTS, ids=variant_id)
def test_nan_prediction_propagates(variant, rng, set_threads, parallel_always):
    name, params, options = variant
    # last axis of 5: the per-class pos_weight of the variants
    pred, target = reference_inputs(name, params, options, (4, 4, 5), rng)
    pred[2, 3, 1] = np.nan
    for n_threads in (1, 2):
        set_threads(n_threads)
        assert math.isnan(fl.get(name, **params)(pred, target))
        assert math.isnan(fl.get(name, reduction="sum", **params)(pred, target))
        values, grad = fl.get(name, reduction="none", **params).value_and_grad(pred, target)
        assert np.isnan(values[2, 3, 1])
        finite = np.ones(pred.shape, dtype=bool)
        finite[2, 3, 1] = False
        assert np.all(np.isfinite(values[finite])) and np.all(np.isfinite(grad[finite]))


@pytest.mark.parametrize("name, params", [
    ("mse", {}), ("mae", {}), ("huber", {}), ("pseudo_huber", {}), ("log_cosh", {}),
    ("binary_cross_entropy", {"from_logits": True}),
    ("binary_cross_entropy",
     {"from_logits": True, "pos_weight": [0.5, 1.0, 2.0, 1.5, 0.8]})],
    ids=["mse", "mae", "huber", "pseudo_huber", "log_cosh", "bce_logits",
         "bce_logits_pos_weight"])
def test_nan_prediction_gradient_like_torch(name, params, rng):
    pred, target = reference_inputs(name, params, {}, (3, 5), rng)
    pred[1, 2] = np.nan
    pred[0, 0] = target[0, 0]  # also the kink of mae (torch: subgradient 0)
    _, grad = fl.get(name, reduction="none", **params).value_and_grad(pred, target)
    _, want = torch_terms(name, params, pred, target)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_msle_clipped_inputs_in_the_vector_loops(dtype, rng):
    """Negative and tiny values among others, through every loop (rows of 70, weights):
    the Keras clip at 1e-7, no gradient where y_pred is clipped."""
    pred = rng.uniform(-0.5, 5, (5, 70)).astype(dtype)
    target = rng.uniform(-0.2, 5, (5, 70)).astype(dtype)
    pred[:, ::9] = 1e-9
    weight = rng.uniform(0, 2, 5).astype(dtype)
    value, grad = fl.MeanSquaredLogarithmicError(reduction="sum").value_and_grad(
        pred, target, weight)
    terms, want_grad = REFERENCES["msle"].numpy(pred.astype(np.float64),
                                                target.astype(np.float64), weight[:, None])
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert value == pytest.approx(float(np.sum(terms * weight[:, None])), rel=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol,
                               atol=rtol * np.abs(want_grad).max())
    assert np.all(grad[pred <= 1e-7] == 0)


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
