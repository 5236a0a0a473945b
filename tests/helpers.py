"""Helpers shared by the test modules (imported as ``helpers``: pytest puts this folder
on sys.path)."""
import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastloss
from fastloss import _dispatch

PACKAGE_DIR = Path(fastloss.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
#: the source tree these tests belong to (PROJECT_DIR is site-packages when the suite
#: runs against the installed package)
SOURCE_DIR = Path(__file__).resolve().parent.parent

#: Whether the fastloss under test must have been built with OpenMP: true unless the
#: runner of the suite says otherwise (tests/test_portable_builds.py runs the suite on
#: builds without OpenMP), so a build that lost OpenMP fails instead of passing serially.
EXPECT_OPENMP = os.environ.get("FASTLOSS_TEST_EXPECT_OPENMP", "1") != "0"
#: the OpenMP runtimes a threaded build links: gcc's libgomp, LLVM's libomp
OPENMP_RUNTIME = re.compile(r"lib(gomp|omp)\.so")
needs_threads = pytest.mark.skipif(
    not EXPECT_OPENMP, reason="threads only exist in a build with OpenMP")


def copy_sources(destination):
    """A copy of the files a build needs (setup.py, pyproject.toml, the package's sources),
    without any build product, at ``destination``; returns it."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
                 "CHANGELOG.md"):
        shutil.copy2(SOURCE_DIR / name, destination / name)
    shutil.copytree(SOURCE_DIR / "fastloss", destination / "fastloss",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__",
                                                  "_kernels_*.pyx"))
    return destination


def run_python(code, env=None, timeout=60):
    """Run ``code`` in a fresh interpreter importing this fastloss; return its stdout.

    For anything that could change the state of the test process or hang it (a fresh
    import, environment variables, fork, resource limits): a hang fails the test.
    """
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("OMP_NUM_THREADS", "FASTLOSS_ISA")}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                            cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def loss_modules():
    """The modules of fastloss whose losses call the kernels (each holds the kernel module
    as ``kernels``): where a test swaps in the kernels of another ISA level."""
    return sorted({sys.modules[type(fastloss.get(name)).__module__]
                   for name in fastloss.available()}, key=lambda module: module.__name__)


def kernel_modules():
    """Every kernel module built here and runnable on this CPU, by ISA level."""
    modules = {}
    for level in _dispatch.supported_levels():
        try:
            modules[level] = importlib.import_module(f"fastloss._kernels_{level}")
        except ImportError:
            continue
    return modules
