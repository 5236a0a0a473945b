"""The softmax passes of the logits row losses against PyTorch, at every class count.

The kernels read the rows of (N, C) logits in one of three ways, chosen by C and the
dtype: short rows in blocks of many rows (up to 32 classes every loop across the rows,
one long exp loop), and rows of more than 256 classes one at a time: in float32 through
the online pass, in chunks of 512 elements whose exponentials are taken against the
running max and rescaled by the gradient loop, in float64 max first, then exp and sum
(so both dtypes below cover every path).  The class counts below put rows on both sides of each threshold (one
class, a single vector, a block's maxes across rows or per row, one chunk, exactly one
chunk, a chunk and one element, many chunks), and the rows are built to move the max
where the online pass must rescale: late (every chunk raises it), early (no chunk
does), -inf before the first finite logit (a whole first chunk of them), all equal.

References: torch autograd in float64 of the float32/float64 inputs, through
``fastloss/_tools/reference.py``.
"""
import numpy as np
import pytest

import fastloss as fl
from fastloss._tools import reference

torch = pytest.importorskip("torch")

DTYPES = (np.float32, np.float64)
CLASS_COUNTS = (1, 2, 7, 10, 16, 17, 33, 256, 257, 511, 512, 513, 1000, 1500, 5000)
PATTERNS = ("random", "max_late", "max_early", "minus_inf", "leading_minus_inf",
            "all_equal")


def logits(rng, n, c, dtype, pattern, scale=3.0):
    """(n, c) logits of a pattern (see the module docstring)."""
    x = rng.normal(size=(n, c)) * scale
    if pattern == "max_late":
        x += np.linspace(0, 40, c)         # rises along the row: a new max in each chunk
    elif pattern == "max_early":
        x += np.linspace(40, 0, c)
    elif pattern == "minus_inf":
        x[rng.uniform(size=(n, c)) < 0.3] = -np.inf
        x[:, rng.integers(0, c)] = 1.0     # at least one finite logit per row
    elif pattern == "leading_minus_inf":
        x[:, : max(c - 3, 0)] = -np.inf    # every chunk but the last: -inf only
    elif pattern == "all_equal":
        x[:] = 0.75
    return x.astype(dtype)


def labels_for(rng, x):
    """Labels of finite logits (a -inf label logit gives an infinite loss)."""
    n, c = x.shape
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = rng.choice(np.flatnonzero(np.isfinite(x[i])))
    return out


def probabilities_for(rng, x):
    """Probability targets, zero where the logit is -inf (0 log 0 as torch)."""
    p = rng.dirichlet(np.ones(x.shape[1]), size=x.shape[0]) * np.isfinite(x)
    return p / p.sum(axis=1, keepdims=True)


def torch_value_and_grad(name, x, target, reduction, **params):
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    tt = torch.tensor(target)
    if tt.is_floating_point():
        tt = tt.to(torch.float64)
    value = reference.torch_loss(name, xt, tt, params, reduction)
    (grad,) = torch.autograd.grad(value.sum(), xt)
    return value.detach().numpy(), grad.numpy()


def assert_close(actual, expected, dtype, what):
    actual = np.asarray(actual, dtype=np.float64)
    rtol = 3e-5 if np.dtype(dtype) == np.float32 else 1e-10
    finite = np.isfinite(expected)
    scale = np.max(np.abs(expected[finite])) if finite.any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-3),
                               err_msg=what)


def check(loss, x, target, reduction="none", **params):
    expected_value, expected_grad = torch_value_and_grad(loss.name, x, target, reduction,
                                                         **params)
    value, grad = loss.value_and_grad(x, target)
    what = f"{loss!r} C={x.shape[1]} {x.dtype}"
    assert_close(value, expected_value, x.dtype, f"value of {what}")
    assert_close(grad, expected_grad, x.dtype, f"grad of {what}")
    # the value without the gradient (a scratch row instead of the gradient rows)
    assert_close(loss(x, target), expected_value, x.dtype, f"value only of {what}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparse_logits_every_pass(dtype, c, pattern):
    rng = np.random.default_rng(c)
    x = logits(rng, 5, c, dtype, pattern)
    y = labels_for(rng, x)
    check(fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="none"), x, y,
          from_logits=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 33, 257, 1000, 5000))
@pytest.mark.parametrize("pattern", ("random", "max_late", "leading_minus_inf"))
def test_sparse_logits_options_every_pass(dtype, c, pattern):
    # smoothing reads every logit of the row (a -inf one makes it infinite: not here),
    # class weights and z_loss enter the gradient's factor, an ignored row is zero
    rng = np.random.default_rng(c + 1)
    x = logits(rng, 6, c, dtype, "random" if pattern == "leading_minus_inf" else pattern)
    y = labels_for(rng, x)
    y[2] = -100
    params = dict(from_logits=True, label_smoothing=0.2,
                  class_weight=rng.uniform(0.5, 2.0, size=c), z_loss=1e-3)
    for reduction in ("none", "mean"):
        check(fl.SparseCategoricalCrossEntropy(reduction=reduction, **params), x, y,
              reduction, **params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("pattern", ("random", "max_late", "max_early", "all_equal"))
def test_categorical_logits_every_pass(dtype, c, pattern):
    rng = np.random.default_rng(c + 2)
    x = logits(rng, 4, c, dtype, pattern)
    t = probabilities_for(rng, x).astype(dtype)
    params = dict(from_logits=True, label_smoothing=0.1,
                  class_weight=rng.uniform(0.5, 2.0, size=c), z_loss=1e-3)
    check(fl.CategoricalCrossEntropy(reduction="none", **params), x, t, **params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CLASS_COUNTS)
@pytest.mark.parametrize("log_target, pattern", [
    (False, "random"), (False, "max_late"), (False, "minus_inf"),
    (True, "random"), (True, "max_late")])   # a log-target at a -inf logit: inf
def test_kl_logits_every_pass(dtype, c, log_target, pattern):
    rng = np.random.default_rng(c + 3)
    x = logits(rng, 4, c, dtype, pattern)
    p = probabilities_for(rng, x)
    if log_target:
        p = np.log(np.maximum(p, 1e-30))
    params = dict(from_logits=True, log_target=log_target)
    check(fl.KLDivergence(reduction="none", **params), x, p.astype(dtype), **params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 257, 1000, 5000))
@pytest.mark.parametrize("pattern", ("random", "max_late"))
def test_focal_logits_every_pass(dtype, c, pattern):
    rng = np.random.default_rng(c + 4)
    x = logits(rng, 4, c, dtype, pattern, scale=1.0)
    t = probabilities_for(rng, x).astype(dtype)
    params = dict(from_logits=True, gamma=2.0, alpha=0.25)
    check(fl.CategoricalFocalCrossEntropy(reduction="none", **params), x, t, **params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 1000, 5000))
@pytest.mark.parametrize("offset", (1e4, -1e4, 1e30))
def test_large_logits_every_pass(dtype, c, offset):
    # a small loss next to huge logits keeps its digits: the shifted logits only ever
    # enter products, on both passes
    rng = np.random.default_rng(c + 5)
    x = logits(rng, 4, c, np.float64, "max_late").astype(dtype)
    x = (x.astype(np.float64) * (abs(offset) / 1e4) + offset).astype(dtype)
    y = labels_for(rng, x)
    y[:2] = np.argmax(x[:2], axis=1)        # near-zero losses
    check(fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="none"), x, y,
          from_logits=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 300, 1000, 5000))
@pytest.mark.parametrize("position", ("first", "middle", "last"))
@pytest.mark.parametrize("bad", (np.nan, np.inf))
def test_nan_and_inf_propagate_every_pass(dtype, c, position, bad):
    # torch: a NaN or +inf logit makes the row's softmax NaN, whatever chunk holds it
    rng = np.random.default_rng(c + 6)
    x = logits(rng, 3, c, dtype, "max_late")
    col = {"first": 0, "middle": c // 2, "last": c - 1}[position]
    x[1, col] = bad
    y = labels_for(rng, np.where(np.isfinite(x), x, 0))
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="none")
    value, grad = loss.value_and_grad(x, y)
    expected_value, expected_grad = torch_value_and_grad(loss.name, x, y, "none",
                                                         from_logits=True)
    np.testing.assert_array_equal(np.isnan(value), np.isnan(expected_value))
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected_grad))
    assert np.isnan(value[1]) and np.isnan(grad[1]).all()
    keep = [0, 2]
    assert_close(value[keep], expected_value[keep], dtype, "rows without a bad logit")
    assert_close(grad[keep], expected_grad[keep], dtype, "rows without a bad logit")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 1000, 5000))
def test_row_of_minus_inf_is_nan_as_torch(dtype, c):
    x = np.zeros((3, c), dtype=dtype)
    x[1] = -np.inf
    y = np.zeros(3, dtype=np.int64)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="none")
    value, grad = loss.value_and_grad(x, y)
    expected_value, expected_grad = torch_value_and_grad(loss.name, x, y, "none",
                                                         from_logits=True)
    assert np.isnan(expected_value[1]) and np.isnan(value[1])
    assert np.isnan(grad[1]).all() and np.isnan(expected_grad[1]).all()
    assert_close(value[[0, 2]], expected_value[[0, 2]], dtype, "finite rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", (10, 1000, 5000))
def test_passes_give_the_same_bits_with_threads(dtype, c, set_threads, parallel_always):
    rng = np.random.default_rng(c + 7)
    x = logits(rng, 37, c, dtype, "max_late")
    y = labels_for(rng, x)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, label_smoothing=0.1)
    set_threads(1)
    value_1, grad_1 = loss.value_and_grad(x, y)
    set_threads(2)
    value_2, grad_2 = loss.value_and_grad(x, y)
    assert value_1 == value_2
    np.testing.assert_array_equal(grad_1, grad_2)
    expected_value, expected_grad = torch_value_and_grad(
        loss.name, x, y, "mean", from_logits=True, label_smoothing=0.1)
    assert_close(value_2, expected_value, dtype, "value")
    assert_close(grad_2, expected_grad, dtype, "grad")
