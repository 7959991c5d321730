"""Our own scripts and stylesheet, served minified; the sources in `static/` stay as written.

`MinifyingFinder` stands in for Django's `FileSystemFinder` (`settings.STATICFILES_FINDERS`).
For a `.js` or `.css` file of `STATICFILES_DIRS` that is not minified already (the vendored
htmx files are), it hands out a copy made by rjsmin or rcssmin: comments and whitespace out,
nothing renamed or reordered. ServeStatic serves the finders' files (`SERVESTATIC_USE_FINDERS`)
and `collectstatic` copies them, so every way of serving the app ships the same copy. With
`DEBUG` on, the sources themselves are served, readable in the browser's tools.

Why: the page-weight target is 30 KB of JS and CSS gzipped (docs/PERFORMANCE.md), and the
comments that say why the code is as it is were about a third of `app.js` gzipped.

The copies live in `var/static-min/`, each with its source's modification time, and are made
again when that differs. Several workers may make one at once: each writes its own temporary
file and renames it into place, so a reader never sees half of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import rcssmin
import rjsmin
from django.conf import settings
from django.contrib.staticfiles.finders import FileSystemFinder
from django.core.files.storage import FileSystemStorage, Storage

MINIFIERS: dict[str, Callable[[str], str]] = {".js": rjsmin.jsmin, ".css": rcssmin.cssmin}


def minified_root() -> Path:
    return Path(settings.BASE_DIR) / "var" / "static-min"


def minified(source: Path, path: str) -> Path | None:
    """The minified copy of `source` (served as `path`), made if missing or stale; None for a
    file served as it is."""
    minify = MINIFIERS.get(source.suffix)
    if settings.DEBUG or minify is None or ".min." in source.name:
        return None
    copy = minified_root() / path
    mtime = source.stat().st_mtime_ns
    try:
        if copy.stat().st_mtime_ns == mtime:
            return copy
    except FileNotFoundError:
        pass
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
    partial.write_text(minify(source.read_text(encoding="utf-8")), encoding="utf-8")
    os.utime(partial, ns=(mtime, mtime))
    os.replace(partial, copy)
    return copy


class MinifyingFinder(FileSystemFinder):
    """`FileSystemFinder`, with the minified copy in place of each file `minified` makes one of."""

    def find(self, path: str, find_all: bool = False, **kwargs):
        found = super().find(path, find_all=find_all, **kwargs)
        if find_all:
            return [str(minified(Path(p), path) or p) for p in found]
        return str(minified(Path(found), path) or found) if found else found

    def list(self, ignore_patterns) -> Iterator[tuple[str, Storage]]:
        copies = FileSystemStorage(location=minified_root())
        for path, storage in super().list(ignore_patterns):
            copy = minified(Path(storage.path(path)), path)
            yield (path, storage) if copy is None else (path, copies)
