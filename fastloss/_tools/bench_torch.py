"""The PyTorch adapter in ``python -m fastloss bench``: ``fastloss.torch`` against
``torch.nn.functional`` as a training loop calls them.

Every timed call is a loss forward and ``backward()`` on a leaf tensor whose ``.grad``
is reset to None first (``optimizer.zero_grad()``), float32 unless said otherwise, with
fastloss and torch on the bench's thread count; the two columns of a case are timed in
interleaved rounds (best round).  The cases and their targets:

- small heads (CE 64x10, mse 2,048, BCE-logits 256x50) and large heads (CE 4096x1000,
  512x32000): fastloss.torch over F;
- the eager overhead: the adapter's call (through its C++ fast path, loaded, and built if
  needed, before the timings) minus the kernel's ``value_and_grad(out=)`` and
  minus what torch's autograd costs around any loss (``x.sum().backward()`` on the same
  input, the floor of every autograd loss);
- pos_weight (BCE-logits 4096x1000 with one weight per class) against the unweighted call;
- cross-entropy over (8, 21, 64, 64) in NCHW and channels-last layouts;
- with ``--compile``: the loss compiled by ``torch.compile`` (inductor), fastloss.torch
  against compiled F, compile time excluded; and a bfloat16-autocast LM-head training
  step (hidden 512x256 -> Linear -> cross-entropy with label smoothing).
"""
import contextlib
import time

from .bench import format_ratio, format_time, measure

#: (case, target ratio of the torch time over fastloss's, or None)
TARGETS = {
    "CE 64x10": 1.5, "mse 2048": 1.5, "BCE-logits 256x50": 1.5,
    "CE 4096x1000": 4.0, "CE 512x32000": 4.0,
    "CE (8,21,64,64) NCHW": 1.5, "CE (8,21,64,64) channels-last": 1.5,
    "compiled CE 4096x1000": 1.5, "compiled CE 512x32000": 1.5,
    "bf16 autocast LM head 512x32000 step": 1.3,
}
#: the eager adapter's overhead beyond the kernel and autograd's floor, at most (us)
MAX_OVERHEAD_US = 8.0
#: a weighted path's time over the unweighted one, at most
MAX_WEIGHTED_RATIO = 1.15


def _step(function, x, *args, **kwargs):
    def call():
        x.grad = None
        function(x, *args, **kwargs).backward()
    return call


def _no_setup():
    pass


def _cases(torch, F, FL, compile_cases, quick=False):
    """(name, {column: call}) of every case (``quick``: the small heads only); inputs
    made once per case."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    def labels(n, c, *rest):
        return torch.randint(0, c, (n, *rest), generator=gen)

    cases = []
    for n, c in [(64, 10)] if quick else [(64, 10), (4096, 1000), (512, 32000)]:
        x, y = randn(n, c).requires_grad_(), labels(n, c)
        cases.append((f"CE {n}x{c}", {"fastloss": _step(FL.cross_entropy, x, y),
                                      "torch": _step(F.cross_entropy, x, y)}))
    x, t = randn(2048).requires_grad_(), randn(2048)
    cases.append(("mse 2048", {"fastloss": _step(FL.mse_loss, x, t),
                               "torch": _step(F.mse_loss, x, t)}))
    x, t = randn(256, 50).requires_grad_(), torch.rand(256, 50, generator=gen)
    cases.append(("BCE-logits 256x50",
                  {"fastloss": _step(FL.binary_cross_entropy_with_logits, x, t),
                   "torch": _step(F.binary_cross_entropy_with_logits, x, t)}))
    if quick:
        return cases
    x, t = randn(4096, 1000).requires_grad_(), torch.rand(4096, 1000, generator=gen)
    pos_weight = 0.5 + torch.rand(1000, generator=gen)
    cases.append(("BCE-logits 4096x1000 pos_weight",
                  {"fastloss": _step(FL.binary_cross_entropy_with_logits, x, t,
                                     pos_weight=pos_weight),
                   "fastloss unweighted": _step(FL.binary_cross_entropy_with_logits, x, t),
                   "torch": _step(F.binary_cross_entropy_with_logits, x, t,
                                  pos_weight=pos_weight)}))
    y = labels(8, 21, 64, 64)
    for layout, memory_format in [("NCHW", torch.contiguous_format),
                                  ("channels-last", torch.channels_last)]:
        x = randn(8, 21, 64, 64).contiguous(memory_format=memory_format).requires_grad_()
        cases.append((f"CE (8,21,64,64) {layout}",
                      {"fastloss": _step(FL.cross_entropy, x, y),
                       "torch": _step(F.cross_entropy, x, y)}))
    if compile_cases:
        for n, c in [(4096, 1000), (512, 32000)]:
            x, y = randn(n, c).requires_grad_(), labels(n, c)
            ours = torch.compile(lambda a, b: FL.cross_entropy(a, b))
            theirs = torch.compile(lambda a, b: F.cross_entropy(a, b))
            cases.append((f"compiled CE {n}x{c}", {"fastloss": _step(ours, x, y),
                                                   "torch": _step(theirs, x, y)}))
        cases.append(("bf16 autocast LM head 512x32000 step", _lm_head_steps(torch, F, FL,
                                                                              gen)))
    return cases


def _lm_head_steps(torch, F, FL, gen):
    hidden = torch.randn(512, 256, generator=gen)
    targets = torch.randint(0, 32000, (512,), generator=gen)
    targets[::16] = -100
    head = torch.nn.Linear(256, 32000)

    def step(loss):
        def call():
            head.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = head(hidden)
                value = loss(logits, targets, label_smoothing=0.1, ignore_index=-100)
            value.backward()
        return call
    return {"fastloss": step(FL.cross_entropy), "torch": step(F.cross_entropy)}


def _floor_and_kernel(torch, fl, timing):
    """(autograd floor, adapter, kernel) seconds for CE 64x10 and mse 2048."""
    import numpy as np
    import torch.nn.functional as F  # noqa: F401 (torch imported by the caller)

    import fastloss.torch as FL
    rows = []
    gen = torch.Generator().manual_seed(1)
    for name, x, target, function, loss in [
            ("CE 64x10", torch.randn(64, 10, generator=gen),
             torch.randint(0, 10, (64,), generator=gen), FL.cross_entropy,
             fl.SparseCategoricalCrossEntropy(from_logits=True)),
            ("mse 2048", torch.randn(2048, generator=gen), torch.randn(2048, generator=gen),
             FL.mse_loss, fl.MeanSquaredError())]:
        x.requires_grad_()
        pred, true = x.detach().numpy(), target.numpy()
        out = np.empty_like(pred)
        seconds = measure({
            "floor": (_no_setup, _step(lambda a: a.sum(), x)),
            "adapter": (_no_setup, _step(function, x, target)),
            "kernel": (_no_setup, lambda: loss.value_and_grad(pred, true, out=out))},
            timing)
        rows.append((name, seconds))
    return rows


def run(out, timing, threads, compile_cases=False, quick=False):
    """Time the adapter's cases and print them with their targets; a list of
    {case, seconds, ratio, target, met} for the JSON report."""
    try:
        import torch
        import torch.nn.functional as F

        import fastloss as fl
        import fastloss.torch as FL
    except ImportError:
        print("\nPyTorch adapter: torch is not installed; not measured", file=out)
        return []
    saved = torch.get_num_threads(), fl.get_num_threads()
    torch.set_num_threads(threads)
    fl.set_num_threads(threads)
    print(f"\nPyTorch adapter: fastloss.torch vs torch.nn.functional, loss forward + "
          f"backward, float32, {threads} thread{'s' if threads > 1 else ''}"
          f"{', small heads only (--quick)' if quick else ''}"
          f"{', with torch.compile (inductor)' if compile_cases else ''}", file=out)
    report = []
    started = time.perf_counter()
    loaded = FL.build_extension(wait=True)   # built once, cached; timed calls use it
    print(f"  eager calls through the C++ fast path: "
          f"{'yes' if loaded else 'NO (' + FL.extension_status()[1] + ')'} "
          f"({time.perf_counter() - started:.0f} s to load)", file=out)
    try:
        with _quiet(torch):
            started = time.perf_counter()
            cases = _cases(torch, F, FL, compile_cases and not quick, quick)
            for name, calls in cases:
                for call in calls.values():   # compiles here, untimed
                    call()
                seconds = measure({column: (_no_setup, call)
                                   for column, call in calls.items()}, timing)
                report.append(_report_case(out, name, seconds))
            for name, seconds in _floor_and_kernel(torch, fl, timing):
                overhead = seconds["adapter"] - seconds["kernel"] - seconds["floor"]
                met = overhead * 1e6 <= MAX_OVERHEAD_US
                print(f"  eager overhead {name}: {overhead * 1e6:6.1f} us beyond the kernel "
                      f"({format_time(seconds['kernel'])}) and autograd's floor "
                      f"(x.sum().backward() {format_time(seconds['floor'])}); target <= "
                      f"{MAX_OVERHEAD_US:g} us: {'met' if met else 'NOT MET'}", file=out)
                report.append({"case": f"eager overhead {name}", "seconds": seconds,
                               "overhead_us": overhead * 1e6, "target_us": MAX_OVERHEAD_US,
                               "met": met})
            print(f"  ({time.perf_counter() - started:.0f} s, compilation included)",
                  file=out)
    finally:
        torch.set_num_threads(saved[0])
        fl.set_num_threads(saved[1])
    return report


def _report_case(out, name, seconds):
    ours, theirs = seconds["fastloss"], seconds["torch"]
    ratio = theirs / ours
    target = TARGETS.get(name)
    line = (f"  {name:<38} fastloss {format_time(ours):>9}  torch {format_time(theirs):>9}"
            f"  {format_ratio(ratio):>6}")
    entry = {"case": name, "seconds": seconds, "ratio": ratio, "target": target}
    if "fastloss unweighted" in seconds:
        weighted = ours / seconds["fastloss unweighted"]
        met = weighted <= MAX_WEIGHTED_RATIO
        line += (f"  weighted/unweighted {weighted:.2f} (target <= {MAX_WEIGHTED_RATIO:g}: "
                 f"{'met' if met else 'NOT MET'})")
        entry.update(weighted_ratio=weighted, met=met)
    elif target is not None:
        entry["met"] = ratio >= target
        line += f"  target >= {target:g}x: {'met' if entry['met'] else 'NOT MET'}"
    print(line, file=out, flush=True)
    return entry


@contextlib.contextmanager
def _quiet(torch):
    """No warnings from torch.compile's first runs in the table."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
