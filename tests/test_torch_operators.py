"""fastloss.torch under torch.compile, torch.func and torch.export: the fused kernel runs
behind the custom operators fastloss::loss and fastloss::loss_and_grad, with torch's
values and gradients; and the reuse of large gradient buffers."""
import functools

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss.torch as FL  # noqa: E402


def _randn(shape, dtype, gen, scale=1.0):
    return scale * torch.randn(shape, generator=gen, dtype=dtype)


def regression(shape, dtype, gen):
    return _randn(shape, dtype, gen), _randn(shape, dtype, gen)


def probabilities(shape, dtype, gen):
    return (0.02 + 0.96 * torch.rand(shape, generator=gen, dtype=dtype),
            torch.rand(shape, generator=gen, dtype=dtype))


def logits_and_probabilities(shape, dtype, gen):
    return _randn(shape, dtype, gen, 3.0), torch.rand(shape, generator=gen, dtype=dtype)


def signs(shape, dtype, gen):
    return (_randn(shape, dtype, gen, 2.0),
            (2 * torch.randint(0, 2, shape, generator=gen) - 1).to(dtype))


def labels(shape, dtype, gen):
    return _randn(shape, dtype, gen, 2.0), torch.randint(0, shape[-1], shape[:1], generator=gen)


def soft_labels(shape, dtype, gen):
    return (_randn(shape, dtype, gen, 2.0),
            torch.softmax(_randn(shape, dtype, gen), dim=-1))


def log_probabilities(shape, dtype, gen):
    return (torch.log_softmax(_randn(shape, dtype, gen), dim=-1),
            torch.softmax(_randn(shape, dtype, gen), dim=-1))


def label_sets(shape, dtype, gen):
    target = torch.full(shape, -1, dtype=torch.int64)
    target[:, 0] = torch.randint(0, shape[-1], shape[:1], generator=gen)
    return _randn(shape, dtype, gen), target


def _weight(n):
    return torch.linspace(0.5, 2.0, n, dtype=torch.float64)


# (function, keyword arguments (callables of dtype and C are evaluated), data)
CASES = [
    ("mse_loss", {}, regression),
    ("l1_loss", {"reduction": "sum"}, regression),
    ("huber_loss", {"delta": 0.5, "reduction": "none"}, regression),
    ("smooth_l1_loss", {"beta": 0.5}, regression),
    ("binary_cross_entropy", {}, probabilities),
    ("binary_cross_entropy_with_logits", {}, logits_and_probabilities),
    ("binary_cross_entropy_with_logits",
     {"pos_weight": lambda dtype, c: _weight(c).to(dtype)}, logits_and_probabilities),
    ("poisson_nll_loss", {}, regression),
    ("soft_margin_loss", {}, signs),
    ("hinge_embedding_loss", {"margin": 0.5}, signs),
    ("cross_entropy", {}, labels),
    ("cross_entropy", {"label_smoothing": 0.1, "reduction": "none"}, labels),
    ("cross_entropy", {"weight": lambda dtype, c: _weight(c).to(dtype)}, labels),
    ("cross_entropy", {}, soft_labels),
    ("kl_div", {"reduction": "batchmean"}, log_probabilities),
    ("multi_margin_loss", {}, labels),
    ("multilabel_soft_margin_loss", {}, logits_and_probabilities),
    ("multilabel_margin_loss", {}, label_sets),
]


def case_id(case):
    name, kwargs, _ = case
    return "-".join([name] + sorted(kwargs))


def functions(case, dtype, n_classes):
    """(fastloss.torch function, torch.nn.functional function) of a case."""
    name, kwargs, _ = case
    kwargs = {key: value(dtype, n_classes) if callable(value) else value
              for key, value in kwargs.items()}
    return (functools.partial(getattr(FL, name), **kwargs),
            functools.partial(getattr(F, name), **kwargs))


def data(case, dtype, shape=(6, 5), seed=3):
    return case[2](shape, dtype, torch.Generator().manual_seed(seed))


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times an operator ran the fused kernel (counted at run time, not when
    torch traces the caller)."""
    calls = []
    real = FL._operator_loss

    def counting(spec, weight):
        calls.append(spec)
        return real(spec, weight)

    monkeypatch.setattr(FL, "_operator_loss", counting)
    return calls


def value_and_grad(fn, x, y):
    x = x.detach().requires_grad_(True)
    value = fn(x, y)
    upstream = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
    (grad,) = torch.autograd.grad((value * upstream).sum(), x)
    return value.detach(), grad


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10,
                                                                          atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_compiled_loss_runs_the_fused_kernel(case, dtype, kernel_calls):
    ours, theirs = functions(case, dtype, 5)
    x, y = data(case, dtype)
    torch.compiler.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def run_as_traced(graph, _):   # AOTAutograd's forward and backward graphs
            return make_boxed_func(graph.forward)
        return aot_autograd(fw_compiler=run_as_traced, bw_compiler=run_as_traced)(
            gm, example_inputs)

    compiled = torch.compile(lambda a, b: ours(a, b), backend=backend, fullgraph=True)
    value, grad = value_and_grad(compiled, x, y)
    expected_value, expected_grad = value_and_grad(theirs, x, y)
    torch.testing.assert_close(value, expected_value, **tolerance(dtype))
    torch.testing.assert_close(grad, expected_grad, **tolerance(dtype))
    assert len(graphs) == 1                 # fullgraph: one graph, no break
    # one fused pass: the backward takes the gradient the forward kept
    assert len(kernel_calls) == 1


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_torch_func_grad_vmap_and_per_sample_gradients(case, kernel_calls):
    dtype = torch.float64
    ours, theirs = functions(case, dtype, 5)
    x, y = data(case, dtype)

    def scalar(fn):
        return lambda a, b: fn(a, b).sum()

    torch.testing.assert_close(torch.func.grad(scalar(ours))(x, y),
                               torch.func.grad(scalar(theirs))(x, y), **tolerance(dtype))
    n_calls = len(kernel_calls)
    assert n_calls >= 1
    batch_x, batch_y = torch.stack([x, 0.5 * x]), torch.stack([y, y])
    torch.testing.assert_close(torch.func.vmap(ours)(batch_x, batch_y),
                               torch.func.vmap(theirs)(batch_x, batch_y), **tolerance(dtype))
    # per-sample gradients: vmap over grad
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(scalar(ours)))(batch_x, batch_y),
                               torch.func.vmap(torch.func.grad(scalar(theirs)))(batch_x, batch_y),
                               **tolerance(dtype))
    assert len(kernel_calls) > n_calls


def test_second_derivative_through_the_operators_is_an_error():
    x, y = regression((4, 3), torch.float64, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="gradient of the gradient"):
        torch.func.grad(lambda a: torch.func.grad(lambda b: FL.mse_loss(b, y))(a).sum())(x)
    with pytest.raises(Exception, match="jvp"):     # forward mode is not defined
        torch.func.hessian(lambda a: FL.mse_loss(a, y))(x)
    # eager double backward still differentiates torch's formula
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(FL.mse_loss(x, y), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(h, torch.full_like(x, 2.0 / x.numel()))


@pytest.mark.parametrize("case", [CASES[0], CASES[6], CASES[11], CASES[12]], ids=case_id)
def test_export_records_the_operator(case, kernel_calls):
    ours, theirs = functions(case, torch.float32, 5)
    x, y = data(case, torch.float32)

    class Loss(torch.nn.Module):
        def forward(self, a, b):
            return ours(a, b)

    program = torch.export.export(Loss(), (x, y))
    targets = [str(node.target) for node in program.graph.nodes]
    assert "fastloss.loss.default" in targets
    torch.testing.assert_close(program.module()(x, y), theirs(x, y), **tolerance(torch.float32))
    assert len(kernel_calls) == 1


OPCHECK_SAMPLES = [
    ('["MeanSquaredError", {"reduction": "mean"}]', (7, 3), None, False),
    ('["Huber", {"delta": 0.5, "reduction": "none"}]', (4, 5), None, False),
    ('["SparseCategoricalCrossEntropy", {"from_logits": true, "ignore_index": -100, '
     '"label_smoothing": 0.1, "reduction": "none", "z_loss": 0.0}]', (6, 4), "labels", False),
    ('["SparseCategoricalCrossEntropy", {"from_logits": true, "ignore_index": -100, '
     '"label_smoothing": 0.0, "reduction": "mean", "z_loss": 0.0}]', (6, 4), "labels", True),
    ('["BinaryCrossEntropy", {"from_logits": true, "label_smoothing": 0.0, '
     '"reduction": "sum"}]', (5, 4), None, True),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # opcheck scripts a module
@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=lambda s: s[0].split('"')[1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(sample, dtype):
    spec, shape, target_kind, with_weight = sample
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if target_kind == "labels":
        y = torch.randint(0, shape[1], shape[:1], generator=gen)
    else:
        y = torch.rand(shape, generator=gen, dtype=dtype)
    weight = _weight(shape[1]).to(dtype) if with_weight else None
    sample_weight = torch.rand(shape[:1], generator=gen, dtype=dtype)
    none = '"reduction": "none"' in spec
    upstream = torch.rand(shape if none and target_kind != "labels" else
                          shape[:1] if none else (), generator=gen, dtype=dtype)
    for sw in (None, sample_weight):
        torch.library.opcheck(torch.ops.fastloss.loss.default, (spec, x, y, sw, weight))
        torch.library.opcheck(torch.ops.fastloss.loss.default,
                              (spec, x.clone().requires_grad_(True), y, sw, weight))
        torch.library.opcheck(torch.ops.fastloss.loss_backward.default,
                              (spec, upstream, x, y, sw, weight))


def test_fake_tensors_get_shapes_only():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(8, 5)
        y = torch.empty(8, dtype=torch.int64)
        value = FL.cross_entropy(x, y, reduction="none")
        assert value.shape == (8,) and value.dtype == torch.float32


def test_compiled_training_step_with_inductor_equals_torch(kernel_calls):
    """A linear model and its loss compiled together by the default backend."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(32, 16, generator=gen)
    labels_ = torch.randint(0, 7, (32,), generator=gen)
    models = []
    for loss_fn in (FL.cross_entropy, F.cross_entropy):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 7)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)

        @torch.compile(fullgraph=True)
        def step(inputs, targets, model=model, loss_fn=loss_fn):
            return loss_fn(model(inputs), targets, label_smoothing=0.1, ignore_index=3)

        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = step(features, labels_)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        models.append((losses, model.weight.detach().clone()))
    (ours, w_ours), (theirs, w_theirs) = models
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_ours, w_theirs, rtol=1e-5, atol=1e-6)
    assert len(kernel_calls) == 3         # one fused pass a step


# -- the gradient buffer of large inputs -------------------------------------------------

BIG = (512, 1024)   # 2 MiB of float32: above the size whose buffer is kept


def test_a_released_gradient_buffer_is_reused():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(BIG[0], 8, generator=gen)
    layer = torch.nn.Linear(8, BIG[1])
    y = torch.randint(0, BIG[1], BIG[:1], generator=gen)
    pointers, grads = [], []
    for _ in range(3):
        layer.zero_grad()
        logits = layer(hidden)
        logits.register_hook(lambda g: pointers.append(g.data_ptr()))
        FL.cross_entropy(logits, y).backward()
        grads.append(layer.weight.grad.clone())
        torch.testing.assert_close(
            grads[-1], torch.autograd.grad(F.cross_entropy(layer(hidden), y), layer.weight)[0])
    # the logits' gradient went to the layer and was dropped: its memory serves again
    assert pointers[0] == pointers[1] == pointers[2]


def test_a_gradient_somebody_holds_is_never_written_again():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, BIG[1], BIG[:1], generator=gen)
    x = torch.randn(BIG, generator=gen, requires_grad=True)
    FL.cross_entropy(x, y).backward()
    first = x.grad                      # .grad holds the kernel's gradient
    kept = first.clone()
    view = first[3]                     # and a view of it
    x2 = torch.randn(BIG, generator=gen, requires_grad=True)
    FL.cross_entropy(x2, y).backward()
    assert x2.grad.data_ptr() != first.data_ptr()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    del first
    x.grad = None                       # the view still holds the memory
    x3 = torch.randn(BIG, generator=gen, requires_grad=True)
    FL.cross_entropy(x3, y).backward()
    torch.testing.assert_close(view, kept[3], rtol=0, atol=0)


def test_release_buffers_frees_the_kept_memory():
    x = torch.randn(BIG, requires_grad=True)
    FL.mse_loss(x, torch.zeros(BIG)).backward()
    x.grad = None
    assert FL._buffers._buffers
    FL.release_buffers()
    assert not FL._buffers._buffers


# -- half precision --------------------------------------------------------------------

@pytest.fixture
def runs(monkeypatch, python_path):
    """The fastloss computations of the adapter (each call that did not fall back;
    Python path)."""
    calls = []
    real = FL._run

    def counting(loss, *args):
        calls.append(loss)
        return real(loss, *args)

    monkeypatch.setattr(FL, "_run", counting)
    return calls


HALF_CASES = [case for case in CASES if case[0] != "kl_div" and "weight" not in case[1]
              and "pos_weight" not in case[1]]


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", HALF_CASES, ids=case_id)
def test_half_precision_runs_the_float32_kernel_as_torch_computes_it(case, dtype, autocast,
                                                                     runs):
    """Under CPU autocast torch computes every loss in float32 from the half-precision
    input; outside it, torch returns the loss in the input's dtype: the adapter gives the
    same dtypes and values within half precision, through the kernel."""
    ours, theirs = functions(case, dtype, 5)
    x, y = data(case, torch.float32, shape=(16, 5))
    x = x.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    if not autocast and case[0] in ("multi_margin_loss", "multilabel_margin_loss"):
        for fn in (ours, theirs):       # torch has no half-precision kernel for these
            with pytest.raises(NotImplementedError):
                fn(x, y)
        assert runs == []
        return
    results = []
    for fn in (ours, theirs):
        a = x.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            value = fn(a, y)
        upstream = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype)
        (value.float() * upstream.reshape(value.shape).float()).sum().backward()
        results.append((value.detach(), a.grad))
    (value, grad), (expected, expected_grad) = results
    assert value.dtype == expected.dtype and grad.dtype == expected_grad.dtype == dtype
    half = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(value.float(), expected.float(), **half)
    torch.testing.assert_close(grad.float(), expected_grad.float(), **half)
    assert len(runs) == 1


# -- visibility ----------------------------------------------------------------------------

def test_explain_reports_each_call_and_why_torch_computed_it():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    y = torch.randint(0, 3, (4,), generator=gen)

    def step():
        FL.cross_entropy(x, y).backward()
        FL.mse_loss(x.detach(), torch.zeros(4, 3))
        FL.binary_cross_entropy_with_logits(x, torch.rand(4, 3, generator=gen),
                                            weight=torch.rand(4, 3, generator=gen))
        FL.nll_loss(torch.log_softmax(x, 1), y)
        FL.l1_loss(x.detach().to(torch.complex64), torch.zeros(4, 3, dtype=torch.complex64))
        return "done"

    report = FL.explain(step)
    assert report.result == "done"
    assert [(name, ran) for name, ran, _ in report] == [
        ("cross_entropy", "fastloss"), ("mse_loss", "fastloss"),
        ("binary_cross_entropy_with_logits", "torch"), ("nll_loss", "torch"),
        ("l1_loss", "torch")]
    assert "fused" in report[0][2] and "value only" in report[1][2]
    assert "weight varies within a row" in report[2][2]
    assert "complex64" in report[4][2]
    assert report.fell_back == report[2:]
    assert str(report).splitlines()[0].split()[:2] == ["cross_entropy", "fastloss"]
    compiled = torch.compile(lambda a, b: FL.cross_entropy(a, b), backend="eager")
    assert FL.explain(compiled, x, y)[0][2].startswith("custom operators")


def test_fall_backs_are_logged_at_debug_level(caplog):
    x = torch.randn(4, 3).to(torch.complex64)
    with caplog.at_level("DEBUG", logger="fastloss.torch"):
        FL.l1_loss(x, x)
    assert "l1_loss: computed by torch: input is torch.complex64" in caplog.text


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_spatial_cross_entropy_through_the_operators(reduction, kernel_calls):
    """(N, C, d1, d2) scores read in place (classes on axis 1) by the traced operators:
    compiled, and under torch.func.grad and vmap."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 3, 4), generator=gen)
    y[0, 1, 2] = -100

    def ours(a, b):
        return FL.cross_entropy(a, b, reduction=reduction, label_smoothing=0.1)

    def theirs(a, b):
        return F.cross_entropy(a, b, reduction=reduction, label_smoothing=0.1)

    torch.compiler.reset()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    value, grad = value_and_grad(compiled, x, y)
    expected_value, expected_grad = value_and_grad(theirs, x, y)
    torch.testing.assert_close(value, expected_value, **tolerance(torch.float64))
    torch.testing.assert_close(grad, expected_grad, **tolerance(torch.float64))
    assert len(kernel_calls) == 1
    torch.testing.assert_close(torch.func.grad(lambda a: ours(a, y).sum())(x),
                               torch.func.grad(lambda a: theirs(a, y).sum())(x),
                               **tolerance(torch.float64))
    batch = torch.stack([x, 0.5 * x])
    torch.testing.assert_close(torch.func.vmap(lambda a: ours(a, y))(batch),
                               torch.func.vmap(lambda a: theirs(a, y))(batch),
                               **tolerance(torch.float64))


def test_a_kept_gradient_serves_only_the_same_arguments():
    """fastloss::loss(keep_grad=True) keeps its gradient for the backward of the very
    same arguments; any change since (in place, another target) computes it again."""
    spec = ('["SparseCategoricalCrossEntropy", {"from_logits": true, "ignore_index": -100, '
            '"label_smoothing": 0.0, "reduction": "sum", "z_loss": 0.0}]')
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    one = torch.tensor(1.0)

    def fresh(a, b):
        a = a.detach().requires_grad_(True)
        F.cross_entropy(a, b, reduction="sum").backward()
        return a.grad

    def backward(a, b):
        return torch.ops.fastloss.loss_backward(spec, one, a, b, None, None)

    torch.ops.fastloss.loss(spec, x, y, None, None, True)
    torch.testing.assert_close(backward(x, y), fresh(x, y))      # the kept one
    torch.testing.assert_close(backward(x, y), fresh(x, y))      # taken once: computed again
    torch.ops.fastloss.loss(spec, x, y, None, None, True)
    x.mul_(3.0)                                                   # in place after forward
    torch.testing.assert_close(backward(x, y), fresh(x, y))
    torch.ops.fastloss.loss(spec, x, y, None, None, True)
    other = (y + 1) % 5
    torch.testing.assert_close(backward(x, other), fresh(x, other))
    FL.release_buffers()
    assert not FL._kept._grads


def test_nested_explain_reports_each_level():
    x = torch.randn(4, 3, requires_grad=True)
    inner_reports = []

    def inner():
        inner_reports.append(FL.explain(lambda: None))   # an empty report, nested
        return FL.mse_loss(x, torch.zeros(4, 3))

    outer = FL.explain(inner)
    assert [name for name, _, _ in outer] == ["mse_loss"]
    assert list(inner_reports[0]) == []
    assert FL._explaining == []
