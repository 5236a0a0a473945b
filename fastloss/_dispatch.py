"""Pick the kernel module compiled for the best ISA level this CPU runs.

setup.py builds ``_kernels_baseline`` everywhere and, on x86-64, ``_kernels_x86_64_v3``
(AVX2/FMA) and ``_kernels_x86_64_v4`` (AVX-512): the same Cython source compiled with
different ``-march`` levels.  ``FASTLOSS_ISA=baseline|x86_64_v3|x86_64_v4`` forces a level
(for tests and benchmarks); an unsupported forced level is an ImportError, never a crash.
"""
import importlib
import os
import platform

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


def load_kernels():
    """Import and return the best kernel module (honouring FASTLOSS_ISA)."""
    forced = os.environ.get("FASTLOSS_ISA", "").strip()
    if forced:
        if forced not in LEVELS:
            raise ImportError(f"FASTLOSS_ISA={forced!r}: expected one of {', '.join(LEVELS)}")
        if forced not in supported_levels():
            raise ImportError(f"FASTLOSS_ISA={forced!r}: this CPU does not support it")
        return importlib.import_module(f"fastloss._kernels_{forced}")
    for level in supported_levels():
        try:
            return importlib.import_module(f"fastloss._kernels_{level}")
        except ImportError:
            continue  # that level was not built here (e.g. FASTLOSS_ONLY_BASELINE)
    raise ImportError("no fastloss kernel module is built; reinstall fastloss")


kernels = load_kernels()
