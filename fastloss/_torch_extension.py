"""fastloss.torch's C++ fast path: built against the installed torch at first use.

``fastloss/_torch_native.cpp`` holds the eager path of a call (checks of the tensors, the
kernel through its C entry, the autograd node) in C++: about 25 us less per loss
forward+backward than the Python path, which matters for small heads, where the kernel
takes a microsecond or two.  It is compiled with ``torch.utils.cpp_extension`` (a C++
compiler and ninja needed, ~40 s once) into torch's extension cache
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), as one library whose
name fingerprints its sources (with the kernels' C entry it calls, bound at load time),
torch's and Python's versions, so a cached build is reused only by the same
combination.

``FASTLOSS_TORCH_EXTENSION`` chooses when:

- ``auto`` (default): the first eager call of an adapted loss starts the build in a
  background thread; calls take the Python path until it is loaded (same results: the
  same kernel runs either way);
- ``wait``: the first eager call builds it and waits;
- ``0``: never (the Python path only).

Nothing of this changes what a call computes; a build that fails (no compiler, no
ninja, a read-only cache) leaves the Python path, with the reason in
:func:`status` and on the ``fastloss.torch`` logger.
"""
import hashlib
import logging
import os
import sys
import threading

from ._dispatch import kernels

_log = logging.getLogger("fastloss.torch")
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ("_torch_native.cpp", "_native_call.h")

#: the loaded module, once ready (read on every call by fastloss.torch)
module = None
_state = "not built"      # "not built", "building", "ready", "failed", "disabled"
_reason = ""
_lock = threading.Lock()
_done = threading.Event()


def _setting():
    value = os.environ.get("FASTLOSS_TORCH_EXTENSION", "auto").strip().lower()
    return value if value in ("auto", "wait", "0") else "auto"


def _name():
    """The extension's module name: a fingerprint of what it is built from."""
    import torch
    digest = hashlib.sha256()
    for name in _SOURCES:
        with open(os.path.join(_HERE, name), "rb") as fh:
            digest.update(fh.read())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    return "fastloss_torch_native_" + digest.hexdigest()[:16]


_LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"
_STALE_SECONDS = 24 * 3600


def _build():
    """Load the cached build of the extension, or compile it, and bind it to the
    kernels.  Returns the module; raises on any failure.

    Each build runs in a directory of its own and its library is then moved into the
    cache under its final name (an atomic rename), so a process killed while building
    (a short script that exits, a Ctrl-C) leaves no half-written library and no lock
    that would make the next process wait: torch's own build directory is locked by
    a file that only its owner removes.
    """
    import shutil
    import tempfile

    from torch.utils import cpp_extension
    from . import torch as adapter
    name = _name()
    root = cpp_extension.get_default_build_root()
    library = os.path.join(root, name + _LIBRARY_SUFFIX)
    if os.path.exists(library):
        built = _import_library(name, library)
    else:
        os.makedirs(root, exist_ok=True)
        _remove_stale_builds(root)
        work = tempfile.mkdtemp(prefix=f"{name}.build-", dir=root)
        try:
            built = cpp_extension.load(
                name, [os.path.join(_HERE, "_torch_native.cpp")],
                extra_include_paths=[_HERE], extra_cflags=["-O2"], build_directory=work,
                verbose=False)
            os.replace(os.path.join(work, name + _LIBRARY_SUFFIX), library)
        finally:
            shutil.rmtree(work, ignore_errors=True)   # the loaded library stays mapped
    built.init(kernels.native_entry(), kernels.native_abi(), adapter._MODIFIED_INPUT)
    return built


def _import_library(name, path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _remove_stale_builds(root):
    """Remove the build directories of processes that died building (over a day old)."""
    import shutil
    import time
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if entry.startswith("fastloss_torch_native_") and ".build-" in entry:
            try:
                if time.time() - os.path.getmtime(path) > _STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _load():
    global module, _state, _reason
    try:
        built = _build()
    except BaseException as error:  # a compiler error is a subprocess's, of any type
        with _lock:
            _state, _reason = "failed", f"{type(error).__name__}: {error}"
        _log.info("fastloss.torch: the C++ fast path is not available (%s); calls take "
                  "the Python path", _reason)
    else:
        with _lock:
            module, _state, _reason = built, "ready", ""
        _log.debug("fastloss.torch: the C++ fast path is loaded")
    finally:
        _done.set()


def request():
    """Called by an eager call that found no module: start (or, with
    FASTLOSS_TORCH_EXTENSION=wait, do) the build once."""
    global _state, _reason
    with _lock:
        if _state != "not built":
            return
        setting = _setting()
        if setting == "0":
            _state, _reason = "disabled", "FASTLOSS_TORCH_EXTENSION=0"
            _done.set()
            return
        _state = "building"
    if setting == "wait":
        _load()
    else:
        threading.Thread(target=_load, name="fastloss-torch-extension", daemon=True).start()


def build(wait=True, timeout=None):
    """Load the C++ fast path now: build it if needed (see the module's docstring).

    Parameters
    ----------
    wait : bool, default True
        Wait for the build; otherwise start it in the background and return at once.
    timeout : float, optional
        Seconds to wait at most.

    Returns
    -------
    bool
        Whether the fast path is loaded (see :func:`status` for why not).
    """
    global _state, _reason
    with _lock:
        if _state == "disabled" and _setting() != "0":
            _state, _reason = "not built", ""
            _done.clear()
    request()
    if wait:
        _done.wait(timeout)
    return module is not None


def _after_fork_in_child():
    """A child forked during a build has no build thread: it may start its own."""
    global _lock, _done, _state
    _lock = threading.Lock()
    if _state == "building":
        _state = "not built"
        _done = threading.Event()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def status():
    """``(state, reason)``: state is "not built", "building", "ready", "failed" or
    "disabled"; reason says why a build failed or is disabled."""
    return _state, _reason
