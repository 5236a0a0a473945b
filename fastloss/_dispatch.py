"""Pick the kernel module compiled for the best ISA level this CPU runs.

setup.py builds ``_kernels_baseline`` everywhere and, on x86-64, ``_kernels_x86_64_v3``
(AVX2/FMA) and ``_kernels_x86_64_v4`` (AVX-512): the same Cython source compiled with
different ``-march`` levels.  ``FASTLOSS_ISA=baseline|x86_64_v3|x86_64_v4`` forces a level
(for tests and benchmarks); an unsupported forced level is an ImportError, never a crash.
"""
import importlib
import importlib.machinery
import importlib.util
import os
import sys

from ._source_hash import kernel_source_hash

LEVELS = ("x86_64_v4", "x86_64_v3", "baseline")

#: the x86-64 level (as gcc's -march=x86-64-vN) each module needs
_LEVEL_NUMBER = {"x86_64_v4": 4, "x86_64_v3": 3, "baseline": 1}


def supported_levels():
    """ISA levels this CPU can run, best first.

    Asked of the CPU by the baseline module (CPUID, and XGETBV for the register state
    the operating system saves), so it works on every system the modules build on; on a
    CPU that is not x86-64 only the baseline module exists.
    """
    cpu_level = _baseline().x86_64_level()
    return [level for level in LEVELS
            if level == "baseline" or _LEVEL_NUMBER[level] <= cpu_level]


_baseline_module = None


def _baseline():
    """The baseline kernel module (it runs on any CPU of its architecture)."""
    global _baseline_module
    if _baseline_module is None:
        _baseline_module = _find(["baseline"])
        if _baseline_module is None:
            raise ImportError(_NOT_BUILT)
    return _baseline_module


_NOT_BUILT = ("no fastloss kernel module is built: install fastloss (pip install .) or "
              "build in place (python setup.py build_ext --inplace)")


def _find(levels):
    """The first kernel module of ``levels`` (best first) built from these sources: this
    package's own at any of them, else another installation's; None if there is none."""
    for importer in (_import_own, _import_installed):
        for level in levels:
            module = importer(level)
            if module is not None:
                return _checked(module)
    return None


def _import_own(level):
    """This package's kernel module of ``level``, or None when it is not built (e.g.
    FASTLOSS_ONLY_BASELINE)."""
    try:
        return importlib.import_module(f"fastloss._kernels_{level}")
    except ImportError:
        return None


def _import_installed(level):
    """The kernel module of ``level`` of another fastloss on sys.path, or None.

    Run from a source checkout (``python -m fastloss bench`` in the repository, where
    ``-m`` puts the checkout first on sys.path), this package may have no compiled
    modules; the ones ``pip install .`` put in site-packages are then used, if they were
    built from these very sources (checked by the caller).
    """
    name = f"fastloss._kernels_{level}"
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        directory = os.path.join(os.path.abspath(entry or os.curdir), "fastloss")
        if directory == here or not os.path.isdir(directory):
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, f"_kernels_{level}{suffix}")
            if os.path.isfile(path):
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module
                return module
    return None


def _checked(module):
    """``module`` if it was built from the kernel sources of this package."""
    expected = kernel_source_hash()
    built = module.build_info().get("source_hash")
    if expected is not None and built != expected:
        raise ImportError(
            f"{module.__file__} was built from other kernel sources than this fastloss "
            f"({os.path.dirname(os.path.abspath(__file__))}; stamp {built}, sources "
            f"{expected}): rebuild it (python setup.py build_ext --inplace) or reinstall "
            f"fastloss (pip install .)")
    return module


def load_kernels():
    """Import and return the best kernel module (honouring FASTLOSS_ISA): this package's
    own at the best level built, else another installation's built from these sources."""
    forced = os.environ.get("FASTLOSS_ISA", "").strip()
    if forced:
        if forced not in LEVELS:
            raise ImportError(f"FASTLOSS_ISA={forced!r}: expected one of {', '.join(LEVELS)}")
        if forced not in supported_levels():
            raise ImportError(f"FASTLOSS_ISA={forced!r}: this CPU does not support it")
    module = _find([forced] if forced else supported_levels())
    if module is None:
        raise ImportError(_NOT_BUILT + (f" (FASTLOSS_ISA={forced})" if forced else ""))
    return module


def _openmp_inherited_from_parent():
    """Whether this process is a multiprocessing child that already holds an OpenMP
    runtime before fastloss is imported: a forked child can inherit the parent's libgomp
    thread pool, whose threads do not exist in the child (GCC bug 60035: the first
    parallel region waits for them forever).  fastloss's fork handler only marks
    children forked after its import; this covers a worker that imports fastloss first.
    Conservative: a spawned child that imported torch first runs serially too.  Where
    the loaded libraries cannot be listed (no /proc), any child of a start method that
    forks is taken as such; Windows has no fork."""
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None or sys.platform == "win32":
        return False
    try:
        with open("/proc/self/maps") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return mp.get_start_method(allow_none=True) not in ("spawn", "forkserver")


openmp_inherited_from_parent = _openmp_inherited_from_parent()
kernels = load_kernels()
