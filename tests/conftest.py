"""Shared fixtures: the app served by a real uvicorn process, and the system Chromium.

Django's `live_server` is WSGI and does not stream, so browser and end-to-end tests run the app
the way `make run` does: uvicorn on 127.0.0.1 with a fresh SQLite database, in a subprocess whose
environment is the test's configuration (backends point only at loopback servers).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Configuration that must not leak from a developer's shell into a test server.
BACKEND_VARIABLES = (
    "NVIDIA_API_KEY",
    "NVIDIA_BASE_URL",
    "NVIDIA_MODEL",
    "COMPLETIONS_BASE_URL",
    "COMPLETIONS_API_KEY",
    "COMPLETIONS_MODEL",
    "COMPLETIONS_DIALECT",
    "PLAYGROUND_BACKENDS",
    "DATABASE_URL",
    "CACHE_URL",
    "DJANGO_ENV",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """A uvicorn process serving the app; `log` collects everything it printed."""

    def __init__(self, url: str, process: subprocess.Popen, log: list[str]) -> None:
        self.url = url
        self.process = process
        self.log = log


@contextlib.contextmanager
def run_app(tmp_dir: Path, **env_overrides: str) -> Iterator[AppServer]:
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    env.update(
        DJANGO_SETTINGS_MODULE="playground.settings",
        DATABASE_URL=f"sqlite:///{tmp_dir / 'db.sqlite3'}",
        PYTHONUNBUFFERED="1",
        # Tests run many generations from one address; tests of the limits set their own.
        PLAYGROUND_RATE_LIMIT="0",
    )
    env.update(env_overrides)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "playground.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        # Reading uvicorn's output tells us when it is ready, and keeps its pipe from filling.
        for line in process.stdout:
            log.append(line)
            # Uvicorn completes the lifespan startup before it binds: wait for the socket.
            if "Uvicorn running on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(60) or process.poll() is not None:
            raise RuntimeError("uvicorn did not start:\n" + "".join(log))
        yield AppServer(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(autouse=True)
def _no_rate_limit(settings):
    """In-process tests generate many times from one address: the limits' own tests set them."""
    from django.core.cache import cache

    settings.PLAYGROUND_RATE_LIMIT = 0
    cache.clear()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> Iterator[AppServer]:
    """The app with only the built-in offline model."""
    with run_app(tmp_path_factory.mktemp("app")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, driven by Playwright.

    Module-scoped on purpose: Playwright's sync API keeps an event loop on the main thread while
    it is open, which would break `asyncio.run` in the unit tests that follow.
    """
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # The flags keep Chromium from calling home: this machine has no network but loopback.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page; fails the test if any request leaves our origin."""
    context = browser.new_context()
    context.set_default_timeout(20_000)
    page = context.new_page()
    foreign: list[str] = []
    page.on(
        "request",
        lambda request: (
            foreign.append(request.url)
            if not request.url.startswith(("http://127.0.0.1", "data:", "about:"))
            else None
        ),
    )
    yield page
    context.close()
    assert not foreign, f"requests left the origin: {foreign}"


@pytest.fixture(autouse=True)
def _no_retries(settings):
    """Tests see each upstream failure as it is; tests/test_retries.py turns retries on."""
    settings.UPSTREAM_RETRIES = 0


@pytest.fixture
def upstream():
    """A loopback fake upstream speaking each dialect and failing on cue (tests/upstream.py)."""
    from upstream import running_upstream

    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def upstream_module():
    """The loopback upstream shared by a module's tests (browser modules: one app server each)."""
    from upstream import running_upstream

    with running_upstream() as server:
        yield server


@pytest.fixture
def completions_backend(settings, upstream):
    """Point the app's COMPLETIONS_* backend at the loopback upstream."""
    settings.COMPLETIONS_BASE_URL = upstream.base_url
    settings.COMPLETIONS_API_KEY = "test-key-0123456789abcdef"
    settings.COMPLETIONS_MODEL = "bigcode/starcoder2-7b"
    return upstream


# Modules whose tests go through the views, which save drafts and runs. Runs are saved from a
# worker thread after the stream ends, so these tests need real transactions rather than the
# per-test wrapper (which another thread cannot see into).
VIEW_TEST_MODULES = {
    "test_backends",
    "test_dialects",
    "test_faults",
    "test_fuzz",
    "test_hostile",
    "test_limits",
    "test_retries",
    "test_secrets",
    "test_security",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__ in VIEW_TEST_MODULES and not item.get_closest_marker("django_db"):
            item.add_marker(pytest.mark.django_db(transaction=True))
