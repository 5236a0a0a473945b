"""fastloss built as users on other machines build it.

Each build starts from a copy of the sources (no build products) in a temporary
directory, so the checkout's own modules are never touched:

- clang with LLVM's OpenMP runtime (libomp): threaded kernels;
- clang without an OpenMP runtime (a compiler wrapper that refuses ``-fopenmp`` as a
  clang without libomp does): the build still succeeds, serial, with a warning;
- the default compiler with OpenMP disabled (``FASTLOSS_OPENMP=0``): serial kernels;
- the aarch64 cross compiler: the baseline module builds for aarch64 (it cannot run
  here; it is checked to be an aarch64 shared object linked against libgomp);
- a wheel: ``python -m build --sdist``, ``pip wheel`` of that source distribution, then
  ``auditwheel repair`` give a manylinux wheel, which
  installs into a fresh virtual environment with no compiler on PATH and passes
  ``python -m fastloss check``.

Every build but the wheel builds the baseline module only (``FASTLOSS_ONLY_BASELINE=1``):
the x86-64 levels are the same source with other ``-march`` flags, built by the main
installation the rest of the suite tests.  Builds run two at a time.  The toolchains come
from ``tests/toolchains.sh`` (part of the README's test command); a test whose toolchain
is missing is skipped and says which.
"""
import concurrent.futures
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from helpers import copy_sources

PROJECT_DIR = Path(__file__).resolve().parent.parent
TESTS_DIR = PROJECT_DIR / "tests"
#: the part of the suite each variant runs: every loss against its references, bad
#: input, extremes, threads and process guarantees, through the public API
SUITE = ("test_contract.py", "test_api.py", "test_numerical_range.py", "test_bad_input.py",
         "test_threads_and_build.py", "test_process_guarantees.py")
BUILD_TIMEOUT = 1800
EM_AARCH64 = 183   # ELF e_machine of aarch64

CLANG_WITHOUT_OPENMP = """#!/bin/sh
# clang as it behaves without an OpenMP runtime installed: -fopenmp fails
for argument in "$@"; do
    case "$argument" in
        *openmp*) echo "clang: error: no OpenMP runtime (libomp) installed" >&2; exit 1;;
    esac
done
exec clang "$@"
"""


def missing(*tools):
    return [tool for tool in tools if shutil.which(tool) is None]


def clang_has_openmp():
    """Whether clang can build an OpenMP program here (libomp installed)."""
    if missing("clang"):
        return False
    result = subprocess.run(["clang", "-fopenmp", "-x", "c", "-", "-o", os.devnull],
                            input="#include <omp.h>\nint main(void){return omp_get_max_threads() < 0;}\n",
                            capture_output=True, text=True)
    return result.returncode == 0


def base_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTLOSS_ISA", "OMP_NUM_THREADS", "PYTHONPATH", "CC", "CFLAGS",
                        "LDSHARED", "FASTLOSS_OPENMP", "FASTLOSS_SANITIZE")}
    env["FASTLOSS_ONLY_BASELINE"] = "1"
    env.update(extra)
    return env


class Build:
    """A copy of the sources and the result of building it."""

    def __init__(self, root, returncode, log):
        self.root, self.returncode, self.log = root, returncode, log

    def check_built(self):
        assert self.returncode == 0, self.log[-6000:]
        return self


def build_in_place(root, env, args=("build_ext", "--inplace")):
    result = subprocess.run([sys.executable, "setup.py", *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    return Build(root, result.returncode, result.stdout + result.stderr)


def plan_builds(root):
    """{variant: (needed tools or None, function building it)}."""
    def clang_openmp():
        return build_in_place(copy_sources(root / "clang-openmp"),
                              base_env(CC="clang", FASTLOSS_OPENMP="1"))

    def clang_without_runtime():
        wrapper = root / "bin" / "clang-without-openmp"
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(CLANG_WITHOUT_OPENMP)
        wrapper.chmod(0o755)
        return build_in_place(copy_sources(root / "clang-serial"), base_env(CC=str(wrapper)))

    def openmp_disabled():
        return build_in_place(copy_sources(root / "openmp-disabled"),
                              base_env(FASTLOSS_OPENMP="0"))

    def aarch64():
        suffix = sysconfig.get_config_var("EXT_SUFFIX").replace(
            sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu", "aarch64-linux-gnu")
        source = copy_sources(root / "aarch64")
        return build_in_place(source, base_env(
            CC="aarch64-linux-gnu-gcc", LDSHARED="aarch64-linux-gnu-gcc -shared",
            SETUPTOOLS_EXT_SUFFIX=suffix),
            args=("build_ext", "--build-lib", str(source / "lib"),
                  "--build-temp", str(source / "temp")))

    def wheel():
        # the wheel is built from the source distribution, which must carry everything
        # the build needs
        source = root / "wheel"
        shutil.copytree(PROJECT_DIR, source, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "_build", "__pycache__", "*.so", "*.c",
            "_kernels_*.pyx"))
        dist = source / "dist"
        def run(*args):
            return subprocess.run([sys.executable, "-m", *args], cwd=root, env=base_env(),
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT)

        result = run("build", "--sdist", "--no-isolation", "--outdir", str(dist), str(source))
        log = result.stdout + result.stderr
        if result.returncode == 0:
            (sdist,) = dist.glob("fastloss-*.tar.gz")
            result = run("pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                         str(sdist))
            log += result.stdout + result.stderr
        return Build(source, result.returncode, log)

    return {
        "clang-openmp": (("clang",), clang_openmp),
        "clang-without-openmp": (("clang",), clang_without_runtime),
        "openmp-disabled": ((), openmp_disabled),
        "aarch64": (("aarch64-linux-gnu-gcc",), aarch64),
        "wheel": (("auditwheel", "patchelf"), wheel),   # and the build package
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{variant: future of its Build, or the reason it is skipped}, two builds at a
    time."""
    root = tmp_path_factory.mktemp("portable")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = {}
    for name, (tools, build) in plan_builds(root).items():
        absent = ", ".join(missing(*tools))
        if not absent and name == "clang-openmp" and not clang_has_openmp():
            absent = "libomp (clang's OpenMP runtime)"
        futures[name] = (f"{absent} not installed (tests/toolchains.sh installs it)"
                         if absent else pool.submit(build))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def built(builds, name):
    future = builds[name]
    if isinstance(future, str):
        pytest.skip(future)
    return future.result().check_built()


def run_in(build_root, args, timeout=1200, python=sys.executable, env=None):
    """Run python with this build of fastloss first on its path; (status, output)."""
    environment = base_env(PYTHONPATH=str(build_root), **(env or {}))
    result = subprocess.run([python, "-P", *args], cwd=TESTS_DIR, env=environment,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def config_of(build_root):
    status, output = run_in(build_root, [
        "-c", "import fastloss, json; c = fastloss.config(); "
              "c['file'] = fastloss.__file__; c['threads'] = fastloss.get_num_threads(); "
              "print(json.dumps(c))"])
    assert status == 0, output
    import json
    config = json.loads(output.strip().splitlines()[-1])
    assert config["file"].startswith(str(build_root)), config["file"]
    return config


def passes_check_and_suite(build_root, openmp):
    status, output = run_in(build_root, ["-m", "fastloss", "check"])
    assert status == 0, output[-6000:]
    driver = (
        "import sys, fastloss, pytest\n"
        f"assert fastloss.__file__.startswith({str(build_root)!r}), fastloss.__file__\n"
        "sys.exit(pytest.main(sys.argv[1:]))\n")
    status, output = run_in(build_root, ["-c", driver, "-q", "-x", "-p", "no:cacheprovider",
                                         *[str(TESTS_DIR / name) for name in SUITE]],
                            env={"FASTLOSS_TEST_EXPECT_OPENMP": "1" if openmp else "0"})
    assert status == 0, output[-8000:]


def test_clang_with_its_openmp_runtime_builds_threaded_kernels_that_pass(builds):
    build = built(builds, "clang-openmp")
    config = config_of(build.root)
    assert "clang" in config["compiler"], config["compiler"]
    assert config["openmp"] is True
    assert config["threads"] == len(os.sched_getaffinity(0))
    passes_check_and_suite(build.root, openmp=True)


@pytest.mark.parametrize("variant", ["clang-without-openmp", "openmp-disabled"])
def test_without_openmp_the_build_is_serial_says_so_and_passes(builds, variant):
    build = built(builds, variant)
    assert "building SERIAL kernels" in build.log
    config = config_of(build.root)
    assert config["openmp"] is False
    assert "-fopenmp" not in config["compile_flags"]
    assert config["num_threads"] == config["threads"]   # the setting is kept ...
    if variant == "clang-without-openmp":
        assert "clang" in config["compiler"], config["compiler"]
    passes_check_and_suite(build.root, openmp=False)
    # ... and every region runs on one thread
    status, output = run_in(build.root, [
        "-c", "from fastloss._dispatch import kernels; print(kernels.team_size(2))"])
    assert status == 0 and output.split()[-1] == "1", output


def test_the_baseline_module_cross_compiles_for_aarch64(builds):
    build = built(builds, "aarch64")
    modules = sorted((build.root / "lib" / "fastloss").glob("_kernels_*.so"))
    assert [m.name.split(".")[0] for m in modules] == ["_kernels_baseline"], modules
    data = modules[0].read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2   # 64-bit ELF
    assert int.from_bytes(data[18:20], "little") == EM_AARCH64
    assert b"libgomp.so.1" in data   # threaded: linked against the OpenMP runtime
    # the x86-64 levels are not attempted for another CPU
    assert "x86_64_v3" not in build.log


def test_a_manylinux_wheel_installs_and_runs_without_a_compiler(builds, tmp_path):
    build = built(builds, "wheel")
    wheels = list((build.root / "dist").glob("fastloss-*.whl"))
    assert len(wheels) == 1, build.log[-3000:]
    repaired = tmp_path / "repaired"
    result = subprocess.run(["auditwheel", "repair", "-w", str(repaired), str(wheels[0])],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = repaired.glob("fastloss-*manylinux*.whl")
    with zipfile.ZipFile(wheel) as archive:   # fastloss.torch builds its C++ path from these
        assert {"fastloss/_torch_native.cpp", "fastloss/_native_call.h"} <= set(
            archive.namelist())
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    # no compiler reachable: PATH holds the environment's own scripts only
    isolated = {"PATH": str(environment / "bin"), "CC": "/nonexistent/cc",
                "HOME": os.environ.get("HOME", str(tmp_path)),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
        if name in os.environ:
            isolated[name] = os.environ[name]
    result = subprocess.run([python, "-m", "pip", "install", "--only-binary=:all:",
                             str(wheel)], env=isolated, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for args in (["-m", "fastloss", "check"],
                 ["-c", "import fastloss; fastloss.show_config()"]):
        result = subprocess.run([python, "-P", *args], env=isolated, cwd=tmp_path,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert str(environment) in result.stdout   # the installed module, not the sources
    assert "openmp: True" in result.stdout
