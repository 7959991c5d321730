"""Which backends exist, built from server configuration only.

A backend is chosen in a request by its id (and a model by its id within it); its base URL and
key never come from a request and never leave the server. Sources, in this order:

1. `NVIDIA_API_KEY` adds NVIDIA's hosted API (dialect `nim-hosted`);
2. `COMPLETIONS_BASE_URL` adds one OpenAI-compatible server (dialect `COMPLETIONS_DIALECT`);
3. the TOML file named by `PLAYGROUND_BACKENDS` adds any number more (see README);
4. the built-in offline model is always present, last.

The first is the default. Each backend has a dialect profile (`dialects.py`) that a TOML entry
may override field by field, and models with a context window, a per-run token limit and a FIM
format (`fim.py`), either listed or discovered with `GET /v1/models` (`discover_models`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables

from playground import dialects, fim
from playground.dialects import Capabilities
from playground.fim import FimFormat

logger = logging.getLogger(__name__)

OFFLINE_ID = "offline"
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


@dataclass(frozen=True, kw_only=True)
class Model:
    """One model a backend serves, with what the UI and the form need to know about it."""

    id: str
    context_window: int
    max_tokens: int  # the most one run may ask for (also capped by the context window)
    default_max_tokens: int = 128
    fim: FimFormat | None = None


@dataclass(frozen=True, kw_only=True)
class Backend:
    id: str
    label: str
    kind: str  # "offline" or "openai"
    model: str  # the default model's id
    base_url: str = ""
    # repr=False: a Backend may be logged or shown in a traceback; its key must not be.
    api_key: str = field(default="", repr=False)
    max_tokens_limit: int = 2048
    context_window: int = 16384
    dialect: str = "vllm"
    caps: Capabilities = field(default_factory=Capabilities)
    models: tuple[Model, ...] = ()
    discover: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            default = Model(
                id=self.model,
                context_window=self.context_window,
                max_tokens=self.max_tokens_limit,
                fim=_fim_for(self.model, None),
            )
            object.__setattr__(self, "models", (default,))

    @property
    def is_offline(self) -> bool:
        return self.kind == "offline"

    @property
    def max_alternatives(self) -> int:
        return self.caps.max_alternatives if self.caps.logprobs != "none" else 0

    @property
    def stop_limit(self) -> int:
        return self.caps.stop_limit

    @property
    def api_root(self) -> str:
        """The server root (for `/tokenize`, which vLLM, llama.cpp and TGI serve outside /v1)."""
        return self.base_url.removesuffix("/v1")

    def find_model(self, model_id: str) -> Model | None:
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def default_model(self) -> Model:
        return self.find_model(self.model) or self.models[0]


def _fim_for(model: str, configured: Any) -> FimFormat | None:
    """A model's FIM format: as configured (a family name or a table), else guessed from its id."""
    if configured is None:
        family = fim.family_for(model)
        return fim.FAMILIES[family] if family else None
    if configured is False or configured == "":
        return None
    if isinstance(configured, str):
        if configured not in fim.FAMILIES:
            raise ImproperlyConfigured(
                f"unknown FIM family {configured!r}; known: {', '.join(fim.FAMILIES)}"
            )
        return fim.FAMILIES[configured]
    if isinstance(configured, dict) and "{before}" in configured.get("template", ""):
        return FimFormat(
            name=str(configured.get("name", "custom")),
            template=configured["template"],
            stops=tuple(configured.get("stops", ())),
        )
    raise ImproperlyConfigured("fim must be a family name or {template, stops}")


@cache
def configured_backends() -> tuple[Backend, ...]:
    """All backends, the default first."""
    found: list[Backend] = []
    if settings.NVIDIA_API_KEY:
        found.append(
            _env_backend(
                "nvidia",
                "NVIDIA API",
                settings.NVIDIA_BASE_URL,
                settings.NVIDIA_API_KEY,
                settings.NVIDIA_MODEL,
                "nim-hosted",
            )
        )
    if settings.COMPLETIONS_BASE_URL:
        found.append(
            _env_backend(
                "completions",
                "Completions server",
                settings.COMPLETIONS_BASE_URL,
                settings.COMPLETIONS_API_KEY,
                settings.COMPLETIONS_MODEL or "default",
                settings.COMPLETIONS_DIALECT,
            )
        )
    if settings.PLAYGROUND_BACKENDS:
        found.extend(load_backends_file(Path(settings.PLAYGROUND_BACKENDS)))
    found.append(
        Backend(
            id=OFFLINE_ID,
            label="Built-in demo model (offline)",
            kind="offline",
            model="playground-offline",
            max_tokens_limit=1024,
            context_window=4096,
            dialect="offline",
            caps=dialects.PROFILES["offline"],
            models=(
                Model(
                    id="playground-offline",
                    context_window=4096,
                    max_tokens=1024,
                    fim=fim.FAMILIES["offline"],
                ),
            ),
        )
    )
    ids = [b.id for b in found]
    if len(set(ids)) != len(ids):
        raise ImproperlyConfigured(f"backend ids must be unique: {ids}")
    return tuple(_with_discovered(b) for b in found)


@sensitive_variables("key")
def _env_backend(
    backend_id: str, label: str, url: str, key: str, model: str, dialect: str
) -> Backend:
    try:
        name = dialects.canonical(dialect)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    return Backend(
        id=backend_id,
        label=label,
        kind="openai",
        model=model,
        base_url=_api_base(url),
        api_key=key,
        max_tokens_limit=settings.PLAYGROUND_MAX_TOKENS,
        context_window=settings.PLAYGROUND_CONTEXT_WINDOW,
        dialect=name,
        caps=dialects.PROFILES[name],
    )


def load_backends_file(path: Path) -> list[Backend]:
    """Backends from a TOML file of `[[backend]]` tables (README: "Several backends")."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImproperlyConfigured(f"PLAYGROUND_BACKENDS={path}: {exc}") from None
    backends = []
    for i, entry in enumerate(data.get("backend", [])):
        try:
            backends.append(_backend_from_toml(entry))
        except (KeyError, TypeError, ValueError) as exc:
            where = entry.get("id", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
            raise ImproperlyConfigured(f"PLAYGROUND_BACKENDS backend {where}: {exc}") from None
    return backends


@sensitive_variables("api_key")
def _backend_from_toml(entry: dict[str, Any]) -> Backend:
    backend_id = entry["id"]
    if not isinstance(backend_id, str) or not _ID.fullmatch(backend_id):
        raise ValueError("id must be lowercase letters, digits, - or _ (at most 40)")
    if backend_id == OFFLINE_ID:
        raise ValueError(f"id {OFFLINE_ID!r} is the built-in model's")
    name = dialects.canonical(entry.get("dialect", "openai-compatible"))
    caps = dialects.PROFILES[name].with_overrides(entry.get("capabilities", {}))
    # The key is read from the environment variable the file names, never from the file.
    key_env = entry.get("api_key_env", "")
    api_key = os.environ.get(key_env, "") if key_env else ""
    context = int(entry.get("context_window", settings.PLAYGROUND_CONTEXT_WINDOW))
    limit = int(entry.get("max_tokens", settings.PLAYGROUND_MAX_TOKENS))
    models = tuple(_model_from_toml(m, context, limit) for m in entry.get("models", []))
    discover = bool(entry.get("discover", not models))
    if not models:
        models = (Model(id="default", context_window=context, max_tokens=limit),)
    return Backend(
        id=backend_id,
        label=str(entry.get("label", backend_id)),
        kind="openai",
        model=models[0].id,
        base_url=_api_base(str(entry["base_url"])),
        api_key=api_key,
        max_tokens_limit=limit,
        context_window=context,
        dialect=name,
        caps=caps,
        models=models,
        discover=discover,
    )


def _model_from_toml(raw: Any, context: int, limit: int) -> Model:
    if isinstance(raw, str):
        raw = {"id": raw}
    model_id = str(raw["id"])
    context = int(raw.get("context_window", context))
    return Model(
        id=model_id,
        context_window=context,
        max_tokens=min(int(raw.get("max_tokens", limit)), context - 1),
        default_max_tokens=int(raw.get("default_max_tokens", 128)),
        fim=_fim_for(model_id, raw.get("fim")),
    )


def _api_base(url: str) -> str:
    """Base URL as the OpenAI SDK takes it: ending in /v1 (added when the operator left it off)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def get_backend(backend_id: str) -> Backend | None:
    return next((b for b in configured_backends() if b.id == backend_id), None)


def default_backend() -> Backend:
    return configured_backends()[0]


def resolve(choice: str) -> tuple[Backend, Model] | None:
    """A picker value, `backend` or `backend:model`, to a configured backend and model.

    Anything else (a URL, an id nobody configured) is None: the caller refuses the request.
    """
    backend_id, _, model_id = choice.partition(":")
    backend = get_backend(backend_id)
    if backend is None:
        return None
    model = backend.find_model(model_id) if model_id else backend.default_model
    return (backend, model) if model is not None else None


# --- Discovery -------------------------------------------------------------------------------

_discovered: dict[str, tuple[str, ...]] = {}


def _with_discovered(backend: Backend) -> Backend:
    ids = _discovered.get(backend.id)
    if not ids:
        return backend
    template = backend.default_model
    known = {m.id: m for m in backend.models}
    models = tuple(
        known.get(i) or dataclasses.replace(template, id=i, fim=_fim_for(i, None) or template.fim)
        for i in ids
    )
    model = backend.model if backend.model in ids else ids[0]
    return dataclasses.replace(backend, models=models, model=model)


def remember_discovered(backend_id: str, model_ids: list[str]) -> None:
    _discovered[backend_id] = tuple(dict.fromkeys(model_ids))
    configured_backends.cache_clear()


async def discover_models(client) -> None:
    """Ask each backend configured with `discover` for its models (`GET /v1/models`).

    Called at ASGI startup and by `check_backends`; a backend that does not answer keeps its
    configured list.
    """
    from playground import completions

    for backend in configured_backends():
        if not backend.discover or backend.is_offline:
            continue
        try:
            ids = await completions.list_models(client, backend)
        except completions.UpstreamError as exc:
            logger.warning("Model discovery for %s failed: %s", backend.id, exc.kind)
            continue
        if ids:
            remember_discovered(backend.id, ids)


@receiver(setting_changed)
def _forget_backends(*, setting: str, **kwargs) -> None:
    # Tests override settings; the backend list is derived from them.
    if setting.startswith(("NVIDIA_", "COMPLETIONS_", "PLAYGROUND_")):
        _discovered.clear()
        configured_backends.cache_clear()
