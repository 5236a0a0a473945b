"""Cross-entropy of scores with more than two axes, the classes on ``axis``: the NumPy API
(torch's (N, C, d1, ..., dk) layout with ``axis=1``, read class-strided, and Keras'
classes-last layout) and fastloss.torch.cross_entropy on contiguous and channels-last
tensors, against torch autograd ``F.cross_entropy`` in float64 and float32."""
import numpy as np
import pytest

import fastloss as fl
from fastloss._dispatch import kernels

torch = pytest.importorskip("torch")
F = torch.nn.functional
FL = pytest.importorskip("fastloss.torch")

TOL = {np.float64: 1e-12, np.float32: 2e-5}
SHAPES = [(3, 5, 7), (2, 4, 6, 5), (2, 3, 4, 5, 3), (4, 21, 17, 19)]
ODD_SHAPES = [(1, 1, 1), (2, 3, 1), (1, 1, 9), (3, 2, 17), (2, 5, 33), (2, 300, 37),
              (2, 7, 1000), (1, 2, 16), (5, 3, 257)]
REDUCTIONS = ("mean", "sum", "none")
OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"class_weight": True},
    {"ignore_index": 1},
    {"class_weight": True, "label_smoothing": 0.1, "ignore_index": 2},
    {"ignore_index": -100, "ignored": True},
]


@pytest.fixture
def rng():
    return np.random.default_rng(20261201)


def logits(rng, shape, dtype):
    return (rng.standard_normal(shape) * 3).astype(dtype)


def labels_for(rng, shape, ignore_index=None, ignored=False):
    """Labels of the positions of (N, C, d1, ...) scores, every 5th one ignore_index
    when ``ignored``."""
    labels = rng.integers(0, shape[1], shape[:1] + shape[2:])
    if ignored and ignore_index is not None:
        labels.reshape(-1)[::5] = ignore_index
    return labels


def torch_reference(x, target, reduction, **kwargs):
    """F.cross_entropy's value and input gradient (of the sum for "none")."""
    xt = torch.tensor(x, requires_grad=True)
    value = F.cross_entropy(xt, torch.as_tensor(target), reduction=reduction, **kwargs)
    (value.sum() if reduction == "none" else value).backward()
    return value.detach().numpy(), xt.grad.numpy()


def assert_close(actual, expected, dtype, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                               err_msg=what)


def options(rng, n_classes, dtype, opts):
    """(fastloss parameters, torch keyword arguments) of an OPTIONS entry."""
    params, kwargs = {}, {}
    if opts.get("class_weight"):
        weight = rng.uniform(0.5, 2.0, n_classes)
        params["class_weight"] = weight
        kwargs["weight"] = torch.tensor(weight.astype(dtype))
    if "label_smoothing" in opts:
        params["label_smoothing"] = kwargs["label_smoothing"] = opts["label_smoothing"]
    if "ignore_index" in opts:
        params["ignore_index"] = kwargs["ignore_index"] = opts["ignore_index"]
    return params, kwargs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES + ODD_SHAPES, ids=str)
def test_sparse_matches_torch_for_every_option(shape, dtype, rng):
    for opts in OPTIONS:
        params, kwargs = options(rng, shape[1], dtype, opts)
        x = logits(rng, shape, dtype)
        y = labels_for(rng, shape, opts.get("ignore_index"), opts.get("ignored", True))
        for reduction in REDUCTIONS:
            loss = fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1,
                                                    reduction=reduction, **params)
            value, grad = loss.value_and_grad(x, y)
            expected_value, expected_grad = torch_reference(x, y, reduction, **kwargs)
            what = f"{shape} {opts} {reduction}"
            assert_close(value, expected_value, dtype, what)
            assert_close(grad, expected_grad, dtype, what)
            assert grad.dtype == dtype and grad.flags.c_contiguous
            # the value alone and the gradient alone are the same computation
            assert_close(loss(x, y), value, dtype, what)
            np.testing.assert_array_equal(loss.grad(x, y), grad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES + [(2, 1, 5), (2, 300, 37), (3, 2, 17)], ids=str)
def test_probability_targets_match_torch(shape, dtype, rng):
    for opts in OPTIONS[:3]:
        params, kwargs = options(rng, shape[1], dtype, opts)
        x = logits(rng, shape, dtype)
        target = np.moveaxis(rng.dirichlet(np.ones(shape[1]), shape[:1] + shape[2:]), -1,
                             1).astype(dtype)
        for reduction in REDUCTIONS:
            loss = fl.CategoricalCrossEntropy(from_logits=True, axis=1, reduction=reduction,
                                              **params)
            value, grad = loss.value_and_grad(x, target)
            expected_value, expected_grad = torch_reference(x, target, reduction, **kwargs)
            assert_close(value, expected_value, dtype, f"{shape} {opts} {reduction}")
            assert_close(grad, expected_grad, dtype, f"{shape} {opts} {reduction}")


@pytest.mark.parametrize("cls", ["SparseCategoricalCrossEntropy", "CategoricalCrossEntropy"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_any_class_axis_equals_the_rows_of_moved_classes(cls, from_logits, axis, rng):
    """Every axis, z_loss and sample weights (no torch counterpart): the result of the
    same scores with the classes moved last, as (N, C) rows."""
    shape = (3, 6, 5, 20)
    x = rng.uniform(0.05, 1.0, shape) if not from_logits else logits(rng, shape, np.float64)
    n_classes = shape[axis]
    positions = np.delete(shape, axis % len(shape))
    sparse = cls == "SparseCategoricalCrossEntropy"
    if sparse:
        target = rng.integers(0, n_classes, positions)
        target.reshape(-1)[::7] = -100
        target_rows = target.reshape(-1)
    else:
        target = np.moveaxis(rng.dirichlet(np.ones(n_classes), tuple(positions)), -1, axis)
        target_rows = np.moveaxis(target, axis, -1).reshape(-1, n_classes)
    params = {"label_smoothing": 0.1, "class_weight": rng.uniform(0.5, 2.0, n_classes)}
    if from_logits:
        params["z_loss"] = 0.01
    weight = rng.uniform(0.0, 2.0, positions)
    for reduction in REDUCTIONS:
        loss = getattr(fl, cls)(from_logits=from_logits, axis=axis, reduction=reduction,
                                **params)
        rows = getattr(fl, cls)(from_logits=from_logits, reduction=reduction, **params)
        for w in (None, weight, weight[:, 0, 0]):
            value, grad = loss.value_and_grad(x, target, w)
            w_rows = None if w is None else np.broadcast_to(
                w.reshape(w.shape + (1,) * (len(positions) - w.ndim)), positions).reshape(-1)
            expected_value, expected_grad = rows.value_and_grad(
                np.moveaxis(x, axis, -1).reshape(-1, n_classes), target_rows, w_rows)
            if reduction == "none":
                expected_value = expected_value.reshape(positions)
            expected_grad = np.moveaxis(
                expected_grad.reshape(np.moveaxis(x, axis, -1).shape), -1, axis)
            assert_close(value, expected_value, np.float64, f"{axis} {reduction}")
            assert_close(grad, expected_grad, np.float64, f"{axis} {reduction}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channels_last_arrays_give_the_same_bits(dtype, rng):
    """A NumPy array in channels-last memory (copied once to the class-strided layout)."""
    x = logits(rng, (2, 6, 9, 11), dtype)
    y = labels_for(rng, x.shape, -100, True)
    channels_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    assert not channels_last.flags.c_contiguous
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1, reduction="none")
    value, grad = loss.value_and_grad(x, y)
    value2, grad2 = loss.value_and_grad(channels_last, y)
    np.testing.assert_array_equal(value, value2)
    np.testing.assert_array_equal(grad, grad2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(4, 21, 33, 35), (3, 300, 41), (64, 3, 50)], ids=str)
def test_threads_give_the_same_bits(shape, dtype, rng):
    x = logits(rng, shape, dtype)
    y = labels_for(rng, shape, -100, True)
    target = np.moveaxis(rng.dirichlet(np.ones(shape[1]), shape[:1] + shape[2:]), -1,
                         1).astype(dtype)
    weight = rng.uniform(0, 2, shape[:1] + shape[2:]).astype(dtype)
    previous_work, previous_threads = kernels.set_min_block_work(256), fl.get_num_threads()
    try:
        for loss, t in ((fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1,
                                                          label_smoothing=0.1), y),
                        (fl.CategoricalCrossEntropy(from_logits=True, axis=1, z_loss=0.1),
                         target)):
            results = []
            for threads in (1, 2):
                fl.set_num_threads(threads)
                results.append(loss.value_and_grad(x, t, weight))
            assert results[0][0] == results[1][0]
            np.testing.assert_array_equal(results[0][1], results[1][1])
    finally:
        kernels.set_min_block_work(previous_work)
        fl.set_num_threads(previous_threads)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.float64])
def test_out_of_range_label_is_named_with_its_position(label_dtype, rng):
    x = logits(rng, (2, 4, 3, 5), np.float32)
    y = labels_for(rng, x.shape).astype(label_dtype)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1)
    out = np.full_like(x, 7.0)
    for bad in (4, -1):
        y_bad = y.copy()
        y_bad[1, 2, 3] = bad
        with pytest.raises(ValueError, match=rf"^y_true: label {bad} at position "
                                             rf"\(1, 2, 3\) is outside \[0, 4\)"):
            loss.value_and_grad(x, y_bad, out=out)
        assert (out == 7.0).all()   # found before the pass: out untouched
    with pytest.raises(ValueError, match=r"^y_true: expected labels of shape \(2, 3, 5\)"):
        loss(x, y[:, :2])


def test_wrong_shapes_and_axis_name_the_argument(rng):
    x = logits(rng, (2, 4, 3, 5), np.float64)
    y = labels_for(rng, x.shape)
    with pytest.raises(ValueError, match=r"^sample_weight: expected shape \(2, 3, 5\)"):
        fl.SparseCategoricalCrossEntropy(axis=1, from_logits=True)(x, y, np.ones(3))
    with pytest.raises(ValueError, match=r"^y_pred: .*axis=4.*\(2, 4, 3, 5\)"):
        fl.SparseCategoricalCrossEntropy(axis=4, from_logits=True)(x, y)
    with pytest.raises(fl.InvalidParameterError, match="axis must be an int"):
        fl.CategoricalCrossEntropy(axis=1.0)
    with pytest.raises(ValueError, match=r"^y_true: "):
        fl.CategoricalCrossEntropy(axis=1, from_logits=True)(x, x[:, :3])


@pytest.mark.parametrize("shape", [(0, 5, 7), (2, 5, 0)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_inputs_give_what_torch_gives(shape, reduction, rng):
    x = logits(rng, shape, np.float64)
    y = labels_for(rng, shape)
    value, grad = fl.SparseCategoricalCrossEntropy(
        from_logits=True, axis=1, reduction=reduction).value_and_grad(x, y)
    expected_value, expected_grad = torch_reference(x, y, reduction)
    np.testing.assert_array_equal(np.asarray(value), expected_value)
    assert grad.shape == expected_grad.shape


def test_nan_propagates_and_ignored_positions_stay_zero(rng):
    x = logits(rng, (2, 3, 20), np.float64)
    y = labels_for(rng, x.shape)
    x[0, 1, 4] = np.nan
    y[0, 4] = -100
    x[1, 2, 7] = np.nan
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1, reduction="none")
    value, grad = loss.value_and_grad(x, y)
    expected_value, expected_grad = torch_reference(x, y, "none")
    np.testing.assert_array_equal(np.isnan(value), np.isnan(expected_value))
    assert value[0, 4] == 0 and (grad[0, :, 4] == 0).all()   # ignored, even with a NaN
    assert np.isnan(grad[1, :, 7]).all()


# -- fastloss.torch ------------------------------------------------------------------------

def kernel_inputs(monkeypatch):
    """Record the y_pred arrays the cross-entropy losses receive."""
    seen = []
    for cls in (fl.SparseCategoricalCrossEntropy, fl.CategoricalCrossEntropy):
        original = cls.value_and_grad

        def spy(self, y_pred, *args, _original=original, **kwargs):
            seen.append(y_pred)
            return _original(self, y_pred, *args, **kwargs)
        monkeypatch.setattr(cls, "value_and_grad", spy)
    return seen


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adapter_reads_spatial_input_in_place(layout, dtype, monkeypatch, rng):
    seen = kernel_inputs(monkeypatch)
    shape = (3, 5, 6, 7)
    x = torch.tensor(logits(rng, shape, np.float64), dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = torch.as_tensor(labels_for(rng, shape, -100, True))
    weight = torch.tensor(rng.uniform(0.5, 2, 5), dtype=dtype)
    reference = x.detach().clone().requires_grad_(True)
    for kwargs in ({}, {"weight": weight, "label_smoothing": 0.1}, {"reduction": "none"}):
        x.grad = reference.grad = None
        seen.clear()
        value = FL.cross_entropy(x, y, **kwargs)
        expected = F.cross_entropy(reference, y, **kwargs)
        # reduction="none": one upstream value per position
        upstream = (torch.rand(expected.shape, dtype=dtype) if expected.ndim else None)
        value.backward(upstream)
        expected.backward(upstream)
        tol = TOL[np.float64 if dtype == torch.float64 else np.float32]
        torch.testing.assert_close(value, expected, rtol=tol, atol=tol)
        torch.testing.assert_close(x.grad, reference.grad, rtol=tol, atol=tol)
        (array,) = seen
        # the kernel reads the tensor's own memory: no copy
        assert array.__array_interface__["data"][0] == x.data_ptr()
        if layout == "contiguous":
            assert array.shape == shape
            assert x.grad.is_contiguous()
        else:
            assert array.shape == (3 * 6 * 7, 5)
            assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 4, 9), (2, 3, 4, 5), (2, 3, 2, 3, 4)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_adapter_matches_torch_for_3d_4d_5d(shape, reduction, rng):
    x = torch.tensor(logits(rng, shape, np.float32), requires_grad=True)
    reference = x.detach().clone().requires_grad_(True)
    y = torch.as_tensor(labels_for(rng, shape, 2, True))
    probs = torch.softmax(torch.randn(shape, dtype=torch.float32), dim=1)
    for target, kwargs in ((y, {"ignore_index": 2}), (probs, {"label_smoothing": 0.2})):
        x.grad = reference.grad = None
        value = FL.cross_entropy(x, target, reduction=reduction, **kwargs)
        expected = F.cross_entropy(reference, target, reduction=reduction, **kwargs)
        upstream = torch.rand(expected.shape)   # a non-uniform upstream gradient
        value.backward(upstream)
        expected.backward(upstream)
        torch.testing.assert_close(value, expected, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(x.grad, reference.grad, rtol=2e-5, atol=2e-5)


def test_adapter_out_of_range_label_raises_torchs_error(rng):
    x = torch.tensor(logits(rng, (2, 4, 3, 5), np.float32), requires_grad=True)
    y = torch.as_tensor(labels_for(rng, (2, 4, 3, 5)))
    y[1, 2, 3] = 4
    with pytest.raises((IndexError, RuntimeError)):
        F.cross_entropy(x, y)
    with pytest.raises((IndexError, RuntimeError)):
        FL.cross_entropy(x, y)
