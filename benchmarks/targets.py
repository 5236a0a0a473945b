"""The performance targets of issue 4 (``TARGETS``), which ``python -m fastloss bench``
reports on.  The data live in ``fastloss/_targets.py`` so that an installed fastloss has
them too; see that file for the format."""
from fastloss._targets import TARGETS  # noqa: F401
