"""value_and_grad of every loss: fastloss vs PyTorch forward+backward vs NumPy (vs JAX)."""
import pytest

from fastloss._tools import bench as _bench

# torch.compile (compiling every case takes minutes) is left to `python -m fastloss
# bench --compile`
LIBRARIES = ("fastloss",) + tuple(p for p in _bench.PEERS if p not in _bench.OPTIONAL_PEERS)


@pytest.mark.parametrize("library", LIBRARIES)
def test_value_and_grad(benchmark, case_inputs, library):
    case, (pred, target) = case_inputs
    if library != "fastloss" and not _bench.importable(library):
        pytest.skip(f"{library} is not installed")
    calls = _bench.make_calls(case, pred, target,
                              peers=[] if library == "fastloss" else [library])
    if library not in calls:
        pytest.skip(f"{library} has no version of {case.title} in {case.dtype}")
    _, call = calls[library]
    benchmark.group = f"{case.title} {case.size_label} {case.dtype}"
    benchmark.extra_info.update(loss=case.loss, params=case.params, size=case.size,
                                dtype=str(case.dtype), elements=case.elements)
    benchmark(call)


# The weighted paths next to the unweighted call of the same loss and inputs (one group
# per case): pos_weight of binary cross-entropy from logits, per class and a single
# value, and one sample weight per row of a few elements.  PyTorch: the same weighting
# through autograd.
WEIGHTED_CASES = {
    "bce-logits pos_weight per class 4096x1000": ("pos_weight", (4096, 1000), 1000),
    "bce-logits pos_weight single 4096x1000": ("pos_weight", (4096, 1000), 1),
    "mse sample_weight 262144x4": ("sample_weight", (262144, 4), "mse"),
    "huber sample_weight 65536x15": ("sample_weight", (65536, 15), "huber"),
}


def weighted_calls(kind, shape, detail, dtype):
    """{column: call}: fastloss unweighted and weighted, PyTorch weighted."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import fastloss as fl
    rng = np.random.default_rng(0)
    pred = rng.normal(size=shape).astype(dtype)
    out = np.empty_like(pred)
    x = torch.from_numpy(pred.copy()).requires_grad_(True)
    if kind == "pos_weight":
        target = (rng.random(shape) < 0.3).astype(dtype)
        pos_weight = (rng.random(detail) + 0.5).astype(dtype)
        plain = fl.BinaryCrossEntropy(from_logits=True)
        weighted = fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight)
        t, pw = torch.from_numpy(target), torch.from_numpy(pos_weight)

        def torch_loss():
            return F.binary_cross_entropy_with_logits(x, t, pos_weight=pw)
        weight = None
    else:
        target = rng.normal(size=shape).astype(dtype)
        weight = (rng.random(shape[0]) + 0.5).astype(dtype)
        plain = weighted = fl.get(detail)
        term = F.mse_loss if detail == "mse" else F.huber_loss
        t, w = torch.from_numpy(target), torch.from_numpy(weight)[:, None]

        def torch_loss():
            return (term(x, t, reduction="none") * w).mean()

    def torch_call():
        x.grad = None
        torch_loss().backward()
    return {"fastloss unweighted": lambda: plain.value_and_grad(pred, target, out=out),
            "fastloss": lambda: weighted.value_and_grad(pred, target, weight, out=out),
            "torch": torch_call}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("library", ["fastloss unweighted", "fastloss", "torch"])
@pytest.mark.parametrize("case", list(WEIGHTED_CASES))
def test_weighted_value_and_grad(benchmark, case, library, dtype, request):
    if dtype not in _bench.comma_list(request.config.getoption("--bench-dtypes")):
        pytest.skip(f"{dtype} not among --bench-dtypes")
    if library == "torch" and not _bench.importable("torch"):
        pytest.skip("torch is not installed")
    call = weighted_calls(*WEIGHTED_CASES[case], dtype)[library]
    benchmark.group = f"{case} {dtype}"
    benchmark(call)
