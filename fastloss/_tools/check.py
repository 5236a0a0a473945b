"""``python -m fastloss check``: every loss against finite differences and the peers.

For each registered loss and a few parameter variants (and the reductions "sum" and "none"
on its first variant, sample weights on the first that takes them), on small inputs
away from kinks:

- float64 ``value_and_grad``'s gradient against central finite differences of
  ``__call__``;
- ``__call__``, ``grad()`` and ``value_and_grad(out=)`` against ``value_and_grad``;
- value and gradient against the NumPy reference and against PyTorch autograd (when
  installed), in float32 and float64, and float32 against float64;
- on inputs large enough for the threaded path, 1 thread against 2.

Errors are relative to the largest magnitude of the expected array, so that tiny
entries of a gradient do not dominate.
"""
import sys
import time

import numpy as np

import fastloss as fl

from . import reference
from .reference import REFERENCES

#: (N, C): per-class parameters of the variants (pos_weight, class_weight) have C entries
CHECK_SHAPE = (4, 5)
#: large enough for the threaded path (fastloss._threads.PARALLEL_MIN_WORK), rows that
#: do not split evenly between threads, and the same C as CHECK_SHAPE
THREAD_SHAPE = (27011, CHECK_SHAPE[1])
FD_STEP = 1e-6

#: tolerances of the relative errors, by what is compared and the dtype
TOLERANCE = {
    ("finite differences", "float64"): 1e-6,
    ("same", "float64"): 1e-12,   # two entry points of one kernel
    ("same", "float32"): 1e-6,
    ("peer", "float64"): 1e-9,    # NumPy, PyTorch
    ("peer", "float32"): 5e-5,
    ("threads", "float64"): 1e-12,
    ("threads", "float32"): 1e-6,
    ("float32 vs float64", "float32"): 1e-4,
}
DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|; inf on a shape or NaN mismatch."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return np.inf
    if actual.size == 0:
        return 0.0
    nan = np.isnan(expected)
    if np.any(np.isnan(actual) != nan):
        return np.inf
    actual, expected = actual[~nan], expected[~nan]
    if actual.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(actual - expected))) / scale


class Comparison:
    """One compared quantity: its error, and whether it is within tolerance."""

    def __init__(self, case, what, dtype, error, tolerance, note=""):
        self.case = case
        self.what = what
        self.dtype = str(dtype)
        self.error = error
        self.tolerance = tolerance
        self.note = note

    @property
    def ok(self):
        return self.error <= self.tolerance

    def __str__(self):
        verdict = "ok" if self.ok else "FAIL"
        detail = self.note or f"rel err {self.error:.1e} (tol {self.tolerance:.0e})"
        return f"{verdict:4} {self.case}: {self.what} [{self.dtype}] {detail}"


class LossReport:
    """The comparisons of one loss."""

    def __init__(self, name):
        self.name = name
        self.comparisons = []
        self.cases = 0

    @property
    def ok(self):
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    @property
    def failures(self):
        return [c for c in self.comparisons if not c.ok]

    def max_error(self, dtype):
        errors = [c.error for c in self.comparisons if c.dtype == dtype]
        return max(errors, default=np.nan)

    def add(self, case, what, dtype, actual, expected, kind):
        """Compare (value, grad) pairs, or single arrays, within the tolerance of ``kind``."""
        tolerance = TOLERANCE[kind, str(dtype)]
        if isinstance(expected, tuple):
            for part, a, e in zip(("value", "grad"), actual, expected):
                self.comparisons.append(Comparison(case, f"{what} {part}", dtype,
                                                   relative_error(a, e), tolerance))
        else:
            self.comparisons.append(Comparison(case, what, dtype,
                                               relative_error(actual, expected), tolerance))

    def fail(self, case, what, dtype, message):
        self.comparisons.append(Comparison(case, what, dtype, np.inf, 0.0, note=message))


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _describe(name, params, reduction, weighted, options):
    parts = [f"{k}={v!r}" for k, v in params.items()]
    if reduction != "mean":
        parts.append(f"reduction={reduction!r}")
    text = f"{name}({', '.join(parts)})"
    if weighted:
        text += " with sample_weight"
    for key, value in options.items():
        text += f" [{key}={value}]"
    return text


def _cast(array, dtype):
    """Floats to ``dtype``; integer labels and None unchanged."""
    if array is None or array.dtype.kind != "f":
        return array
    return array.astype(dtype)


def _cases(ref):
    """(params, input options, reduction, weighted) of each checked case."""
    (first_params, first_options), *others = ref.variants
    yield first_params, first_options, "mean", False
    yield first_params, first_options, "sum", False
    yield first_params, first_options, "none", False
    weighable = [(params, options) for params, options in ref.variants
                 if ref.weighable(CHECK_SHAPE, params)]
    for params, options in weighable[:1]:
        yield params, options, "mean", True
    for params, options in others:
        yield params, options, "mean", False


def finite_differences(loss, pred, target, weight):
    """Central differences of sum(loss(pred, target)) in each element of pred."""
    grad = np.empty_like(pred)
    shifted = pred.copy()
    for index in np.ndindex(pred.shape):
        h = FD_STEP * max(1.0, abs(pred[index]))
        shifted[index] = pred[index] + h
        upper = np.sum(loss(shifted, target, weight))
        shifted[index] = pred[index] - h
        lower = np.sum(loss(shifted, target, weight))
        shifted[index] = pred[index]
        grad[index] = (upper - lower) / (2 * h)
    return grad


def _torch_value_and_grad(torch, name, params, reduction, pred, target, weight):
    x = torch.tensor(pred, requires_grad=True)
    value = reference.torch_loss(name, x, torch.from_numpy(target), params, reduction,
                                  None if weight is None else torch.from_numpy(weight))
    value.sum().backward()
    return value.detach().numpy(), x.grad.numpy()


def _check_case(report, ref, params, options, reduction, weighted, rng, torch):
    name = ref.name
    case = _describe(name, params, reduction, weighted, options)
    pred64, target64 = ref.inputs(rng, CHECK_SHAPE, params, **options)
    weight64 = rng.uniform(0.5, 2.0, CHECK_SHAPE[0]) if weighted else None
    loss = fl.get(name, reduction=reduction, **params)
    numpy_reference = reference.numpy_value_and_grad(name, params, reduction)
    results = {}
    for dtype in DTYPES:
        pred, target, weight = (_cast(a, dtype) for a in (pred64, target64, weight64))
        value, grad = loss.value_and_grad(pred, target, weight)
        results[dtype] = value, grad
        report.add(case, "__call__ vs value_and_grad", dtype, loss(pred, target, weight),
                   value, "same")
        report.add(case, "grad() vs value_and_grad", dtype, loss.grad(pred, target, weight),
                   grad, "same")
        out = np.empty_like(pred)
        value_out, grad_out = loss.value_and_grad(pred, target, weight, out=out)
        if grad_out is not out:
            report.fail(case, "value_and_grad(out=)", dtype, "did not return out itself")
        report.add(case, "value_and_grad(out=)", dtype, (value_out, out), (value, grad),
                   "same")
        report.add(case, "NumPy reference", dtype, (value, grad),
                   numpy_reference(pred, target, weight), "peer")
        if torch is not None:
            report.add(case, "PyTorch", dtype, (value, grad),
                       _torch_value_and_grad(torch, name, params, reduction, pred, target,
                                             weight), "peer")
    float64, float32 = DTYPES
    report.add(case, "finite differences", float64, results[float64][1],
               finite_differences(loss, pred64, target64, weight64), "finite differences")
    report.add(case, "float32 vs float64", float32, results[float32], results[float64],
               "float32 vs float64")
    if reduction == "mean" and not weighted:
        _check_threads(report, case, ref, loss, params, options, rng)


def _check_threads(report, case, ref, loss, params, options, rng):
    pred64, target64 = ref.inputs(rng, THREAD_SHAPE, params, **options)
    saved = fl.get_num_threads()
    try:
        for dtype in DTYPES:
            pred, target = _cast(pred64, dtype), _cast(target64, dtype)
            fl.set_num_threads(1)
            serial = loss.value_and_grad(pred, target)
            fl.set_num_threads(2)
            threaded = loss.value_and_grad(pred, target)
            report.add(case, "2 threads vs 1", dtype, threaded, serial, "threads")
    finally:
        fl.set_num_threads(saved)


def check_loss(name, torch=None, seed=0):
    """Run every comparison of loss ``name``; a :class:`LossReport`."""
    ref = REFERENCES.get(name)
    report = LossReport(name)
    if ref is None:
        # every loss must be checked: a loss without a reference fails
        report.fail("-", "reference", "-", "no reference implementation in "
                    "fastloss/_tools/reference.py: nothing to compare this loss with")
        return report
    rng = np.random.default_rng(seed)
    for params, options, reduction, weighted in _cases(ref):
        report.cases += 1
        try:
            _check_case(report, ref, params, options, reduction, weighted, rng, torch)
        except Exception as exc:   # a crash of one case is a failure, not the end
            report.fail(_describe(name, params, reduction, weighted, options), "run",
                        "float64", f"raised {type(exc).__name__}: {exc}")
    return report


def run(losses=None, file=None, verbose=False, use_torch=True):
    """Check ``losses`` (default: all of :func:`fastloss.available`); the exit status."""
    file = file or sys.stdout
    start = time.perf_counter()
    names = fl.available() if not losses else list(losses)
    unknown = sorted(set(names) - set(fl.available()))
    if unknown:
        print(f"check: unknown loss {unknown[0]!r}; available: {', '.join(fl.available())}",
              file=file)
        return 2
    torch = _import_torch() if use_torch else None
    peers = "NumPy reference" + (f", PyTorch {torch.__version__}" if torch else "")
    print(f"fastloss {fl.__version__} check ({fl.config()['kernel_module']}): "
          f"finite differences (float64), {peers}, float32 and float64, 1 and 2 threads",
          file=file)
    if torch is None and use_torch:
        print("PyTorch is not installed: no comparison with it", file=file)
    print(f"{'loss':<34} {'cases':>5} {'max rel err f64':>16} {'f32':>8}  result", file=file)
    reports = []
    for name in names:
        report = check_loss(name, torch)
        reports.append(report)
        print(f"{name:<34} {report.cases:>5} {report.max_error('float64'):>16.1e} "
              f"{report.max_error('float32'):>8.1e}  {'ok' if report.ok else 'FAIL'}",
              file=file)
        for comparison in (report.comparisons if verbose else report.failures):
            print(f"    {comparison}", file=file)
    failed = [r.name for r in reports if not r.ok]
    passed = len(reports) - len(failed)
    print(f"summary: {passed} ok, {len(failed)} failed of "
          f"{len(reports)} losses ({time.perf_counter() - start:.1f} s)"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=file)
    return 1 if failed else 0
