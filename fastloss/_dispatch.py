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
import platform
import sys

from ._source_hash import kernel_source_hash

LEVELS = ("x86_64_v4", "x86_64_v3", "baseline")

# CPU flags (as /proc/cpuinfo spells them) that gcc's -march=x86-64-vN may use.
_REQUIRED_FLAGS = {
    "x86_64_v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "x86_64_v4": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
                  "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported_levels():
    """ISA levels this CPU can run, best first."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["baseline"]
    flags = _cpu_flags()
    return [level for level in LEVELS
            if level == "baseline" or _REQUIRED_FLAGS[level] <= flags]


def _import_own(level):
    """This package's kernel module of ``level`` (ImportError when it is not built)."""
    return importlib.import_module(f"fastloss._kernels_{level}")


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
    levels = [forced] if forced else supported_levels()
    for level in levels:
        try:
            module = _import_own(level)
        except ImportError:
            continue  # not built here (e.g. FASTLOSS_ONLY_BASELINE)
        return _checked(module)
    for level in levels:
        module = _import_installed(level)
        if module is not None:
            return _checked(module)
    raise ImportError("no fastloss kernel module is built: install fastloss "
                      "(pip install .) or build in place (python setup.py build_ext --inplace)"
                      + (f" (FASTLOSS_ISA={forced})" if forced else ""))


def _openmp_inherited_from_parent():
    """Whether this process is a multiprocessing child that already holds an OpenMP
    runtime before fastloss is imported: a forked child can inherit the parent's libgomp
    thread pool, whose threads do not exist in the child (GCC bug 60035: the first
    parallel region waits for them forever).  fastloss's fork handler only marks
    children forked after its import; this covers a worker that imports fastloss first.
    Conservative: a spawned child that imported torch first runs serially too."""
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return False
    try:
        with open("/proc/self/maps") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return True  # cannot tell: stay safe


openmp_inherited_from_parent = _openmp_inherited_from_parent()
kernels = load_kernels()
