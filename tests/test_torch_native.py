"""fastloss.torch's C++ fast path (fastloss/_torch_native.cpp): the same bits as the
Python path, torch's values and gradients, the same autograd behaviour (retained graphs,
double backward, in-place edits, upstream gradients), and the calls it hands back to
the Python path."""
import os
import subprocess
import sys
import textwrap
import threading

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss as fl  # noqa: E402
import fastloss.torch as FL  # noqa: E402
from fastloss import _torch_extension  # noqa: E402

NATIVE_HOW = "fused value and gradient (eager, C++)"
PYTHON_HOW = "fused value and gradient (eager)"


@pytest.fixture(autouse=True)
def native():
    if _torch_extension._setting() == "0":
        pytest.skip("FASTLOSS_TORCH_EXTENSION=0")
    assert _torch_extension.module is not None, _torch_extension.status()
    return _torch_extension.module


def _rng():
    return torch.Generator().manual_seed(7)


def _logits(shape, dtype, scale=3.0):
    return (scale * torch.randn(shape, generator=_rng(), dtype=dtype)).requires_grad_()


def _probabilities(shape, dtype):
    return torch.rand(shape, generator=_rng(), dtype=dtype).clamp(0.02, 0.98)


def _labels(n, classes):
    return torch.randint(0, classes, (n,), generator=_rng())


# (function, keyword arguments, input(dtype), target(dtype), weight keyword and maker)
CASES = [
    ("mse_loss", {}, lambda d: _logits((6, 7), d), lambda d: _logits((6, 7), d).detach(), None),
    ("l1_loss", {}, lambda d: _logits((5, 3), d), lambda d: _logits((5, 3), d).detach(), None),
    ("huber_loss", {"delta": 0.7}, lambda d: _logits((33,), d),
     lambda d: _logits((33,), d, 1.0).detach(), None),
    ("smooth_l1_loss", {"beta": 0.5}, lambda d: _logits((4, 9), d),
     lambda d: _logits((4, 9), d, 1.0).detach(), None),
    ("smooth_l1_loss", {"beta": 0.0}, lambda d: _logits((4, 9), d),
     lambda d: _logits((4, 9), d, 1.0).detach(), None),
    ("binary_cross_entropy", {}, lambda d: _probabilities((8, 5), d).requires_grad_(),
     lambda d: _probabilities((8, 5), d).round(), None),
    ("binary_cross_entropy_with_logits", {}, lambda d: _logits((16, 5), d),
     lambda d: _probabilities((16, 5), d), None),
    ("binary_cross_entropy_with_logits", {}, lambda d: _logits((16, 5), d),
     lambda d: _probabilities((16, 5), d),
     ("pos_weight", lambda d: torch.linspace(0.5, 3.0, 5, dtype=d))),
    ("binary_cross_entropy_with_logits", {}, lambda d: _logits((16, 5), d),
     lambda d: _probabilities((16, 5), d), ("pos_weight", lambda d: torch.tensor([2.5], dtype=d))),
    ("poisson_nll_loss", {"log_input": True, "full": True}, lambda d: _logits((7, 3), d, 1.0),
     lambda d: torch.poisson(torch.full((7, 3), 3.0, dtype=d), generator=_rng()), None),
    ("soft_margin_loss", {}, lambda d: _logits((10,), d),
     lambda d: torch.randint(0, 2, (10,), generator=_rng()).to(d) * 2 - 1, None),
    ("hinge_embedding_loss", {"margin": 1.5}, lambda d: _logits((10,), d),
     lambda d: torch.randint(0, 2, (10,), generator=_rng()).to(d) * 2 - 1, None),
    ("kl_div", {"reduction": "batchmean"}, lambda d: torch.log_softmax(
        _logits((12, 5), d).detach(), 1).requires_grad_(),
     lambda d: torch.softmax(_logits((12, 5), d, 1.0).detach(), 1), None),
    ("kl_div", {"reduction": "sum", "log_target": True}, lambda d: torch.log_softmax(
        _logits((12, 5), d).detach(), 1).requires_grad_(),
     lambda d: torch.log_softmax(_logits((12, 5), d, 1.0).detach(), 1), None),
    ("cross_entropy", {}, lambda d: _logits((64, 10), d), lambda d: _labels(64, 10), None),
    ("cross_entropy", {"label_smoothing": 0.1, "ignore_index": 3},
     lambda d: _logits((40, 7), d), lambda d: _labels(40, 7), None),
    ("cross_entropy", {"ignore_index": 2}, lambda d: _logits((40, 7), d),
     lambda d: _labels(40, 7), ("weight", lambda d: torch.linspace(0.2, 2.0, 7, dtype=d))),
    ("cross_entropy", {"label_smoothing": 0.25}, lambda d: _logits((3, 1), d),
     lambda d: torch.zeros(3, dtype=torch.long), None),
    ("cross_entropy", {"label_smoothing": 0.1}, lambda d: _logits((20, 6), d),
     lambda d: torch.softmax(_logits((20, 6), d, 1.0).detach(), 1),
     ("weight", lambda d: torch.linspace(0.5, 1.5, 6, dtype=d))),
    ("multilabel_soft_margin_loss", {}, lambda d: _logits((16, 5), d),
     lambda d: torch.randint(0, 2, (16, 5), generator=_rng()).to(d),
     ("weight", lambda d: torch.linspace(0.5, 1.5, 5, dtype=d))),
    ("multilabel_soft_margin_loss", {}, lambda d: _logits((16, 5), d),
     lambda d: torch.randint(0, 2, (16, 5), generator=_rng()).to(d), None),
]


def case_id(case):
    name, kwargs, _, _, weight = case
    extra = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({extra}{',' + weight[0] if weight else ''})"


def _call(case, dtype, reduction):
    name, kwargs, make_input, make_target, weight = case
    x, t = make_input(dtype), make_target(dtype)
    kwargs = dict({"reduction": reduction}, **kwargs)   # kl_div: its own reductions
    if weight:
        kwargs[weight[0]] = weight[1](dtype)
    return name, x, t, kwargs


def _value_and_grad(function, x, t, kwargs, upstream=None):
    x = x.detach().requires_grad_()
    value = function(x, t, **kwargs)
    value.backward(upstream if upstream is not None else None)
    return value.detach(), x.grad


def _upstream(value):
    return None if value.ndim == 0 else torch.linspace(0.5, 1.5, value.numel(),
                                                       dtype=value.dtype).reshape(value.shape)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_native_path_gives_the_python_paths_bits_and_torchs_results(case, dtype, reduction,
                                                                    monkeypatch):
    name, x, t, kwargs = _call(case, dtype, reduction)
    report = FL.explain(getattr(FL, name), x, t, **kwargs)
    assert [entry[1:] for entry in report] == [("fastloss", NATIVE_HOW)]
    probe = report.result
    upstream = _upstream(probe)
    native = _value_and_grad(getattr(FL, name), x, t, kwargs, upstream)
    theirs = _value_and_grad(getattr(F, name), x, t, kwargs, upstream)
    with monkeypatch.context() as patch:
        patch.setattr(_torch_extension, "module", None)
        patch.setattr(_torch_extension, "_state", "disabled")
        report = FL.explain(getattr(FL, name), x, t, **kwargs)
        assert [entry[1:] for entry in report] == [("fastloss", PYTHON_HOW)]
        python = _value_and_grad(getattr(FL, name), x, t, kwargs, upstream)
    for ours, other in zip(native, python):
        assert ours.dtype == other.dtype and ours.shape == other.shape
        assert torch.equal(ours, other)
    tolerance = dict(rtol=2e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10,
                                                                                 atol=1e-12)
    torch.testing.assert_close(native[0], theirs[0], **tolerance)
    torch.testing.assert_close(native[1], theirs[1], **tolerance)


def test_modules_take_the_native_path():
    x, t = _logits((32, 5), torch.float32), _labels(32, 5)
    report = FL.explain(FL.CrossEntropyLoss(label_smoothing=0.05), x, t)
    assert [entry[1:] for entry in report] == [("fastloss", NATIVE_HOW)]


def test_no_gradient_wanted_computes_the_value_alone():
    x, t = _logits((20, 4), torch.float64), _labels(20, 4)
    with torch.no_grad():
        value = FL.cross_entropy(x, t)
    assert value.grad_fn is None and not value.requires_grad
    torch.testing.assert_close(value, F.cross_entropy(x.detach(), t), rtol=1e-12, atol=0)
    value = FL.cross_entropy(x.detach(), t)
    assert value.grad_fn is None


def test_a_second_backward_recomputes_the_gradient():
    x, t = _logits((12, 6), torch.float64), _labels(12, 6)
    value = FL.cross_entropy(x, t, label_smoothing=0.2)
    (first,) = torch.autograd.grad(value, x, retain_graph=True)
    first_copy = first.clone()
    first.zero_()      # the handed-out gradient is the caller's: editing it changes nothing
    (second,) = torch.autograd.grad(value, x)
    assert torch.equal(second, first_copy)


def test_double_backward_differentiates_torchs_formula():
    x, t = _logits((9, 4), torch.float64), _probabilities((9, 4), torch.float64)
    value = FL.binary_cross_entropy_with_logits(x, t)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    (hessian_row,) = torch.autograd.grad(grad.sum(), x)
    y = x.detach().requires_grad_()
    (grad_t,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(y, t), y,
                                    create_graph=True)
    (hessian_row_t,) = torch.autograd.grad(grad_t.sum(), y)
    torch.testing.assert_close(grad, grad_t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(hessian_row, hessian_row_t, rtol=1e-12, atol=1e-15)


def test_double_backward_with_a_class_weight():
    x, t = _logits((9, 4), torch.float64), _labels(9, 4)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad(FL.cross_entropy(x, t, weight=w), x, create_graph=True)
    y = x.detach().requires_grad_()
    (grad_t,) = torch.autograd.grad(F.cross_entropy(y, t, weight=w), y, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad((grad ** 2).sum(), x)[0],
                               torch.autograd.grad((grad_t ** 2).sum(), y)[0],
                               rtol=1e-10, atol=1e-13)


def test_an_input_modified_in_place_raises_where_torch_would():
    # mse_loss's backward reads the input in torch too: torch's own error
    x, t = _logits((5, 3), torch.float32), _logits((5, 3), torch.float32).detach()
    y = x.detach().clone().requires_grad_()
    h = y * 1.0
    value = FL.mse_loss(h, t)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace operation"):
        value.backward()
    # cross_entropy's does not: the first backward works (the gradient from forward),
    # a later one says why fastloss cannot answer
    h = y * 1.0
    value = FL.cross_entropy(h, _labels(5, 3))
    expected = torch.autograd.grad(F.cross_entropy(y * 1.0, _labels(5, 3)), y)[0]
    h.add_(1.0)
    (grad,) = torch.autograd.grad(value, y, retain_graph=True)
    torch.testing.assert_close(grad, expected)
    with pytest.raises(RuntimeError, match="fastloss.torch: the input of this loss was "
                                           "modified by an inplace operation"):
        torch.autograd.grad(value, y)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_the_same_bits(threads, set_threads, parallel_always):
    x, t = _logits((300, 40), torch.float32), _labels(300, 40)
    set_threads(1)
    expected = _value_and_grad(FL.cross_entropy, x, t, {})
    set_threads(threads)
    got = _value_and_grad(FL.cross_entropy, x, t, {})
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_calls_the_native_path_does_not_read_go_the_python_way():
    x = _logits((6, 5), torch.float32)
    cases = [
        # a large input: the Python path reuses its gradient buffer
        (FL.mse_loss, (_logits((600, 600), torch.float32),
                       torch.zeros(600, 600)), {}, "fastloss", PYTHON_HOW),
        # a strided input, an integer target, a half-precision input
        (FL.mse_loss, (x.t(), torch.zeros(5, 6)), {}, "fastloss", None),
        (FL.soft_margin_loss, (x, torch.ones(6, 5, dtype=torch.int64)), {}, "fastloss",
         PYTHON_HOW),
        (FL.cross_entropy, (x, _labels(6, 5).to(torch.uint8)), {}, "torch", None),
        (FL.cross_entropy, (x.bfloat16(), _labels(6, 5)), {}, "fastloss", None),
        # a target that needs a gradient, a strided weight
        (FL.mse_loss, (x, x.detach().clone().requires_grad_()), {}, "torch", None),
        (FL.cross_entropy, (x, _labels(6, 5)), {"weight": torch.ones(10)[::2]}, "fastloss",
         PYTHON_HOW),
        # a 4-D input (spatial cross-entropy) and an unbatched one
        (FL.cross_entropy, (_logits((2, 5, 3, 3), torch.float32),
                            torch.zeros(2, 3, 3, dtype=torch.long)), {}, "fastloss", None),
        (FL.cross_entropy, (_logits((5,), torch.float32), torch.tensor(1)), {}, "fastloss",
         None),
    ]
    for function, args, kwargs, ran, how in cases:
        report = FL.explain(function, *args, **kwargs)
        assert len(report) == 1 and report[0][1] == ran, (function, report)
        assert report[0][2] != NATIVE_HOW, report
        if how is not None:
            assert report[0][2] == how, report


def test_bad_values_get_the_python_paths_answer():
    x = _logits((6, 5), torch.float32)
    with pytest.raises(IndexError):   # torch's error for a label out of range
        FL.cross_entropy(x, torch.tensor([0, 1, 2, 3, 4, 5]))
    p = _probabilities((6, 5), torch.float32)
    p[2, 3] = float("nan")
    with pytest.raises(RuntimeError, match="between 0 and 1"):   # torch's own
        FL.binary_cross_entropy(p, torch.zeros(6, 5))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        FL.binary_cross_entropy(p, torch.zeros(6, 5), reduction="none")
    with pytest.raises(ValueError):
        FL.mse_loss(x, torch.zeros(6, 5), reduction="average")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_float32_value_beyond_float32_range_is_inf_as_on_the_python_path(reduction,
                                                                           monkeypatch):
    x = torch.full((4, 3), -3.0e38, requires_grad=True)
    t = torch.ones(4, 3)
    value = FL.binary_cross_entropy_with_logits(x, t, reduction=reduction)
    with monkeypatch.context() as patch:
        patch.setattr(_torch_extension, "module", None)
        patch.setattr(_torch_extension, "_state", "disabled")
        expected = FL.binary_cross_entropy_with_logits(x, t, reduction=reduction)
    assert torch.equal(value, expected)
    if reduction == "sum":   # 12 terms of 3e38: beyond float32's range
        assert value.item() == float("inf")
    else:
        assert value.item() == pytest.approx(3.0e38, rel=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_concurrent_calls_from_threads():
    x, t = _logits((64, 10), torch.float32), _labels(64, 10)
    expected = _value_and_grad(FL.cross_entropy, x, t, {})
    results, errors = [], []

    def work():
        try:
            for _ in range(200):
                results.append(_value_and_grad(FL.cross_entropy, x, t, {}))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 800
    assert all(torch.equal(v, expected[0]) and torch.equal(g, expected[1])
               for v, g in results)


def _run_script(source, setting, **env):
    env = dict(os.environ, FASTLOSS_TORCH_EXTENSION=setting, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("setting", ["auto", "wait", "0"])
def test_the_setting_chooses_when_the_extension_loads(setting):
    # the build is cached (this session loaded it), so loading takes about a second
    done = _run_script("""
        import torch, fastloss.torch as FL
        from fastloss import _torch_extension as E
        x = torch.randn(8, 3, requires_grad=True)
        t = torch.zeros(8, dtype=torch.long)
        first = FL.explain(FL.cross_entropy, x, t)[0][2]
        E._done.wait(300)
        second = FL.explain(FL.cross_entropy, x, t)[0][2]
        print(first, "|", second, "|", E.status()[0])
    """, setting)
    assert done.returncode == 0, done.stderr
    first, second, state = (part.strip() for part in done.stdout.strip().split("|"))
    expected = {"auto": (PYTHON_HOW, NATIVE_HOW, "ready"),
                "wait": (NATIVE_HOW, NATIVE_HOW, "ready"),
                "0": (PYTHON_HOW, PYTHON_HOW, "disabled")}[setting]
    assert (first, second, state) == expected


def test_a_failed_build_leaves_the_python_path(tmp_path):
    done = _run_script(f"""
        import torch, fastloss.torch as FL
        from fastloss import _torch_extension as E
        E._name = lambda: "fastloss_torch_native_broken"
        E._HERE = {str(tmp_path)!r}   # no sources there
        assert not E.build(wait=True)
        state, reason = E.status()
        x = torch.randn(8, 3, requires_grad=True)
        loss = FL.cross_entropy(x, torch.zeros(8, dtype=torch.long))
        loss.backward()
        print(state, "|", reason, "|", FL.explain(FL.cross_entropy, x, torch.zeros(8, dtype=torch.long))[0][2])
    """, "auto", TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    state, reason, how = (part.strip() for part in done.stdout.strip().split("|"))
    assert state == "failed" and reason and how == PYTHON_HOW
    assert not list((tmp_path / "cache").glob("*.build-*"))   # its build directory is gone


def test_the_cache_holds_one_library_and_no_build_directory():
    from torch.utils import cpp_extension
    root = cpp_extension.get_default_build_root()
    name = _torch_extension._name()
    assert os.path.isfile(os.path.join(root, name + _torch_extension._LIBRARY_SUFFIX))
    assert not [entry for entry in os.listdir(root) if entry.startswith(name + ".build-")]
    loaded = _torch_extension.module.__file__
    # loaded from the cache, or (built by this process) from its removed build directory
    assert not os.path.exists(loaded) or os.path.samefile(
        loaded, os.path.join(root, name + _torch_extension._LIBRARY_SUFFIX))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_after_loading_runs_the_native_path():
    x, t = _logits((32, 6), torch.float32), _labels(32, 6)
    expected = _value_and_grad(FL.cross_entropy, x, t, {})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: same bits, through the C++ path, serial kernels
        status = 1
        try:
            got = _value_and_grad(FL.cross_entropy, x, t, {})
            how = FL.explain(FL.cross_entropy, x, t)[0][2]
            status = 0 if (how == NATIVE_HOW and all(
                torch.equal(a, b) for a, b in zip(got, expected))) else 3
        finally:
            os.write(write, bytes([status]))
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"\x00"
