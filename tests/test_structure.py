"""The structure that keeps the layers in step: one kernel table, dispatch that never
falls through silently, kernel modules that belong to this package, and losses that
rebuild through their constructor."""
import copy
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch, _pointwise, _ratio, _rows, _source_hash
from fastloss._dispatch import kernels

PACKAGE_DIR = Path(fl.__file__).resolve().parent


def every_loss():
    return [fl.get(name) for name in fl.available()]


def test_every_kernel_id_is_an_entry_of_the_kernels_table():
    tables = {_pointwise.PointwiseLoss: kernels.PointwiseKernel, _rows.RowLoss: kernels.RowKernel,
              _ratio.RatioLoss: kernels.RatioKernel}
    variants = [fl.BinaryCrossEntropy(from_logits=True), fl.BinaryCrossEntropy(),
                fl.CategoricalCrossEntropy(from_logits=True),
                fl.SparseCategoricalCrossEntropy(from_logits=True),
                fl.KLDivergence(from_logits=True), _pointwise.PointwiseKLDivergence(),
                fl.BinaryFocalCrossEntropy(from_logits=True), fl.Poisson(log_input=False),
                fl.CategoricalFocalCrossEntropy(from_logits=True),
                _pointwise.PointwiseKLDivergence(log_target=True)]
    seen = set()
    for loss in every_loss() + variants:
        table = next(t for base, t in tables.items() if isinstance(loss, base))
        assert loss._kernel_id in list(table), (loss, loss._kernel_id)
        seen.add((table, int(loss._kernel_id)))
    # and every entry of the tables is used by some loss
    assert seen == {(t, int(k)) for t in tables.values() for k in t}


def test_flag_bits_are_distinct_powers_of_two():
    bits = [int(flag) for flag in kernels.Flag]
    assert len(set(bits)) == len(bits)
    assert all(bit > 0 and bit & (bit - 1) == 0 for bit in bits)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_unknown_kernel_id_is_an_error_not_a_silent_zero(dtype):
    x = np.ones((4, 3), dtype=dtype)
    grad = np.full_like(x, 7.0)
    total, flags = kernels.pointwise(999, kernels.pointwise_parameters(), x, x, grad, None,
                                     None, 1, None, True, 1.0, 1, 1)
    assert flags & kernels.Flag.UNKNOWN_KERNEL and total == 0
    total, flags = kernels.dense_rows(999, x, x, None, grad, None, None, 0.0, 0.0, False,
                                      0.0, 1.0, 1, 8)
    assert flags & kernels.Flag.UNKNOWN_KERNEL
    labels = np.zeros(4, dtype=np.int64)
    total, flags, _, _ = kernels.sparse_rows(999, x, labels, None, grad, None, None, 0.0,
                                             0.0, None, 1.0, 1, False, 1.0, 1, 8)
    assert flags & kernels.Flag.UNKNOWN_KERNEL
    total, flags = kernels.ratio(999, 0.5, 0.5, x, x, grad, None, None, 4, 1, 1.0, 1, 2)
    assert flags & kernels.Flag.UNKNOWN_KERNEL and total == 0
    # a row kernel asked of the other dispatch is unknown there too
    _, flags = kernels.dense_rows(int(kernels.RowKernel.MULTI_MARGIN), x, x, None, grad,
                                  None, None, 0.0, 0.0, False, 0.0, 1.0, 1, 8)
    assert flags & kernels.Flag.UNKNOWN_KERNEL
    indices = np.zeros((4, 3), dtype=np.int64)
    for kernel in (999, int(kernels.RowKernel.MULTI_MARGIN)):
        total, flags = kernels.label_matrix_rows(kernel, x, indices, grad, None, None, 1.0,
                                                 1, 4)
        assert flags & kernels.Flag.UNKNOWN_KERNEL and total == 0
    _, flags, _, _ = kernels.sparse_rows(int(kernels.RowKernel.MULTILABEL_MARGIN), x,
                                         labels, None, grad, None, None, 0.0, 0.0, None,
                                         1.0, 1, False, 1.0, 1, 8)
    assert flags & kernels.Flag.UNKNOWN_KERNEL


def test_a_loss_whose_kernel_is_unknown_raises(monkeypatch):
    loss = fl.MeanSquaredError()
    monkeypatch.setattr(loss, "_kernel_id", 999)
    with pytest.raises(RuntimeError, match="kernel 999 is unknown"):
        loss(np.ones(10), np.zeros(10))


# -- pickle and copy ----------------------------------------------------------------------

WEIGHTED = [
    fl.BinaryCrossEntropy(from_logits=True, pos_weight=[1.0, 2.0, 0.5]),
    fl.CategoricalCrossEntropy(from_logits=True, class_weight=[1.0, 2.0, 0.5]),
    fl.SparseCategoricalCrossEntropy(from_logits=True, class_weight=[1.0, 2.0, 0.5]),
    fl.MultiMargin(class_weight=[1.0, 2.0, 0.5]),
]


@pytest.mark.parametrize("clone", [lambda loss: pickle.loads(pickle.dumps(loss)),
                                   copy.deepcopy, copy.copy],
                         ids=["pickle", "deepcopy", "copy"])
@pytest.mark.parametrize("loss", every_loss() + WEIGHTED, ids=repr)
def test_pickle_and_copy_rebuild_through_the_constructor(loss, clone, rng):
    again = clone(loss)
    assert type(again) is type(loss) and again == loss and again is not loss
    for name in ("class_weight", "pos_weight"):
        weights = getattr(again, name, None)
        if weights is not None:
            assert not weights.flags.writeable
            with pytest.raises(ValueError):
                weights[0] = 10.0
            assert weights is not getattr(loss, name)


@pytest.mark.parametrize("loss", WEIGHTED, ids=repr)
def test_a_copied_loss_gives_float32_and_float64_results_that_agree(loss, rng):
    again = pickle.loads(pickle.dumps(loss))
    x = rng.normal(size=(8, 3))
    if isinstance(loss, (fl.BinaryCrossEntropy, fl.CategoricalCrossEntropy)):
        y = rng.uniform(size=(8, 3))
    else:
        y = rng.integers(0, 3, size=8)
    assert again(x.astype(np.float32), y) == pytest.approx(again(x, y), rel=1e-5)
    assert again(x, y) == loss(x, y)


# -- the kernel modules belong to this package -----------------------------------------

def test_show_config_names_the_kernel_file():
    info = fl.config()
    assert info["kernel_file"] == kernels.__file__
    assert Path(info["kernel_file"]).resolve().parent == PACKAGE_DIR
    assert info["source_hash"] == _source_hash.kernel_source_hash()


def test_a_kernel_module_built_from_other_sources_is_refused():
    class Stale:
        __file__ = "/somewhere/fastloss/_kernels_baseline.so"

        @staticmethod
        def build_info():
            return {"source_hash": "0123456789abcdef"}

    with pytest.raises(ImportError, match="built from other kernel sources"):
        _dispatch._checked(Stale)
    assert _dispatch._checked(kernels) is kernels


def test_a_package_whose_kernel_sources_changed_refuses_its_old_modules(tmp_path):
    """A checkout whose .pxi changed after the build (so its modules lack the change)
    fails at import with a message saying to rebuild, instead of running old kernels."""
    copy_dir = tmp_path / "fastloss"
    shutil.copytree(PACKAGE_DIR, copy_dir,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "_tools"))
    with open(copy_dir / "_pointwise.pxi", "a") as fh:
        fh.write("\n# a change made after the build\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTLOSS_ISA"}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import fastloss"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "built from other kernel sources" in result.stderr
    assert "rebuild" in result.stderr
