"""pytest-benchmark suite of fastloss against PyTorch, NumPy and JAX.

Not part of the default ``pytest`` run (testpaths is tests/).  Run it with::

    pytest benchmarks/ --benchmark-only                       # small and medium sizes
    pytest benchmarks/ --benchmark-only --bench-sizes small,medium,large
    pytest benchmarks/ --benchmark-only --bench-losses mse,huber --bench-dtypes float32

Each case (loss, size, dtype) is one benchmark group, so pytest-benchmark prints the
libraries side by side.  The cases, inputs and timed calls are those of
``python -m fastloss bench`` (fastloss._tools.bench).
"""
import pytest

from fastloss._tools import bench as _bench


def pytest_addoption(parser):
    group = parser.getgroup("fastloss benchmarks")
    group.addoption("--bench-sizes", default="small,medium",
                    help="size classes among small, medium, large (default small,medium)")
    group.addoption("--bench-dtypes", default="float32,float64",
                    help="float32, float64 or both (default both)")
    group.addoption("--bench-losses", default=None,
                    help="comma-separated loss names (default: all registered)")


def pytest_generate_tests(metafunc):
    if "case_inputs" not in metafunc.fixturenames:
        return
    option = metafunc.config.getoption
    sizes = _bench.comma_list(option("--bench-sizes"))
    unknown = set(sizes) - set(_bench.SIZE_CLASSES)
    if unknown:
        raise pytest.UsageError(f"--bench-sizes: unknown size class {sorted(unknown)[0]!r}; "
                                f"choose among {', '.join(_bench.SIZE_CLASSES)}")
    losses = option("--bench-losses")
    cases = _bench.make_cases(_bench.comma_list(losses) if losses else None, sizes,
                              _bench.comma_list(option("--bench-dtypes")))
    # module scope: pytest runs every library of a case before building the next inputs
    metafunc.parametrize("case_inputs", cases, indirect=True, scope="module",
                         ids=[f"{c.loss}-{c.size}-{c.dtype}" for c in cases])


@pytest.fixture(scope="module")
def case_inputs(request):
    """(case, (y_pred, y_true)) of one benchmark case."""
    case = request.param
    return case, case.inputs()
