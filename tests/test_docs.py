"""The docs read as a spec: notes are prose, pages cite nothing outside the project, and the site check
(docs/check_site.py, run by `tox -e docs` on the built site) catches every way a page could load
something remote. Building the site takes a minute and needs the docs extra, so it happens in the docs
env, not here."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from diffrl_ref import docgen, spec

ROOT = Path(__file__).resolve().parent.parent


def _check_site() -> ModuleType:
    loc = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    assert loc is not None and loc.loader is not None
    module = importlib.util.module_from_spec(loc)
    loc.loader.exec_module(module)
    return module


check_site = _check_site()


# --- notes and derivations render as prose -----------------------------------------------------------

def test_prose_paragraphs_join_lines_and_keep_blank_line_breaks() -> None:
    out = docgen._prose("The paper states q_sigma\nfor consecutive steps.\n\nA second *paragraph*.")
    assert out == "The paper states q\\_sigma for consecutive steps.\n\nA second \\*paragraph\\*.\n"


def test_prose_bullets_become_a_list() -> None:
    out = docgen._prose("Two cases:\n- k = 1: exact,\n  by hand\n- k > 1: bounded\nafter")
    assert out == "Two cases:\n\n- k = 1: exact, by hand\n- k > 1: bounded after\n"
    # A formula wrapped before a minus sign is no list.
    assert docgen._prose("the room 1\n- ab_k is small") == "the room 1 - ab\\_k is small\n"


def test_prose_indented_formula_is_a_wrapped_block_and_operator_lines_continue() -> None:
    text = ("One implementation is within eps * scale with\n"
            "  scale = q (2 |x_k|)\n"
            "          + |z| sigma\n"
            "(terms with c = 0 dropped) and\n"
            "mag = d (log 2pi)\n"
            "      + A (tr Sigma_q),\n"
            "a bound.")
    assert docgen._prose(text) == (
        "One implementation is within eps \\* scale with\n\n"
        ".. code-block:: text\n   :class: formula\n\n"
        "   scale = q (2 |x_k|)\n"
        "           + |z| sigma\n\n"
        "(terms with c = 0 dropped) and mag = d (log 2pi) + A (tr Sigma\\_q), a bound.\n")


def test_inline_keeps_literals_and_sets_them_off_from_words() -> None:
    assert docgen._inline("the ``ddpm.noise`` clause, a_b") == "the ``ddpm.noise`` clause, a\\_b"
    assert docgen._inline("(``x``)'s") == "(\\ ``x``\\ )'s"
    assert docgen._inline("a `b` |c|") == "a \\`b\\` \\|c\\|"


@pytest.mark.parametrize("cid", sorted(spec.clauses()))
def test_clause_page_has_no_scrolling_code_block(cid: str) -> None:
    # Every preformatted block of a clause page is a wrapped formula (docs/_static/custom.css).
    page = docgen.clause_page(spec.clauses()[cid], {})
    blocks = re.findall(r"^\.\. code-block:: text\n(.*)$", page, flags=re.MULTILINE)
    assert all(b == "   :class: formula" for b in blocks), f"{cid}: a code block without :class: formula"
    c = spec.clauses()[cid]
    for note in (c.source.note, c.notes):
        if note:
            first = " ".join(note.split("\n\n")[0].split()[:6])
            assert docgen._inline(first) in page, f"{cid}: note not rendered as a paragraph"


# --- pages cite papers, equations and slides, not files outside the project --------------------------

def test_no_page_cites_files_outside_the_project() -> None:
    # docs/clauses/ holds the generated pages (tests/test_spec.py checks they are docgen.render()'s);
    # docs/check_site.py checks the built HTML the same way.
    pages = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "docs").rglob("*.rst")}
    assert len(pages) > len(spec.clauses())
    bad = {name: sorted(set(check_site.FORBIDDEN.findall(text))) for name, text in pages.items()
           if check_site.FORBIDDEN.search(text)}
    assert not bad, f"pages citing files outside the project: {bad}"


# --- the site check can fail -------------------------------------------------------------------------

def _site(tmp_path: Path, body: str, head: str = "", css: str = "") -> Path:
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    (tmp_path / "_static" / "site.css").write_text(css)
    (tmp_path / "page.html").write_text(
        f'<html><head><link rel="stylesheet" href="_static/site.css?v=1">{head}</head><body>{body}</body></html>')
    return tmp_path


def test_clean_page_passes(tmp_path: Path) -> None:
    site = _site(tmp_path, '<span class="math">\\(x\\)</span><a href="https://arxiv.org/abs/2010.02502">paper</a>',
                 head='<script defer src="_static/mathjax/tex-chtml.js"></script>'
                      '<link rel="next" href="other.html"><img src="data:image/png;base64,AAAA">')
    assert check_site.check_site(site) == (1, [])


@pytest.mark.parametrize("head", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
    '<script src="//cdn.example.org/x.js"></script>',
    '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">',
    '<link rel="preload" as="font" href="HTTP://fonts.gstatic.com/a.woff2">',
    '<img src="http://example.com/a.png">',
    '<img srcset="https://example.com/b.png 2x">',
    '<iframe src="https://example.com/"></iframe>',
    '<style>@import url("https://fonts.googleapis.com/css");</style>',
    '<div style="background: url(//example.com/a.png)"></div>',
    '<script>var s = document.createElement("script"); s.src = "https://example.com/x.js";</script>',
])
def test_remote_load_is_caught(tmp_path: Path, head: str) -> None:
    _, errors = check_site.check_site(_site(tmp_path, "", head=head))
    assert errors and all("remote" in e for e in errors), errors


def test_remote_font_in_stylesheet_is_caught(tmp_path: Path) -> None:
    css = "@font-face { font-family: X; src: url('https://fonts.gstatic.com/x.woff2') format('woff2'); }"
    _, errors = check_site.check_site(_site(tmp_path, "", css=css))
    assert errors == ["_static/site.css: loads remote https://fonts.gstatic.com/x.woff2"]


def test_missing_local_script_and_missing_mathjax_are_caught(tmp_path: Path) -> None:
    _, errors = check_site.check_site(_site(tmp_path, '<div class="math">\\[x\\]</div>',
                                            head='<script src="_static/gone.js"></script>'))
    assert any("_static/gone.js is not a file of the site" in e for e in errors), errors
    assert any("no local MathJax script" in e for e in errors), errors


def test_citing_the_inventory_is_caught(tmp_path: Path) -> None:
    # a planted citation of the working inventory (built from parts, so this file cites nothing outside the project)
    inventory = "EQUATIONS" + ".md"
    _, errors = check_site.check_site(_site(tmp_path, f"<p>see {inventory} A9 and ../shared/seeds</p>"))
    assert len(errors) == 2 and all("outside the project" in e for e in errors), errors


# --- every generated fragment is on a page -----------------------------------------------------------

def _included(page: Path) -> set[Path]:
    """The files `page` pulls in with ``.. include::``, followed through included fragments."""
    found: set[Path] = set()
    for target in re.findall(r"^\.\. include:: (\S+)$", page.read_text(), flags=re.M):
        path = (page.parent / target).resolve()
        if path.exists() and path not in found:
            found |= {path} | _included(path)
    return found


def test_every_batch_fragment_and_plot_is_on_a_page() -> None:
    # conf.py keeps these folders out of Sphinx's document list, so a table or plot a campaign writes there
    # (and archive_loop.sh commits) would otherwise never reach the site, and nothing would say so.
    docs = ROOT / "docs"
    pages = [*docs.glob("*.rst"), *docs.glob("clauses/*.rst")]
    included = set().union(*(_included(page) for page in pages))
    shown = {(page.parent / target).resolve() for page in [*pages, *included]
             for target in re.findall(r"^\.\. (?:image|figure):: (\S+)$", page.read_text(), flags=re.M)}
    batch = [p.resolve() for pattern in ("rl/*/**/*", "offline/*/**/*", "marl/*/**/*", "bench/**/*")
             for p in docs.glob(pattern) if "runs" not in p.relative_to(docs).parts]
    fragments = {p for p in batch if p.suffix in {".rst", ".inc"}}
    plots = {p for p in batch if p.suffix == ".png"}
    assert len(fragments) >= 10 and len(plots) >= 5  # the globs found the batches
    missing = sorted(str(p.relative_to(docs)) for p in (fragments - included) | (plots - shown))
    assert not missing, f"tables or plots no page shows: {missing}"
