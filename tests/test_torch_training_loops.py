"""Whole training loops (benchmarks/training_loops.py, at a small scale) give the same
losses with fastloss.torch as with torch.nn.functional, eager, compiled and under
bfloat16 autocast, with the fastloss kernels running."""
import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss.torch as FL  # noqa: E402

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "training_loops.py"
if not _PATH.exists():     # pragma: no cover - tests run outside the source tree
    pytest.skip("benchmarks/training_loops.py is not here", allow_module_level=True)
sys.path.insert(0, str(_PATH.parent))    # its helper module, timing.py
_spec = importlib.util.spec_from_file_location("training_loops", _PATH)
loops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loops)

SCALE = 0.1
STEPS = 3


@pytest.mark.parametrize("form", loops.FORMS)
@pytest.mark.parametrize("name", list(loops.LOOPS))
def test_training_loop_losses_equal_torchs(name, form):
    loop = loops.LOOPS[name]
    kwargs = dict(scale=SCALE, backend="aot_eager" if form == "compiled" else "inductor")
    torch.compiler.reset()
    report = FL.explain(loops.run_losses, loop, FL, form, STEPS, **kwargs)
    ours = report.result
    theirs = loops.run_losses(loop, F, form, STEPS, **kwargs)
    tolerance = dict(rtol=2e-2, atol=2e-2) if form == "bf16_autocast" else dict(rtol=1e-5,
                                                                             atol=1e-6)
    torch.testing.assert_close(ours, theirs, **tolerance)
    assert ours[-1] < ours[0]                  # it trains
    assert report and report.fell_back == []   # every loss call ran in fastloss
