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
