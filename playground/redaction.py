"""A logging filter that masks upstream keys and credentials in every log record.

Installed on the console handler (settings.LOGGING), so it sees the records of every logger that
propagates to the root, httpx's and httpcore's included (at DEBUG they print request headers),
and on uvicorn's own handlers (`install`), which do not propagate. It masks the configured keys
themselves, `Authorization`/`x-api-key` values, `Bearer …` tokens and key-shaped strings
(`nvapi-…`, `sk-…`), in the message, its arguments and the formatted traceback.
"""

from __future__ import annotations

import logging
import re

MASK = "[redacted]"
# Names of settings that hold secrets; their values are masked wherever they appear.
SECRET_SETTINGS = ("NVIDIA_API_KEY", "COMPLETIONS_API_KEY", "SECRET_KEY")
_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:authorization|x-api-key|api[-_]?key)['\"]?\s*[:=,]\s*b?['\"]?)[^\s'\",)]+"
    ),
    re.compile(r"\bnvapi-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
)


def configured_secrets() -> list[str]:
    from django.conf import settings

    if not settings.configured:
        return []
    values = [getattr(settings, name, "") or "" for name in SECRET_SETTINGS]
    return [v for v in values if len(v) >= 8]


def redact(text: str) -> str:
    for secret in configured_secrets():
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


def _clean(value: object) -> object:
    """One log argument, masked. Numbers stay numbers and the tuple keeps its shape: formatters
    such as uvicorn's access log unpack `record.args` and format them themselves."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)  # an object (headers, a URL, an exception) is logged as its text
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _clean(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install() -> None:
    """Put the filter on every handler already configured (uvicorn's loggers keep their own)."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
