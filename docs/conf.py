"""Sphinx configuration of the fastloss documentation.

Build with ``python -m sphinx -b html docs docs/_build/html`` from the repository root.

Which fastloss autodoc documents: the one ``import fastloss`` finds.  Run from the
repository root, ``python -m`` puts the checkout first on ``sys.path``, so that is the
checkout (its compiled kernels come from an in-place build, or else from an installed
fastloss).  Where the checkout is not on ``sys.path`` (``python -P``, another working
directory, CI), it is the installed package.  Only when no fastloss is importable at
all is the checkout added to ``sys.path`` here.
"""
import os
import sys

try:
    import fastloss
except ImportError:
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
    import fastloss

# Which package is documented, for whoever reads the build log (tests/test_docs.py
# checks it is the one under test).
print(f"fastloss documented from {os.path.dirname(os.path.abspath(fastloss.__file__))}")

project = "fastloss"
author = "the fastloss authors"
copyright = "the fastloss authors"
release = fastloss.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]

exclude_patterns = ["_build"]
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}

# autodoc: document what is written in the docstrings, in source order, and never
# show the (long, torch-generated) signatures of inherited members.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autoclass_content = "class"

# numpydoc: the loss pages list members by hand, so no autosummary tables.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False

html_theme = "alabaster"
html_static_path = []
html_title = f"fastloss {release}"
