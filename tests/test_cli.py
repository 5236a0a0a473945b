"""The command line: ``python -m fastloss check`` and ``python -m fastloss bench``.

No timing is asserted: only that the commands run, report what they should and fail
when they should.
"""
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl
from fastloss._tools import bench as _bench, check as _check, reference as _reference
from fastloss.__main__ import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
# the fastloss this test imported, also for the child processes
PACKAGE_ROOT = str(Path(fl.__file__).resolve().parent.parent)


def run_cli(*args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT,
                                                      env.get("PYTHONPATH")]))
    # run beside that fastloss: "-m" puts the working directory first on sys.path, and a
    # source checkout there has no compiled kernels
    return subprocess.run([sys.executable, "-m", "fastloss", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=PACKAGE_ROOT)


# ----------------------------------------------------------------------------------
# check


def test_check_passes_for_every_loss():
    proc = run_cli("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = re.search(r"^summary: (\d+) ok, (\d+) failed of (\d+) losses",
                        proc.stdout, re.MULTILINE)
    assert summary, proc.stdout
    ok, failed, total = map(int, summary.groups())
    assert (ok, failed, total) == (len(fl.available()), 0, len(fl.available()))
    for name in fl.available():
        assert re.search(rf"^{name} .*\b(ok|skipped)", proc.stdout, re.MULTILINE), name


def _mse_with_wrong_gradient(monkeypatch):
    """MeanSquaredError.value_and_grad returning 1 % too large a gradient."""
    original = fl.MeanSquaredError.value_and_grad

    def value_and_grad(self, *args, **kwargs):
        value, grad = original(self, *args, **kwargs)
        grad *= 1.01
        return value, grad
    monkeypatch.setattr(fl.MeanSquaredError, "value_and_grad", value_and_grad)


def test_check_reports_a_wrong_gradient(monkeypatch):
    _mse_with_wrong_gradient(monkeypatch)
    report = _check.check_loss("mse")
    assert not report.ok
    failed = {c.what for c in report.failures}
    assert "finite differences" in failed
    assert "NumPy reference grad" in failed
    assert "grad() vs value_and_grad" in failed          # grad() itself is still right
    # the value is untouched: only gradient comparisons fail
    assert all(not c.what.endswith("value") for c in report.failures)
    assert _check.check_loss("mae").ok


def test_check_command_exits_non_zero_on_failure(monkeypatch):
    _mse_with_wrong_gradient(monkeypatch)
    out = io.StringIO()
    assert _check.run(["mse", "huber"], file=out, use_torch=False) == 1
    text = out.getvalue()
    assert re.search(r"^mse .*FAIL$", text, re.MULTILINE)
    assert re.search(r"^huber .*ok$", text, re.MULTILINE)
    assert re.search(r"^summary: 1 ok, 1 failed of 2 losses .*FAILED: mse$",
                     text, re.MULTILINE)


def test_check_reports_a_crashing_loss(monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(fl.Huber, "__call__", broken)
    report = _check.check_loss("huber")
    assert not report.ok
    assert any("kernel exploded" in c.note for c in report.failures)


def test_check_fails_a_loss_without_reference(monkeypatch):
    report = _check.check_loss("no_such_loss")
    assert not report.ok
    assert "no reference implementation" in report.failures[0].note
    # and the command fails for a registered loss whose reference is missing
    monkeypatch.delitem(_reference.REFERENCES, "mse")
    out = io.StringIO()
    assert _check.run(["mse", "mae"], file=out, use_torch=False) == 1
    assert "1 ok, 1 failed" in out.getvalue() and "FAILED: mse" in out.getvalue()


def test_relative_error():
    assert _check.relative_error([1.0, 2.0], [1.0, 2.0]) == 0
    assert _check.relative_error([1.0, 2.1], [1.0, 2.0]) == pytest.approx(0.05)
    assert _check.relative_error([1.0, np.nan], [1.0, 2.0]) == np.inf
    assert _check.relative_error([np.nan], [np.nan]) == 0
    assert _check.relative_error([1.0], [1.0, 1.0]) == np.inf


def test_check_rejects_an_unknown_loss():
    out = io.StringIO()
    assert _check.run(["nope"], file=out) == 2
    assert "unknown loss 'nope'" in out.getvalue()


# ----------------------------------------------------------------------------------
# bench


def test_bench_quick_json_and_markdown(tmp_path):
    json_path, md_path, png_path = (tmp_path / n for n in ("r.json", "r.md", "r.png"))
    proc = run_cli("bench", "--quick", "--sizes", "small", "--scale", "0.25",
                   "--json", str(json_path), "--markdown", str(md_path),
                   "--plot", str(png_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "memory bandwidth:" in proc.stdout
    if HAS_MATPLOTLIB:
        assert png_path.stat().st_size > 0
    else:
        assert "--plot needs matplotlib" in proc.stderr and not png_path.exists()

    document = json.loads(json_path.read_text())
    assert document["fastloss_version"] == fl.__version__
    assert document["dtypes"] == ["float32"]
    threads = document["threads"]
    assert threads == sorted({1, fl.get_num_threads()})
    assert document["bandwidth"]["add_bytes_per_second"] > 0
    benchmarked = [name for name in fl.available() if name in _reference.REFERENCES]
    results = document["results"]
    assert sorted(r["loss"] for r in results) == sorted(benchmarked)   # one small size each
    peers = [p for p in ("torch", "numpy") if p == "numpy" or HAS_TORCH]
    for r in results:
        assert r["dtype"] == "float32" and r["size_class"] == "small"
        assert r["elements"] == int(np.prod(r["shape"])) > 0
        assert set(r["seconds"]) >= {"fastloss", *peers}
        assert all(s > 0 for s in r["seconds"].values())
        assert set(r["fastloss_seconds_by_threads"]) == {str(n) for n in threads}
        for peer in peers:
            assert r["speedup"][peer] == pytest.approx(r["seconds"][peer]
                                                       / r["seconds"]["fastloss"])
        assert r["bandwidth_fraction"] is None          # only large cases have one
    # the shipped performance targets are evaluated on the float32 cases
    assert document["targets"], "the shipped targets (fastloss/_tools/targets.json) were not found"
    for evaluation in document["targets"]:
        keys = {"loss", "size", "metric", "target", "measured", "met"}
        if evaluation["metric"] == "vs_best":         # and which peer was the fastest
            keys.add("peer")
            assert evaluation["peer"] in peers + ["jax"]
        assert set(evaluation) == keys
        assert evaluation["met"] in (True, False, None)
    assert "performance targets (targets.json" in proc.stdout

    if HAS_TORCH:   # the adapter's small heads (--quick), with their targets
        adapter = {entry["case"]: entry for entry in document["adapter"]}
        assert {"CE 64x10", "mse 2048", "BCE-logits 256x50", "eager overhead CE 64x10",
                "eager overhead mse 2048"} <= set(adapter)
        assert adapter["CE 64x10"]["ratio"] == pytest.approx(
            adapter["CE 64x10"]["seconds"]["torch"] / adapter["CE 64x10"]["seconds"]["fastloss"])
        assert all(entry["met"] in (True, False) for entry in adapter.values())
        assert "PyTorch adapter: fastloss.torch vs torch.nn.functional" in proc.stdout
    else:
        assert document["adapter"] == []

    markdown = md_path.read_text()
    assert "| loss | size |" in markdown and "### float32" in markdown
    for r in results:
        assert r["loss"] in markdown


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--dtype", "float16"]) == 2
    assert main(["bench", "--sizes", "huge"]) == 2
    assert main(["bench", "--losses", "nope"]) == 2
    assert main(["bench", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "--sizes" in err and "unknown loss 'nope'" in err


def test_bench_cases_follow_the_registry():
    cases = _bench.make_cases(["mse", "huber"], ["small", "large"], ["float32", "float64"],
                              scale=0.5)
    assert [(c.loss, c.shape, str(c.dtype)) for c in cases] == [
        ("mse", (128,), "float32"), ("mse", (8388608,), "float32"),
        ("huber", (128,), "float32"), ("huber", (8388608,), "float32"),
        ("mse", (128,), "float64"), ("mse", (8388608,), "float64"),
        ("huber", (128,), "float64"), ("huber", (8388608,), "float64")]
    # a registered loss without reference inputs is left out, not an error
    assert _bench.make_cases(["not_a_loss"]) == []


def test_measure_returns_best_time_per_call():
    calls = {"sleep": (_bench._no_setup, lambda: __import__("time").sleep(0.001))}
    seconds = _bench.measure(calls, _bench.Timing(rounds=2, round_time=0.004,
                                                  max_seconds=0.05, min_rounds=1))
    assert seconds["sleep"] >= 0.001


def test_targets_evaluation():
    case = _bench.Case("mse", (256,), "small", "float32")
    result = _bench.Result(case, {"fastloss[1t]": 4e-6, "fastloss[2t]": 2e-6,
                                  "torch": 4e-5, "numpy": 5e-6}, [1, 2], 3 * 1024, 1e10)
    targets = {("mse", "256"): {"max_us": 2.5, "vs_torch": 10.0},
               ("pointwise", "small"): {"vs_numpy": 3.0, "thread_speedup": 1.5},
               ("*", "*"): {"vs_best": 1.5, "vs_jax": 2.0, "vs_torch_compile": 2.0},
               ("huber", "*"): {"vs_best": 100.0},
               ("*", "large"): {"bandwidth_fraction": 0.8}}
    evaluations = _bench.evaluate_targets([result], targets)
    verdicts = {e["metric"]: (e["measured"], e["met"]) for e in evaluations}
    assert verdicts == {"max_us": (pytest.approx(2.0), True),
                        "vs_torch": (pytest.approx(20.0), True),
                        "vs_numpy": (pytest.approx(2.5), False),
                        "thread_speedup": (pytest.approx(2.0), True),
                        "vs_best": (pytest.approx(2.5), True),
                        "vs_jax": (None, None), "vs_torch_compile": (None, None)}
    best = next(e for e in evaluations if e["metric"] == "vs_best")
    assert best["peer"] == "numpy" and "(NumPy)" in _bench.describe_target(best)

    # a torch.compile time, the fastest peer, is what the best-peer target compares with
    compiled = _bench.Result(case, {**result.seconds, "torch_compile": 3e-6}, [1, 2],
                             3 * 1024, 1e10, compiled={"torch_compile": 12.0})
    verdicts = {e["metric"]: (e["measured"], e["met"], e.get("peer"))
                for e in _bench.evaluate_targets([compiled], targets)}
    assert verdicts["vs_torch_compile"] == (pytest.approx(1.5), False, None)
    assert verdicts["vs_best"] == (pytest.approx(1.5), True, "torch_compile")
    document = compiled.to_json()
    assert document["speedup"]["best"] == pytest.approx(1.5)
    assert document["seconds"]["torch_compile"] == 3e-6
    assert document["compile_seconds"] == {"torch_compile": 12.0}
    float64 = _bench.Result(_bench.Case("mse", (256,), "small", "float64"),
                            result.seconds, [1, 2], 6 * 1024, 1e10)
    assert _bench.evaluate_targets([float64], targets) == []


def test_shipped_targets_load():
    targets = _bench.load_targets()
    assert targets is not None, "fastloss/_tools/targets.json is missing"
    metrics = {metric for bounds in targets.values() for metric in bounds}
    assert metrics <= set(_bench.METRIC_TEXT)


def test_targets_reject_a_repeated_row(tmp_path):
    """A second row for the same loss and size would replace the first one's bounds."""
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"targets": [{"loss": "mse", "size": "256", "max_us": 2.0},
                                            {"loss": "mse", "size": "256",
                                             "vs_torch": 1.0}]}))
    with pytest.raises(ValueError, match="two rows for mse 256"):
        _bench.load_targets(path)


# ----------------------------------------------------------------------------------
# the torch.compile peer (--compile), compiled by the "eager" backend: the same
# calls, wrappers and checks as inductor's, without a compiler run


def test_compile_option_adds_the_torch_compile_peer():
    import argparse
    parser = argparse.ArgumentParser()
    _bench.add_arguments(parser)
    assert parser.parse_args(["--compile"]).compile
    assert not parser.parse_args([]).compile
    assert "torch_compile" not in _bench.available_peers()
    assert ("torch_compile" in _bench.available_peers(_bench.OPTIONAL_PEERS)) == HAS_TORCH


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_bench_torch_compile_column(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_bench, "TORCH_COMPILE_BACKEND", "eager")
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["bench", "--quick", "--sizes", "small", "--scale", "0.25", "--threads", "1",
                 "--losses", "mse,sparse_categorical_cross_entropy", "--no-adapter",
                 "--compile", "--json", str(json_path), "--markdown", str(md_path)]) == 0
    out = capsys.readouterr().out
    assert "torch.compile (eager, torch.func.grad_and_value" in out
    header = next(line for line in out.splitlines() if line.startswith("loss "))
    assert "torch.compile" in header and "×torch.compile" in header
    assert "compile time" in header

    document = json.loads(json_path.read_text())
    assert document["peers"]["torch_compile"] == "eager"
    for r in document["results"]:
        assert r["seconds"]["torch_compile"] > 0
        assert r["compile_seconds"]["torch_compile"] > 0
        assert r["speedup"]["torch_compile"] == pytest.approx(
            r["seconds"]["torch_compile"] / r["seconds"]["fastloss"])
        peers = {p: s for p, s in r["seconds"].items() if p != "fastloss"}
        assert r["speedup"]["best"] == pytest.approx(min(peers.values())
                                                     / r["seconds"]["fastloss"])
        assert r["skipped"] == {}
    best = [e for e in document["targets"] if e["metric"] == "vs_best"]
    assert len(best) == 2 and all(e["peer"] in document["peers"] for e in best)
    assert "| torch.compile |" in md_path.read_text()


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_compile_call_computes_the_value_and_gradient(monkeypatch):
    import torch
    monkeypatch.setattr(_bench, "TORCH_COMPILE_BACKEND", "eager")
    case = _bench.Case("sparse_categorical_cross_entropy", (6, 5), "small", "float32")
    pred, target = case.inputs()
    call = _bench.torch_compile_call(case, pred, target)
    assert call.compile_seconds > 0
    grad, value = call()
    expected_value, expected_grad = fl.get(case.loss, **case.params).value_and_grad(pred,
                                                                                   target)
    assert isinstance(grad, torch.Tensor)
    np.testing.assert_allclose(value.numpy(), expected_value, rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_compile_peer_skips_a_case_it_gets_wrong(monkeypatch):
    """A compiled version that disagrees with eager PyTorch is not timed, with the reason."""
    monkeypatch.setattr(_bench, "TORCH_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(_bench, "COMPILED_TOLERANCE", -1.0)     # every result "differs"
    case = _bench.Case("mse", (16,), "small", "float32")
    skipped = {}
    calls = _bench.make_calls(case, *case.inputs(), ["torch_compile"], [1], skipped)
    assert "torch_compile" not in calls
    assert skipped["torch_compile"].startswith("compiled value differs from eager PyTorch")

    def broken(*args, **kwargs):
        raise RuntimeError("no graph")
    monkeypatch.setattr(case.reference, "torch", broken)
    skipped.clear()
    _bench.make_calls(case, *case.inputs(), ["torch_compile"], [1], skipped)
    assert skipped["torch_compile"].startswith("does not compile")


# ----------------------------------------------------------------------------------
# the references the benchmark times


@pytest.mark.parametrize("name", sorted(_reference.REFERENCES))
def test_jax_value_matches_numpy_reference(name):
    """The JAX loss (run here on NumPy arrays) computes the benchmark's value."""
    ref = _reference.REFERENCES[name]
    pred, target = ref.inputs(np.random.default_rng(1), (6, 5), ref.bench_params)
    value, _ = _reference.numpy_value_and_grad(name, ref.bench_params)(pred, target)
    assert np.mean(ref.jax(np, pred, target)) == pytest.approx(value, rel=1e-12)
