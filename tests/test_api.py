"""The NumPy API of fastloss: the registry, parameters, and the errors of particular
losses and arguments.

What every loss keeps (layouts, dtypes, keywords, out=, pickle, shape and parameter
errors) is checked for every registered loss in test_contract.py; here are the rules
that are not a loss's contract: lists and scalars, array types, the messages of
particular bad values and parameters, shared memory.
"""
import re

import numpy as np
import pytest

import fastloss as fl
from fastloss._tools.reference import REFERENCES

# ---------------------------------------------------------------------------------------
# registry, construction, repr
# ---------------------------------------------------------------------------------------
EXPECTED_NAMES = ["binary_cross_entropy", "hinge", "huber", "log_cosh", "mae", "mse", "msle",
                  "pseudo_huber", "squared_hinge"]


def test_available_lists_the_pointwise_losses():
    names = fl.available()
    assert names == sorted(names)
    assert set(EXPECTED_NAMES) <= set(names)


def test_parameters_are_normalised():
    assert fl.Huber(delta=2).get_params()["delta"] == 2.0
    assert type(fl.Huber(delta=np.float32(2.5)).delta) is float
    bce = fl.BinaryCrossEntropy(from_logits=np.bool_(True), label_smoothing=1)
    assert bce.from_logits is True and bce.label_smoothing == 1.0
    assert fl.get("huber", delta=0.25) == fl.Huber(0.25)


def test_pos_weight_is_copied_at_construction():
    pos_weight = np.array([1.0, 2.0])
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight)
    pred, target = np.zeros((3, 2)), np.ones((3, 2))
    before = loss(pred, target)
    pos_weight[:] = 100.0
    assert loss(pred, target) == before
    np.testing.assert_array_equal(loss.pos_weight, [1.0, 2.0])
    with pytest.raises(ValueError):
        loss.pos_weight[0] = 5.0  # read-only view of the loss's own copy


def test_losses_are_not_hashable_but_comparable():
    assert fl.MeanSquaredError() == fl.MeanSquaredError()
    assert fl.MeanSquaredError() != fl.MeanAbsoluteError()
    assert fl.Huber(1.0) != fl.Huber(2.0)
    with pytest.raises(TypeError):
        hash(fl.MeanSquaredError())


@pytest.mark.parametrize("name", ["binary_cross_entropy", "hinge"])
def test_inputs_unchanged_when_the_call_fails(name, rng):
    loss = fl.get(name, reduction="none")
    pred, target = REFERENCES[name].inputs(rng, (6, 5), {})
    weight = rng.uniform(0.1, 2, 6)
    target[2, 3] = 5.0  # a bad label / probability, found by the kernel
    arrays = (pred, target, weight)
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match="y_true"):
        loss.value_and_grad(pred, target, weight)
    for array, copy in zip(arrays, before):
        np.testing.assert_array_equal(array, copy)


def test_python_lists_and_scalars():
    loss = fl.MeanSquaredError()
    assert loss([1.0, 2.0, 4.0], [1, 1, 1]) == pytest.approx(10 / 3)
    np.testing.assert_allclose(loss.grad([1.0, 2.0, 4.0], [1, 1, 1]), [0, 2 / 3, 2.0])
    assert fl.MeanSquaredError(reduction="sum")(3.0, 1.0) == 4.0
    grad = fl.MeanSquaredError().grad(3.0, 1.0)
    assert isinstance(grad, np.ndarray) and grad.shape == () and grad == 4.0
    assert fl.MeanSquaredError().grad(np.float32(3.0), 1.0).dtype == np.float32
    # 0-d inputs that need a cast stay 0-d
    for pred, target in ((np.float16(3.0), 1), (np.array(3.0), np.array(1)), (3, 1.0)):
        value, grad = fl.MeanSquaredError(reduction="none").value_and_grad(pred, target)
        assert np.shape(value) == () and grad.shape == () and grad == 4.0


# ---------------------------------------------------------------------------------------
# bad input: a clear error naming the argument and the offending value or shape
# ---------------------------------------------------------------------------------------
def test_sample_weight_of_a_scalar_prediction():
    with pytest.raises(ValueError, match="sample_weight.*scalar"):
        fl.MeanSquaredError()(np.float64(1.0), np.float64(0.0), np.ones(1))


def test_bad_array_types():
    loss = fl.MeanSquaredError()
    with pytest.raises(TypeError, match="y_pred.*None"):
        loss(None, np.zeros(2))
    with pytest.raises(TypeError, match="y_true.*None"):
        loss(np.zeros(2), None)
    with pytest.raises(TypeError, match="y_pred.*complex128"):
        loss(np.zeros(2, dtype=complex), np.zeros(2))
    with pytest.raises(TypeError, match="y_pred.*<U"):
        loss(np.array(["a", "b"]), np.zeros(2))
    with pytest.raises(TypeError, match="y_true.*complex"):
        loss(np.zeros(2), np.zeros(2, dtype=complex))
    with pytest.raises(TypeError, match="sample_weight.*<U"):
        loss(np.zeros(2), np.zeros(2), np.array(["a", "b"]))


@pytest.mark.parametrize("from_logits", [False, True])
def test_bce_probabilities_outside_zero_one(from_logits, rng):
    loss = fl.BinaryCrossEntropy(from_logits=from_logits)
    pred = rng.uniform(0.1, 0.9, (4, 3))
    target = rng.uniform(0, 1, (4, 3))
    for bad_value in (1.5, -0.25, 1.0000001, -1e-300, np.inf):
        target_bad = target.copy()
        target_bad[2, 1] = bad_value
        message = rf"y_true.*\[0, 1\].*{re.escape(repr(bad_value))} at index \(2, 1\)"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, target_bad)
    if from_logits:
        assert np.isfinite(loss(pred * 100 - 50, target))  # logits may be anything
        return
    for bad_value in (1.5, -0.25, -0.0000001, np.inf, -np.inf):
        pred_bad = pred.copy()
        pred_bad[3, 0] = bad_value
        message = rf"y_pred.*\[0, 1\].*{re.escape(repr(bad_value))} at index \(3, 0\)"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred_bad, target)


@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
def test_hinge_bad_labels(name, rng):
    loss = fl.get(name)
    pred = rng.normal(size=(3, 4))
    for bad in (0.5, 2.0, -2.0, np.nan):
        target = rng.choice([-1.0, 1.0], (3, 4))
        target[1, 2] = bad
        with pytest.raises(ValueError, match=rf"y_true.*{{-1, 1}}.*{{0, 1}}.*"
                                             rf"{re.escape(repr(bad))} at index \(1, 2\)"):
            loss.value_and_grad(pred, target)
    mixed = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, -1.0, 1.0], [1.0] * 4])
    for call in (loss, loss.grad, loss.value_and_grad):
        with pytest.raises(ValueError, match=r"y_true.*mix of 0 \(at index \(0, 1\)\) "
                                             r"and -1 \(at index \(1, 2\)\)"):
            call(pred, mixed)


def test_errors_found_by_any_thread(rng, set_threads, parallel_always):
    """A bad value in the second thread's chunk is reported as well as one in the first."""
    set_threads(2)
    n = 1000
    pred = rng.uniform(0.1, 0.9, n)
    for index in (3, n - 2):
        bad = pred.copy()
        bad[index] = 2.0
        with pytest.raises(ValueError, match=rf"y_pred.*2\.0 at index \({index},\)"):
            fl.BinaryCrossEntropy().value_and_grad(bad, np.zeros(n))
    labels = np.ones(n)
    labels[10], labels[n - 10] = 0.0, -1.0  # each thread alone sees a valid convention
    with pytest.raises(ValueError, match="mix of 0"):
        fl.Hinge()(pred, labels)


@pytest.mark.parametrize("cls", [fl.Huber, fl.PseudoHuber])
def test_bad_delta(cls):
    for bad in (0, 0.0, -1.0, -np.inf, np.inf, np.nan):
        with pytest.raises(ValueError, match=rf"delta.*> 0.*got {re.escape(repr(bad))}"):
            cls(delta=bad)
        with pytest.raises(ValueError, match="delta"):
            fl.get(cls.name, delta=bad)
    for bad in ("1.0", None, True, [1.0], 1 + 1j):
        with pytest.raises(TypeError, match=rf"delta.*real number.*{re.escape(repr(bad))}"):
            cls(delta=bad)


def test_bad_label_smoothing_and_from_logits():
    for bad in (-0.1, 1.5, np.nan, np.inf):
        with pytest.raises(ValueError, match=rf"label_smoothing.*\[0, 1\].*"
                                             rf"{re.escape(repr(float(bad)))}"):
            fl.BinaryCrossEntropy(label_smoothing=bad)
    with pytest.raises(TypeError, match="label_smoothing.*'0.1'"):
        fl.BinaryCrossEntropy(label_smoothing="0.1")
    for bad in ("yes", None, 2):
        with pytest.raises(ValueError, match=rf"from_logits.*{re.escape(repr(bad))}"):
            fl.BinaryCrossEntropy(from_logits=bad)


def test_bad_pos_weight():
    with pytest.raises(ValueError, match="pos_weight.*from_logits=True"):
        fl.BinaryCrossEntropy(pos_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="pos_weight.*from_logits=True"):
        fl.get("binary_cross_entropy", pos_weight=[1.0])
    for bad, message in (([[1.0, 2.0]], r"pos_weight.*1-D.*\(1, 2\)"),
                         ([], r"pos_weight.*non-empty.*\(0,\)"),
                         ([1.0, np.nan], "pos_weight.*finite"),
                         (["a"], "pos_weight.*real")):
        with pytest.raises(ValueError, match=message):
            fl.BinaryCrossEntropy(from_logits=True, pos_weight=bad)
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"pos_weight: 3 weights.*last axis.*\(4, 2\)"):
        loss(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"pos_weight: 3 weights.*\(3, 2\)"):
        loss.grad(np.zeros((3, 2)), np.zeros((3, 2)))  # N == len is not the last axis


def test_unknown_loss_and_parameter():
    with pytest.raises(ValueError, match=r"unknown loss 'nope'.*available: "
                                         r"binary_cross_entropy, binary_focal_cross_entropy"):
        fl.get("nope")
    for bad in (None, 3, ["mse"]):
        with pytest.raises(ValueError, match=rf"unknown loss {re.escape(repr(bad))}"):
            fl.get(bad)
    with pytest.raises(ValueError, match=r"mse: unknown parameter 'alpha'.*accepted: "
                                         r"reduction"):
        fl.get("mse", alpha=1)
    with pytest.raises(TypeError, match="unknown parameter 'deltas'"):  # also a TypeError
        fl.get("huber", deltas=1.0)
    with pytest.raises(ValueError, match="unknown parameter 'from_logit'.*from_logits"):
        fl.get("binary_cross_entropy", from_logit=True)
    with pytest.raises(TypeError):
        fl.MeanSquaredError(alpha=1)


def test_out_sharing_memory_with_an_input_is_rejected():
    """out= receives the gradient while the kernel reads the inputs: an overlap would
    modify an input (never allowed), so it is a ValueError naming the input."""
    pred = np.linspace(-1, 1, 12).reshape(3, 4)
    target = np.zeros((3, 4))
    kept = pred.copy()
    loss = fl.MeanSquaredError()
    with pytest.raises(ValueError, match="out: shares memory with y_pred"):
        loss.value_and_grad(pred, target, out=pred)            # the one-call fast path
    with pytest.raises(ValueError, match="out: shares memory with y_true"):
        loss.grad(pred, target, out=target)
    buffer = np.zeros((3, 4))
    with pytest.raises(ValueError, match="out: shares memory with y_true"):
        loss.grad(pred, buffer[:, ::-1], out=buffer)          # the converting path
    with pytest.raises(ValueError, match="out: shares memory with sample_weight"):
        flat = np.zeros(12)
        loss.grad(pred.ravel(), target.ravel(), sample_weight=flat, out=flat)
    np.testing.assert_array_equal(pred, kept)
    rows = fl.get("sparse_categorical_cross_entropy", from_logits=True)
    with pytest.raises(ValueError, match="out: shares memory with y_pred"):
        rows.value_and_grad(pred, np.array([0, 1, 2]), np.ones(3), out=pred)
    np.testing.assert_array_equal(pred, kept)
