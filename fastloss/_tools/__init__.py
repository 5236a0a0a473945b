"""The tools around the library: the command line (``bench``, ``check``), the reference
implementations they compare with, and the performance targets (``targets.json``).

Nothing here is imported by ``import fastloss``.
"""
