"""Security headers, the request body cap (against real uvicorn, over raw sockets) and the
production settings' `check --deploy`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, run_app
from django.test import Client

from playground.security import CONTENT_SECURITY_POLICY


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def test_the_page_is_served_with_a_strict_content_security_policy(client):
    response = client.get("/")
    policy = directives(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]  # no inline script, no eval
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]
    assert "Access-Control-Allow-Origin" not in response


def test_the_stream_and_error_answers_carry_the_policy_too():
    from sse import post_stream
    from test_views import FORM

    _, headers, _ = post_stream("/generate", FORM)
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    response = Client().get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_htmx_is_configured_for_same_origin_requests_only(client):
    page = client.get("/").content.decode()
    assert (
        """<meta name="htmx-config" content='{"mode": "same-origin", "history": false}'>""" in page
    )
    assert "<script>" not in page  # every script is a file from our origin


def test_a_foreign_host_header_is_refused(client):
    response = client.get("/", headers={"host": "evil.test"})
    assert response.status_code == 400


# --- the body cap, against real uvicorn ---------------------------------------------------

LIMIT = 64_000


@pytest.fixture(scope="module")
def capped_app(tmp_path_factory):
    with run_app(tmp_path_factory.mktemp("capped"), PLAYGROUND_MAX_BODY_BYTES=str(LIMIT)) as server:
        yield server


def exchange(url: str, head: bytes, body_parts=(), timeout: float = 10.0) -> bytes:
    """Send a raw request; return what the server answered before closing (or the timeout)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may hang up as soon as it has refused
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and b"Connection: close" not in received:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def test_an_honest_oversized_content_length_is_refused_before_the_body_is_read(capped_app):
    answer = exchange(
        capped_app.url,
        head(
            "/generate",
            f"Content-Length: {10 * LIMIT}",
            "Content-Type: application/x-www-form-urlencoded",
        ),
    )
    assert status_of(answer) == 413


def test_a_chunked_body_without_content_length_is_cut_off_at_the_cap(capped_app):
    chunk = b"a" * 16_000
    frames = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 640  # 10 MB if it were all read
    answer = exchange(
        capped_app.url,
        head(
            "/generate",
            "Transfer-Encoding: chunked",
            "Content-Type: application/x-www-form-urlencoded",
        ),
        [*frames, b"0\r\n\r\n"],
    )
    assert status_of(answer) == 413


def test_a_lying_content_length_reads_only_what_it_declared(capped_app):
    # Content-Length: 10, then 5 MB: the server reads 10 bytes as the body and treats the rest
    # as garbage on the connection. It must answer 4xx and keep serving.
    answer = exchange(
        capped_app.url,
        head("/generate", "Content-Length: 10", "Content-Type: application/x-www-form-urlencoded"),
        [b"prompt=abc" + b"x" * 5_000_000],
    )
    assert 400 <= status_of(answer) < 500
    healthy = exchange(
        capped_app.url, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status_of(healthy) == 200


def test_a_body_under_the_cap_still_reaches_the_view(capped_app):
    body = b"prompt=" + b"x" * (LIMIT // 2)
    answer = exchange(
        capped_app.url,
        head(
            "/generate",
            f"Content-Length: {len(body)}",
            "Content-Type: application/x-www-form-urlencoded",
            "Connection: close",
        ),
        [body],
    )
    assert status_of(answer) == 403  # reached Django: refused for its missing CSRF token


# --- production settings ------------------------------------------------------------------

PRODUCTION_ENV = {
    "DJANGO_ENV": "production",
    "SECRET_KEY": "k" * 20 + "-production-test-key-" + "z" * 20,
    "ALLOWED_HOSTS": "play.example.com",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DJANGO_ENV"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_production_settings_pass_check_deploy():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_the_default_secret_key():
    result = manage("check", **{**PRODUCTION_ENV, "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "needs a real SECRET_KEY" in result.stderr
