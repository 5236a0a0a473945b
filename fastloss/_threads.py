"""Thread count of the fastloss kernels.

The count is fastloss's own (passed to each parallel region as ``num_threads``), so
setting it never changes the OpenMP settings of NumPy, PyTorch or any other library
sharing the process.  It starts from ``OMP_NUM_THREADS`` when set, else the CPUs this
process may run on.
"""
import os

from ._dispatch import kernels

# Below this much work (elements x relative cost) a parallel region costs more than it
# saves: ~1.5 us to enter one with 2 threads here, against ~0.1-0.3 ns per element.
PARALLEL_MIN_WORK = 32768


def _default_num_threads():
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value:
        try:
            n = int(value)
            if n >= 1:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


_num_threads = _default_num_threads()
_forked_child = False


def set_num_threads(n):
    """Set how many threads the kernels use (an int >= 1)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads():
    """How many threads the kernels use for large inputs."""
    return 1 if _forked_child else _num_threads


def threads_for(work):
    """Threads for a call doing ``work`` units: 1 (a truly serial loop) when small."""
    if work < PARALLEL_MIN_WORK or _forked_child:
        return 1
    return _num_threads


def _after_fork_in_child():
    # libgomp hangs in a child forked after the parent ran a parallel region (GCC bug
    # 60035); PyTorch DataLoader workers fork.  Such a child stays serial.
    global _forked_child
    if kernels.parallel_used():
        _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
