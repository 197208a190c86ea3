"""Sphinx configuration: the site is generated from spec/ (see diffrl_ref.docgen)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from numpy.typing import ArrayLike
from sphinx.application import Sphinx
from sphinx.util.typing import stringify_annotation

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

# MathJax is served from the site itself, never a CDN, so the pages render offline (also from
# file://): sphinx-mathjax-offline ships MathJax 3.2.2 and copies it into _static/mathjax/.
extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode", "sphinx-mathjax-offline"]
mathjax_path = "mathjax/tex-chtml.js"  # relative: under _static/ (what the extension sets, stated here)
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
# Batch folders (one level down) hold fragments (tables, headers) that a page pulls in with
# ``.. include::``, not pages of their own; tests/test_docs.py checks that a page includes each one.
exclude_patterns = ["_build", "rl/*/**", "offline/*/**", "marl/*/**", "bench/**"]
smartquotes = False  # spec text reads exactly as written: x' is a prime, not a closing quote
# Furo loads no remote fonts or scripts (docs/check_site.py checks every built page).
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_title = f"diffrl-ref {release}"

# Signatures say ArrayLike and NDArray[float64] where autodoc would expand numpy's aliases (ArrayLike
# alone is a union of seven types, repeated for every argument, also inside `X | None`).
_NDARRAY = re.compile(r"~?numpy\.ndarray\[tuple\[~?(?:typing\.)?Any, \.\.\.\], ~?numpy\.dtype\[~?numpy\.(\w+)\]\]")


def _split(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i) and i >= start:
            parts.append(text[start:i])
            start = i + len(sep)
    return [*parts, text[start:]]


def _union(text: str) -> str:
    """One type expression, with every union that contains all of ArrayLike's members shortened."""
    terms = []
    for term in _split(text, " | "):
        head, bracket, inner = term.partition("[")
        if bracket and term.endswith("]"):
            term = head + "[" + ", ".join(_union(a) for a in _split(inner[:-1], ", ")) + "]"
        terms.append(term)
    for members in _ARRAY_LIKE:
        if members <= set(terms):
            # Python flattens `str | ArrayLike` into one union (in whichever order it first met it), so
            # a member written out beside ArrayLike cannot be told apart: all go into ArrayLike.
            first = min(terms.index(m) for m in members)
            terms = [t for i, t in enumerate(terms) if t not in members or i == first]
            terms[first] = "~numpy.typing.ArrayLike"
    return " | ".join(terms)


_ARRAY_LIKE = [set(_split(stringify_annotation(ArrayLike, mode), " | "))
               for mode in ("smart", "fully-qualified-except-typing")]


def _short(annotation: str | None) -> str | None:
    if annotation is None:
        return None
    annotation = _NDARRAY.sub(r"~numpy.typing.NDArray[~numpy.\1]", annotation)
    if not annotation.startswith("("):
        return _union(annotation)
    params = []
    for param in _split(annotation[1:-1], ", "):
        name, colon, rest = param.partition(": ")
        hint, eq, default = rest.partition(" = ")
        params.append(name + colon + (_union(hint) if colon else "") + eq + default)
    return "(" + ", ".join(params) + ")"


def _short_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
                     return_annotation: str | None) -> tuple[str | None, str | None]:
    return _short(signature), _short(return_annotation)


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-signature", _short_signature)
