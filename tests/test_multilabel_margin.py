"""multilabel_margin against PyTorch's multilabel_margin_loss at its edges: rows with no
target, every class a target, repeated targets, entries after the -1, ties at the
margin, huge scores, NaN, empty batches, label dtypes and bad indices (the generic
contract of every loss is in test_contract.py)."""
import math

import numpy as np
import pytest

import fastloss as fl
from fastloss._tools.check import finite_differences

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float32, np.float64)
RTOL = {np.float32: 2e-6, np.float64: 1e-13}

#: rows of 5 classes: three targets then -1 and entries to ignore; a repeated target;
#: no target; every class a target (no -1 at all); one target and nothing after it
#: but -1; a -1 right after a repeated pair
INDICES = np.array([[3, 0, 4, -1, 1],
                    [2, 2, 0, -1, -1],
                    [-1, 4, 3, 2, 1],
                    [4, 3, 2, 1, 0],
                    [1, -1, -1, -1, -1],
                    [0, 0, -1, 3, 3]])


def torch_value_and_grad(x, indices, reduction, sample_weight=None):
    """torch's value and autograd gradient; ``sample_weight`` scales the row values
    (then "mean" divides by N, as fastloss)."""
    xt = torch.tensor(x, requires_grad=True)
    target = torch.tensor(np.asarray(indices, dtype=np.int64))
    if sample_weight is None:
        value = F.multilabel_margin_loss(xt, target, reduction=reduction)
    else:
        value = F.multilabel_margin_loss(xt, target, reduction="none")
        value = value * torch.tensor(sample_weight)
        if reduction != "none":
            value = value.sum() / (x.shape[0] if reduction == "mean" else 1)
    value.sum().backward()
    return value.detach().numpy(), xt.grad.numpy()


def assert_matches(got, want, dtype):
    for a, b in zip(got, want):
        b = np.asarray(b, dtype=np.float64)
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * scale)


def random_indices(rng, n_rows, n_classes):
    """Random lists: up to C targets a row, repeats, -1, then anything in [-1, C)."""
    indices = rng.integers(-1, n_classes, (n_rows, n_classes))
    for row in range(n_rows):
        count = rng.integers(0, n_classes + 1)
        listed = rng.choice(n_classes, count, replace=False)
        if count and rng.random() < 0.3:
            listed = np.append(listed, listed[-1])[:n_classes]
        indices[row, :listed.size] = listed
        if listed.size < n_classes:
            indices[row, listed.size] = -1
    return indices


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_rows_match_torch(dtype, reduction, weighted):
    rng = np.random.default_rng(5)
    for n_rows, n_classes in [(6, 5), (40, 7), (9, 33), (3, 300)]:
        x = rng.normal(0, 1.5, (n_rows, n_classes)).astype(dtype)
        indices = random_indices(rng, n_rows, n_classes)
        if n_classes == 5:
            indices = INDICES
        weight = rng.uniform(0, 2, n_rows).astype(dtype) if weighted else None
        want = torch_value_and_grad(x, indices, reduction, weight)
        loss = fl.MultilabelMargin(reduction=reduction)
        for index_dtype in (np.int64, np.int32):
            got = loss.value_and_grad(x, indices.astype(index_dtype), weight)
            assert_matches(got, want, dtype)
            if reduction == "none":
                assert got[0].dtype == dtype and got[0].shape == (n_rows,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_a_target_or_with_every_class_give_zero(dtype):
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -3.0]], dtype=dtype)
    for indices in ([[-1, 0, 1], [-1, 2, 2]], [[0, 1, 2], [2, 0, 1]],
                    [[2, 1, 0], [1, 2, 0]]):
        values, grad = fl.MultilabelMargin(reduction="none").value_and_grad(x, indices)
        want_values, want_grad = torch_value_and_grad(x, indices, "none")
        np.testing.assert_array_equal(values, 0)
        np.testing.assert_array_equal(grad, 0)
        np.testing.assert_array_equal(want_values, 0)
        np.testing.assert_array_equal(want_grad, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_repeated_target_counts_once_per_entry_as_torch(dtype):
    x = np.array([[0.2, 0.9, -0.4, 0.1]], dtype=dtype)
    loss = fl.MultilabelMargin(reduction="sum")
    once = loss.value_and_grad(x, [[1, -1, 0, 0]])
    twice = loss.value_and_grad(x, [[1, 1, -1, 0]])
    assert_matches(twice, torch_value_and_grad(x, [[1, 1, -1, 0]], "sum"), dtype)
    np.testing.assert_allclose(twice[0], 2 * once[0], rtol=RTOL[dtype])
    np.testing.assert_allclose(twice[1], 2 * once[1], rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_entries_after_the_first_minus_one_are_ignored(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6)).astype(dtype)
    indices = np.array([[2, 5, -1, 0, 0, 0], [-1, 0, 1, 2, 3, 4], [1, -1, -1, -1, -1, -1],
                        [4, 4, 3, -1, 5, 2]])
    loss = fl.MultilabelMargin(reduction="none")
    want = loss.value_and_grad(x, indices)
    assert_matches(want, torch_value_and_grad(x, indices, "none"), dtype)
    for _ in range(5):
        other = indices.copy()
        for row in range(other.shape[0]):
            end = int(np.argmax(other[row] == -1))
            other[row, end + 1:] = rng.integers(-1, 6, other.shape[1] - end - 1)
        got = loss.value_and_grad(x, other)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_at_the_margin_count_nothing_and_have_a_zero_gradient(dtype):
    # 1 - x_j + x_c is exactly 0 for every non-target c of target 0; on a grid of
    # eighths every hinge is exact, so the bits must equal torch's
    x = np.array([[1.0, 0.0, 0.0, 0.125], [0.5, -0.5, 1.5, -0.375],
                  [2.0, 1.0, 1.0, 1.0]], dtype=dtype)
    indices = np.array([[0, -1, 0, 0], [0, 2, -1, 1], [0, -1, 3, -1]])
    for reduction in ("sum", "none"):
        got = fl.MultilabelMargin(reduction=reduction).value_and_grad(x, indices)
        want = torch_value_and_grad(x, indices, reduction)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    values, grad = fl.MultilabelMargin(reduction="none").value_and_grad(x, indices)
    assert values[0] == 0.125 / 4 and values[2] == 0
    np.testing.assert_array_equal(grad[0], [-0.25, 0, 0, 0.25])


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e7, 1e12, 1e17, 1e30])
def test_huge_scores_keep_torch_grouping(scale):
    """1 - x_j + x_c is computed as torch groups it, (1 - x_j) + x_c: ties of huge
    scores give 0 (not 1), and the values match torch at every magnitude."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(size=(6, 5)) * scale, np.full((2, 5), scale),
                        scale + rng.normal(size=(2, 5))])
    indices = random_indices(rng, x.shape[0], 5)
    for dtype in DTYPES:
        xd = x.astype(dtype)
        got = fl.MultilabelMargin(reduction="none").value_and_grad(xd, indices)
        assert_matches(got, torch_value_and_grad(xd, indices, "none"), dtype)


def test_nan_and_infinite_scores_follow_torch():
    nan, inf = math.nan, math.inf
    x = np.array([[nan, 0.2, 0.1], [0.3, nan, 0.5], [-inf, 0.0, 1.0], [inf, 0.0, inf]])
    indices = np.array([[0, -1, 0], [0, -1, 0], [0, -1, 0], [0, 1, -1]])
    got = fl.MultilabelMargin(reduction="none").value_and_grad(x, indices)
    want = torch_value_and_grad(x, indices, "none")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x = np.zeros((0, 4), dtype=dtype)
    indices = np.zeros((0, 4), dtype=np.int64)
    values, grad = fl.MultilabelMargin(reduction="none").value_and_grad(x, indices)
    want_values, want_grad = torch_value_and_grad(x, indices, "none")
    assert values.shape == want_values.shape == (0,)
    assert grad.shape == want_grad.shape == (0, 4)
    # torch leaves the reduced value of an empty batch unwritten (garbage): fastloss
    # gives the mean of nothing, NaN, and the sum 0, as every loss
    assert math.isnan(fl.MultilabelMargin()(x, indices))
    assert fl.MultilabelMargin(reduction="sum")(x, indices) == 0.0


def test_gradient_matches_finite_differences_with_repeats_and_ignored_entries():
    rng = np.random.default_rng(2)
    # scores on a lattice that keeps every hinge 0.1 or more away from its kink
    indices = INDICES
    is_target = np.zeros(indices.shape, dtype=bool)
    for row, entries in enumerate(indices):
        listed = entries[:np.argmax(entries == -1)] if (entries == -1).any() else entries
        is_target[row, listed] = True
    x = 0.5 * rng.integers(-4, 5, indices.shape) + np.where(is_target, 0.1, 0.0)
    weight = rng.uniform(0.5, 2.0, indices.shape[0])
    for reduction in REDUCTIONS:
        loss = fl.MultilabelMargin(reduction=reduction)
        grad = loss.grad(x, indices, weight)
        numeric = finite_differences(loss, x, indices, weight)
        assert np.max(np.abs(numeric)) > 0
        np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32,
                                   np.uint64, ">i8", ">i4"])
def test_other_integer_dtypes_give_the_bits_of_int64(dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 5))
    indices = INDICES if np.dtype(dtype).kind == "i" else np.where(INDICES < 0, 0, INDICES)
    loss = fl.MultilabelMargin(reduction="none")
    want = loss.value_and_grad(x, indices.astype(np.int64))
    got = loss.value_and_grad(x, indices.astype(dtype))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32, np.int16])
def test_an_index_outside_minus_one_to_c_names_value_row_and_column(index_dtype):
    """torch rejects the matrix when any entry, also one after the -1, is outside
    [-1, C): so does fastloss, naming the first such entry in row-major order."""
    x = np.zeros((6, 5))
    loss = fl.MultilabelMargin()
    for row, column, bad in [(0, 1, 5), (2, 0, -2), (4, 3, 7), (1, 4, -100),
                             (5, 4, 5)]:
        indices = INDICES.astype(index_dtype)
        indices[row, column] = bad
        with pytest.raises(RuntimeError):
            F.multilabel_margin_loss(torch.tensor(x), torch.tensor(indices.astype(np.int64)))
        message = (rf"^y_true: class index {bad} at row {row}, column {column} is "
                   rf"outside \[-1, 5\)")
        for call in (loss, loss.grad, loss.value_and_grad):
            with pytest.raises(ValueError, match=message):
                call(x, indices)
        with pytest.raises(ValueError, match=message):
            loss(x.astype(np.float32), indices)


def test_uint64_indices_beyond_int64_are_out_of_range_errors():
    indices = np.where(INDICES < 0, 0, INDICES).astype(np.uint64)
    indices[3, 2] = 2 ** 64 - 1   # -1 once wrapped to int64: never read as the end
    with pytest.raises(ValueError, match=rf"^y_true: class index {2 ** 64 - 1} at row 3, "
                                         r"column 2 is outside \[-1, 5\)"):
        fl.MultilabelMargin()(np.zeros((6, 5)), indices)


def test_float_and_bool_indices_are_type_errors_naming_y_true():
    x = np.zeros((6, 5))
    for bad in (INDICES.astype(np.float64), INDICES.astype(np.float32), INDICES > 0,
                INDICES.astype(str)):
        with pytest.raises(TypeError, match=rf"^y_true: expected integer class indices.*"
                                            rf"{bad.dtype}"):
            fl.MultilabelMargin()(x, bad)
    with pytest.raises(TypeError, match="^y_true: expected an"):
        fl.MultilabelMargin()(x, None)


def test_shapes_other_than_n_by_c_are_errors():
    loss = fl.MultilabelMargin()
    with pytest.raises(ValueError, match=r"^y_true: shape \(6,\) does not match y_pred "
                                         r"shape \(6, 5\)"):
        loss(np.zeros((6, 5)), INDICES[:, 0])
    # torch also takes a single 1-D row; a fastloss row loss wants (N, C)
    with pytest.raises(ValueError, match=r"^y_pred: .*\(N, C\)"):
        loss(np.zeros(5), INDICES[0])


def test_params_and_repr():
    loss = fl.get("multilabel_margin", reduction="sum")
    assert loss == fl.MultilabelMargin(reduction="sum")
    assert loss.get_params() == {"reduction": "sum"}
    assert repr(loss) == "MultilabelMargin(reduction='sum')"
    with pytest.raises(TypeError):
        fl.MultilabelMargin("sum")
