"""PyTorch's own OpInfo samples of every adapted loss, through fastloss.torch: eager,
under torch.func (grad, vmap) and under torch.compile, equal to torch.nn.functional,
with the kernels running for the samples they take."""
import pytest

torch = pytest.importorskip("torch")
common = pytest.importorskip("torch.testing._internal.common_methods_invocations")
import torch.nn.functional as F  # noqa: E402

import fastloss.torch as FL  # noqa: E402

ADAPTED = ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "poisson_nll_loss", "soft_margin_loss",
           "hinge_embedding_loss", "cross_entropy", "nll_loss", "kl_div",
           "multi_margin_loss", "multilabel_soft_margin_loss", "multilabel_margin_loss"]
OPINFOS = {op.name.split(".")[-1]: op for op in common.op_db
           if op.name in {f"nn.functional.{name}" for name in ADAPTED}}


def samples(name, dtype, requires_grad=True):
    return list(OPINFOS[name].sample_inputs("cpu", dtype, requires_grad=requires_grad))


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9,
                                                                          atol=1e-10)


def _constants(sample):
    """The sample with its other tensors (target, weights) needing no gradient: the
    training case, which the kernels compute (a target requiring a gradient is
    torch's)."""
    def plain(a):
        return a.detach() if isinstance(a, torch.Tensor) else a
    return common.SampleInput(sample.input, args=tuple(plain(a) for a in sample.args),
                              kwargs={k: plain(a) for k, a in sample.kwargs.items()})


def outcome(fn, sample):
    """(value, gradient with respect to the input) or the exception type."""
    x = sample.input.detach().requires_grad_(sample.input.requires_grad)
    try:
        value = fn(x, *sample.args, **sample.kwargs)
        grad = None
        if x.requires_grad and value.requires_grad:
            upstream = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype)
            (grad,) = torch.autograd.grad((value * upstream.reshape(value.shape)).sum(), x,
                                          allow_unused=True)
        return value.detach(), grad
    except Exception as error:  # noqa: BLE001 - the same error type as torch's
        return type(error)


def test_every_adapted_loss_has_opinfo_samples():
    assert set(OPINFOS) == set(ADAPTED)


# the losses whose eager calls the C++ fast path takes (for the samples it reads)
NATIVE = {"mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy",
          "binary_cross_entropy_with_logits", "poisson_nll_loss", "soft_margin_loss",
          "hinge_embedding_loss", "cross_entropy", "kl_div", "multilabel_soft_margin_loss"}


@pytest.mark.filterwarnings("ignore::UserWarning")   # torch's own warnings of the samples
@pytest.mark.parametrize("path", ["python", "native"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ADAPTED)
def test_opinfo_samples_eager(name, dtype, path, request, monkeypatch):
    if path == "python":
        request.getfixturevalue("python_path")
    elif name not in NATIVE:
        pytest.skip("no C++ fast path for this loss")
    else:
        from fastloss import _torch_extension
        assert _torch_extension.module is not None, _torch_extension.status()
    runs = []
    real = FL._run if path == "python" else FL._fast

    def counting(*args):
        result = real(*args)
        if path == "python" or result is not None:
            runs.append(args[0])
        return result

    monkeypatch.setattr(FL, "_run" if path == "python" else "_fast", counting)
    for sample in [variant for sample in samples(name, dtype)
                   for variant in (sample, _constants(sample))]:
        ours, theirs = outcome(getattr(FL, name), sample), outcome(getattr(F, name), sample)
        if isinstance(theirs, type):
            assert ours is theirs, sample
            continue
        torch.testing.assert_close(ours[0], theirs[0], **tolerance(dtype), msg=str(sample))
        if theirs[1] is not None:
            torch.testing.assert_close(ours[1], theirs[1], **tolerance(dtype),
                                       msg=str(sample))
    assert (runs == []) == (name == "nll_loss")   # the kernel ran (nll_loss is torch's)


def _func_samples(name, dtype):
    """Samples whose only differentiable tensor is the input (torch.func.grad over it)."""
    chosen = []
    for sample in samples(name, dtype, requires_grad=False):
        tensors = [a for a in (*sample.args, *sample.kwargs.values())
                   if isinstance(a, torch.Tensor)]
        if sample.input.is_floating_point() and sample.input.numel() > 0 and all(
                not t.requires_grad for t in tensors):
            chosen.append(sample)
    return chosen


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", [n for n in ADAPTED if n != "nll_loss"])
def test_opinfo_samples_under_torch_func_grad_and_vmap(name):
    dtype = torch.float64
    for sample in _func_samples(name, dtype):
        def scalar(fn):
            return lambda x: fn(x, *sample.args, **sample.kwargs).sum()
        try:
            expected = torch.func.grad(scalar(getattr(F, name)))(sample.input)
        except Exception as error:  # noqa: BLE001
            with pytest.raises(type(error)):
                torch.func.grad(scalar(getattr(FL, name)))(sample.input)
            continue
        got = torch.func.grad(scalar(getattr(FL, name)))(sample.input)
        torch.testing.assert_close(got, expected, **tolerance(dtype), msg=str(sample))
        # vmap over a batch of two inputs with the same other arguments
        batch = torch.stack([sample.input, sample.input * 0.5])
        if name in ("binary_cross_entropy",):
            batch = torch.stack([sample.input, sample.input * 0.5 + 0.25])
        theirs = torch.func.vmap(lambda x: getattr(F, name)(x, *sample.args, **sample.kwargs))
        ours = torch.func.vmap(lambda x: getattr(FL, name)(x, *sample.args, **sample.kwargs))
        try:
            expected = theirs(batch)
        except Exception:  # noqa: BLE001 - torch's vmap has no rule for this sample
            continue
        torch.testing.assert_close(ours(batch), expected, **tolerance(dtype), msg=str(sample))


def _compile_samples(name, dtype, every):
    chosen = [_constants(s) for s in samples(name, dtype) if s.input.numel() > 0]
    return chosen if every else chosen[:2]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("every", [pytest.param(False, id="first-samples"),
                                   pytest.param(True, id="all", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ADAPTED)
def test_opinfo_samples_under_torch_compile(name, every):
    dtype = torch.float32
    for sample in _compile_samples(name, dtype, every):
        torch.compiler.reset()
        ours = torch.compile(getattr(FL, name), backend="aot_eager")
        expected = outcome(getattr(F, name), sample)
        if isinstance(expected, type):
            continue       # torch's error: a compiled graph raises it in its own way
        got = outcome(ours, sample)
        assert not isinstance(got, type), (got, sample)
        torch.testing.assert_close(got[0], expected[0], **tolerance(dtype), msg=str(sample))
        if expected[1] is not None:
            torch.testing.assert_close(got[1], expected[1], **tolerance(dtype),
                                       msg=str(sample))
