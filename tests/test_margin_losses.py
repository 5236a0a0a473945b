"""soft_margin, hinge_embedding and mape at their edges, against PyTorch and the Keras
formula (the generic contract of every loss is in test_contract.py)."""
import numpy as np
import pytest

import fastloss as fl

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_value_and_grad(fn, x, *args, **kwargs):
    xt = torch.tensor(x, requires_grad=True)
    value = fn(xt, *args, **kwargs)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_margin_at_huge_scores_is_finite_like_torch(dtype):
    x = np.array([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4], dtype=dtype)
    for label in (-1.0, 1.0):
        t = np.full_like(x, label)
        values, grad = fl.SoftMargin(reduction="none").value_and_grad(x, t)
        want, want_grad = torch_value_and_grad(
            lambda xt: F.soft_margin_loss(xt, torch.tensor(t), reduction="none"), x)
        # torch computes log(1 + exp(z)) as written: inf once exp(z) overflows; fastloss
        # stays finite there (softplus(z) = z) and equals torch everywhere else
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
        finite = np.isfinite(want)
        rtol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(values[finite], want[finite], rtol=rtol, atol=1e-30)
        np.testing.assert_allclose(grad[finite], want_grad[finite], rtol=rtol, atol=1e-30)
        np.testing.assert_allclose(values[~finite], -label * x[~finite], rtol=rtol)
        np.testing.assert_allclose(grad[~finite], -label, rtol=rtol)


@pytest.mark.parametrize("margin", [1.0, 0.5, -0.25])
def test_hinge_embedding_follows_torch_for_any_label_and_at_the_kink(margin):
    x = np.array([margin, margin, margin - 0.5, margin + 0.5, 0.3, -2.0, 4.0])
    t = np.array([-1.0, 1.0, -1.0, -1.0, 0.0, 2.0, -1.0])   # 0 and 2: both terms
    loss = fl.HingeEmbedding(margin=margin, reduction="none")
    values, grad = loss.value_and_grad(x, t)
    want, want_grad = torch_value_and_grad(
        lambda xt: F.hinge_embedding_loss(xt, torch.tensor(t), margin=margin,
                                          reduction="none"), x)
    np.testing.assert_array_equal(values, want)
    np.testing.assert_array_equal(grad, want_grad)


def test_mape_divides_zero_targets_by_keras_epsilon():
    p = np.array([0.5, -2.0, 3.0, 1.0])
    t = np.array([0.0, 0.0, 3.0, -4.0])
    values, grad = fl.MeanAbsolutePercentageError(reduction="none").value_and_grad(p, t)
    np.testing.assert_allclose(values, 100 * np.abs(p - t) / np.maximum(np.abs(t), 1e-7),
                               rtol=1e-15)
    np.testing.assert_array_equal(grad, 100 * np.sign(p - t) / np.maximum(np.abs(t), 1e-7))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin", [1.0, -0.5])
def test_hinge_embedding_infinite_and_nan_distances_follow_torch(dtype, margin):
    # every label against every special distance, tiled so the vectorised loops run
    x = np.array([np.nan, np.inf, -np.inf, margin, 0.5, 2.0], dtype=dtype)
    labels = np.array([1.0, -1.0, 0.0, 2.0], dtype=dtype)
    x, t = (np.tile(a, 8) for a in np.meshgrid(x, labels))
    want, want_grad = torch_value_and_grad(
        lambda xt: F.hinge_embedding_loss(xt, torch.tensor(t), margin=margin,
                                          reduction="none"), x)
    loss = fl.HingeEmbedding(margin=margin, reduction="none")
    values, grad = loss.value_and_grad(x, t)
    np.testing.assert_array_equal(values, want)
    np.testing.assert_array_equal(loss(x, t), want)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(loss.grad(x, t), want_grad)
    # the reduced loops, on the elements whose loss is finite (x = +inf among them)
    keep = np.isfinite(want)
    for reduction, expected in (("sum", want[keep].sum(dtype=np.float64)),
                                ("mean", want[keep].mean(dtype=np.float64))):
        loss = fl.HingeEmbedding(margin=margin, reduction=reduction)
        value, grad = loss.value_and_grad(x[keep], t[keep])
        np.testing.assert_allclose([value, loss(x[keep], t[keep])], expected, rtol=1e-6)
        scale = 1 if reduction == "sum" else 1 / keep.sum()
        np.testing.assert_allclose(grad, want_grad[keep] * scale, rtol=1e-6)
