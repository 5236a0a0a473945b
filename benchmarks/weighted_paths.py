"""The weighted pointwise paths against the unweighted loop, ``value_and_grad(out=)``.

Run from a checkout: ``python benchmarks/weighted_paths.py [--threads 2] [--rounds 9]
[--cpu]``.  Each line gives the best time of the unweighted call and of the same calls
with weights, their rounds interleaved so that a busy phase of a shared machine hits
them alike, and the ratios weighted / unweighted.  ``--cpu`` times the calling thread's
CPU time (``time.thread_time``) with 1 thread: time spent descheduled does not count,
so the ratios hold on a machine whose other processes take the cores.
"""
import argparse
import gc
import time

import numpy as np

import fastloss as fl


def batch_time(call, repeat, clock=time.perf_counter):
    start = clock()
    for _ in range(repeat):
        call()
    return (clock() - start) / repeat


def best_times(calls, rounds, round_time=0.03, clock=time.perf_counter):
    """The best per-call time of each call, over interleaved rounds."""
    repeats = []
    for call in calls:
        call()
        repeats.append(max(1, int(round_time / batch_time(call, 1))))
    best = [float("inf")] * len(calls)
    gc.disable()
    try:
        for _ in range(rounds):
            for k, call in enumerate(calls):
                best[k] = min(best[k], batch_time(call, repeats[k], clock))
    finally:
        gc.enable()
    return best


def fused_call(loss, pred, target, out, sample_weight=None):
    return lambda: loss.value_and_grad(pred, target, sample_weight, out=out)


def cases(dtype, rng):
    """(title, unweighted call, [(label, weighted call)]).

    The calls of a case share their arrays, ``out`` included: the time of a memory-bound
    call depends on where its arrays lie relative to each other (loads and stores whose
    addresses agree modulo 4 KiB stall; measured up to 3x), which a fresh buffer per
    call would change.
    """
    for shape in ((4096, 1000), (4200000,)):
        pred = rng.normal(size=shape).astype(dtype)
        target = (rng.random(shape) < 0.3).astype(dtype)
        out = np.empty_like(pred)
        plain = fl.BinaryCrossEntropy(from_logits=True)
        weighted = [("pos_weight single", fl.BinaryCrossEntropy(from_logits=True,
                                                                pos_weight=[2.0]))]
        if len(shape) > 1:
            weighted.insert(0, ("pos_weight per class", fl.BinaryCrossEntropy(
                from_logits=True, pos_weight=rng.random(shape[-1]) + 0.5)))
        yield ("bce-logits " + "x".join(map(str, shape)),
               fused_call(plain, pred, target, out),
               [(label, fused_call(loss, pred, target, out)) for label, loss in weighted])
    for name in ("mse", "huber"):
        for shape in ((1 << 20, 4), (1 << 20, 15)):
            pred = rng.normal(size=shape).astype(dtype)
            target = rng.normal(size=shape).astype(dtype)
            weight = (rng.random(shape[0]) + 0.5).astype(dtype)
            out = np.empty_like(pred)
            loss = fl.get(name)
            yield (f"{name} " + "x".join(map(str, shape)),
                   fused_call(loss, pred, target, out),
                   [("sample_weight (N,)", fused_call(loss, pred, target, out, weight))])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cpu", action="store_true",
                        help="the calling thread's CPU time, with 1 thread")
    args = parser.parse_args()
    threads = 1 if args.cpu else args.threads
    clock = time.thread_time if args.cpu else time.perf_counter
    fl.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"{fl.config()['kernel_module']}, {threads} thread(s), best of {args.rounds} "
          f"rounds, {'CPU' if args.cpu else 'wall'} time")
    for dtype in (np.float32, np.float64):
        for title, plain, weighted in cases(dtype, rng):
            times = best_times([plain] + [call for _, call in weighted], args.rounds,
                               clock=clock)
            line = (f"{title:22s} {np.dtype(dtype).name:8s} "
                    f"unweighted {times[0] * 1e3:7.3f} ms")
            for (label, _), t in zip(weighted, times[1:]):
                line += f" | {label} {t * 1e3:7.3f} ms ({t / times[0]:.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
