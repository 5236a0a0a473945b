"""PyTorch adapter: drop-in ``torch.nn.functional`` losses and ``torch.nn`` loss modules
whose value and gradient come from one fused fastloss pass.

>>> import fastloss.torch as FL
>>> loss = FL.cross_entropy(logits, labels, label_smoothing=0.1)   # as F.cross_entropy
>>> loss.backward()                                                # gradient from the kernel

The functions have the names, signatures, defaults and results of
``torch.nn.functional``; the modules subclass ``torch.nn``'s own loss modules (same
constructor, attributes, buffers and ``state_dict``) and only replace ``forward``.

Design, in three layers (the split of Liger-Kernel):

1. :class:`_FusedLoss`, one ``torch.autograd.Function`` for every loss, parametrised by a
   fastloss loss object.  Its forward runs ``value_and_grad`` once, writing the gradient
   into a tensor from ``torch.empty_like`` through a NumPy view; its backward hands that
   tensor out, untouched when the upstream gradient is the scalar 1 (the
   ``loss.backward()`` case), else multiplied by it in place, so ``.grad`` is the kernel's
   own output, not a copy.  CPU float32/float64 tensors reach the kernel as NumPy views,
   so nothing is copied.  When the input needs no gradient, only the value is computed.
2. The functions map torch's arguments onto a fastloss loss, or decide it cannot compute
   this call.
3. The modules call the functions.

Everything fastloss does not compute exactly as torch does falls back to
``torch.nn.functional`` itself, so results always equal torch's: tensors that are not
plain CPU float32/float64 (CUDA, float16/bfloat16, sparse, subclasses), mixed dtypes
(but the signed integer targets of ``poisson_nll_loss``, ``soft_margin_loss`` and
``hinge_embedding_loss``, converted to the input's dtype as torch promotes them) or
broadcasting shapes, a target or weight that requires a gradient, per-element weights,
``kl_div(reduction="none")``, torch.compile / jit tracing / functorch transforms / dispatch
modes, any value fastloss rejects (torch then raises its own error or computes its own
answer), and a double backward (``create_graph=True``), which differentiates torch's own
formula.  ``nll_loss`` is torch's: its input already is log-probabilities, so there is no
softmax to fuse and its gradient is a scatter of ``-weight`` (see :func:`nll_loss`).
``kl_div`` runs fastloss's elementwise ``PointwiseKLDivergence`` kernel, which reads its
input as log q, as torch does (see :func:`kl_div`).  One result differs on purpose:
``soft_margin_loss`` stays finite where torch's ``log(1 + exp(-target * input))``
overflows to inf (with a NaN gradient).

Gradients and in-place edits:

- The gradient a backward returns is never aliased with anything fastloss keeps.  The
  first backward takes the kernel's gradient and the graph drops its reference to it, so
  editing what it returned (``g.zero_()``, an in-place update of ``.grad``) cannot change a
  later backward.  A later backward (after ``retain_graph=True``) runs the kernel again on
  the saved input and returns a new tensor.
- The input may be modified in place after the loss is computed wherever torch allows it.
  torch's backward of ``cross_entropy``, ``kl_div``, ``l1_loss`` (and ``smooth_l1_loss``
  with ``beta=0``), ``mse_loss`` with a ``weight``, ``poisson_nll_loss`` and
  ``hinge_embedding_loss`` does not read the input, and the first backward here needs
  only the gradient from forward: ``loss.backward()`` works and gives the gradient at the
  values the loss was computed from, as torch's does.  Where torch's backward reads the
  input (``mse_loss``, ``huber_loss``, ``smooth_l1_loss``, ``binary_cross_entropy``,
  ``binary_cross_entropy_with_logits``, ``soft_margin_loss``, ``multi_margin_loss``),
  backward raises torch's own "modified by an inplace operation" error, as
  ``torch.nn.functional`` does, so a call behaves the same whether the kernel or torch's
  fallback (CUDA, half precision, ...) computes it.
- fastloss keeps the input, not torch's intermediate values (such as cross_entropy's
  log-probabilities).  A double backward (``create_graph=True``), or a backward after the
  first, of a loss whose input was modified in place after the loss was computed raises a
  RuntimeError saying so, where torch would answer from its intermediates; it never
  differentiates the modified values.  Compute the loss again, or modify a copy.  Edits
  through ``.data`` are not tracked by autograd, so they are not detected: backward still
  gives the gradient from forward, but a double or later backward uses the edited values.

The kernels use fastloss's thread count (:func:`fastloss.set_num_threads`); torch's is
left alone.
"""
import functools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import _reduction

import fastloss as fl

__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "poisson_nll_loss", "soft_margin_loss",
    "hinge_embedding_loss", "cross_entropy", "nll_loss", "kl_div", "multi_margin_loss",
    "multilabel_soft_margin_loss", "multilabel_margin_loss", "sigmoid_focal_loss",
    "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "BCELoss", "BCEWithLogitsLoss",
    "PoissonNLLLoss", "SoftMarginLoss", "HingeEmbeddingLoss", "CrossEntropyLoss",
    "NLLLoss", "KLDivLoss", "MultiMarginLoss", "MultiLabelSoftMarginLoss",
    "MultiLabelMarginLoss",
]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_LABEL_DTYPES = (torch.int64,)     # torch's cross_entropy/multi_margin labels are Long
# Integer targets (labels +-1, counts) that torch promotes to the input's dtype inside
# the losses that take them: the kernel reads them converted the same way.  Not bool or
# unsigned: torch's soft_margin_loss backward negates the target in its own dtype (an
# error for bool, 255 for a uint8 1), and those calls stay torch's.
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

# torch.nn.functional.kl_div's warning for reduction="mean", repeated on the fast path.
_KL_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release.")


# -- layer 1: the autograd node ---------------------------------------------------------

class _FusedLoss(torch.autograd.Function):
    """A fastloss loss as an autograd node: gradient computed at forward time.

    Arguments of ``apply``: ``input`` (the tensor differentiated), ``target`` (a tensor
    needing no gradient, read by the kernel through a NumPy view), ``loss`` (the fastloss
    object), ``sample_weight`` (an array or None), ``scale`` (a constant factor of the
    loss, applied to the value here and folded into the upstream gradient in backward),
    ``torch_loss(input, target)``, torch's own formula for the same value, differentiated
    instead when a double backward is asked for, and ``reads_input``: torch's own backward
    of this loss reads the input, so it fails after the input is modified in place, and so
    does this one.

    The kernel's gradient is kept as a plain attribute, not a saved tensor: the first
    backward takes it (returned as is for ``loss.backward()``, else scaled in place) and
    drops the reference, so the gradient autograd hands out is never a buffer this node
    still holds.  A later backward (``retain_graph=True``) runs the kernel again on the
    saved input, which must not have been modified in place since forward.
    """

    @staticmethod
    def forward(ctx, input, target, loss, sample_weight, scale, torch_loss, reads_input):
        grad = torch.empty_like(input, memory_format=torch.contiguous_format)
        value, _ = loss.value_and_grad(input.numpy(), target.numpy(), sample_weight,
                                       out=grad.numpy())
        # Saved for a later backward: autograd frees them with the graph and checks on
        # unpacking that they were not modified in place.
        ctx.save_for_backward(input, target)
        ctx.kernel_grad = grad
        ctx.loss, ctx.sample_weight, ctx.scale = loss, sample_weight, scale
        ctx.torch_loss, ctx.reads_input = torch_loss, reads_input
        return _to_tensor(value, grad, scale)

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            # create_graph=True: the kernel's gradient is a constant, so a gradient of the
            # gradient must come from a graph of torch's own formula at the input.
            input, target = _saved_input(ctx, "a double backward (create_graph=True)")
            with torch.enable_grad():
                value = ctx.torch_loss(input, target)
            (grad_input,) = torch.autograd.grad(value, input, grad_output, create_graph=True)
            return grad_input, None, None, None, None, None, None
        grad = ctx.kernel_grad
        if grad is None:
            # the kernel's gradient went to an earlier backward: compute it again
            input, target = _saved_input(ctx, "a backward after the first one")
            grad = torch.empty_like(input, memory_format=torch.contiguous_format)
            ctx.loss.value_and_grad(input.detach().numpy(), target.numpy(),
                                    ctx.sample_weight, out=grad.numpy())
        else:
            if ctx.reads_input:
                # torch's backward reads the input here: raise torch's error if it was
                # modified in place (unpacking checks), as torch.nn.functional does
                _ = ctx.saved_tensors
            ctx.kernel_grad = None  # handed out once: this node keeps no reference to it
        # `grad` is now this call's alone: scaled in place, and returned without a copy
        # (for loss.backward(), autograd takes it as .grad as it is)
        if grad_output.ndim == 0:
            if ctx.scale == 1.0 and grad_output.item() == 1.0:
                return grad, None, None, None, None, None, None
        elif grad_output.ndim < grad.ndim:
            # reduction="none" of a row loss: one upstream value per row
            grad_output = grad_output.reshape(
                grad_output.shape + (1,) * (grad.ndim - grad_output.ndim))
        if ctx.scale != 1.0:
            grad_output = grad_output * ctx.scale
        return grad.mul_(grad_output), None, None, None, None, None, None


_MODIFIED_INPUT = (
    "fastloss.torch: the input of this loss was modified by an inplace operation after the "
    "loss was computed, and {} computes the gradient from the input, so it would "
    "differentiate the modified values (torch.nn.functional keeps other intermediate "
    "values for this loss; fastloss keeps only the input).  Modify a copy "
    "(input.clone()) instead, or compute the loss again after the modification.")


def _saved_input(ctx, what):
    """``ctx``'s saved (input, target).  autograd raises when the input was modified in
    place since forward; when torch's own backward would not have raised for this loss,
    that error is replaced by one saying what happened and why fastloss needs the input."""
    try:
        return ctx.saved_tensors
    except RuntimeError as error:
        # the other failure, a graph already freed, keeps torch's message
        if ctx.reads_input or "inplace operation" not in str(error):
            raise
        raise RuntimeError(_MODIFIED_INPUT.format(what)) from error


def _to_tensor(value, like, scale=1.0):
    """fastloss's result times ``scale`` as a tensor: a 0-d tensor of ``like``'s dtype for
    a float, the array itself (no copy) for reduction="none"."""
    if isinstance(value, np.ndarray):
        if scale != 1.0:
            np.multiply(value, scale, out=value)
        return torch.from_numpy(value)
    return torch.from_numpy(np.array(value * scale, dtype=_NUMPY_DTYPES[like.dtype]))


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _run(loss, input, target, sample_weight, torch_loss, scale=1.0, reads_input=False):
    """Evaluate ``scale * loss`` with fastloss: an autograd node when ``input`` needs a
    gradient, the value alone otherwise.  fastloss's ValueError/TypeError propagate (the
    caller then falls back to torch).  ``reads_input``: see :class:`_FusedLoss`."""
    if input.requires_grad and torch.is_grad_enabled():
        return _FusedLoss.apply(input, target, loss, sample_weight, scale, torch_loss,
                                reads_input)
    return _to_tensor(loss(input.numpy(), target.numpy(), sample_weight), input, scale)


# -- when fastloss may run ---------------------------------------------------------------

def _noop_false():
    return False


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", _noop_false)
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", _noop_false)
_tracing = getattr(torch._C, "_get_tracing_state", lambda: None)


def _other_function_mode():
    """A ``__torch_function__`` mode other than torch's default-device context is active
    (it must see the call to torch's function, as it would without fastloss)."""
    if not _function_mode_enabled():
        return False
    try:
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._device import DeviceContext
    except ImportError:  # pragma: no cover - private API moved: be safe
        return True
    return any(not isinstance(mode, DeviceContext)
               for mode in _get_current_function_mode_stack())


def _kernels_may_run():
    """False under torch.compile, jit tracing, functorch transforms (vmap, grad, ...) and
    dispatch/function modes: there tensors are not plain memory, or the call must be
    recorded as torch's."""
    # is_compiling() first: dynamo folds it to True, so it never traces the other checks
    return not (torch.compiler.is_compiling() or _functorch_active() or _dispatch_stack_len()
                or _tracing() is not None or _other_function_mode())


def _plain(tensor, dtypes):
    """An ordinary dense CPU tensor of one of ``dtypes`` (readable as a NumPy view)."""
    return (type(tensor) in _PLAIN_TYPES and tensor.is_cpu and tensor.dtype in dtypes
            and tensor.layout is torch.strided and not tensor.is_nested)


def _needs_grad(tensor):
    return tensor.requires_grad and torch.is_grad_enabled()


def _constant(tensor, like):
    """``tensor`` can be read as a constant in the kernel: plain, ``like``'s dtype, and no
    gradient wanted for it."""
    return _plain(tensor, (like.dtype,)) and not _needs_grad(tensor)


def _target_dtype(input, target, labels=False, integers=False):
    """The dtype in which a kernel reads ``target``, or None when fastloss cannot compute
    the call from these tensors (it then falls back to torch): torch is tracing or
    transforming, the input is not a plain CPU float32/float64 tensor, or the target is
    not one the kernel reads.

    ``labels``: int64 class indices, read as they are.  Otherwise a plain tensor of the
    input's dtype that needs no gradient; with ``integers``, also a signed integer
    tensor, which the caller converts to the input's dtype (``target.to(dtype)``, one
    copy, the values torch's type promotion gives inside the loss).
    """
    if not (_kernels_may_run() and _plain(input, _KERNEL_DTYPES)):
        return None
    if labels:
        return torch.int64 if _plain(target, _LABEL_DTYPES) else None
    if _constant(target, input) or (integers and _plain(target, _INTEGER_DTYPES)):
        return input.dtype
    return None


def _legacy_reduction(size_average, reduce, reduction):
    """torch's mapping of the deprecated size_average/reduce (with its warning)."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


@functools.lru_cache(maxsize=256)
def _cached_loss(cls, **params):
    """Loss objects with scalar parameters are immutable: build each once."""
    return cls(**params)


def _row_loss_class(name):
    """A row loss class of fastloss, or None in a build without it."""
    return getattr(fl, name, None)


# -- layer 2: the functions --------------------------------------------------------------

def _row_weights(weight, input):
    """torch's elementwise ``weight`` as fastloss's ``sample_weight`` (one weight per
    index of the first axis, shape (N,)), or None when it varies within a row.

    fastloss has no per-element weight; a weight of shape (N, 1, ..., 1), or one expanded
    (stride 0) along every other axis, is a weight per row.
    """
    if not _constant(weight, input) or input.ndim == 0 or weight.ndim > input.ndim:
        return None
    lead = input.ndim - weight.ndim
    shape = (1,) * lead + tuple(weight.shape)
    strides = (0,) * lead + tuple(weight.stride())
    if shape[0] not in (1, input.shape[0]):
        return None
    for size, stride, n in zip(shape[1:], strides[1:], input.shape[1:]):
        if size not in (1, n) or (size != 1 and stride != 0):
            return None
    rows = weight.numpy().reshape(shape)[(slice(None),) + (0,) * (input.ndim - 1)]
    return np.broadcast_to(rows, input.shape[:1])


def _elementwise(make_loss, input, target, reduction, torch_loss, *, reads_input,
                 weight=None, weight_mean="count", scale=1.0, nan_is_torchs_error=False,
                 integer_target=False):
    """A pointwise loss (target of input's shape): fastloss, else ``torch_loss``.

    ``make_loss(reduction)`` builds the fastloss loss.  ``integer_target``: the kernel
    also reads signed integer targets, converted (see :func:`_target_dtype`).  A target
    of another shape falls back: torch broadcasts it (for some losses with a warning,
    for others silently).  torch's ``weight`` is accepted when it is one weight per
    row.  ``weight_mean`` says how torch's weighted "mean" divides: by the element count
    (fastloss's own mean) or by the weights' sum (mse/l1; that 1/sum goes into the
    sample weights).  ``scale`` multiplies value and gradient (smooth_l1 = huber /
    beta).  Not as a sample weight: fastloss's loop with one weight per element is
    scalar, several times slower than one multiply of the gradient.
    ``nan_is_torchs_error``: torch rejects NaN inputs of this loss, so a NaN result is
    recomputed by torch to raise torch's error.  ``reads_input``: torch's backward of this
    call reads the input (it fails after an in-place edit of it; see :class:`_FusedLoss`).
    """
    dtype = _target_dtype(input, target, integers=integer_target)
    if dtype is None or target.shape != input.shape:
        return torch_loss(input, target)
    kernel_target = target.to(dtype)
    sample_weight = None
    kernel_reduction = reduction
    if weight is not None:
        sample_weight = _row_weights(weight, input)
        if sample_weight is None or input.numel() == 0:
            return torch_loss(input, target)
        if weight_mean == "weight_sum" and reduction == "mean":
            # torch: sum(w * l) / sum(w), w summed over every element
            total = float(sample_weight.sum(dtype=np.float64)) * (
                input.numel() // len(sample_weight))
            if not total or not np.isfinite(total):
                return torch_loss(input, target)
            sample_weight = (sample_weight / total).astype(sample_weight.dtype, copy=False)
            kernel_reduction = "sum"
    try:
        loss = make_loss(kernel_reduction)
        result = _run(loss, input, kernel_target, sample_weight, torch_loss, scale,
                      reads_input)
    except (ValueError, TypeError):
        return torch_loss(input, target)
    if nan_is_torchs_error and bool(result.isnan().any()):
        return torch_loss(input, target)
    return result


def _error_loss(cls, torch_function, input, target, size_average, reduce, reduction,
                weight, reads_input):
    """mse_loss / l1_loss: fastloss ``cls``; torch's ``weight`` (same shape as input,
    mean = sum(w l) / sum(w)) runs in the kernel when it is one weight per row."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(torch_function, reduction=reduction, weight=weight)
    if weight is not None and weight.shape != input.shape:
        return torch_loss(input, target)
    return _elementwise(lambda r: _cached_loss(cls, reduction=r), input, target, reduction,
                        torch_loss, reads_input=reads_input, weight=weight,
                        weight_mean="weight_sum")


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """Drop-in ``torch.nn.functional.mse_loss``: fastloss ``mse``.

    ``weight`` (torch: same shape as input; mean = sum(w l) / sum(w)) runs in the kernel
    when it is one weight per row, e.g. ``w[:, None].expand_as(input)``.
    """
    # torch's unweighted mse_loss backward reads the input; its weighted one does not
    return _error_loss(fl.MeanSquaredError, F.mse_loss, input, target, size_average,
                       reduce, reduction, weight, reads_input=weight is None)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """Drop-in ``torch.nn.functional.l1_loss``: fastloss ``mae`` (subgradient 0 at 0).

    ``weight`` as for :func:`mse_loss`.
    """
    return _error_loss(fl.MeanAbsoluteError, F.l1_loss, input, target, size_average,
                       reduce, reduction, weight, reads_input=False)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """Drop-in ``torch.nn.functional.huber_loss``: fastloss ``huber(delta)``.

    ``weight`` (same shape as input; mean = mean of w l) runs in the kernel when it is one
    weight per row.
    """
    torch_loss = functools.partial(F.huber_loss, reduction=reduction, delta=delta,
                                   weight=weight)
    if weight is not None and weight.shape != input.shape:
        return torch_loss(input, target)
    return _elementwise(
        lambda r: _cached_loss(fl.Huber, delta=delta, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, weight=weight)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean",
                   beta=1.0):
    """Drop-in ``torch.nn.functional.smooth_l1_loss``: fastloss ``huber(delta=beta) / beta``;
    ``beta=0`` is :func:`l1_loss`."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.smooth_l1_loss, reduction=reduction, beta=beta)
    if isinstance(beta, (int, float)) and beta == 0:
        return _elementwise(lambda r: _cached_loss(fl.MeanAbsoluteError, reduction=r),
                            input, target, reduction, torch_loss, reads_input=False)
    # math, not NumPy: torch.compile traces this line (before the fall-back decision) and
    # cannot branch on a NumPy result
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(1.0 / beta)):
        return torch_loss(input, target)
    return _elementwise(
        lambda r: _cached_loss(fl.Huber, delta=beta, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, scale=1.0 / beta)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """Drop-in ``torch.nn.functional.binary_cross_entropy`` (input = probabilities, logs
    clamped at -100): fastloss ``binary_cross_entropy``.

    ``weight`` (broadcast to input; mean = mean of w l) runs in the kernel when it is one
    weight per row, e.g. shape (N, 1).  NaN in input or target is torch's RuntimeError
    ("should be between 0 and 1"), as fastloss's range check lets NaN through.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.binary_cross_entropy, weight=weight, reduction=reduction)
    return _elementwise(
        lambda r: _cached_loss(fl.BinaryCrossEntropy, from_logits=False, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, weight=weight,
        nan_is_torchs_error=True)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction="mean", pos_weight=None):
    """Drop-in ``torch.nn.functional.binary_cross_entropy_with_logits``: fastloss
    ``binary_cross_entropy(from_logits=True, pos_weight)``.

    ``pos_weight`` runs in the kernel when it has one value or one per class (the last
    axis); ``weight`` as for :func:`binary_cross_entropy`.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.binary_cross_entropy_with_logits, weight=weight,
                                   reduction=reduction, pos_weight=pos_weight)
    if pos_weight is None:
        def make_loss(r):
            return _cached_loss(fl.BinaryCrossEntropy, from_logits=True, reduction=r)
    else:
        if not (_constant(pos_weight, input) and input.ndim >= 1 and pos_weight.ndim <= 1
                and pos_weight.numel() in (1, input.shape[-1])):
            return torch_loss(input, target)
        pos_weights = pos_weight.numpy().reshape(-1)

        def make_loss(r):
            return fl.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weights,
                                         reduction=r)
    return _elementwise(make_loss, input, target, reduction, torch_loss, reads_input=True,
                        weight=weight)


def poisson_nll_loss(input, target, log_input=True, full=False, size_average=None, eps=1e-08,
                     reduce=None, reduction="mean"):
    """Drop-in ``torch.nn.functional.poisson_nll_loss``: fastloss ``poisson(log_input,
    full, eps)``.

    Integer counts are read as the input's dtype, as torch promotes them; with
    ``full=True`` only when the input has torch's default dtype (torch computes the
    Stirling term of integer counts in the default dtype).
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.poisson_nll_loss, log_input=log_input, full=full,
                                   eps=eps, reduction=reduction)
    return _elementwise(
        lambda r: _cached_loss(fl.Poisson, log_input=log_input, full=full, eps=eps,
                               reduction=r),
        input, target, reduction, torch_loss, reads_input=False,
        integer_target=not full or getattr(input, "dtype", None) == torch.get_default_dtype())


def soft_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Drop-in ``torch.nn.functional.soft_margin_loss``: fastloss ``soft_margin``
    (integer labels are read as the input's dtype).

    Finite where torch's ``log(1 + exp(-target * input))`` overflows (``-target *
    input`` beyond about 88 in float32, 709 in float64): torch gives inf and a NaN
    gradient there, fastloss the value ``-target * input`` and the gradient ``-target``.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.soft_margin_loss, reduction=reduction)
    return _elementwise(lambda r: _cached_loss(fl.SoftMargin, reduction=r), input, target,
                        reduction, torch_loss, reads_input=True, integer_target=True)


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None,
                         reduction="mean"):
    """Drop-in ``torch.nn.functional.hinge_embedding_loss``: fastloss
    ``hinge_embedding(margin)`` (integer labels are read as the input's dtype)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.hinge_embedding_loss, margin=margin,
                                   reduction=reduction)
    return _elementwise(
        lambda r: _cached_loss(fl.HingeEmbedding, margin=margin, reduction=r),
        input, target, reduction, torch_loss, reads_input=False, integer_target=True)


def _class_weight(weight, input, n_classes):
    """torch's per-class ``weight`` as an array for fastloss, None for no weight, or
    False when fastloss cannot take it."""
    if weight is None:
        return None
    if _constant(weight, input) and tuple(weight.shape) == (n_classes,):
        return weight.numpy()
    return False


def _as_rows(input, target, per_row, max_ndim=None):
    """The (N, C) scores and the (N,) target (``per_row``: one entry per row, such as a
    class label) or (N, C) target of a row loss, or None.

    torch also takes an unbatched (C,) input and, for cross-entropy, (N, C, d1, ...) with
    the classes on axis 1: both become rows (views, or one copy for the moved axis).
    Returns (input2d, target2, shape of the reduction="none" result).
    """
    ndim = input.ndim
    if ndim == 0 or (max_ndim is not None and ndim > max_ndim):
        return None
    if ndim == 1:
        if target.shape != (() if per_row else input.shape):
            return None
        return input.unsqueeze(0), target.unsqueeze(0), ()
    none_shape = input.shape[:1] + input.shape[2:]
    if target.shape != (none_shape if per_row else input.shape):
        return None
    if ndim == 2:
        return input, target, None
    n_classes = input.shape[1]
    rows = input.movedim(1, -1).reshape(-1, n_classes)
    target2 = (target.reshape(-1) if per_row
               else target.movedim(1, -1).reshape(-1, n_classes))
    return rows, target2, none_shape


def _row_loss(make_loss, input, target, labels, reduction, torch_loss, *, reads_input,
              max_ndim=None, per_row=None, integer_target=False):
    """A row loss (one value per row of (N, C) scores): fastloss, else ``torch_loss``.

    ``labels``: the target holds int64 class indices (else it is of input's dtype, or
    with ``integer_target`` integers converted to it: see :func:`_target_dtype`).
    ``per_row``: the target has one entry per row, (N,) for (N, C) scores (by default,
    when it holds labels), else one per score, input's shape (dense targets, or label
    sets padded with -1).  ``make_loss()`` builds the fastloss loss or returns None when
    it cannot.  ``reads_input`` as for :func:`_elementwise`.
    """
    dtype = _target_dtype(input, target, labels, integer_target)
    if dtype is None:
        return torch_loss(input, target)
    rows = _as_rows(input, target, labels if per_row is None else per_row, max_ndim)
    if rows is None:
        return torch_loss(input, target)
    scores, target2, none_shape = rows
    target2 = target2.to(dtype)
    try:
        loss = make_loss()
        if loss is None:
            return torch_loss(input, target)
        result = _run(loss, scores, target2, None, torch_loss, 1.0, reads_input)
    except (ValueError, TypeError):
        return torch_loss(input, target)
    if none_shape is not None and reduction == "none":
        result = result.reshape(none_shape)
    return result


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Drop-in ``torch.nn.functional.cross_entropy`` (input = logits): fastloss
    ``sparse_categorical_cross_entropy(from_logits=True)`` for class-index targets (int64),
    ``categorical_cross_entropy(from_logits=True)`` for probability targets.

    ``weight``, ``ignore_index`` and ``label_smoothing`` map onto class_weight,
    ignore_index and label_smoothing.  Unbatched (C,) and spatial (N, C, d1, ...) inputs
    are computed as rows.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.cross_entropy, weight=weight, ignore_index=ignore_index,
                                   reduction=reduction, label_smoothing=label_smoothing)
    labels = getattr(target, "dtype", None) in _LABEL_DTYPES

    def make_loss():   # called once input is known to be (C,) or (N, C, ...)
        class_weight = _class_weight(weight, input, input.shape[1 if input.ndim > 1 else 0])
        if class_weight is False:
            return None
        params = dict(from_logits=True, label_smoothing=label_smoothing, reduction=reduction)
        if labels:
            cls = _row_loss_class("SparseCategoricalCrossEntropy")
            params["ignore_index"] = ignore_index
        else:
            cls = _row_loss_class("CategoricalCrossEntropy")
            if ignore_index != -100:   # torch rejects ignore_index for probability targets
                return None
        if cls is None:
            return None
        if class_weight is None:
            return _cached_loss(cls, **params)
        return cls(class_weight=class_weight, **params)

    return _row_loss(make_loss, input, target, labels, reduction, torch_loss,
                     reads_input=False)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """``torch.nn.functional.nll_loss`` itself.

    Its input already is log-probabilities: the loss is a gather of ``-weight[y] *
    input[i, y]`` and its gradient a scatter of ``-weight[y]`` (over the weighted count for
    "mean") into zeros.  There is no transcendental to fuse (it is not a softmax
    cross-entropy, and fastloss's probability cross-entropy renormalises rows, so it does
    not fit), and torch's own kernel already does this in one pass each way; it is exposed
    here so that ``fastloss.torch`` replaces ``torch.nn.functional`` for every loss.
    """
    return F.nll_loss(input, target, weight=weight, size_average=size_average,
                      ignore_index=ignore_index, reduce=reduce, reduction=reduction)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean",
           log_target=False):
    """Drop-in ``torch.nn.functional.kl_div`` (input = log q, target = p or log p).

    fastloss's elementwise ``PointwiseKLDivergence`` (``xlogy(p, p) - p input``, gradient
    ``-p``; torch's input is log q as given, not renormalised), summed; "batchmean"
    divides by the batch size, torch's "mean" by the element count.  reduction="none"
    is torch's.
    """
    legacy = size_average is not None or reduce is not None
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if legacy:
        def torch_loss(i, t):   # what F.kl_div runs for legacy arguments (no "mean" warning)
            return torch.kl_div(i, t, _reduction.get_enum(reduction), log_target=log_target)
    else:
        torch_loss = functools.partial(F.kl_div, reduction=reduction, log_target=log_target)
    if not (reduction in ("mean", "batchmean", "sum")
            and _target_dtype(input, target) is not None
            and target.shape == input.shape and input.numel() > 0
            and isinstance(log_target, (bool, np.bool_))):
        return torch_loss(input, target)
    if reduction == "mean" and not legacy:
        warnings.warn(_KL_MEAN_WARNING, stacklevel=2)
    if reduction == "mean":
        scale = 1.0 / input.numel()
    elif reduction == "batchmean" and input.ndim:
        scale = 1.0 / input.shape[0]
    else:
        scale = 1.0

    def kl_reduced(i, t):   # the reduced value in torch's terms, for a double backward
        return F.kl_div(i, t, reduction="sum", log_target=log_target) * scale

    try:
        loss = _cached_loss(fl._pointwise.PointwiseKLDivergence, log_target=bool(log_target),
                            reduction="sum")
        return _run(loss, input, target, None, kl_reduced, scale, False)
    except (ValueError, TypeError):
        return torch_loss(input, target)


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, size_average=None,
                      reduce=None, reduction="mean"):
    """Drop-in ``torch.nn.functional.multi_margin_loss``: fastloss
    ``multi_margin(margin, p, class_weight=weight)``; (N, C) or unbatched (C,) input."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.multi_margin_loss, p=p, margin=margin, weight=weight,
                                   reduction=reduction)

    def make_loss():
        cls = _row_loss_class("MultiMargin")
        class_weight = _class_weight(weight, input, input.shape[-1])
        if cls is None or class_weight is False:
            return None
        if class_weight is None:
            return _cached_loss(cls, margin=margin, p=p, reduction=reduction)
        return cls(margin=margin, p=p, class_weight=class_weight, reduction=reduction)

    return _row_loss(make_loss, input, target, True, reduction, torch_loss,
                     reads_input=True, max_ndim=2)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,
                                reduction="mean"):
    """Drop-in ``torch.nn.functional.multilabel_soft_margin_loss``: fastloss
    ``multilabel_soft_margin(class_weight=weight)``; (N, C) or unbatched (C,) input
    (integer targets are read as the input's dtype, as torch promotes them)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.multilabel_soft_margin_loss, weight=weight,
                                   reduction=reduction)

    def make_loss():
        class_weight = _class_weight(weight, input, input.shape[-1])
        if class_weight is False:
            return None
        if class_weight is None:
            return _cached_loss(fl.MultilabelSoftMargin, reduction=reduction)
        return fl.MultilabelSoftMargin(class_weight=class_weight, reduction=reduction)

    return _row_loss(make_loss, input, target, False, reduction, torch_loss,
                     reads_input=True, max_ndim=2, integer_target=True)


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Drop-in ``torch.nn.functional.multilabel_margin_loss``: fastloss
    ``multilabel_margin``; (N, C) or unbatched (C,) input, int64 target of the input's
    shape (each row's classes, ended by -1)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.multilabel_margin_loss, reduction=reduction)
    return _row_loss(lambda: _cached_loss(fl.MultilabelMargin, reduction=reduction), input,
                     target, True, reduction, torch_loss, reads_input=True, max_ndim=2,
                     per_row=False)


def _torchvision_sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction):
    """torchvision.ops.sigmoid_focal_loss, as torchvision writes it (the fall-back)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """Drop-in ``torchvision.ops.sigmoid_focal_loss`` (RetinaNet's focal loss of logits):
    fastloss ``binary_focal_cross_entropy(from_logits=True, gamma=gamma, alpha=alpha)``,
    ``alpha < 0`` meaning no class balancing, as in torchvision.

    Where torchvision's ``1 - p_t`` cancels (``|inputs|`` beyond ~15, terms below ~1e-7
    relative to the cross-entropy) the kernel's value is the exact one.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported "
                         f"reduction modes: 'none', 'mean', 'sum'")
    torch_loss = functools.partial(_torchvision_sigmoid_focal_loss, alpha=alpha,
                                   gamma=gamma, reduction=reduction)
    # integer targets go to the fall-back, which raises as torchvision does
    return _elementwise(
        lambda r: _cached_loss(fl.BinaryFocalCrossEntropy, from_logits=True, gamma=gamma,
                               alpha=None if alpha < 0 else alpha, reduction=r),
        inputs, targets, reduction, torch_loss, reads_input=True)


# -- layer 3: the modules ----------------------------------------------------------------
# Subclasses of torch.nn's modules: the same constructor, attributes, registered buffers
# (weight, pos_weight), state_dict and isinstance; only forward calls fastloss.

class MSELoss(torch.nn.MSELoss):
    """``torch.nn.MSELoss`` computed by :func:`mse_loss`."""

    def forward(self, input, target):
        return mse_loss(input, target, reduction=self.reduction)


class L1Loss(torch.nn.L1Loss):
    """``torch.nn.L1Loss`` computed by :func:`l1_loss`."""

    def forward(self, input, target):
        return l1_loss(input, target, reduction=self.reduction)


class HuberLoss(torch.nn.HuberLoss):
    """``torch.nn.HuberLoss`` computed by :func:`huber_loss`."""

    def forward(self, input, target):
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    """``torch.nn.SmoothL1Loss`` computed by :func:`smooth_l1_loss`."""

    def forward(self, input, target):
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCELoss(torch.nn.BCELoss):
    """``torch.nn.BCELoss`` computed by :func:`binary_cross_entropy`."""

    def forward(self, input, target):
        return binary_cross_entropy(input, target, weight=self.weight,
                                    reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` computed by :func:`binary_cross_entropy_with_logits`."""

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight,
                                                pos_weight=self.pos_weight,
                                                reduction=self.reduction)


class PoissonNLLLoss(torch.nn.PoissonNLLLoss):
    """``torch.nn.PoissonNLLLoss`` computed by :func:`poisson_nll_loss`."""

    def forward(self, log_input, target):
        return poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full,
                                eps=self.eps, reduction=self.reduction)


class SoftMarginLoss(torch.nn.SoftMarginLoss):
    """``torch.nn.SoftMarginLoss`` computed by :func:`soft_margin_loss`."""

    def forward(self, input, target):
        return soft_margin_loss(input, target, reduction=self.reduction)


class HingeEmbeddingLoss(torch.nn.HingeEmbeddingLoss):
    """``torch.nn.HingeEmbeddingLoss`` computed by :func:`hinge_embedding_loss`."""

    def forward(self, input, target):
        return hinge_embedding_loss(input, target, margin=self.margin,
                                    reduction=self.reduction)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`cross_entropy`."""

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight,
                             ignore_index=self.ignore_index, reduction=self.reduction,
                             label_smoothing=self.label_smoothing)


class NLLLoss(torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` (:func:`nll_loss` is torch's own)."""

    def forward(self, input, target):
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction)


class KLDivLoss(torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` computed by :func:`kl_div`."""

    def forward(self, input, target):
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    """``torch.nn.MultiMarginLoss`` computed by :func:`multi_margin_loss`."""

    def forward(self, input, target):
        return multi_margin_loss(input, target, p=self.p, margin=self.margin,
                                 weight=self.weight, reduction=self.reduction)


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    """``torch.nn.MultiLabelSoftMarginLoss`` computed by :func:`multilabel_soft_margin_loss`."""

    def forward(self, input, target):
        return multilabel_soft_margin_loss(input, target, weight=self.weight,
                                           reduction=self.reduction)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    """``torch.nn.MultiLabelMarginLoss`` computed by :func:`multilabel_margin_loss`."""

    def forward(self, input, target):
        return multilabel_margin_loss(input, target, reduction=self.reduction)
