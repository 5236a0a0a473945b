"""PyTorch adapter: drop-in ``torch.nn.functional`` losses and ``torch.nn`` loss modules
whose value and gradient come from one fused fastloss pass.

>>> import fastloss.torch as FL
>>> loss = FL.cross_entropy(logits, labels, label_smoothing=0.1)   # as F.cross_entropy
>>> loss.backward()                                                # gradient from the kernel

The functions have the names, signatures, defaults and results of
``torch.nn.functional``; the modules subclass ``torch.nn``'s own loss modules (same
constructor, attributes, buffers and ``state_dict``) and only replace ``forward``.

Design, in three layers (the split of Liger-Kernel):

1. The kernel calls.  Eager mode: :class:`_FusedLoss`, one ``torch.autograd.Function``
   for every loss, parametrised by a fastloss loss object.  Its forward runs
   ``value_and_grad`` once, writing the gradient into a buffer (reused for large
   inputs once nothing references it: :class:`_GradientBuffers`) through a NumPy view;
   its backward hands that tensor out, untouched when the upstream gradient is the
   scalar 1 (the ``loss.backward()`` case), else multiplied by it in place, so
   ``.grad`` is the kernel's own output, not a copy.  CPU float32/float64 tensors reach
   the kernel as NumPy views, so nothing is copied; bfloat16/float16 inputs go through
   a float32 copy, as torch's autocast casts them.  When the input needs no gradient,
   only the value is computed.  Traced or transformed calls (torch.compile,
   torch.func, torch.export, dispatch modes): the custom operators ``fastloss::loss``
   and ``fastloss::loss_backward`` (layer 1b), which also run one fused pass.
2. The functions map torch's arguments onto a fastloss loss, or decide it cannot compute
   this call (:func:`_fall_back`, which :func:`explain` and the debug log report).
3. The modules call the functions.

Everything fastloss does not compute exactly as torch does falls back to
``torch.nn.functional`` itself, so results always equal torch's: tensors that are not
dense CPU float32/float64/bfloat16/float16 (CUDA, sparse, subclasses), mixed dtypes
(but the signed integer targets of ``poisson_nll_loss``, ``soft_margin_loss`` and
``hinge_embedding_loss``, converted to the input's dtype as torch promotes them) or
broadcasting shapes, a target or weight that requires a gradient, per-element weights,
``kl_div(reduction="none")``, jit tracing and ``__torch_function__`` modes not of torch,
any value fastloss rejects in eager mode (torch then raises its own error or computes
its own answer), and a double backward (``create_graph=True``), which differentiates
torch's own formula.  ``nll_loss`` is torch's: its input already is log-probabilities,
so there is no softmax to fuse and its gradient is a scatter of ``-weight`` (see
:func:`nll_loss`).  ``kl_div`` runs fastloss's elementwise ``PointwiseKLDivergence``
kernel, which reads its input as log q, as torch does (see :func:`kl_div`).  One result
differs on purpose: ``soft_margin_loss`` stays finite where torch's ``log(1 +
exp(-target * input))`` overflows (to inf, with a NaN gradient).

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
import json
import logging
import math
from typing import Optional, Tuple
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import _reduction

import fastloss as fl
from fastloss import _threads, _torch_extension as _extension

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
# also public, not torch's: explain, Explanation, release_buffers, build_extension,
# extension_status

_KERNEL_DTYPES = (torch.float32, torch.float64)
_LABEL_DTYPES = (torch.int64,)     # torch's cross_entropy/multi_margin labels are Long
# Integer targets (labels +-1, counts) that torch promotes to the input's dtype inside
# the losses that take them: the kernel reads them converted the same way.  Not bool or
# unsigned: torch's soft_margin_loss backward negates the target in its own dtype (an
# error for bool, 255 for a uint8 1), and those calls stay torch's.
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _traced_types():
    """The tensor types a tracer hands the adapter's Python code: the plain ones, and
    the fake and functional tensors of torch.export and of dispatch modes."""
    types = list(_PLAIN_TYPES)
    for module, name in (("torch._subclasses.fake_tensor", "FakeTensor"),
                         ("torch._subclasses.functional_tensor", "FunctionalTensor")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):  # pragma: no cover - private API moved
            pass
    return tuple(types)

# torch.nn.functional.kl_div's warning for reduction="mean", repeated on the fast path.
_KL_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release.")


# -- layer 1: the autograd node ---------------------------------------------------------

class _Call:
    """What a node needs besides its tensors (one object, so ``apply`` gets three
    arguments): the fastloss ``loss``, ``sample_weight`` (an array or None), ``scale`` (a
    constant factor of the loss, applied to the value in forward and folded into the
    upstream gradient in backward), ``torch_loss(input, target)`` (torch's own formula of
    the same value, differentiated instead for a double backward) and ``reads_input``
    (torch's own backward of this loss reads the input, so it fails after the input is
    modified in place, and so does this one)."""

    __slots__ = ("loss", "sample_weight", "scale", "torch_loss", "reads_input")

    def __init__(self, loss, sample_weight, scale, torch_loss, reads_input):
        self.loss, self.sample_weight, self.scale = loss, sample_weight, scale
        self.torch_loss, self.reads_input = torch_loss, reads_input


class _FusedLoss(torch.autograd.Function):
    """A fastloss loss as an autograd node: gradient computed at forward time.

    ``apply(input, target, call)``: ``input`` is the tensor differentiated, ``target`` a
    tensor needing no gradient (both read by the kernel through NumPy views), ``call`` a
    :class:`_Call`.

    The kernel's gradient is kept as a plain attribute, not a saved tensor: the first
    backward takes it (returned as is for ``loss.backward()``, else scaled in place) and
    drops the reference, so the gradient autograd hands out is never a buffer this node
    still holds.  A later backward (``retain_graph=True``) runs the kernel again on the
    saved input, which must not have been modified in place since forward.
    """

    @staticmethod
    def forward(ctx, input, target, call):
        value, grad = _fused_pass(call.loss, input, target, call.sample_weight)
        # Saved for a later backward: autograd frees them with the graph and checks on
        # unpacking that they were not modified in place.
        ctx.save_for_backward(input, target)
        ctx.kernel_grad, ctx.call = grad, call
        return _to_tensor(value, input, call.scale)

    @staticmethod
    def backward(ctx, grad_output):
        call = ctx.call
        if torch.is_grad_enabled():
            # create_graph=True: the kernel's gradient is a constant, so a gradient of the
            # gradient must come from a graph of torch's own formula at the input.
            input, target = _saved_input(ctx, "a double backward (create_graph=True)")
            with torch.enable_grad():
                value = call.torch_loss(input, target)
            (grad_input,) = torch.autograd.grad(value, input, grad_output, create_graph=True)
            return grad_input, None, None
        grad = ctx.kernel_grad
        if grad is None:
            # the kernel's gradient went to an earlier backward: compute it again
            input, target = _saved_input(ctx, "a backward after the first one")
            grad = _fused_pass(call.loss, input, target, call.sample_weight)[1]
        else:
            if call.reads_input:
                # torch's backward reads the input here: raise torch's error if it was
                # modified in place (unpacking checks), as torch.nn.functional does
                _ = ctx.saved_tensors
            ctx.kernel_grad = None  # handed out once: this node keeps no reference to it
        # `grad` is now this call's alone: scaled in place, and returned without a copy
        # (for loss.backward(), autograd takes it as .grad as it is)
        if grad_output.ndim == 0:
            if call.scale == 1.0 and grad_output.item() == 1.0:
                return grad, None, None
        elif grad_output.ndim < grad.ndim:
            grad_output = _per_row(grad_output, grad, getattr(call.loss, "axis", -1))
        if call.scale != 1.0:
            grad_output = grad_output * call.scale
        return grad.mul_(grad_output), None, None


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
        if ctx.call.reads_input or "inplace operation" not in str(error):
            raise
        raise RuntimeError(_MODIFIED_INPUT.format(what)) from error


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _to_tensor(value, like, scale=1.0):
    """fastloss's result times ``scale`` as a tensor: a 0-d tensor of ``like``'s dtype for
    a float, the array itself (no copy) for reduction="none"."""
    if isinstance(value, np.ndarray):
        if scale != 1.0:
            np.multiply(value, scale, out=value)
        return torch.from_numpy(value)
    value *= scale
    if abs(value) >= _ROUNDS_TO_FLOAT32_INFINITY and like.dtype is torch.float32:
        value = math.copysign(math.inf, value)   # as the cast rounds it, without its warning
    return torch.from_numpy(np.array(value, dtype=_NUMPY_DTYPES[like.dtype]))


# float32's largest value plus half an ulp: a double at or beyond it rounds to infinity
_ROUNDS_TO_FLOAT32_INFINITY = float.fromhex("0x1.ffffffp127")


class _GradientBuffers:
    """Gradient buffers of large inputs, reused once nothing else references them.

    A new tensor of tens of megabytes is fresh memory from the system: the kernel's
    first write to each page faults it in (and zeroes it), which costs about twice the
    kernel's whole pass on an LM head (measured: 512 x 32000 float32, 9.6 ms kernel,
    about 19 ms of page faults).  A training loop hands the gradient of the loss to the
    layer below, whose backward reads it and lets it go; the next step's loss can then
    write into the same, already mapped, memory.

    Each buffer is kept as a private tensor and handed out as a separate view of it.
    A buffer is reused only when its storage has no user but that private tensor:
    every tensor, view, ``.grad`` or NumPy array made from a handed-out gradient holds a
    reference to the storage, so memory somebody can still see is never written again.
    At most ``capacity`` buffers are kept (the most recently used); :meth:`clear` drops
    them.
    """

    #: below this size a new buffer comes from the allocator's free lists, not new pages
    min_bytes = 1 << 20
    capacity = 4

    def __init__(self):
        self._buffers = {}   # (dtype, numel) -> private tensor; insertion order = use order

    def take(self, input):
        """(tensor, ndarray view) of ``input``'s shape and dtype, C-contiguous."""
        numel = input.numel()
        if numel * input.element_size() < self.min_bytes:
            array = np.empty(input.shape, _NUMPY_DTYPES[input.dtype])
            return torch.from_numpy(array), array
        key = (input.dtype, numel)
        buffer = self._buffers.pop(key, None)  # atomic: a concurrent call allocates anew
        # 2: the private tensor's reference, and the temporary one of untyped_storage()
        if buffer is None or _storage_users(buffer) != 2:
            buffer = torch.empty(numel, dtype=input.dtype)
        _put_recent(self._buffers, key, buffer, self.capacity)
        grad = buffer.view(input.shape)
        return grad, grad.numpy()

    def clear(self):
        """Drop every kept buffer (their memory is freed once nothing else uses it)."""
        self._buffers.clear()


def _storage_users(tensor):
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


def _put_recent(mapping, key, value, capacity):
    """``mapping[key] = value`` as the most recent entry (insertion order is use
    order), dropping the oldest beyond ``capacity``."""
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > capacity:
        del mapping[next(iter(mapping))]


def _identity(tensor):
    """What makes ``tensor`` the same tensor with the same values as at another call:
    its memory, view and version counter (every in-place change bumps it)."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor._version)


_buffers = _GradientBuffers()


def _fused_pass(loss, input, target, sample_weight):
    """(value, gradient tensor) of ``loss`` from one kernel pass over the tensors' memory,
    the gradient in a buffer of :class:`_GradientBuffers`; ``sample_weight`` an array or
    None."""
    grad, grad_array = _buffers.take(input)
    # no detach(): every caller runs without grad mode (an autograd forward or backward,
    # or an operator's kernel), and it costs a microsecond on the eager path
    value, _ = loss.value_and_grad(input.numpy(), target.numpy(), sample_weight,
                                   out=grad_array)
    return value, grad


def release_buffers():
    """Free the gradient buffers fastloss.torch keeps for reuse.

    The adapter reuses the gradient buffer of a large input (1 MiB and more) once
    nothing references it any more, which spares the page faults of fresh memory on
    every call; it keeps up to four such buffers (the most recently used sizes).  Call
    this to give that memory back, e.g. after training.
    """
    _buffers.clear()
    _kept.clear()


def _run(loss, input, target, sample_weight, torch_loss, scale=1.0, reads_input=False):
    """Evaluate ``scale * loss`` with fastloss: an autograd node when ``input`` needs a
    gradient, the value alone otherwise.  fastloss's ValueError/TypeError propagate (the
    caller then falls back to torch).  ``reads_input``: see :class:`_Call`."""
    if type(loss) is _OperatorLoss:
        result = _run_operator(loss, input, target, sample_weight, scale)
        how = "custom operators (traced or transformed)"
    elif input.requires_grad and torch.is_grad_enabled():
        result = _FusedLoss.apply(input, target,
                                  _Call(loss, sample_weight, scale, torch_loss, reads_input))
        how = "fused value and gradient (eager)"
    else:
        result = _to_tensor(loss(input.numpy(), target.numpy(), sample_weight), input, scale)
        how = "value only (no gradient wanted)"
    if _explaining:
        _record(torch_loss, "fastloss", how)
    return result


# -- layer 1c: the C++ fast path (eager calls) --------------------------------------------
# The Python path above costs ~25-35 us a call around the kernel; a small head's kernel
# takes 1-3 us.  fastloss/_torch_native.cpp does the same call in C++ (tensor checks,
# the kernel through its C entry, the autograd node): it is built against the installed
# torch at first use (fastloss._torch_extension: in the background by default, cached).
# An adapted function first offers its call to _fast with the call's *plan* (the loss,
# reduction, parameters and torch's formula, made once per parameters); the extension
# answers None for anything it does not compute (a dtype, layout, shape, size or
# argument outside its checks, a kernel flag), and the Python path then takes the call
# as before, with its own checks, errors and fall-backs.

_PLANS = {}          # (torch function, parameters...) -> the extension's plan index, or -1
_MAX_PLANS = 1024    # the extension keeps its plans for the life of the process


def _fast(key, make_plan, input, target, weight=None):
    """``key[0]``'s call through the C++ fast path, or None for the Python path.

    ``key``: torch's function and every parameter that changes the plan (hashable);
    ``make_plan()``: ``(fastloss loss, torch_loss(input, target, weight), reads_input,
    scale, nan_is_error)`` or None, called once per key; ``weight``: a per-class weight
    (row losses) or ``pos_weight`` tensor, read by the kernel as it is.
    """
    native = _extension.module
    if native is None:
        if _extension._state == "not built" and _kernels_may_run():
            _extension.request()   # FASTLOSS_TORCH_EXTENSION=wait: loaded on return
            native = _extension.module
        if native is None:
            return None
    if not (type(input) in _PLAIN_TYPES and type(target) in _PLAIN_TYPES
            and (weight is None or type(weight) in _PLAIN_TYPES) and _kernels_may_run()):
        return None
    try:
        plan = _PLANS.get(key)
    except TypeError:   # an unhashable parameter: the Python path judges it
        return None
    if plan is None:
        plan = _PLANS[key] = _new_plan(native, make_plan) if len(_PLANS) < _MAX_PLANS else -1
    if plan < 0:
        return None
    result = native.run(plan, input, target, weight, _threads._num_threads)
    if _explaining and result is not None:
        _record(key[0], "fastloss", "fused value and gradient (eager, C++)"
                if result.requires_grad else "value only (no gradient wanted, C++)")
    return result


def build_extension(wait=True, timeout=None):
    """Load the C++ fast path of eager calls now, building it if needed.

    By default (``FASTLOSS_TORCH_EXTENSION=auto``) the first eager call builds it in the
    background; call this to have it before timing a loop.  The build needs a C++
    compiler and ninja; it is cached in torch's extension directory.

    Parameters
    ----------
    wait : bool, default True
        Wait until it is loaded (or failed); otherwise start the build and return.
    timeout : float, optional
        Seconds to wait at most.

    Returns
    -------
    bool
        Whether it is loaded; :func:`extension_status` says why not.
    """
    return _extension.build(wait, timeout)


def extension_status():
    """``(state, reason)`` of the C++ fast path: state is ``"not built"``,
    ``"building"``, ``"ready"``, ``"failed"`` or ``"disabled"``
    (``FASTLOSS_TORCH_EXTENSION=0``); reason says why it failed or is disabled."""
    return _extension.status()


_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
# the dense-target row losses the C++ path runs (their kernels read no per-loss state
# beyond label smoothing, z_loss and the class weights)
_DENSE_ROW_LOSSES = tuple(filter(None, (getattr(fl, name, None) for name in (
    "CategoricalCrossEntropy", "MultilabelSoftMargin"))))


def _new_plan(native, make_plan):
    """Register ``make_plan()``'s call with the extension: its index, or -1 when the
    fast path does not take these parameters (fastloss refuses them, or a loss family
    the extension does not run)."""
    try:
        made = make_plan()
    except (ValueError, TypeError):
        return -1
    if made is None:
        return -1
    loss, torch_loss, reads_input, scale, nan_is_error = made
    options = dict(label_smoothing=0.0, z_loss=0.0, ignore_index=None, weighted_mean=False)
    if isinstance(loss, fl._pointwise.PointwiseLoss):
        family, params = 0, loss._kernel_parameters
    elif type(loss) is getattr(fl, "SparseCategoricalCrossEntropy", None) and loss.axis == -1:
        family, params = 1, b""
        smoothing, z_loss = loss._kernel_options[:2]
        options.update(label_smoothing=smoothing, z_loss=z_loss,
                       ignore_index=loss._ignore_index, weighted_mean=loss._weighted_mean)
    elif type(loss) in _DENSE_ROW_LOSSES and getattr(loss, "axis", -1) == -1:
        family, params = 2, b""
        smoothing, z_loss = loss._kernel_options[:2]
        options.update(label_smoothing=smoothing, z_loss=z_loss)
    else:
        return -1
    return native.add_plan(family, int(loss._kernel_id), int(loss._cost), params,
                           _REDUCTION_CODES[loss.reduction], float(scale),
                           options["label_smoothing"], options["z_loss"],
                           options["ignore_index"], options["weighted_mean"],
                           bool(reads_input), bool(nan_is_error), torch_loss)


def _plan(loss, torch_function, reads_input, scale=1.0, nan_is_error=False, weight_name=None,
          **torch_kwargs):
    """What a ``make_plan`` of :func:`_fast` returns: torch's formula is
    ``torch_function(input, target, **torch_kwargs)``, the weight passed as
    ``weight_name``."""
    def torch_loss(input, target, weight):
        extra = {weight_name: weight} if weight_name else {}
        return torch_function(input, target, **torch_kwargs, **extra)
    return loss, torch_loss, reads_input, scale, nan_is_error


# -- layer 1b: the custom operators (torch.compile, torch.func, torch.export) -------------
# Where torch traces or transforms the call (tensors without memory, or a graph to
# record), the kernels run behind two operators registered with torch.library:
#   fastloss::loss(str loss, Tensor input, Tensor target, Tensor? sample_weight,
#                  Tensor? weight, bool keep_grad=False) -> Tensor
#   fastloss::loss_backward(str loss, Tensor grad_value, Tensor input, Tensor target,
#                           Tensor? sample_weight, Tensor? weight) -> Tensor
# ``loss`` names the fastloss loss and its scalar parameters (JSON); ``weight`` is its
# per-class weight vector.  fastloss::loss is differentiable: its backward is
# fastloss::loss_backward, the gradient scaled by the upstream gradient ``grad_value``
# inside the call.  With keep_grad the forward runs the fused value+gradient pass and
# keeps the gradient for the backward of the same arguments (_KeptGradients): a traced
# graph cannot hand an output on unscaled (whether the upstream gradient is 1 is data
# there), and a product pass over a new tensor cost more than the kernel (compiled CE
# 4096 x 1000: kernel 6 ms + product and page faults 13 ms).  Both operators have fake
# implementations (shapes only) and a vmap rule (one call per batch entry).

_WEIGHT_PARAMETER = {fl.BinaryCrossEntropy: "pos_weight"}


@functools.lru_cache(maxsize=256)
def _spec_parts(spec):
    """(class, parameters) of an operator's ``loss`` argument."""
    name, params = json.loads(spec)
    cls = getattr(fl, name, None) or getattr(fl._pointwise, name, None)
    if not (isinstance(cls, type) and issubclass(cls, fl.Loss)):
        raise ValueError(f"loss: no fastloss loss is named {name!r}")
    return cls, params


@torch.compiler.assume_constant_result
def _checked_spec(name, params):
    """The operators' ``loss`` argument for the loss class ``name`` with the scalar
    ``params`` (sorted (name, value) pairs): its name and parameters as JSON, once
    fastloss accepts them (a ValueError/TypeError otherwise).  torch.compile runs this
    in Python while it traces the caller, and records the string as a constant."""
    spec = json.dumps([name, dict(params)], sort_keys=True)
    cls, checked = _spec_parts(spec)
    _built_loss(cls, None, checked)
    return spec


class _OperatorLoss:
    """A fastloss loss as the custom operators take it (under tracing)."""

    __slots__ = ("spec", "weight")

    def __init__(self, spec, weight):
        self.spec, self.weight = spec, weight


def _operator_loss(spec, weight):
    """The loss object an operator call computes."""
    cls, params = _spec_parts(spec)
    return _built_loss(cls, None if weight is None else weight.detach(), params)


def _value_shape(spec, input):
    cls, params = _spec_parts(spec)
    if params.get("reduction", "mean") != "none":
        return ()
    if not cls.per_row:
        return tuple(input.shape)
    if params.get("axis", -1) == 1:     # one value per position of (N, C, d1, ...)
        return (input.shape[0], *input.shape[2:])
    return tuple(input.shape[:1])


def _array_or_none(tensor):
    return None if tensor is None else tensor.detach().numpy()


@torch.library.custom_op("fastloss::loss", mutates_args=())
def _loss_op(loss: str, input: torch.Tensor, target: torch.Tensor,
             sample_weight: Optional[torch.Tensor], weight: Optional[torch.Tensor],
             keep_grad: bool = False) -> torch.Tensor:
    """The value of the fastloss loss ``loss`` (see :func:`_checked_spec`); with
    ``keep_grad`` the kernel computes the gradient in the same pass and keeps it for
    fastloss::loss_backward of the same arguments (:class:`_KeptGradients`)."""
    fused = _operator_loss(loss, weight)
    if not keep_grad:
        return _to_tensor(fused(input.detach().numpy(), target.numpy(),
                                _array_or_none(sample_weight)), input)
    value, grad = _fused_pass(fused, input, target, _array_or_none(sample_weight))
    _kept.keep((loss, input, target, sample_weight, weight), grad)
    return _to_tensor(value, input)


@torch.library.custom_op("fastloss::loss_backward", mutates_args=())
def _loss_backward_op(loss: str, grad_value: torch.Tensor, input: torch.Tensor,
                      target: torch.Tensor, sample_weight: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor]) -> torch.Tensor:
    """``grad_value`` times the gradient of fastloss::loss with respect to ``input``:
    the gradient its forward kept, else the kernel's pass again (the same loop, so the
    same bits)."""
    grad = _kept.take((loss, input, target, sample_weight, weight))
    if grad is None:
        grad = _fused_pass(_operator_loss(loss, weight), input, target,
                           _array_or_none(sample_weight))[1]
    if grad_value.ndim == 0:
        if grad_value.item() != 1.0:      # a plain loss.backward() needs no product
            grad.mul_(grad_value)
    elif grad_value.ndim < grad.ndim:
        grad.mul_(_per_row(grad_value, grad, _spec_parts(loss)[1].get("axis", -1)))
    else:
        grad.mul_(grad_value)
    return grad


class _KeptGradients:
    """Gradients that fastloss::loss computed with its value (``keep_grad``), waiting
    for the fastloss::loss_backward of the same call.

    A traced graph runs the loss's forward and backward as two operators; recomputing
    the gradient in backward would read the input a second time (compiled CE
    4096 x 1000: 4.4 ms against 3.2 ms for the fused pass).  A kept gradient is handed
    to a backward only for the very same arguments: the same loss, and tensors with the
    same storage, offset, shape, strides, dtype and version counter (any in-place
    change since the forward bumps it), so it is the gradient that backward would
    compute.  A backward that finds none computes it again.  It is taken once, and at
    most ``capacity`` are kept (a forward whose backward never comes, e.g. evaluation
    of a model whose parameters need gradients, leaves one behind until it is pushed
    out).
    """

    capacity = 4

    def __init__(self):
        self._grads = {}

    @staticmethod
    def _key(arguments):
        loss, *tensors = arguments
        return (loss,) + tuple(None if t is None else _identity(t) for t in tensors)

    def keep(self, arguments, grad):
        _put_recent(self._grads, self._key(arguments), grad, self.capacity)

    def take(self, arguments):
        return self._grads.pop(self._key(arguments), None)

    def clear(self):
        self._grads.clear()


_kept = _KeptGradients()


def _per_row(grad_value, grad, class_axis=-1):
    """The upstream gradient of reduction="none" of a row loss (one value per row, or
    per position of scores with the classes on ``class_axis`` 1) broadcast over
    ``grad``."""
    if class_axis == 1:
        return grad_value.unsqueeze(1)
    return grad_value.reshape(grad_value.shape + (1,) * (grad.ndim - grad_value.ndim))


@_loss_op.register_fake
def _loss_fake(loss, input, target, sample_weight, weight, keep_grad=False):
    return input.new_empty(_value_shape(loss, input))


@_loss_backward_op.register_fake
def _loss_backward_fake(loss, grad_value, input, target, sample_weight, weight):
    return input.new_empty(input.shape)


def _loss_setup(ctx, inputs, output):
    ctx.spec = inputs[0]
    ctx.save_for_backward(*inputs[1:5])


def _loss_backward(ctx, grad_value):
    if _differentiating_gradient():
        raise RuntimeError(_NO_DOUBLE_BACKWARD)
    input, target, sample_weight, weight = ctx.saved_tensors
    with torch.no_grad():   # a constant of this graph (not differentiated: see above)
        grad = _loss_backward_op(ctx.spec, grad_value, input, target, sample_weight, weight)
    return None, grad, None, None, None


def _differentiating_gradient():
    """Whether this backward is itself differentiated: create_graph=True in eager mode,
    or a torch.func.grad around the one computing this backward."""
    if torch.compiler.is_compiling():
        return False
    if _functorch_active():
        # this backward runs inside one grad transform; a second one differentiates it
        return _differentiating_transforms() > 1
    return torch.is_grad_enabled()


def _differentiating_transforms():
    """How many torch.func grad/jvp transforms are active."""
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - private API moved: assume nesting
        return 2
    return sum(interpreter.key() in (TransformType.Grad, TransformType.Jvp)
               for interpreter in retrieve_all_functorch_interpreters())


_NO_DOUBLE_BACKWARD = (
    "fastloss.torch: a gradient of the gradient (create_graph=True, torch.func.hessian, "
    "nested torch.func.grad) of a loss traced through fastloss's operators is not "
    "available: the fused kernel computes the first derivative only.  Use "
    "torch.nn.functional for this loss.")

_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def _per_entry(op, in_dims, size, leading, tensors):
    """vmap by one call of ``op(*leading, *entry tensors)`` per batch entry."""
    entries = []
    for b in range(size):
        args = [t if dim is None or t is None else t.select(dim, b)
                for t, dim in zip(tensors, in_dims)]
        entries.append(op(*leading, *args))
    return torch.stack(entries), 0


def _loss_vmap(info, in_dims, loss, input, target, sample_weight, weight,
               keep_grad=False):
    return _per_entry(functools.partial(_loss_op, keep_grad=keep_grad), in_dims[1:5],
                      info.batch_size, (loss,), (input, target, sample_weight, weight))


def _loss_backward_vmap(info, in_dims, loss, *tensors):
    return _per_entry(_loss_backward_op, in_dims[1:], info.batch_size, (loss,), tensors)


torch.library.register_vmap("fastloss::loss", _loss_vmap)
torch.library.register_vmap("fastloss::loss_backward", _loss_backward_vmap)


class _OperatorFunction(torch.autograd.Function):
    """fastloss::loss as an autograd node that torch.func transforms accept (torch does
    not run an operator's own autograd formula under ``torch.func.grad``).  Its vmap
    rule is generated: forward and backward run the operators under vmap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, sample_weight, weight, spec):
        return _loss_op(spec, input, target, sample_weight, weight, keep_grad=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, sample_weight, weight, spec = inputs
        _loss_setup(ctx, (spec, input, target, sample_weight, weight), output)

    @staticmethod
    def backward(ctx, grad_value):
        return _loss_backward(ctx, grad_value)[1], None, None, None, None


def _run_operator(loss, input, target, sample_weight, scale):
    """``scale * loss`` through the operators (the caller traces or transforms)."""
    if _needs_grad(input):
        value = _OperatorFunction.apply(input, target, sample_weight, loss.weight, loss.spec)
    else:
        value = _loss_op(loss.spec, input, target, sample_weight, loss.weight)
    return value if scale == 1.0 else value * scale


# -- when fastloss may run ---------------------------------------------------------------

def _noop_false():
    return False


_TRACED_TYPES = _traced_types()
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", _noop_false)
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", _noop_false)
_tracing = getattr(torch._C, "_get_tracing_state", lambda: None)


def _function_modes():
    """The active ``__torch_function__`` modes but torch's default-device context, or
    None when torch's private API to list them moved."""
    if not _function_mode_enabled():
        return ()
    try:
        from torch.overrides import _get_current_function_mode_stack
        from torch.utils._device import DeviceContext
    except ImportError:  # pragma: no cover - private API moved: be safe
        return None
    return [mode for mode in _get_current_function_mode_stack()
            if not isinstance(mode, DeviceContext)]


def _other_function_mode():
    """A ``__torch_function__`` mode other than torch's default-device context is
    active."""
    modes = _function_modes()
    return modes is None or len(modes) > 0


def _user_function_mode():
    """A ``__torch_function__`` mode not of torch itself (torch.export's are) is active:
    it must see the call to torch's function, as it would without fastloss."""
    modes = _function_modes()
    return modes is None or any(not type(mode).__module__.startswith("torch.")
                                for mode in modes)


def _kernels_may_run():
    """True when the kernels can be called directly on the tensors' memory: not under
    torch.compile, torch.export, functorch transforms (vmap, grad, ...), dispatch or
    function modes, or jit tracing."""
    # is_compiling() first: dynamo folds it to True, so it never traces the other checks
    return not (torch.compiler.is_compiling() or _functorch_active() or _dispatch_stack_len()
                or _tracing() is not None or _other_function_mode())


def _operators_may_run():
    """Where the kernels cannot run directly, whether fastloss's custom operators can:
    under torch.compile, torch.export, functorch transforms and dispatch modes (which
    see the operator, e.g. fake tensors), but not under jit tracing or a user's
    ``__torch_function__`` mode, which must see torch's own call."""
    return _tracing() is None and not _user_function_mode()


def _plain(tensor, dtypes, types=_PLAIN_TYPES):
    """An ordinary dense CPU tensor of one of ``dtypes`` (readable as a NumPy view; of
    ``types``, which under tracing also admits the tracer's tensors)."""
    return (type(tensor) in types and tensor.is_cpu and tensor.dtype in dtypes
            and tensor.layout is torch.strided and not tensor.is_nested)


def _needs_grad(tensor):
    return tensor.requires_grad and torch.is_grad_enabled()


def _tensor_types():
    """The tensor types fastloss computes on here: plain tensors where the kernels run
    directly, also the tracer's under tracing (through the operators), else none."""
    if _kernels_may_run():
        return _PLAIN_TYPES
    return _TRACED_TYPES if _operators_may_run() else ()


def _constant(tensor, like):
    """``tensor`` can be read as a constant in the kernel: plain, ``like``'s dtype, and no
    gradient wanted for it."""
    return _plain(tensor, (like.dtype,), _tensor_types()) and not _needs_grad(tensor)


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
    types = _tensor_types()
    if not _plain(input, _KERNEL_DTYPES, types):
        return None
    if labels:
        return torch.int64 if _plain(target, _LABEL_DTYPES, types) else None
    if ((_plain(target, (input.dtype,), types) and not _needs_grad(target))
            or (integers and _plain(target, _INTEGER_DTYPES, types))):
        return input.dtype
    return None


def _legacy_reduction(size_average, reduce, reduction):
    """torch's mapping of the deprecated size_average/reduce (with its warning)."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


_LOSSES = {}   # (cls, *parameters[, weight's identity]) -> (loss, weight): built once


def _loss(cls, weight=None, **params):
    """The fastloss loss ``cls(**params)``, with ``weight`` (a tensor, or None) as its
    per-class weights (``pos_weight`` of BinaryCrossEntropy, else ``class_weight``).

    Where the kernels run directly, the loss object (built once for scalar parameters);
    under tracing, an :class:`_OperatorLoss` naming it for the custom operators.
    Raises fastloss's ValueError/TypeError for parameters it refuses (the caller then
    falls back to torch).
    """
    if not _kernels_may_run():
        return _OperatorLoss(_checked_spec(cls.__name__, tuple(sorted(params.items()))),
                             weight)
    return _built_loss(cls, weight, params)


def _built_loss(cls, weight, params):
    """``cls(**params)`` with ``weight`` (a tensor needing no gradient, or None) as its
    per-class weights, built once per parameters and weight tensor."""
    key = (cls, *params.items())   # each call site passes its keywords in one order
    if weight is not None:
        # the same weight tensor, unchanged (a module's buffer, call after call); the
        # entry keeps the tensor alive, so its memory cannot become another tensor's
        key += _identity(weight)
    entry = _LOSSES.get(key)
    if entry is None:
        if len(_LOSSES) >= 256:
            _LOSSES.clear()
        if weight is None:
            loss = cls(**params)
        else:
            loss = cls(**{_WEIGHT_PARAMETER.get(cls, "class_weight"): weight.numpy()},
                       **params)
        entry = _LOSSES[key] = (loss, weight)
    return entry[0]


def _row_loss_class(name):
    """A row loss class of fastloss, or None in a build without it."""
    return getattr(fl, name, None)


# -- visibility: which calls ran in fastloss ----------------------------------------------

_log = logging.getLogger("fastloss.torch")
_explaining = []   # the open explain() reports (a stack: explain() may nest)


class Explanation(list):
    """What :func:`explain` saw: one ``(function, ran, how)`` tuple per fastloss.torch
    call, in order.  ``ran`` is ``"fastloss"`` or ``"torch"``; ``how`` says which path
    ran (the fused node, the value alone, the traced operators) or why the call went to
    torch.  ``str()`` gives a readable table; :attr:`result` is the function's result."""

    result = None

    @property
    def fell_back(self):
        """The calls torch computed, with their reasons."""
        return [entry for entry in self if entry[1] == "torch"]

    def __str__(self):
        if not self:
            return "no fastloss.torch call"
        width = max(len(name) for name, _, _ in self)
        return "\n".join(f"{name:<{width}}  {ran:<8}  {how}" for name, ran, how in self)


def explain(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` and report how each fastloss.torch loss in it ran.

    >>> report = fastloss.torch.explain(train_step, batch)
    >>> print(report)
    cross_entropy  fastloss  fused value and gradient (eager)
    mse_loss       torch     input is torch.bfloat16, not float32/float64

    The report lists the calls made while ``fn`` runs, from any thread.  Every call that
    torch computes instead of fastloss (see the fall-back rules) is
    also logged at DEBUG level on the ``fastloss.torch`` logger, with its reason:
    ``logging.getLogger("fastloss.torch").setLevel(logging.DEBUG)`` (and a handler)
    shows them in a running program.  Under torch.compile the report is made while
    torch traces the function (its first call): a compiled function's later calls run
    the recorded graph, with the fastloss operators in it.

    Returns
    -------
    Explanation
        A list of ``(function, "fastloss" | "torch", how or why)``, with the result of
        the call as ``.result``.
    """
    report = Explanation()
    _explaining.append(report)
    try:
        report.result = fn(*args, **kwargs)
    finally:
        # by identity: list equality would take an equal report of an enclosing call
        del _explaining[next(i for i, r in enumerate(_explaining) if r is report)]
    return report


def _caller_name(torch_loss):
    """The adapter function a call went through, named after torch's function."""
    function = getattr(torch_loss, "func", torch_loss)
    return _DISPLAY_NAMES.get(function) or getattr(function, "__name__", "loss")


def _record(torch_loss, ran, how):
    name = _caller_name(torch_loss)
    for report in _explaining:
        report.append((name, ran, how))


def _fall_back(torch_loss, input, target, reason):
    """torch's own ``torch_loss(input, target)``, for the ``reason`` (a string, an
    exception fastloss raised, or a callable giving the string) shown by :func:`explain`
    and the debug log."""
    if _explaining or _log.isEnabledFor(logging.DEBUG):
        if callable(reason):
            reason = reason()
        elif isinstance(reason, Exception):
            reason = f"fastloss refused it: {reason}"
        _record(torch_loss, "torch", reason)
        _log.debug("%s: computed by torch: %s", _caller_name(torch_loss), reason)
    return torch_loss(input, target)


def _unsupported(input, target, labels=False, integers=False):
    """Why :func:`_target_dtype` found no dtype: a callable giving the reason."""
    def reason():
        if not _kernels_may_run() and not _operators_may_run():
            return "jit tracing or a __torch_function__ mode records torch's call"
        types = _tensor_types()
        for name, tensor in (("input", input), ("target", target)):
            if not isinstance(tensor, torch.Tensor):
                return f"{name} is not a tensor"
            if type(tensor) not in types:
                return f"{name} is a {type(tensor).__name__}"
            if not tensor.is_cpu:
                return f"{name} is on {tensor.device}"
            if tensor.layout is not torch.strided or tensor.is_nested:
                return f"{name} is not a dense tensor"
        if input.dtype not in _KERNEL_DTYPES:
            return f"input is {input.dtype}, not float32/float64"
        if labels:
            return f"target is {target.dtype}, not int64 class indices"
        if _needs_grad(target):
            return "target requires a gradient"
        return f"target is {target.dtype}, input {input.dtype}"
    return reason


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
    rows = weight.reshape(shape)[(slice(None),) + (0,) * (input.ndim - 1)]
    rows = rows.expand(input.shape[:1])
    return rows.numpy() if _kernels_may_run() else rows


_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _autocast_on():
    return torch.is_autocast_enabled("cpu")


# torch's Python compositions: autocast casts their parts, not the loss, and they
# return the input's dtype
_COMPOSED_IN_PYTHON = (F.multilabel_soft_margin_loss,)
# torch raises NotImplementedError for half-precision inputs outside autocast
_NO_HALF_KERNEL_IN_TORCH = (F.multi_margin_loss, F.multilabel_margin_loss)


def _half_weight_as_float32(weight, input):
    """A weight of a half-precision input as the float32 kernel reads it: a float32
    copy of a weight of the input's dtype, or a float32 weight under autocast (which
    casts every argument of these losses to float32); else the weight itself."""
    if (input.dtype in _HALF_DTYPES and isinstance(weight, torch.Tensor)
            and (weight.dtype == input.dtype
                 or (weight.dtype == torch.float32 and _autocast_on()))):
        return weight.float()
    return weight


def _half_precision(family, make_loss, input, target, reduction, torch_loss, *args,
                    **kwargs):
    """A bfloat16/float16 input (``family``: _elementwise or _row_loss): computed in
    float32 through the kernel, as torch computes it.

    Under ``torch.autocast("cpu")`` torch's policy for every loss of this module is
    "float32": half-precision arguments are cast to float32 and the result is float32.
    Outside autocast torch computes the half-precision loss itself (in float32
    internally for these reductions) and returns it in the input's dtype (or the
    promoted dtype of input and target).  Here the input (and a half-precision target)
    goes to the kernel through a float32 copy (``.float()``, whose backward casts the
    gradient back to the input's dtype, as torch's autocast cast does) and the value
    is rounded to the dtype torch returns.
    """
    function = getattr(torch_loss, "func", torch_loss)
    autocast = _autocast_on() and function not in _COMPOSED_IN_PYTHON
    if not autocast and function in _NO_HALF_KERNEL_IN_TORCH:
        return _fall_back(torch_loss, input, target,
                          f"torch has no {input.dtype} kernel for it (outside autocast)")
    result_dtype = torch.float32
    if not autocast:
        result_dtype = input.dtype
        if target.is_floating_point():
            result_dtype = torch.promote_types(input.dtype, target.dtype)
    if target.dtype in _HALF_DTYPES:
        target = target.float()
    result = family(make_loss, input.float(), target, reduction, torch_loss, *args,
                    **kwargs)
    for report in _explaining:
        if report and report[-1][1] == "fastloss":
            report[-1] = report[-1][:2] + (
                f"{report[-1][2]}; {input.dtype} input through a float32 copy",)
    return result if result.dtype == result_dtype else result.to(result_dtype)


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
    if input.dtype in _HALF_DTYPES and _plain(input, _HALF_DTYPES, _tensor_types()):
        return _half_precision(_elementwise, make_loss, input, target, reduction, torch_loss,
                               reads_input=reads_input, weight=weight,
                               weight_mean=weight_mean, scale=scale,
                               nan_is_torchs_error=nan_is_torchs_error,
                               integer_target=integer_target)
    dtype = _target_dtype(input, target, integers=integer_target)
    if dtype is None or target.shape != input.shape:
        return _fall_back(torch_loss, input, target,
                          _unsupported(input, target, integers=integer_target))
    kernel_target = target if target.dtype is dtype else target.to(dtype)
    sample_weight = None
    kernel_reduction = reduction
    if weight is not None:
        sample_weight = _row_weights(weight, input)
        if sample_weight is None or input.numel() == 0:
            return _fall_back(torch_loss, input, target,
                              "weight varies within a row (fastloss takes one weight per "
                              "row)")
        if weight_mean == "weight_sum" and reduction == "mean":
            if not isinstance(sample_weight, np.ndarray):
                return _fall_back(torch_loss, input, target,
                                  "a weighted mean divides by the weights' sum, data "
                                  "while torch traces")
            # torch: sum(w * l) / sum(w), w summed over every element
            total = float(sample_weight.sum(dtype=np.float64)) * (
                input.numel() // len(sample_weight))
            if not total or not np.isfinite(total):
                return _fall_back(torch_loss, input, target,
                                  "the weights sum to zero or overflow")
            sample_weight = (sample_weight / total).astype(sample_weight.dtype, copy=False)
            kernel_reduction = "sum"
    try:
        loss = make_loss(kernel_reduction)
        result = _run(loss, input, kernel_target, sample_weight, torch_loss, scale,
                      reads_input)
    except (ValueError, TypeError) as error:
        return _fall_back(torch_loss, input, target, error)
    if (nan_is_torchs_error and type(loss) is not _OperatorLoss
            and bool(result.isnan().any())):
        return _fall_back(torch_loss, input, target,
                          "NaN in the input: torch raises its error")
    return result


def _error_loss(cls, torch_function, input, target, size_average, reduce, reduction,
                weight, reads_input):
    """mse_loss / l1_loss: fastloss ``cls``; torch's ``weight`` (same shape as input,
    mean = sum(w l) / sum(w)) runs in the kernel when it is one weight per row."""
    if weight is None and size_average is None and reduce is None:
        result = _fast((torch_function, reduction), lambda: _plan(
            cls(reduction=reduction), torch_function, reads_input, reduction=reduction),
            input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(torch_function, reduction=reduction, weight=weight)
    if weight is not None and weight.shape != input.shape:
        return _fall_back(torch_loss, input, target, "weight of another shape than input")
    return _elementwise(lambda r: _loss(cls, reduction=r), input, target, reduction,
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
    if weight is None:
        result = _fast((F.huber_loss, reduction, delta), lambda: _plan(
            fl.Huber(delta=delta, reduction=reduction), F.huber_loss, True,
            reduction=reduction, delta=delta), input, target)
        if result is not None:
            return result
    torch_loss = functools.partial(F.huber_loss, reduction=reduction, delta=delta,
                                   weight=weight)
    if weight is not None and weight.shape != input.shape:
        return _fall_back(torch_loss, input, target, "weight of another shape than input")
    return _elementwise(
        lambda r: _loss(fl.Huber, delta=delta, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, weight=weight)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean",
                   beta=1.0):
    """Drop-in ``torch.nn.functional.smooth_l1_loss``: fastloss ``huber(delta=beta) / beta``;
    ``beta=0`` is :func:`l1_loss`."""
    if size_average is None and reduce is None:
        result = _fast((F.smooth_l1_loss, reduction, beta), lambda: _smooth_l1_plan(
            reduction, beta), input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.smooth_l1_loss, reduction=reduction, beta=beta)
    if isinstance(beta, (int, float)) and beta == 0:
        return _elementwise(lambda r: _loss(fl.MeanAbsoluteError, reduction=r),
                            input, target, reduction, torch_loss, reads_input=False)
    # math, not NumPy: torch.compile traces this line (before the fall-back decision) and
    # cannot branch on a NumPy result
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(1.0 / beta)):
        return _fall_back(torch_loss, input, target, "beta is not a positive number")
    return _elementwise(
        lambda r: _loss(fl.Huber, delta=beta, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, scale=1.0 / beta)


def _smooth_l1_plan(reduction, beta):
    """smooth_l1_loss's plan: huber(delta=beta) / beta, or l1 for beta=0."""
    if not (isinstance(beta, (int, float)) and beta >= 0 and math.isfinite(beta)):
        return None
    if beta == 0:
        return _plan(fl.MeanAbsoluteError(reduction=reduction), F.smooth_l1_loss, False,
                     reduction=reduction, beta=beta)
    if not math.isfinite(1.0 / beta):
        return None
    return _plan(fl.Huber(delta=beta, reduction=reduction), F.smooth_l1_loss, True,
                 1.0 / beta, reduction=reduction, beta=beta)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """Drop-in ``torch.nn.functional.binary_cross_entropy`` (input = probabilities, logs
    clamped at -100): fastloss ``binary_cross_entropy``.

    ``weight`` (broadcast to input; mean = mean of w l) runs in the kernel when it is one
    weight per row, e.g. shape (N, 1).  NaN in input or target is torch's RuntimeError
    ("should be between 0 and 1"), as fastloss's range check lets NaN through.
    """
    if weight is None and size_average is None and reduce is None:
        result = _fast((F.binary_cross_entropy, reduction), lambda: _plan(
            fl.BinaryCrossEntropy(from_logits=False, reduction=reduction),
            F.binary_cross_entropy, True, nan_is_error=True, reduction=reduction),
            input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.binary_cross_entropy, weight=weight, reduction=reduction)
    return _elementwise(
        lambda r: _loss(fl.BinaryCrossEntropy, from_logits=False, reduction=r),
        input, target, reduction, torch_loss, reads_input=True, weight=weight,
        nan_is_torchs_error=True)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction="mean", pos_weight=None):
    """Drop-in ``torch.nn.functional.binary_cross_entropy_with_logits``: fastloss
    ``binary_cross_entropy(from_logits=True, pos_weight)``.

    ``pos_weight`` runs in the kernel when it has one value or one per class (the last
    axis); ``weight`` as for :func:`binary_cross_entropy`.
    """
    if weight is None and size_average is None and reduce is None:
        result = _fast((F.binary_cross_entropy_with_logits, reduction), lambda: _plan(
            fl.BinaryCrossEntropy(from_logits=True, reduction=reduction),
            F.binary_cross_entropy_with_logits, True, weight_name="pos_weight",
            reduction=reduction), input, target, pos_weight)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.binary_cross_entropy_with_logits, weight=weight,
                                   reduction=reduction, pos_weight=pos_weight)
    if pos_weight is None:
        def make_loss(r):
            return _loss(fl.BinaryCrossEntropy, from_logits=True, reduction=r)
    else:
        pos_weights = _half_weight_as_float32(pos_weight, input)
        half = input.dtype in _HALF_DTYPES
        if not ((_constant(pos_weights, pos_weights) and pos_weights.dtype == torch.float32
                 if half else _constant(pos_weights, input))
                and input.ndim >= 1 and pos_weights.ndim <= 1
                and pos_weights.numel() in (1, input.shape[-1])):
            return _fall_back(torch_loss, input, target,
                              "pos_weight is not one value or one per class of the input's "
                              "dtype")

        def make_loss(r):
            return _loss(fl.BinaryCrossEntropy, pos_weights.reshape(-1), from_logits=True,
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
    if size_average is None and reduce is None:
        result = _fast((F.poisson_nll_loss, reduction, log_input, full, eps), lambda: _plan(
            fl.Poisson(log_input=log_input, full=full, eps=eps, reduction=reduction),
            F.poisson_nll_loss, False, log_input=log_input, full=full, eps=eps,
            reduction=reduction), input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.poisson_nll_loss, log_input=log_input, full=full,
                                   eps=eps, reduction=reduction)
    return _elementwise(
        lambda r: _loss(fl.Poisson, log_input=log_input, full=full, eps=eps,
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
    if size_average is None and reduce is None:
        result = _fast((F.soft_margin_loss, reduction), lambda: _plan(
            fl.SoftMargin(reduction=reduction), F.soft_margin_loss, True,
            reduction=reduction), input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.soft_margin_loss, reduction=reduction)
    return _elementwise(lambda r: _loss(fl.SoftMargin, reduction=r), input, target,
                        reduction, torch_loss, reads_input=True, integer_target=True)


def hinge_embedding_loss(input, target, margin=1.0, size_average=None, reduce=None,
                         reduction="mean"):
    """Drop-in ``torch.nn.functional.hinge_embedding_loss``: fastloss
    ``hinge_embedding(margin)`` (integer labels are read as the input's dtype)."""
    if size_average is None and reduce is None:
        result = _fast((F.hinge_embedding_loss, reduction, margin), lambda: _plan(
            fl.HingeEmbedding(margin=margin, reduction=reduction), F.hinge_embedding_loss,
            False, margin=margin, reduction=reduction), input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.hinge_embedding_loss, margin=margin,
                                   reduction=reduction)
    return _elementwise(
        lambda r: _loss(fl.HingeEmbedding, margin=margin, reduction=r),
        input, target, reduction, torch_loss, reads_input=False, integer_target=True)


def _class_weight(weight, input, n_classes):
    """torch's per-class ``weight`` for fastloss (the tensor), None for no weight, or
    False when fastloss cannot take it."""
    if weight is None:
        return None
    if _constant(weight, input) and tuple(weight.shape) == (n_classes,):
        return weight
    return False


def _as_rows(input, target, per_row, max_ndim=None, in_place=False):
    """The (N, C) scores and the (N,) target (``per_row``: one entry per row, such as a
    class label) or (N, C) target of a row loss, or None.

    torch also takes an unbatched (C,) input and, for cross-entropy, (N, C, d1, ...) with
    the classes on axis 1.  With ``in_place`` (a loss that reads the classes on axis 1
    where they lie), a contiguous (N, C, d1, ...) input stays as it is (its classes lie
    d1 * ... * dk apart: no copy); otherwise it becomes rows with the classes moved last:
    a view of a channels-last input, one copy of any other.
    Returns (scores, target2, shape of the reduction="none" result or None, class axis
    of the scores).
    """
    ndim = input.ndim
    if ndim == 0 or (max_ndim is not None and ndim > max_ndim):
        return None
    if ndim == 1:
        if target.shape != (() if per_row else input.shape):
            return None
        return input.unsqueeze(0), target.unsqueeze(0), (), -1
    none_shape = input.shape[:1] + input.shape[2:]
    if target.shape != (none_shape if per_row else input.shape):
        return None
    if ndim == 2:
        return input, target, None, -1
    if in_place and input.is_contiguous():
        return input, target, None, 1
    n_classes = input.shape[1]
    rows = input.movedim(1, -1).reshape(-1, n_classes)
    target2 = (target.reshape(-1) if per_row
               else target.movedim(1, -1).reshape(-1, n_classes))
    return rows, target2, none_shape, -1


def _row_loss_of_labels(labels):
    """_row_loss with its ``labels`` argument bound: the signature of _elementwise."""
    return lambda make_loss, input, target, *args, **kwargs: _row_loss(
        make_loss, input, target, labels, *args, **kwargs)


def _row_loss(make_loss, input, target, labels, reduction, torch_loss, *, reads_input,
              max_ndim=None, per_row=None, integer_target=False, in_place=False):
    """A row loss (one value per row of (N, C) scores): fastloss, else ``torch_loss``.

    ``labels``: the target holds int64 class indices (else it is of input's dtype, or
    with ``integer_target`` integers converted to it: see :func:`_target_dtype`).
    ``per_row``: the target has one entry per row, (N,) for (N, C) scores (by default,
    when it holds labels), else one per score, input's shape (dense targets, or label
    sets padded with -1).  ``make_loss()`` builds the fastloss loss or returns None when
    it cannot.  ``reads_input`` as for :func:`_elementwise`.  ``in_place``: the loss
    also reads (N, C, d1, ...) scores with their classes on axis 1 (see
    :func:`_as_rows`): ``make_loss(axis=1)`` then builds it.
    """
    if input.dtype in _HALF_DTYPES and _plain(input, _HALF_DTYPES, _tensor_types()):
        return _half_precision(_row_loss_of_labels(labels), make_loss, input, target,
                               reduction, torch_loss, reads_input=reads_input,
                               max_ndim=max_ndim, per_row=per_row,
                               integer_target=integer_target, in_place=in_place)
    dtype = _target_dtype(input, target, labels, integer_target)
    if dtype is None:
        return _fall_back(torch_loss, input, target,
                          _unsupported(input, target, labels, integer_target))
    rows = _as_rows(input, target, labels if per_row is None else per_row, max_ndim,
                    in_place)
    if rows is None:
        return _fall_back(torch_loss, input, target,
                          "shapes of input and target the kernel does not read")
    scores, target2, none_shape, axis = rows
    if target2.dtype is not dtype:
        target2 = target2.to(dtype)
    try:
        loss = make_loss() if axis == -1 else make_loss(axis=axis)
        if loss is None:
            return _fall_back(torch_loss, input, target,
                              "a parameter combination the kernel does not compute")
        result = _run(loss, scores, target2, None, torch_loss, 1.0, reads_input)
    except (ValueError, TypeError) as error:
        return _fall_back(torch_loss, input, target, error)
    if none_shape is not None and reduction == "none":
        result = result.reshape(none_shape)
    return result


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    """Drop-in ``torch.nn.functional.cross_entropy`` (input = logits): fastloss
    ``sparse_categorical_cross_entropy(from_logits=True)`` for class-index targets (int64),
    ``categorical_cross_entropy(from_logits=True)`` for probability targets.

    ``weight``, ``ignore_index`` and ``label_smoothing`` map onto class_weight,
    ignore_index and label_smoothing.  Unbatched (C,) input is one row.  Spatial
    (N, C, d1, ..., dk) input is read where it lies: contiguous, by the loss with
    ``axis=1`` (vectorised across the positions, gradient in the same layout);
    channels-last, as the rows it already is in memory; any other layout is copied
    to rows once.
    """
    if size_average is None and reduce is None:
        labels = getattr(target, "dtype", None) is torch.int64
        result = _fast((F.cross_entropy, reduction, ignore_index, label_smoothing, labels),
                       lambda: _cross_entropy_plan(reduction, ignore_index, label_smoothing,
                                                   labels),
                       input, target, weight)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.cross_entropy, weight=weight, ignore_index=ignore_index,
                                   reduction=reduction, label_smoothing=label_smoothing)
    labels = getattr(target, "dtype", None) in _LABEL_DTYPES

    def make_loss(axis=-1):   # called once input is known to be (C,) or (N, C, ...)
        class_weight = _class_weight(weight, input, input.shape[1 if input.ndim > 1 else 0])
        if class_weight is False:
            return None
        params = dict(from_logits=True, label_smoothing=label_smoothing, reduction=reduction,
                      axis=axis)
        if labels:
            cls = _row_loss_class("SparseCategoricalCrossEntropy")
            params["ignore_index"] = ignore_index
        else:
            cls = _row_loss_class("CategoricalCrossEntropy")
            if ignore_index != -100:   # torch rejects ignore_index for probability targets
                return None
        if cls is None:
            return None
        return _loss(cls, class_weight, **params)

    return _row_loss(make_loss, input, target, labels, reduction, torch_loss,
                     reads_input=False, in_place=True)


def _cross_entropy_plan(reduction, ignore_index, label_smoothing, labels):
    """cross_entropy's plan for (N, C) logits and int64 labels, or probability targets
    (torch takes no ignore_index with those)."""
    if labels:
        cls = _row_loss_class("SparseCategoricalCrossEntropy")
        params = dict(ignore_index=ignore_index)
    else:
        cls = _row_loss_class("CategoricalCrossEntropy")
        params = {}
        if ignore_index != -100:
            return None
    if cls is None:
        return None
    return _plan(cls(from_logits=True, label_smoothing=label_smoothing, reduction=reduction,
                     **params),
                 F.cross_entropy, False, weight_name="weight", ignore_index=ignore_index,
                 reduction=reduction, label_smoothing=label_smoothing)


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
    torch_loss = functools.partial(F.nll_loss, weight=weight, size_average=size_average,
                                   ignore_index=ignore_index, reduce=reduce,
                                   reduction=reduction)
    return _fall_back(torch_loss, input, target, "torch's own: a gather, nothing to fuse")


def kl_div(input, target, size_average=None, reduce=None, reduction="mean",
           log_target=False):
    """Drop-in ``torch.nn.functional.kl_div`` (input = log q, target = p or log p).

    fastloss's elementwise ``PointwiseKLDivergence`` (``xlogy(p, p) - p input``, gradient
    ``-p``; torch's input is log q as given, not renormalised), summed; "batchmean"
    divides by the batch size, torch's "mean" by the element count.  reduction="none"
    is torch's.
    """
    legacy = size_average is not None or reduce is not None
    if (not legacy and reduction in ("sum", "batchmean") and type(input) in _PLAIN_TYPES
            and input.ndim and isinstance(log_target, bool)):
        scale = 1.0 / input.shape[0] if reduction == "batchmean" else 1.0
        result = _fast((F.kl_div, reduction, log_target, scale), lambda: _plan(
            fl._pointwise.PointwiseKLDivergence(log_target=log_target, reduction="sum"),
            F.kl_div, False, scale, reduction=reduction, log_target=log_target),
            input, target)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if legacy:
        def kl_div(i, t):   # what F.kl_div runs for legacy arguments (no "mean" warning)
            return torch.kl_div(i, t, _reduction.get_enum(reduction), log_target=log_target)
        torch_loss = kl_div
    else:
        torch_loss = functools.partial(F.kl_div, reduction=reduction, log_target=log_target)
    if not (reduction in ("mean", "batchmean", "sum")
            and _target_dtype(input, target) is not None
            and target.shape == input.shape and input.numel() > 0
            and isinstance(log_target, (bool, np.bool_))):
        return _fall_back(torch_loss, input, target,
                          "reduction='none', a broadcast target, an empty input or a "
                          "tensor the kernel does not read")
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
        loss = _loss(fl._pointwise.PointwiseKLDivergence, log_target=bool(log_target),
                            reduction="sum")
        return _run(loss, input, target, None, kl_reduced, scale, False)
    except (ValueError, TypeError) as error:
        return _fall_back(torch_loss, input, target, error)


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
        return _loss(cls, class_weight, margin=margin, p=p, reduction=reduction)

    return _row_loss(make_loss, input, target, True, reduction, torch_loss,
                     reads_input=True, max_ndim=2)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,
                                reduction="mean"):
    """Drop-in ``torch.nn.functional.multilabel_soft_margin_loss``: fastloss
    ``multilabel_soft_margin(class_weight=weight)``; (N, C) or unbatched (C,) input
    (integer targets are read as the input's dtype, as torch promotes them)."""
    if size_average is None and reduce is None:
        result = _fast((F.multilabel_soft_margin_loss, reduction), lambda: _plan(
            fl.MultilabelSoftMargin(reduction=reduction), F.multilabel_soft_margin_loss,
            True, weight_name="weight", reduction=reduction), input, target, weight)
        if result is not None:
            return result
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.multilabel_soft_margin_loss, weight=weight,
                                   reduction=reduction)

    def make_loss():
        class_weight = _class_weight(weight, input, input.shape[-1])
        if class_weight is False:
            return None
        return _loss(fl.MultilabelSoftMargin, class_weight, reduction=reduction)

    return _row_loss(make_loss, input, target, False, reduction, torch_loss,
                     reads_input=True, max_ndim=2, integer_target=True)


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """Drop-in ``torch.nn.functional.multilabel_margin_loss``: fastloss
    ``multilabel_margin``; (N, C) or unbatched (C,) input, int64 target of the input's
    shape (each row's classes, ended by -1)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    torch_loss = functools.partial(F.multilabel_margin_loss, reduction=reduction)
    return _row_loss(lambda: _loss(fl.MultilabelMargin, reduction=reduction), input,
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


_DISPLAY_NAMES = {_torchvision_sigmoid_focal_loss: "sigmoid_focal_loss"}


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
        lambda r: _loss(fl.BinaryFocalCrossEntropy, from_logits=True, gamma=gamma,
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
