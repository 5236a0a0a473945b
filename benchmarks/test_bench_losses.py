"""value_and_grad of every loss: fastloss vs PyTorch forward+backward vs NumPy (vs JAX)."""
import pytest

from fastloss._tools import bench as _bench

LIBRARIES = ("fastloss",) + _bench.PEERS


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
