"""The rendered book: build it with zero warnings, then open every page in Chromium.

The build (``jupyter-book build . -W -n --keep-going --all``) writes ``_build/html``,
which is served on 127.0.0.1 and loaded page by page in Debian's headless Chromium
through the ``playwright`` package (no ``playwright install``, no pytest-playwright).
For every page: no failed request, no request off the local server, no JS error;
every internal link, resource and #anchor resolves; math is typeset; saved widgets
render; every image decodes. A full-page screenshot of each page goes to
``_build/screenshots/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``). Without it the browser
tests fail when ``CI`` is set and are skipped otherwise. ``NANOGPT_BOOK_ROOT`` builds
another copy of the book (handy when developing the book itself); ``CHROMIUM`` names
another browser binary.
"""
from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("NANOGPT_BOOK_ROOT", REPO)).resolve()
BUILD = ROOT / "_build"
HTML_DIR = BUILD / "html"
SHOTS = BUILD / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ON_CI = os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Sphinx warnings look like "path:line: WARNING: ..." or "WARNING: ..." (and ERROR, CRITICAL).
PROBLEM_LINE = re.compile(r"(^|\s)(WARNING|ERROR|CRITICAL|SEVERE):", re.MULTILINE)


def _missing(reason: str):
    """Fail on CI, skip on a developer machine."""
    if ON_CI:
        pytest.fail(reason + " (required on CI: apt-get install chromium; pip install playwright)")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- build


@pytest.fixture(scope="session")
def book_build():
    """Build the book from scratch once per session; returns (exit code, log text)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book"]
    cmd += ["build", str(ROOT), "-W", "-n", "--keep-going", "--all"]
    for stale in (HTML_DIR, BUILD / ".doctrees", SHOTS):  # no pages from an older tree
        shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    log = ANSI.sub("", proc.stdout + "\n" + proc.stderr)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "book-build.log").write_text(log, encoding="utf-8")
    print(f"book built in {seconds:.1f} s (exit {proc.returncode}); log: {BUILD / 'book-build.log'}")
    return proc.returncode, log


def test_build_has_no_warnings(book_build):
    code, log = book_build
    problems = [line.strip() for line in log.splitlines() if PROBLEM_LINE.search(line)]
    if code and not problems:  # a crash rather than warnings: show how the log ends
        problems = ["(no warning lines; the log ends with:)", *log.strip().splitlines()[-30:]]
    assert code == 0 and not problems, (
        f"jupyter-book build -W -n --keep-going exited {code} with {len(problems)} warning(s):\n"
        + "\n".join(problems[:50])
        + f"\n(full log: {BUILD / 'book-build.log'})"
    )
    assert (HTML_DIR / "index.html").is_file()


def html_pages() -> list[Path]:
    """Every page of the site (not the assets under _static, _vendor, _sources, ...)."""
    return sorted(
        p for p in HTML_DIR.rglob("*.html")
        if not any(part.startswith("_") for part in p.relative_to(HTML_DIR).parts[:-1])
    )


def test_toc_order(book_build):
    """Sidebar: intro, setup, chapters by number prefix, then results, glossary, bibliography."""
    page = HTML_DIR / "book" / "setup.html"
    assert page.is_file(), "book/setup.html was not built"
    nav = re.search(r'<nav class="[^"]*\bbd-docs-nav\b[^>]*>(.*?)</nav>', page.read_text(encoding="utf-8"), re.S)
    assert nav, "no sidebar navigation found in book/setup.html"
    hrefs = re.findall(r'<a class="[^"]*\breference internal\b[^"]*" href="([^"]*)"', nav.group(1))
    order = [  # "#" is the current page
        "book/setup" if h.startswith("#") else os.path.normpath(os.path.join("book", h.split("#")[0]))[: -len(".html")]
        for h in hrefs
    ]
    chapters = sorted(
        f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("[0-9][0-9]_*")
        if p.suffix in {".ipynb", ".md"}
    )
    expected = ["book/intro", "book/setup", *chapters, "book/results", "book/glossary", "book/bibliography"]
    assert order == expected, f"sidebar order {order}\nexpected      {expected}"


# ----------------------------------------------------------------------- static checks


class _Scan(html.parser.HTMLParser):
    """Ids, named anchors and external scripts of one HTML file."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.remote: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        src = a.get("src") if tag in {"script", "img", "iframe", "source"} else None
        if tag == "link" and set((a.get("rel") or "").split()) & {"stylesheet", "preload", "icon", "modulepreload"}:
            src = a.get("href")
        if src and re.match(r"^(https?:)?//", src.strip(), re.I):
            self.remote.append(f"<{tag}> {src}")


@functools.lru_cache(maxsize=None)
def scan(path: Path) -> _Scan:
    parser = _Scan()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def test_no_assets_from_the_network(book_build):
    pages = html_pages()
    assert pages, f"no HTML pages under {HTML_DIR}"
    remote = {str(p.relative_to(HTML_DIR)): scan(p).remote for p in pages if scan(p).remote}
    assert not remote, "pages load scripts/styles/images from the network:\n" + json.dumps(remote, indent=1)


# ------------------------------------------------------------------------ browser


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def site(book_build):
    """Serve _build/html on a free port of 127.0.0.1; yields the base URL."""
    if not (HTML_DIR / "index.html").is_file():
        pytest.fail(f"the build wrote no {HTML_DIR / 'index.html'}")
    handler = functools.partial(_Quiet, directory=str(HTML_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# Runs in the page once it has loaded: waits for MathJax and widgets, then reports.
INSPECT_JS = r"""
async (widgetMime) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  // Widgets: the html-manager inserts a .widget-subarea before each view <script>.
  const views = [...document.querySelectorAll(`script[type="${widgetMime}"]`)];
  const rendered = (s) => {
    const area = s.previousElementSibling;
    if (!area || !area.classList.contains("widget-subarea")) return false;
    const w = area.querySelector(".jupyter-widgets");
    return !!w && w.getBoundingClientRect().height > 0 && (w.childElementCount > 0 || w.textContent.trim() !== "");
  };
  for (let i = 0; i < 100 && views.some((s) => !rendered(s)); i++) await sleep(200);
  if (window.MathJax && MathJax.typesetPromise) await MathJax.typesetPromise();
  // Images: load lazy ones and wait for all to settle.
  window.scrollTo(0, document.body.scrollHeight);
  const imgs = [...document.images];
  imgs.forEach((img) => { img.loading = "eager"; });
  await Promise.all(imgs.map((img) => img.complete ? null : new Promise((r) => {
    img.addEventListener("load", r); img.addEventListener("error", r); setTimeout(r, 10000);
  })));
  window.scrollTo(0, 0);
  // Text outside code that still holds TeX delimiters.
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, kbd, samp, textarea, script, style, mjx-container, .highlight")
    .forEach((e) => e.remove());
  const text = clone.textContent;
  const rawTex = ["\\(", "\\[", "$$"].filter((d) => text.includes(d));
  // Widget labels and HTMLMath use $...$; the MathJax shim must have typeset them.
  const widgetTex = [...document.querySelectorAll(".jupyter-widgets")].map((w) => {
    const c = w.cloneNode(true);
    c.querySelectorAll("mjx-container, pre, code, script, style, textarea, select, input").forEach((e) => e.remove());
    return c.textContent;
  }).filter((t) => /\$[^$\s][^$]*\$|\\\(|\\\[/.test(t)).slice(0, 5);
  const links = [];
  for (const el of document.querySelectorAll("[href], [src]")) {
    for (const attr of ["href", "src"]) {
      const raw = el.getAttribute(attr);
      if (raw === null) continue;
      let abs = null;
      try { abs = new URL(raw, document.baseURI).href; } catch (e) {}
      links.push({tag: el.tagName.toLowerCase(), attr, raw, abs, rel: el.getAttribute("rel") || ""});
    }
  }
  return {
    url: location.href,
    title: document.title,
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id)
      .concat([...document.querySelectorAll("a[name]")].map((e) => e.name)),
    mathNodes: document.querySelectorAll(".math").length,
    mjx: document.querySelectorAll("mjx-container").length,
    mjxErrors: [...document.querySelectorAll("mjx-merror")].map((e) => e.textContent).slice(0, 5),
    rawTex,
    widgetTex,
    views: views.length,
    unrendered: views.filter((s) => !rendered(s)).length,
    brokenImages: imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.currentSrc || i.src),
    links,
  };
}
"""

LOADING_TAGS = {"script", "img", "iframe", "source", "video", "audio", "embed", "input"}


def check_page(browser, base: str, page_path: Path) -> list[str]:
    """Load one page and return everything wrong with it."""
    rel = page_path.relative_to(HTML_DIR).as_posix()
    problems: list[str] = []
    local = urlsplit(base).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def route(r):
        parts = urlsplit(r.request.url)
        if parts.scheme in {"http", "https"} and parts.netloc != local:
            problems.append(f"request to the network: {r.request.url}")
            r.abort("blockedbyclient")
        else:
            r.continue_()

    context.route("**/*", route)
    page.on("pageerror", lambda e: problems.append(f"JS error: {e}"))
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: None if urlsplit(r.url).netloc != local
            else problems.append(f"failed request: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    try:
        page.goto(f"{base}/{rel}", wait_until="load", timeout=60_000)
        page.wait_for_load_state("networkidle", timeout=30_000)
        info = page.evaluate(INSPECT_JS, WIDGET_VIEW)
        page.wait_for_load_state("networkidle", timeout=30_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / (rel[: -len(".html")].replace("/", "__") + ".png")), full_page=True)
    except Exception as err:  # a timeout or crash is a problem of this page
        problems.append(f"could not check the page: {err}")
        context.close()
        return problems
    context.close()

    # Math typeset.
    if info["mjx"] < info["mathNodes"]:
        problems.append(f"math not typeset: {info['mathNodes']} .math elements, {info['mjx']} mjx-container")
    if info["mjxErrors"]:
        problems.append(f"MathJax errors: {info['mjxErrors']}")
    if info["rawTex"]:
        problems.append(f"raw TeX delimiters left in the text: {info['rawTex']}")
    for text in info["widgetTex"]:
        problems.append(f"untypeset math in a widget: {text[:120]!r}")
    # Widgets rendered.
    if info["unrendered"]:
        problems.append(f"{info['unrendered']} of {info['views']} widget views did not render")
    # Images decoded.
    for src in info["brokenImages"]:
        problems.append(f"image did not load: {src}")
    # Links, resources and anchors.
    final = urlsplit(info["url"]).path  # after redirects (index.html -> book/intro.html)
    own_ids = set(info["ids"])
    for link in info["links"]:
        problems.extend(link_problems(link, local, final, own_ids))
    return problems


def link_problems(link: dict, local: str, current_path: str, own_ids: set[str]) -> list[str]:
    abs_url = link["abs"]
    if abs_url is None:
        return [f"unparsable {link['attr']} on <{link['tag']}>: {link['raw']!r}"]
    parts = urlsplit(abs_url)
    if parts.scheme not in {"http", "https"}:
        return []  # mailto:, data:, javascript:
    if parts.netloc != local:
        loads = link["tag"] in LOADING_TAGS or (
            link["tag"] == "link" and set(link["rel"].split()) & {"stylesheet", "preload", "icon", "modulepreload"})
        return [f"<{link['tag']}> loads from the network: {abs_url}"] if loads else []
    path = unquote(parts.path)
    target = HTML_DIR / path.lstrip("/")
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return [f"broken link <{link['tag']} {link['attr']}={link['raw']!r}>: no {target.relative_to(HTML_DIR)}"]
    fragment = unquote(parts.fragment)
    if fragment and target.suffix == ".html":
        ids = own_ids | scan(target).ids if path == current_path else scan(target).ids
        if fragment not in ids:
            return [f"broken anchor <{link['tag']} {link['attr']}={link['raw']!r}>: no id {fragment!r} "
                    f"in {target.relative_to(HTML_DIR)}"]
    return []


def test_every_page_in_chromium(book_build, site, browser):
    pages = html_pages()
    assert len(pages) >= 5, f"only {len(pages)} pages built"
    report = {}
    for page_path in pages:
        found = check_page(browser, site, page_path)
        if found:
            report[page_path.relative_to(HTML_DIR).as_posix()] = sorted(set(found))
    print(f"checked {len(pages)} pages in Chromium; screenshots in {SHOTS}")
    assert not report, f"{len(report)} of {len(pages)} pages have problems:\n" + "\n".join(
        f"{name}:\n  " + "\n  ".join(found[:25]) for name, found in report.items()
    )
