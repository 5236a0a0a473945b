"""fastloss.torch against torch.nn.functional / torch.nn: values, gradients, fallbacks.

Every comparison runs the same call through torch itself.  ``fast`` (a fixture) records the
calls that really went through a fastloss kernel, so each test also asserts which path ran.

The row_losses losses (cross_entropy, kl_div, multi_margin_loss) run twice: against
fastloss's own classes when this build has them (skipped otherwise), and against small
stand-ins written with torch ops that follow the fastloss protocol, which check the
adapter's own work (argument mapping, reshapes, reductions, upstream gradients) before
the kernels are merged.
"""
import functools
import inspect
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.torch as FL  # noqa: E402

DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["mean", "sum", "none"]


def tolerances(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10,
                                                                          atol=1e-12)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def fast(monkeypatch, python_path):
    """The fastloss loss objects that computed a result (one per fast-path call), with
    the C++ fast path off: these tests check the Python path (test_torch_native checks
    that the C++ path gives the same results)."""
    calls = []
    real_run = FL._run

    def counting_run(loss, *args):
        result = real_run(loss, *args)
        calls.append(loss)
        return result

    monkeypatch.setattr(FL, "_run", counting_run)
    return calls


def randn(shape, dtype, rng, requires_grad=False):
    return torch.randn(shape, generator=rng, dtype=dtype).requires_grad_(requires_grad)


def rand(shape, dtype, rng, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(shape, generator=rng, dtype=dtype)


def value_and_grads(fn, inputs, rng, scale=3.0):
    """fn(*inputs), and the gradients of its value times an upstream gradient: ``scale``
    for a scalar loss (grad_output != 1), a random tensor for reduction="none"."""
    value = fn(*inputs)
    if value.ndim == 0:
        total = value * scale
    else:
        upstream = torch.randn(value.shape, generator=rng, dtype=value.dtype)
        total = (value * upstream).sum()
    wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    grads = torch.autograd.grad(total, wrt) if wrt else ()
    return value.detach(), grads


def assert_same_as_torch(ours, theirs, inputs, dtype, seed=7, rtol=None):
    """ours(*inputs) and theirs(*inputs): same value, dtype, shape and gradients, for the
    same upstream gradient."""
    tol = tolerances(dtype)
    if rtol is not None:
        tol["rtol"] = max(tol["rtol"], rtol)
    v1, g1 = value_and_grads(ours, inputs, torch.Generator().manual_seed(seed))
    v2, g2 = value_and_grads(theirs, inputs, torch.Generator().manual_seed(seed))
    assert v1.dtype == v2.dtype == dtype
    assert v1.shape == v2.shape
    torch.testing.assert_close(v1, v2, equal_nan=True, **tol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, equal_nan=True, **tol)


def assert_same_outcome_as_torch(ours, theirs, inputs, dtype):
    """As assert_same_as_torch; where torch raises (in forward or backward), ours raises
    the same error."""
    try:
        value_and_grads(theirs, inputs, torch.Generator().manual_seed(7))
    except RuntimeError as error:
        with pytest.raises(type(error), match=re.escape(str(error))):
            value_and_grads(ours, inputs, torch.Generator().manual_seed(7))
        return
    assert_same_as_torch(ours, theirs, inputs, dtype)


# -- pointwise losses ------------------------------------------------------------------------

def regression_data(shape, dtype, rng):
    return randn(shape, dtype, rng, requires_grad=True), 1.5 * randn(shape, dtype, rng)


def probability_data(shape, dtype, rng):
    probs = rand(shape, dtype, rng, 0.02, 0.98).requires_grad_(True)
    return probs, rand(shape, dtype, rng)


def logit_data(shape, dtype, rng):
    return 3 * randn(shape, dtype, rng).requires_grad_(True), rand(shape, dtype, rng)


def counts(shape, dtype, rng):
    """Poisson counts 0 to 5: both sides of the Stirling term's t > 1."""
    return torch.randint(0, 6, shape, generator=rng).to(dtype)


def log_rate_data(shape, dtype, rng):
    return randn(shape, dtype, rng, requires_grad=True), counts(shape, dtype, rng)


def rate_data(shape, dtype, rng):
    return rand(shape, dtype, rng, 0.1, 3.0).requires_grad_(True), counts(shape, dtype, rng)


def sign_data(shape, dtype, rng):
    """Scores (or distances) and labels +-1."""
    labels = 2 * torch.randint(0, 2, shape, generator=rng) - 1
    return (2 * randn(shape, dtype, rng)).requires_grad_(True), labels.to(dtype)


POINTWISE_CASES = [
    ("mse_loss", {}, regression_data),
    ("l1_loss", {}, regression_data),
    ("huber_loss", {}, regression_data),
    ("huber_loss", {"delta": 0.3}, regression_data),
    ("huber_loss", {"delta": 2.5}, regression_data),
    ("smooth_l1_loss", {}, regression_data),
    ("smooth_l1_loss", {"beta": 0.4}, regression_data),
    ("smooth_l1_loss", {"beta": 3.0}, regression_data),
    ("smooth_l1_loss", {"beta": 0.0}, regression_data),
    ("binary_cross_entropy", {}, probability_data),
    ("binary_cross_entropy_with_logits", {}, logit_data),
    ("poisson_nll_loss", {}, log_rate_data),
    ("poisson_nll_loss", {"full": True}, log_rate_data),
    ("poisson_nll_loss", {"log_input": False}, rate_data),
    ("poisson_nll_loss", {"log_input": False, "full": True, "eps": 0.01}, rate_data),
    ("soft_margin_loss", {}, sign_data),
    ("hinge_embedding_loss", {}, sign_data),
    ("hinge_embedding_loss", {"margin": 0.4}, sign_data),
    ("hinge_embedding_loss", {"margin": -0.5}, sign_data),
]


def first_case_of_each_function(cases):
    first = {}
    for case in cases:
        first.setdefault(case[0], case)
    return list(first.values())


FUNCTION_CASES = first_case_of_each_function(POINTWISE_CASES)


def case_id(case):
    name, kwargs, _ = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=case_id)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 7), (29,), (3, 4, 5)], ids=str)
def test_pointwise_matches_torch(case, reduction, dtype, shape, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data(shape, dtype, rng)
    ours = getattr(FL, name)
    theirs = getattr(F, name)
    assert_same_as_torch(lambda a, b: ours(a, b, reduction=reduction, **kwargs),
                         lambda a, b: theirs(a, b, reduction=reduction, **kwargs),
                         (x, y), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=case_id)
def test_pointwise_default_arguments_and_scalar_input(case, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((), torch.float64, rng)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                         lambda a, b: getattr(F, name)(a, b, **kwargs), (x, y), torch.float64)


def row_weight(shape, dtype, rng, expanded):
    """A torch weight that is one weight per row: (N, 1, ...) or expanded (stride 0)."""
    rows = rand(shape[:1], dtype, rng, 0.1, 2.0)
    column = rows.reshape(shape[:1] + (1,) * (len(shape) - 1))
    return column.expand(shape) if expanded else column


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(11, 6), (17,)], ids=str)
def test_regression_row_weight_is_fast(name, reduction, dtype, shape, rng, fast):
    # torch wants weight of input's shape: one weight per row is the expanded (N,) vector
    x, y = regression_data(shape, dtype, rng)
    weight = row_weight(shape, dtype, rng, expanded=True)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, reduction=reduction, weight=weight),
                         lambda a, b: getattr(F, name)(a, b, reduction=reduction, weight=weight),
                         (x, y), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
def test_regression_elementwise_weight_falls_back(name, rng, fast):
    x, y = regression_data((6, 5), torch.float64, rng)
    weight = rand((6, 5), torch.float64, rng)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, weight=weight),
                         lambda a, b: getattr(F, name)(a, b, weight=weight), (x, y),
                         torch.float64)
    assert fast == []


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_regression_weights_summing_to_zero_give_torchs_nan(name, rng, fast):
    x, y = regression_data((4, 3), torch.float64, rng)
    weight = torch.zeros(4, 1, dtype=torch.float64).expand(4, 3)
    value = getattr(FL, name)(x, y, weight=weight)
    assert torch.isnan(value) and torch.isnan(getattr(F, name)(x, y, weight=weight))
    assert fast == []


@pytest.mark.parametrize("name,make_data", [("binary_cross_entropy", probability_data),
                                            ("binary_cross_entropy_with_logits", logit_data)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("expanded", [False, True])
def test_bce_row_weight_is_fast(name, make_data, reduction, dtype, expanded, rng, fast):
    x, y = make_data((9, 4), dtype, rng)
    weight = row_weight((9, 4), dtype, rng, expanded)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, weight, reduction=reduction),
                         lambda a, b: getattr(F, name)(a, b, weight, reduction=reduction),
                         (x, y), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("name,make_data", [("binary_cross_entropy", probability_data),
                                            ("binary_cross_entropy_with_logits", logit_data)])
@pytest.mark.parametrize("weight_shape", [(4,), (9, 4), (1, 4)], ids=str)
def test_bce_weight_varying_within_rows_falls_back(name, make_data, weight_shape, rng, fast):
    x, y = make_data((9, 4), torch.float64, rng)
    weight = rand(weight_shape, torch.float64, rng, 0.1, 2.0)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, weight),
                         lambda a, b: getattr(F, name)(a, b, weight), (x, y), torch.float64)
    assert fast == []


@pytest.mark.parametrize("pos_weight_shape", [(4,), (1,), ()], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_weight", [False, True])
def test_bce_with_logits_pos_weight(pos_weight_shape, reduction, dtype, with_weight, rng,
                                    fast):
    x, y = logit_data((10, 4), dtype, rng)
    pos_weight = rand(pos_weight_shape, dtype, rng, 0.2, 4.0)
    weight = row_weight((10, 4), dtype, rng, expanded=False) if with_weight else None
    kwargs = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    assert_same_as_torch(lambda a, b: FL.binary_cross_entropy_with_logits(a, b, **kwargs),
                         lambda a, b: F.binary_cross_entropy_with_logits(a, b, **kwargs),
                         (x, y), dtype)
    assert len(fast) == 1


def test_bce_with_logits_pos_weight_per_element_falls_back(rng, fast):
    x, y = logit_data((5, 3), torch.float64, rng)
    pos_weight = rand((5, 3), torch.float64, rng, 0.2, 4.0)
    kwargs = dict(pos_weight=pos_weight)
    assert_same_as_torch(lambda a, b: FL.binary_cross_entropy_with_logits(a, b, **kwargs),
                         lambda a, b: F.binary_cross_entropy_with_logits(a, b, **kwargs),
                         (x, y), torch.float64)
    assert fast == []


@pytest.mark.parametrize("case", [case for case in FUNCTION_CASES if "size_average" in
                                  inspect.signature(getattr(F, case[0])).parameters],
                         ids=case_id)
@pytest.mark.parametrize("size_average,reduce", [(None, False), (True, None), (False, None),
                                                 (False, True), (True, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_legacy_size_average_and_reduce(case, size_average, reduce, dtype, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((6, 4), dtype, rng)
    legacy = dict(kwargs, size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning, match="size_average and reduce"):
        getattr(FL, name)(x, y, **legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, **legacy),
                             lambda a, b: getattr(F, name)(a, b, **legacy), (x, y), dtype)
    assert len(fast) == 2


# -- the fast path itself --------------------------------------------------------------------

@pytest.mark.parametrize("backward", [
    lambda loss: loss.backward(),
    lambda loss: loss.backward(retain_graph=True),
    lambda loss: (2 * loss).backward(),               # upstream gradient 2: scaled in place
], ids=["backward", "retain_graph", "scaled"])
def test_input_and_gradient_are_shared_not_copied(backward, rng, monkeypatch, python_path):
    """The kernel reads the input's memory and writes the gradient that ends up in .grad."""
    x, y = regression_data((64, 8), torch.float32, rng)
    seen = {}
    real = fl.MeanSquaredError.value_and_grad

    def spy(self, y_pred, y_true, sample_weight=None, out=None):
        seen.update(pred=y_pred.ctypes.data, true=y_true.ctypes.data, out=out.ctypes.data)
        return real(self, y_pred, y_true, sample_weight, out=out)

    monkeypatch.setattr(fl.MeanSquaredError, "value_and_grad", spy)
    backward(FL.mse_loss(x, y))
    assert seen["pred"] == x.data_ptr() and seen["true"] == y.data_ptr()
    assert seen["out"] == x.grad.data_ptr()


def test_without_grad_only_the_value_is_computed(rng, monkeypatch, fast):
    x, y = regression_data((7, 3), torch.float64, rng)
    monkeypatch.setattr(fl.Huber, "value_and_grad", None)   # would fail if called
    with torch.no_grad():
        value = FL.huber_loss(x, y)
    assert value.grad_fn is None and not value.requires_grad
    torch.testing.assert_close(value, F.huber_loss(x, y).detach())
    value = FL.huber_loss(x.detach(), y, reduction="none")
    torch.testing.assert_close(value, F.huber_loss(x.detach(), y, reduction="none"))
    with torch.inference_mode():
        value = FL.huber_loss(x, y, reduction="sum")
    torch.testing.assert_close(value, F.huber_loss(x, y, reduction="sum").detach())
    assert len(fast) == 3


def test_retained_graph_and_accumulation(rng, fast):
    x, y = regression_data((6, 4), torch.float64, rng)
    (expected,) = torch.autograd.grad(F.mse_loss(x, y), x)
    loss = FL.mse_loss(x, y)
    for _ in range(3):
        loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 3 * expected)
    FL.mse_loss(x, y).backward()
    torch.testing.assert_close(x.grad, 4 * expected)


def test_non_contiguous_input(rng, fast):
    x = randn((5, 8), torch.float32, rng).t().requires_grad_(True)    # (8, 5), transposed
    y = randn((8, 5), torch.float32, rng)
    assert not x.is_contiguous()
    assert_same_as_torch(lambda a, b: FL.smooth_l1_loss(a, b, beta=0.5, reduction="none"),
                         lambda a, b: F.smooth_l1_loss(a, b, beta=0.5, reduction="none"),
                         (x, y), torch.float32)
    assert len(fast) == 1


@pytest.mark.parametrize("case", FUNCTION_CASES, ids=case_id)
def test_empty_batch(case, fast):
    name, kwargs, _ = case
    x = torch.zeros(0, 3, requires_grad=True)
    y = torch.zeros(0, 3)
    for reduction in REDUCTIONS:       # "mean" is NaN, as torch's
        assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, reduction=reduction),
                             lambda a, b: getattr(F, name)(a, b, reduction=reduction),
                             (x, y), torch.float32)
    assert len(fast) == len(REDUCTIONS)


def test_torch_threads_unchanged(rng):
    before = torch.get_num_threads()
    x, y = regression_data((300, 300), torch.float32, rng)
    FL.mse_loss(x, y).backward()
    assert torch.get_num_threads() == before


# -- fallbacks --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FUNCTION_CASES, ids=case_id)
def test_target_requiring_grad_falls_back(case, rng, fast):
    # torch differentiates some of these with respect to the target and refuses others
    name, kwargs, make_data = case
    x, y = make_data((5, 4), torch.float64, rng)
    y.requires_grad_(True)
    assert_same_outcome_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                                 lambda a, b: getattr(F, name)(a, b, **kwargs), (x, y),
                                 torch.float64)
    assert fast == []


def test_weight_requiring_grad_falls_back(rng, fast):
    x, y = regression_data((5, 4), torch.float64, rng)
    weight = rand((5, 1), torch.float64, rng).expand(5, 4).requires_grad_(True)
    assert_same_as_torch(lambda a, b, w: FL.mse_loss(a, b, weight=w),
                         lambda a, b, w: F.mse_loss(a, b, weight=w), (x, y, weight),
                         torch.float64)
    assert fast == []


def test_mixed_dtypes_and_broadcasting_fall_back(rng, fast):
    x, y = regression_data((5, 4), torch.float32, rng)
    assert_same_as_torch(FL.l1_loss, F.l1_loss, (x.double(), y), torch.float64)
    row = randn((4,), torch.float32, rng)
    with pytest.warns(UserWarning, match="different to the input size"):
        ours = FL.mse_loss(x, row)
    with pytest.warns(UserWarning, match="different to the input size"):
        theirs = F.mse_loss(x, row)
    torch.testing.assert_close(ours, theirs)
    assert fast == []


@pytest.mark.parametrize("name", ["poisson_nll_loss", "soft_margin_loss",
                                  "hinge_embedding_loss"])
@pytest.mark.parametrize("broadcast", [lambda y: y[0], lambda y: y[:, :1],
                                       lambda y: y.unsqueeze(0)], ids=["row", "column", "3d"])
def test_silently_broadcast_targets_fall_back(name, broadcast, rng, fast):
    # torch broadcasts these without a warning (soft_margin_loss refuses a larger result)
    name, kwargs, make_data = next(case for case in FUNCTION_CASES if case[0] == name)
    x, y = make_data((5, 4), torch.float64, rng)
    y = broadcast(y)
    assert_same_outcome_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                                 lambda a, b: getattr(F, name)(a, b, **kwargs), (x, y),
                                 torch.float64)
    assert fast == []


INTEGER_TARGET_CASES = [
    ("poisson_nll_loss", {}, log_rate_data),
    ("poisson_nll_loss", {"log_input": False}, rate_data),
    ("poisson_nll_loss", {"full": True}, log_rate_data),
    ("soft_margin_loss", {}, sign_data),
    ("hinge_embedding_loss", {"margin": 0.5}, sign_data),
]


@pytest.mark.parametrize("case", INTEGER_TARGET_CASES, ids=case_id)
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.int8])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_targets_are_read_as_torch_promotes_them(case, target_dtype, reduction, dtype,
                                                         rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((7, 5), dtype, rng)
    kwargs = dict(kwargs, reduction=reduction)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                         lambda a, b: getattr(F, name)(a, b, **kwargs),
                         (x, y.to(target_dtype)), dtype)
    # torch computes the Stirling term of integer counts in the default dtype
    stirling_in_other_dtype = kwargs.get("full") and dtype != torch.get_default_dtype()
    assert len(fast) == (0 if stirling_in_other_dtype else 1)


@pytest.mark.parametrize("case", INTEGER_TARGET_CASES, ids=case_id)
@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8])
def test_bool_and_unsigned_targets_fall_back(case, target_dtype, rng, fast):
    # torch's soft_margin_loss backward negates the target in its dtype: an error for
    # bool, 255 for a uint8 1
    name, kwargs, make_data = case
    x, y = make_data((4, 3), torch.float64, rng)
    assert_same_outcome_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                                 lambda a, b: getattr(F, name)(a, b, **kwargs),
                                 (x, (y > 0).to(target_dtype)), torch.float64)
    assert fast == []


@pytest.mark.parametrize("case", [
    ("poisson_nll_loss", {}, log_rate_data),
    ("poisson_nll_loss", {"log_input": False, "full": True}, rate_data),
    ("soft_margin_loss", {}, sign_data),
    ("hinge_embedding_loss", {"margin": 0.5}, sign_data),
], ids=case_id)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_infinite_input_as_torch(case, reduction, dtype, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((6, 5), dtype, rng)
    # soft_margin_loss differs at +-inf on purpose (test below)
    special = [float("nan")] + ([] if name == "soft_margin_loss" else [np.inf, -np.inf])
    x = x.detach().clone()
    x[:, :len(special)] = torch.tensor(special, dtype=dtype)
    if name == "hinge_embedding_loss":         # labels other than +-1 take both terms
        y[::2] = torch.tensor([0.0, 2.0, -1.0, 1.0, 3.0], dtype=dtype)
    kwargs = dict(kwargs, reduction=reduction)
    assert_same_as_torch(lambda a, b: getattr(FL, name)(a, b, **kwargs),
                         lambda a, b: getattr(F, name)(a, b, **kwargs),
                         (x.requires_grad_(True), y), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_margin_loss_is_finite_where_torch_overflows(dtype, fast):
    big = 100.0 if dtype == torch.float32 else 800.0    # exp(big) overflows the dtype
    x = torch.tensor([-big, big, -np.inf, 0.5, -3.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=dtype)
    values, grads = [], []
    for module in (FL, F):
        value = module.soft_margin_loss(x, y, reduction="none")
        values.append(value.detach())
        grads.append(torch.autograd.grad(value.sum(), x)[0])
    (ours, theirs), (ours_grad, grad) = values, grads
    assert torch.isinf(theirs[:3]).all() and torch.isnan(grad[:3]).all()
    # softplus(z) = z to the dtype's precision there; its derivative -y
    torch.testing.assert_close(ours[:3], -y[:3] * x.detach()[:3])
    torch.testing.assert_close(ours_grad[:3], -y[:3])
    torch.testing.assert_close(ours[3:], theirs[3:], **tolerances(dtype))
    torch.testing.assert_close(ours_grad[3:], grad[3:], **tolerances(dtype))
    assert len(fast) == 1


def test_meta_device_falls_back(fast):
    x = torch.empty(4, 3, device="meta")
    out = FL.cross_entropy(x, torch.empty(4, dtype=torch.long, device="meta"))
    assert out.device.type == "meta"
    assert FL.mse_loss(x, x).device.type == "meta"
    assert fast == []


def test_values_fastloss_rejects_get_torchs_answer_or_error(fast):
    logits = torch.tensor([0.5, -2.0], requires_grad=True)
    outside = torch.tensor([1.5, -0.5])          # BCE-with-logits targets outside [0, 1]
    assert_same_as_torch(FL.binary_cross_entropy_with_logits,
                         F.binary_cross_entropy_with_logits, (logits, outside), torch.float32)
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        FL.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        FL.mse_loss(logits, outside, reduction="average")
    with pytest.raises(RuntimeError, match="negative values for beta"):
        FL.smooth_l1_loss(logits, outside, beta=-1.0)
    assert fast == []


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_nan_is_torchs_error(reduction):
    probs = torch.tensor([0.5, float("nan"), 0.2], requires_grad=True)
    with pytest.raises(RuntimeError, match="input should be between 0 and 1"):
        FL.binary_cross_entropy(probs, torch.tensor([1.0, 0.0, 1.0]), reduction=reduction)
    with pytest.raises(RuntimeError, match="target should be between 0 and 1"):
        FL.binary_cross_entropy(probs.detach().nan_to_num(0.5),
                                torch.tensor([1.0, float("nan"), 0.0]), reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_probabilities_at_0_and_1(reduction, dtype, fast):
    """log clamped at -100 and the gradient's 1e-12 floor, as torch."""
    probs = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], dtype=dtype, requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3], dtype=dtype)
    # torch's floor is float32(1e-12) in float64 too: a 4e-9 relative difference there
    assert_same_as_torch(lambda a, b: FL.binary_cross_entropy(a, b, reduction=reduction),
                         lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
                         (probs, target), dtype, rtol=1e-8)
    assert len(fast) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("case", FUNCTION_CASES, ids=case_id)
def test_jit_trace_records_torchs_ops(case, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((4, 3), torch.float32, rng)
    traced = torch.jit.trace(lambda a, b: getattr(FL, name)(a, b, **kwargs), (x.detach(), y),
                             check_trace=False)
    assert f"aten::{name}" in str(traced.graph)
    x2, y2 = make_data((4, 3), torch.float32, rng)
    torch.testing.assert_close(traced(x2.detach(), y2),
                               getattr(F, name)(x2, y2, **kwargs).detach())
    assert fast == []


def test_importing_fastloss_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path
    code = "import sys, fastloss; assert 'torch' not in sys.modules, 'torch imported'"
    # run beside the fastloss under test (the source tree has no compiled kernels)
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(fl.__file__).resolve().parent.parent)


def test_torch_function_mode_sees_torchs_function(rng, fast):
    seen = []

    class Recorder(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x, y = regression_data((4, 3), torch.float32, rng)
    with Recorder():
        FL.l1_loss(x, y)
    assert F.l1_loss in seen and fast == []
    with torch.device("cpu"):           # the default-device context is no reason to fall back
        FL.l1_loss(x, y)
    assert len(fast) == 1


# -- double backward and gradcheck --------------------------------------------------------

@pytest.mark.parametrize("case", POINTWISE_CASES, ids=case_id)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_and_gradgradcheck(case, reduction, rng, fast):
    name, kwargs, make_data = case
    x, y = make_data((4, 3), torch.float64, rng)

    def fn(a):
        return getattr(FL, name)(a, y, reduction=reduction, **kwargs)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    assert fast


def test_double_backward_is_torchs(rng):
    x, y = logit_data((5, 3), torch.float64, rng)
    pos_weight = rand((3,), torch.float64, rng, 0.5, 2.0)
    hessian_vector = []
    for fn in (FL.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits):
        (grad,) = torch.autograd.grad(fn(x, y, pos_weight=pos_weight), x, create_graph=True)
        (hv,) = torch.autograd.grad((grad * torch.arange(15.0).reshape(5, 3)).sum(), x)
        hessian_vector.append(hv)
    torch.testing.assert_close(*hessian_vector)


# -- modules -----------------------------------------------------------------------------

MODULE_CASES = [
    ("MSELoss", {}, regression_data),
    ("L1Loss", {"reduction": "sum"}, regression_data),
    ("HuberLoss", {"delta": 0.5}, regression_data),
    ("SmoothL1Loss", {"beta": 0.25, "reduction": "none"}, regression_data),
    ("BCELoss", {"weight": "rows"}, probability_data),
    ("BCEWithLogitsLoss", {"weight": "rows", "pos_weight": "classes"}, logit_data),
    ("PoissonNLLLoss", {"log_input": False, "full": True, "eps": 1e-3}, rate_data),
    ("SoftMarginLoss", {"reduction": "sum"}, sign_data),
    ("HingeEmbeddingLoss", {"margin": 0.5, "reduction": "none"}, sign_data),
]


def module_kwargs(kwargs, rng, dtype, shape):
    resolved = dict(kwargs)
    if resolved.get("weight") == "rows":
        resolved["weight"] = rand(shape[:1] + (1,), dtype, rng, 0.5, 2.0)
    if resolved.get("pos_weight") == "classes":
        resolved["pos_weight"] = rand(shape[-1:], dtype, rng, 0.5, 2.0)
    return resolved


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_modules_match_torch(case, dtype, rng, fast):
    name, kwargs, make_data = case
    shape = (6, 5)
    kwargs = module_kwargs(kwargs, rng, dtype, shape)
    ours, theirs = getattr(FL, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, name)) and isinstance(ours, torch.nn.Module)
    x, y = make_data(shape, dtype, rng)
    assert_same_as_torch(ours, theirs, (x, y), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c[0])
def test_module_state_dict_and_buffers(case, rng):
    name, kwargs, _ = case
    kwargs = module_kwargs(kwargs, rng, torch.float32, (6, 5))
    ours = getattr(FL, name)(**kwargs)
    theirs = getattr(torch.nn, name)(**{k: v.clone() if isinstance(v, torch.Tensor) else v
                                        for k, v in kwargs.items()})
    assert ours.weight is kwargs.get("weight", None) if hasattr(ours, "weight") else True
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert list(ours.parameters()) == []
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key])
    # buffers follow .double() and load_state_dict, and the forward uses the loaded ones
    if "weight" in kwargs:
        state = {k: 2 * v for k, v in theirs.state_dict().items()}
        ours.load_state_dict(state)
        ours.double()
        assert ours.weight.dtype == torch.float64
        torch.testing.assert_close(ours.weight, state["weight"].double())
        x, y = (logit_data if "Logits" in name else probability_data)((6, 5), torch.float64,
                                                                       rng)
        theirs.load_state_dict(state)
        assert_same_as_torch(ours, theirs.double(), (x, y), torch.float64)


def test_module_legacy_arguments_and_repr():
    with pytest.warns(UserWarning):
        module = FL.SmoothL1Loss(size_average=False, beta=0.5)
    assert module.reduction == "sum" and module.beta == 0.5
    assert repr(module) == "SmoothL1Loss()"


def parameters(function):
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", FL.__all__)
def test_signatures_are_torchs(name):
    """Names, order, kinds and defaults of the arguments: torch's (a module keeps torch's
    constructor and takes forward's arguments)."""
    ours = getattr(FL, name)
    if isinstance(ours, type):
        theirs = getattr(torch.nn, name)
        assert issubclass(ours, theirs) and ours.__init__ is theirs.__init__
        ours, theirs = ours.forward, theirs.forward
    elif name == "sigmoid_focal_loss":       # torchvision's, as it publishes it (below)
        theirs = torchvision_sigmoid_focal_loss
    else:
        theirs = getattr(F, name)
    assert parameters(ours) == parameters(theirs)


# -- row_losses losses --------------------------------------------------------------------

class _StandIn:
    """A row loss with the fastloss protocol, computed with torch ops in float64.

    ``rows(x, target)`` gives the per-row losses (per position of scores with more axes,
    the classes on axis 1); the reduction and sample_weight follow the fastloss contract
    ("mean" divides by the row count, or by ``denominator`` when defined).
    """

    per_row = True

    def __init__(self, *, reduction="mean", **params):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction {reduction!r}")
        self.reduction, self.params = reduction, params
        self.axis = params.get("axis", -1)   # the class axis, as fastloss's losses have

    def __call__(self, y_pred, y_true, sample_weight=None):
        return self.value_and_grad(y_pred, y_true, sample_weight)[0]

    def value_and_grad(self, y_pred, y_true, sample_weight=None, out=None):
        with torch.enable_grad():      # the adapter calls it inside an autograd forward
            return self._value_and_grad(y_pred, y_true, sample_weight, out)

    def _value_and_grad(self, y_pred, y_true, sample_weight, out):
        x = torch.from_numpy(np.array(y_pred, dtype=np.float64)).requires_grad_(True)
        target = torch.from_numpy(np.array(y_true))
        if target.is_floating_point():
            target = target.double()
        terms = self.rows(x, target)
        if sample_weight is not None:
            terms = terms * torch.from_numpy(np.array(sample_weight, dtype=np.float64))
        total = terms.sum()
        if self.reduction == "mean":
            total = total / self.denominator(target, terms.numel())
        (grad,) = torch.autograd.grad(total if self.reduction != "none" else terms.sum(), x)
        if out is None:
            out = np.empty_like(y_pred)
        out[...] = grad.numpy()
        if self.reduction == "none":
            return terms.detach().numpy().astype(y_pred.dtype), out
        return float(total.detach()), out

    def denominator(self, target, n_rows):
        return n_rows


class StandInSparseCE(_StandIn):
    def rows(self, x, labels):
        p = self.params
        weight = None if p.get("class_weight") is None else torch.from_numpy(
            np.array(p["class_weight"], dtype=np.float64))
        return F.cross_entropy(x, labels, weight=weight, ignore_index=p["ignore_index"],
                               label_smoothing=p["label_smoothing"], reduction="none")

    def denominator(self, labels, n_rows):
        kept = labels != self.params["ignore_index"]
        weight = self.params.get("class_weight")
        if weight is None:
            return kept.sum().item()
        safe = torch.where(kept, labels, 0)
        return (torch.from_numpy(np.array(weight, dtype=np.float64))[safe] * kept).sum().item()


class StandInCategoricalCE(StandInSparseCE):
    def rows(self, x, probs):
        p = self.params
        weight = None if p.get("class_weight") is None else torch.from_numpy(
            np.array(p["class_weight"], dtype=np.float64))
        return F.cross_entropy(x, probs, weight=weight, label_smoothing=p["label_smoothing"],
                               reduction="none")

    def denominator(self, target, n_rows):
        return n_rows


class StandInKL(_StandIn):
    """kl_divergence with y_pred = log q, as torch's kl_div (no renormalisation)."""

    def rows(self, log_q, target):
        if self.params.get("log_target", False):
            return (target.exp() * (target - log_q)).sum(1)
        return (torch.special.xlogy(target, target) - target * log_q).sum(1)


class StandInMultiMargin(_StandIn):
    def rows(self, x, labels):
        p = self.params
        weight = None if p.get("class_weight") is None else torch.from_numpy(
            np.array(p["class_weight"], dtype=np.float64))
        return F.multi_margin_loss(x, labels, p=p["p"], margin=p["margin"], weight=weight,
                                   reduction="none")


STAND_INS = {"SparseCategoricalCrossEntropy": StandInSparseCE,
             "CategoricalCrossEntropy": StandInCategoricalCE,
             "KLDivergence": StandInKL,
             "MultiMargin": StandInMultiMargin}


@pytest.fixture(params=["fastloss", "stand-in"])
def row_losses(request, monkeypatch):
    """Which row_losses implementation the adapter uses: fastloss's (skipped when this
    build lacks it) or the torch-op stand-ins."""
    if request.param == "fastloss":
        missing = [name for name in STAND_INS if not hasattr(fl, name)]
        if missing:
            pytest.skip(f"this fastloss build has no {', '.join(missing)} yet")
    else:
        for name, cls in STAND_INS.items():
            monkeypatch.setattr(fl, name, cls, raising=False)
    yield request.param


def kl_fast_calls(n):
    """Calls of kl_div that reach a kernel: all of them (fastloss's elementwise
    PointwiseKLDivergence reads log q as torch does)."""
    return n


def labels_for(shape, n_classes, rng, ignore=None):
    labels = torch.randint(0, n_classes, shape, generator=rng)
    if ignore is not None:
        labels[::3] = ignore
    return labels


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_labels(row_losses, reduction, dtype, weighted, label_smoothing,
                              ignore_index, rng, fast):
    x = randn((12, 5), dtype, rng, requires_grad=True)
    labels = labels_for((12,), 5, rng, ignore=-100 if ignore_index == -100 else None)
    kwargs = dict(weight=rand((5,), dtype, rng, 0.2, 2.0) if weighted else None,
                  ignore_index=ignore_index, reduction=reduction,
                  label_smoothing=label_smoothing)
    assert_same_as_torch(lambda a, b: FL.cross_entropy(a, b, **kwargs),
                         lambda a, b: F.cross_entropy(a, b, **kwargs), (x, labels), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_probabilities(row_losses, reduction, dtype, weighted, label_smoothing,
                                     rng, fast):
    x = randn((10, 6), dtype, rng, requires_grad=True)
    probs = torch.softmax(randn((10, 6), dtype, rng), 1)
    kwargs = dict(weight=rand((6,), dtype, rng, 0.2, 2.0) if weighted else None,
                  reduction=reduction, label_smoothing=label_smoothing)
    assert_same_as_torch(lambda a, b: FL.cross_entropy(a, b, **kwargs),
                         lambda a, b: F.cross_entropy(a, b, **kwargs), (x, probs), dtype)
    assert len(fast) == 1


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("labels", [True, False])
def test_cross_entropy_spatial_and_unbatched(row_losses, reduction, labels, rng, fast):
    dtype = torch.float64
    for shape in [(3, 4, 2, 5), (4,)]:
        x = randn(shape, dtype, rng, requires_grad=True)
        if labels:
            target = labels_for(shape[:1] + shape[2:] if len(shape) > 1 else (), 4, rng)
        else:
            target = torch.softmax(randn(shape, dtype, rng), 0 if len(shape) == 1 else 1)
        assert_same_as_torch(lambda a, b: FL.cross_entropy(a, b, reduction=reduction),
                             lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                             (x, target), dtype)
    assert len(fast) == 2


def test_cross_entropy_fallbacks(row_losses, rng, fast):
    x = randn((6, 4), torch.float32, rng, requires_grad=True)
    labels = labels_for((6,), 4, rng)
    with pytest.raises(RuntimeError, match="expected target dtype"):
        FL.cross_entropy(x, labels.int())                   # torch's error for int32
    bad = labels.clone()
    bad[2] = 7
    with pytest.raises(IndexError, match="out of bounds"):
        FL.cross_entropy(x, bad)                            # torch's error, not fastloss's
    probs = torch.softmax(randn((6, 4), torch.float32, rng), 1).requires_grad_(True)
    assert_same_as_torch(FL.cross_entropy, F.cross_entropy, (x, probs), torch.float32)
    assert fast == []


def test_cross_entropy_all_ignored_is_nan(row_losses, rng, fast):
    x = randn((4, 3), torch.float64, rng, requires_grad=True)
    labels = torch.full((4,), -100)
    assert_same_as_torch(FL.cross_entropy, F.cross_entropy, (x, labels), torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 2), (6,)], ids=str)
def test_kl_div(row_losses, reduction, dtype, log_target, shape, rng, fast):
    log_q = torch.log_softmax(randn(shape, dtype, rng), -1).requires_grad_(True)
    p = torch.softmax(randn(shape, dtype, rng), -1)
    if not log_target:
        p = torch.where(p < 0.05, torch.zeros_like(p), p)        # zeros: xlogy(0, 0) = 0
    target = p.log() if log_target else p
    kwargs = dict(reduction=reduction, log_target=log_target)
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        assert_same_as_torch(lambda a, b: FL.kl_div(a, b, **kwargs),
                             lambda a, b: F.kl_div(a, b, **kwargs), (log_q, target), dtype)
    if reduction == "mean":   # fastloss and torch both warn about torch's "mean"
        assert sum("batchmean" in str(w.message) for w in ours_warned) == 2
    assert len(fast) == kl_fast_calls(1)


def test_kl_div_unnormalised_input_gradient_is_minus_p(row_losses, rng, fast):
    """torch's kl_div treats input as a free log q: the gradient is -p / N, not q - p."""
    x = randn((5, 4), torch.float64, rng, requires_grad=True)      # not log-probabilities
    p = torch.softmax(randn((5, 4), torch.float64, rng), 1)
    assert_same_as_torch(lambda a, b: FL.kl_div(a, b, reduction="batchmean"),
                         lambda a, b: F.kl_div(a, b, reduction="batchmean"), (x, p),
                         torch.float64)
    assert len(fast) == kl_fast_calls(1)


def test_kl_div_none_falls_back(row_losses, rng, fast):
    log_q = torch.log_softmax(randn((5, 4), torch.float64, rng), 1).requires_grad_(True)
    p = torch.softmax(randn((5, 4), torch.float64, rng), 1)
    assert_same_as_torch(lambda a, b: FL.kl_div(a, b, reduction="none"),
                         lambda a, b: F.kl_div(a, b, reduction="none"), (log_q, p),
                         torch.float64)
    assert fast == []


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p,margin", [(1, 1.0), (2, 0.5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_multi_margin_loss(row_losses, reduction, dtype, p, margin, weighted, rng, fast):
    x = randn((9, 5), dtype, rng, requires_grad=True)
    labels = labels_for((9,), 5, rng)
    kwargs = dict(p=p, margin=margin, reduction=reduction,
                  weight=rand((5,), dtype, rng, 0.2, 2.0) if weighted else None)
    assert_same_as_torch(lambda a, b: FL.multi_margin_loss(a, b, **kwargs),
                         lambda a, b: F.multi_margin_loss(a, b, **kwargs), (x, labels), dtype)
    x1 = randn((5,), dtype, rng, requires_grad=True)                 # unbatched
    assert_same_as_torch(lambda a, b: FL.multi_margin_loss(a, b, **kwargs),
                         lambda a, b: F.multi_margin_loss(a, b, **kwargs),
                         (x1, labels[0]), dtype)
    assert len(fast) == 2


LABEL_SETS = torch.tensor([[3, 0, -1, 2], [1, -1, 0, 0], [-1, 2, 2, 2], [0, 1, 2, 3],
                           [2, 3, -1, -1]])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_multilabel_losses_match_torch(reduction, dtype, weighted, rng, fast):
    """multilabel_margin_loss with (N, C) int64 label sets padded with -1, and
    multilabel_soft_margin_loss with 0/1 targets (floats, or integers read as the input's
    dtype) and per-class weights; batched and unbatched."""
    x = randn((5, 4), dtype, rng, requires_grad=True)
    dense = torch.randint(0, 2, (5, 4), generator=rng)
    weight = rand((4,), dtype, rng, 0.2, 2.0) if weighted else None
    cases = [(functools.partial(FL.multilabel_soft_margin_loss, weight=weight),
              functools.partial(F.multilabel_soft_margin_loss, weight=weight), target)
             for target in (dense, dense.to(dtype))]
    if not weighted:
        cases.append((FL.multilabel_margin_loss, F.multilabel_margin_loss, LABEL_SETS))
    for ours, theirs, target in cases:
        ours = functools.partial(ours, reduction=reduction)
        theirs = functools.partial(theirs, reduction=reduction)
        assert_same_as_torch(ours, theirs, (x, target), dtype)
        assert_same_as_torch(ours, theirs, (x[0].detach().requires_grad_(True), target[0]),
                             dtype)
    assert len(fast) == 2 * len(cases)


def test_multilabel_losses_fall_back_where_the_kernel_cannot_run(rng, fast):
    x = randn((2, 3, 4), torch.float64, rng, requires_grad=True)   # 3-D: torch's own
    target = torch.randint(0, 2, (2, 3, 4), generator=rng).double()
    assert_same_as_torch(FL.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss,
                         (x, target), torch.float64)
    with pytest.raises(RuntimeError):                               # index out of range
        FL.multilabel_margin_loss(x[0], torch.full((3, 4), 7))
    assert fast == []


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss as torchvision publishes it."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2), (-1, 2), (0.6, 1.5), (0.25, 0)])
def test_sigmoid_focal_loss_matches_torchvision(reduction, dtype, alpha, gamma, rng, fast):
    x = (3 * randn((6, 5), dtype, rng)).requires_grad_(True)
    targets = (torch.rand((6, 5), generator=rng) < 0.3).to(dtype)
    assert_same_as_torch(
        lambda a, b: FL.sigmoid_focal_loss(a, b, alpha=alpha, gamma=gamma, reduction=reduction),
        lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, reduction),
        (x, targets), dtype)
    assert len(fast) == 1
    with pytest.raises(ValueError, match="Invalid Value for arg 'reduction'"):
        FL.sigmoid_focal_loss(x, targets, reduction="batchmean")


def test_sigmoid_focal_loss_integer_targets_raise_as_torchvision(rng, fast):
    x = randn((4, 3), torch.float32, rng, requires_grad=True)
    targets = torch.randint(0, 2, (4, 3), generator=rng)
    with pytest.raises(RuntimeError, match="can't be cast"):
        torchvision_sigmoid_focal_loss(x, targets)
    with pytest.raises(RuntimeError, match="can't be cast"):
        FL.sigmoid_focal_loss(x, targets)
    assert fast == []


def test_sigmoid_focal_loss_alpha_beyond_one_is_torchvisions_formula(rng, fast):
    x = randn((4, 3), torch.float64, rng, requires_grad=True)
    targets = (torch.rand((4, 3), generator=rng) < 0.5).double()
    assert_same_as_torch(lambda a, b: FL.sigmoid_focal_loss(a, b, alpha=1.5),
                         lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha=1.5),
                         (x, targets), torch.float64)
    assert fast == []


@pytest.mark.parametrize("name,make_args", [
    ("cross_entropy", lambda rng: (randn((4, 3), torch.float64, rng, True),
                                   labels_for((4,), 3, rng))),
    ("multi_margin_loss", lambda rng: (randn((4, 3), torch.float64, rng, True),
                                       labels_for((4,), 3, rng))),
    ("kl_div", lambda rng: (randn((4, 3), torch.float64, rng, True),
                            torch.softmax(randn((4, 3), torch.float64, rng), 1))),
])
def test_row_loss_gradcheck(row_losses, name, make_args, rng, fast):
    x, target = make_args(rng)

    def fn(a):
        return getattr(FL, name)(a, target, reduction="sum")

    assert torch.autograd.gradcheck(fn, (x,))
    assert fast or (name == "kl_div" and kl_fast_calls(1) == 0)
    if name == "multi_margin_loss":      # torch has no double backward for it either
        with pytest.raises(RuntimeError, match="multi_margin_loss_backward is not implemented"):
            torch.autograd.gradgradcheck(fn, (x,))
    else:
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_is_torchs(dtype, reduction, weighted, rng):
    log_probs = torch.log_softmax(randn((7, 4), dtype, rng), 1).requires_grad_(True)
    labels = labels_for((7,), 4, rng, ignore=-100)
    weight = rand((4,), dtype, rng, 0.2, 2.0) if weighted else None
    assert_same_as_torch(lambda a, b: FL.nll_loss(a, b, weight, reduction=reduction),
                         lambda a, b: F.nll_loss(a, b, weight, reduction=reduction),
                         (log_probs, labels), dtype)
    module = FL.NLLLoss(weight, reduction=reduction)
    assert_same_as_torch(module, torch.nn.NLLLoss(weight, reduction=reduction),
                         (log_probs, labels), dtype)


ROW_LOSS_MODULES = [
    ("CrossEntropyLoss", dict(weight="classes", ignore_index=1, label_smoothing=0.1)),
    ("KLDivLoss", dict(reduction="batchmean", log_target=True)),
    ("MultiMarginLoss", dict(p=2, margin=0.7, weight="classes")),
    ("MultiLabelSoftMarginLoss", dict(weight="classes")),
    ("MultiLabelMarginLoss", dict(reduction="sum")),
]


@pytest.mark.parametrize("name,kwargs", ROW_LOSS_MODULES, ids=lambda c: str(c)[:20])
def test_row_loss_modules(row_losses, name, kwargs, rng, fast):
    dtype = torch.float32
    kwargs = dict(kwargs)
    if kwargs.get("weight") == "classes":
        kwargs["weight"] = rand((4,), dtype, rng, 0.5, 2.0)
    ours, theirs = getattr(FL, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = randn((6, 4), dtype, rng, requires_grad=True)
    if name == "KLDivLoss":
        x = torch.log_softmax(x.detach(), 1).requires_grad_(True)
        target = torch.log_softmax(randn((6, 4), dtype, rng), 1)
    elif name == "MultiLabelSoftMarginLoss":
        target = torch.randint(0, 2, (6, 4), generator=rng).to(dtype)
    elif name == "MultiLabelMarginLoss":
        target = torch.cat([LABEL_SETS, LABEL_SETS[:1]])
    else:
        target = labels_for((6,), 4, rng)
    assert_same_as_torch(ours, theirs, (x, target), dtype)
    assert len(fast) == (kl_fast_calls(1) if name == "KLDivLoss" else 1)


# -- gradients handed out, in-place edits and later backwards -----------------------------
# One loss per adapted function (several for the ones whose torch backward differs with
# its arguments), each run through fastloss.torch and torch.nn.functional on the same data.

def labels_data(shape, dtype, rng):
    return randn(shape, dtype, rng, requires_grad=True), labels_for(shape[:1], shape[1], rng)


def soft_labels_data(shape, dtype, rng):
    return (randn(shape, dtype, rng, requires_grad=True),
            torch.softmax(randn(shape, dtype, rng), 1))


def log_probability_data(shape, dtype, rng):
    return (torch.log_softmax(randn(shape, dtype, rng), 1).requires_grad_(True),
            torch.softmax(randn(shape, dtype, rng), 1))


EDIT_CASES = [
    ("mse_loss", {}, regression_data),
    ("mse_loss", {"reduction": "none"}, regression_data),
    ("mse_loss", {"weight": "rows"}, regression_data),
    ("l1_loss", {"reduction": "sum"}, regression_data),
    ("huber_loss", {"delta": 0.5}, regression_data),
    ("smooth_l1_loss", {"beta": 0.5, "reduction": "none"}, regression_data),
    ("smooth_l1_loss", {"beta": 0.0}, regression_data),
    ("binary_cross_entropy", {}, probability_data),
    ("binary_cross_entropy_with_logits", {}, logit_data),
    ("binary_cross_entropy_with_logits", {"pos_weight": "classes", "reduction": "none"},
     logit_data),
    ("cross_entropy", {}, labels_data),
    ("cross_entropy", {"weight": "classes", "label_smoothing": 0.1, "reduction": "none"},
     labels_data),
    ("cross_entropy", {"reduction": "sum"}, soft_labels_data),
    ("kl_div", {"reduction": "batchmean"}, log_probability_data),
    ("kl_div", {"reduction": "sum", "log_target": True}, log_probability_data),
    ("multi_margin_loss", {}, labels_data),
    ("multi_margin_loss", {"p": 2, "reduction": "none"}, labels_data),
    ("poisson_nll_loss", {}, log_rate_data),
    ("poisson_nll_loss", {"log_input": False, "full": True, "reduction": "none"}, rate_data),
    ("soft_margin_loss", {}, sign_data),
    ("soft_margin_loss", {"reduction": "none"}, sign_data),
    ("hinge_embedding_loss", {"margin": 0.5, "reduction": "sum"}, sign_data),
]


def edit_case_call(case, dtype, seed=11):
    """The data of ``case`` (input leaf, target, upstream gradient) and ``call(module,
    input)`` computing the loss with fastloss.torch (FL) or torch.nn.functional (F)."""
    name, kwargs, make_data = case
    rng = torch.Generator().manual_seed(seed)
    shape = (8, 5)
    x, target = make_data(shape, dtype, rng)
    x = x.detach().requires_grad_(True)           # a leaf
    if name == "kl_div" and kwargs.get("log_target"):
        target = target.log()
    kwargs = dict(kwargs)
    if kwargs.get("weight") == "rows":
        kwargs["weight"] = row_weight(shape, dtype, rng, expanded=True)
    if kwargs.get("weight") == "classes":
        kwargs["weight"] = rand(shape[-1:], dtype, rng, 0.5, 2.0)
    if kwargs.get("pos_weight") == "classes":
        kwargs["pos_weight"] = rand(shape[-1:], dtype, rng, 0.5, 2.0)
    reduction = kwargs.get("reduction", "mean")
    none_shape = shape if name not in ("cross_entropy", "multi_margin_loss") else shape[:1]
    upstream = (randn(none_shape, dtype, rng) if reduction == "none"
                else torch.tensor(3.0, dtype=dtype))

    def call(module, input):
        return getattr(module, name)(input, target, **kwargs)

    return x, upstream, call


def edit_case_id(case):
    name, kwargs, make_data = case
    return "-".join([name, make_data.__name__.replace("_data", "")]
                    + [f"{k}={v}" for k, v in kwargs.items()])


def torch_grad(call, x, upstream):
    """torch.nn.functional's gradient of the loss of ``call`` at ``x`` (unmodified)."""
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(call(F, x), x, upstream)[0]


def upstream_for(loss, upstream, as_is):
    """The upstream gradient: ones (for a scalar loss, loss.backward()'s) or ``upstream``."""
    return torch.ones_like(loss) if as_is else upstream


@pytest.mark.parametrize("case", EDIT_CASES, ids=edit_case_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("as_is", [True, False], ids=["upstream=1", "upstream!=1"])
def test_second_backward_after_user_edits_returned_grad_matches_torch(case, dtype, as_is,
                                                                      fast):
    x, upstream, call = edit_case_call(case, dtype)
    loss = call(FL, x)
    assert len(fast) == 1
    upstream = upstream_for(loss, upstream, as_is)
    expected = torch_grad(call, x, upstream)
    (first,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
    torch.testing.assert_close(first, expected, **tolerances(dtype))
    first.fill_(float("nan"))                     # the user edits the gradient they got
    (second,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
    torch.testing.assert_close(second, expected, **tolerances(dtype))
    assert first.isnan().all(), "a later backward wrote into a gradient handed out earlier"
    second.zero_()
    loss.backward(upstream)
    torch.testing.assert_close(x.grad, expected, **tolerances(dtype))


@pytest.mark.parametrize("case", EDIT_CASES[::3], ids=edit_case_id)
def test_returned_grad_is_not_kept_by_the_loss(case, fast):
    """The first backward's gradient is not referenced by the graph: nothing fastloss keeps
    (nor a later backward) can change it."""
    x, upstream, call = edit_case_call(case, torch.float64)
    loss = call(FL, x)
    upstream = upstream_for(loss, upstream, as_is=True)
    (first,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
    kept = first.clone()
    (second,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
    assert second.data_ptr() != first.data_ptr()
    second.add_(1.0)
    loss.backward(upstream)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


def run_after_edit(module, call, x, upstream, edit, later):
    """The loss of ``call`` with ``module``, its input modified in place by ``edit`` after
    the loss was computed, then ``later`` ("backward", "second backward" or "double
    backward"); returns x.grad (or the double backward's gradient) or the RuntimeError."""
    x = x.detach().clone().requires_grad_(True)
    input = x.clone() if edit == "clone" else x
    loss = call(module, input)
    if later == "second backward":
        loss.backward(upstream, retain_graph=True)
        x.grad = None
    if edit == "data":
        input.data.mul_(0.5)              # not seen by autograd's version counter
    else:
        with torch.no_grad():
            input.mul_(0.5)
    try:
        if later == "double backward":
            return torch.autograd.grad(loss, x, upstream, create_graph=True)[0].detach()
        loss.backward(upstream)
    except RuntimeError as error:
        return error
    return x.grad


@pytest.mark.parametrize("case", EDIT_CASES, ids=edit_case_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("edit", ["clone", "leaf"])
def test_backward_after_in_place_edit_of_input_is_as_torch(case, dtype, edit, fast):
    """torch allows editing the input after the loss when its backward does not read the
    input (cross_entropy, kl_div, l1_loss, weighted mse_loss): so does fastloss.torch, with
    torch's gradient; where torch's backward reads the input it raises, and so does this."""
    x, upstream, call = edit_case_call(case, dtype)
    ours = run_after_edit(FL, call, x, upstream, edit, "backward")
    assert len(fast) == 1
    theirs = run_after_edit(F, call, x, upstream, edit, "backward")
    if isinstance(theirs, RuntimeError):
        assert "modified by an inplace operation" in str(theirs)
        assert isinstance(ours, RuntimeError) and str(ours) == str(theirs)
    else:
        assert not isinstance(ours, RuntimeError), ours
        torch.testing.assert_close(ours, theirs, **tolerances(dtype))
        torch.testing.assert_close(ours, torch_grad(call, x, upstream), **tolerances(dtype))


@pytest.mark.parametrize("case", EDIT_CASES, ids=edit_case_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_after_data_edit_of_input_is_the_gradient_of_the_loss_computed(case, dtype,
                                                                                 fast):
    """An edit through .data is invisible to autograd: backward still gives the gradient
    at the values the loss was computed from (torch's, for the losses whose backward does
    not read the input)."""
    x, upstream, call = edit_case_call(case, dtype)
    ours = run_after_edit(FL, call, x, upstream, "data", "backward")
    assert len(fast) == 1
    torch.testing.assert_close(ours, torch_grad(call, x, upstream), **tolerances(dtype))
    torch_reads_input = isinstance(run_after_edit(F, call, x, upstream, "clone", "backward"),
                                   RuntimeError)
    if not torch_reads_input:     # else torch's backward reads the edited values
        torch.testing.assert_close(ours, run_after_edit(F, call, x, upstream, "data",
                                                        "backward"), **tolerances(dtype))


@pytest.mark.parametrize("case", EDIT_CASES, ids=edit_case_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("edit", ["clone", "leaf"])
@pytest.mark.parametrize("later", ["double backward", "second backward"])
def test_recomputing_backward_after_in_place_edit_of_input_raises(case, dtype, edit, later,
                                                                  fast):
    """A double backward, or a backward after the first (which took the kernel's gradient),
    works from the input, so after an in-place edit it raises, never returns a gradient at
    the edited values; where torch would not have raised, the error says why."""
    x, upstream, call = edit_case_call(case, dtype)
    ours = run_after_edit(FL, call, x, upstream, edit, later)
    assert len(fast) == 1
    assert isinstance(ours, RuntimeError), "no error after the input was modified"
    assert "modified by an inplace operation" in str(ours)
    theirs = run_after_edit(F, call, x, upstream, edit, later)
    if isinstance(theirs, RuntimeError):
        assert not str(theirs).startswith("fastloss")
    else:
        assert "after the loss was computed" in str(ours)
        assert ("double backward" if later == "double backward"
                else "backward after the first") in str(ours)


@pytest.mark.parametrize("case", [c for c in EDIT_CASES if c[0] != "multi_margin_loss"],
                         ids=edit_case_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward_before_and_after_a_backward_matches_torch(case, dtype, fast):
    """A double backward differentiates torch's formula whether or not a backward has
    taken the kernel's gradient, and a backward after a double backward still gets it."""
    x, upstream, call = edit_case_call(case, dtype)
    weights = torch.linspace(-1.0, 2.0, x.numel(), dtype=dtype).reshape(x.shape)

    def hessian_vector(module, backward_first):
        a = x.detach().clone().requires_grad_(True)
        loss = call(module, a)
        if backward_first:
            loss.backward(upstream, retain_graph=True)
        (grad,) = torch.autograd.grad(loss, a, upstream, create_graph=True)
        if grad.requires_grad:
            (hv,) = torch.autograd.grad((grad * weights).sum(), a, retain_graph=True)
        else:                                     # kl_div: the gradient is -p, a constant
            hv = torch.zeros_like(a)
        a.grad = None
        loss.backward(upstream)
        return grad.detach(), hv, a.grad

    expected = hessian_vector(F, False)
    for backward_first in (False, True):
        for ours, theirs in zip(hessian_vector(FL, backward_first), expected):
            torch.testing.assert_close(ours, theirs, **tolerances(dtype))
    assert len(fast) == 2


@pytest.mark.parametrize("case", EDIT_CASES[::4], ids=edit_case_id)
def test_backward_twice_without_retain_graph_raises_as_torch(case, fast):
    x, upstream, call = edit_case_call(case, torch.float64)
    for module in (FL, F):
        loss = call(module, x)
        loss.backward(upstream)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            loss.backward(upstream)
    assert len(fast) == 1


def test_a_weight_changed_in_place_is_read_again(rng, fast):
    """Losses with a per-class weight are built once per weight tensor; an in-place
    change of the weight (a module buffer edited) gives a loss of the new weights."""
    x = randn((8, 4), torch.float64, rng, requires_grad=True)
    y = labels_for((8,), 4, rng)
    weight = rand((4,), torch.float64, rng, 0.5, 2.0)
    pos_weight = rand((4,), torch.float64, rng, 0.5, 2.0)
    t = rand((8, 4), torch.float64, rng)
    for _ in range(2):
        for ours, theirs in [
                (lambda: FL.cross_entropy(x, y, weight=weight),
                 lambda: F.cross_entropy(x, y, weight=weight)),
                (lambda: FL.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight),
                 lambda: F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight))]:
            torch.testing.assert_close(ours(), theirs(), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ours(), theirs(), rtol=1e-12, atol=1e-12)
        weight.mul_(torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64))
        pos_weight.add_(1.0)
    assert len(fast) == 8
