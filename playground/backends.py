"""Which backends exist, built from server configuration only.

A backend is chosen in a request by its id; its base URL and key never come from a request and
never leave the server. The built-in offline model is always present; an NVIDIA key or a
`COMPLETIONS_BASE_URL` adds an OpenAI-compatible upstream that becomes the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

OFFLINE_ID = "offline"


@dataclass(frozen=True, kw_only=True)
class Backend:
    id: str
    label: str
    kind: str  # "offline" or "openai"
    model: str
    base_url: str = ""
    # repr=False: a Backend may be logged or shown in a traceback; its key must not be.
    api_key: str = field(default="", repr=False)
    max_tokens_limit: int = 2048
    context_window: int = 16384
    max_alternatives: int = 5
    stop_limit: int = 4

    @property
    def is_offline(self) -> bool:
        return self.kind == "offline"


@cache
def configured_backends() -> tuple[Backend, ...]:
    """All backends, the default first."""
    found: list[Backend] = []
    if settings.NVIDIA_API_KEY:
        found.append(
            Backend(
                id="nvidia",
                label="NVIDIA API",
                kind="openai",
                model=settings.NVIDIA_MODEL,
                base_url=_api_base(settings.NVIDIA_BASE_URL),
                api_key=settings.NVIDIA_API_KEY,
                max_tokens_limit=settings.PLAYGROUND_MAX_TOKENS,
                context_window=settings.PLAYGROUND_CONTEXT_WINDOW,
            )
        )
    if settings.COMPLETIONS_BASE_URL:
        found.append(
            Backend(
                id="completions",
                label="Completions server",
                kind="openai",
                model=settings.COMPLETIONS_MODEL or "default",
                base_url=_api_base(settings.COMPLETIONS_BASE_URL),
                api_key=settings.COMPLETIONS_API_KEY,
                max_tokens_limit=settings.PLAYGROUND_MAX_TOKENS,
                context_window=settings.PLAYGROUND_CONTEXT_WINDOW,
            )
        )
    found.append(
        Backend(
            id=OFFLINE_ID,
            label="Built-in demo model (offline)",
            kind="offline",
            model="playground-offline",
            max_tokens_limit=1024,
            context_window=4096,
        )
    )
    return tuple(found)


def _api_base(url: str) -> str:
    """Base URL as the OpenAI SDK takes it: ending in /v1 (added when the operator left it off)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def get_backend(backend_id: str) -> Backend | None:
    return next((b for b in configured_backends() if b.id == backend_id), None)


def default_backend() -> Backend:
    return configured_backends()[0]


@receiver(setting_changed)
def _forget_backends(*, setting: str, **kwargs) -> None:
    # Tests override settings; the backend list is derived from them.
    if setting.startswith(("NVIDIA_", "COMPLETIONS_", "PLAYGROUND_")):
        configured_backends.cache_clear()
