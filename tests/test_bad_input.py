"""Bad input to every loss: a ValueError/TypeError naming the argument and the offending
value, never a crash, a silent wrong answer or a modified input; the kernels only see
aligned, native-order, C-contiguous arrays; and what ``out=`` holds after an error.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

import fastloss as fl
from fastloss import _pointwise, _rows
from helpers import loss_modules

N, C = 6, 5
SHAPE = (N, C)

# One configuration per loss (every registry name, both from_logits variants), with the
# kind of data it takes.
CASES = {
    "mse": (lambda: fl.MeanSquaredError(), "real"),
    "mae": (lambda: fl.MeanAbsoluteError(), "real"),
    "msle": (lambda: fl.MeanSquaredLogarithmicError(), "positive"),
    "huber": (lambda: fl.Huber(delta=0.8), "real"),
    "pseudo_huber": (lambda: fl.PseudoHuber(), "real"),
    "log_cosh": (lambda: fl.LogCosh(), "real"),
    "hinge": (lambda: fl.Hinge(), "signs"),
    "squared_hinge": (lambda: fl.SquaredHinge(), "signs"),
    "bce": (lambda: fl.BinaryCrossEntropy(), "probabilities"),
    "bce_logits": (lambda: fl.BinaryCrossEntropy(from_logits=True,
                                                 pos_weight=[0.5, 2.0, 1.0, 3.0, 1.5]),
                   "logits_and_probabilities"),
    "categorical": (lambda: fl.CategoricalCrossEntropy(class_weight=np.linspace(0.5, 2, C)),
                    "row_probabilities"),
    "categorical_logits": (lambda: fl.CategoricalCrossEntropy(from_logits=True),
                           "row_logits"),
    "kl": (lambda: fl.KLDivergence(), "row_probabilities"),
    "kl_logits": (lambda: fl.KLDivergence(from_logits=True), "row_logits"),
    "sparse": (lambda: fl.SparseCategoricalCrossEntropy(), "labels_probabilities"),
    "sparse_logits": (lambda: fl.SparseCategoricalCrossEntropy(
        from_logits=True, class_weight=np.linspace(0.5, 2, C)), "labels"),
    "multi_margin": (lambda: fl.MultiMargin(p=2), "labels"),
    "dice": (lambda: fl.Dice(axis=-1), "probabilities"),
    "tversky": (lambda: fl.Tversky(alpha=0.3, beta=0.7, axis=(1,)), "probabilities"),
}
LABEL_LOSSES = ["sparse", "sparse_logits", "multi_margin"]


def make(case, dtype=np.float64, seed=5):
    """(loss, y_pred, y_true, sample_weight) of a case: valid, C-contiguous."""
    factory, kind = CASES[case]
    rng = np.random.default_rng(seed)
    if kind == "positive":
        pred, target = rng.uniform(0, 4, SHAPE), rng.uniform(0, 4, SHAPE)
    elif kind == "signs":
        pred, target = rng.normal(size=SHAPE), rng.choice([-1.0, 1.0], SHAPE)
    elif kind == "probabilities":
        pred, target = rng.uniform(0.05, 0.95, SHAPE), rng.uniform(0, 1, SHAPE)
    elif kind == "logits_and_probabilities":
        pred, target = rng.normal(0, 3, SHAPE), rng.uniform(0, 1, SHAPE)
    elif kind == "row_probabilities":
        pred, target = rng.dirichlet(np.ones(C), N), rng.dirichlet(np.ones(C), N)
    elif kind == "row_logits":
        pred, target = rng.normal(size=SHAPE), rng.dirichlet(np.ones(C), N)
    elif kind == "labels_probabilities":
        pred, target = rng.dirichlet(np.ones(C), N), rng.integers(0, C, N)
    elif kind == "labels":
        pred, target = rng.normal(size=SHAPE), rng.integers(0, C, N)
    else:
        pred, target = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    if target.dtype.kind == "f":
        target = target.astype(dtype)
    return factory(), pred.astype(dtype), target, rng.uniform(0.1, 2, N).astype(dtype)


def misaligned(array):
    """A writeable copy of ``array`` whose data starts one byte past an aligned address."""
    buffer = bytearray(array.nbytes + 1)
    copy = np.frombuffer(buffer, array.dtype, array.size, offset=1).reshape(array.shape)
    copy[...] = array
    assert not copy.flags.aligned
    return copy


class _KernelsCheckingTheirArrays:
    """The kernel module, with every array argument of a kernel asserted to be aligned,
    native-order and C-contiguous."""

    KERNELS = ("pointwise", "dense_rows", "sparse_rows", "label_matrix_rows", "ratio")

    def __init__(self, real):
        self._real = real
        self.calls = 0

    def __getattr__(self, name):
        function = getattr(self._real, name)
        if name not in self.KERNELS:
            return function

        def checked(*args):
            self.calls += 1
            for index, arg in enumerate(args):
                if isinstance(arg, np.ndarray):
                    assert arg.flags.aligned, f"{name}: argument {index} is not aligned"
                    assert arg.flags.c_contiguous, f"{name}: argument {index} is strided"
                    assert arg.dtype.isnative, f"{name}: argument {index} is byte-swapped"
            return function(*args)
        return checked


@pytest.fixture
def checked_kernels(monkeypatch):
    proxy = _KernelsCheckingTheirArrays(_pointwise.kernels)
    for module in loss_modules():
        monkeypatch.setattr(module, "kernels", proxy)
    return proxy


# ---------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LABEL_LOSSES)
def test_uint64_labels_beyond_int64_are_out_of_range_errors(case):
    loss, pred, labels, weight = make(case)
    for huge in (2 ** 64 - 100, 2 ** 63, 2 ** 64 - 1):
        bad = labels.astype(np.uint64)
        bad[2] = huge  # 2**64 - 100 is -100, the default ignore_index, as an int64
        message = rf"y_true: label {huge} at row 2 is outside \[0, {C}\)"
        out = np.full(SHAPE, 42.0)
        for labels_in in (bad, bad.astype(">u8")):
            with pytest.raises(ValueError, match=message):
                loss(pred, labels_in)
            with pytest.raises(ValueError, match=message):
                loss.value_and_grad(pred, labels_in, weight, out=out)
        assert np.all(out == 42.0)
    # the first bad row is reported, whichever the kind of its label
    bad = labels.astype(np.uint64)
    bad[[1, 4]] = [C + 2, 2 ** 64 - 100]
    with pytest.raises(ValueError, match=rf"label {C + 2} at row 1 "):
        loss(pred, bad)
    # uint64 labels in range are the int64 labels
    assert loss.value_and_grad(pred, labels.astype(np.uint64))[0] == \
        loss.value_and_grad(pred, labels.astype(np.int64))[0]


def test_uint64_label_equal_to_a_nonnegative_ignore_index_is_still_ignored():
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, ignore_index=3)
    pred = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"label 18446744073709551615 at row 2 .*"
                                         r"ignore_index=3"):
        loss(pred, np.array([3, 0, 2 ** 64 - 1, 7], dtype=np.uint64))
    assert loss(pred, np.array([3, 0, 1, 3], dtype=np.uint64)) == \
        loss(pred, np.array([3, 0, 1, 3]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("case", LABEL_LOSSES)
def test_float_labels_that_are_not_integers_name_the_first_one_and_its_row(case, dtype):
    loss, pred, labels, _ = make(case)
    for bad in (-np.inf, np.inf, np.nan, 2.5, -0.5):
        labels_in = labels.astype(dtype)
        labels_in[2] = bad
        labels_in[4] = 3.5  # a later one is not reported
        value = repr(labels_in[2].item())
        with pytest.raises(TypeError, match=rf"y_true: expected integer class labels, got "
                                            rf"dtype {np.dtype(dtype)} with the value "
                                            rf"{re.escape(value)} at row 2"):
            loss.value_and_grad(pred, labels_in)


@pytest.mark.parametrize("case", LABEL_LOSSES)
def test_integral_float_labels_beyond_int64_are_out_of_range_errors(case):
    loss, pred, labels, _ = make(case)
    for bad, shown in ((1e300, "1e+300"), (2.0 ** 63, "9.223372036854776e+18"),
                       (-1e19, "-1e+19")):
        labels_in = labels.astype(np.float64)
        labels_in[3] = bad
        with pytest.raises(ValueError, match=rf"y_true: label {re.escape(shown)} at row 3 "
                                             rf"is outside \[0, {C}\)"):
            loss(pred, labels_in)
        labels_in[1] = C  # an earlier label out of range is the one reported
        with pytest.raises(ValueError, match=rf"y_true: label {C} at row 1 "):
            loss(pred, labels_in)
    # the extreme int64 values still convert exactly
    ignore_min = fl.SparseCategoricalCrossEntropy(from_logits=True, ignore_index=-2 ** 63)
    labels_in = labels.astype(np.float64)
    labels_in[0] = -2.0 ** 63
    assert ignore_min(pred, labels_in) == ignore_min(pred, labels_in.astype(np.int64))


# ---------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_get_aligned_arrays_and_unaligned_out_still_receives_the_gradient(
        case, dtype, checked_kernels):
    loss, pred, target, weight = make(case, dtype)
    for reduction in ("mean", "none"):
        loss.reduction = reduction
        # each entry point against itself: their loops agree to rounding only
        expected_value, expected_grad = loss.value_and_grad(pred, target, weight)
        expected_grad_only = loss.grad(pred, target, weight)
        expected_value_only = loss(pred, target, weight)
        for p, t, w in ((pred, target, misaligned(weight)),
                        (misaligned(pred), misaligned(target), misaligned(weight))):
            kept = [a.copy() for a in (p, t, w)]
            np.testing.assert_array_equal(loss(p, t, w), expected_value_only)
            out = misaligned(np.full(SHAPE, 42, dtype=dtype))
            value, grad = loss.value_and_grad(p, t, w, out=out)
            assert grad is out
            np.testing.assert_array_equal(value, expected_value)
            np.testing.assert_array_equal(out, expected_grad)
            out[...] = 42
            assert loss.grad(p, t, w, out=out) is out
            np.testing.assert_array_equal(out, expected_grad_only)
            for before, now in zip(kept, (p, t, w)):
                np.testing.assert_array_equal(before, now)
    # unweighted, with out= only unaligned: the per-call fast path cannot take it
    out = misaligned(np.zeros(SHAPE, dtype=dtype))
    assert loss.grad(pred, target, out=out) is out
    np.testing.assert_array_equal(out, loss.grad(pred, target))
    assert checked_kernels.calls > 0


def test_unaligned_float16_out():
    loss = fl.MeanSquaredError()
    pred = np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4)
    out = misaligned(np.zeros((3, 4), dtype=np.float16))
    assert loss.grad(pred, np.zeros((3, 4)), out=out) is out
    np.testing.assert_array_equal(out, loss.grad(pred, np.zeros((3, 4))))


# ---------------------------------------------------------------------------------------
# out= after an error
# ---------------------------------------------------------------------------------------
def _errors_before_the_pass(case, pred, target, weight):
    """(description, call arguments, exception) of bad calls found before the kernel's
    pass; ``out`` is added by the caller."""
    labels = CASES[case][1].startswith("labels")
    masked_target = np.ma.masked_array(target, mask=np.zeros(target.shape, bool))
    calls = [
        ("y_pred None", (None, target, weight), TypeError),
        ("y_pred complex", (pred.astype(complex), target, weight), TypeError),
        ("y_pred masked", (np.ma.masked_array(pred), target, weight), TypeError),
        ("y_pred ragged", ([[1.0, 2.0], [3.0]], target, weight), ValueError),
        ("y_true None", (pred, None, weight), TypeError),
        ("y_true masked", (pred, masked_target, weight), TypeError),
        ("y_true ragged", (pred, [[1, 2], [3]], weight), ValueError),
        ("y_true wrong shape", (pred, target[:-1], weight), ValueError),
        ("y_true strings", (pred, target.astype(str), weight), TypeError),
        ("sample_weight wrong shape", (pred, target, weight[:-1]), ValueError),
        ("sample_weight masked", (pred, target, np.ma.masked_array(weight)), TypeError),
        ("sample_weight ragged", (pred, target, [[1.0], [2.0, 3.0]]), ValueError),
        ("sample_weight strings", (pred, target, weight.astype(str)), TypeError),
    ]
    if labels:
        bad = target.copy()
        bad[3] = C  # labels are checked before the pass
        calls += [("label out of range", (pred, bad, weight), ValueError),
                  ("label 2.5", (pred, np.where(target == target[1], 2.5, target), weight),
                   TypeError),
                  ("label uint64", (pred, np.full(N, 2 ** 64 - 100, np.uint64), weight),
                   ValueError)]
    else:
        calls.append(("y_true wrong last axis", (pred, target[:, :-1], weight), ValueError))
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_errors_found_before_the_pass_leave_out_untouched(case):
    loss, pred, target, weight = make(case)
    bad_calls = _errors_before_the_pass(case, pred, target, weight)
    for description, (p, t, w), error in bad_calls:
        for call in (loss.grad, loss.value_and_grad):
            out = np.full(SHAPE, 42.0)
            with pytest.raises(error):
                call(p, t, w, out=out)
            assert np.all(out == 42.0), description
    # out's own errors
    for bad_out in (np.full((N, C + 1), 42.0), np.full(SHAPE, 42, np.float32),
                    np.full((C, N), 42.0).T):
        kept = bad_out.copy()
        with pytest.raises(ValueError, match="out: "):
            loss.value_and_grad(pred, target, weight, out=bad_out)
        np.testing.assert_array_equal(bad_out, kept)
    # an out that is also an input, on the fast path and on the general one
    for w in (None, weight):
        shared = np.full(SHAPE, 42.0)
        with pytest.raises(ValueError, match="out: shares memory with y_pred"):
            loss.grad(shared, target, w, out=shared)
        assert np.all(shared == 42.0)
    # per-class weights that do not match the classes of y_pred
    params = loss.get_params()
    if params.get("class_weight") is not None or params.get("pos_weight") is not None:
        narrow = pred[:, :-1].copy()
        narrow_target = target % (C - 1) if target.ndim == 1 else target[:, :-1].copy()
        out = np.full(narrow.shape, 42.0)
        with pytest.raises(ValueError, match="(class|pos)_weight: "):
            loss.value_and_grad(narrow, narrow_target, weight, out=out)
        assert np.all(out == 42.0)


# A value that only the kernel's pass finds, per loss that has one.
VALUE_ERRORS = {
    "hinge": ("y_true", 0.5), "squared_hinge": ("y_true", 2.0),
    "bce": ("y_pred", 1.5), "bce_logits": ("y_true", -0.25),
    "categorical": ("y_pred", -0.5), "categorical_logits": ("y_true", 1.5),
    "kl": ("y_true", 2.0), "kl_logits": ("y_true", -1.0), "sparse": ("y_pred", 3.0),
}


@pytest.mark.parametrize("case", list(VALUE_ERRORS))
def test_after_a_value_error_of_the_pass_out_is_still_usable_and_inputs_unchanged(case):
    """The contents of out are unspecified after such an error; what holds is that the
    error names the value, the inputs are unchanged, and out is the caller's array, of
    its shape and dtype, fully rewritten by the next call."""
    loss, pred, target, weight = make(case)
    name, bad_value = VALUE_ERRORS[case]
    bad_pred, bad_target = pred.copy(), target.copy()
    (bad_pred if name == "y_pred" else bad_target)[4, 2] = bad_value
    kept = [a.copy() for a in (bad_pred, bad_target, weight)]
    out = np.full(SHAPE, 42.0)
    data = out.__array_interface__["data"]
    for call in (loss.grad, loss.value_and_grad):
        with pytest.raises(ValueError, match=rf"{name}: .*{re.escape(repr(bad_value))} "
                                             rf"at index \(4, 2\)"):
            call(bad_pred, bad_target, weight, out=out)
    for before, now in zip(kept, (bad_pred, bad_target, weight)):
        np.testing.assert_array_equal(before, now)
    assert out.shape == SHAPE and out.dtype == np.float64
    assert out.__array_interface__["data"] == data
    value, grad = loss.value_and_grad(pred, target, weight, out=out)
    assert grad is out
    np.testing.assert_array_equal(out, loss.grad(pred, target, weight))


def test_out_semantics_after_errors_are_documented():
    from fastloss._base import Loss

    for method in (Loss.grad, Loss.value_and_grad):
        doc = " ".join(method.__doc__.split())
        assert "untouched" in doc and "unspecified" in doc


# ---------------------------------------------------------------------------------------
# masked arrays, ragged sequences
# ---------------------------------------------------------------------------------------
def test_masked_array_is_rejected_not_unmasked():
    mse = fl.get("mse")
    masked = np.ma.masked_array([1, 100, 2], mask=[0, 1, 0])
    for target in (0, np.zeros(3)):
        with pytest.raises(TypeError, match=r"y_pred: .*MaskedArray.*\.filled\(.*"
                                            r"sample_weight of 0"):
            mse(masked, target)


@pytest.mark.parametrize("case", list(CASES))
def test_masked_arrays_are_type_errors_naming_the_argument(case):
    loss, pred, target, weight = make(case)
    for mask in (False, True):  # even with nothing masked: the mask is never read
        def m(a):
            return np.ma.masked_array(a, mask=np.full(a.shape, mask))
        for args, name in (((m(pred), target, weight), "y_pred"),
                           ((pred, m(target), weight), "y_true"),
                           ((pred, target, m(weight)), "sample_weight")):
            for call in (loss, loss.grad, loss.value_and_grad):
                with pytest.raises(TypeError, match=rf"^{name}: .*MaskedArray.*filled"):
                    call(*args)
        out = m(np.full(SHAPE, 42.0))
        with pytest.raises(TypeError, match=r"^out: .*MaskedArray"):
            loss.grad(pred, target, weight, out=out)
        assert np.all(out.data == 42.0)


@pytest.mark.parametrize("case", list(CASES))
def test_ragged_sequences_are_errors_naming_the_argument(case):
    loss, pred, target, weight = make(case)
    ragged = [[1.0, 2.0], [3.0]]
    for args, name in (((ragged, target, weight), "y_pred"),
                       ((pred, ragged, weight), "y_true"),
                       ((pred, target, ragged), "sample_weight")):
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=rf"^{name}: cannot be read as an array"):
                call(*args)
    with pytest.raises(TypeError, match="^out: expected a numpy.ndarray, got list"):
        loss.grad(pred, target, out=ragged)


def test_wrong_rank_with_a_ragged_target_names_y_pred():
    with pytest.raises(ValueError, match=r"^y_pred: .*\(N, C\).*y_true shape unreadable"):
        fl.KLDivergence()(np.zeros(5), [[1.0, 2.0], [3.0]])


# ---------------------------------------------------------------------------------------
# torch tensors given to the NumPy API
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_tensors_numpy_cannot_read_are_type_errors_saying_what_to_do(case):
    torch = pytest.importorskip("torch")
    loss, pred, target, weight = make(case)

    def needs_grad(a):
        return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)

    def bfloat16(a):
        return torch.tensor(np.asarray(a, dtype=np.float64)).to(torch.bfloat16)

    for convert, message in ((needs_grad, r"requires grad.*\.detach\(\).*fastloss\.torch"),
                             (bfloat16, r"bfloat16.*\.float\(\).*fastloss\.torch")):
        for args, name in (((convert(pred), target, weight), "y_pred"),
                           ((pred, convert(target), weight), "y_true"),
                           ((pred, target, convert(weight)), "sample_weight")):
            for call in (loss, loss.grad, loss.value_and_grad):
                with pytest.raises(TypeError, match=rf"^{name}: .*{message}"):
                    call(*args)
        out = convert(np.full(SHAPE, 42.0))
        with pytest.raises(TypeError, match=r"^out: expected a numpy.ndarray, got a "
                                            r"torch.Tensor.*fastloss\.torch"):
            loss.value_and_grad(pred, target, weight, out=out)
    # plain CPU tensors NumPy reads are accepted as they always were
    value = loss(torch.from_numpy(pred), torch.from_numpy(np.asarray(target)),
                 torch.from_numpy(weight))
    assert value == loss(pred, target, weight)


def test_out_sharing_memory_with_a_tensor_input_is_rejected():
    torch = pytest.importorskip("torch")
    for dtype in (torch.float32, torch.float16):
        pred = torch.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4)
        kept = pred.clone()
        with pytest.raises(ValueError, match="out: shares memory with y_pred"):
            fl.MeanSquaredError().grad(pred, np.zeros((3, 4)), out=pred.numpy())
        assert torch.equal(pred, kept)


def test_numpy_api_errors_do_not_import_torch():
    script = """
import sys
import numpy as np
import fastloss as fl
loss = fl.get("sparse_categorical_cross_entropy", from_logits=True)
x = np.zeros((2, 3))
for args in ((np.ma.masked_array(x), [0, 1]), (x, [[0], []]), (x, [0.5, 1.0]),
             (x, np.array([0, 2**64 - 1], np.uint64))):
    try:
        loss(*args)
    except (TypeError, ValueError):
        pass
    else:
        raise SystemExit("no error")
assert "torch" not in sys.modules, "fastloss imported torch"
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=_repository_root())


def _repository_root():
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(fl.__file__)))
