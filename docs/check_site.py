"""Check a built docs site (``sphinx-build -b html docs HTML``) for what a reader without network sees.

    python docs/check_site.py HTML             # static checks of every page (tox -e docs runs this)
    python docs/check_site.py HTML --browser   # also: headless Chromium typesets a page opened from disk

Static checks: no page or stylesheet loads anything remote (script, stylesheet, font, image, frame:
an absolute ``scheme://`` or protocol-relative ``//`` URL; plain links ``<a href>`` are not loads),
every local script and stylesheet exists in the site, every page with equations loads the site's
own MathJax, and no page cites files outside the project (the equation inventory, ../shared).

--browser opens each page from file:// in headless Chromium with networking disabled and every host
name unresolvable, dumps the DOM after the scripts ran and checks that MathJax typeset every equation
(one ``mjx-container`` per math element, no TeX error, no raw ``\\(`` or ``\\[`` left in the text)
and that no remote request was attempted (Chromium's net log). It writes a screenshot and a note
with the command, date and Chromium version to --screenshots (default docs/_static/screenshots/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Absolute URL with any scheme (http:, https:, ftp:, file:, ...) or protocol-relative: never loaded by the site.
# data: URIs have no "//" and stay allowed.
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
# url(...) and @import in CSS; quoted URLs in inline scripts.
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", re.IGNORECASE)
SCRIPT_URL = re.compile(r"""["'`]((?:[a-z][a-z0-9+.-]*:)?//[^"'`\s]+)""", re.IGNORECASE)
# Files outside the project that a page must never cite (cite the papers, equations and deck slides).
FORBIDDEN = re.compile(r"EQUATIONS\.md|\.\./shared\b|shared/seeds")

# Attributes by which an element loads a resource; <a href> and <form action> only link.
LOADING_ATTRS: dict[str, tuple[str, ...]] = {
    "script": ("src",), "link": ("href",), "img": ("src", "srcset"), "source": ("src", "srcset"),
    "iframe": ("src",), "frame": ("src",), "embed": ("src",), "object": ("data",), "video": ("src", "poster"),
    "audio": ("src",), "track": ("src",), "input": ("src",), "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
}
# Local resources that must exist: scripts, stylesheets and images (links between pages are Sphinx's job).
MUST_EXIST = {"script", "img", "source"}

DEFAULT_PAGES = ("clauses/ddim.posterior.html",)
SCREENSHOT_DIR = Path(__file__).resolve().parent / "_static" / "screenshots"


class _Page(HTMLParser):
    """Collects the resources an HTML page loads, its inline scripts and styles, and its math elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.stylesheets: list[str] = []
        self.inline_scripts: list[str] = []
        self.inline_styles: list[str] = []
        self.math = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in LOADING_ATTRS.get(tag, ()):
            if name in a:
                urls = [u.split()[0] for u in a[name].split(",") if u.strip()] if name == "srcset" else [a[name]]
                self.loads += [(tag, name, u) for u in urls]
        if tag == "link" and "stylesheet" in a.get("rel", "").lower().split():
            self.stylesheets.append(a.get("href", ""))
        if "style" in a:
            self.inline_styles.append(a["style"])
        if "math" in a.get("class", "").split():
            self.math += 1
        if tag in ("script", "style") and (tag != "script" or "src" not in a):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.inline_scripts.append(data)
        elif self._in == "style":
            self.inline_styles.append(data)


def _css_urls(css: str) -> Iterator[str]:
    for m in CSS_URL.finditer(css):
        yield (m.group(1) or m.group(2)).strip()


def _local_target(site: Path, page: Path, url: str) -> Path | None:
    """The file a relative URL of `page` names, or None for data: URIs and in-page fragments."""
    parts = urlsplit(url)
    if parts.scheme or not parts.path:
        return None
    return (page.parent / unquote(parts.path)).resolve()


def check_page(site: Path, page: Path) -> list[str]:
    """Problems of one built HTML page."""
    text = page.read_text(encoding="utf-8", errors="replace")
    rel = page.relative_to(site).as_posix()
    p = _Page()
    p.feed(text)
    errors = [f"{rel}: <{tag} {attr}> loads remote {url}" for tag, attr, url in p.loads if REMOTE.match(url)]
    for css in p.inline_styles:
        errors += [f"{rel}: inline style loads remote {u}" for u in _css_urls(css) if REMOTE.match(u)]
    for js in p.inline_scripts:
        errors += [f"{rel}: inline script names remote {m.group(1)}" for m in SCRIPT_URL.finditer(js)]
    for tag, _, url in p.loads:
        needed = tag in MUST_EXIST or (tag == "link" and url in p.stylesheets)
        if not needed or REMOTE.match(url):
            continue
        target = _local_target(site, page, url)
        if target is not None and not (target.is_relative_to(site.resolve()) and target.is_file()):
            errors.append(f"{rel}: <{tag}> {url} is not a file of the site")
    if p.math:
        mathjax = [u for tag, _, u in p.loads if tag == "script" and "/mathjax/" in u and not REMOTE.match(u)]
        if not mathjax:
            errors.append(f"{rel}: {p.math} math elements but no local MathJax script")
    for m in FORBIDDEN.finditer(text):
        errors.append(f"{rel}: cites {m.group(0)!r}, a file outside the project")
    return errors


def check_css(site: Path, css: Path) -> list[str]:
    rel = css.relative_to(site).as_posix()
    return [f"{rel}: loads remote {u}" for u in _css_urls(css.read_text(encoding="utf-8", errors="replace"))
            if REMOTE.match(u)]


def check_site(site: Path) -> tuple[int, list[str]]:
    """(number of pages checked, problems) for a built site."""
    pages = sorted(site.rglob("*.html"))
    errors: list[str] = []
    for page in pages:
        errors += check_page(site, page)
    for css in sorted(site.rglob("*.css")):
        errors += check_css(site, css)
    if not pages:
        errors.append(f"{site}: no HTML pages (build the site first)")
    return len(pages), errors


# ---------------------------------------------------------------------------------------------------
# The browser check.

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps",
                  # Network off: every host name fails to resolve, so only file:// can load.
                  "--host-resolver-rules=MAP * ~NOTFOUND")
# Simulated time the page gets for its scripts (MathJax typesets in well under a second of it).
VIRTUAL_TIME_MS = 10000
WINDOW = "1280,2000"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise SystemExit("no Chromium found: apt-get install -y chromium")


def _run_chromium(exe: str, url: str, extra: list[str], workdir: Path) -> tuple[list[str], str]:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))  # a new empty profile per run
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}",
           *extra, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        raise SystemExit(f"chromium failed ({r.returncode}): {r.stderr[-2000:]}")
    return cmd, r.stdout


class _Dom(HTMLParser):
    """Counts MathJax output in a DOM dump and keeps the text a reader sees."""

    SKIP = {"script", "style", "pre", "code", "textarea", "mjx-assistive-mml", "math"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.containers = 0
        self.errors = 0
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.containers += tag == "mjx-container"
        self.errors += tag == "mjx-merror" or any(k == "data-mjx-error" for k, _ in attrs)
        self._skip += tag in self.SKIP

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in self.SKIP and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def _requests(netlog: Path) -> tuple[list[str], list[str]]:
    """(URLs the page requested over the network, URLs Chromium itself requested) from its net log.

    file:// loads never reach the net log. A request a page makes carries the page's origin as its
    initiator ("null" for a page from disk); Chromium's own background requests (update and time
    checks, which its flags do not all silence) carry "not an origin" and are not the site's doing.
    """
    text = netlog.read_text().rstrip().rstrip(",")
    try:
        log = json.loads(text)
    except ValueError:  # Chromium may leave the log unterminated when it exits
        log = json.loads(text + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page: set[str] = set()
    browser: set[str] = set()
    for e in log.get("events", []):
        params = e.get("params", {})
        if e.get("type") == start and "url" in params:
            (browser if params.get("initiator") == "not an origin" else page).add(str(params["url"]))
    return sorted(page), sorted(browser)


def check_browser(site: Path, page: str, out: Path) -> list[str]:
    """Open one page from disk in headless Chromium, check the typeset DOM, write a screenshot and a note."""
    exe = chromium()
    html = site / page
    if not html.is_file():
        return [f"{page}: not in {site}"]
    static = _Page()
    static.feed(html.read_text(encoding="utf-8"))
    url = html.resolve().as_uri()
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        netlog = work / "net.json"
        _, dom_html = _run_chromium(exe, url, ["--dump-dom", f"--log-net-log={netlog}"], work)
        dom = _Dom()
        dom.feed(dom_html)
        text = "".join(dom.text)
        if dom.containers < static.math:
            errors.append(f"{page}: {dom.containers} typeset equations (mjx-container) for {static.math} math elements")
        if dom.errors:
            errors.append(f"{page}: {dom.errors} MathJax errors")
        for delim in ("\\(", "\\[", "\\)", "\\]"):
            if delim in text:
                i = text.index(delim)
                errors.append(f"{page}: raw TeX {delim!r} left in the text: ...{text[max(0, i - 60):i + 60]!r}...")
        remote, background = _requests(netlog) if netlog.is_file() else (["(no net log written)"], [])
        errors += [f"{page}: requested {u}" for u in remote]
        out.mkdir(parents=True, exist_ok=True)
        shot = out / (Path(page).stem + ".png")
        cmd, _ = _run_chromium(exe, url, [f"--screenshot={shot}", f"--window-size={WINDOW}"], work)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    shown = " ".join(c if "profile-" not in c else "--user-data-dir=<new empty dir>" for c in cmd)
    shown = shown.replace(html.resolve().as_uri(), f"file://<site>/{page}").replace(str(shot), str(shot.name))
    (out / (Path(page).stem + ".txt")).write_text(
        f"Screenshot {shot.name} of {page}, opened from disk with the network off.\n"
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"Browser: {version}\n"
        f"Checked: {dom.containers} equations typeset by MathJax for {static.math} math elements, "
        f"{dom.errors} MathJax errors, {len(remote)} network requests by the page "
        f"({len(background)} by Chromium itself, all failing: no host resolves).\n"
        f"Made by: python docs/check_site.py <site> --browser {page}\n"
        f"Command: {shown}\n")
    print(f"{page}: {dom.containers}/{static.math} equations typeset, screenshot {shot}")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("site", type=Path, help="the built HTML directory")
    ap.add_argument("--browser", nargs="*", metavar="PAGE", default=None,
                    help=f"also check these pages in headless Chromium (default {' '.join(DEFAULT_PAGES)})")
    ap.add_argument("--screenshots", type=Path, default=SCREENSHOT_DIR, help="where screenshots and notes go")
    args = ap.parse_args(argv)
    n, errors = check_site(args.site)
    if args.browser is not None:
        for page in args.browser or DEFAULT_PAGES:
            errors += check_browser(args.site, page, args.screenshots)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{n} pages checked: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
