"""Our own JS and CSS are served minified (playground/staticfiles.py), the vendored files and
everything else as they are, and the sources in static/ stay as written."""

from __future__ import annotations

import os

import rcssmin
import rjsmin
from asgiref.sync import async_to_sync
from conftest import ROOT
from django.core.management import call_command
from django.test import Client, override_settings

from playground.staticfiles import minified

STATIC = ROOT / "static"


def served(path: str) -> bytes:
    response = Client().get(f"/static/{path}")
    assert response.status_code == 200, path

    async def body() -> bytes:  # ServeStatic's file responses are async iterators
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(body)()


def test_the_app_script_and_stylesheet_are_served_minified_and_the_vendored_files_as_they_are():
    for path, minify in (
        ("playground/app.js", rjsmin.jsmin),
        ("playground/theme.js", rjsmin.jsmin),
        ("playground/app.css", rcssmin.cssmin),
    ):
        source = (STATIC / path).read_text(encoding="utf-8")
        body = served(path).decode()
        assert body == minify(source)
        assert len(body) < 0.8 * len(source)
        assert "/*" not in body  # the comments are the source's, not the page's
    for path in ("vendor/htmx-4.0.1.min.js", "playground/favicon.svg"):
        assert served(path) == (STATIC / path).read_bytes()


def test_a_copy_is_made_again_when_its_source_changes_and_none_is_made_for_debug(tmp_path):
    source = tmp_path / "widget.js"
    source.write_text("// why\nconst  answer = 42;\n", encoding="utf-8")
    with override_settings(BASE_DIR=tmp_path, DEBUG=False):
        copy = minified(source, "x/widget.js")
        assert copy == tmp_path / "var" / "static-min" / "x" / "widget.js"
        assert copy.read_text(encoding="utf-8") == "const answer=42;"
        source.write_text("let  other = 1;\n", encoding="utf-8")
        os.utime(source, ns=(1, 1))  # older than the copy: still the source's change
        assert minified(source, "x/widget.js").read_text(encoding="utf-8") == "let other=1;"
        assert minified(tmp_path / "lib.min.js", "x/lib.min.js") is None
    with override_settings(BASE_DIR=tmp_path, DEBUG=True):
        assert minified(source, "x/widget.js") is None


def test_collectstatic_copies_the_minified_files(tmp_path):
    with override_settings(STATIC_ROOT=tmp_path):
        call_command("collectstatic", interactive=False, verbosity=0)
    collected = (tmp_path / "playground" / "app.js").read_text(encoding="utf-8")
    assert collected == rjsmin.jsmin((STATIC / "playground" / "app.js").read_text("utf-8"))
    vendored = tmp_path / "vendor" / "htmx-4.0.1.min.js"
    assert vendored.read_bytes() == (STATIC / "vendor" / "htmx-4.0.1.min.js").read_bytes()
