"""Thread count of the fastloss kernels.

The count is fastloss's own (passed to each parallel region as ``num_threads``), so
setting it never changes the OpenMP settings of NumPy, PyTorch or any other library
sharing the process, and theirs (``torch.set_num_threads``, ``omp_set_num_threads``)
never change it.  It starts from ``OMP_NUM_THREADS`` when set, else the CPUs this
process may run on.  ``threadpoolctl`` controls it like any OpenMP pool: fastloss
registers itself there (user API ``"openmp"``, internal API ``"fastloss"``), so
``threadpool_limits(n)`` and ``threadpool_limits(n, "openmp")`` set it for their
duration.

Each call then runs with that many threads or fewer (the kernels decide, see
``_parallel.h``): serially below a work threshold, in a forked child, when threads
cannot be started, and for a while after a threaded region waited for a worker the OS
had not scheduled (a busy machine).  None of this changes a result's bits: the kernels
cut the work into blocks that depend only on the input, and add the blocks' sums in
order.
"""
import os

from ._dispatch import kernels, openmp_inherited_from_parent

# Below this much work (elements x relative cost) a parallel region costs more than it
# saves: ~1.5 us to enter one with 2 threads here, against ~0.1-0.3 ns per element.  A
# block of the kernels is half of it, so a threaded call has at least two blocks.
PARALLEL_MIN_WORK = 32768
kernels.set_min_block_work(PARALLEL_MIN_WORK // 2)

#: The largest thread count accepted: libgomp keeps every thread it started alive for
#: the life of the process, and beyond the machine's CPUs more threads only cost.
MAX_THREADS = 1024


def _default_num_threads():
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value:
        try:
            n = int(value)
            if n >= 1:
                return min(n, MAX_THREADS)
        except ValueError:
            pass
    try:
        return max(1, min(len(os.sched_getaffinity(0)), MAX_THREADS))
    except AttributeError:
        return max(1, min(os.cpu_count() or 1, MAX_THREADS))


_num_threads = _default_num_threads()


def set_num_threads(n):
    """Set how many threads the kernels use: an int from 1 to ``MAX_THREADS`` (1024).

    Every thread libgomp starts stays alive, idle, until the process ends; more threads
    than CPUs only add overhead.  The setting is fastloss's own: it changes no other
    library's threads, and theirs do not change it.  Small calls run serially whatever
    the setting.

    Parameters
    ----------
    n : int
        The thread count, 1 to 1024 (any integer type, not bool).

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n`` is below 1 or above 1024.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    n = int(n.__index__())
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be <= {MAX_THREADS}, got {n}")
    _num_threads = n


if openmp_inherited_from_parent:
    kernels.make_process_serial()


def get_num_threads():
    """How many threads the kernels use for large inputs (1 in a forked child).

    Returns
    -------
    int
        The count set by :func:`set_num_threads` (or ``threadpoolctl``), initially
        ``OMP_NUM_THREADS`` or the CPUs this process may run on; 1 in a process forked
        after OpenMP was used.  A build without OpenMP (``config()["openmp"]`` is
        False) keeps the setting, so code written for threaded builds runs unchanged,
        but runs every call on one thread.
    """
    return 1 if kernels.serial_process() else _num_threads


def threads_for(work):
    """Threads for a call doing ``work`` units: 1 (a truly serial loop) when small."""
    if work < PARALLEL_MIN_WORK:
        return 1
    return _num_threads


def _register_with_threadpoolctl():
    """Make threadpoolctl list and limit fastloss's threads (threadpoolctl >= 3.5)."""
    try:
        import threadpoolctl
    except ImportError:
        return
    if not hasattr(threadpoolctl, "register"):
        return

    class FastlossController(threadpoolctl.LibController):
        """fastloss's threads, seen by threadpoolctl as an OpenMP pool."""

        user_api = "openmp"
        internal_api = "fastloss"
        filename_prefixes = (os.path.basename(kernels.__file__),)

        def get_num_threads(self):
            return get_num_threads()

        def set_num_threads(self, num_threads):
            set_num_threads(max(1, min(int(num_threads), MAX_THREADS)))

        def get_version(self):
            from . import __version__
            return __version__

    threadpoolctl.register(FastlossController)


_register_with_threadpoolctl()
