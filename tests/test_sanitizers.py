"""The kernels under AddressSanitizer and UndefinedBehaviorSanitizer (slow, on demand).

``python -m pytest -m slow tests/test_sanitizers.py`` builds the three kernel modules with
``FASTLOSS_SANITIZE=1`` (setup.py adds ``-fsanitize=address,undefined
-fno-sanitize-recover=undefined -fno-omit-frame-pointer``) from a copy of the sources in a
temporary directory, so the checkout's own modules are never touched, then runs a
representative part of the test suite and a short fuzz run against that build in a
subprocess with gcc's libasan preloaded.  Any out-of-bounds access, use after free or
undefined behaviour (misaligned access, overflow, bad shift...) in a kernel aborts the
run with a report, and fails the test.

``FASTLOSS_SANITIZED_BUILD=<dir>`` reuses a build made before (a copy of the sources with
the sanitized modules built in place) instead of building again.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastloss as fl
from helpers import copy_sources

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parent.parent
TESTS_DIR = PROJECT_DIR / "tests"
LEVELS = ("baseline", "x86_64_v3", "x86_64_v4")
#: what a sanitizer prints when it finds something
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                  "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")
#: the representative part of the suite: every loss's kernels through the public API
SUITE = ("test_api.py", "test_pointwise.py", "test_rows.py", "test_numerical_range.py",
         "test_bad_input.py")
FUZZ_EXAMPLES = "20"


def libasan():
    """gcc's AddressSanitizer runtime, which must be loaded before anything else."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip("gcc has no libasan (install libasan / gcc's sanitizer runtime)")
    return os.path.realpath(path)


def preload():
    """libasan, then libstdc++: ASan intercepts C++ exceptions (PyTorch throws some
    internally) only when the real __cxa_throw is there when it starts."""
    libraries = [libasan()]
    path = subprocess.run(["gcc", "-print-file-name=libstdc++.so.6"], capture_output=True,
                          text=True).stdout.strip()
    if os.path.isabs(path) and os.path.exists(path):
        libraries.append(os.path.realpath(path))
    return " ".join(libraries)


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory):
    """A copy of the sources with the three kernel modules built sanitized, in place."""
    reused = os.environ.get("FASTLOSS_SANITIZED_BUILD")
    if reused:
        return Path(reused)
    libasan()
    root = copy_sources(tmp_path_factory.mktemp("sanitized"))
    env = {k: v for k, v in os.environ.items() if k != "FASTLOSS_ONLY_BASELINE"}
    env["FASTLOSS_SANITIZE"] = "1"
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                            cwd=root, env=env, capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return root


def run_sanitized(build, args, level=None, timeout=3600, **extra_env):
    """Run pytest with ``args`` on the sanitized build; (exit status, output)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTLOSS_ISA", "OMP_NUM_THREADS", "PYTHONPATH")}
    env.update(
        LD_PRELOAD=preload(),
        # CPython's own allocations are not freed at exit: no leak report
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98",
        # every Python object through malloc, so ASan sees its bounds
        PYTHONMALLOC="malloc",
        PYTHONPATH=str(build),
        **extra_env)
    if level is not None:
        env["FASTLOSS_ISA"] = level
    # import the sanitized fastloss first (and check it is that one), then run pytest;
    # -s: a report is printed by the dying process, which pytest's capture would lose
    driver = (
        "import sys, fastloss, pytest\n"
        f"assert fastloss.__file__.startswith({str(build)!r}), fastloss.__file__\n"
        "flags = fastloss.config()['compile_flags']\n"
        "assert '-fsanitize=address,undefined' in flags, flags\n"
        "print('kernels:', fastloss.config()['kernel_module'], flush=True)\n"
        "sys.exit(pytest.main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-P", "-c", driver, "-q", "-s", "-x"] + args,
                            cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def assert_clean(status, output):
    reports = [m for m in REPORT_MARKERS if m in output]
    assert status == 0 and not reports, (
        f"exit status {status}, sanitizer reports: {reports}\n" + output[-12000:])


def test_suite_runs_clean_under_address_and_undefined_behaviour_sanitizers(
        sanitized_build):
    status, output = run_sanitized(sanitized_build, [str(TESTS_DIR / t) for t in SUITE])
    assert_clean(status, output)
    assert " passed" in output


@pytest.mark.parametrize("level", LEVELS)
def test_fuzz_runs_clean_under_sanitizers_with_each_isa_level(sanitized_build, level):
    if level not in fl._dispatch.supported_levels():
        pytest.skip(f"this CPU does not run {level}")
    status, output = run_sanitized(
        sanitized_build, [str(TESTS_DIR / "test_fuzz.py")],
        level=level, FASTLOSS_FUZZ_EXAMPLES=FUZZ_EXAMPLES)
    assert_clean(status, output)
    assert f"kernels: fastloss._kernels_{level}" in output


def test_misaligned_out_and_sample_weight_run_clean_under_sanitizers(sanitized_build):
    status, output = run_sanitized(
        sanitized_build, [str(TESTS_DIR / "test_fuzz.py"), "-k", "misaligned"],
        FASTLOSS_FUZZ_EXAMPLES="5")
    assert_clean(status, output)
