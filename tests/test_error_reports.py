"""Django's error reports (the 500 mail to ADMINS, the DEBUG page) never carry an upstream key.

A failure deep inside an upstream call leaves the key in local variables of several frames
(our request headers, httpx's own arguments); Django's reporter shows every frame's locals.
`@sensitive_variables` hides ours, and `redaction.RedactingExceptionReporter` (the
DEFAULT_EXCEPTION_REPORTER) masks the configured keys anywhere in the report, so httpx's frames
and exception messages are covered too. Settings named like keys are masked by Django itself.
"""

from __future__ import annotations

import sys

import httpx
import pytest
from django.core import mail
from django.test import Client
from django.views.debug import (
    ExceptionReporter,
    SafeExceptionReporterFilter,
    get_exception_reporter_class,
)
from test_views import FORM

from playground import completions
from playground.backends import get_backend
from playground.forms import GenerateForm

KEY = "sk-report-key-ABCDEFGH-12345678"


@pytest.fixture
def keyed(settings, upstream):
    settings.COMPLETIONS_BASE_URL = upstream.base_url
    settings.COMPLETIONS_API_KEY = KEY
    settings.COMPLETIONS_MODEL = "bigcode/starcoder2-7b"
    settings.COMPLETIONS_DIALECT = "vllm"  # it has a tokenize endpoint
    settings.DEBUG = False
    settings.ADMINS = [("Ops", "ops@example.test")]
    return upstream


@pytest.fixture
def broken_send(monkeypatch):
    """httpx fails in an unexpected way (not an httpx error), with the key in its frames."""

    async def send(self, request, **kwargs):
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        raise RuntimeError("the transport broke")

    monkeypatch.setattr(httpx.AsyncClient, "send", send)


def assert_clean(report: str) -> None:
    assert "RuntimeError" in report or "the transport broke" in report or "Traceback" in report
    assert KEY not in report
    assert KEY[-8:] not in report


@pytest.mark.django_db
def test_a_500_mailed_to_admins_does_not_carry_the_key(keyed, broken_send):
    client = Client(raise_request_exception=False)
    response = client.post("/tokens", {"backend": "completions", "prompt": "def f():"})
    assert response.status_code == 500
    assert KEY not in response.content.decode()
    (message,) = mail.outbox
    assert_clean(message.body)
    assert "/tokens" in message.subject


@pytest.mark.django_db
def test_the_html_report_mailed_to_admins_does_not_carry_the_key(keyed, broken_send):
    """With the HTML report attached (AdminEmailHandler(include_html=True)): every frame's
    local variables, httpx's included."""
    import logging

    from django.utils.log import AdminEmailHandler

    handler = AdminEmailHandler(include_html=True)
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        response = Client(raise_request_exception=False).post(
            "/tokens", {"backend": "completions", "prompt": "def f():"}
        )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    html = [alt for message in mail.outbox for alt, kind in message.alternatives]
    assert html
    for report in html:
        assert "the transport broke" in report
        assert KEY not in report
        assert KEY[-8:] not in report


def test_the_debug_page_and_text_report_of_an_upstream_failure_hide_the_key(keyed, broken_send):
    import asyncio

    from django.test import RequestFactory

    backend = get_backend("completions")
    request = RequestFactory().post("/tokens", {"prompt": "x"}, HTTP_AUTHORIZATION=f"Bearer {KEY}")
    try:
        asyncio.run(completions.count_tokens(httpx.AsyncClient(), backend, "m", "def f():"))
    except RuntimeError:
        info = sys.exc_info()
    else:
        pytest.fail("the forced failure did not happen")
    # The reporter the settings name, as Django picks it.
    reporter = get_exception_reporter_class(request)(request, *info)
    assert_clean(reporter.get_traceback_text())
    assert_clean(reporter.get_traceback_html())


def test_our_frames_that_hold_the_key_are_marked_sensitive(keyed, monkeypatch):
    """Even Django's plain reporter (no redaction of its output) hides our request headers."""

    def broken_payload(*args, **kwargs):
        raise ValueError("cannot build the payload")

    monkeypatch.setattr(completions, "build_payload", broken_payload)
    backend = get_backend("completions")
    form = GenerateForm({**FORM, "backend": "completions", "max_tokens": "4"})
    assert form.is_valid(), form.errors
    try:
        completions._open(httpx.AsyncClient(), backend, form.to_request(), stream=True)
    except ValueError:
        info = sys.exc_info()
    else:
        pytest.fail("the forced failure did not happen")
    reporter = ExceptionReporter(None, *info)
    reporter.filter = SafeExceptionReporterFilter()
    html = reporter.get_traceback_html()  # the one that lists each frame's variables
    assert "cannot build the payload" in html
    assert KEY not in html
    assert "<td>headers</td>" in html  # listed, with its value masked
