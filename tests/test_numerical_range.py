"""Values and gradients stay exact across the whole floating-point range.

The kernels are compiled with reassociation (for vectorised reductions); these tests
pin that no loss loses accuracy to a regrouped sum at large magnitudes, that extreme
parameters give finite results, and that a result does not depend on where its buffers
lie in memory.
"""
import numpy as np
import pytest

import fastloss as fl

torch = pytest.importorskip("torch")
F = torch.nn.functional

SCALES = [1.0, 1e4, 1e5, 1e7, 1e12, 1e16, 1e17, 1e30]


def scores(rng, scale, n=6, c=5):
    """Random rows at ``scale``; rows of tied scores; rows whose class 1 wins by a
    little, then by a lot (their loss for label 1 is small against the scores)."""
    x = rng.normal(size=(n, c)) * scale
    tied = np.full((2, c), scale)
    near = scale + rng.normal(size=(2, c))
    near[:, 1] += 3
    winner = np.full((2, c), -scale)
    winner[:, 1] = scale
    return np.concatenate([x, tied, near, winner])


def labels_for(rng, x):
    """Random labels; the rows after the random ones get the winning class 1."""
    labels = rng.integers(0, x.shape[1], size=x.shape[0])
    labels[-4:] = 1
    return labels


def assert_matches_torch(value, grad, expected_value, expected_grad):
    np.testing.assert_allclose(value, expected_value, rtol=1e-12, atol=0)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-300)


def torch_value_and_grad(fn, x, *args, **kwargs):
    """torch's value (per row for reduction="none") and the gradient of its sum."""
    xt = torch.tensor(x, requires_grad=True)
    value = fn(xt, *args, **kwargs)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sparse_cross_entropy_is_exact_at_every_logit_magnitude(scale, smoothing, rng):
    x = scores(rng, scale)
    labels = labels_for(rng, x)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, label_smoothing=smoothing,
                                            reduction="none")
    expected = torch_value_and_grad(F.cross_entropy, x, torch.tensor(labels),
                                    label_smoothing=smoothing, reduction="none")
    assert_matches_torch(*loss.value_and_grad(x, labels), *expected)


def test_sparse_cross_entropy_of_tied_huge_logits_is_log_of_class_count():
    value = fl.SparseCategoricalCrossEntropy(from_logits=True)(np.full((1, 5), 1e17), [2])
    assert value == pytest.approx(np.log(5), rel=1e-15)


@pytest.mark.parametrize("scale", SCALES)
def test_categorical_cross_entropy_is_exact_at_every_logit_magnitude(scale, rng):
    x = scores(rng, scale)
    target = rng.dirichlet(np.ones(x.shape[1]), size=x.shape[0])
    loss = fl.CategoricalCrossEntropy(from_logits=True, reduction="none")
    expected = torch_value_and_grad(F.cross_entropy, x, torch.tensor(target),
                                    reduction="none")
    assert_matches_torch(*loss.value_and_grad(x, target), *expected)


@pytest.mark.parametrize("scale", SCALES)
def test_kl_divergence_is_exact_at_every_logit_magnitude(scale, rng):
    x = scores(rng, scale)
    target = rng.dirichlet(np.ones(x.shape[1]), size=x.shape[0])
    loss = fl.KLDivergence(from_logits=True, reduction="none")
    expected = torch_value_and_grad(
        lambda xt: F.kl_div(F.log_softmax(xt, dim=1), torch.tensor(target),
                            reduction="none").sum(1), x)
    np.testing.assert_allclose(loss(x, target), expected[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(loss.grad(x, target), expected[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_is_exact_at_every_score_magnitude(scale, p, rng):
    x = scores(rng, scale)
    labels = labels_for(rng, x)
    loss = fl.MultiMargin(p=p, reduction="none")
    expected = torch_value_and_grad(F.multi_margin_loss, x, torch.tensor(labels), p=p,
                                    reduction="none")
    assert_matches_torch(*loss.value_and_grad(x, labels), *expected)


POINTWISE_TORCH = [
    (fl.MeanSquaredError(reduction="none"), lambda x, t: F.mse_loss(x, t, reduction="none")),
    (fl.MeanAbsoluteError(reduction="none"), lambda x, t: F.l1_loss(x, t, reduction="none")),
    (fl.Huber(delta=1.0, reduction="none"),
     lambda x, t: F.huber_loss(x, t, delta=1.0, reduction="none")),
    (fl.BinaryCrossEntropy(from_logits=True, reduction="none"),
     lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none")),
]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("loss, torch_loss", POINTWISE_TORCH,
                         ids=lambda v: getattr(v, "name", ""))
def test_pointwise_losses_are_exact_at_every_magnitude(loss, torch_loss, scale, rng):
    x = rng.normal(size=64) * scale
    if loss.name == "binary_cross_entropy":
        t = rng.uniform(size=64)
    else:
        t = x + rng.normal(size=64) * scale  # differences of the inputs' own size
    expected = torch_value_and_grad(lambda xt: torch_loss(xt, torch.tensor(t)), x)
    value, grad = loss.value_and_grad(x, t)
    np.testing.assert_allclose(value, expected[0], rtol=1e-12)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("scale", SCALES)
def test_hinge_is_exact_at_every_magnitude(scale, rng):
    x = rng.normal(size=64) * scale
    t = rng.choice([-1.0, 1.0], size=64)
    value, grad = fl.Hinge(reduction="none").value_and_grad(x, t)
    np.testing.assert_allclose(value, np.maximum(1 - t * x, 0), rtol=1e-12)
    np.testing.assert_array_equal(grad, np.where(1 - t * x > 0, -t, 0))


# -- extreme parameters -----------------------------------------------------------------

@pytest.mark.parametrize("dtype, delta", [
    (np.float32, 1e-40), (np.float32, 1e-45), (np.float32, 1e-300), (np.float32, 1e-30),
    (np.float32, 1e30),
    (np.float32, 1e300), (np.float64, 1e-310), (np.float64, 5e-324), (np.float64, 1e-300),
    (np.float64, 1e300)])
def test_pseudo_huber_is_finite_for_every_positive_delta(dtype, delta, rng):
    """Finite wherever the exact result is representable, and equal to it."""
    d = np.concatenate([[0.0, 1e-30, -1e-30, 1.0, -3.0, 1e30, -1e30],
                        rng.normal(size=25)]).astype(dtype)
    loss = fl.PseudoHuber(delta=delta, reduction="none")
    values, grad = loss.value_and_grad(d, np.zeros_like(d))
    # reference in float64: delta^2 (sqrt(1 + a^2) - 1), a = |d| / delta, with its limits
    # delta |d| - delta^2 for a >> 1 and d^2 / 2 for a << 1
    with np.errstate(over="ignore", invalid="ignore"):
        dd, dl = d.astype(np.float64), float(np.asarray(delta, dtype=dtype))
        if dl == np.inf:                   # delta beyond float32: the quadratic limit
            expected, expected_grad = dd * dd / 2, dd
        elif dl == 0:                      # delta below float32: the linear limit
            expected, expected_grad = np.zeros_like(dd), np.zeros_like(dd)
        else:
            a = np.abs(dd) / dl
            r = np.sqrt(1 + np.minimum(a, 1e150) ** 2)
            expected = np.where(a > 1e8, dl * (np.abs(dd) - dl),
                                np.where(a > 1, dl * (dl * (r - 1)), dd * dd / (r + 1)))
            expected_grad = np.where(a > 1e8, dl * np.sign(dd), dd / r)
    representable = np.abs(expected) <= np.finfo(dtype).max
    assert np.all(np.isfinite(values[representable])) and np.all(np.isfinite(grad))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    with np.errstate(over="ignore"):      # unrepresentable values overflow to inf
        expected = expected.astype(dtype)
    np.testing.assert_allclose(values, expected, rtol=tol, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(grad, expected_grad.astype(dtype), rtol=tol,
                               atol=np.finfo(dtype).tiny)


# -- z-loss weight of dense targets ------------------------------------------------------

def z_loss_reference(x, t, class_weight, z_loss):
    """torch cross_entropy with probability targets plus z W lse^2 per row,
    W = sum_c w_c t_c / sum_c t_c (0 for a row of zero targets), summed."""
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t)
    wt = None if class_weight is None else torch.tensor(class_weight)
    rows = F.cross_entropy(xt, tt, weight=wt, reduction="none")
    total = tt.sum(1)
    weighted = total if wt is None else (tt * wt).sum(1)
    w = torch.where(total != 0, weighted / torch.where(total != 0, total, 1), 0)
    value = (rows + z_loss * w * torch.logsumexp(xt, 1) ** 2).sum()
    value.backward()
    return value.item(), xt.grad.numpy()


@pytest.mark.parametrize("class_weight", [None, [0.5, 2.0, 1.0, 3.0]])
def test_z_loss_of_dense_targets_is_weighted_by_the_mean_class_weight(class_weight, rng):
    x = rng.normal(size=(6, 4)) * 3
    t = rng.uniform(size=(6, 4))          # rows not summing to 1
    t[1] = 0                              # a row of zero targets adds no z term
    t[2] = [0, 0, 1, 0]                   # a one-hot row: W = w_y
    loss = fl.CategoricalCrossEntropy(from_logits=True, z_loss=0.1,
                                      class_weight=class_weight, reduction="sum")
    value, grad = loss.value_and_grad(x, t)
    expected_value, expected_grad = z_loss_reference(x, t, class_weight, 0.1)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_z_loss_of_a_one_hot_row_equals_the_sparse_result(rng):
    x = rng.normal(size=(5, 4))
    labels = np.array([0, 3, 1, 2, 3])
    weights = [0.5, 2.0, 1.0, 3.0]
    dense = fl.CategoricalCrossEntropy(from_logits=True, z_loss=0.2, class_weight=weights,
                                       reduction="none")
    sparse = fl.SparseCategoricalCrossEntropy(from_logits=True, z_loss=0.2,
                                              class_weight=weights, reduction="none")
    np.testing.assert_allclose(dense(x, np.eye(4)[labels]), sparse(x, labels), rtol=1e-13)


def test_z_loss_reference_of_the_check_command_agrees_with_the_kernel(rng):
    from fastloss._tools import reference
    x = rng.normal(size=(6, 4))
    t = rng.uniform(size=(6, 4))
    params = {"from_logits": True, "z_loss": 0.1, "class_weight": [0.5, 2.0, 1.0, 3.0]}
    loss = fl.CategoricalCrossEntropy(**params, reduction="sum")
    expected_value, expected_grad = z_loss_reference(x, t, params["class_weight"], 0.1)
    terms, grad = reference._cce(x, t, 1.0, **params)
    np.testing.assert_allclose(terms.sum(), expected_value, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loss(x, t), expected_value, rtol=1e-12)


# -- results do not depend on buffer addresses -----------------------------------------

ADDRESS_CASES = [
    ("binary_cross_entropy", {"from_logits": True}),
    ("log_cosh", {}),
    ("msle", {}),
    ("pseudo_huber", {}),
    ("mse", {}),
    ("huber", {}),
]


@pytest.mark.parametrize("name, params", ADDRESS_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_inputs_give_the_same_bits_wherever_the_buffers_lie(name, params, dtype, rng):
    """The gradient written right after y_pred in memory, or before it, or far from it,
    is the same to the bit (sizes around the vector widths, where a compiler's runtime
    aliasing check would pick another loop)."""
    loss = fl.get(name, **params)
    for n in list(range(1, 40)) + [63, 64, 65, 100, 257]:
        x = rng.normal(size=n).astype(dtype)
        t = (rng.uniform(size=n) if name == "binary_cross_entropy"
             else rng.normal(size=n)).astype(dtype)
        value, grad = loss.value_and_grad(x, t)
        arena = np.empty(3 * n + 64, dtype=dtype)
        for gap in (0, 1, 3, 8, 17):
            for pred, out in ((arena[:n], arena[n + gap:2 * n + gap]),
                              (arena[n + gap:2 * n + gap], arena[:n])):
                pred[:] = x
                v, g = loss.value_and_grad(pred, t, out=out)
                assert v == value, (n, gap)
                np.testing.assert_array_equal(g, grad)


def test_repeated_gradients_with_fresh_buffers_are_bitwise_equal(rng):
    loss = fl.BinaryCrossEntropy(from_logits=True)
    x = rng.normal(size=(300,)).astype(np.float32)
    t = rng.uniform(size=300).astype(np.float32)
    first = loss.grad(x, t)
    keep = []  # keep buffers alive so each call gets a differently placed one
    for _ in range(200):
        g = loss.grad(x, t)
        keep.append(g)
        np.testing.assert_array_equal(g, first)
