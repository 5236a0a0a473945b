"""Shared fixtures of the fastloss test suite."""
import numpy as np
import pytest

import fastloss
from fastloss import _threads


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

    The kernels only split work larger than ``PARALLEL_MIN_WORK``; lowering it lets small
    arrays exercise the OpenMP chunking instead of needing huge inputs.
    """
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
