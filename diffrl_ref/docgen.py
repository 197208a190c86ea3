"""Generate the per-clause docs pages (reStructuredText) from spec/.

The pages are committed under docs/clauses/ and a test checks they match this generator's
output, so a clause cannot change without its page changing with it.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from . import spec


def _docs_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "docs" / "clauses"
    if here.is_dir():
        return here
    packaged = Path(str(importlib.resources.files("diffrl_ref") / "_docs"))
    return packaged if packaged.is_dir() else None


def page_path(clause_id: str) -> Path | None:
    d = _docs_dir()
    return d / f"{clause_id}.rst" if d is not None else None


def _indent(text: str, n: int = 3) -> str:
    pad = " " * n
    return "\n".join(pad + ln if ln.strip() else "" for ln in text.splitlines())


def _esc(text: str) -> str:
    """Free spec text is plain text: escape what reStructuredText would read as markup."""
    for ch in "\\*`|_":
        text = text.replace(ch, "\\" + ch)
    return text


def _para(text: str) -> str:
    """One escaped paragraph (spec statements are prose; their line breaks carry no meaning)."""
    return _esc(" ".join(text.split()))


def _pre(text: str) -> str:
    """A preformatted block: derivations and notes keep their own layout."""
    return ".. code-block:: text\n\n" + _indent(text) + "\n"


def _heading(text: str, ch: str) -> str:
    return f"{text}\n{ch * len(text)}\n"


def clause_page(c: spec.Clause, tests: dict[str, list[str]]) -> str:
    title = f"``{c.id}``: {_para(c.title)}"
    out = [f".. _{c.anchor}:\n", _heading(title, "="),
           f":Clause ID: ``{c.id}`` (stable; cite as *diffrl-ref spec {spec.version()}, clause {c.id}*)",
           f":Since: spec {c.since}",
           f":Reference: :func:`{c.reference_name}`",
           f":Production path: :func:`{c.reference_name.replace('.reference.', '.fast.')}` "
           "(PyTorch; ``diffrl conform`` checks it by default)", "",
           ".. math::\n", _indent(c.equation), "",
           _heading("Symbols", "-"),
           ".. list-table::", "   :header-rows: 1", "",
           "   * - name\n     - symbol\n     - shape\n     - dtype\n     - meaning"]
    for s in c.symbols:
        out.append(f"   * - ``{s.name}``\n     - :math:`{s.latex}`\n     - ``{s.shape}``\n     - {s.dtype}\n"
                   f"     - {_para(s.meaning)}")
    out += ["", _heading("Valid domain", "-")]
    out += [f"- {_para(d)}" for d in c.domain]
    out += ["", "Out-of-domain input raises ``ValueError`` naming this clause and the violated condition.", "",
            _heading("Source", "-"),
            f"- Publication: {_para(c.source.publication)}",
            f"- Equation: {_para(c.source.equation)}",
            f"- Source deck: {_para(c.source.deck)}"]
    if c.source.note:
        out += ["", _pre(c.source.note)]
    if c.notes:
        out += ["", _heading("Notes", "-"), _pre(c.notes)]
    out += ["", _heading("Properties checked", "-")]
    for p in c.properties:
        out.append(f"``{p.name}``")
        out.append(_indent(_para(p.statement)))
        ids = tests.get(f"{c.id}:{p.name}", [])
        if ids:
            out.append("")
            out.append(_indent("Conformance tests: " + ", ".join(f"``{t}``" for t in ids)))
        out.append("")
    out += [_heading("Tolerance rule", "-"),
            "Absolute tolerance per entry, with ``eps`` the unit roundoff of the implementation's dtype:", "",
            f"``atol = {c.tolerance.expr}``", "", _pre(c.tolerance.derivation), "",
            _heading("Reference signature", "-"),
            f".. autofunction:: {c.reference_name}", "   :no-index:", ""]
    return "\n".join(out)


def index_page() -> str:
    out = [".. _clauses:\n", _heading("Clauses", "="),
           f"All clauses of spec {spec.version()}, by family. Each page gives the equation, its symbols, "
           "domain, source, the properties the conformance suite checks and the tolerance rule.", ""]
    for fam in spec.families():
        out += [_heading(_esc(fam.title), "-"), _para(fam.intro), "", ".. toctree::", "   :maxdepth: 1", ""]
        out += [f"   {c.id}" for c in fam.clauses]
        out.append("")
    return "\n".join(out)


def reference_modules() -> str:
    """automodule directives for every family's reference module (included by docs/api.rst)."""
    out = []
    for fam in spec.families():
        out += [f".. automodule:: diffrl_ref.reference.{fam.name}", "   :members:", ""]
    return "\n".join(out)


def fast_modules() -> str:
    """automodule directives for every family's production module (included by docs/api.rst)."""
    out = []
    for fam in spec.families():
        out += [f".. automodule:: diffrl_ref.fast.{fam.name}", "   :members:", "   :no-index:", ""]
    return "\n".join(out)


def rl_hyperparameters() -> str:
    """The Diff-SR and SAC hyperparameter tables, values and sources from the configs (included by docs/rl.rst)."""
    from dataclasses import fields

    from .rl import diffsr, sac

    out: list[str] = []
    for title, cfg, sources in (("Diff-SR", diffsr.DiffSRConfig(), diffsr.HYPERPARAMETERS),
                                ("SAC (stable-baselines3)", sac.SACConfig(), sac.HYPERPARAMETERS)):
        out += [f".. list-table:: {title}", "   :header-rows: 1", "   :widths: 18 12 70", "",
                "   * - ``--hp`` name", "     - Default", "     - Source"]
        for f in fields(cfg):
            out += [f"   * - ``{f.name}``", f"     - ``{getattr(cfg, f.name)!r}``", f"     - {_esc(sources[f.name])}"]
        out.append("")
    return "\n".join(out)


def render() -> dict[str, str]:
    """File name -> content for every generated page."""
    from .suite.selftest import load_conformance

    tests: dict[str, list[str]] = {}
    for r in load_conformance().values():
        tests.setdefault(f"{r.clause_id}:{r.prop}", []).append(r.test_id)
    pages = {f"{c.id}.rst": clause_page(c, tests) for c in spec.clauses().values()}
    pages["index.rst"] = index_page()
    pages["_reference_modules.inc"] = reference_modules()
    pages["_fast_modules.inc"] = fast_modules()
    pages["_rl_hyperparameters.inc"] = rl_hyperparameters()
    return pages


def write_pages(out: Path) -> list[str]:
    """Write the pages, delete stale ones; returns the names that changed."""
    out.mkdir(exist_ok=True)
    pages = render()
    changed = []
    for name, text in pages.items():
        p = out / name
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)
            changed.append(name)
    for p in [*out.glob("*.rst"), *out.glob("*.inc")]:
        if p.name not in pages:
            p.unlink()
            changed.append(p.name)
    return changed
