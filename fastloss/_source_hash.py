"""The fingerprint of the kernel sources.

setup.py stamps it into every compiled kernel module; ``fastloss._dispatch`` refuses a
module whose stamp differs from the sources beside it (a module built from other
sources, e.g. an older installed fastloss found on ``sys.path``, would lack the newest
losses).  Standard library only: setup.py loads this file before fastloss is built.
"""
import hashlib
import os

#: the files that make up the kernels (the .pyx stubs are generated from these)
KERNEL_SOURCE_SUFFIXES = (".pxi", ".pxd", ".h")


def kernel_source_hash(directory=None):
    """SHA-256 (hex, 16 characters) of the kernel sources in ``directory`` (default:
    this package), or None when there are none (an installation without sources)."""
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    names = sorted(name for name in os.listdir(directory)
                   if name.endswith(KERNEL_SOURCE_SUFFIXES))
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as fh:
            digest.update(fh.read().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:16]
