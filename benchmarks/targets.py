"""The project's performance targets (``TARGETS``), which ``python -m fastloss bench``
reports on.  The data live in ``fastloss/_targets.py`` so that an installed fastloss has
them too; see that file for the format."""
from fastloss._targets import TARGETS  # noqa: F401
