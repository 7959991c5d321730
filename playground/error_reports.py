"""Django's error reports with upstream keys masked (settings.DEFAULT_EXCEPTION_REPORTER).

A report (the 500 mail to ADMINS, the DEBUG page) lists every frame's local variables. Our own
functions that hold a key mark it with `@sensitive_variables`, and Django masks settings and
headers named like secrets; but httpx's frames hold our request headers as plain arguments,
and an exception's message may quote anything. So the finished report, text and HTML, passes
through `redaction.redact` like every log record does.
"""

from __future__ import annotations

from django.views.debug import ExceptionReporter

from playground.redaction import redact


class RedactingExceptionReporter(ExceptionReporter):
    def get_traceback_text(self) -> str:
        return redact(super().get_traceback_text())

    def get_traceback_html(self) -> str:
        return redact(super().get_traceback_html())
