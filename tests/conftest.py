"""Shared fixtures of the fastloss test suite."""

import numpy as np
import pytest

import fastloss
from fastloss import _threads
from helpers import kernel_modules


@pytest.fixture
def rng():
    """A fresh, seeded generator: every test sees the same data on every run."""
    return np.random.default_rng(20240611)


@pytest.fixture
def set_threads():
    """Call ``set_threads(n)`` to run the kernels with n threads; restored afterwards."""
    saved = fastloss.get_num_threads()
    yield fastloss.set_num_threads
    fastloss.set_num_threads(saved)


@pytest.fixture
def parallel_always(monkeypatch):
    """Make every call, however small, take the threaded path (with >= 2 threads set).

    The kernels only split work larger than ``PARALLEL_MIN_WORK`` into blocks of about
    half of it; lowering both lets small arrays exercise the OpenMP blocks instead of
    needing huge inputs.
    """
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    modules = list(kernel_modules().values())
    saved = [module.set_min_block_work(16) for module in modules]
    yield
    for module, work in zip(modules, saved):
        module.set_min_block_work(work)


@pytest.fixture(scope="session", autouse=True)
def torch_extension():
    """fastloss.torch's C++ fast path, loaded before the first test (built against the
    installed torch on a fresh machine: about a minute, then cached), so that every test
    sees one path whatever ran before it: by default an eager call would start the
    build in the background and switch paths when it is done.  None without torch, or
    with FASTLOSS_TORCH_EXTENSION=0; a failed build is test_torch_native's failure."""
    try:
        import torch  # noqa: F401
    except ImportError:
        yield None
        return
    from fastloss import _torch_extension
    if _torch_extension._setting() == "0":
        yield None
        return
    _torch_extension.build(wait=True)
    yield _torch_extension.module


@pytest.fixture
def python_path(monkeypatch):
    """fastloss.torch without its C++ fast path: every eager call takes the Python path
    (the autograd.Function around NumPy views)."""
    from fastloss import _torch_extension
    monkeypatch.setattr(_torch_extension, "module", None)
    monkeypatch.setattr(_torch_extension, "_state", "disabled")
