"""Sphinx configuration: the site is generated from spec/ (see diffrl_ref.docgen)."""

from __future__ import annotations

from pathlib import Path

# Documents the installed package (tox installs it; `pip install -e .[docs]` for local builds):
# spec/ and conformance/ only have their package names once installed.
from diffrl_ref import __version__, docgen, spec

ROOT = Path(__file__).resolve().parent.parent

# The committed clause pages must be what the generator makes from the current spec.
_stale = [n for n, text in docgen.render().items()
          if not (ROOT / "docs" / "clauses" / n).is_file() or (ROOT / "docs" / "clauses" / n).read_text() != text]
if _stale:
    raise RuntimeError(f"docs/clauses is stale for {_stale[:5]}...: run `diffrl docs` and commit the pages")

project = "diffrl-ref"
author = "diffrl-ref developers"
copyright = "2026, diffrl-ref developers"
version = __version__
release = f"{__version__} (spec {spec.version()})"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"diffrl-ref {release}"
