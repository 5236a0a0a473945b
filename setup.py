"""Build the fastloss kernels.

The kernel body (``fastloss/_kernels.pxi``) is compiled once per x86-64
micro-architecture level into its own extension module; ``fastloss._dispatch``
imports the best one the running CPU supports.  For any other target (aarch64,
Apple silicon, ...) only the baseline module is built.

Compilers: gcc and clang (Linux, macOS: Apple clang) and MSVC (Windows).  OpenMP is
used when the compiler can build and link an OpenMP program (gcc's libgomp, LLVM's
libomp: on macOS ``brew install libomp``; MSVC's ``/openmp``); otherwise the kernels are
built serial, with a warning, and ``fastloss.show_config()`` says so.

Environment variables:

``FASTLOSS_OPENMP``
    ``auto`` (default): OpenMP when the compiler supports it; ``0``: never (serial
    kernels); ``1``: required (the build fails without it).
``FASTLOSS_ONLY_BASELINE=1``
    Build the baseline module only (quicker builds for development).
``FASTLOSS_SANITIZE=1``
    An AddressSanitizer + UndefinedBehaviorSanitizer build for testing (gcc, clang).
``CC``, ``CFLAGS``, ``LDSHARED``, ``SETUPTOOLS_EXT_SUFFIX``
    As for any setuptools build, e.g. ``CC=clang`` or a cross compiler.
"""
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Safe flags (see docs/design.rst, "Compiler-flag rules"): never -ffast-math (it can
# switch the whole process to flush-to-zero and breaks NaN handling), never -march=native
# (wheels must run on any x86-64).  Reassociation lets the compiler vectorise the sum/max
# reductions; where the grouping of a sum decides its accuracy, the kernels pass the
# inner part through the opaque barrier exactly() (_numerics.pxd).
GNU_MATH_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
]
# MSVC: /fp:precise keeps IEEE semantics (NaN, signed zeros); MSVC vectorises fewer
# reductions without /fp:fast, which fastloss does not use for the same reasons.
MSVC_MATH_FLAGS = ["/O2", "/fp:precise"]

# x86-64 micro-architecture levels: name suffix -> flags per compiler family.
X86_LEVELS = {
    "x86_64_v3": {"gnu": ["-march=x86-64-v3", "-mtune=generic"],
                  "msvc": ["/arch:AVX2"]},
    "x86_64_v4": {"gnu": ["-march=x86-64-v4", "-mtune=generic",
                          "-mprefer-vector-width=512"],
                  "msvc": ["/arch:AVX512"]},
}

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d %d\n", n, omp_get_max_threads());
    return 0;
}
"""

X86_64_PROBE = r"""
#if !defined(__x86_64__) && !defined(_M_X64) && !defined(_M_AMD64)
#error not an x86-64 target
#endif
int fastloss_probe_x86_64;
"""

HOST_IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
ONLY_BASELINE = os.environ.get("FASTLOSS_ONLY_BASELINE", "") not in ("", "0")
SANITIZE = os.environ.get("FASTLOSS_SANITIZE", "") not in ("", "0")
LEVELS = ["baseline"] + (list(X86_LEVELS) if HOST_IS_X86_64 and not ONLY_BASELINE else [])


def load_source_hash():
    """fastloss/_source_hash.py, loaded by path: fastloss itself is not built yet."""
    spec = importlib.util.spec_from_file_location(
        "fastloss_source_hash", os.path.join("fastloss", "_source_hash.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_source_hash("fastloss")


def openmp_setting():
    value = os.environ.get("FASTLOSS_OPENMP", "auto").strip().lower() or "auto"
    if value not in ("auto", "0", "1"):
        raise SystemExit(f"FASTLOSS_OPENMP={value!r}: expected auto, 0 or 1")
    return value


def homebrew_libomp():
    """(include dir, lib dir) of Homebrew's libomp, or None (macOS: Apple clang has no
    OpenMP runtime of its own)."""
    prefixes = [os.environ.get("LIBOMP_PREFIX", "")]
    brew = shutil.which("brew")
    if brew:
        try:
            prefixes.append(subprocess.run([brew, "--prefix", "libomp"], capture_output=True,
                                           text=True, timeout=60).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    prefixes += ["/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
    for prefix in prefixes:
        if prefix and os.path.exists(os.path.join(prefix, "include", "omp.h")):
            return os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    return None


class Toolchain:
    """What the configured compiler is and the flags fastloss builds with."""

    def __init__(self, compiler):
        self.compiler = compiler
        self.msvc = compiler.compiler_type == "msvc"
        self.kind, self.name = ("msvc", "MSVC") if self.msvc else self._unix_kind()
        self.family = "msvc" if self.msvc else "gnu"

    def _unix_kind(self):
        """(kind, the compiler's own version line); kind is gcc, clang, apple-clang or cc."""
        try:
            text = subprocess.run(self.compiler.compiler_so[:1] + ["--version"],
                                  capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        first = text.splitlines()[0].strip() if text.strip() else self.compiler.compiler_so[0]
        lowered = text.lower()
        if "clang" in lowered:
            return ("apple-clang" if "apple" in lowered else "clang"), first
        if "gcc" in lowered or "free software foundation" in lowered:
            return "gcc", first
        return "cc", first

    @property
    def apple_clang(self):
        return self.kind == "apple-clang"

    def math_flags(self):
        return MSVC_MATH_FLAGS if self.msvc else GNU_MATH_FLAGS

    def macros(self):
        if self.msvc:
            # a forced inline under MSVC's spelling (Cython spells restrict itself)
            return [("CYTHON_INLINE", "__forceinline")]
        # Every ``cdef inline`` function of the kernels is inlined, always: one module
        # holds every loss, and gcc stops inlining once the translation unit has grown by
        # its inline-unit-growth budget, so the losses met late would call their
        # per-element term instead of inlining it, and such a loop does not vectorise
        # (5-15x slower).  Cython writes its inline functions with CYTHON_INLINE.
        return [("CYTHON_INLINE", "__inline__ __attribute__((always_inline))")]

    def sanitize_flags(self):
        if not SANITIZE:
            return []
        if self.msvc:
            raise SystemExit("FASTLOSS_SANITIZE needs gcc or clang")
        return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer", "-g"]

    def link_libraries(self):
        return [] if self.msvc else ["-lm"]

    def _tries(self, source, compile_args, link_args, link, extra_dirs=((), ())):
        """Whether ``source`` compiles (and links, if ``link``) with these flags."""
        directory = tempfile.mkdtemp(prefix="fastloss-probe-")
        try:
            path = os.path.join(directory, "probe.c")
            with open(path, "w") as fh:
                fh.write(source)
            objects = self.compiler.compile([path], output_dir=directory,
                                            extra_postargs=compile_args,
                                            include_dirs=list(extra_dirs[0]))
            if link:
                self.compiler.link_executable(objects, "probe", output_dir=directory,
                                              extra_postargs=link_args,
                                              library_dirs=list(extra_dirs[1]))
            return True
        except Exception:  # CompileError, LinkError: the feature is not there
            return False
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def targets_x86_64(self):
        """Whether the compiler builds for x86-64 (a cross compiler may not)."""
        return self._tries(X86_64_PROBE, [], [], link=False)

    def openmp(self):
        """(compile flags, link flags, include dirs, library dirs) that give OpenMP, or
        None when this compiler cannot build and link an OpenMP program."""
        if self.msvc:
            candidates = [(["/openmp"], [], (), ())]
        elif self.apple_clang or sys.platform == "darwin":
            found = homebrew_libomp()
            dirs = ((found[0],), (found[1],)) if found else ((), ())
            candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]) + dirs,
                          (["-fopenmp"], ["-fopenmp"]) + dirs]
        else:
            candidates = [(["-fopenmp"], ["-fopenmp"], (), ())]
        for compile_args, link_args, include_dirs, library_dirs in candidates:
            if self._tries(OPENMP_PROBE, compile_args, link_args, link=True,
                           extra_dirs=(include_dirs, library_dirs)):
                return compile_args, link_args, list(include_dirs), list(library_dirs)
        return None


class BuildKernels(build_ext):
    """build_ext that chooses the flags for the compiler it finds (gcc, clang, Apple clang,
    MSVC), finds OpenMP or builds serial kernels, and drops the x86-64 levels when the
    compiler targets another CPU."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            # one module per ISA level, each one large translation unit: build them at once
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        toolchain = Toolchain(self.compiler)
        if not toolchain.targets_x86_64():
            self.extensions = [e for e in self.extensions
                               if not e.name.endswith(tuple(X86_LEVELS))]
        setting = openmp_setting()
        openmp = None if setting == "0" else toolchain.openmp()
        if openmp is None and setting == "1":
            raise SystemExit(f"FASTLOSS_OPENMP=1 but {toolchain.name} cannot build an OpenMP "
                             "program (install its OpenMP runtime: libgomp for gcc, libomp "
                             "for clang, e.g. 'brew install libomp' on macOS)")
        if openmp is None:
            why = "FASTLOSS_OPENMP=0" if setting == "0" else \
                f"{toolchain.name} could not build an OpenMP program"
            message = (f"fastloss: building SERIAL kernels ({why}); every call runs on "
                       "one thread.  Install the compiler's OpenMP runtime (libgomp for "
                       "gcc, libomp for clang) for threaded kernels.")
            warnings.warn(message)
            print("*" * 78 + "\n" + message + "\n" + "*" * 78, file=sys.stderr)
            openmp = ([], [], [], [])
        omp_compile, omp_link, omp_includes, omp_libdirs = openmp
        self.compiler_description = toolchain.name
        for ext in self.extensions:
            level = ext.name.rsplit("_kernels_", 1)[1]
            level_flags = X86_LEVELS.get(level, {}).get(toolchain.family, [])
            compile_args = (toolchain.math_flags() + omp_compile + level_flags
                            + toolchain.sanitize_flags())
            ext.extra_compile_args = compile_args
            ext.extra_link_args = (toolchain.sanitize_flags() + omp_link
                                   + toolchain.link_libraries())
            ext.include_dirs = ext.include_dirs + omp_includes
            ext.library_dirs = ext.library_dirs + omp_libdirs
            ext.define_macros = ext.define_macros + toolchain.macros() + [
                ("FASTLOSS_COMPILER", c_string(toolchain.name)),
                ("FASTLOSS_COMPILE_FLAGS", c_string(" ".join(compile_args))),
            ]
        super().build_extensions()


def c_string(text):
    """``text`` as a C string literal for a -D macro."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kernel_extension(level, source_hash):
    return Extension(
        f"fastloss._kernels_{level}",
        sources=[f"fastloss/_kernels_{level}.pyx"],
        include_dirs=[np.get_include(), "fastloss"],
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ("FASTLOSS_ISA_LEVEL", c_string(level)),
            ("FASTLOSS_SOURCE_HASH", c_string(source_hash)),
        ],
    )


def write_isa_stubs():
    """One tiny .pyx per level; each includes the single kernel body."""
    for level in LEVELS:
        path = os.path.join("fastloss", f"_kernels_{level}.pyx")
        text = (
            "# Generated by setup.py: the kernels compiled for one ISA level.\n"
            'include "_kernels.pxi"\n'
        )
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as fh:
                fh.write(text)


write_isa_stubs()
SOURCE_HASH = load_source_hash()

setup(
    cmdclass={"build_ext": BuildKernels},
    ext_modules=cythonize(
        [kernel_extension(level, SOURCE_HASH) for level in LEVELS],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
        nthreads=os.cpu_count() or 1,
    ),
)
