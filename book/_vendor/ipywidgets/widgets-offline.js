/* Part of "nanoGPT from scratch" (book/_vendor/ipywidgets/widgets-offline.js).
 * Loaded between require.js and embed-amd.js on pages with saved widget state.
 * The widget manager's bundles locate their Font Awesome files (fonts/ beside this
 * script) from `__jupyter_widgets_assets_path__` and from their AMD module URLs;
 * both would otherwise resolve against the page's own folder. */
(function () {
  var here = document.currentScript.src.replace(/[?#].*$/, "").replace(/[^/]*$/, "");
  var fonts = here + "fonts/";
  window.__jupyter_widgets_assets_path__ = fonts;
  // A bundle's publicPath is its module URL's folder: map every AMD module that
  // embed-amd.js defines into fonts/ (the .js files themselves are never fetched).
  var paths = {};
  ["base", "controls", "output", "html-manager", "html-manager/dist/libembed-amd"].forEach(
    function (name) { paths["@jupyter-widgets/" + name] = fonts + name.replace(/\//g, "-"); }
  );
  window.require.config({ paths: paths });
})();
