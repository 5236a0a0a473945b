"""Threads, fork safety, process-wide state and the build, as the docs describe them.

Anything that could change the state of the test process (importing fastloss fresh,
environment variables, fork) runs in a subprocess with a timeout, so that a hang fails
the test instead of the suite.
"""
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch
from helpers import (EXPECT_OPENMP, OPENMP_RUNTIME, PACKAGE_DIR, PROJECT_DIR, kernel_modules,
                     loss_modules, run_python)

# ---------------------------------------------------------------------------------------
# thread count
# ---------------------------------------------------------------------------------------
def test_set_and_get_num_threads(set_threads):
    set_threads(1)
    assert fl.get_num_threads() == 1
    set_threads(np.int64(3))
    assert fl.get_num_threads() == 3 and type(fl.get_num_threads()) is int


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_set_num_threads_rejects_non_positive(bad, set_threads):
    before = fl.get_num_threads()
    with pytest.raises(ValueError, match=rf"set_num_threads.*>= 1.*got {bad}"):
        set_threads(bad)
    assert fl.get_num_threads() == before


@pytest.mark.parametrize("bad", [1.5, 2.0, "2", None, True, [2]])
def test_set_num_threads_rejects_non_integers(bad, set_threads):
    before = fl.get_num_threads()
    with pytest.raises(TypeError, match="set_num_threads.*int"):
        set_threads(bad)
    assert fl.get_num_threads() == before


def test_thread_count_is_fastloss_own(set_threads):
    """Setting fastloss's threads leaves PyTorch's (and the environment) alone."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    set_threads(1)
    fl.MeanSquaredError()(np.zeros(100000), np.ones(100000))
    set_threads(2)
    fl.MeanSquaredError()(np.zeros(100000), np.ones(100000))
    assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == before


def _affinity():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value, expected", [
    ("1", 1), ("3", 3), ("4,2", 4), (" 2 ", 2), ("0", None), ("abc", None), ("", None)])
def test_omp_num_threads_is_honoured(value, expected):
    expected = _affinity() if expected is None else expected
    out = run_python("import fastloss; print(fastloss.get_num_threads())",
                     env={"OMP_NUM_THREADS": value})
    assert int(out) == expected


def test_default_thread_count_is_the_available_cpus():
    out = run_python("import fastloss; print(fastloss.get_num_threads())")
    assert int(out) == _affinity()


def test_import_changes_no_other_library_threads():
    torch = pytest.importorskip("torch")  # noqa: F841 (only to skip without torch)
    out = run_python("""
        import os, torch
        before = (torch.get_num_threads(), torch.get_num_interop_threads(),
                  os.environ.get("OMP_NUM_THREADS"))
        import numpy as np, fastloss
        fastloss.set_num_threads(1)
        fastloss.MeanSquaredError()(np.zeros(200000), np.ones(200000))
        fastloss.set_num_threads(2)
        fastloss.MeanSquaredError()(np.zeros(200000), np.ones(200000))
        after = (torch.get_num_threads(), torch.get_num_interop_threads(),
                 os.environ.get("OMP_NUM_THREADS"))
        print(before == after)
    """, timeout=120)
    assert out.strip() == "True"


# ---------------------------------------------------------------------------------------
# fork after a threaded call
# ---------------------------------------------------------------------------------------
def test_fork_after_threaded_call_works():
    """A DataLoader-style worker forked after fastloss ran threaded does not hang."""
    out = run_python("""
        import multiprocessing as mp
        import numpy as np
        import fastloss
        from fastloss import _dispatch

        fastloss.set_num_threads(2)
        rng = np.random.default_rng(0)
        pred = rng.normal(size=(400, 500)).astype(np.float32)
        target = rng.normal(size=(400, 500)).astype(np.float32)
        loss = fastloss.LogCosh()
        parent_value = loss(pred, target)          # 200,000 elements: threaded

        def work(queue):
            value, grad = loss.value_and_grad(pred, target)
            queue.put((value, float(np.abs(grad).sum()), fastloss.get_num_threads()))

        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        # daemons: should a child hang, the script's exit still ends it
        children = [ctx.Process(target=work, args=(queue,), daemon=True) for _ in range(2)]
        for child in children:
            child.start()
        results = [queue.get(timeout=30) for _ in children]
        for child in children:
            child.join(timeout=30)
            assert child.exitcode == 0, child.exitcode
        for value, grad_sum, threads in results:
            assert abs(value - parent_value) <= 1e-9 * abs(parent_value), (value, parent_value)
            assert grad_sum > 0 and threads == 1
        # the parent keeps its threads
        assert fastloss.get_num_threads() == 2
        assert abs(loss(pred, target) - parent_value) <= 1e-9 * abs(parent_value)
        print("ok")
    """, timeout=90)
    assert out.strip() == "ok"


def test_a_forked_child_runs_serially_even_before_any_threaded_call():
    """The parent's OpenMP use may be another library's, unseen by fastloss: a forked
    child is always serial."""
    out = run_python("""
        import multiprocessing as mp
        import fastloss
        fastloss.set_num_threads(2)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=lambda: queue.put(fastloss.get_num_threads()), daemon=True)
        child.start()
        print(queue.get(timeout=30), fastloss.get_num_threads())
        child.join(timeout=30)
    """)
    assert out.split() == ["1", "2"]


# ---------------------------------------------------------------------------------------
# process-wide floating-point state
# ---------------------------------------------------------------------------------------
def test_import_and_kernels_leave_subnormals_alone():
    """No flush-to-zero / denormals-are-zero after import or after any kernel ran."""
    out = run_python("""
        import importlib
        import sys
        import numpy as np
        import fastloss
        from fastloss import _dispatch, _threads
        from fastloss._tools.reference import REFERENCES

        def subnormals_work():
            return (np.float64(1e-310) * 1 != 0 and np.float32(1e-40) * 1 != 0
                    and np.float64(2.5e-308) / 4 != 0)

        assert subnormals_work(), "after import"
        _threads.PARALLEL_MIN_WORK = 0
        fastloss.set_num_threads(2)
        for level in _dispatch.supported_levels():
            try:
                module = importlib.import_module(f"fastloss._kernels_{level}")
            except ImportError:
                continue
            for name in fastloss.available():  # every module of losses
                sys.modules[type(fastloss.get(name)).__module__].kernels = module
            module.set_min_block_work(16)
            rng = np.random.default_rng(0)
            for name in fastloss.available():
                loss = fastloss.get(name)
                ref = REFERENCES[name]
                pred, target = ref.inputs(rng, (100, 10) if ref.rows else (1000,), {})
                for dtype in (np.float64, np.float32):
                    loss.value_and_grad(pred.astype(dtype), target if ref.labels
                                        else target.astype(dtype))
            # a subnormal gradient survives the kernel itself (DAZ/FTZ would zero it)
            grad = fastloss.MeanSquaredError(reduction="sum").grad(
                np.full(64, 1e-310), np.zeros(64))
            assert np.all(grad == 2e-310), (level, grad[:4])
            assert subnormals_work(), level
        print("ok")
    """)
    assert out.strip() == "ok"


# ---------------------------------------------------------------------------------------
# the build: OpenMP, compile flags, vector math, ISA levels
# ---------------------------------------------------------------------------------------
def test_show_config_reports_openmp_threads_and_flags(set_threads):
    set_threads(2)
    buffer = io.StringIO()
    fl.show_config(file=buffer)
    text = buffer.getvalue()
    assert f"fastloss {fl.__version__}" in text
    assert re.search(rf"openmp: {EXPECT_OPENMP}", text), text
    assert re.search(r"num_threads: 2\b", text), text
    flags = re.search(r"compile_flags: (.*)", text).group(1).split()
    assert ("-fopenmp" in flags) is EXPECT_OPENMP and "-O3" in flags
    assert "-ffast-math" not in flags and "-march=native" not in flags
    assert not any(f.startswith("-Ofast") for f in flags)
    assert re.search(r"isa_level: (baseline|x86_64_v3|x86_64_v4)", text), text
    info = fl.config()
    assert info["openmp"] is EXPECT_OPENMP and info["num_threads"] == 2
    assert info["kernel_module"] == _dispatch.kernels.__name__


def test_show_config_prints_to_stdout(capsys):
    fl.show_config()
    assert f"openmp: {EXPECT_OPENMP}" in capsys.readouterr().out


def test_best_isa_level_is_picked():
    modules = kernel_modules()
    best = os.environ.get("FASTLOSS_ISA", "").strip() or next(
        level for level in _dispatch.supported_levels() if level in modules)
    assert _dispatch.kernels.__name__ == f"fastloss._kernels_{best}"
    assert fl.config()["isa_level"] == best


@pytest.mark.parametrize("level", ["baseline", "x86_64_v3", "x86_64_v4"])
def test_each_module_links_its_openmp_runtime(level):
    module = kernel_modules().get(level)
    if module is None:
        pytest.skip(f"{level} not built or not supported by this CPU")
    if shutil.which("ldd") is None:
        pytest.skip("ldd not available")
    result = subprocess.run(["ldd", module.__file__], capture_output=True, text=True,
                            timeout=30)
    assert bool(OPENMP_RUNTIME.search(result.stdout)) is EXPECT_OPENMP, result.stdout


def test_the_openmp_runtime_is_loaded_by_importing_fastloss():
    """Without any other library that might bring it (no torch in this process)."""
    out = run_python(f"""
        import re, sys
        import fastloss
        assert "torch" not in sys.modules
        with open("/proc/self/maps") as fh:
            print(any(re.search({OPENMP_RUNTIME.pattern!r}, line) for line in fh))
    """)
    assert out.strip() == str(EXPECT_OPENMP)


def _undefined_dynamic_symbols(path):
    if shutil.which("nm") is None:
        pytest.skip("nm not available")
    result = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return {line.split()[-1].split("@")[0] for line in result.stdout.splitlines()
            if line.strip()}


@pytest.mark.parametrize("level", ["baseline", "x86_64_v3", "x86_64_v4"])
def test_each_module_vectorises_its_transcendental_math(level):
    """exp/log/log1p/tanh: glibc's libmvec variants (gcc on glibc) or fastloss's own
    inlined code (everywhere else): never a scalar libm call in a kernel."""
    module = kernel_modules().get(level)
    if module is None:
        pytest.skip(f"{level} not built or not supported by this CPU")
    symbols = _undefined_dynamic_symbols(module.__file__)
    libm = {f"{name}{suffix}" for name in ("exp", "log", "log1p", "tanh", "expm1", "pow")
            for suffix in ("", "f")}
    vector = {s for s in symbols if s.startswith("_ZGV")}
    if module.build_info()["vector_math"] == "glibc libmvec":
        for name in ("expf", "exp", "logf", "tanhf"):
            assert any(s.endswith("_" + name) for s in vector), (name, sorted(vector))
        if level == "x86_64_v4":
            assert any(s.startswith(("_ZGVd", "_ZGVe")) for s in vector)  # AVX2/AVX-512
    else:
        assert module.build_info()["vector_math"] == "fastloss polynomial"
        assert not symbols & libm, sorted(symbols & libm)
        assert not vector, sorted(vector)


ISA_CASES = [
    ("mse", {}), ("mae", {}), ("msle", {}), ("huber", {"delta": 0.6}),
    ("pseudo_huber", {"delta": 1.7}), ("log_cosh", {}), ("hinge", {}), ("squared_hinge", {}),
    ("binary_cross_entropy", {"label_smoothing": 0.1}),
    ("binary_cross_entropy", {"from_logits": True, "pos_weight": [0.5, 1.0, 2.0, 1.5, 3.0,
                                                                  0.7, 1.1]}),
]


def _isa_inputs(name, params, dtype, rng):
    shape = (23, 7)
    if name in ("hinge", "squared_hinge"):
        pred, target = rng.normal(size=shape), rng.choice([0.0, 1.0], shape)
    elif name == "binary_cross_entropy" and not params.get("from_logits"):
        pred, target = rng.uniform(0.01, 0.99, shape), rng.uniform(0, 1, shape)
    elif name == "msle":
        pred, target = rng.uniform(-0.1, 5, shape), rng.uniform(0, 5, shape)
    else:
        pred, target = rng.normal(0, 3, shape), rng.uniform(0, 1, shape)
    return pred.astype(dtype), target.astype(dtype), rng.uniform(0, 2, 23).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, params", ISA_CASES,
                         ids=[f"{n}{'_logits' if p.get('from_logits') else ''}"
                              for n, p in ISA_CASES])
def test_isa_levels_agree(name, params, dtype, rng, monkeypatch, set_threads,
                          parallel_always):
    modules = kernel_modules()
    if len(modules) < 2:
        pytest.skip("only one kernel module built (FASTLOSS_ONLY_BASELINE?)")
    pred, target, weight = _isa_inputs(name, params, dtype, rng)
    results = {}
    for level, module in modules.items():
        for loss_module in loss_modules():
            monkeypatch.setattr(loss_module, "kernels", module)
        # few threaded runs: a parallel region can cost milliseconds on a loaded machine
        for n_threads, reduction, w in ((1, "mean", None), (1, "mean", weight),
                                        (1, "none", weight), (2, "mean", weight)):
            set_threads(n_threads)
            loss = fl.get(name, reduction=reduction, **params)
            value, grad = loss.value_and_grad(pred, target, w)
            results.setdefault((n_threads, reduction, w is None), {})[level] = (
                np.asarray(value, dtype=np.float64), grad.astype(np.float64))
    # fma contraction (x86-64-v3 and up) rounds the vector math and the losses
    # differently: results agree to a few ulp
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    for by_level in results.values():
        base_value, base_grad = by_level["baseline"]
        for level, (value, grad) in by_level.items():
            for got, want in ((value, base_value), (grad, base_grad)):
                scale = np.max(np.abs(want))
                np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                                           err_msg=level)


@pytest.mark.parametrize("level", ["baseline", "x86_64_v3", "x86_64_v4"])
def test_fastloss_isa_forces_a_level(level):
    if level not in kernel_modules():
        pytest.skip(f"{level} not built or not supported by this CPU")
    out = run_python("""
        import numpy as np, fastloss
        info = fastloss.config()
        print(info["isa_level"], info["kernel_module"])
        print(fastloss.LogCosh()(np.linspace(-3, 3, 100), np.zeros(100)))
    """, env={"FASTLOSS_ISA": level})
    lines = out.split()
    assert lines[:2] == [level, f"fastloss._kernels_{level}"]
    want = fl.LogCosh()(np.linspace(-3, 3, 100), np.zeros(100))
    assert float(lines[2]) == pytest.approx(want, rel=1e-14)


def test_fastloss_isa_rejects_unknown_level():
    code = "import fastloss"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({"FASTLOSS_ISA": "avx9000", "PYTHONPATH": str(PROJECT_DIR)})
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "FASTLOSS_ISA='avx9000'" in result.stderr


@pytest.mark.parametrize("n_threads", [3, 7, 64])
def test_more_threads_than_work(n_threads, rng, set_threads, parallel_always):
    """Chunks that are empty or shorter than the vector width still give the serial result."""
    loss = fl.BinaryCrossEntropy(from_logits=True, pos_weight=[1.0, 2.0, 0.5],
                                 reduction="sum")
    for n_rows in (1, 2, 5, 11, 40):
        pred = rng.normal(size=(n_rows, 3))
        target = rng.uniform(size=(n_rows, 3))
        weight = rng.uniform(size=n_rows)
        set_threads(1)
        want = loss.value_and_grad(pred, target, weight)
        set_threads(n_threads)
        got = loss.value_and_grad(pred, target, weight)
        assert got[0] == pytest.approx(want[0], rel=1e-14)
        np.testing.assert_array_equal(got[1], want[1])


def test_source_checkout_without_compiled_kernels_uses_the_installed_ones(tmp_path):
    """``python -m fastloss ...`` run in a source checkout puts the checkout first on
    sys.path; its package has no compiled modules, and the installed ones are used."""
    checkout = tmp_path / "fastloss"
    checkout.mkdir()
    for source in PACKAGE_DIR.glob("*.py"):
        shutil.copy(source, checkout / source.name)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FASTLOSS_ISA")}
    env["PYTHONPATH"] = str(PROJECT_DIR)      # where the compiled fastloss is
    code = ("import fastloss, numpy as np; print(fastloss.__file__); "
            "print(fastloss._kernels.__file__); "
            "print(fastloss.get('mse')(np.array([1.0, 3.0]), np.zeros(2)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    package_file, kernels_file, value = result.stdout.split()
    assert Path(package_file).parent == checkout
    assert Path(kernels_file).parent == PACKAGE_DIR
    assert float(value) == 5.0


# the flags (as Linux's /proc/cpuinfo spells them) each x86-64 level needs, for a
# cross-check of the CPUID/XGETBV answer on Linux
_LEVEL_FLAGS = {
    2: {"cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"},
    3: {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    4: {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def test_the_cpu_level_asked_of_the_cpu_agrees_with_linux():
    import platform
    level = _dispatch._baseline().x86_64_level()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert level == 0
        return
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(next(line for line in text.splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    expected = 1
    for number in (2, 3, 4):
        if not _LEVEL_FLAGS[number] <= flags:
            break
        expected = number
    assert level == expected
    assert _dispatch.supported_levels() == [
        name for name, number in (("x86_64_v4", 4), ("x86_64_v3", 3), ("baseline", 1))
        if number <= level]
