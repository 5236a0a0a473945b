"""Helpers shared by the test modules (imported as ``helpers``: pytest puts this folder
on sys.path)."""
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fastloss
from fastloss import _dispatch

PACKAGE_DIR = Path(fastloss.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent


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
