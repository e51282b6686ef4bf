"""Sphinx extension of the book: small fixes to the HTML that Jupyter Book 1.x writes.

- Inline ``<script>`` bodies registered twice (sphinx-thebe's ``const THEBE_JS_URL = ...`` and
  sphinx-togglebutton's selector: the extensions add them on an event *and* the builder re-reads the
  registry, once with the file name ``None`` and once with ``""``, so Sphinx 7.4 keeps both) are
  written once, since a repeated ``const`` is a SyntaxError in the browser console.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (js.filename or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
