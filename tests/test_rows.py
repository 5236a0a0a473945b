"""The row losses against PyTorch (logits, KL, multi-margin) and Keras (probabilities).

What every loss keeps (values and gradients against the NumPy reference for every dtype,
reduction, weighting and layout, threads, finite differences, bad input) is checked for
every registered loss in test_contract.py.  Here: exact parity with PyTorch and the
Keras formulas over the full matrix of each loss's options, and the extremes (huge and
infinite logits, clipped probabilities, ignored rows, one class, NaN).

References are computed in float64 with torch autograd, through the PyTorch
formulations of ``fastloss/_tools/reference.py`` (``torch.nn.functional`` wherever it
has the loss); float32 results are compared with the float64 reference of the same
(float32) inputs at float32 tolerances.
"""
import numpy as np
import pytest

import fastloss as fl
from fastloss import _threads
from fastloss._tools import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
KERAS_EPSILON = 1e-7


# -- helpers -------------------------------------------------------------------------

def rtol_for(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-10


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    rtol = rtol_for(dtype)
    finite = np.isfinite(expected)
    scale = np.max(np.abs(expected[finite])) if finite.any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-3),
                               err_msg=what)


def torch_value_and_grad(fn, x):
    """fn(x as a float64 leaf tensor) -> value; returns (value, d sum(value) / dx)."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    value = fn(xt)
    (grad,) = torch.autograd.grad(value.sum(), xt)
    return value.detach().numpy(), grad.numpy()


def as_tensor(a):
    return None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))


def torch_reference(name, target, reduction, sample_weight=None, **params):
    """fn(x) for torch_value_and_grad: loss ``name`` of the reference's PyTorch
    formulation (sample_weight scaling each row, "mean" dividing by the unweighted
    count, as fastloss defines them)."""
    target = torch.tensor(np.asarray(target))
    if target.is_floating_point():
        target = target.to(torch.float64)

    def fn(xt):
        return reference.torch_loss(name, xt, target, params, reduction,
                                    as_tensor(sample_weight))
    return fn


def check_against(loss, x, y, fn, sample_weight=None, what=""):
    expected_value, expected_grad = torch_value_and_grad(fn, x)
    value, grad = loss.value_and_grad(x, y, sample_weight=sample_weight)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    if loss.reduction == "none":
        assert value.shape == (x.shape[0],)
    else:
        assert isinstance(value, float)
    assert_close(value, expected_value, x.dtype, f"value {what}")
    assert_close(grad, expected_grad, x.dtype, f"grad {what}")
    # the unfused entry points agree with the fused one
    assert_close(loss(x, y, sample_weight=sample_weight), expected_value, x.dtype, what)
    assert_close(loss.grad(x, y, sample_weight=sample_weight), expected_grad, x.dtype, what)


def random_problem(rng, n, c, dtype, scale=2.0):
    x = (rng.normal(size=(n, c)) * scale).astype(dtype)
    probs = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    labels = rng.integers(0, c, size=n)
    return x, probs, labels


# -- Keras formulas ---------------------------------------------------------------

def keras_categorical_numpy(target, output):
    """Keras categorical_crossentropy of probabilities, NumPy backend
    (keras/src/backend/numpy/nn.py, categorical_crossentropy, from_logits=False):

        output = output / np.sum(output, axis, keepdims=True)
        output = np.clip(output, backend.epsilon(), 1.0 - backend.epsilon())
        log_prob = np.log(output)
        return -np.sum(target * log_prob, axis=axis)

    computed in the inputs' dtype as Keras does.
    """
    output = output / np.sum(output, -1, keepdims=True)
    output = np.clip(output, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -np.sum(target * np.log(output), axis=-1)


def keras_smooth(target, smoothing):
    """keras/src/losses/losses.py categorical_crossentropy:
    y_true * (1.0 - label_smoothing) + (label_smoothing / num_classes)."""
    return target * (1.0 - smoothing) + smoothing / target.shape[-1]


def one_hot(labels, c, dtype=np.float64):
    out = np.zeros((len(labels), c), dtype=dtype)
    valid = (labels >= 0) & (labels < c)
    out[np.arange(len(labels))[valid], labels[valid]] = 1
    return out


# -- sparse categorical cross-entropy from logits: the full option matrix --------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, -100, 2])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_sparse_logits_matches_torch(dtype, reduction, weighted, ignore, smoothing, z_loss,
                                     with_sample_weight):
    rng = np.random.default_rng(1)
    n, c = 11, 5
    x, _, labels = random_problem(rng, n, c, dtype)
    ignore_index = -100 if ignore is None else ignore
    if ignore is not None:
        labels[[1, 4, 7]] = ignore
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    loss = fl.SparseCategoricalCrossEntropy(
        from_logits=True, label_smoothing=smoothing, class_weight=weight,
        ignore_index=ignore_index, z_loss=z_loss, reduction=reduction)
    expected = torch_reference(
        "sparse_categorical_cross_entropy", labels, reduction, sample_weight,
        from_logits=True, label_smoothing=smoothing, class_weight=weight,
        ignore_index=ignore_index, z_loss=z_loss)
    for label_dtype in (np.int32, np.int64):
        check_against(loss, x, labels.astype(label_dtype), expected, sample_weight,
                      f"{label_dtype.__name__}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_logits_equals_nll_loss_of_log_softmax(reduction):
    rng = np.random.default_rng(2)
    x, _, labels = random_problem(rng, 9, 4, np.float64)
    labels[3] = -1
    weight = rng.uniform(0.5, 1.5, size=4)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, class_weight=weight,
                                            ignore_index=-1, reduction=reduction)
    check_against(loss, x, labels, lambda xt: F.nll_loss(
        F.log_softmax(xt, 1), torch.tensor(labels), weight=as_tensor(weight),
        ignore_index=-1, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_every_row_ignored(dtype, smoothing, weighted):
    x = np.random.default_rng(3).normal(size=(4, 3)).astype(dtype)
    labels = np.full(4, -100)
    weight = [1.0, 2.0, 3.0] if weighted else None
    mean = fl.SparseCategoricalCrossEntropy(from_logits=True, label_smoothing=smoothing,
                                            class_weight=weight)
    value, grad = mean.value_and_grad(x, labels)
    xt = torch.tensor(x, requires_grad=True)
    expected = F.cross_entropy(xt, torch.tensor(labels), weight=as_tensor(weight) if
                               weight is None else torch.tensor(weight, dtype=xt.dtype),
                               label_smoothing=smoothing)
    (expected_grad,) = torch.autograd.grad(expected, xt)
    assert np.isnan(value) and np.isnan(expected.item())
    np.testing.assert_array_equal(grad, expected_grad.numpy())
    assert np.all(grad == 0)
    total = fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="sum",
                                             z_loss=0.5, label_smoothing=smoothing)
    assert total(x, labels) == 0.0
    rows, grad = fl.SparseCategoricalCrossEntropy(
        from_logits=True, reduction="none", z_loss=0.5).value_and_grad(x, labels)
    assert np.all(rows == 0) and np.all(grad == 0)


def test_sparse_zero_total_class_weight_gives_nan_as_torch():
    x = np.random.default_rng(4).normal(size=(3, 4))
    labels = np.array([0, 1, 0])
    weight = np.array([0.0, 0.0, 1.0, 1.0])
    for smoothing in (0.0, 0.1):
        loss = fl.SparseCategoricalCrossEntropy(from_logits=True, class_weight=weight,
                                                label_smoothing=smoothing)
        value, grad = loss.value_and_grad(x, labels)
        expected, expected_grad = torch_value_and_grad(
            lambda xt: F.cross_entropy(xt, torch.tensor(labels), weight=as_tensor(weight),
                                       label_smoothing=smoothing), x)
        np.testing.assert_array_equal(np.isnan(value), np.isnan(expected))
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected_grad))


# -- categorical cross-entropy from logits ---------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("with_sample_weight", [False, True])
@pytest.mark.parametrize("targets", ["soft", "one_hot"])
def test_categorical_logits_matches_torch(dtype, reduction, weighted, smoothing, z_loss,
                                          with_sample_weight, targets):
    rng = np.random.default_rng(5)
    n, c = 10, 6
    x, probs, labels = random_problem(rng, n, c, dtype)
    target = probs if targets == "soft" else one_hot(labels, c, dtype)
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    loss = fl.CategoricalCrossEntropy(from_logits=True, label_smoothing=smoothing,
                                      class_weight=weight, z_loss=z_loss,
                                      reduction=reduction)
    check_against(loss, x, target,
                  torch_reference("categorical_cross_entropy", target, reduction,
                                  sample_weight, from_logits=True,
                                  label_smoothing=smoothing, class_weight=weight,
                                  z_loss=z_loss), sample_weight)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_with_one_hot_equals_sparse(reduction, from_logits):
    rng = np.random.default_rng(6)
    x, probs, labels = random_problem(rng, 8, 5, np.float64)
    if not from_logits:
        x = probs
    kwargs = dict(from_logits=from_logits, label_smoothing=0.2,
                  class_weight=rng.uniform(0.5, 2, 5), reduction=reduction,
                  z_loss=0.1 if from_logits else 0.0)
    sw = rng.uniform(0, 1, 8)
    dense = fl.CategoricalCrossEntropy(**kwargs).value_and_grad(x, one_hot(labels, 5), sw)
    sparse = fl.SparseCategoricalCrossEntropy(**kwargs).value_and_grad(x, labels, sw)
    np.testing.assert_allclose(dense[0], sparse[0], rtol=1e-12)
    np.testing.assert_allclose(dense[1], sparse[1], rtol=1e-12, atol=1e-15)


# -- probabilities: the Keras formula ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_categorical_probabilities_match_keras(dtype, reduction, weighted, smoothing,
                                               with_sample_weight):
    rng = np.random.default_rng(7)
    n, c = 9, 5
    _, target, _ = random_problem(rng, n, c, dtype)
    # unnormalised probabilities: Keras renormalises each row
    x = rng.uniform(0.05, 1.0, size=(n, c)).astype(dtype)
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    loss = fl.CategoricalCrossEntropy(label_smoothing=smoothing, class_weight=weight,
                                      reduction=reduction)
    check_against(loss, x, target,
                  torch_reference("categorical_cross_entropy", target, reduction,
                                  sample_weight, label_smoothing=smoothing,
                                  class_weight=weight), sample_weight)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_sparse_probabilities_match_keras(dtype, reduction, weighted, smoothing,
                                          with_sample_weight):
    rng = np.random.default_rng(8)
    n, c = 9, 5
    _, _, labels = random_problem(rng, n, c, dtype)
    labels[2] = -100
    x = rng.uniform(0.05, 1.0, size=(n, c)).astype(dtype)
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    # the one-hot target of each label smoothed as Keras smooths categorical targets; the
    # ignored row adds nothing, "mean" divides by the kept rows' class weights
    loss = fl.SparseCategoricalCrossEntropy(label_smoothing=smoothing, class_weight=weight,
                                            reduction=reduction)
    check_against(loss, x, labels,
                  torch_reference("sparse_categorical_cross_entropy", labels, reduction,
                                  sample_weight, label_smoothing=smoothing,
                                  class_weight=weight), sample_weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_values_equal_keras_numpy_formula(dtype):
    """Value parity with the Keras NumPy backend, computed in the inputs' dtype."""
    rng = np.random.default_rng(9)
    n, c = 64, 7
    x = rng.uniform(0, 1, size=(n, c)).astype(dtype)
    x[0] = [1, 0, 0, 0, 0, 0, 0]          # clipped at both ends
    x[1, :3] = 0                           # zeros clipped to epsilon
    _, target, labels = random_problem(rng, n, c, dtype)
    rows = fl.CategoricalCrossEntropy(reduction="none")(x, target)
    expected = keras_categorical_numpy(target, x)
    assert expected.dtype == dtype
    assert_close(rows, expected, dtype)
    rows = fl.SparseCategoricalCrossEntropy(reduction="none")(x, labels)
    assert_close(rows, keras_categorical_numpy(one_hot(labels, c, dtype), x), dtype)
    mean = fl.CategoricalCrossEntropy(label_smoothing=0.1)(x, target)
    assert_close(mean, keras_categorical_numpy(keras_smooth(target, 0.1), x).mean(), dtype)


def test_probabilities_gradient_is_zero_where_clipped():
    x = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    target = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    value, grad = fl.CategoricalCrossEntropy(reduction="none").value_and_grad(x, target)
    expected, expected_grad = torch_value_and_grad(
        torch_reference("categorical_cross_entropy", target, "none"), x)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)
    assert np.all(grad[0] == 0)  # every class clipped
    assert value[0] == pytest.approx(-np.log(1 - 1e-7))


# -- KL divergence ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_kl_divergence_matches_torch(dtype, reduction, from_logits, log_target,
                                     with_sample_weight):
    rng = np.random.default_rng(10)
    n, c = 8, 6
    x, target, _ = random_problem(rng, n, c, dtype)
    target[0, :2] = 0                     # 0 log 0 = 0
    target[0] /= target[0].sum()
    if not from_logits:
        x = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    if log_target:
        target = np.log(rng.dirichlet(np.ones(c), size=n)).astype(dtype)
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    loss = fl.KLDivergence(from_logits=from_logits, log_target=log_target,
                           reduction=reduction)
    check_against(loss, x, target,
                  torch_reference("kl_divergence", target, reduction, sample_weight,
                                  from_logits=from_logits, log_target=log_target),
                  sample_weight)


def test_kl_probabilities_with_zero_prediction_stays_finite():
    x = np.array([[0.0, 0.5, 0.5]])
    target = np.array([[0.2, 0.3, 0.5]])
    value, grad = fl.KLDivergence().value_and_grad(x, target)
    # torch's kl_div of log q floored at -100, as binary_cross_entropy floors its logs
    expected, expected_grad = torch_value_and_grad(
        lambda xt: F.kl_div(torch.clamp(torch.log(xt), min=-100), as_tensor(target),
                            reduction="batchmean"), x)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-12)
    # torch's autograd of clamp(log q, -100) at q = 0 is 0 * inf = nan; the floored log
    # is flat there, so fastloss gives its derivative, 0
    np.testing.assert_allclose(grad[0, 1:], expected_grad[0, 1:], rtol=1e-12)
    assert grad[0, 0] == 0


# -- multi-margin ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3, -0.5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_multi_margin_matches_torch(dtype, reduction, p, margin, weighted,
                                    with_sample_weight):
    rng = np.random.default_rng(11)
    n, c = 12, 5
    x, _, labels = random_problem(rng, n, c, dtype, scale=0.7)
    weight = rng.uniform(0.2, 2.0, size=c) if weighted else None
    sample_weight = rng.uniform(0, 2, size=n).astype(dtype) if with_sample_weight else None
    loss = fl.MultiMargin(margin=margin, p=p, class_weight=weight, reduction=reduction)
    expected = torch_reference("multi_margin", labels, reduction, sample_weight,
                               margin=margin, p=p, class_weight=weight)
    for label_dtype in (np.int32, np.int64):
        check_against(loss, x, labels.astype(label_dtype), expected, sample_weight)


def test_multi_margin_nan_scores_follow_torch():
    x = np.array([[np.nan, 0.2, 0.1], [0.3, np.nan, 0.5]])
    labels = np.array([0, 0])
    value, grad = fl.MultiMargin(reduction="none").value_and_grad(x, labels)
    expected, expected_grad = torch_value_and_grad(
        lambda xt: F.multi_margin_loss(xt, torch.tensor(labels), reduction="none"), x)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)


# -- cross-checks ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_two_class_cross_entropy_equals_binary_cross_entropy_with_logits(dtype):
    rng = np.random.default_rng(12)
    logit = (rng.normal(size=20) * 3).astype(dtype)
    t = rng.uniform(size=20).astype(dtype)
    scores = np.stack([logit / 2, -logit / 2], axis=1)
    target = np.stack([t, 1 - t], axis=1)
    ce, ce_grad = fl.CategoricalCrossEntropy(from_logits=True, reduction="none") \
        .value_and_grad(scores, target)
    bce, bce_grad = fl.BinaryCrossEntropy(from_logits=True, reduction="none") \
        .value_and_grad(logit, t)
    assert_close(ce, bce, dtype)
    # chain rule through the scores (x/2, -x/2)
    assert_close((ce_grad[:, 0] - ce_grad[:, 1]) / 2, bce_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_equals_cross_entropy_minus_entropy(dtype):
    rng = np.random.default_rng(13)
    x, p, _ = random_problem(rng, 15, 6, dtype)
    p[0, 1] = 0
    kl, kl_grad = fl.KLDivergence(from_logits=True, reduction="none").value_and_grad(x, p)
    ce, ce_grad = fl.CategoricalCrossEntropy(from_logits=True, reduction="none") \
        .value_and_grad(x, p)
    p64 = p.astype(np.float64)
    entropy = -np.sum(np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1)), 0), 1)
    assert_close(kl, ce - entropy, dtype)
    assert_close(kl_grad, ce_grad, dtype)


# -- sizes and extreme inputs -----------------------------------------------------------

def check_logits_losses(x, probs, labels):
    """Sparse and categorical cross-entropy and KL divergence of logits against torch."""
    check_against(fl.SparseCategoricalCrossEntropy(from_logits=True, label_smoothing=0.1),
                  x, labels, lambda xt: F.cross_entropy(xt, torch.tensor(labels),
                                                        label_smoothing=0.1))
    check_against(fl.CategoricalCrossEntropy(from_logits=True, reduction="sum"), x, probs,
                  lambda xt: F.cross_entropy(xt, as_tensor(probs), reduction="sum"))
    check_against(fl.KLDivergence(from_logits=True), x, probs,
                  lambda xt: F.kl_div(F.log_softmax(xt, 1), as_tensor(probs),
                                      reduction="batchmean"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (1, 7), (3, 2), (4, 32000), (300, 10)])
def test_shapes_match_torch(dtype, shape):
    rng = np.random.default_rng(15)
    x, probs, labels = random_problem(rng, *shape, dtype)
    check_logits_losses(x, probs, labels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 31, 32, 33, 255, 256, 257, 1025])
def test_softmax_paths_match_torch(dtype, c):
    """Each way of the softmax pass: maxes taken across the rows of a block (C <= 32),
    blocks of rows (C <= 256), one row at a time; the row count leaves a partial block."""
    rng = np.random.default_rng(17)
    x, probs, labels = random_problem(rng, 2048 // c + 3, c, dtype)
    check_logits_losses(x, probs, labels)


@pytest.mark.parametrize("c", [3, 40, 300])
def test_nan_logit_anywhere_propagates_to_its_row_only(c):
    rng = np.random.default_rng(18)
    for position in sorted({0, 1, c // 2, c - 1}):
        x = rng.normal(size=(2048 // c + 3, c))
        x[1, position] = np.nan
        labels = rng.integers(0, c, size=x.shape[0])
        value, grad = fl.SparseCategoricalCrossEntropy(
            from_logits=True, reduction="none").value_and_grad(x, labels)
        assert np.isnan(value[1]) and np.all(np.isnan(grad[1])), position
        others = np.arange(x.shape[0]) != 1
        assert np.all(np.isfinite(value[others])) and np.all(np.isfinite(grad[others]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class(dtype):
    x = np.array([[3.0], [-2.0]], dtype=dtype)
    labels = np.array([0, 0])
    for loss, y in [(fl.SparseCategoricalCrossEntropy(from_logits=True, z_loss=0.0), labels),
                    (fl.CategoricalCrossEntropy(from_logits=True), np.ones_like(x)),
                    (fl.KLDivergence(from_logits=True), np.ones_like(x)),
                    (fl.MultiMargin(), labels)]:
        value, grad = loss.value_and_grad(x, y)
        assert value == 0 and np.all(grad == 0), loss
    expected, expected_grad = torch_value_and_grad(
        lambda xt: F.cross_entropy(xt, torch.tensor(labels), label_smoothing=0.3), x)
    value, grad = fl.SparseCategoricalCrossEntropy(
        from_logits=True, label_smoothing=0.3).value_and_grad(x, labels)
    assert value == pytest.approx(float(expected), abs=1e-7)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_huge_logits_stay_accurate(dtype, offset):
    rng = np.random.default_rng(16)
    x, probs, labels = random_problem(rng, 6, 5, dtype)
    x = (x + offset).astype(dtype)
    x[0, 0] = -offset  # a spread of 2e4 in one row
    for loss, y, ref in [
            (fl.SparseCategoricalCrossEntropy(from_logits=True, label_smoothing=0.1,
                                              reduction="none"), labels,
             lambda xt: F.cross_entropy(xt, torch.tensor(labels), label_smoothing=0.1,
                                        reduction="none")),
            (fl.CategoricalCrossEntropy(from_logits=True, reduction="none"), probs,
             lambda xt: F.cross_entropy(xt, as_tensor(probs), reduction="none")),
            (fl.KLDivergence(from_logits=True, reduction="none"), probs,
             lambda xt: F.kl_div(F.log_softmax(xt, 1), as_tensor(probs),
                                 reduction="none").sum(1))]:
        value, grad = loss.value_and_grad(x, y)
        expected, expected_grad = torch_value_and_grad(ref, x)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
        # absolute: a loss of ~1 next to logits of 1e4 keeps float32's digits of the loss
        np.testing.assert_allclose(value, expected, rtol=rtol_for(dtype),
                                   atol=rtol_for(dtype) * np.abs(expected).max())
        np.testing.assert_allclose(grad, expected_grad, atol=rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_infinity_in_another_class(dtype):
    x = np.array([[1.0, -np.inf, 0.5], [-np.inf, 2.0, 0.0]], dtype=dtype)
    labels = np.array([0, 1])
    for smoothing in (0.0, 0.1):
        loss = fl.SparseCategoricalCrossEntropy(from_logits=True,
                                                label_smoothing=smoothing,
                                                reduction="none")
        value, grad = loss.value_and_grad(x, labels)
        xt = torch.tensor(x, requires_grad=True)
        expected = F.cross_entropy(xt, torch.tensor(labels), label_smoothing=smoothing,
                                   reduction="none")
        (expected_grad,) = torch.autograd.grad(expected.sum(), xt)
        np.testing.assert_allclose(value, expected.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-6, atol=1e-7)
        if smoothing == 0:
            assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    # one-hot probability targets: torch gives nan (0 * -inf), so may we
    target = one_hot(labels, 3, dtype)
    xt = torch.tensor(x)
    expected = F.cross_entropy(xt, torch.tensor(target), reduction="none").numpy()
    value = fl.CategoricalCrossEntropy(from_logits=True, reduction="none")(x, target)
    np.testing.assert_array_equal(np.isnan(value), np.isnan(expected))


def test_nan_logits_propagate():
    x = np.array([[np.nan, 1.0, 2.0], [0.0, 1.0, 2.0]])
    value, grad = fl.SparseCategoricalCrossEntropy(from_logits=True, reduction="none") \
        .value_and_grad(x, np.array([1, 1]))
    assert np.isnan(value[0]) and np.all(np.isnan(grad[0]))
    assert np.isfinite(value[1]) and np.all(np.isfinite(grad[1]))


# -- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_bad_label_names_label_and_row(from_logits, label_dtype):
    x = np.full((6, 5), 0.2)
    labels = np.array([0, 4, -100, 7, 5, -3], dtype=label_dtype)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=from_logits)
    with pytest.raises(ValueError, match=r"label 7 at row 3 .*\[0, 5\)"):
        loss(x, labels)
    out = np.full_like(x, 42.0)
    with pytest.raises(ValueError, match="label 7 at row 3"):
        loss.grad(x, labels, out=out)
    assert np.all(out == 42.0)  # nothing was computed
    with pytest.raises(ValueError, match="label -100 at row 2"):
        fl.MultiMargin()(x, labels)
    with pytest.raises(ValueError, match="label -100 at row 2"):
        fl.SparseCategoricalCrossEntropy(ignore_index=0)(x, labels)


def test_bad_label_found_with_threads(parallel_always):
    x = np.zeros((1000, 3))
    labels = np.zeros(1000, dtype=np.int64)
    labels[[703, 900]] = 3
    previous = fl.get_num_threads()
    fl.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="label 3 at row 703"):
            fl.SparseCategoricalCrossEntropy(from_logits=True)(x, labels)
    finally:
        fl.set_num_threads(previous)


def test_probabilities_outside_unit_interval():
    good = np.full((2, 3), 1 / 3)
    bad = good.copy()
    bad[1, 2] = 1.5
    labels = np.array([0, 1])
    for loss, y in [(fl.CategoricalCrossEntropy(), good),
                    (fl.SparseCategoricalCrossEntropy(), labels),
                    (fl.KLDivergence(), good)]:
        with pytest.raises(ValueError, match=r"y_pred: probabilities .*1\.5 at index \(1, 2\)"):
            loss(bad, y)
    for loss in (fl.CategoricalCrossEntropy(), fl.CategoricalCrossEntropy(from_logits=True),
                 fl.KLDivergence(), fl.KLDivergence(from_logits=True)):
        with pytest.raises(ValueError, match=r"y_true: .*1\.5 at index \(1, 2\)"):
            loss(good, bad)
    with pytest.raises(ValueError, match=r"y_true: log_target.*0\.5"):
        fl.KLDivergence(log_target=True)(good, np.log(good) + np.array([0, 0, 0.5 - np.log(1 / 3)]))


def test_class_weight_length_checked_per_call():
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, class_weight=[1.0, 2.0, 3.0])
    loss(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"class_weight: 3 weights .* 4 classes"):
        loss(np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="class_weight"):
        fl.MultiMargin(class_weight=[1.0])(np.zeros((2, 4)), np.array([0, 1]))


@pytest.mark.parametrize("cls, kwargs", [
    (fl.CategoricalCrossEntropy, {"label_smoothing": 1.5}),
    (fl.CategoricalCrossEntropy, {"label_smoothing": -0.1}),
    (fl.CategoricalCrossEntropy, {"z_loss": -1.0}),
    (fl.CategoricalCrossEntropy, {"z_loss": float("nan"), "from_logits": True}),
    (fl.CategoricalCrossEntropy, {"z_loss": 0.1}),  # probabilities
    (fl.CategoricalCrossEntropy, {"class_weight": [[1.0, 2.0]]}),
    (fl.CategoricalCrossEntropy, {"class_weight": [1.0, np.inf]}),
    (fl.CategoricalCrossEntropy, {"from_logits": "yes"}),
    (fl.SparseCategoricalCrossEntropy, {"ignore_index": 1.5}),
    (fl.SparseCategoricalCrossEntropy, {"ignore_index": True}),
    (fl.SparseCategoricalCrossEntropy, {"ignore_index": 2 ** 70}),
    (fl.SparseCategoricalCrossEntropy, {"z_loss": 0.1}),
    (fl.KLDivergence, {"log_target": 1}),
    (fl.MultiMargin, {"p": 3}),
    (fl.MultiMargin, {"p": True}),
    (fl.MultiMargin, {"p": 1.0}),
    (fl.MultiMargin, {"margin": "1"}),
    (fl.MultiMargin, {"margin": float("inf")}),
    (fl.MultiMargin, {"reduction": "batchmean"}),
])
def test_bad_parameters(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_params_of_sparse_cross_entropy_and_multi_margin():
    loss = fl.get("sparse_categorical_cross_entropy", from_logits=True,
                  label_smoothing=0.1, ignore_index=3, class_weight=[1, 2], reduction="sum")
    assert loss.get_params() == {**loss.get_params(), "from_logits": True,
                                 "label_smoothing": 0.1, "ignore_index": 3,
                                 "reduction": "sum"}
    assert loss == fl.SparseCategoricalCrossEntropy(True, 0.1, [1, 2], 3, reduction="sum")
    assert "MultiMargin(margin=1.0, p=2" in repr(fl.MultiMargin(p=2))
    with pytest.raises(ValueError, match="unknown parameter"):
        fl.get("kl_divergence", ignore_index=0)


# -- large input -------------------------------------------------------------------

def test_large_input_uses_threads_and_matches_torch():
    rng = np.random.default_rng(18)
    x, _, labels = random_problem(rng, 4096, 100, np.float32)
    expected, expected_grad = torch_value_and_grad(
        lambda xt: F.cross_entropy(xt, torch.tensor(labels)), x)
    assert _threads.threads_for(x.size * 8) == fl.get_num_threads()
    value, grad = fl.SparseCategoricalCrossEntropy(from_logits=True).value_and_grad(x, labels)
    assert_close(value, expected, np.float32)
    assert_close(grad, expected_grad, np.float32)
