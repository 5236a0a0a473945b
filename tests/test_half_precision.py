"""Half-precision storage: the pointwise kernels read bfloat16 and float16 arrays as
they are, compute in float32 and write the gradient in the input's dtype.

Every result is checked against the same call computed in float32 and rounded once to
the half dtype (the gradient within one unit in the last place of that dtype: the
kernels' float32 arithmetic may differ from torch's by a float32 rounding, which can
move a value across a half-precision rounding boundary), and the value against torch's
own half-precision call.
"""
import functools
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.torch as FL  # noqa: E402
from fastloss._pointwise import PointwiseLoss  # noqa: E402

HALVES = [torch.bfloat16, torch.float16]
REDUCTIONS = ["mean", "sum", "none"]
#: relative tolerance of a value against torch's half-precision result: two units in the
#: last place (torch rounds its float32 accumulation; so do we, from float64)
VALUE_RTOL = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}


def logits(shape, gen, scale=3.0):
    return torch.randn(shape, generator=gen) * scale


def probabilities(shape, gen):
    return torch.rand(shape, generator=gen).clamp(0.02, 0.98)


def signs(shape, gen):
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)


def counts(shape, gen):
    return torch.floor(torch.rand(shape, generator=gen) * 5)


# torch function name -> (fastloss.torch function, torch function, input, target): the
# losses whose kernels read half-precision storage (every pointwise loss of the adapter)
CASES = {
    "mse_loss": (FL.mse_loss, F.mse_loss, logits, logits),
    "l1_loss": (FL.l1_loss, F.l1_loss, logits, logits),
    "huber_loss": (functools.partial(FL.huber_loss, delta=0.5),
                   functools.partial(F.huber_loss, delta=0.5), logits, logits),
    "smooth_l1_loss": (functools.partial(FL.smooth_l1_loss, beta=0.5),
                       functools.partial(F.smooth_l1_loss, beta=0.5), logits, logits),
    "binary_cross_entropy": (FL.binary_cross_entropy, F.binary_cross_entropy,
                             probabilities, probabilities),
    "binary_cross_entropy_with_logits": (FL.binary_cross_entropy_with_logits,
                                         F.binary_cross_entropy_with_logits, logits,
                                         probabilities),
    "poisson_nll_loss": (FL.poisson_nll_loss, F.poisson_nll_loss,
                         functools.partial(logits, scale=1.0), counts),
    "soft_margin_loss": (FL.soft_margin_loss, F.soft_margin_loss, logits, signs),
    "hinge_embedding_loss": (FL.hinge_embedding_loss, F.hinge_embedding_loss, logits,
                             signs),
}
#: the losses defined for infinite and NaN inputs as torch defines them
NONFINITE = ("mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss")


def ulps(a, b):
    """Elementwise distance of two tensors of one half dtype in units in the last
    place: 0 where both are NaN, huge where only one is."""
    def ordered(x):
        bits = x.view(torch.int16).to(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)
    distance = (ordered(a) - ordered(b)).abs()
    distance = torch.where(a.isnan() & b.isnan(), 0, distance)
    return torch.where(a.isnan() ^ b.isnan(), 1 << 20, distance)


def assert_within_one_ulp(ours, reference, what):
    assert ours.dtype == reference.dtype, what
    worst = int(ulps(ours, reference).max()) if ours.numel() else 0
    assert worst <= 1, f"{what}: {worst} ulps from the float32 result rounded once"


def float32_reference(torch_fn, input, target, reduction):
    """The value and gradient of the call computed in float32 (torch autograd) and
    rounded once to the input's dtype."""
    x = input.detach().float().requires_grad_(True)
    value = torch_fn(x, target.float(), reduction=reduction)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach().to(input.dtype), grad.to(input.dtype)


def ours(fn, input, target, reduction):
    x = input.detach().clone().requires_grad_(True)
    value = fn(x, target, reduction=reduction)
    value.sum().backward()
    return value.detach(), x.grad


def make(case, shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    _, _, make_input, make_target = CASES[case]
    return make_input(shape, gen).to(dtype), make_target(shape, gen).to(dtype)


@pytest.fixture
def half_path(monkeypatch):
    """The memory each kernel call over half-precision storage read: fastloss.torch's
    views of the tensors' memory, as (address, bytes)."""
    seen = []
    real = FL._memory

    def recording(tensor):
        array = real(tensor)
        seen.append((array.ctypes.data, array.nbytes))
        return array

    monkeypatch.setattr(FL, "_memory", recording)
    return seen


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_value_and_gradient_in_the_inputs_dtype(case, dtype, reduction, half_path):
    fn, torch_fn, _, _ = CASES[case]
    input, target = make(case, (37, 11), dtype)
    value, grad = ours(fn, input, target, reduction)
    want_value, want_grad = float32_reference(torch_fn, input, target, reduction)
    assert grad.dtype == dtype and value.dtype == dtype
    assert_within_one_ulp(grad, want_grad, f"{case} gradient")
    if reduction == "none":
        assert_within_one_ulp(value, want_value, f"{case} values")
    # torch's own half-precision call: the same dtype; the reduced value within the
    # rounding (torch's "none" terms of some losses are computed with intermediate
    # half-precision roundings, further from the float32 terms than ours)
    torch_value = torch_fn(input, target, reduction=reduction)
    assert torch_value.dtype == value.dtype
    if reduction != "none":
        torch.testing.assert_close(value.float(), torch_value.float(),
                                   rtol=VALUE_RTOL[dtype], atol=1e-5)
    assert half_path, "the kernel did not read half-precision storage"


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_the_kernel_reads_the_tensors_own_memory(case, dtype, half_path):
    fn, _, _, _ = CASES[case]
    input, target = make(case, (64, 16), dtype)
    input.requires_grad_(True)
    report = FL.explain(lambda: fn(input, target).backward())
    assert [ran for _, ran, _ in report] == ["fastloss"]
    how = report[0][2]
    assert f"read as {str(dtype)[6:]} by the kernel" in how and "float32" not in how
    assert (input.data_ptr(), input.nbytes) in half_path
    assert (target.data_ptr(), target.nbytes) in half_path
    assert input.grad.dtype == dtype


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_under_autocast_the_value_is_float32_and_the_gradient_half(dtype, half_path):
    input, target = make("binary_cross_entropy_with_logits", (50, 7), dtype)
    for reduction in ("mean", "sum"):
        x = input.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype):
            report = FL.explain(
                lambda: FL.binary_cross_entropy_with_logits(x, target, reduction=reduction))
            value = report.result
            torch_value = F.binary_cross_entropy_with_logits(input, target,
                                                             reduction=reduction)
        assert value.dtype == torch_value.dtype == torch.float32
        assert "by the kernel" in report[0][2]
        torch.testing.assert_close(value, torch_value, rtol=1e-5, atol=1e-6)
        value.backward()
        want_value, want_grad = float32_reference(F.binary_cross_entropy_with_logits,
                                                  input, target, reduction)
        assert_within_one_ulp(x.grad, want_grad, reduction)
    # "none" under autocast: float32 values, which the half-precision storage would
    # round, so the call goes through a float32 copy
    with torch.autocast("cpu", dtype=dtype):
        report = FL.explain(lambda: FL.mse_loss(input, target, reduction="none"))
    assert report.result.dtype == torch.float32
    assert "through a float32 copy" in report[0][2]


def extremes(dtype):
    """Values at the ends of the half dtype's range."""
    info = torch.finfo(dtype)
    return torch.tensor([info.max, -info.max, info.tiny, info.smallest_normal / 8,
                         -info.smallest_normal / 1024, 1e4, -1e4, 0.0, -0.0, 1.0],
                        dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_extreme_values(case, dtype, python_path):
    # python_path: the float32 reference through the Python path (the C++ fast path
    # raises for a float32 sum beyond float32's range)
    fn, _, _, _ = CASES[case]
    gen = torch.Generator().manual_seed(3)
    input = extremes(dtype)
    if case in NONFINITE:
        input = torch.cat([input, torch.tensor([float("inf"), -float("inf"),
                                                float("nan")], dtype=dtype)])
    if case == "binary_cross_entropy":
        input = input.float().abs().clamp(0, 1).to(dtype)
    if case == "poisson_nll_loss":
        input = input.float().clamp(-80, 80).to(dtype)   # exp of it stays finite
    _, _, _, make_target = CASES[case]
    target = make_target(input.shape, gen).to(dtype)
    for reduction in REDUCTIONS:
        value, grad = ours(fn, input, target, reduction)
        # the reference is fastloss's float32 call: at these magnitudes torch's float32
        # formulas overflow in places fastloss's do not (its float32 sum of the terms,
        # log(1 + exp(x)) of soft_margin_loss), which the float32 tests cover
        want_value, want_grad = ours(fn, input.float(), target.float(), reduction)
        assert_within_one_ulp(grad, want_grad.to(dtype), f"{reduction} gradient")
        assert_within_one_ulp(value.reshape(-1), want_value.to(dtype).reshape(-1),
                              f"{reduction} value")


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_odd_lengths(dtype):
    """Lengths around the vector widths and block sizes: the loops' tails."""
    for n in (1, 3, 7, 15, 17, 31, 33, 63, 65, 1023, 4097, 16385):
        for case in ("mse_loss", "binary_cross_entropy_with_logits"):
            fn, torch_fn, _, _ = CASES[case]
            input, target = make(case, (n,), dtype, seed=n)
            value, grad = ours(fn, input, target, "sum")
            want_value, want_grad = float32_reference(torch_fn, input, target, "sum")
            assert_within_one_ulp(grad, want_grad, f"{case}, n={n}")
            torch.testing.assert_close(value.float(), want_value.float(),
                                       rtol=VALUE_RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_one_and_two_threads_give_the_same_bits(dtype, set_threads):
    input, target = make("binary_cross_entropy_with_logits", (1001, 301), dtype)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append(ours(FL.binary_cross_entropy_with_logits, input, target, "mean"))
    (value1, grad1), (value2, grad2) = results
    assert torch.equal(value1.view(torch.int16), value2.view(torch.int16))
    assert torch.equal(grad1.view(torch.int16), grad2.view(torch.int16))


# -- the NumPy API: float16 -------------------------------------------------------------

POINTWISE = [name for name in fl.available() if isinstance(fl.get(name), PointwiseLoss)]


def numpy_inputs(name, n, rng):
    loss = fl.get(name)
    x = rng.standard_normal(n)
    if name in ("hinge", "squared_hinge", "hinge_embedding", "soft_margin"):
        return x, np.where(rng.random(n) < 0.5, -1.0, 1.0)
    if name == "binary_cross_entropy" or "focal" in name:
        p = rng.uniform(0.05, 0.95, n)
        return p, rng.uniform(0, 1, n)
    if name in ("msle", "poisson", "kl_divergence"):
        return np.abs(x), np.abs(rng.standard_normal(n))
    assert loss is not None
    return x, rng.standard_normal(n)


@pytest.mark.parametrize("name", POINTWISE)
def test_numpy_float16_results_are_the_float32_results_rounded_once(name, rng):
    x, t = numpy_inputs(name, 1001, rng)
    pred, target = x.astype(np.float16), t.astype(np.float16)
    for reduction in ("mean", "sum"):
        loss = fl.get(name, reduction=reduction)
        out = np.full(pred.shape, np.nan, dtype=np.float16)
        value, grad = loss.value_and_grad(pred, target, out=out)
        assert grad is out
        want_value, want_grad = loss.value_and_grad(pred.astype(np.float32),
                                                    target.astype(np.float32))
        assert value == want_value
        np.testing.assert_array_equal(grad, want_grad.astype(np.float16))


def test_numpy_float16_is_read_without_a_float32_copy(rng):
    n = 1 << 20
    pred = rng.standard_normal(n).astype(np.float16)
    target = rng.standard_normal(n).astype(np.float16)
    out = np.empty_like(pred)
    loss = fl.get("huber")

    def peak(*args):
        loss.value_and_grad(*args, out=out)   # any one-time allocation happens here
        tracemalloc.start()
        try:
            loss.value_and_grad(*args, out=out)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(pred, target) < pred.nbytes // 16
    # a float32 target keeps the float32 copies (and the measure sees them)
    assert peak(pred, target.astype(np.float32)) > 2 * pred.nbytes
