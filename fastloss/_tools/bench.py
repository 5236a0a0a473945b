"""``python -m fastloss bench``: fastloss against PyTorch, NumPy, JAX and torch.compile,
side by side.

Every timed call computes the loss value and its gradient with respect to the
predictions:

- fastloss: ``loss.value_and_grad(y_pred, y_true, out=grad)`` into a preallocated array;
- PyTorch: forward and ``loss.backward()`` through autograd, on a leaf tensor built once
  with ``requires_grad=True`` whose ``.grad`` is reset to None before each call (what
  ``optimizer.zero_grad()`` does);
- NumPy: the reference of :mod:`fastloss._tools.reference` (value and gradient);
- JAX (when importable): ``jax.jit(jax.value_and_grad(loss))``, waited for;
- torch.compile (with ``--compile``): ``torch.func.grad_and_value(loss)`` compiled by
  ``torch.compile`` (inductor, one graph for the value and the gradient, static shapes),
  compiled before the timing; its compile time is reported apart.

A time is the best (min) over several rounds of the mean of an adaptive number of
repeated calls (``time.perf_counter``, garbage collection off); the rounds of the
libraries are interleaved so that a slow phase of a shared machine hits them alike.
A STREAM-like "add" (c = a + b over the benchmark's threads, with NumPy and with
PyTorch when installed, the best of them, on arrays well beyond the last-level cache)
measured in the same run gives the memory bandwidth the large cases are compared with:
the fused kernel moves the same pattern, two arrays read and one written.
"""
import contextlib
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastloss as fl

from . import reference
from .reference import REFERENCES

DESCRIPTION = __doc__.split("\n\n", 1)[1].replace("``", "")

SIZE_CLASSES = ("small", "medium", "large")
#: shapes of each size class: small fits L1, medium the L2/L3 caches, large is beyond
SHAPES = {
    "pointwise": {"small": [(256,)], "medium": [(65536,)], "large": [(16777216,)]},
    "rows": {"small": [(64, 10)], "medium": [(4096, 10), (1024, 1000)],
             "large": [(8192, 1000), (512, 32000)]},
    # one ratio per row with the bench's axis=-1: long rows go through the two passes
    # of chunks, short ones through whole rows per block
    "ratio": {"small": [(4, 64)], "medium": [(16, 4096)],
              "large": [(16, 1048576), (4096, 4096)]},
}
PEERS = ("torch", "torch_compile", "numpy", "jax")
PEER_TITLES = {"torch": "PyTorch", "torch_compile": "torch.compile", "numpy": "NumPy",
               "jax": "JAX"}
#: the module a peer needs, where it is not the peer's name
PEER_MODULES = {"torch_compile": "torch"}
#: peers timed only when asked for (--compile): compiling one case takes 1-70 s
OPTIONAL_PEERS = ("torch_compile",)
#: the torch.compile backend of the torch_compile peer (the tests use "eager", which
#: compiles nothing)
TORCH_COMPILE_BACKEND = "inductor"
#: largest relative difference of a compiled peer's value or gradient from eager PyTorch
#: (float32 sums in another order), beyond which the compiled version is not timed
COMPILED_TOLERANCE = 1e-3
#: the shipped performance targets
TARGETS_PATH = Path(__file__).resolve().parent / "targets.json"


@dataclass(frozen=True)
class Timing:
    """How long to time.

    ``rounds`` rounds of about ``round_time`` seconds each per measurement, fewer (down
    to ``min_rounds``) when that would exceed ``max_seconds``; the thread warm-up lasts
    at most ``warm_up`` seconds; the bandwidth is the best of ``bandwidth_rounds`` over
    arrays of ``bandwidth_bytes`` (None: sized from the last-level cache).  With
    ``mean`` a measurement is the mean over every call rather than the best round.
    """

    rounds: int = 5
    round_time: float = 0.02
    max_seconds: float = 1.5
    min_rounds: int = 3
    warm_up: float = 1.0
    bandwidth_rounds: int = 5
    bandwidth_bytes: int = None
    mean: bool = False


DEFAULT_TIMING = Timing()
#: --quick: a rough run in seconds (the bandwidth arrays may then fit a large cache)
QUICK_TIMING = Timing(rounds=3, round_time=0.004, max_seconds=0.2, min_rounds=2,
                      warm_up=0.3, bandwidth_rounds=3, bandwidth_bytes=32 << 20)


# ----------------------------------------------------------------------------------
# cases


class Case:
    """One loss at one shape and dtype, with its inputs (made on demand)."""

    def __init__(self, loss, shape, size_class, dtype):
        self.loss = loss
        self.reference = REFERENCES[loss]
        self.params = self.reference.bench_params
        self.shape = tuple(shape)
        self.size_class = size_class
        self.dtype = np.dtype(dtype)

    @property
    def elements(self):
        return math.prod(self.shape)

    @property
    def size(self):
        """The size as a key: "65536" or "1024x1000"."""
        return "x".join(str(n) for n in self.shape)

    @property
    def size_label(self):
        return "×".join(f"{n:,}" for n in self.shape)

    @property
    def title(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.loss}({params})" if params else self.loss

    def inputs(self, seed=0):
        """(y_pred, y_true) in the case's dtype (labels stay integers)."""
        pred, target = self.reference.inputs(np.random.default_rng(seed), self.shape,
                                             self.params)
        pred = pred.astype(self.dtype)
        if target.dtype.kind == "f":
            target = target.astype(self.dtype)
        return pred, target

    def __repr__(self):
        return f"{self.title} {self.size_label} {self.dtype}"


def shape_kind(ref):
    """The key of SHAPES (and of the targets' loss groups) for a loss's reference."""
    return "rows" if ref.rows else ref.kind


def _scaled(shape, scale):
    """``shape`` with its first axis (elements or rows) multiplied by ``scale``."""
    return (max(1, round(shape[0] * scale)),) + tuple(shape[1:])


def make_cases(losses=None, size_classes=SIZE_CLASSES, dtypes=("float32",), scale=1.0):
    """The cases of ``losses`` (default every registered loss with a reference).

    Losses of the registry without a reference (no known inputs) are left out.
    """
    names = fl.available() if losses is None else losses
    cases = []
    for dtype in dtypes:
        for name in names:
            if name not in REFERENCES:
                continue
            kind = shape_kind(REFERENCES[name])
            for size_class in size_classes:
                for shape in SHAPES[kind][size_class]:
                    cases.append(Case(name, _scaled(shape, scale), size_class, dtype))
    return cases


# ----------------------------------------------------------------------------------
# the timed calls


def _no_setup():
    pass


def fastloss_call(case, pred, target):
    """value_and_grad into a preallocated gradient."""
    loss = fl.get(case.loss, **case.params)
    out = np.empty_like(pred)
    return lambda: loss.value_and_grad(pred, target, out=out)


def torch_call(case, pred, target):
    """Forward and backward through autograd."""
    import torch
    x = torch.from_numpy(pred.copy()).requires_grad_(True)
    t = torch.from_numpy(target)
    loss, params = case.reference.torch, case.params

    def call():
        x.grad = None
        loss(x, t, "mean", **params).backward()
    return call


def numpy_call(case, pred, target):
    """The NumPy reference's value and gradient."""
    value_and_grad = reference.numpy_value_and_grad(case.loss, case.params)
    return lambda: value_and_grad(pred, target)


class PeerSkipped(Exception):
    """A peer that cannot time a case, with the reason (reported, the cell left empty)."""


def torch_compile_call(case, pred, target):
    """``torch.compile(torch.func.grad_and_value(loss))``: the value and the gradient
    from one compiled graph, like ``value_and_grad`` and JAX's ``jit(value_and_grad)``.

    Compiled here by its first call, whose duration the returned call carries as
    ``compile_seconds``.  PeerSkipped when the loss does not compile into one graph or
    the compiled version's value or gradient differs from eager PyTorch's.
    """
    import torch
    loss, params = case.reference.torch, case.params

    def value(x, t):
        return loss(x, t, "mean", **params)
    # a fresh cache per case: the wrapper's code is shared by every case, and a cache
    # past its recompile limit would run the loss eagerly without a word
    torch._dynamo.reset()
    step = torch.compile(torch.func.grad_and_value(value), backend=TORCH_COMPILE_BACKEND,
                         dynamic=False, fullgraph=True)
    x, t = torch.from_numpy(pred.copy()), torch.from_numpy(target)
    start = time.perf_counter()
    try:
        grad, result = step(x, t)
    except Exception as error:          # inductor's errors have no common base
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PeerSkipped(f"does not compile ({type(error).__name__}: {reason[:120]})")
    compile_seconds = time.perf_counter() - start
    leaf = x.clone().requires_grad_(True)
    expected = value(leaf, t)
    expected.backward()
    for what, got, want in [("value", result, expected.detach()),
                            ("gradient", grad, leaf.grad)]:
        error = _relative_difference(got.numpy(), want.numpy())
        if not error <= COMPILED_TOLERANCE:
            raise PeerSkipped(f"compiled {what} differs from eager PyTorch's (relative "
                              f"difference {error:.2g})")

    def call():
        return step(x, t)
    call.compile_seconds = compile_seconds
    return call


def _relative_difference(got, want):
    """Largest absolute difference over the largest magnitude of ``want``."""
    scale = np.max(np.abs(want), initial=0.0)
    difference = np.max(np.abs(got.astype(np.float64) - want), initial=0.0)
    return difference / scale if scale else difference


def jax_call(case, pred, target):
    """jax.jit(jax.value_and_grad(mean of the terms)); None where JAX cannot run it."""
    terms = case.reference.jax
    if terms is None:
        return None
    import jax
    import jax.numpy as jnp
    if case.dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        return None
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, t: jnp.mean(terms(jnp, p, t))))
    p, t = jnp.asarray(pred), jnp.asarray(target)
    return lambda: jax.block_until_ready(value_and_grad(p, t))


PEER_CALLS = {"torch": torch_call, "torch_compile": torch_compile_call,
              "numpy": numpy_call, "jax": jax_call}


def importable(module):
    return importlib.util.find_spec(module) is not None


def available_peers(optional=()):
    """The peers importable here, in PEERS order; of OPTIONAL_PEERS only those named in
    ``optional``."""
    return [peer for peer in PEERS
            if (peer not in OPTIONAL_PEERS or peer in optional)
            and importable(PEER_MODULES.get(peer, peer))]


def make_calls(case, pred, target, peers, threads=None, skipped=None):
    """{column: (setup, call)}: fastloss at each thread count (or as configured) and peers.

    A peer without a version of the case has no column; the reason it was skipped,
    when it gave one, goes to the dict ``skipped`` ({peer: reason}) if given.
    """
    calls = {}
    call = fastloss_call(case, pred, target)
    if threads is None:
        calls["fastloss"] = _no_setup, call
    for n in threads or ():
        calls[_fastloss_column(n)] = (lambda n=n: fl.set_num_threads(n)), call
    for peer in peers:
        try:
            call = PEER_CALLS[peer](case, pred, target)
        except PeerSkipped as reason:
            if skipped is not None:
                skipped[peer] = str(reason)
            continue
        if call is not None:
            calls[peer] = _no_setup, call
    return calls


def compile_times(calls):
    """{column: seconds} of the calls that were compiled before timing."""
    return {column: call.compile_seconds for column, (_, call) in calls.items()
            if hasattr(call, "compile_seconds")}


def _fastloss_column(threads):
    return f"fastloss[{threads}t]"


def _elapsed(call, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return time.perf_counter() - start


def _calibrate(call, round_time):
    """(calls per round, estimated seconds per call) after one warm-up call.

    The estimate is the best of a few batches, so that one stalled call (a thread
    woken late on a busy machine) does not shrink the rounds to a single call.
    """
    call()
    first = _elapsed(call, 1)
    if first > round_time:
        return 1, first   # a slow peer (seconds a call): no more calls to estimate it
    per_call = min(first, *(_elapsed(call, 1) for _ in range(2)))
    n = max(1, int(round_time / 8 / per_call))
    per_call = min(per_call, _elapsed(call, n) / n)
    return max(1, int(round_time / per_call)), per_call


def warm_up_threads(threads, max_seconds=1.0):
    """Run a threaded fastloss call until its time settles (at most ``max_seconds``).

    A fresh OpenMP worker can share a CPU with the main thread until the scheduler
    moves it: on a busy machine every parallel region of the first few hundred
    milliseconds then waits a scheduler tick.  Timing starts after that.
    """
    if threads < 2:
        return
    pred = np.ones(1 << 17, dtype=np.float32)
    out = np.empty_like(pred)
    loss = fl.get("mse")
    saved = fl.get_num_threads()
    fl.set_num_threads(threads)
    try:
        deadline = time.perf_counter() + max_seconds
        best, settled = math.inf, 0
        while settled < 100 and time.perf_counter() < deadline:
            elapsed = _elapsed(lambda: loss.value_and_grad(pred, pred, out=out), 1)
            best = min(best, elapsed)
            settled = settled + 1 if elapsed < 2 * best else 0
    finally:
        fl.set_num_threads(saved)


def measure(calls, timing=DEFAULT_TIMING, progress=None):
    """Seconds per call of each of ``calls`` ({column: (setup, call)}): the best round,
    or the mean over all rounds with ``timing.mean`` (a busy machine, where the stalls
    are what is measured)."""
    plan = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for column, (setup, call) in calls.items():
            if progress:
                progress(column)
            setup()
            repeat, per_call = _calibrate(call, timing.round_time)
            affordable = int(timing.max_seconds / (repeat * per_call))
            plan[column] = repeat, max(timing.min_rounds, min(timing.rounds, affordable))
        best = dict.fromkeys(calls, math.inf)
        total = dict.fromkeys(calls, 0.0)
        count = dict.fromkeys(calls, 0)
        for round_index in range(max(rounds for _, rounds in plan.values())):
            for column, (setup, call) in calls.items():
                repeat, rounds = plan[column]
                if round_index < rounds:
                    setup()
                    elapsed = _elapsed(call, repeat)
                    best[column] = min(best[column], elapsed / repeat)
                    total[column] += elapsed
                    count[column] += repeat
    finally:
        if gc_was_enabled:
            gc.enable()
    if timing.mean:
        return {column: total[column] / count[column] for column in calls}
    return best


@contextlib.contextmanager
def busy_neighbours(count):
    """``count`` processes spinning on the CPUs while the block runs: a machine shared
    with data-loader workers or other jobs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


# ----------------------------------------------------------------------------------
# memory bandwidth


def last_level_cache_bytes():
    """Size of the largest CPU cache (sysfs), or None when unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            sizes.append(int(text.rstrip("KMG")) * units.get(text[-1], 1))
        except ValueError:
            continue
    return max(sizes, default=None)


def memory_bandwidth(threads, array_bytes, rounds=5, use_torch=False):
    """STREAM "add" (c = a + b) over ``threads`` threads in bytes/s, by implementation.

    "add" reads two arrays and writes one, the access pattern of a fused pointwise loss
    (read y_pred and y_true, write the gradient), and is counted the same way.  NumPy's
    add runs on a pool of threads, each on a slice; with ``use_torch`` PyTorch's
    OpenMP add runs too, since NumPy's loop alone falls short of what a compiled loop
    reaches (the best of them is the figure kernels are compared with).
    """
    n = array_bytes // 8
    a, b, c = (np.full(n, value) for value in (1.0, 2.0, 0.0))   # written: no page faults

    def bytes_per_second(run):
        run()
        return 3 * 8 * n / min(_elapsed(run, 1) for _ in range(rounds))

    bounds = np.linspace(0, n, threads + 1).astype(int)
    chunks = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        result = {"NumPy": bytes_per_second(
            lambda: list(pool.map(lambda s: np.add(a[s], b[s], out=c[s]), chunks)))}
    if use_torch:
        import torch
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
            result["PyTorch"] = bytes_per_second(lambda: torch.add(ta, tb, out=tc))
        finally:
            torch.set_num_threads(saved)
    return result


def bandwidth_array_bytes():
    """Array size of the STREAM measurement: twice the last-level cache (bounded)."""
    cache = last_level_cache_bytes() or (32 << 20)
    return int(min(max(2 * cache, 256 << 20), 1 << 30))


# ----------------------------------------------------------------------------------
# results


def bytes_moved(pred, target):
    """Bytes the fused kernel must move: read y_pred and y_true, write the gradient."""
    return 2 * pred.nbytes + target.nbytes


class Result:
    """The times of one case, and the figures derived from them."""

    def __init__(self, case, seconds, threads, nbytes, bandwidth, compiled=None,
                 skipped=None):
        self.case = case
        self.seconds = seconds          # column -> seconds per call
        self.threads = threads          # fastloss thread counts timed, ascending
        self.bytes = nbytes
        self.bandwidth = bandwidth      # STREAM add, bytes/s
        self.compile_seconds = dict(compiled or {})   # peer -> seconds, not in `seconds`
        self.skipped = dict(skipped or {})            # peer -> why it has no time

    @property
    def fastloss(self):
        """fastloss at the highest thread count: the figure compared with the peers."""
        return self.seconds[_fastloss_column(self.threads[-1])]

    @property
    def best_peer(self):
        """The fastest peer timed (None when none was)."""
        return min((p for p in PEERS if p in self.seconds), key=self.seconds.get,
                   default=None)

    def speedup(self, peer):
        """How many times faster fastloss is than ``peer`` ("best": the fastest peer)."""
        if peer == "best":
            peer = self.best_peer
        return self.seconds[peer] / self.fastloss if peer in self.seconds else None

    @property
    def thread_speedup(self):
        """Time with 1 thread over time with the most threads (None unless both timed)."""
        if len(self.threads) < 2 or self.threads[0] != 1:
            return None
        return self.seconds[_fastloss_column(1)] / self.fastloss

    @property
    def gbps(self):
        return self.bytes / self.fastloss / 1e9

    @property
    def bandwidth_fraction(self):
        """Achieved bytes/s over the measured memory bandwidth (large cases only)."""
        if self.case.size_class != "large" or not self.bandwidth:
            return None
        return self.bytes / self.fastloss / self.bandwidth

    def to_json(self):
        case = self.case
        return {
            "loss": case.loss, "params": case.params, "shape": list(case.shape),
            "size": case.size, "size_class": case.size_class, "dtype": str(case.dtype),
            "elements": case.elements, "bytes_moved": self.bytes,
            "seconds": {"fastloss": self.fastloss,
                        **{p: self.seconds[p] for p in PEERS if p in self.seconds}},
            "fastloss_seconds_by_threads": {
                str(n): self.seconds[_fastloss_column(n)] for n in self.threads},
            "speedup": {p: self.speedup(p) for p in PEERS + ("best",)
                        if self.speedup(p) is not None},
            "thread_speedup": self.thread_speedup,
            "gbps": self.gbps,
            "bandwidth_fraction": self.bandwidth_fraction,
            "compile_seconds": self.compile_seconds,
            "skipped": self.skipped,
        }


# ----------------------------------------------------------------------------------
# targets (fastloss/_tools/targets.json)


def load_targets(path=None):
    """The targets of the JSON file ``path`` (default: the shipped
    fastloss/_tools/targets.json) as ``{(loss, size): {metric: bound}}``; None when
    ``path`` is not a file.  The file's "about" explains the keys and metrics."""
    path = Path(path) if path else TARGETS_PATH
    if not path.is_file():
        return None
    with open(path) as fh:
        rows = json.load(fh)["targets"]
    targets = {}
    for row in rows:
        bounds = {key: value for key, value in row.items()
                  if key not in ("loss", "size", "why")}
        unknown = sorted(set(bounds) - set(METRIC_TEXT))
        if unknown:
            raise ValueError(f"{path}: unknown metric {unknown[0]!r} for "
                             f"{row['loss']} {row['size']}; known: {', '.join(METRIC_TEXT)}")
        key = row["loss"], row["size"]
        if key in targets:      # a later row would silently replace the earlier bounds
            raise ValueError(f"{path}: two rows for {key[0]} {key[1]}; merge them")
        targets[key] = bounds
    return targets


def _matches(pattern, value, group):
    return pattern in ("*", value, group)


def evaluate_targets(results, targets):
    """One dict per (float32 case, target metric): target, measured value and verdict.

    A target key is ``(loss, size)``: loss a name, "pointwise", "rows", "ratio" or "*";
    size a size key ("65536", "1024x1000"), a size class or "*".
    """
    evaluations = []
    for result in results:
        case = result.case
        if case.dtype != np.float32:
            continue
        kind = shape_kind(case.reference)
        for (loss, size), metrics in targets.items():
            if not (_matches(loss, case.loss, kind) and _matches(size, case.size,
                                                                 case.size_class)):
                continue
            for metric, bound in metrics.items():
                measured = _measured(result, metric)
                met = None
                if measured is not None:
                    met = measured <= bound if metric == "max_us" else measured >= bound
                evaluation = {"loss": case.loss, "size": case.size, "metric": metric,
                              "target": bound, "measured": measured, "met": met}
                if metric == "vs_best" and measured is not None:
                    evaluation["peer"] = result.best_peer
                evaluations.append(evaluation)
    return evaluations


def _measured(result, metric):
    if metric == "max_us":
        return result.fastloss * 1e6
    if metric.startswith("vs_"):
        return result.speedup(metric[3:])
    if metric == "thread_speedup":
        return result.thread_speedup
    if metric == "bandwidth_fraction":
        return result.bandwidth_fraction
    raise ValueError(f"targets: unknown metric {metric!r}")


#: metric -> (what it is, unit, how the measurement must relate to the target)
METRIC_TEXT = {"max_us": ("time", " µs", "≤"), "vs_torch": ("× PyTorch", "", "≥"),
               "vs_numpy": ("× NumPy", "", "≥"), "vs_jax": ("× JAX", "", "≥"),
               "vs_torch_compile": ("× torch.compile", "", "≥"),
               "vs_best": ("× best peer", "", "≥"),
               "bandwidth_fraction": ("of memory bandwidth", "", "≥"),
               "thread_speedup": ("2 threads / 1", "", "≥")}
VERDICTS = {True: "met", False: "NOT MET", None: "n/a"}


def target_texts(evaluation):
    """(what, target, measured, verdict) of one evaluated target, as text."""
    name, unit, relation = METRIC_TEXT[evaluation["metric"]]

    def fmt(x):
        if evaluation["metric"] == "bandwidth_fraction":
            return f"{x:.0%}"
        return f"{x:.4g}{unit}"
    measured = evaluation["measured"]
    measured = "not measured" if measured is None else fmt(measured)
    if evaluation.get("peer"):          # vs_best: which peer was the fastest
        measured += f" ({PEER_TITLES[evaluation['peer']]})"
    return (name, f"{relation} {fmt(evaluation['target'])}", measured,
            VERDICTS[evaluation["met"]])


def describe_target(evaluation):
    name, target, measured, verdict = target_texts(evaluation)
    return (f"{verdict:7} {evaluation['loss']} {evaluation['size']}: {name} {measured} "
            f"(target {target})")


# ----------------------------------------------------------------------------------
# tables


def format_time(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_ratio(ratio):
    return "—" if ratio is None else f"{ratio:.1f}×"


class Table:
    """The columns of the results table, for a given set of timed libraries."""

    def __init__(self, threads, peers, cases=()):
        self.threads = threads
        self.peers = peers
        loss_width = max([len(case.title) for case in cases] + [20])
        columns = [("loss", loss_width, "<"), ("size", 12, ">")]
        columns += [(_fastloss_title(n, threads), 13, ">") for n in threads]
        columns += [(PEER_TITLES[p], max(10, len(PEER_TITLES[p])), ">") for p in peers]
        columns += [(f"×{PEER_TITLES[p]}", max(9, len(PEER_TITLES[p]) + 1), ">")
                    for p in peers]
        if len(threads) > 1 and threads[0] == 1:
            columns.append((f"{threads[-1]}t/1t", 6, ">"))
        columns += [("GB/s", 6, ">"), ("%bw", 5, ">")]
        #: peers compiled before timing, with a column of the compile time (one such peer)
        self.compiled = [p for p in peers if p in OPTIONAL_PEERS]
        columns += [("compile time", 12, ">") for p in self.compiled]
        self.columns = columns

    def cells(self, result):
        cells = [result.case.title, result.case.size_label]
        cells += [format_time(result.seconds.get(_fastloss_column(n))) for n in self.threads]
        cells += [format_time(result.seconds.get(p)) for p in self.peers]
        cells += [format_ratio(result.speedup(p)) for p in self.peers]
        if len(self.threads) > 1 and self.threads[0] == 1:
            cells.append(format_ratio(result.thread_speedup))
        fraction = result.bandwidth_fraction
        cells += [f"{result.gbps:.1f}", "" if fraction is None else f"{fraction:.0%}"]
        cells += [format_time(result.compile_seconds.get(p)) for p in self.compiled]
        return cells

    def text_row(self, cells):
        return "  ".join(f"{cell:{align}{width}}"
                         for cell, (_, width, align) in zip(cells, self.columns))

    def text_header(self):
        return self.text_row([title for title, _, _ in self.columns])

    def markdown(self, results):
        lines = ["| " + " | ".join(title for title, _, _ in self.columns) + " |",
                 "|" + "|".join("---" if align == "<" else "---:"
                                for _, _, align in self.columns) + "|"]
        lines += ["| " + " | ".join(self.cells(r)) + " |" for r in results]
        return "\n".join(lines)


def _fastloss_title(n, threads):
    return f"fastloss {n}t" if len(threads) > 1 else "fastloss"


class Progress:
    """A live status line on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 0

    def show(self, text):
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def clear(self):
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


# ----------------------------------------------------------------------------------
# the command


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="few sizes (small, medium) and short rounds: well under a "
                             "minute")
    parser.add_argument("--losses", type=comma_list, metavar="NAMES",
                        help="comma-separated loss names (default: all)")
    parser.add_argument("--sizes", type=comma_list, metavar="CLASSES",
                        help="comma-separated size classes among small, medium, large "
                             "(default: all; small,medium with --quick)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the elements (pointwise) or rows (rows, ratio) of "
                             "every size (default 1)")
    parser.add_argument("--threads", type=comma_list, metavar="COUNTS",
                        help="comma-separated fastloss thread counts (default: 1 and "
                             "fastloss.get_num_threads())")
    parser.add_argument("--dtype", default="float32",
                        help="float32, float64 or float32,float64 (default float32)")
    parser.add_argument("--no-peers", action="store_true",
                        help="time fastloss only")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="run N processes spinning on the CPUs during the run (a busy "
                             "machine); times are then means over every call, stalls "
                             "included, not the best round")
    parser.add_argument("--no-adapter", action="store_true",
                        help="skip the PyTorch adapter's section (fastloss.torch against "
                             "torch.nn.functional; timed when torch is installed)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="time only the PyTorch adapter's section")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile: a peer column (the loss's value "
                             "and gradient compiled by inductor, the compile time "
                             "excluded and shown apart; 1-70 s a case) and, except with "
                             "--quick, the adapter's compiled and bfloat16-autocast cases")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="plot time against size (log-log); needs matplotlib")
    parser.add_argument("--targets", metavar="FILE",
                        help="JSON file of performance targets (default: the targets "
                             "shipped in fastloss/_tools/targets.json)")


def comma_list(text):
    """"a, b,c" -> ["a", "b", "c"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _fail(message):
    print(f"bench: {message}", file=sys.stderr)
    return 2


def main(args, argv):
    """Run the benchmark for parsed ``args`` (the command line ``argv``); the exit status."""
    dtypes = comma_list(args.dtype)
    if not dtypes or any(d not in ("float32", "float64") for d in dtypes):
        return _fail(f"--dtype must be float32, float64 or both, got {args.dtype!r}")
    sizes = args.sizes or (["small", "medium"] if args.quick else list(SIZE_CLASSES))
    if any(s not in SIZE_CLASSES for s in sizes):
        return _fail(f"--sizes takes {', '.join(SIZE_CLASSES)}, got {','.join(sizes)}")
    if not args.scale > 0:
        return _fail(f"--scale must be > 0, got {args.scale}")
    try:
        threads = sorted({int(n) for n in args.threads} if args.threads
                         else {1, fl.get_num_threads()})
    except ValueError:
        return _fail(f"--threads takes integers, got {','.join(args.threads)}")
    if threads[0] < 1:
        return _fail("--threads must be >= 1")
    losses = args.losses or fl.available()
    unknown = [name for name in losses if name not in fl.available()]
    if unknown:
        return _fail(f"unknown loss {unknown[0]!r}; available: {', '.join(fl.available())}")
    plot = args.plot
    if plot and not importable("matplotlib"):
        print("bench: --plot needs matplotlib, which is not installed "
              "(pip install matplotlib); no plot will be written", file=sys.stderr)
        plot = None
    targets = load_targets(args.targets)
    if args.targets and targets is None:
        return _fail(f"--targets: no such file {args.targets!r}")

    if args.busy < 0:
        return _fail(f"--busy must be >= 0, got {args.busy}")
    optional = OPTIONAL_PEERS if args.compile else ()
    peers = [] if args.no_peers else available_peers(optional)
    timing = QUICK_TIMING if args.quick else DEFAULT_TIMING
    if args.busy:
        timing = dataclasses.replace(timing, mean=True)
    cases = [] if args.adapter_only else make_cases(losses, sizes, dtypes, args.scale)
    table = Table(threads, peers, cases)
    out = sys.stdout
    adapter = []
    with _peers_configured(peers, threads[-1], dtypes) as peer_info, \
            busy_neighbours(args.busy):
        _print_header(out, threads, dtypes, peer_info, timing,
                      [name for name in losses if name not in REFERENCES])
        bandwidth = ({"none": math.nan} if args.adapter_only else
                     _measure_bandwidth(out, threads[-1], timing, "torch" in peers))
        warm_up_threads(threads[-1], timing.warm_up)
        results = run_cases(cases, table, timing, max(bandwidth.values()), out)
        if args.adapter_only or not (args.no_adapter or args.no_peers):
            from . import bench_torch
            adapter = bench_torch.run(out, timing, threads[-1], args.compile, args.quick)
    evaluations = evaluate_targets(results, targets) if targets and results else None
    if results:
        _print_targets(out, evaluations, args.targets or TARGETS_PATH)
    if args.json:
        _write_json(args.json, results, evaluations, threads, dtypes, bandwidth, peer_info,
                    adapter)
    if args.markdown:
        _write_markdown(args.markdown, table, results, evaluations, bandwidth, peer_info,
                        argv)
    if plot:
        plot_results(results, plot)
        print(f"plot written to {plot}", file=out)
    return 0


@contextlib.contextmanager
def _peers_configured(peers, threads, dtypes):
    """Give PyTorch the benchmark's thread count (restored after) and JAX float64 when
    timed; yields the peers' versions."""
    info = {"numpy": np.__version__}
    saved = None
    if "torch" in peers:
        import torch
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        info["torch"] = torch.__version__
    if "jax" in peers:
        import jax
        if "float64" in dtypes:
            jax.config.update("jax_enable_x64", True)
        info["jax"] = jax.__version__
    if "torch_compile" in peers:
        info["torch_compile"] = TORCH_COMPILE_BACKEND
    try:
        yield info
    finally:
        if saved is not None:
            torch.set_num_threads(saved)


def _print_header(out, threads, dtypes, peer_info, timing, no_reference):
    config = fl.config()
    counts = " and ".join(map(str, threads))
    print(f"fastloss {fl.__version__} bench: {config['kernel_module']}, "
          f"OpenMP {'on' if config.get('openmp') else 'off'}, "
          f"{counts} thread{'s' if threads[-1] > 1 else ''}; {', '.join(dtypes)}", file=out)
    peers = [f"NumPy {peer_info['numpy']} (reference value+grad)"]
    if "torch" in peer_info:
        peers.insert(0, f"PyTorch {peer_info['torch']} (forward+backward via autograd, "
                        f"{threads[-1]} threads)")
    else:
        peers.append("PyTorch not installed")
    peers.append(f"JAX {peer_info['jax']} (jit(value_and_grad))" if "jax" in peer_info
                 else "JAX not installed")
    if "torch_compile" in peer_info:
        peers.insert(1, f"torch.compile ({peer_info['torch_compile']}, "
                        f"torch.func.grad_and_value of the PyTorch loss as one graph; "
                        f"compile time = its first call, excluded from the times, "
                        f"shorter when inductor's on-disk cache holds the graph)")
    elif "torch" in peer_info:
        peers.append("torch.compile not timed (--compile)")
    print("peers: " + "; ".join(peers), file=out)
    print(f"times: per value+grad call, best of {timing.rounds} rounds of adaptive repeats "
          f"(~{timing.round_time * 1e3:g} ms a round); ×PEER = how many times faster "
          f"fastloss ({threads[-1]} threads) is", file=out)
    if no_reference:
        print(f"not benchmarked (no reference inputs): {', '.join(no_reference)}", file=out)


def _measure_bandwidth(out, threads, timing, use_torch):
    """Measure and print the STREAM add bandwidth; its value by implementation."""
    array_bytes = timing.bandwidth_bytes or bandwidth_array_bytes()
    bandwidth = memory_bandwidth(threads, array_bytes, timing.bandwidth_rounds, use_torch)
    each = ", ".join(f"{name} {value / 1e9:.1f}" for name, value in bandwidth.items())
    print(f"memory bandwidth: {max(bandwidth.values()) / 1e9:.1f} GB/s (STREAM add c = a + b "
          f"on 3 arrays of {array_bytes >> 20} MiB, {threads} thread"
          f"{'s' if threads > 1 else ''}, the best of {each} GB/s); %bw = fastloss GB/s "
          f"(y_pred + y_true read, gradient written) over it", file=out)
    return bandwidth


def run_cases(cases, table, timing, bandwidth, out=None, progress=None):
    """Time every case for the libraries of ``table``, printing each row as it is done
    (to ``out``); the list of Results."""
    threads = table.threads
    progress = progress or Progress()
    results = []
    current_dtype = None
    for index, case in enumerate(cases, 1):
        if case.dtype != current_dtype and out:
            current_dtype = case.dtype
            print(f"\n{current_dtype}", file=out)
            print(table.text_header(), file=out)
        label = f"[{index}/{len(cases)}] {case.title} {case.size_label} {case.dtype}"
        progress.show(f"{label}: preparing inputs")
        pred, target = case.inputs()
        if any(peer in OPTIONAL_PEERS for peer in table.peers):
            progress.show(f"{label}: compiling")
        skipped = {}
        calls = make_calls(case, pred, target, table.peers, threads, skipped)
        saved = fl.get_num_threads()
        try:
            seconds = measure(calls, timing,
                              lambda column: progress.show(f"{label}: {column}"))
        finally:
            fl.set_num_threads(saved)
        result = Result(case, seconds, threads, bytes_moved(pred, target), bandwidth,
                        compile_times(calls), skipped)
        del calls, pred, target
        results.append(result)
        progress.clear()
        if out:
            print(table.text_row(table.cells(result)), file=out, flush=True)
            for peer, reason in skipped.items():
                print(f"  ({PEER_TITLES[peer]} not timed: {reason})", file=out, flush=True)
    return results


def _print_targets(out, evaluations, path):
    if evaluations is None:
        print(f"\ntargets: {path} not found; none checked", file=out)
        return
    if not evaluations:
        print("\ntargets: none applies to these cases (targets are float32)", file=out)
        return
    verdicts = [e["met"] for e in evaluations]
    print(f"\nperformance targets ({Path(path).name}, float32): {verdicts.count(True)} met, "
          f"{verdicts.count(False)} not met, {verdicts.count(None)} not measured", file=out)
    for evaluation in evaluations:
        if evaluation["met"] is not True:
            print("  " + describe_target(evaluation), file=out)


def _write_json(path, results, evaluations, threads, dtypes, bandwidth, peer_info,
                adapter=()):
    document = {
        "fastloss_version": fl.__version__,
        "config": {k: (v if isinstance(v, (bool, int, float)) else str(v))
                   for k, v in fl.config().items()},
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "processor": _cpu_name(), "cpus": os.cpu_count()},
        "peers": peer_info,
        "dtypes": dtypes,
        "threads": threads,
        "bandwidth": {"add_bytes_per_second": max(bandwidth.values()),
                      "add_bytes_per_second_by_implementation": bandwidth,
                      "threads": threads[-1]},
        "results": [r.to_json() for r in results],
        "targets": evaluations,
        "adapter": list(adapter),
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=1)


def _write_markdown(path, table, results, evaluations, bandwidth, peer_info, argv):
    lines = [f"Command: `python -m fastloss {' '.join(argv)}`", "",
             f"fastloss {fl.__version__} ({fl.config()['kernel_module']}); "
             + ", ".join(f"{PEER_TITLES.get(k, k)} {v}" for k, v in peer_info.items())
             + f"; {_cpu_name()}; memory bandwidth (STREAM add, best of "
               f"{', '.join(bandwidth)}) {max(bandwidth.values()) / 1e9:.1f} GB/s", ""]
    for dtype in sorted({str(r.case.dtype) for r in results}):
        lines += [f"### {dtype}", "",
                  table.markdown([r for r in results if str(r.case.dtype) == dtype]), ""]
    if evaluations:
        lines += ["### Targets (float32)", "", "| case | metric | target | measured | |",
                  "|---|---|---:|---:|---|"]
        for e in evaluations:
            name, target, measured, verdict = target_texts(e)
            if e["met"] is False:
                verdict = f"**{verdict}**"
            lines.append(f"| {e['loss']} {e['size']} | {name} | {target} | {measured} "
                         f"| {verdict} |")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot_results(results, path):
    """Time against elements, log-log: one panel per loss, one line per library."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(dict.fromkeys(r.case.loss for r in results))
    columns = min(3, len(losses))
    rows = math.ceil(len(losses) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows),
                             squeeze=False)
    styles = {"float32": "-", "float64": "--"}                      # line: dtype
    libraries = {"fastloss": ("C0", lambda r: r.fastloss)}           # colour: library
    libraries.update({PEER_TITLES[p]: (f"C{i}", lambda r, p=p: r.seconds.get(p))
                      for i, p in enumerate(PEERS, 1)})
    for ax, loss in zip(axes.flat, losses):
        mine = [r for r in results if r.case.loss == loss]
        for dtype in dict.fromkeys(str(r.case.dtype) for r in mine):
            series = sorted((r for r in mine if str(r.case.dtype) == dtype),
                            key=lambda r: r.case.elements)
            for label, (colour, seconds) in libraries.items():
                points = [(r.case.elements, seconds(r)) for r in series
                          if seconds(r) is not None]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, styles.get(dtype, "-"), color=colour, marker="o",
                            markersize=3, label=f"{label} {dtype}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(loss, fontsize=10)
        ax.set_xlabel("elements of y_pred")
        ax.set_ylabel("seconds per value+grad")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(losses):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
