"""Generate the per-clause docs pages (reStructuredText) from spec/.

The pages are committed under docs/clauses/ and a test checks they match this generator's
output, so a clause cannot change without its page changing with it.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any

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


# ``code`` in spec text is an inline literal, as in reStructuredText (the spec cites clause IDs and
# argument names that way); everything else is plain text.
_LITERAL = re.compile(r"``(\S(?:[^`]*?\S)?)``")


def _inline(text: str) -> str:
    """Escape plain text, keeping ``literal`` spans. An escaped space (which renders as nothing) sets a
    literal off from a character other than whitespace, where reStructuredText needs a boundary."""
    out, pos = [], 0
    for m in _LITERAL.finditer(text):
        before = text[pos:m.start()]
        out.append(_esc(before))
        if m.start() and not text[m.start() - 1].isspace():
            out.append("\\ ")
        out.append(m.group(0))
        if m.end() < len(text) and not text[m.end()].isspace():
            out.append("\\ ")
        pos = m.end()
    out.append(_esc(text[pos:]))
    return "".join(out)


def _para(text: str) -> str:
    """One escaped paragraph (spec statements are prose; their line breaks carry no meaning)."""
    return _inline(" ".join(text.split()))


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


_ITEM = re.compile(r"[-*] ")
# An indented line starting with an operator continues the formula of the sentence above it.
_CONTINUATION = re.compile(r"[-+*/=<>] ")


def _prose(text: str) -> str:
    """Notes and derivations as reStructuredText prose.

    Blank lines separate paragraphs and line breaks inside a paragraph carry no meaning. A line
    starting with "- " or "* " at the start of a paragraph, after a line ending with a colon or after
    another item begins a list item (the lines after it continue it up to the next item or blank
    line). An indented line set off from its sentence (``scale = ...``) is a formula: consecutive
    ones become a preformatted block that keeps their alignment and wraps (class ``formula``, see
    docs/_static/custom.css), never a horizontally scrolling one.
    """
    lines = text.strip("\n").splitlines()
    base = min((_indent_of(ln) for ln in lines if ln.strip()), default=0)
    blocks: list[str] = []
    for chunk in re.split(r"\n\s*\n", "\n".join(lines)):
        groups: list[tuple[str, list[str]]] = []  # (kind, lines), kind in para / item / formula
        prev = ""
        for ln in chunk.splitlines():
            body, indented = ln.strip(), _indent_of(ln) > base
            kind = groups[-1][0] if groups else ""
            # A list starts a paragraph or follows a colon: "1\n- ab_k" wrapped mid-formula is no list.
            starts_list = kind in ("", "item") or prev.endswith(":")
            prev = body
            if not indented and starts_list and _ITEM.match(body):
                groups.append(("item", [body[2:]]))
            elif kind == "item":
                groups[-1][1].append(body)
            elif indented and kind == "formula":
                groups[-1][1].append(ln)
            elif indented and not (kind == "para" and _CONTINUATION.match(body)):
                groups.append(("formula", [ln]))
            elif kind == "para":
                groups[-1][1].append(body)
            else:
                groups.append(("para", [body]))
        for i, (kind, group) in enumerate(groups):
            if kind == "para":
                blocks.append(_para(" ".join(group)))
            elif kind == "item":
                # Consecutive items form one list: no blank line between them.
                item = "- " + _para(" ".join(group))
                if i and groups[i - 1][0] == "item":
                    blocks[-1] += "\n" + item
                else:
                    blocks.append(item)
            else:
                pad = min(_indent_of(ln) for ln in group)
                blocks.append(".. code-block:: text\n   :class: formula\n\n"
                              + _indent("\n".join(ln[pad:].rstrip() for ln in group)))
    return "\n\n".join(blocks) + "\n"


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
        out += ["", _prose(c.source.note)]
    if c.notes:
        out += ["", _heading("Notes", "-"), _prose(c.notes)]
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
            f"``atol = {c.tolerance.expr}``", "", _prose(c.tolerance.derivation), "",
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
    from .rl import diffsr, sac

    return _hp_tables([("Diff-SR", diffsr.DiffSRConfig(), diffsr.HYPERPARAMETERS),
                       ("SAC (stable-baselines3)", sac.SACConfig(), sac.HYPERPARAMETERS)])


def offline_hyperparameters() -> str:
    """The Diffusion-QL hyperparameter table and the official per-set rows (included by docs/offline.rst)."""
    from .rl import diffusion_ql

    out = _hp_tables([("Diffusion-QL", diffusion_ql.DiffusionQLConfig(), diffusion_ql.HYPERPARAMETERS)])
    keys = sorted({k for row in diffusion_ql.FAMILIES.values() for k in row})
    out += "\n" + "\n".join([".. list-table:: Diffusion-QL: the official code's per-set values (family='auto')",
                      "   :header-rows: 1", "", "   * - Dataset family"] + [f"     - ``{k}``" for k in keys]) + "\n"
    for fam, row in diffusion_ql.FAMILIES.items():
        out += "\n".join([f"   * - {fam}"] + [f"     - {row[k]:g}" for k in keys]) + "\n"
    return out


def edp_hyperparameters() -> str:
    """The EDP hyperparameter table (included by docs/offline.rst); its per-set gradient clip is Diffusion-QL's."""
    from .rl import edp

    return _hp_tables([("EDP", edp.EDPConfig(), edp.HYPERPARAMETERS)])


def marl_hyperparameters() -> str:
    """The DOM2, DoF and MADiff hyperparameter tables (included by docs/marl.rst)."""
    from .rl import dof, dom2, madiff

    return _hp_tables([("DOM2", dom2.DOM2Config(), dom2.HYPERPARAMETERS),
                       ("DoF", dof.DoFConfig(), dof.HYPERPARAMETERS),
                       ("MADiff", madiff.MADiffConfig(), madiff.HYPERPARAMETERS)])


def _hp_tables(tables: list[tuple[str, Any, dict[str, str]]]) -> str:
    from dataclasses import fields

    out: list[str] = []
    for title, cfg, sources in tables:
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
    pages["_offline_hyperparameters.inc"] = offline_hyperparameters()
    pages["_edp_hyperparameters.inc"] = edp_hyperparameters()
    pages["_marl_hyperparameters.inc"] = marl_hyperparameters()
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
