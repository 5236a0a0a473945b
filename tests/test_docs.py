"""The documentation: it builds without a warning, and it covers every loss.

The build runs ``python -m sphinx -W`` in a subprocess, from a temporary directory, with
the directory of the fastloss under test first on ``PYTHONPATH``: autodoc then documents
the very package these tests import (the installed one when the suite runs with
``python -P``, the checkout in a developer's in-place build), never another copy.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastloss as fl

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE_DIR = Path(fl.__file__).resolve().parent


def _sphinx_env():
    env = dict(os.environ)
    paths = [str(PACKAGE_DIR.parent)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "numpydoc"):
        if subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode:
            pytest.fail(f"{module} is not installed: the test extra needs it "
                        f"(python -m pip install '.[test]')")
    html = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(html)],
        cwd=tmp_path, env=_sphinx_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    # autodoc imported the package under test
    documented = re.search(r"^fastloss documented from (.+)$", proc.stdout, re.MULTILINE)
    assert documented, proc.stdout
    assert Path(documented.group(1)).resolve() == PACKAGE_DIR
    pages = {path.stem for path in html.glob("*.html")}
    assert {"index", "losses", "calling", "torch", "threads", "cli", "api",
            "design"} <= pages
    losses = (html / "losses.html").read_text(encoding="utf-8")
    for cls in {type(fl.get(name)) for name in fl.available()}:
        assert f'id="fastloss.{cls.__name__}"' in losses, cls.__name__


def test_every_loss_is_in_the_docs_and_the_readme():
    losses = (DOCS / "losses.rst").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in fl.available():
        cls = type(fl.get(name))
        assert f"   * - ``{name}``" in losses, f"{name}: no row in the docs' losses table"
        assert f".. autoclass:: {cls.__name__}" in losses, f"{name}: no section in the docs"
        assert f"| `{name}` | `{cls.__name__}" in readme, f"{name}: no row in the README"


def test_every_adapter_function_is_in_the_docs_and_the_readme():
    pytest.importorskip("torch")
    import fastloss.torch as FL
    page = (DOCS / "torch.rst").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in FL.__all__:
        if isinstance(getattr(FL, name), type):
            assert f".. autoclass:: {name}\n" in page, f"{name}: no entry in docs/torch.rst"
            assert f"(``{name}``)" in page, f"{name}: not in the table of docs/torch.rst"
        else:
            assert f".. autofunction:: {name}\n" in page, f"{name}: no entry in docs/torch.rst"
            assert f"   * - ``{name}``" in page, f"{name}: no row in docs/torch.rst"
            assert f"`{name}`" in readme, f"{name}: not listed in the README"


def _has_section(doc, section):
    return re.search(rf"^\s*{section}\n\s*-{{{len(section)}}}\s*$", doc or "",
                     re.MULTILINE) is not None


def test_public_docstrings_have_numpydoc_sections():
    for name in fl.available():
        cls = type(fl.get(name))
        assert _has_section(cls.__doc__, "Parameters"), cls.__name__
    for function in (fl.Loss.__call__, fl.Loss.grad, fl.Loss.value_and_grad, fl.get,
                     fl.set_num_threads):
        assert _has_section(function.__doc__, "Parameters"), function.__qualname__
    for function in (fl.Loss.__call__, fl.Loss.grad, fl.Loss.value_and_grad,
                     fl.Loss.get_params, fl.get, fl.available, fl.get_num_threads,
                     fl.config):
        assert _has_section(function.__doc__, "Returns"), function.__qualname__


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split("run the whole test suite", 1)[1]
    command = after.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [command]
