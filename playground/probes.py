"""What each backend can do right now: the checks behind `manage.py check_backends` and the
status badge on the page.

Per backend, the smallest requests that can tell: `GET /v1/models` (reachable? key accepted?)
and one completion of `max_tokens: 1, logprobs: 1` (model served? probabilities real,
placeholder or absent?). A 404/410 on the completion means the model is unknown or retired
(hosted NIM retires models with exactly those, protocol.md §1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from playground import completions
from playground.backends import Backend
from playground.completions import CompletionRequest, ErrorKind, UpstreamError

PROBE_PROMPT = "def "


@dataclass(frozen=True, kw_only=True)
class Report:
    backend: str
    model: str
    reachable: bool
    key_accepted: bool | None  # None: could not tell
    model_served: bool | None
    logprobs: str  # "real" | "placeholder" | "absent" | "unknown"
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable and self.key_accepted is not False and bool(self.model_served)

    def as_row(self) -> list[str]:
        def word(value: bool | None) -> str:
            return {True: "yes", False: "NO", None: "?"}[value]

        return [
            self.backend,
            self.model,
            word(self.reachable),
            word(self.key_accepted),
            word(self.model_served),
            self.logprobs,
            self.hint,
        ]


HEADERS = ["backend", "model", "reachable", "key", "model served", "logprobs", "hint"]


async def probe(client: httpx.AsyncClient, backend: Backend, model: str | None = None) -> Report:
    model = model or backend.model
    if backend.is_offline:
        return Report(
            backend=backend.id,
            model=model,
            reachable=True,
            key_accepted=None,
            model_served=True,
            logprobs="real",
            hint="built in",
        )
    base = {"backend": backend.id, "model": model}
    listed: list[str] | None = None
    try:
        listed = await completions.list_models(client, backend)
    except UpstreamError as error:
        if error.kind is ErrorKind.AUTH:
            return Report(
                **base,
                reachable=True,
                key_accepted=False,
                model_served=None,
                logprobs="unknown",
                hint="the key was rejected: check the environment variable holding it",
            )
        if error.status is None:
            return Report(
                **base,
                reachable=False,
                key_accepted=None,
                model_served=None,
                logprobs="unknown",
                hint=error.message,
            )
        # Some servers have no /v1/models; the completion below still tells.
    request = CompletionRequest(
        model=model, prompt=PROBE_PROMPT, max_tokens=1, temperature=0.0, logprobs=1
    )
    try:
        result = await completions.create_completion(client, backend, request)
    except UpstreamError as error:
        if error.kind is ErrorKind.AUTH:
            key, served, hint = False, None, "the key was rejected"
        elif error.kind is ErrorKind.NOT_FOUND:
            key, served = True, False
            hint = "unknown or retired (404/410): pick another model"
            if listed:
                hint += f"; the server lists {', '.join(listed[:5])}"
        else:
            key, served, hint = None, None, error.message
        return Report(
            **base,
            reachable=error.status is not None,
            key_accepted=key,
            model_served=served,
            logprobs="unknown",
            hint=hint,
        )
    hint = ""
    if result.logprobs.value == "placeholder":
        hint = "probabilities are placeholders (all 0.0): shown as text only"
    elif result.logprobs.value == "absent":
        hint = "no token probabilities from this server"
    return Report(
        **base,
        reachable=True,
        key_accepted=True,
        model_served=True,
        logprobs=result.logprobs.value,
        hint=hint,
    )


def format_table(reports: list[Report]) -> str:
    rows = [HEADERS, *(r.as_row() for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
