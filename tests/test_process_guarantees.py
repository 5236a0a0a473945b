"""Guarantees about the process fastloss runs in: fork, thread start failure, thread
limits from outside, and a busy machine.

Each scenario that could hang or end a process runs in a fresh interpreter with a
timeout, so a failure fails the test instead of the suite.
"""
import os
import shutil
import subprocess
import textwrap
import time

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch, _threads
from helpers import needs_threads, run_python

# -- fork -----------------------------------------------------------------------------

DATALOADER_SCRIPT = """
    import numpy as np
    {imports}
    x = np.random.default_rng(0).normal(size=1 << 20)
    t = np.zeros_like(x)
    fl.set_num_threads(2)
    torch.set_num_threads(2)
    a = torch.randn(1000, 1000)
    (a @ a).exp_().sum()               # torch runs an OpenMP region in the parent
    parent = fl.get("log_cosh")(x, t)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, i):
            return fl.get("log_cosh")(x, t), fl.get_num_threads()

    batches = list(torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2,
                                               timeout=60))
    values = [float(v) for batch in batches for v in batch[0]]
    threads = [int(n) for batch in batches for n in batch[1]]
    assert values == [parent] * 4, (values, parent)   # the same bits, serially
    assert threads == [1] * 4, threads
    print("ok")
"""


@pytest.mark.parametrize("imports", ["import torch\nimport fastloss as fl",
                                     "import fastloss as fl\nimport torch"],
                         ids=["torch-first", "fastloss-first"])
def test_dataloader_workers_forked_after_torch_ran_threads_can_call_fastloss(imports):
    pytest.importorskip("torch")
    code = textwrap.dedent(DATALOADER_SCRIPT).format(imports=imports)
    assert run_python(code, timeout=150).strip() == "ok"


def test_a_worker_importing_fastloss_after_the_fork_runs_serially():
    """The parent ran torch's OpenMP threads but never imported fastloss; its forked
    worker imports fastloss and must not start OpenMP threads."""
    pytest.importorskip("torch")
    out = run_python("""
        import multiprocessing as mp
        import torch
        torch.set_num_threads(2)
        a = torch.randn(1000, 1000)
        (a @ a).exp_().sum()

        def work(queue):
            import numpy as np
            import fastloss as fl
            x = np.random.default_rng(0).normal(size=1 << 20)
            queue.put((fl.get("log_cosh")(x, np.zeros_like(x)), fl.get_num_threads()))

        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=work, args=(queue,), daemon=True)
        child.start()
        value, threads = queue.get(timeout=60)
        child.join(timeout=60)
        print(threads, value > 0)
    """, timeout=150)
    assert out.split() == ["1", "True"]


OPENMP_LIBRARY = r"""
#include <omp.h>
double spin(int n) {
    double total = 0;
    #pragma omp parallel for reduction(+:total) num_threads(2)
    for (int i = 0; i < n; i++) total += i * 0.5;
    return total;
}
"""


def test_a_child_forked_after_another_openmp_library_ran_threads_can_call_fastloss(
        tmp_path):
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build the other OpenMP library")
    source = tmp_path / "other.c"
    source.write_text(OPENMP_LIBRARY)
    library = tmp_path / "libother.so"
    build = subprocess.run([compiler, "-shared", "-fPIC", "-fopenmp", "-O1", str(source),
                            "-o", str(library)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build an OpenMP library here: {build.stderr[:200]}")
    out = run_python(f"""
        import ctypes, os
        import numpy as np
        other = ctypes.CDLL({str(library)!r})
        other.spin.restype = ctypes.c_double
        assert other.spin(100000) > 0      # the other library's parallel region
        import fastloss as fl
        fl.set_num_threads(2)
        x = np.random.default_rng(0).normal(size=1 << 20)
        parent = fl.get("log_cosh")(x, np.zeros_like(x))
        pid = os.fork()
        if pid == 0:
            ok = fl.get("log_cosh")(x, np.zeros_like(x)) == parent
            os._exit(0 if ok and fl.get_num_threads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert out.strip() == "0"


# -- thread start failure ---------------------------------------------------------------

THREAD_START_SCRIPT = """
    import resource
    import numpy as np
    import fastloss as fl
    x = np.random.default_rng(0).normal(size=1 << 20)
    t = np.zeros_like(x)
    out = np.empty_like(x)
    loss = fl.get("log_cosh")
    fl.set_num_threads(1)
    expected = loss.value_and_grad(x, t, out=out)[0]
    expected_grad = out.copy()
    with open("/proc/self/status") as fh:
        vm = [int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + ({headroom_mb} << 20),) * 2)
    fl.set_num_threads({threads})
    assert loss.value_and_grad(x, t, out=out)[0] == expected
    assert np.array_equal(out, expected_grad)
    print("alive")
"""


@pytest.mark.parametrize("threads, headroom_mb", [(1000, 64), (2, 2)],
                         ids=["1000-threads", "2-threads-no-room"])
def test_failing_to_start_threads_never_ends_the_process(threads, headroom_mb):
    """Under an address-space limit that leaves room for few thread stacks (or none), a
    call asking for more threads than fit computes the right value, and the process
    lives on."""
    code = textwrap.dedent(THREAD_START_SCRIPT).format(threads=threads,
                                                      headroom_mb=headroom_mb)
    assert run_python(code, timeout=120).split() == ["alive"]


# -- the thread count -------------------------------------------------------------------

@pytest.mark.parametrize("n", [_threads.MAX_THREADS + 1, 2 ** 31, 10 ** 20])
def test_thread_counts_beyond_the_limit_are_refused(n, set_threads):
    before = fl.get_num_threads()
    with pytest.raises(ValueError, match=f"<= {_threads.MAX_THREADS}, got {n}"):
        fl.set_num_threads(n)
    assert fl.get_num_threads() == before


def test_thread_count_at_the_limit_is_accepted(set_threads):
    fl.set_num_threads(_threads.MAX_THREADS)
    assert fl.get_num_threads() == _threads.MAX_THREADS


def test_omp_num_threads_beyond_the_limit_is_capped():
    out = run_python("import fastloss; print(fastloss.get_num_threads())",
                     env={"OMP_NUM_THREADS": "100000"})
    assert int(out) == _threads.MAX_THREADS


def test_threadpoolctl_limits_fastloss_threads(set_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fl.set_num_threads(2)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1):
        assert fl.get_num_threads() == 1
    assert fl.get_num_threads() == 2
    info = [lib for lib in threadpoolctl.threadpool_info()
            if lib["internal_api"] == "fastloss"]
    assert len(info) == 1 and info[0]["user_api"] == "openmp"
    assert info[0]["num_threads"] == 2 and info[0]["version"] == fl.__version__


def test_threadpoolctl_limit_applies_to_the_kernels(set_threads, parallel_always, rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = rng.normal(size=5000)
    fl.set_num_threads(2)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _threads.threads_for(x.size) == 1


# -- a busy machine ---------------------------------------------------------------------

@pytest.fixture
def fresh_load_state():
    _dispatch.kernels.reset_load_state()
    yield _dispatch.kernels
    _dispatch.kernels.reset_load_state()


@needs_threads
def test_a_region_that_waited_for_a_late_worker_makes_the_next_calls_serial(
        fresh_load_state):
    kernels = fresh_load_state
    assert kernels.team_size(2) == 2
    kernels.report_region(2, 0.016, 0.0003)      # 16 ms for a 0.3 ms chunk
    state = kernels.load_state()
    assert state["late_regions"] >= 1 and 0 < state["serial_for"] <= 0.010
    assert kernels.team_size(2) == 1
    time.sleep(0.012)
    assert kernels.team_size(2) == 2             # probing with threads again


@needs_threads
def test_repeated_late_regions_back_off_longer_and_punctual_ones_recover(
        fresh_load_state):
    kernels = fresh_load_state
    backoff = kernels.load_state()["backoff"]
    for _ in range(3):
        kernels.report_region(2, 0.016, 0.0003)
    assert kernels.load_state()["backoff"] == pytest.approx(64 * backoff)
    for _ in range(15):
        kernels.report_region(2, 0.0005, 0.0003)   # punctual: within 2x the chunk
    assert kernels.load_state()["backoff"] == pytest.approx(64 * backoff)
    kernels.report_region(2, 0.0005, 0.0003)       # 16 in a row halve it
    assert kernels.load_state()["backoff"] == pytest.approx(32 * backoff)
    for _ in range(5 * 16):
        kernels.report_region(2, 0.0005, 0.0003)
    assert kernels.load_state()["backoff"] == pytest.approx(backoff)


@needs_threads
def test_a_calling_thread_held_up_by_another_process_is_a_late_region(fresh_load_state):
    """The calling thread runs the first chunk of blocks: when it is the one held up
    (the worker done in 0.1 ms, the calling thread after 15 ms), the region is late."""
    kernels = fresh_load_state
    kernels.report_region_of_blocks(2, 4, [0.015, 0.0001], 0.015)
    assert kernels.load_state()["late_regions"] >= 1
    assert kernels.team_size(2) == 1


@needs_threads
def test_uneven_chunks_are_judged_by_their_pace(fresh_load_state):
    """3 blocks on 2 threads: the worker's one block takes half the calling thread's
    two; a region that kept that pace is punctual, with no slack needed."""
    kernels = fresh_load_state
    kernels.report_region_of_blocks(2, 3, [0.002, 0.001], 0.002)
    kernels.report_region_of_blocks(2, 5, [0.003, 0.002], 0.003)
    assert kernels.load_state()["serial_for"] == 0
    assert kernels.team_size(2) == 2
    kernels.report_region_of_blocks(2, 3, [0.0011, 0.001], 0.0011)    # both on time
    assert kernels.load_state()["serial_for"] == 0


@needs_threads
def test_a_punctual_region_is_not_taken_for_a_busy_machine(fresh_load_state):
    kernels = fresh_load_state
    kernels.report_region(2, 0.00060, 0.0003)
    kernels.report_region(2, 0.000060, 0.000010)   # within the 50 us slack
    assert kernels.load_state()["serial_for"] == 0
    assert kernels.team_size(2) == 2


@needs_threads
def test_results_while_backing_off_have_the_bits_of_threaded_ones(
        fresh_load_state, set_threads, parallel_always, rng):
    x = rng.normal(size=(300, 40))
    t = rng.uniform(size=(300, 40))
    labels = rng.integers(0, 40, size=300)
    cases = [(fl.LogCosh(), t), (fl.BinaryCrossEntropy(from_logits=True), t),
             (fl.SparseCategoricalCrossEntropy(from_logits=True), labels),
             (fl.CategoricalCrossEntropy(from_logits=True), t / t.sum(1, keepdims=True))]
    set_threads(2)
    threaded = [loss.value_and_grad(x, y) for loss, y in cases]
    for _ in range(4):                               # serial for the next 640 ms
        fresh_load_state.report_region(2, 10.0, 0.001)
    assert fresh_load_state.team_size(2) == 1
    serial = [loss.value_and_grad(x, y) for loss, y in cases]
    for (v1, g1), (v2, g2) in zip(threaded, serial):
        assert v1 == v2
        np.testing.assert_array_equal(g1, g2)
