"""Serve MathJax 3 and the Jupyter widget manager from the built book (no CDN).

Loaded by ``_config.yml`` (``sphinx: local_extensions: offline_assets: book/_ext``).

* MathJax 3.2 comes from the PyPI package ``django-static-mathjax`` (importable as
  ``mathjax``; the browser-ready files are under ``static/mathjax/es5``). The parts
  that ``tex-chtml.js`` loads or can load lazily are copied to
  ``<site>/_vendor/mathjax/`` and ``mathjax_path`` is pointed at it.
* The widget manager (``@jupyter-widgets/html-manager`` ``embed-amd.js``, its Font
  Awesome woff2 files) and ``require.js`` are vendored in ``book/_vendor/ipywidgets/``
  (versions, hashes and licences in its README.txt) and copied to
  ``<site>/_vendor/ipywidgets/``; ``nb_ipywidgets_js`` in ``_config.yml`` loads
  ``require.js``, ``widgets-offline.js`` (points the bundles at ``fonts/``) and
  ``embed-amd.js`` from there, in that order.
* The html-manager typesets widget labels with MathJax 2's ``MathJax.Hub.Queue``;
  a tiny shim maps that onto MathJax 3's ``typesetPromise``.

Nothing goes under ``_static/`` from a source folder on purpose: Jupyter Book adds a
``<script>`` tag to every page for each ``.js`` file found in its static paths.
Sphinx resolves a relative ``mathjax_path`` / ``add_js_file`` path against
``_static/``, hence the ``../_vendor/...`` paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

VENDOR_DIR = "_vendor"  # folder at the root of the built site
MATHJAX_ENTRY = "tex-chtml.js"
MATHJAX_PATH = f"../{VENDOR_DIR}/mathjax/{MATHJAX_ENTRY}"  # relative to _static/

# What tex-chtml.js needs: the component itself, its CommonHTML woff2 fonts, the TeX
# extensions that \require / autoload fetch on demand, and the menu and
# accessibility components (with the speech rule engine) the MathJax menu can load.
MATHJAX_PARTS = (
    MATHJAX_ENTRY,
    "output/chtml/fonts/woff-v2",
    "input/tex/extensions",
    "ui",
    "a11y",
    "sre",
)

HERE = Path(__file__).resolve().parent
IPYWIDGETS_SRC = HERE.parent / VENDOR_DIR / "ipywidgets"
IPYWIDGETS_FILES = ("require.js", "widgets-offline.js", "embed-amd.js")  # load order

# MathJax 3 replaces the `window.MathJax` config object with the library object when
# it loads. Trap that assignment and give the library a MathJax-2 style
# `Hub.Queue(["Typeset", MathJax.Hub, element])`, which the widget manager calls for
# labels and HTMLMath. Widgets write math Jupyter-style between $...$ / $$...$$, which
# the book's MathJax does not scan for (prose may hold dollar signs), so the shim turns
# those into \( \) / \[ \] inside the widget element before typesetting it.
HUB_SHIM = r"""
(function () {
  var SKIP = /^(CODE|PRE|SCRIPT|STYLE|TEXTAREA|MJX-CONTAINER)$/;
  var DOLLARS = /\$\$([\s\S]+?)\$\$|(^|[^\\])\$([^$\n]+?)\$/g;
  function delimit(element) {
    if (!element || !element.ownerDocument) return;
    var walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT, {
      acceptNode: function (node) {
        for (var p = node.parentNode; p && p !== element.parentNode; p = p.parentNode) {
          if (p.nodeName && SKIP.test(p.nodeName.toUpperCase())) return NodeFilter.FILTER_REJECT;
        }
        return NodeFilter.FILTER_ACCEPT;
      },
    });
    var nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    nodes.forEach(function (node) {
      var text = node.nodeValue;
      if (text.indexOf("$") < 0) return;
      node.nodeValue = text.replace(DOLLARS, function (all, display, before, inline) {
        return display !== undefined ? "\\[" + display + "\\]" : before + "\\(" + inline + "\\)";
      });
    });
  }
  function addHub(mj) {
    if (mj && typeof mj === "object" && mj.version && !mj.Hub) {
      mj.Hub = {
        Queue: function () {
          var elements = [];
          for (var i = 0; i < arguments.length; i++) {
            var job = arguments[i];
            if (Array.isArray(job) && job[0] === "Typeset" && job[2]) elements.push(job[2]);
          }
          elements.forEach(delimit);
          var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
          return ready.then(function () {
            if (mj.typesetPromise && elements.length) return mj.typesetPromise(elements);
          });
        },
      };
    }
    return mj;
  }
  var current = addHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) { current = addHub(value); },
  });
})();
""".strip()


def mathjax_es5_dir() -> Path:
    """The es5 folder of the MathJax 3 copy shipped by django-static-mathjax."""
    try:
        import mathjax  # the django-static-mathjax distribution
    except ImportError as err:  # pragma: no cover - a broken environment
        raise RuntimeError(
            "offline_assets: the 'django-static-mathjax' package is required "
            "(pip install -r requirements.txt)"
        ) from err
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"offline_assets: {es5 / MATHJAX_ENTRY} not found")
    return es5


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def set_paths(app: Sphinx, config) -> None:
    config.mathjax_path = MATHJAX_PATH


def copy_assets(app: Sphinx) -> None:
    """Copy the assets before any page is written (Sphinx checksums them)."""
    if app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    # Sphinx reads "_static/../_vendor/..." when it checksums the files.
    (outdir / "_static").mkdir(parents=True, exist_ok=True)

    es5 = mathjax_es5_dir()
    mathjax_out = outdir / VENDOR_DIR / "mathjax"
    for part in MATHJAX_PARTS:
        _copy(es5 / part, mathjax_out / part)
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        _copy(licence, mathjax_out / "LICENSE")

    for name in IPYWIDGETS_FILES:
        if not (IPYWIDGETS_SRC / name).is_file():
            raise RuntimeError(f"offline_assets: vendored file {IPYWIDGETS_SRC / name} is missing")
    # The scripts, their fonts/ and the licence and provenance notes.
    _copy(IPYWIDGETS_SRC, outdir / VENDOR_DIR / "ipywidgets")
    logger.info("offline_assets: MathJax and the widget manager copied to %s", outdir / VENDOR_DIR)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", set_paths, priority=900)
    app.connect("builder-inited", copy_assets)
    # Inline and not deferred: it must run before the MathJax script does.
    app.add_js_file(None, body=HUB_SHIM, priority=100)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
