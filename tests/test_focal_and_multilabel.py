"""The focal losses, categorical hinge, cosine similarity and multilabel soft margin at
their edges and against the values Keras publishes in its own docs and tests (the
generic contract of every loss is in test_contract.py)."""
import numpy as np
import pytest

import fastloss as fl
from fastloss._tools import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_value_and_grad(name, x, t, **params):
    """Per-term values and the gradient of their sum, by autograd of the reference."""
    xt = torch.tensor(x, requires_grad=True)
    values = reference.torch_loss(name, xt, torch.tensor(t), params, reduction="none")
    values.sum().backward()
    return values.detach().numpy(), xt.grad.numpy()


def ours(name, x, t, **params):
    return fl.get(name, reduction="none", **params).value_and_grad(x, t)


# -- published values: Keras' docstrings and losses_test.py (Keras takes y_true first) --

def test_binary_focal_matches_keras_published_values():
    t = np.array([[1.0, 0.0], [1.0, 0.0]])
    p = np.array([[0.9, 0.8], [0.7, 0.2]], dtype=np.float32)
    loss = fl.BinaryFocalCrossEntropy(gamma=2.0, reduction="none")
    # Keras averages over the last axis; fastloss gives the elements
    np.testing.assert_allclose(loss(p, t).mean(axis=1), [0.515547, 0.020513], atol=1e-6)
    assert fl.BinaryFocalCrossEntropy(gamma=2.0)(p, t) == pytest.approx(0.268, abs=5e-4)
    assert fl.BinaryFocalCrossEntropy(gamma=2.0)(p, t, sample_weight=[1.2, 3.4]) \
        == pytest.approx(0.34415, abs=5e-4)
    t = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    logits = np.array([[1.5, -2.7, 2.9], [-3.8, 1.2, -4.5]])
    focal = fl.BinaryFocalCrossEntropy(gamma=3.0, from_logits=True)
    assert focal(logits, t) == pytest.approx(0.799, abs=5e-4)
    assert focal(logits, t, sample_weight=[1.2, 3.4]) == pytest.approx(0.95977, abs=5e-4)
    values = fl.BinaryFocalCrossEntropy(gamma=2.0, reduction="none")(
        np.array([[0.6, 0.4], [0.4, 0.6]]), np.array([[0.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(values.mean(axis=1), [0.330, 0.206], atol=5e-4)
    # a perfect prediction costs nothing
    eye = np.eye(3)
    assert fl.BinaryFocalCrossEntropy(gamma=1.5)(eye, eye) == pytest.approx(0, abs=1e-6)
    assert fl.BinaryFocalCrossEntropy(from_logits=True)(200 * eye - 100, eye) \
        == pytest.approx(0, abs=1e-6)


def test_categorical_focal_matches_keras_published_values():
    t = np.eye(3)
    p = np.array([[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]],
                 dtype=np.float32)
    assert fl.CategoricalFocalCrossEntropy()(p, t) == pytest.approx(0.02059, abs=5e-5)
    assert fl.CategoricalFocalCrossEntropy()(p, t, sample_weight=np.full(3, 2.3)) \
        == pytest.approx(0.047368, abs=5e-5)
    logits = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])
    assert fl.CategoricalFocalCrossEntropy(from_logits=True)(logits, t) \
        == pytest.approx(0.000345, abs=5e-6)
    assert fl.CategoricalFocalCrossEntropy()(t.astype(np.float32), t) \
        == pytest.approx(0, abs=1e-6)
    values = fl.CategoricalFocalCrossEntropy(reduction="none")(
        np.array([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]]),
        np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(values, [2.63401289e-04, 6.75912094e-01], rtol=1e-6)


def test_categorical_hinge_matches_keras_published_values():
    t = np.array([[0.0, 1.0], [0.0, 0.0]])
    p = np.array([[0.6, 0.4], [0.4, 0.6]])
    np.testing.assert_allclose(fl.CategoricalHinge(reduction="none")(p, t), [1.2, 1.6])
    assert fl.CategoricalHinge()(p, t) == pytest.approx(1.4)
    assert fl.CategoricalHinge(reduction="sum")(p, t) == pytest.approx(2.8)
    assert fl.CategoricalHinge()(p, t, sample_weight=[1.0, 0.0]) == pytest.approx(0.6)


def test_cosine_similarity_matches_keras_published_values():
    t = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    p = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(fl.CosineSimilarity(reduction="none")(p, t),
                               [0.0, -0.99999994, 0.99999994], rtol=1e-6)
    t = np.array([[1, 9, 2], [-5, -2, 6]], dtype=np.float32)
    p = np.array([[4, 8, 12], [8, 1, 3]], dtype=np.float32)
    unit_t = t / np.linalg.norm(t, axis=1, keepdims=True)
    unit_p = p / np.linalg.norm(p, axis=1, keepdims=True)
    assert fl.CosineSimilarity()(p, t) == pytest.approx(-np.mean(np.sum(unit_t * unit_p,
                                                                        axis=1)), rel=1e-6)


# -- extremes, against the reference formula under torch autograd (float64) ----------

@pytest.mark.parametrize("params", [{}, {"alpha": 0.25}, {"gamma": 0.0},
                                    {"gamma": 1.5, "label_smoothing": 0.1}])
def test_binary_focal_from_logits_is_exact_at_huge_logits(params):
    x = np.array([-1e4, -1e4, -40.0, -17.0, 0.0, 17.0, 40.0, 1e4, 1e4])
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0])
    values, grad = ours("binary_focal_cross_entropy", x, t, from_logits=True, **params)
    want, want_grad = torch_value_and_grad("binary_focal_cross_entropy", x, t,
                                           from_logits=True, **params)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    # the reference forms 1 - p_t by a subtraction that loses ~8 digits at |x| = 17
    # (float64); fastloss computes it as t sigmoid(-x) + (1 - t) sigmoid(x), exactly
    np.testing.assert_allclose(values, want, rtol=1e-7, atol=1e-300)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-7, atol=1e-300)
    moderate = np.abs(x) < 10
    np.testing.assert_allclose(values[moderate], want[moderate], rtol=1e-13)
    np.testing.assert_allclose(grad[moderate], want_grad[moderate], rtol=1e-12)


def test_sigmoid_focal_from_logits_is_torchvisions_formula():
    # torchvision.ops.sigmoid_focal_loss, as published
    rng = np.random.default_rng(0)
    x, t = rng.normal(0, 4, 1000), (rng.uniform(size=1000) < 0.3).astype(np.float64)
    xt, tt = torch.tensor(x), torch.tensor(t)
    p = torch.sigmoid(xt)
    ce = F.binary_cross_entropy_with_logits(xt, tt, reduction="none")
    p_t = p * tt + (1 - p) * (1 - tt)
    want = (0.25 * tt + 0.75 * (1 - tt)) * ce * (1 - p_t) ** 2
    got = fl.BinaryFocalCrossEntropy(from_logits=True, alpha=0.25, reduction="none")(x, t)
    # torchvision's 1 - p_t cancels where p_t ~ 1 (tiny terms); elsewhere to rounding
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-8)
    large = want.numpy() > 1e-6
    np.testing.assert_allclose(got[large], want.numpy()[large], rtol=1e-12)


@pytest.mark.parametrize("params", [{}, {"alpha": 0.4, "gamma": 3.0}])
def test_binary_focal_from_probabilities_at_zero_and_one(params):
    p = np.array([0.0, 0.0, 1.0, 1.0, 1e-9, 1 - 1e-9, 0.5])
    t = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    values, grad = ours("binary_focal_cross_entropy", p, t, **params)
    want, want_grad = torch_value_and_grad("binary_focal_cross_entropy", p, t, **params)
    np.testing.assert_allclose(values, want, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12)
    # p = 0 for t = 1: the clip at 1e-7 caps the term (q = 1, so the focal factor is 1)
    assert values[1] == pytest.approx(params.get("alpha", 1.0) * -np.log(1e-7), rel=1e-12)
    # the clip passes no gradient to the cross-entropy; the focal factor still has one:
    # d/dp (1 - p_t)^gamma = -gamma at p_t = 0 for t = 1
    assert grad[1] == pytest.approx(-params.get("gamma", 2.0) * values[1], rel=1e-12)


@pytest.mark.parametrize("from_logits", [True, False])
def test_categorical_focal_at_extremes(from_logits):
    if from_logits:
        x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [30.0, 0.0, -30.0],
                      [1.0, 2.0, 3.0]])
    else:
        x = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1e-9, 0.5, 0.5], [0.2, 0.3, 0.5]])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    for params in ({"from_logits": from_logits},
                   {"from_logits": from_logits, "gamma": 0.5, "alpha": [0.2, 1.0, 3.0],
                    "label_smoothing": 0.1}):
        values, grad = ours("categorical_focal_cross_entropy", x, t, **params)
        want, want_grad = torch_value_and_grad("categorical_focal_cross_entropy", x, t,
                                               **params)
        # at an active clip the reference's 1 - (1 - 1e-7) rounds to 1.0000000005e-7,
        # the kernel's regrouped arithmetic gives 1e-7: 5e-10 apart
        np.testing.assert_allclose(values, want, rtol=2e-9)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-15)


def test_categorical_focal_gamma_zero_alpha_one_is_categorical_cross_entropy():
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(50, 7)), rng.dirichlet(np.ones(7), 50)
    focal = fl.CategoricalFocalCrossEntropy(from_logits=True, gamma=0.0, alpha=1.0)
    plain = fl.CategoricalCrossEntropy(from_logits=True)
    value, grad = focal.value_and_grad(x, t)
    want, want_grad = plain.value_and_grad(x, t)
    assert value == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-15)


def test_categorical_focal_per_class_alpha_length_is_checked():
    loss = fl.CategoricalFocalCrossEntropy(alpha=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"alpha: 2 weights for y_pred with 3 classes"):
        loss(np.full((2, 3), 1 / 3), np.eye(3)[:2])
    np.testing.assert_array_equal(loss.alpha, [0.5, 1.0])
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        fl.CategoricalFocalCrossEntropy(gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        fl.BinaryFocalCrossEntropy(alpha=1.5)


def test_categorical_hinge_shares_the_gradient_between_tied_classes_like_autograd():
    x = np.array([[2.0, 2.0, 0.5], [0.0, 1.0, 1.0], [3.0, -1.0, -1.0], [0.0, 0.5, 0.5]])
    t = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # rows: two negatives tied at the max; the same with the target's 0 among the ties;
    # the hinge inactive; the hinge exactly at its kink (1 + 0.5 - 1.5 = 0)
    x[3] = [1.5, 0.5, 0.5]
    values, grad = ours("categorical_hinge", x, t)
    want, want_grad = torch_value_and_grad("categorical_hinge", x, t)
    np.testing.assert_array_equal(values, want)
    np.testing.assert_array_equal(grad, want_grad)


def test_cosine_similarity_of_zero_rows_is_zero_with_a_finite_gradient():
    x = np.array([[0.0, 0.0, 0.0], [1e-9, 0.0, 0.0], [1.0, 2.0, 3.0], [1e100, -2e100, 0.0]])
    t = np.array([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.0]])
    values, grad = ours("cosine_similarity", x, t)
    # (the reference's autograd through rsqrt(sum x^2) underflows beyond |x| ~ 1e102:
    # the kernel's gradient stays exact there, hence 1e100 as the large row)
    want, want_grad = torch_value_and_grad("cosine_similarity", x, t)
    assert values[0] == 0 and values[2] == 0 and values[3] == pytest.approx(-3 / 10 ** 0.5)
    np.testing.assert_allclose(values, want, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multilabel_soft_margin_is_finite_at_huge_logits_like_torch(dtype):
    x = np.array([[-1e4, 1e4, 0.0, 30.0], [-30.0, 1.0, -1.0, 1e4]], dtype=dtype)
    t = np.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.5, 0.0]], dtype=dtype)
    w = [0.5, 2.0, 1.0, 3.0]
    values, grad = ours("multilabel_soft_margin", x, t, class_weight=w)
    xt = torch.tensor(x, requires_grad=True)
    want = F.multilabel_soft_margin_loss(xt, torch.tensor(t), reduction="none",
                                         weight=torch.tensor(w, dtype=xt.dtype))
    want.sum().backward()
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(values, want.detach().numpy(), rtol=rtol)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=rtol, atol=1e-30)
