"""Keys never reach the logs: the filter on its own, and a real uvicorn run at DEBUG."""

from __future__ import annotations

import io
import logging
import logging.config

import pytest
from conftest import run_app
from live import FORM, generate, session

from playground.redaction import MASK, RedactSecrets, redact

KEY = "nvapi-LOGKEY-0123456789abcdefXYZ"
OTHER = "completions-key-ABCDEFGH12345678"


@pytest.mark.parametrize(
    "line",
    [
        f"Authorization: Bearer {OTHER}",
        f"headers=[(b'Host', b'x'), (b'Authorization', b'Bearer {OTHER}')]",
        f'{{"authorization": "{OTHER}"}}',
        f"x-api-key={OTHER}",
        f"calling with {KEY} now",
        "sk-proj-abcdefghijklmnop leaked",
    ],
)
def test_credentials_are_masked_in_any_shape(settings, line):
    settings.NVIDIA_API_KEY = KEY
    masked = redact(line)
    assert OTHER not in masked
    assert KEY not in masked
    assert "abcdefghijklmnop" not in masked
    assert MASK in masked


def test_every_logger_at_debug_goes_through_the_filter(settings):
    settings.COMPLETIONS_API_KEY = OTHER
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for name in ("httpx", "httpcore.http11", "playground.completions", "django.request"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.debug("request headers %s", {"Authorization": f"Bearer {OTHER}"})
            logger.debug("the key %s in a message", OTHER)
            try:
                raise RuntimeError(f"failed with {OTHER}")
            except RuntimeError:
                logger.exception("boom")
            logger.setLevel(logging.NOTSET)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    assert output.count(MASK) >= 12
    assert OTHER not in output
    assert OTHER[-8:] not in output


def test_a_generation_at_debug_logs_no_key(tmp_path, upstream):
    upstream.script(dialect="vllm")
    upstream.script(status=401, body={"error": {"message": f"bad key {OTHER}"}})
    upstream.script(status=500, body=f"<html>{OTHER}</html>")
    with run_app(
        tmp_path,
        COMPLETIONS_BASE_URL=upstream.base_url,
        COMPLETIONS_API_KEY=OTHER,
        NVIDIA_API_KEY=KEY,
        NVIDIA_BASE_URL=upstream.base_url,
        LOG_LEVEL="DEBUG",
        HTTP_CLIENT_LOG_LEVEL="DEBUG",
    ) as app:
        client = session(app.url)
        for backend in ("completions", "completions", "completions", "nvidia"):
            assert generate(client, backend=backend).status_code == 200
        # A reader who leaves mid-stream: the relay cancels its upstream request at DEBUG too.
        # (A 1 ms client timeout raced the app's answer and sometimes lost: CI read a 422.)
        upstream.script(dialect="vllm", tokens=[f"t{i} " for i in range(40)], chunk_delay=0.15)
        upstream.arrived.clear()
        with client.stream("POST", "/generate", data=FORM) as response:
            assert response.status_code == 200
            assert upstream.arrived.wait(10)
            next(response.iter_raw())
        left = upstream.requests[-1]
        assert left.disconnected.wait(10), "the app kept reading for a reader who had left"
        log = "".join(app.log)
    assert "HTTP Request: POST" in log  # httpx did log at DEBUG/INFO: the test saw its output
    # The filter keeps each record formattable: uvicorn's access log unpacks its arguments.
    assert "Logging error" not in log
    assert '"POST /generate HTTP/1.1" 200' in log
    assert upstream.requests[0].headers["authorization"] == f"Bearer {OTHER}"
    for secret in (OTHER, KEY):
        assert secret not in log
        assert secret[-8:] not in log
