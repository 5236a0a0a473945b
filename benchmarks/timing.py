"""Timing of the benchmark scripts: the best round of repeated calls."""
import time


def best_time(step, rounds, target_seconds=0.2):
    """Seconds per call of ``step()``: the best of ``rounds`` rounds of about
    ``target_seconds`` each (after one warm-up call, which also compiles)."""
    step()
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    repeats = max(1, int(target_seconds / max(once, 1e-6)))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best
