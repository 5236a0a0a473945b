"""dice and tversky (ratios of sums) against the Keras formulas in PyTorch float64: random
data on every kind of axis, long groups cut into chunks, extremes, and the axis and
sample_weight semantics (the generic contract of every loss is in test_contract.py)."""
import itertools
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

import fastloss as fl
from fastloss._tools import reference

torch = pytest.importorskip("torch")

LOSSES = [("dice", {}), ("tversky", {}), ("tversky", {"alpha": 0.3, "beta": 0.7}),
          ("tversky", {"alpha": 1.0, "beta": 0.0}),
          ("tversky", {"alpha": 0.0, "beta": 2.5})]
LOSS_IDS = [f"{name}{params or ''}" for name, params in LOSSES]
SHAPE = (4, 3, 5, 2)


def keras_value_and_grad(name, pred, target, params, reduction="none", weight=None):
    """The Keras formula of the loss in PyTorch float64 (fastloss._tools.reference),
    reduced the fastloss way: (value, gradient of the sum of the value)."""
    x = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    value = reference.torch_loss(name, x, torch.tensor(target, dtype=torch.float64),
                                 params, reduction,
                                 None if weight is None else torch.tensor(weight))
    value.sum().backward()
    return value.detach().numpy(), x.grad.numpy()


def masks_and_probabilities(rng, shape):
    """Predictions in (0, 1) and binary targets (ratio losses are for segmentation)."""
    return rng.uniform(0.0, 1.0, shape), (rng.random(shape) < 0.4).astype(np.float64)


def every_axis(ndim):
    """None and every non-empty set of axes: as tuples, and some as negative ints."""
    axes = [None]
    for k in range(1, ndim + 1):
        axes += list(itertools.combinations(range(ndim), k))
    return axes + [-1, (-2, -1), (1, -1), (-ndim,)]


def assert_close(actual, expected, dtype, what=""):
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------------------
# the Keras formulas
# ---------------------------------------------------------------------------------------
def test_the_keras_docstring_example():
    """keras.losses.Dice's own example (computed there in float32)."""
    y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]],
                       [[[1.0], [1.0]], [[0.0], [0.0]]]], dtype=np.float32)
    y_pred = np.array([[[[0.0], [1.0]], [[0.0], [1.0]]],
                       [[[0.4], [0.0]], [[0.0], [0.9]]]], dtype=np.float32)
    values = fl.Dice(axis=(1, 2, 3), reduction="none")(y_pred, y_true)
    assert values.shape == (2,) and values.dtype == np.float32
    np.testing.assert_allclose(values, [0.5, 0.75757575], rtol=1e-6)
    value = fl.Dice()(y_pred, y_true)
    assert value == pytest.approx(0.6164384, rel=1e-6)
    assert fl.Dice(reduction="none")(y_pred, y_true).shape == ()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, params", LOSSES, ids=LOSS_IDS)
def test_every_axis_matches_keras(name, params, dtype, rng):
    """Every set of axes of a 4-D input (those with axis 0 included), each reduction,
    with sample weights wherever axis 0 is kept."""
    pred, target = masks_and_probabilities(rng, SHAPE)
    pred32, target32 = pred.astype(dtype), target.astype(dtype)
    weight = rng.uniform(0.0, 2.0, SHAPE[0])
    for axis in every_axis(len(SHAPE)):
        kept = reference.REFERENCES[name].terms_shape(SHAPE, {"axis": axis})
        for reduction in ("mean", "sum", "none"):
            loss = fl.get(name, axis=axis, reduction=reduction, **params)
            weighable = reference.REFERENCES[name].weighable(SHAPE, {"axis": axis})
            for w in (None, weight) if weighable else (None,):
                want_value, want_grad = keras_value_and_grad(
                    name, pred32.astype(np.float64), target32.astype(np.float64),
                    {"axis": axis, **params}, reduction, w)
                value, grad = loss.value_and_grad(pred32, target32,
                                                  None if w is None else w.astype(dtype))
                what = f"axis={axis} {reduction} weighted={w is not None}"
                if reduction == "none":
                    assert value.shape == kept and value.dtype == dtype, what
                assert_close(value, want_value, dtype, what)
                assert_close(grad, want_grad, dtype, what)


def assert_keras_values_and_same_bits_on_1_and_2_threads(name, params, cases, rng,
                                                         set_threads):
    """For each (shape, axis) of ``cases``: "none" values and gradient of the Keras
    formula, and the same bits with 1 and 2 threads."""
    for shape, axis in cases:
        pred, target = masks_and_probabilities(rng, shape)
        loss = fl.get(name, axis=axis, reduction="none", **params)
        want_value, want_grad = keras_value_and_grad(name, pred, target,
                                                     {"axis": axis, **params})
        results = []
        for n_threads in (1, 2):
            set_threads(n_threads)
            values, grad = loss.value_and_grad(pred, target)
            assert_close(values, want_value, np.float64, f"{shape} axis={axis}")
            assert_close(grad, want_grad, np.float64, f"{shape} axis={axis}")
            results.append((values.tobytes(), grad.tobytes()))
        assert results[0] == results[1], f"{shape} axis={axis}: 1 and 2 threads differ"


@pytest.mark.parametrize("name, params", LOSSES, ids=LOSS_IDS)
def test_long_groups_go_through_chunks_and_match_keras_with_any_thread_count(
        name, params, rng, set_threads):
    """Groups longer than a block: sums by chunks, then the gradient (40 x 20001: in
    two batches of groups)."""
    assert_keras_values_and_same_bits_on_1_and_2_threads(
        name, params, [((200003,), None), ((3, 70001), -1), ((2, 3, 20011), (0, 2)),
                       ((5, 40000), (1,)), ((40, 20001), -1)], rng, set_threads)


@pytest.mark.parametrize("name, params", LOSSES[:2], ids=LOSS_IDS[:2])
def test_small_blocks_cut_groups_into_many_chunks_with_the_same_bits_on_any_threads(
        name, params, rng, set_threads, parallel_always):
    """With blocks of 16 elements every group of a small input is cut into chunks, and
    every threaded path runs."""
    assert_keras_values_and_same_bits_on_1_and_2_threads(
        name, params, [((7, 101), -1), ((333,), None), ((6, 9, 10), (1, 2)),
                       ((6, 2, 3), -1)], rng, set_threads)


# ---------------------------------------------------------------------------------------
# extremes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, params", LOSSES, ids=LOSS_IDS)
def test_all_zero_groups_are_1_minus_0_over_epsilon(name, params, dtype):
    """No mass at all: the value is exactly 1 and the gradient the Keras one (0 where
    nothing is predicted and nothing is true; -d S / d p_i ... elsewhere)."""
    zeros = np.zeros((3, 8), dtype=dtype)
    some = np.zeros((3, 8), dtype=dtype)
    some[1, 2:5] = 1.0
    for pred, target in [(zeros, zeros), (zeros, some), (some, zeros)]:
        values, grad = fl.get(name, axis=-1, reduction="none", **params).value_and_grad(
            pred, target)
        want_value, want_grad = keras_value_and_grad(name, pred, target,
                                                     {"axis": -1, **params})
        np.testing.assert_array_equal(values, want_value.astype(dtype))
        assert np.all(values == 1.0)
        assert_close(grad, want_grad, dtype)
        total = fl.get(name, **params)(pred, target)
        assert total == 1.0
    # empty inputs: one ratio of empty sums for axis=None, as Keras
    empty = np.zeros((0, 4), dtype=dtype)
    assert fl.get(name, **params)(empty, empty) == 1.0
    np.testing.assert_array_equal(fl.get(name, axis=0, reduction="none", **params)(
        empty, empty), np.ones(4, dtype))


def exact_value_and_grad(name, pred, target, params):
    """The Keras formula of the loss over each row of 2-D inputs, in exact rational
    arithmetic: (values, gradient of their sum), each rounded to float64 once.  The
    yardstick where float64 itself cancels or overflows (huge values)."""
    eps = Fraction(reference.EPSILON)
    alpha, beta = Fraction(params.get("alpha", 0.5)), Fraction(params.get("beta", 0.5))
    values, grad = [], []
    for p_row, t_row in zip(pred, target):
        p, t = [Fraction(float(x)) for x in p_row], [Fraction(float(x)) for x in t_row]
        overlap, total_t, total_p = sum(a * b for a, b in zip(t, p)), sum(t), sum(p)
        if name == "dice":
            s = total_t + total_p + eps
            values.append(1 - 2 * overlap / s)
            grad.append([-2 * (ti * s - overlap) / s ** 2 for ti in t])
        else:
            s = (overlap + alpha * (total_p - overlap) + beta * (total_t - overlap)
                 + eps)
            values.append(1 - overlap / s)
            grad.append([-(ti * s - overlap * (ti + alpha * (1 - ti) - beta * ti)) / s ** 2
                         for ti in t])
    return np.array(values, dtype=np.float64), np.array(grad, dtype=np.float64)


@pytest.mark.parametrize("scale", [1e30, 1e100, 1e200])
@pytest.mark.parametrize("name, params", LOSSES, ids=LOSS_IDS)
def test_huge_values_are_exact_to_rounding(name, params, scale, rng):
    """Huge predictions against masks, and for dice huge targets too (while t p stays
    finite).  Beyond 1e154 S^2 overflows (the kernel divides by S twice); with alpha +
    beta > 1 the Keras formula cancels in float64 (FN = T - I), the kernel's slope does
    not."""
    pred, target = masks_and_probabilities(rng, (3, 20))
    pairs = [(pred * scale, target)]
    if name == "dice" and scale < 1e150:
        pairs.append((pred * scale, target * scale))
    for p, t in pairs:
        values, grad = fl.get(name, axis=-1, reduction="none", **params).value_and_grad(
            p, t)
        want_value, want_grad = exact_value_and_grad(name, p, t, params)
        assert np.all(np.isfinite(grad))
        assert_close(values, want_value, np.float64)
        assert_close(grad, want_grad, np.float64)


@pytest.mark.parametrize("name, params", LOSSES, ids=LOSS_IDS)
def test_float32_at_its_largest_values_is_finite_and_exact_to_rounding(name, params,
                                                                       rng):
    """float32 predictions near 3e38 (sums in float64 stay finite)."""
    pred, target = masks_and_probabilities(rng, (2, 100))
    pred32 = (pred * 3e38).astype(np.float32)
    target32 = target.astype(np.float32)
    values, grad = fl.get(name, axis=-1, reduction="none", **params).value_and_grad(
        pred32, target32)
    want_value, want_grad = exact_value_and_grad(name, pred32, target32, params)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))
    assert_close(values, want_value, np.float32)
    # the gradient is ~1e-41 here, among float32's subnormals: exact to their spacing
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=2 * 2.0 ** -149)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_a_gradient_whose_terms_cancel_is_exact_to_rounding(dtype):
    """Tversky without false negatives on groups of equal targets: d/dp_i = -(t_i (alpha
    P + eps) - alpha I) / S^2 = -eps t / S^2, its two terms equal to 7 digits or more.
    The coefficients stay in float64 until the product with t_i, so float32 gets its
    own rounding, float64 that of terms of P / eps times the result (~1e-8 here)."""
    pred = np.array([[1e-3, 0.5], [0.5, 0.25], [2.0, 3.0]], dtype=dtype)
    target = np.ones_like(pred)
    params = {"alpha": 1.0, "beta": 0.0}
    for axis, rows in [(-1, pred), (None, pred.reshape(1, -1))]:
        grad = fl.Tversky(axis=axis, reduction="sum", **params).grad(pred, target)
        _, want = exact_value_and_grad("tversky", rows, np.ones_like(rows), params)
        np.testing.assert_allclose(grad.reshape(want.shape), want,
                                   rtol=1e-6 if dtype == np.float32 else 1e-7)


@pytest.mark.parametrize("name, params", LOSSES[:2], ids=LOSS_IDS[:2])
def test_nan_spreads_over_its_group_only(name, params, rng):
    pred, target = masks_and_probabilities(rng, (3, 20))
    pred[1, 7] = np.nan
    values, grad = fl.get(name, axis=-1, reduction="none", **params).value_and_grad(
        pred, target)
    assert np.isnan(values[1]) and np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(values[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))
    assert np.isnan(fl.get(name, **params)(pred, target))


# ---------------------------------------------------------------------------------------
# axis and sample_weight
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_axis_parameter_is_none_an_int_or_distinct_ints(cls):
    assert cls().axis is None
    assert cls(axis=2).axis == (2,)
    assert cls(axis=[1, -1]).axis == (1, -1)
    assert cls(axis=(np.int64(1), 2)).axis == (1, 2)
    assert cls(axis=-1) == cls(axis=(-1,))
    for bad in [(), [], (1, 1), 1.0, (1, 2.0), "1", True, (True,), {1}, np.array([1, 2])]:
        with pytest.raises(fl.InvalidParameterError, match=r"^axis "):
            cls(axis=bad)


@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_axis_out_of_range_or_repeated_for_the_input_names_y_pred(cls, rng):
    pred, target = masks_and_probabilities(rng, (4, 5))
    for axis, message in [(2, r"axis 2 is out of range .*\(4, 5\)"),
                          ((1, -3), r"axis -3 is out of range"),
                          ((1, -1), r"axis=\(1, -1\) names dimension 1 twice")]:
        for reduction in ("mean", "none"):
            loss = cls(axis=axis, reduction=reduction)
            for call in (loss, loss.grad, loss.value_and_grad):
                out = np.full((4, 5), 42.0)
                with pytest.raises(ValueError, match=rf"^y_pred: {message}"):
                    call(pred, target) if call is loss else call(pred, target, out=out)
                assert np.all(out == 42.0)


@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_sample_weight_needs_axis_0_kept(cls, rng):
    pred, target = masks_and_probabilities(rng, (4, 5, 3))
    weight = rng.uniform(0.5, 2.0, 4)
    for axis in (None, 0, (0, 2), (1, 0)):
        loss = cls(axis=axis)
        out = np.full(pred.shape, 42.0)
        with pytest.raises(ValueError, match=r"^sample_weight: .*axis 0.*axis=\(1, 2\)"):
            loss.value_and_grad(pred, target, weight, out=out)
        assert np.all(out == 42.0)
    with pytest.raises(ValueError, match=r"^sample_weight: .*1-D y_pred"):
        cls(axis=0)(pred[:, 0, 0], target[:, 0, 0], weight)


@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_sample_weight_multiplies_every_value_of_its_sample(cls, rng):
    """With kept axes beyond axis 0 (here one value per sample and channel), a sample's
    weight multiplies each of its values; "mean" still divides by the number of values."""
    pred, target = masks_and_probabilities(rng, (4, 6, 3))
    weight = rng.uniform(0.5, 2.0, 4)
    values = cls(axis=1, reduction="none")(pred, target)
    weighted = cls(axis=1, reduction="none")(pred, target, weight)
    np.testing.assert_allclose(weighted, values * weight[:, None], rtol=1e-15)
    assert cls(axis=1)(pred, target, weight) == pytest.approx(
        (values * weight[:, None]).sum() / values.size, rel=1e-14)


@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_reduction_none_has_the_shape_of_the_kept_axes(cls, rng):
    pred, target = masks_and_probabilities(rng, (2, 3, 4, 5))
    for axis, shape in [(None, ()), ((1, 2, 3), (2,)), ((1, 2), (2, 5)), (0, (3, 4, 5)),
                        (-1, (2, 3, 4)), ((0, 3), (3, 4))]:
        values = cls(axis=axis, reduction="none")(pred, target)
        assert isinstance(values, np.ndarray) and values.shape == shape, axis


@pytest.mark.parametrize("cls", [fl.Dice, fl.Tversky])
def test_trailing_axes_allocate_nothing_of_the_data_size(cls, rng):
    """The ratios over the last axes read y_pred and y_true where they are; any other
    axes are transposed into a copy."""
    pred, target = masks_and_probabilities(rng, (64, 32, 32))
    out = np.empty_like(pred)
    for axis in ((1, 2), -1, None):
        loss = cls(axis=axis)
        loss.value_and_grad(pred, target, out=out)
        tracemalloc.start()
        try:
            loss.value_and_grad(pred, target, out=out)
            loss.grad(pred, target, out=out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4096, (axis, peak)
    tracemalloc.start()
    try:
        cls(axis=(0, 2)).value_and_grad(pred, target, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= pred.nbytes


def test_tversky_coefficients_are_finite_and_non_negative():
    assert fl.Tversky(alpha=0, beta=3).get_params()["beta"] == 3.0
    for key in ("alpha", "beta"):
        for bad in (-0.1, np.nan, np.inf, "0.5", None):
            with pytest.raises(fl.InvalidParameterError, match=rf"^{key} "):
                fl.Tversky(**{key: bad})
