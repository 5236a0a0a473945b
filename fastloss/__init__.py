"""fastloss: fused loss kernels (value and gradient in one pass) for NumPy and PyTorch.

>>> import numpy as np, fastloss as fl
>>> loss = fl.get("huber", delta=1.0)
>>> value, grad = loss.value_and_grad(np.array([0.5, 3.0]), np.array([0.0, 0.0]))
"""
from ._base import Loss
from ._dispatch import kernels as _kernels
from ._pointwise import POINTWISE_LOSSES
from ._ratio import RATIO_LOSSES
from ._rows import ROW_LOSSES
from ._threads import get_num_threads, set_num_threads
from ._validation import InvalidParameterError

__version__ = "0.2.0"

_REGISTRY = {cls.name: cls for cls in POINTWISE_LOSSES + ROW_LOSSES + RATIO_LOSSES}
# Every registered loss class is public under its own name (fl.Huber, ...): a loss is
# registered once, in its module's tuple, and appears here and in fl.available().
globals().update({cls.__name__: cls for cls in _REGISTRY.values()})


def available():
    """The names accepted by :func:`get`, sorted.

    Returns
    -------
    list of str
        The registry names of the losses, e.g. ``"mse"`` or
        ``"sparse_categorical_cross_entropy"``.
    """
    return sorted(_REGISTRY)


def get(name, **params):
    """The loss called ``name``, constructed with ``params``.

    Parameters
    ----------
    name : str
        A name of :func:`available`.
    **params
        The keyword arguments of the loss's class, e.g. ``delta=2.0`` for ``"huber"``
        or ``reduction="sum"`` for any loss.

    Returns
    -------
    Loss
        A new instance of the loss's class; ``fl.get("huber", delta=2.0)`` equals
        ``fl.Huber(delta=2.0)``.

    Raises
    ------
    InvalidParameterError
        For an unknown name or parameter, naming the valid ones, and for a parameter
        value the class rejects.  It is both a ValueError and a TypeError (Python
        raises a TypeError for an unexpected keyword).
    """
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(
            f"unknown loss {name!r}; available: {', '.join(available())}") from None
    import inspect
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidParameterError(
            f"{name}: unknown parameter {unknown[0]!r}; accepted: {', '.join(accepted)}")
    return cls(**params)


def show_config(file=None):
    """Print how the kernels were built: ISA level, OpenMP, threads and compile flags.

    Prints the version, then one ``key: value`` line per entry of :func:`config`.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).
    """
    import sys
    info = config()
    out = file or sys.stdout
    print(f"fastloss {__version__}", file=out)
    for key, value in info.items():
        print(f"  {key}: {value}", file=out)


def config():
    """The build and runtime configuration as a dict (what :func:`show_config` prints).

    Returns
    -------
    dict
        ``isa_level`` (the compiled variant in use: ``"baseline"``, ``"x86_64_v3"`` or
        ``"x86_64_v4"``), ``compiler`` (the compiler's own version line),
        ``compile_flags``, ``openmp`` (whether OpenMP was compiled in: a build without
        it runs every call on one thread),
        ``openmp_max_threads`` (libgomp's own setting, not fastloss's),
        ``vector_math`` (the exp/log/log1p/tanh in use: ``"fastloss polynomial"``,
        fastloss's own vectorised code), ``kernel_module`` (the imported module's name),
        ``cpu_levels`` (the levels this CPU runs, best first) and ``num_threads``
        (:func:`get_num_threads`).
    """
    from ._dispatch import supported_levels
    info = dict(_kernels.build_info())
    info["kernel_module"] = _kernels.__name__
    info["kernel_file"] = _kernels.__file__
    info["cpu_levels"] = ", ".join(supported_levels())
    info["num_threads"] = get_num_threads()
    return info


__all__ = ["Loss", "available", "get", "show_config", "config", "set_num_threads",
           "get_num_threads", "InvalidParameterError"] + [
               c.__name__ for c in POINTWISE_LOSSES + ROW_LOSSES + RATIO_LOSSES]
