"""The weighted pointwise paths against float64 NumPy formulas, where their cuts lie.

A weighted call is cut into segments over which every weight lies in contiguous
memory: ``pos_weight`` repeated along a buffer of whole periods (or read in place
when it is long), the sample weights of short rows expanded one per element a tile at
a time, one loop per longer row.  The cuts fall inside rows, inside periods of
``pos_weight`` and across blocks; each case below puts them somewhere else, and the
results must not depend on where they are nor on the thread count.
"""
import numpy as np
import pytest

import fastloss as fl

REDUCTIONS = ("mean", "sum", "none")


def softplus(x):
    return np.logaddexp(0.0, x)


def bce_logits_terms(x, t, pos_weight):
    """torch binary_cross_entropy_with_logits per element, in float64, and its
    derivative: (1 - t) x + lw softplus(-x), lw = 1 + (pw - 1) t."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    lw = 1.0 + (np.asarray(pos_weight, dtype=np.float64) - 1.0) * t
    sigmoid_minus_x = np.exp(-softplus(x))
    return (1.0 - t) * x + lw * softplus(-x), (1.0 - t) - lw * sigmoid_minus_x


def mse_terms(p, t):
    d = p.astype(np.float64) - t.astype(np.float64)
    return d * d, 2.0 * d


def huber_terms(p, t, delta=1.0):
    d = p.astype(np.float64) - t.astype(np.float64)
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)), \
        np.clip(d, -delta, delta)


def expected(terms, grads, sample_weight, reduction):
    """(value, gradient) of the weighted terms: each term times its sample's weight;
    "mean" divides by the number of elements, as its gradient does."""
    w = np.ones(terms.shape[0]) if sample_weight is None \
        else np.asarray(sample_weight, dtype=np.float64)
    w = w.reshape((-1,) + (1,) * (terms.ndim - 1))
    scale = 1.0 / terms.size if reduction == "mean" else 1.0
    values = w * terms
    value = values if reduction == "none" else values.sum() * scale
    return value, w * grads * scale


def check(loss, pred, target, sample_weight, want_value, want_grad):
    """Every method (value only, gradient only, both) against the float64 formula, to
    rounding relative to the largest magnitude (a gradient such as (1 - t) - lw
    sigmoid(-x) cancels)."""
    rtol = 1e-12 if pred.dtype == np.float64 else 2e-5
    value_atol = rtol * np.abs(want_value).max(initial=0)
    grad_atol = rtol * np.abs(want_grad).max(initial=0)
    value, grad = loss.value_and_grad(pred, target, sample_weight)
    for got_value, got_grad in [(value, grad), (loss(pred, target, sample_weight),
                                                loss.grad(pred, target, sample_weight))]:
        np.testing.assert_allclose(got_value, want_value, rtol=rtol, atol=value_atol)
        np.testing.assert_allclose(got_grad, want_grad, rtol=rtol, atol=grad_atol)


def bce_inputs(rng, shape, dtype):
    pred = (rng.normal(size=shape) * 4).astype(dtype)
    target = rng.uniform(0, 1, size=shape).astype(dtype)
    target[..., ::3] = np.round(target[..., ::3])
    return pred, target


# shapes and pos_weight lengths: a single value (1-D and 2-D), short periods repeated
# along a buffer whose end falls inside a row (7, 100, 512: 1022, 1000 and 1024 of
# them per buffer), periods read in place (513 and more, longer than an expansion tile),
# and 3-D inputs whose rows of sample weights hold several periods
POS_CASES = [((5000,), 1), ((301, 7), 1), ((1200, 7), 7), ((130, 100), 100),
             ((9, 512), 512), ((9, 513), 513), ((7, 1500), 1500), ((3, 2049), 2049),
             ((1, 3), 3), ((700, 2, 3), 3), ((200, 5, 7), 7), ((3, 3, 600), 600)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("shape,pos_len", POS_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_pos_weight_segments(shape, pos_len, weighted, dtype, blocks, rng, request):
    if blocks == "small":
        request.getfixturevalue("parallel_always")
    pred, target = bce_inputs(rng, shape, dtype)
    pos_weight = rng.uniform(0.25, 4.0, pos_len)
    sample_weight = rng.uniform(0, 2, shape[0]).astype(dtype) if weighted else None
    for reduction in REDUCTIONS:
        loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight,
                                     reduction=reduction)
        terms, grads = bce_logits_terms(pred, target, pos_weight.astype(dtype))
        check(loss, pred, target, sample_weight,
              *expected(terms, grads, sample_weight, reduction))


def test_pos_weight_along_a_one_dimensional_input_with_element_weights(rng):
    """1-D y_pred: one sample weight per element and pos_weight along the same axis."""
    pred, target = bce_inputs(rng, (3001,), np.float64)
    pos_weight = rng.uniform(0.25, 4.0, 3001)
    sample_weight = rng.uniform(0, 2, 3001)
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight,
                                 reduction="sum")
    terms, grads = bce_logits_terms(pred, target, pos_weight)
    check(loss, pred, target, sample_weight,
          *expected(terms, grads, sample_weight, "sum"))


# rows of every expanded length (2..23), the first rows run one loop each (24, 31), rows
# shorter than a vector and a row count that puts the expansion tiles' ends mid-row
ROW_LENGTHS = list(range(2, 26)) + [31]


@pytest.mark.parametrize("name,terms", [("mse", mse_terms), ("huber", huber_terms)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", ROW_LENGTHS)
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_row_weights_of_every_row_length(name, terms, row, dtype, blocks, rng, request):
    if blocks == "small":
        request.getfixturevalue("parallel_always")
    n = 1 + 2500 // row
    pred = (rng.normal(size=(n, row)) * 2).astype(dtype)
    target = rng.normal(size=(n, row)).astype(dtype)
    sample_weight = rng.uniform(0, 2, n).astype(dtype)
    sample_weight[1] = 0.0
    for reduction in REDUCTIONS:
        loss = fl.get(name, reduction=reduction)
        check(loss, pred, target, sample_weight,
              *expected(*terms(pred, target), sample_weight, reduction))


@pytest.mark.parametrize("shape", [(900, 2, 3), (40, 3, 7), (5, 2, 2, 2)])
def test_row_weights_over_several_axes(shape, rng):
    """A sample weight covers every element of its sample, whatever the trailing axes."""
    pred = rng.normal(size=shape)
    target = rng.normal(size=shape)
    sample_weight = rng.uniform(0, 2, shape[0])
    loss = fl.get("huber", reduction="none")
    check(loss, pred, target, sample_weight,
          *expected(*huber_terms(pred, target), sample_weight, "none"))


def outputs(loss, pred, target, sample_weight):
    return (loss(pred, target, sample_weight), loss.grad(pred, target, sample_weight),
            *loss.value_and_grad(pred, target, sample_weight))


def same_bits(a, b):
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("blocks", ["default", "small"])
@pytest.mark.parametrize("case", ["pos single", "pos 7 with rows", "pos 1500 with rows",
                                  "rows of 3", "rows of 17", "rows of 40"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_with_one_and_two_threads(case, dtype, blocks, rng, set_threads,
                                            request):
    """Blocks cut rows and periods alike whatever thread runs them: 1 and 2 threads give
    the same bits (with blocks of 16 elements, or of the default size on an input
    large enough for threads)."""
    if blocks == "small":
        request.getfixturevalue("parallel_always")
    scale = 1 if blocks == "small" else 60
    kind, _, size = case.partition(" ")
    if kind == "pos":
        period = 1 if size == "single" else int(size.split()[0])
        shape = (scale * 4000,) if period == 1 else (scale * 4000 // period + 1, period)
        pred, target = bce_inputs(rng, shape, dtype)
        loss = fl.BinaryCrossEntropy(from_logits=True,
                                     pos_weight=rng.uniform(0.25, 4.0, period))
        sample_weight = rng.uniform(0, 2, shape[0]).astype(dtype) if period > 1 else None
    else:
        row = int(size.split()[-1])
        shape = (scale * 4000 // row + 1, row)
        pred = rng.normal(size=shape).astype(dtype)
        target = rng.normal(size=shape).astype(dtype)
        loss = fl.get("mse")
        sample_weight = rng.uniform(0, 2, shape[0]).astype(dtype)
    set_threads(1)
    one = outputs(loss, pred, target, sample_weight)
    set_threads(2)
    two = outputs(loss, pred, target, sample_weight)
    assert same_bits(one, two)
    # and a repeated call repeats its bits
    assert same_bits(two, outputs(loss, pred, target, sample_weight))
