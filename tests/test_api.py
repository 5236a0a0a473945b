"""The NumPy API of fastloss (the losses and the call contract) on the pointwise losses.

Correctness of the numbers is tested against PyTorch/Keras in test_pointwise.py; here each
loss is checked against itself on a canonical input (a C-contiguous float64 or float32
array), so that layouts, dtypes, keywords, out= and errors are tested on every loss.
"""
import inspect
import re

import numpy as np
import pytest

import fastloss as fl

# One configuration per loss class (and the BCE variants), with valid data makers.
LOSSES = {
    "mse": (fl.MeanSquaredError, {}),
    "mae": (fl.MeanAbsoluteError, {}),
    "msle": (fl.MeanSquaredLogarithmicError, {}),
    "huber": (fl.Huber, {"delta": 0.8}),
    "pseudo_huber": (fl.PseudoHuber, {"delta": 1.5}),
    "log_cosh": (fl.LogCosh, {}),
    "hinge": (fl.Hinge, {}),
    "squared_hinge": (fl.SquaredHinge, {}),
    "binary_cross_entropy": (fl.BinaryCrossEntropy, {"label_smoothing": 0.1}),
    "bce_logits": (fl.BinaryCrossEntropy, {"from_logits": True, "pos_weight": [0.5, 2.0, 1.0,
                                                                               3.0, 1.5]}),
}
SHAPE = (6, 5)  # the last axis matches the pos_weight above


def make_inputs(loss_id, rng, shape=SHAPE, dtype=np.float64):
    """Valid (y_pred, y_true, sample_weight) for a loss."""
    if loss_id in ("hinge", "squared_hinge"):
        pred, target = rng.normal(size=shape), rng.choice([-1.0, 1.0], shape)
    elif loss_id == "binary_cross_entropy":
        pred, target = rng.uniform(0.02, 0.98, shape), rng.uniform(0, 1, shape)
    elif loss_id == "bce_logits":
        pred, target = rng.normal(0, 3, shape), rng.uniform(0, 1, shape)
    elif loss_id == "msle":
        pred, target = rng.uniform(0, 4, shape), rng.uniform(0, 4, shape)
    else:
        pred, target = rng.normal(size=shape), rng.normal(size=shape)
    weight = rng.uniform(0.1, 2, shape[0]) if shape else None
    return pred.astype(dtype), target.astype(dtype), weight


def make_loss(loss_id, reduction="mean"):
    cls, params = LOSSES[loss_id]
    return cls(reduction=reduction, **params)


def all_outputs(loss, pred, target, weight=None):
    """__call__, grad and value_and_grad, as plain arrays."""
    value = loss(pred, target, weight)
    grad = loss.grad(pred, target, weight)
    fused_value, fused_grad = loss.value_and_grad(pred, target, weight)
    return [np.asarray(value), grad, np.asarray(fused_value), fused_grad]


def assert_outputs_equal(got, want, rtol=0.0):
    for g, w in zip(got, want):
        assert np.asarray(g).dtype == np.asarray(w).dtype
        if rtol:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=0)
        else:
            np.testing.assert_array_equal(g, w)


REDUCTIONS = ["mean", "sum", "none"]


# ---------------------------------------------------------------------------------------
# registry, construction, repr
# ---------------------------------------------------------------------------------------
EXPECTED_NAMES = ["binary_cross_entropy", "hinge", "huber", "log_cosh", "mae", "mse", "msle",
                  "pseudo_huber", "squared_hinge"]


def test_available_lists_the_pointwise_losses():
    names = fl.available()
    assert names == sorted(names)
    assert set(EXPECTED_NAMES) <= set(names)


@pytest.mark.parametrize("name", fl.available())
def test_get_round_trip(name):
    loss = fl.get(name)
    assert isinstance(loss, fl.Loss)
    assert type(loss).name == name
    assert type(loss).__name__ in fl.__all__
    assert getattr(fl, type(loss).__name__) is type(loss)
    assert loss.reduction == "mean"
    # the parameters round trip: get(name, **params) == Class(**params)
    params = loss.get_params()
    assert fl.get(name, **params) == loss == type(loss)(**params)
    # and so does the repr
    namespace = {"array": np.array, type(loss).__name__: type(loss)}
    assert eval(repr(loss), namespace) == loss


@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_get_params_and_repr_show_the_constructor_arguments(loss_id):
    cls, params = LOSSES[loss_id]
    loss = cls(reduction="sum", **params)
    got = loss.get_params()
    assert got["reduction"] == "sum"
    assert set(got) == set(inspect.signature(cls).parameters)
    for key, value in params.items():
        np.testing.assert_array_equal(got[key], value)
        assert f"{key}=" in repr(loss)
    assert repr(loss).startswith(cls.__name__ + "(")
    assert "reduction='sum'" in repr(loss)
    assert loss == cls(reduction="sum", **params)
    assert loss != cls(reduction="none", **params)


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


# ---------------------------------------------------------------------------------------
# the call protocol
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_arguments_by_keyword(loss_id, rng):
    loss = make_loss(loss_id)
    pred, target, weight = make_inputs(loss_id, rng)
    value, grad = loss.value_and_grad(pred, target, weight)
    assert loss(y_pred=pred, y_true=target, sample_weight=weight) == pytest.approx(value,
                                                                                 rel=1e-14)
    np.testing.assert_array_equal(
        loss.grad(y_true=target, y_pred=pred, sample_weight=weight), grad)
    out = np.empty_like(pred)
    got_value, got_grad = loss.value_and_grad(y_pred=pred, y_true=target,
                                              sample_weight=weight, out=out)
    assert got_value == value and got_grad is out
    np.testing.assert_array_equal(out, grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_out_is_filled_and_returned(loss_id, dtype, reduction, rng):
    loss = make_loss(loss_id, reduction)
    pred, target, weight = make_inputs(loss_id, rng, dtype=dtype)
    want = loss.grad(pred, target, weight)
    out = np.full(pred.shape, 7.0, dtype=dtype)
    assert loss.grad(pred, target, weight, out=out) is out
    np.testing.assert_array_equal(out, want)
    out = np.full(pred.shape, 7.0, dtype=dtype)
    value, grad = loss.value_and_grad(pred, target, weight, out=out)
    assert grad is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_results_are_fresh_arrays(loss_id, reduction, rng):
    """No buffer is shared between calls or with the inputs."""
    loss = make_loss(loss_id, reduction)
    pred, target, weight = make_inputs(loss_id, rng)
    value1, grad1 = loss.value_and_grad(pred, target, weight)
    kept = grad1.copy(), np.copy(value1)
    pred2, target2, weight2 = make_inputs(loss_id, rng)
    value2, grad2 = loss.value_and_grad(pred2, target2, weight2)
    grad3 = loss.grad(pred2, target2, weight2)
    np.testing.assert_array_equal(grad1, kept[0])
    np.testing.assert_array_equal(value1, kept[1])
    for array in (grad1, grad2, grad3):
        for other in (pred, target, weight, pred2, target2, weight2):
            assert not np.shares_memory(array, other)
    assert not np.shares_memory(grad1, grad2) and not np.shares_memory(grad2, grad3)
    if reduction == "none":
        assert not np.shares_memory(value2, grad2)
        assert not np.shares_memory(value1, value2)


# ---------------------------------------------------------------------------------------
# layouts, read-only inputs, inputs never modified
# ---------------------------------------------------------------------------------------
def _layouts(array):
    """The same values in other memory layouts (each is a view, not C-contiguous)."""
    fortran = np.asfortranarray(array)
    doubled = np.repeat(array, 2, axis=-1)[..., ::2]
    reversed_ = np.ascontiguousarray(array[::-1])[::-1]
    transposed = np.ascontiguousarray(array.T).T
    return {"fortran": fortran, "strided": doubled, "reversed": reversed_,
            "transposed": transposed}


@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "transposed"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_non_contiguous_inputs(loss_id, reduction, layout, rng):
    loss = make_loss(loss_id, reduction)
    pred, target, weight = make_inputs(loss_id, rng)
    want = all_outputs(loss, pred, target, weight)
    p = _layouts(pred)[layout]
    t = _layouts(target)[layout]
    w = np.repeat(weight, 3)[::3]
    assert not p.flags.c_contiguous and not t.flags.c_contiguous
    assert not w.flags.c_contiguous
    np.testing.assert_array_equal(p, pred)
    assert_outputs_equal(all_outputs(loss, p, t, w), want)
    assert_outputs_equal(all_outputs(loss, p, target, weight), want)
    assert_outputs_equal(all_outputs(loss, pred, t, weight), want)
    out = np.empty(pred.shape)
    assert loss.grad(p, t, w, out=out) is out
    np.testing.assert_array_equal(out, want[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_read_only_inputs(loss_id, dtype, rng):
    loss = make_loss(loss_id, "none")
    pred, target, weight = make_inputs(loss_id, rng)
    if dtype == np.int64:
        pred = np.round(pred).astype(dtype) if loss_id != "binary_cross_entropy" else \
            (pred > 0.5).astype(dtype)
    else:
        pred = pred.astype(dtype)
    want = all_outputs(loss, pred, target, weight)
    for array in (pred, target, weight):
        array.flags.writeable = False
    assert_outputs_equal(all_outputs(loss, pred, target, weight), want)


def _snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def _assert_unchanged(arrays, snapshot):
    for array, copy in zip(arrays, snapshot):
        if array is not None:
            np.testing.assert_array_equal(array, copy)  # NaN == NaN here


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_inputs_are_never_modified(loss_id, reduction, dtype, rng):
    loss = make_loss(loss_id, reduction)
    pred, target, weight = make_inputs(loss_id, rng, dtype=dtype)
    pred[0, 0] = np.nan
    target_other = target.astype(np.float32 if dtype == np.float64 else np.float64)
    strided_pred = _layouts(pred)["strided"]
    for p, t in ((pred, target), (pred, target_other), (strided_pred, target)):
        arrays = (p, t, weight)
        before = _snapshot(*arrays)
        all_outputs(loss, p, t, weight)
        loss.value_and_grad(p, t, weight, out=np.empty(p.shape, dtype=dtype))
        _assert_unchanged(arrays, before)


@pytest.mark.parametrize("loss_id", ["binary_cross_entropy", "hinge"])
def test_inputs_unchanged_when_the_call_fails(loss_id, rng):
    loss = make_loss(loss_id, "none")
    pred, target, weight = make_inputs(loss_id, rng)
    target[2, 3] = 5.0  # a bad label / probability, found by the kernel
    arrays = (pred, target, weight)
    before = _snapshot(*arrays)
    with pytest.raises(ValueError, match="y_true"):
        loss.value_and_grad(pred, target, weight)
    _assert_unchanged(arrays, before)


# ---------------------------------------------------------------------------------------
# dtype rules
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_float16_computed_in_float32(loss_id, reduction, rng):
    loss = make_loss(loss_id, reduction)
    pred, target, weight = make_inputs(loss_id, rng, dtype=np.float16)
    value, grad = loss.value_and_grad(pred, target, weight)
    value32, grad32 = loss.value_and_grad(pred.astype(np.float32), target.astype(np.float32),
                                          weight.astype(np.float32))
    assert grad.dtype == np.float16
    np.testing.assert_array_equal(grad, grad32.astype(np.float16))
    np.testing.assert_array_equal(loss.grad(pred, target, weight), grad)
    if reduction == "none":
        np.testing.assert_array_equal(value, value32)
    else:
        assert type(value) is float and value == value32
    assert np.asarray(loss(pred, target, weight)).tolist() == np.asarray(value).tolist()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_])
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_integer_and_bool_predictions_computed_in_float64(loss_id, dtype, rng):
    loss = make_loss(loss_id, "none")
    pred, target, weight = make_inputs(loss_id, rng)
    if dtype == np.bool_:
        pred = pred > np.median(pred)
    elif loss_id == "binary_cross_entropy":
        pred = (pred > 0.5).astype(dtype)
    else:
        pred = np.round(2 * pred).astype(dtype)
    value, grad = loss.value_and_grad(pred, target, weight)
    want_value, want_grad = loss.value_and_grad(pred.astype(np.float64), target, weight)
    assert grad.dtype == np.float64 and value.dtype == np.float64
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("target_dtype", [np.float16, np.float32, np.float64, np.int32,
                                          np.bool_])
@pytest.mark.parametrize("pred_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_target_and_weight_cast_to_the_prediction_dtype(loss_id, pred_dtype, target_dtype,
                                                        rng):
    loss = make_loss(loss_id, "none")
    pred, target, weight = make_inputs(loss_id, rng, dtype=pred_dtype)
    if target_dtype in (np.int32, np.bool_):
        target = (target > np.median(target)) if loss_id not in ("hinge", "squared_hinge") \
            else target > 0
    target = target.astype(target_dtype)
    weight = weight.astype(np.float64 if pred_dtype == np.float32 else np.float32)
    value, grad = loss.value_and_grad(pred, target, weight)
    want_value, want_grad = loss.value_and_grad(pred, target.astype(pred_dtype),
                                                weight.astype(pred_dtype))
    assert value.dtype == pred_dtype and grad.dtype == pred_dtype
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("dtype, kernel_dtype, grad_dtype", [
    (">f4", np.float32, np.float32), (">f8", np.float64, np.float64),
    (">f2", np.float32, np.float16), (">i4", np.float64, np.float64)])
def test_byte_swapped_inputs_keep_their_precision(dtype, kernel_dtype, grad_dtype, rng):
    loss = fl.LogCosh(reduction="none")
    pred = rng.normal(0, 3, (4, 5)).astype(dtype)
    target = rng.normal(size=(4, 5)).astype(dtype)
    weight = rng.uniform(size=4).astype(">f8")
    value, grad = loss.value_and_grad(pred, target, weight)
    native = pred.astype(pred.dtype.newbyteorder("="))
    want_value, want_grad = loss.value_and_grad(native, target.astype(native.dtype), weight)
    assert value.dtype == kernel_dtype and grad.dtype == grad_dtype
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)


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
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_shape_mismatch(loss_id, rng):
    loss = make_loss(loss_id)
    pred, target, _ = make_inputs(loss_id, rng)
    for bad in (target[:4], target[:, :1], target.T, target[..., None], target.ravel()):
        message = rf"y_true.*{re.escape(str(bad.shape))}.*{re.escape(str(pred.shape))}"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, bad)


@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_wrong_sample_weight_shape(loss_id, rng):
    loss = make_loss(loss_id)
    pred, target, weight = make_inputs(loss_id, rng)
    for bad in (weight[:-1], np.append(weight, 1.0), weight[:, None], np.ones(5 * 6),
                np.float64(2.0), np.ones((6, 5))):
        shape = re.escape(str(np.shape(bad)))
        with pytest.raises(ValueError, match=rf"sample_weight.*\(6,\).*got shape {shape}"):
            loss.value_and_grad(pred, target, bad)
    with pytest.raises(ValueError, match="sample_weight.*scalar"):
        loss(pred[0, 0], target[0, 0], np.ones(1))


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
                                         r"binary_cross_entropy, categorical_cross_entropy"):
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


@pytest.mark.parametrize("name", fl.available())
def test_bad_reduction(name):
    for bad in ("avg", "MEAN", None, "sum_over_batch_size"):
        with pytest.raises(ValueError, match=rf"reduction.*'mean', 'sum', 'none'.*"
                                             rf"{re.escape(repr(bad))}"):
            fl.get(name, reduction=bad)


@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_bad_out(loss_id, rng):
    loss = make_loss(loss_id)
    pred, target, weight = make_inputs(loss_id, rng)
    cases = [
        (np.empty((6, 4)), r"out: shape \(6, 4\).*\(6, 5\)"),
        (np.empty(30), r"out: shape \(30,\).*\(6, 5\)"),
        (np.empty((6, 5), dtype=np.float32), "out: dtype float32.*float64"),
        (np.empty((6, 5), dtype=np.int64), "out: dtype int64.*float64"),
        (np.empty((5, 6)).T, "out: must be C-contiguous"),
        (np.empty((6, 10))[:, ::2], "out: must be C-contiguous"),
    ]
    read_only = np.empty((6, 5))
    read_only.flags.writeable = False
    cases.append((read_only, "out: is read-only"))
    for out, message in cases:
        for call in (loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, target, weight, out=out)
    with pytest.raises(TypeError, match="out: expected a numpy.ndarray, got list"):
        loss.grad(pred, target, out=[[0.0] * 5] * 6)
    # float16 input: the gradient (and out) are float16
    with pytest.raises(ValueError, match="out: dtype float32.*float16"):
        loss.grad(pred.astype(np.float16), target, out=np.empty((6, 5), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_out_allocates_no_array(loss_id, dtype, rng):
    """With out= and ready inputs, a call allocates nothing of the data's size."""
    import tracemalloc

    loss = make_loss(loss_id, "mean")
    pred, target, weight = make_inputs(loss_id, rng, shape=(4000, 5), dtype=dtype)
    weight = weight.astype(dtype)
    out = np.empty_like(pred)
    loss.value_and_grad(pred, target, weight, out=out)  # warm up (imports, caches)
    tracemalloc.start()
    try:
        loss.grad(pred, target, weight, out=out)
        loss.value_and_grad(pred, target, weight, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < pred.nbytes // 10, peak


@pytest.mark.parametrize("loss_id", list(LOSSES))
def test_pickle_and_deepcopy(loss_id, rng):
    """Losses travel to worker processes (spawn) and copy like other configured objects."""
    import copy
    import pickle

    loss = make_loss(loss_id, "sum")
    pred, target, weight = make_inputs(loss_id, rng)
    for clone in (pickle.loads(pickle.dumps(loss)), copy.deepcopy(loss)):
        assert clone == loss and repr(clone) == repr(loss)
        assert clone(pred, target, weight) == loss(pred, target, weight)


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


ALL_LOSS_INPUTS = {
    "categorical_cross_entropy": "soft", "kl_divergence": "soft",
    "sparse_categorical_cross_entropy": "labels", "multi_margin": "labels",
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", fl.available())
def test_calls_with_out_allocate_nothing(name, dtype):
    """Performance: with out=, a call allocates nothing (tracemalloc peak of a few KiB, for
    an input of 160-320 KB), on the fast path of every loss."""
    import tracemalloc

    rng = np.random.default_rng(3)
    params = {"from_logits": True} if name in ("binary_cross_entropy",
                                                "categorical_cross_entropy",
                                                "sparse_categorical_cross_entropy",
                                                "kl_divergence") else {}
    loss = fl.get(name, **params)
    kind = ALL_LOSS_INPUTS.get(name)
    pred = rng.normal(size=(4000, 10)).astype(dtype)
    if kind == "labels":
        target = rng.integers(0, 10, size=4000)
    elif kind == "soft":
        target = rng.dirichlet(np.ones(10), size=4000).astype(dtype)
    elif name in ("hinge", "squared_hinge"):
        target = np.sign(rng.normal(size=pred.shape)).astype(dtype)
    elif name == "binary_cross_entropy":
        target = rng.uniform(size=pred.shape).astype(dtype)
    else:
        target = np.abs(rng.normal(size=pred.shape)).astype(dtype)
        pred = np.abs(pred)
    out = np.empty_like(pred)
    loss.value_and_grad(pred, target, out=out)      # warm up (imports, caches)
    tracemalloc.start()
    try:
        for _ in range(3):
            loss.value_and_grad(pred, target, out=out)
            loss.grad(pred, target, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak
