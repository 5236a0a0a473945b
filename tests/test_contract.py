"""The contract every registered loss keeps, checked for every loss the registry lists.

The cases are built from ``fastloss.available()`` and, for each name, its ``Reference``
in ``fastloss/_tools/reference.py``: the inputs it makes (valid, away from kinks) and its
parameter variants.  Registering a loss therefore puts it under every test here; a loss
without a reference fails them (and the test that asks for one).

What is checked, for each loss and variant:

- value and gradient against the NumPy reference, for every input dtype, reduction,
  with and without ``sample_weight`` and ``out=``;
- ``__call__``, ``grad`` and ``value_and_grad`` agree; "none" has the gradient of the sum;
- 1 and 2 threads give the same bits; every built ISA level agrees with the default;
- central finite differences of the value match the gradient;
- pickle and deepcopy, keyword arguments, fresh result arrays, no allocation with ``out=``;
- read-only, non-contiguous and byte-swapped inputs give the bits of contiguous ones, and
  inputs are never modified;
- bad input and bad parameters are errors naming the argument.
"""
import copy
import inspect
import math
import pickle
import re
import tracemalloc

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch, _threads
from fastloss._tools import reference
from fastloss._tools.check import finite_differences
from fastloss._tools.reference import REFERENCES

from helpers import kernel_modules, loss_modules

#: classes: the per-class parameters of the reference variants (pos_weight,
#: class_weight) have this many entries, so every shape ends with it
C = 5
#: rows of the row losses' inputs
N = 7
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------
# the cases: every registered loss x every variant of its reference
# ---------------------------------------------------------------------------------------
class Case:
    """One parameter variant of a registered loss, with the reference that feeds it."""

    def __init__(self, name, params, options, ref):
        self.name = name
        self.params = dict(params)
        self.options = dict(options)
        self.ref = ref

    @property
    def id(self):
        parts = [f"{key}={_short(value)}" for key, value in self.params.items()]
        parts += [f"{key}={value}" for key, value in self.options.items()]
        return f"{self.name}({','.join(parts)})"

    @property
    def kind(self):
        return None if self.ref is None else self.ref.kind

    @property
    def rows(self):
        """Whether the loss has one term per row of an (N, C) y_pred."""
        return self.ref is not None and self.ref.rows

    def terms_shape(self, shape):
        """The shape of the values of reduction "none" for a y_pred of ``shape``."""
        return self.reference().terms_shape(shape, self.params)

    def weighable(self, shape):
        """Whether a call on a y_pred of ``shape`` takes a sample_weight."""
        return self.reference().weighable(shape, self.params)

    def reference(self):
        if self.ref is None:
            pytest.fail(f"{self.name} is registered but has no reference in "
                        f"fastloss/_tools/reference.py: nothing checks its numbers")
        return self.ref

    def loss(self, reduction="mean"):
        return fl.get(self.name, reduction=reduction, **self.params)

    def inputs(self, rng, shape, dtype=np.float64):
        """(y_pred, y_true) of ``shape`` from the reference, y_pred of ``dtype``.

        Float dtypes are casts of the reference's float64 values; an integer y_pred is
        their ceiling and a bool y_pred their sign (> 0): both stay valid for predictions
        that are reals, probabilities in (0, 1] or positive values.  A float y_true gets
        y_pred's float dtype (float64 for integer and bool y_pred); labels stay int64.
        """
        pred, target = self.reference().inputs(rng, shape, dict(self.params),
                                               **self.options)
        return as_dtype(pred, dtype), target_like(target, dtype)

    def count(self, pred, target):
        return self.reference().count(np.asarray(pred, dtype=np.float64), target,
                                      self.params)


def _short(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"[{len(value)}]"
    return repr(value)


def _cases():
    cases = []
    for name in fl.available():
        ref = REFERENCES.get(name)
        if ref is None:
            # still a case of every test, which fails it: a loss nothing checks
            cases.append(Case(name, {}, {}, None))
            continue
        cases.extend(Case(name, params, options, ref) for params, options in ref.variants)
    return cases


CASES = _cases()
ROW_CASES = [case for case in CASES if case.rows]
FIRST_CASES = [next(case for case in CASES if case.name == name)
               for name in fl.available()]


def per_class(case):
    """Whether the variant has per-class parameters (the last axis must then be C)."""
    return any(np.ndim(value) for value in case.params.values())


def shapes(case):
    """Pointwise: 1-D (one weight per element; C long with per-class parameters), rows
    of C (the general loop), rows of 13 C (>= 16 elements per weight: the per-row loop).
    Row losses: (N, C), and with a class ``axis`` also scores of more axes (C classes on
    axis 1: torch's layout, read class-strided; or last).  Ratio losses: (N, C) and
    (3, 13, C) (whose ratios over axis 1 are not over the trailing axes)."""
    if case.kind == "pointwise":
        return [(C,) if per_class(case) else (37,), (N, C), (3, 13, C)]
    if case.kind == "ratio":
        return [(N, C), (3, 13, C)]
    if "axis" in case.params:
        return [(N, C), (3, C, 4, 6) if case.params["axis"] == 1 else (3, 4, C)]
    return [(N, C)]


SHAPE_CASES = [(case, shape) for case in CASES for shape in shapes(case)]


def by_case(cases=None):
    cases = CASES if cases is None else cases
    return pytest.mark.parametrize("case", cases, ids=[case.id for case in cases])


def by_case_and_shape():
    return pytest.mark.parametrize(
        "case, shape", SHAPE_CASES,
        ids=[f"{case.id}-{'x'.join(map(str, shape))}" for case, shape in SHAPE_CASES])


# ---------------------------------------------------------------------------------------
# dtypes, tolerances and helpers
# ---------------------------------------------------------------------------------------
DTYPES = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "int": np.int64,
          "bool": np.bool_}
FLOATS = {"f64": np.float64, "f32": np.float32}


def by_dtype(dtypes=DTYPES):
    return pytest.mark.parametrize("dtype", list(dtypes.values()), ids=list(dtypes))


def as_dtype(array, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return array > 0
    if dtype.kind in "iu":
        return np.ceil(array).astype(dtype)
    return array.astype(dtype)


def target_like(target, pred_dtype):
    if target.dtype.kind != "f":
        return target
    pred_dtype = np.dtype(pred_dtype)
    return target.astype(pred_dtype if pred_dtype.kind == "f" else np.float64)


def compute_dtype(dtype):
    """The dtype a y_pred of ``dtype`` is computed in (and "none" values are in)."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def grad_dtype(dtype):
    """The gradient's dtype for a y_pred of ``dtype``."""
    dtype = np.dtype(dtype)
    return dtype if dtype == np.float16 else compute_dtype(dtype)


def weights(case, rng, shape, dtype):
    """Per-sample weights in [0, 2) (one of them 0) of y_pred's float dtype for a y_pred
    of ``shape``; None where the case takes no sample_weight (a ratio loss summing over
    axis 0)."""
    if not case.weighable(shape):
        return None
    n = shape[0]
    w = rng.uniform(0.0, 2.0, n)
    if n > 1:
        w[1] = 0.0
    return w.astype(dtype if np.dtype(dtype).kind == "f" else np.float64)


def cast(array, dtype):
    """``array.astype(dtype)``, or None for None."""
    return None if array is None else array.astype(dtype)


def widen(array):
    """A y_true or sample_weight as the float64 reference takes it: floats and bools as
    float64 (exactly), integer labels unchanged."""
    if array is None:
        return None
    array = np.asarray(array)
    return array if array.dtype.kind in "iu" else array.astype(np.float64)


#: relative tolerance (of each element, and of the largest magnitude) against the
#: float64 reference computed from the very values the loss received
TOLERANCE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5,
             np.dtype(np.float16): 2e-3}


def assert_close(actual, expected, dtype, what=""):
    """``actual`` equals ``expected`` to the rounding of ``dtype`` (NaN where NaN)."""
    tol = TOLERANCE[np.dtype(dtype)]
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, what
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale,
                               err_msg=what)


def expected(case, reduction, pred, target, weight):
    """The NumPy reference's (value, gradient) of the values the loss received."""
    value_and_grad = reference.numpy_value_and_grad(case.name, case.params, reduction)
    with np.errstate(divide="ignore"):  # log(0) of a probability 0 or 1, clamped after
        return value_and_grad(np.asarray(pred, dtype=np.float64), widen(target),
                              widen(weight))


def outputs(loss, pred, target, weight=None):
    """``__call__``, ``grad`` and ``value_and_grad``: (value, grad, value, grad)."""
    return (loss(pred, target, weight), loss.grad(pred, target, weight),
            *loss.value_and_grad(pred, target, weight))


def assert_same_bits(actual, expected, what=""):
    """Equal arrays (or floats) of equal dtypes, bit for bit (-0.0 is not 0.0)."""
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype, what
        np.testing.assert_array_equal(a, e, err_msg=what)
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes(), what


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, copies):
    arrays, copies = list(arrays), list(copies)
    assert len(arrays) == len(copies)
    for array, kept in zip(arrays, copies):
        if array is not None:
            assert np.asarray(array).dtype == kept.dtype
            np.testing.assert_array_equal(array, kept)  # NaN == NaN here


# ---------------------------------------------------------------------------------------
# every loss has a reference; every variant constructs and round-trips
# ---------------------------------------------------------------------------------------
def test_every_registered_loss_has_a_reference():
    missing = [name for name in fl.available() if name not in REFERENCES]
    assert not missing, (f"registered without a reference in fastloss/_tools/reference.py "
                         f"(nothing would check their numbers): {missing}")


def test_every_reference_is_of_a_registered_loss():
    assert set(REFERENCES) <= set(fl.available()), sorted(set(REFERENCES)
                                                          - set(fl.available()))
    for name, ref in REFERENCES.items():
        assert ref.name == name
        assert ref.kind in reference.KINDS
        assert ref.variants, name


@by_case()
def test_every_variant_constructs_and_round_trips(case):
    case.reference()
    for reduction in REDUCTIONS:
        loss = case.loss(reduction)
        cls = type(loss)
        assert isinstance(loss, fl.Loss) and cls.name == case.name
        assert cls.__name__ in fl.__all__ and getattr(fl, cls.__name__) is cls
        assert loss.per_row == case.rows
        params = loss.get_params()
        assert set(params) == set(inspect.signature(cls).parameters)
        assert params["reduction"] == reduction
        for key, value in case.params.items():
            np.testing.assert_array_equal(params[key], value)
            assert f"{key}=" in repr(loss)
        assert repr(loss).startswith(f"{cls.__name__}(")
        assert fl.get(case.name, **params) == loss == cls(**params)
        assert eval(repr(loss), {"array": np.array, cls.__name__: cls}) == loss
        other = "sum" if reduction != "sum" else "none"
        assert loss != cls(**{**params, "reduction": other})


# ---------------------------------------------------------------------------------------
# values and gradients against the NumPy reference
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@by_dtype()
@by_case_and_shape()
def test_value_and_gradient_match_the_numpy_reference(case, shape, dtype, weighted, rng):
    """For each reduction: float32/float64 computed in their dtype, float16 in float32
    with a float16 gradient, integer and bool y_pred in float64; with or without
    sample_weight; the gradient returned fresh or written into ``out``, which is then
    returned itself."""
    pred, target = case.inputs(rng, shape, dtype)
    weight = weights(case, rng, shape, dtype) if weighted else None
    if weighted and weight is None:
        pytest.skip("this variant takes no sample_weight")
    for reduction in REDUCTIONS:
        loss = case.loss(reduction)
        want_value, want_grad = expected(case, reduction, pred, target, weight)

        value = loss(pred, target, weight)
        grad = loss.grad(pred, target, weight)
        fused_value, fused_grad = loss.value_and_grad(pred, target, weight)
        out = np.full(pred.shape, np.nan, dtype=grad_dtype(dtype))
        assert loss.grad(pred, target, weight, out=out) is out
        fused_out = np.full(pred.shape, np.nan, dtype=grad_dtype(dtype))
        out_value, returned = loss.value_and_grad(pred, target, weight, out=fused_out)
        assert returned is fused_out

        for what, g in (("grad", grad), ("value_and_grad", fused_grad),
                        ("grad(out=)", out), ("value_and_grad(out=)", fused_out)):
            what = f"{reduction}: gradient of {what}"
            assert g.dtype == grad_dtype(dtype) and g.shape == pred.shape, what
            assert_close(g, want_grad, grad_dtype(dtype), what)
        for what, v in (("__call__", value), ("value_and_grad", fused_value),
                        ("value_and_grad(out=)", out_value)):
            what = f"{reduction}: value of {what}"
            if reduction == "none":
                assert isinstance(v, np.ndarray) and v.dtype == compute_dtype(dtype), what
                assert v.shape == case.terms_shape(pred.shape), what
            else:
                assert type(v) is float, what
            assert_close(v, want_value, compute_dtype(dtype), what)


# ---------------------------------------------------------------------------------------
# the entry points agree; "none" has the gradient of the sum
# ---------------------------------------------------------------------------------------
#: The kernel loop of a loss is compiled once per set of outputs (the sum, the gradient,
#: both, per-element values); the compiler may vectorise or contract each differently, so
#: __call__, grad and value_and_grad (and the gradients of "none" and "sum") agree to a
#: few ulp of the largest magnitude, not always to the bit.  Each gives the same bits
#: every time (see test_contract's determinism tests and test_numerical_range).


def assert_rounding_close(actual, expected, dtype, what=""):
    """Equal to a few ulp of the largest magnitude (what two loops doing the same
    arithmetic in another order or vector width give)."""
    eps = np.finfo(dtype).eps
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               rtol=16 * eps, atol=16 * eps * scale, err_msg=what)


def entry_point_differences(case, pred, target, weight):
    """[(what, value or grad of __call__ / grad / grad(out=), of value_and_grad)], and
    the gradient of "none" against that of "sum"."""
    pairs = [("gradient of none and of sum",
              case.loss("none").value_and_grad(pred, target, weight)[1],
              case.loss("sum").value_and_grad(pred, target, weight)[1])]
    for reduction in REDUCTIONS:
        loss = case.loss(reduction)
        value, grad = loss.value_and_grad(pred, target, weight)
        out = np.empty_like(grad)
        loss.grad(pred, target, weight, out=out)
        what = f"{reduction}, weighted={weight is not None}"
        pairs += [(f"__call__ {what}", loss(pred, target, weight), value),
                  (f"grad {what}", loss.grad(pred, target, weight), grad),
                  (f"grad(out=) {what}", out, grad)]
    return pairs


@by_dtype(FLOATS)
@by_case_and_shape()
def test_call_grad_and_value_and_grad_agree_to_rounding_and_repeat_their_bits(
        case, shape, dtype, rng):
    pred, target = case.inputs(rng, shape, dtype)
    for weight in (None, weights(case, rng, shape, dtype)):
        first = entry_point_differences(case, pred, target, weight)
        again = entry_point_differences(case, pred, target, weight)
        for (what, actual, fused), (_, actual_again, _) in zip(first, again):
            assert np.asarray(actual).dtype == np.asarray(fused).dtype, what
            assert_rounding_close(actual, fused, dtype, what)
            assert_same_bits([actual_again], [actual], what + " (repeated)")


@by_dtype(FLOATS)
@by_case_and_shape()
def test_none_has_the_gradient_of_the_sum_and_mean_divides_by_the_count(case, shape,
                                                                        dtype, rng):
    pred, target = case.inputs(rng, shape, dtype)
    weight = weights(case, rng, shape, dtype)
    values, grad_none = case.loss("none").value_and_grad(pred, target, weight)
    total, grad_sum = case.loss("sum").value_and_grad(pred, target, weight)
    mean, grad_mean = case.loss("mean").value_and_grad(pred, target, weight)
    assert_rounding_close(grad_none, grad_sum, dtype)
    count = case.count(pred, target)
    assert count > 0
    assert_close(values.sum(dtype=np.float64), total, dtype)
    assert_close(mean, total / count, dtype)
    assert_close(grad_mean, grad_sum / count, dtype)


# ---------------------------------------------------------------------------------------
# threads and ISA levels
# ---------------------------------------------------------------------------------------
@by_dtype(FLOATS)
@by_case()
def test_one_and_two_threads_give_the_same_bits(case, dtype, rng, set_threads,
                                                parallel_always):
    """Small inputs take the threaded path here; blocks depend on the input only."""
    for shape in [(N, C), (61, C)] + ([] if case.rows else [(3, 13, C)]):
        pred, target = case.inputs(rng, shape, dtype)
        weight = weights(case, rng, shape, dtype)
        for reduction in ("mean", "none"):
            loss = case.loss(reduction)
            for w in (None, weight):
                set_threads(1)
                serial = outputs(loss, pred, target, w)
                set_threads(2)
                threaded = outputs(loss, pred, target, w)
                assert_same_bits(threaded, serial, f"{shape} {reduction}")


@by_case()
def test_threads_give_the_same_bits_above_the_real_threshold(case, rng, set_threads):
    """Without lowering the threshold: an input just large enough to be split."""
    shape = (_threads.PARALLEL_MIN_WORK // C + 7, C)
    pred, target = case.inputs(rng, shape, np.float32)
    weight = weights(case, rng, shape, np.float32)
    loss = case.loss()
    set_threads(1)
    serial = loss.value_and_grad(pred, target, weight)
    set_threads(2)
    threaded = loss.value_and_grad(pred, target, weight)
    assert_same_bits(threaded, serial)
    want_value, want_grad = expected(case, "mean", pred, target, weight)
    assert_close(threaded[0], want_value, np.float32)
    assert_close(threaded[1], want_grad, np.float32)


#: the levels round differently (fma contraction from x86-64-v3 on, in the vector math
#: and in the losses): they agree to a few ulp
ISA_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


@by_dtype(FLOATS)
@by_case()
def test_every_built_isa_level_agrees_with_the_default(case, dtype, rng, monkeypatch):
    modules = kernel_modules()
    if len(modules) < 2:
        pytest.skip("only one kernel module built")
    shape = shapes(case)[-1]
    pred, target = case.inputs(rng, shape, dtype)
    weight = weights(case, rng, shape, dtype)

    def run():
        return [np.asarray(a, dtype=np.float64)
                for reduction in ("mean", "none")
                for a in case.loss(reduction).value_and_grad(pred, target, weight)]

    default = run()
    rtol = ISA_RTOL[np.dtype(dtype)]
    for level, module in modules.items():
        for loss_module in loss_modules():
            monkeypatch.setattr(loss_module, "kernels", module)
        results = run()
        assert len(results) == len(default)
        for got, want in zip(results, default):
            np.testing.assert_allclose(got, want, rtol=rtol,
                                       atol=rtol * np.max(np.abs(want)), err_msg=level)
    assert _dispatch.kernels.__name__.rsplit("_kernels_", 1)[1] in modules


# ---------------------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction, weighted", [("sum", False), ("mean", True),
                                                 ("none", True)])
@by_case()
def test_gradient_matches_central_finite_differences(case, reduction, weighted, rng):
    """float64, on the reference's inputs (away from kinks and clipping thresholds)."""
    shape = (4, C) if case.rows else (3, C)
    pred, target = case.inputs(rng, shape)
    weighted = weighted and case.weighable(shape)
    weight = rng.uniform(0.5, 2.0, shape[0]) if weighted else None
    loss = case.loss(reduction)
    grad = loss.grad(pred, target, weight)
    numeric = finite_differences(loss, pred, target, weight)
    scale = np.max(np.abs(numeric))
    assert scale > 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6 * scale)


# ---------------------------------------------------------------------------------------
# copies, keywords, fresh results, allocations
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("clone", [lambda loss: pickle.loads(pickle.dumps(loss)),
                                   copy.deepcopy], ids=["pickle", "deepcopy"])
@by_case()
def test_pickle_and_deepcopy_give_an_equal_loss_with_equal_results(case, clone, rng):
    pred, target = case.inputs(rng, (N, C))
    weight = weights(case, rng, (N, C), np.float64)
    for reduction in ("sum", "none"):
        loss = case.loss(reduction)
        again = clone(loss)
        assert again is not loss and type(again) is type(loss)
        assert again == loss and repr(again) == repr(loss)
        assert_same_bits(outputs(again, pred, target, weight),
                         outputs(loss, pred, target, weight))


@by_case()
def test_arguments_by_keyword(case, rng):
    pred, target = case.inputs(rng, (N, C))
    weight = weights(case, rng, (N, C), np.float64)
    loss = case.loss()
    value, grad = loss.value_and_grad(pred, target, weight)
    # each method against its own positional call: the three run separately compiled
    # loops, which agree to rounding only
    assert (loss(y_pred=pred, y_true=target, sample_weight=weight)
            == loss(pred, target, weight))
    assert_same_bits([loss.grad(y_true=target, y_pred=pred, sample_weight=weight)],
                     [loss.grad(pred, target, weight)])
    out = np.empty_like(pred)
    got_value, got_grad = loss.value_and_grad(sample_weight=weight, y_true=target,
                                              y_pred=pred, out=out)
    assert got_value == value and got_grad is out
    assert_same_bits([out], [grad])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@by_case()
def test_results_are_fresh_arrays(case, reduction, rng):
    """No buffer is shared between calls or with the inputs."""
    loss = case.loss(reduction)
    pred, target = case.inputs(rng, (N, C))
    weight = weights(case, rng, (N, C), np.float64)
    value1, grad1 = loss.value_and_grad(pred, target, weight)
    kept = snapshot(grad1, value1)
    pred2, target2 = case.inputs(rng, (N, C))
    weight2 = weights(case, rng, (N, C), np.float64)
    value2, grad2 = loss.value_and_grad(pred2, target2, weight2)
    grad3 = loss.grad(pred2, target2, weight2)
    assert_unchanged([grad1, np.asarray(value1)], kept)
    for array in (grad1, grad2, grad3):
        for other in (pred, target, weight, pred2, target2, weight2):
            assert other is None or not np.shares_memory(array, other)
    assert not np.shares_memory(grad1, grad2) and not np.shares_memory(grad2, grad3)
    if reduction == "none":
        assert not np.shares_memory(value2, grad2)
        assert not np.shares_memory(value1, value2)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@by_dtype(FLOATS)
@by_case()
def test_calls_with_out_allocate_nothing_of_the_data_size(case, dtype, weighted, rng):
    """With ``out=`` and inputs ready for the kernels: a few KiB at most unweighted (the
    one-check fast path), nothing of the data's size with sample_weight."""
    pred, target = case.inputs(rng, (4000, C), dtype)
    weight = weights(case, rng, (4000, C), dtype) if weighted else None
    if weighted and weight is None:
        pytest.skip("this variant takes no sample_weight")
    loss = case.loss()
    out = np.empty_like(pred)
    loss.value_and_grad(pred, target, weight, out=out)  # warm up (imports, caches)
    tracemalloc.start()
    try:
        for _ in range(3):
            loss.value_and_grad(pred, target, weight, out=out)
            loss.grad(pred, target, weight, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (pred.nbytes // 10 if weighted else 4096), peak


# ---------------------------------------------------------------------------------------
# layouts, byte order, read-only inputs; inputs never modified
# ---------------------------------------------------------------------------------------
def read_only(array):
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def fortran(array):
    return np.asfortranarray(array)


def strided(array):
    """A view of every other element of a larger array (along the last axis)."""
    return np.repeat(array, 2, axis=-1)[..., ::2]


def negative_strides(array):
    """A view with negative strides along every axis."""
    return np.flip(np.ascontiguousarray(np.flip(array)))


def byte_swapped(array):
    return array.astype(array.dtype.newbyteorder("S"))


LAYOUTS = {"read_only": read_only, "fortran": fortran, "strided": strided,
           "negative_strides": negative_strides, "byte_swapped": byte_swapped}


@by_dtype({"f64": np.float64, "f32": np.float32, "f16": np.float16, "int": np.int64})
@by_case()
def test_other_layouts_give_the_bits_of_contiguous_inputs_and_are_not_modified(
        case, dtype, rng):
    """Read-only, Fortran-ordered, strided, negatively strided and byte-swapped y_pred,
    y_true and sample_weight: the results of C-contiguous native arrays, bit for bit, in
    the same dtypes; the arrays given are left as they were."""
    pred, target = case.inputs(rng, (N, C), dtype)
    weight = weights(case, rng, (N, C), dtype)
    for layout, convert in LAYOUTS.items():
        p, t = convert(pred), convert(target)
        w = None if weight is None else convert(weight)
        converted = [a for a in (p, t, w) if a is not None]
        np.testing.assert_array_equal(p, pred)
        if layout == "read_only":
            assert not any(a.flags.writeable for a in converted)
        elif layout == "byte_swapped":
            assert not any(a.dtype.isnative for a in converted)
        elif layout == "fortran":
            assert not p.flags.c_contiguous
        else:
            assert not any(a.flags.c_contiguous for a in converted)
        kept = snapshot(p, t, w)
        for reduction in ("mean", "none"):
            loss = case.loss(reduction)
            want = outputs(loss, pred, target, weight)
            what = f"{layout}, {reduction}"
            assert_same_bits(outputs(loss, p, t, w), want, f"all three {what}")
            assert_same_bits(outputs(loss, p, target, weight), want, f"y_pred {what}")
            assert_same_bits(outputs(loss, pred, t, w), want, f"y_true, weight {what}")
            out = np.full(pred.shape, np.nan, dtype=grad_dtype(dtype))
            value, grad = loss.value_and_grad(p, t, w, out=out)
            assert grad is out
            assert_same_bits([value, out], want[2:], f"out=, {what}")
        assert_unchanged((p, t, w), kept)


@by_case()
def test_half_predictions_are_computed_in_float32(case, rng):
    """float16 y_pred (and y_true, sample_weight) give the float32 results of the same
    values, the gradient rounded to float16."""
    pred, target = case.inputs(rng, (N, C), np.float16)
    weight = weights(case, rng, (N, C), np.float16)
    for reduction in REDUCTIONS:
        loss = case.loss(reduction)
        value, grad, fused_value, fused_grad = outputs(loss, pred, target, weight)
        want_value, want_grad, want_fused_value, want_fused_grad = outputs(
            loss, pred.astype(np.float32), widen(target).astype(np.float32)
            if target.dtype.kind == "f" else target, cast(weight, np.float32))
        assert_same_bits([value, grad, fused_value, fused_grad],
                         [want_value, want_grad.astype(np.float16), want_fused_value,
                          want_fused_grad.astype(np.float16)], reduction)


@by_case()
def test_integer_and_bool_predictions_of_any_width_are_computed_in_float64(case, rng):
    pred, target = case.inputs(rng, (N, C), np.int64)
    weight = weights(case, rng, (N, C), np.float64)
    loss = case.loss("none")
    want = outputs(loss, pred.astype(np.float64), target, weight)
    assert want[1].dtype == np.float64
    widths = [np.int8, np.int16, np.int32] + [np.uint8, np.uint32] * bool(pred.min() >= 0)
    assert np.abs(pred).max() <= np.iinfo(np.int8).max
    for dtype in widths:
        assert_same_bits(outputs(loss, pred.astype(dtype), target, weight), want,
                         np.dtype(dtype).name)
    signs = pred > 0
    assert_same_bits(outputs(loss, signs, target, weight),
                     outputs(loss, signs.astype(np.float64), target, weight), "bool")


def target_versions(case, target, pred_dtype):
    """y_true in other dtypes, each with the values of y_true in y_pred's dtype once
    cast: {name: (given, as the kernel reads it)}."""
    if case.ref.labels:
        dtypes = (["int32", "int16"] + ["float64", "float32"] * case.ref.float_labels
                  + ["uint8"] * bool(target.min() >= 0))
        return {dtype: (target.astype(dtype), target) for dtype in dtypes}
    versions = {}
    for dtype in ("float16", "float32", "float64"):
        given = target.astype(dtype)
        versions[dtype] = (given, given.astype(pred_dtype))
    ints = np.ceil(target).astype(np.int32)    # probabilities -> 1, log-probabilities <= 0
    versions["int32"] = (ints, ints.astype(pred_dtype))
    signs = target > 0                         # labels -1/1 -> 0/1, probabilities -> 1
    versions["bool"] = (signs, signs.astype(pred_dtype))
    return versions


@by_dtype(FLOATS)
@by_case()
def test_target_and_weight_of_other_dtypes_are_cast_to_the_prediction_dtype(case, dtype,
                                                                            rng):
    pred, target = case.inputs(rng, (N, C), dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    weight = weights(case, rng, (N, C), other)
    loss = case.loss("none")
    for name, (given, as_read) in target_versions(case, target, dtype).items():
        kept = snapshot(given, weight)
        got = outputs(loss, pred, given, weight)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        assert_same_bits(got, outputs(loss, pred, as_read, cast(weight, dtype)), name)
        assert_unchanged((given, weight), kept)
    if weight is None:
        return
    int_weight = np.arange(N) % 3
    assert_same_bits(outputs(loss, pred, target, int_weight),
                     outputs(loss, pred, target, int_weight.astype(dtype)), "int weights")


# ---------------------------------------------------------------------------------------
# empty batches
# ---------------------------------------------------------------------------------------
def empty_shapes(case):
    """No rows; for pointwise losses without per-class parameters (which need the last
    axis to be C) also a 1-D batch of nothing and rows of no element; for ratio losses
    also rows of no element."""
    if case.kind == "pointwise" and not per_class(case):
        return [(0, C), (0,), (3, 0)]
    if case.kind == "ratio":
        return [(0, C), (3, 0)]
    return [(0, C)]


@by_case()
def test_empty_batch(case, rng):
    """Mean of no term is NaN (as torch), a sum 0, "none" an empty array.  A term of no
    element (a ratio loss over an empty axis, or over everything with axis=None) is the
    reference's value of empty sums (Dice: 1 - 0 / 1e-7 = 1)."""
    for shape in empty_shapes(case):
        pred, target = case.inputs(rng, shape)
        count = case.count(pred, target)
        for reduction in REDUCTIONS:
            loss = case.loss(reduction)
            for weight in (None, np.ones(shape[0]) if case.weighable(shape) else None):
                value, grad = loss.value_and_grad(pred, target, weight)
                assert grad.shape == shape and grad.dtype == pred.dtype
                if reduction == "none":
                    assert value.shape == case.terms_shape(shape)
                elif count == 0:
                    assert math.isnan(value) if reduction == "mean" else value == 0.0
                if count:
                    assert_close(value, expected(case, reduction, pred, target, weight)[0],
                                 pred.dtype)
                assert_same_bits([loss(pred, target, weight)], [value])


# ---------------------------------------------------------------------------------------
# bad input: a ValueError/TypeError naming the argument
# ---------------------------------------------------------------------------------------
def bad_targets(target):
    bad = [target[:-1], np.concatenate([target, target[:1]])]
    if target.ndim >= 2:
        bad += [target[..., :-1], target[..., None], target.ravel(), target.T]
    else:
        bad += [target[:, None]]
    return bad


@by_case()
def test_shape_mismatch_names_y_true_and_its_shape(case, rng):
    pred, target = case.inputs(rng, (N, C))
    loss = case.loss()
    for bad in bad_targets(target):
        message = rf"^y_true: .*{re.escape(str(bad.shape))}"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, bad)


@by_case(ROW_CASES)
def test_wrong_rank_of_a_row_loss_names_y_pred_and_its_shape(case, rng):
    pred, target = case.inputs(rng, (N, C))
    loss = case.loss()
    # a loss with a class axis reads (N, C, 1) as one class on the last axis: then it is
    # y_true that has the wrong shape
    takes_axis = "axis" in loss.get_params()
    for bad in (pred[:, 0], pred[..., None], np.float64(1.0)):
        message = rf"^y_pred: .*\(N, C\).*{re.escape(str(np.shape(bad)))}"
        if takes_axis and np.ndim(bad) == 3:
            message = r"^y_true: .*shape"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(bad, target)
    with pytest.raises(ValueError, match=r"^y_pred: .*C >= 1"):
        loss(pred[:, :0], target if target.ndim == 1 else target[:, :0])


@by_case()
def test_wrong_sample_weight_shape_names_sample_weight(case, rng):
    pred, target = case.inputs(rng, (N, C))
    weight = rng.uniform(0.0, 2.0, N)
    loss = case.loss()
    for bad in (weight[:-1], np.append(weight, 1.0), weight[:, None], np.ones(N * C),
                np.float64(2.0), np.ones((N, C))):
        message = rf"^sample_weight: .*\({N},\).*got shape {re.escape(str(np.shape(bad)))}"
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, target, bad)
    with pytest.raises(TypeError, match="^sample_weight: .*<U"):
        loss(pred, target, weight.astype(str))
    if not case.weighable(pred.shape):
        # a ratio loss summing over axis 0: its values are not per sample
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=r"^sample_weight: .*axis 0"):
                call(pred, target, weight)


@by_case()
def test_bad_out_names_out(case, rng):
    pred, target = case.inputs(rng, (N, C))
    loss = case.loss()
    read_only_out = np.empty((N, C))
    read_only_out.flags.writeable = False
    bad_outs = [
        (np.empty((N, C - 1)), rf"^out: shape \({N}, {C - 1}\).*\({N}, {C}\)"),
        (np.empty(N * C), rf"^out: shape \({N * C},\).*\({N}, {C}\)"),
        (np.empty((N, C), dtype=np.float32), "^out: dtype float32.*float64"),
        (np.empty((N, C), dtype=np.int64), "^out: dtype int64.*float64"),
        (np.empty((C, N)).T, "^out: must be C-contiguous"),
        (np.empty((N, 2 * C))[:, ::2], "^out: must be C-contiguous"),
        (read_only_out, "^out: is read-only"),
    ]
    for out, message in bad_outs:
        kept = snapshot(out)
        for call in (loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(pred, target, out=out)
        assert_unchanged([out], kept)
    with pytest.raises(TypeError, match="^out: expected a numpy.ndarray, got list"):
        loss.grad(pred, target, out=np.zeros((N, C)).tolist())
    # float16 y_pred: the gradient, so out, is float16
    with pytest.raises(ValueError, match="^out: dtype float32.*float16"):
        loss.grad(pred.astype(np.float16), target, out=np.empty((N, C), dtype=np.float32))


@by_case()
def test_unknown_parameter_names_it(case):
    for error in (ValueError, TypeError):  # one exception, both types
        with pytest.raises(error, match=rf"{case.name}: unknown parameter "
                                        r"'not_a_parameter'"):
            fl.get(case.name, not_a_parameter=1.0, **case.params)
    cls = type(fl.get(case.name))
    with pytest.raises(TypeError, match="not_a_parameter"):
        cls(not_a_parameter=1.0, **case.params)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@by_case()
def test_non_finite_parameters_name_the_parameter(case, bad):
    """Every parameter refuses NaN and infinities (a per-class one, in any entry)."""
    params = case.loss().get_params()
    del params["reduction"]
    for key, value in params.items():
        if value is None or isinstance(value, np.ndarray):
            per_class = np.ones(C) if value is None else np.array(value, dtype=np.float64)
            per_class[-1] = bad
            bad_value = per_class
        else:
            bad_value = bad
        with pytest.raises((ValueError, TypeError), match=rf"^{key}\b"):
            fl.get(case.name, **{**params, key: bad_value})


@by_case(FIRST_CASES)
def test_bad_reduction_names_reduction(case):
    for bad in ("avg", "MEAN", None, "sum_over_batch_size", "batchmean"):
        with pytest.raises(ValueError, match=rf"reduction.*'mean', 'sum', 'none'.*"
                                             rf"{re.escape(repr(bad))}"):
            fl.get(case.name, reduction=bad, **case.params)


# ---------------------------------------------------------------------------------------
# the two references agree (what the NumPy one stands for)
# ---------------------------------------------------------------------------------------
@by_case()
def test_numpy_reference_agrees_with_the_torch_reference(case, rng):
    """What the NumPy reference computes is what the loss's PyTorch formulation computes
    (autograd for the gradient), for every reduction, with and without weights."""
    torch = pytest.importorskip("torch")
    pred, target = case.inputs(rng, (N, C))
    for weight in (None, weights(case, rng, (N, C), np.float64)):
        for reduction in REDUCTIONS:
            want_value, want_grad = expected(case, reduction, pred, target, weight)
            x = torch.tensor(pred, requires_grad=True)
            value = reference.torch_loss(
                case.name, x, torch.from_numpy(target), case.params, reduction,
                None if weight is None else torch.from_numpy(weight))
            value.sum().backward()
            what = f"{reduction}, weighted={weight is not None}"
            assert_close(value.detach().numpy(), want_value, np.float64, f"value {what}")
            assert_close(x.grad.numpy(), want_grad, np.float64, f"gradient {what}")


# ---------------------------------------------------------------------------------------
# a wide sweep of sizes (slow: not in the default run)
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@by_dtype(FLOATS)
@by_case()
def test_many_sizes_match_the_reference_with_one_and_two_threads(case, dtype,
                                                                 set_threads):
    """Every remainder of the vector loops, blocks and rows."""
    rng = np.random.default_rng(7)
    sizes = list(range(1, 70)) + [1000, 4099, 65537]
    for n in sizes:
        for shape in [(n, C)] + ([(3, n, C)] if not case.rows and n < 5000 else []):
            pred, target = case.inputs(rng, shape, dtype)
            if case.count(pred, target) == 0:
                continue  # every row ignored: test_rows.py has torch's NaN and 0 gradient
            weight = weights(case, rng, shape, dtype)
            loss = case.loss()
            want_value, want_grad = expected(case, "mean", pred, target, weight)
            results = []
            for n_threads in (1, 2):
                set_threads(n_threads)
                value, grad = loss.value_and_grad(pred, target, weight)
                assert_close(value, want_value, dtype, f"{shape}")
                assert_close(grad, want_grad, dtype, f"{shape}")
                results.append((value, grad))
            assert_same_bits(results[1], results[0], f"{shape}")
