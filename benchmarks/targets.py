"""The performance targets that ``python -m fastloss bench`` and this suite report on.

The data live in ``fastloss/_tools/targets.json`` so that an installed fastloss has them
too; this module only reads them.
"""
from fastloss._tools.bench import load_targets

TARGETS = load_targets()
