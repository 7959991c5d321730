"""The thin typed client for OpenAI-compatible `/v1/completions` upstreams.

This is the only module that knows upstream URL paths and JSON shapes. Everything else in the
app sees the dataclasses below (`CompletionRequest`, `Delta`, `Token`, `Alternative`, `Usage`,
`Completion`; all frozen but `Token` and `Alternative`, which are made six at a time per token
streamed and are read-only by convention, as a frozen one costs twice as much to construct) and
one exception type, `UpstreamError`, whose message is always safe to
show to a user (it never contains a raw upstream body or a key).

The calls are plain async functions taking the `httpx.AsyncClient` first: `stream_completion`
(SSE, one `Delta` per chunk) and `create_completion`. `build_payload` is the only place a request
body is built, `error_from_response` the only place upstream errors are read, and
`make_client`/`get_client`/`set_client`/`close_client` keep one client per event loop. Wire
formats: /work/shared/reference/protocol.md (cited as protocol.md §n).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import operator
import random
import re
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import httpx
import orjson
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from playground import network

if TYPE_CHECKING:
    from playground.backends import Backend

logger = logging.getLogger(__name__)

# httpcore asks `sniffio` which async library is running on every request and connection event.
# sniffio is not installed (httpx no longer needs it), and Python retries a failed import each
# time, searching sys.path again: a dozen stat calls per ask, about 2 % of the worker's CPU in a
# profile (docs/PERFORMANCE.md). Recorded once as absent, the import fails at once and httpcore
# assumes asyncio exactly as before.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None


class LogprobStatus(StrEnum):
    """Whether a backend sent real token probabilities."""

    REAL = "real"
    # Hosted NIM has been seen sending all-0.0 logprobs with no token strings: not a 100 % token.
    PLACEHOLDER = "placeholder"
    ABSENT = "absent"


class ErrorKind(StrEnum):
    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"


class UpstreamError(Exception):
    """An upstream call failed; `message` is short, user-facing and free of upstream bodies."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # Worth another try before any output: 408, 409, 429, 5xx and failed connections.
        if retryable is None:
            retryable = status is not None and (status in (408, 409, 429) or status >= 500)
        self.retryable = retryable


class Alternative(NamedTuple):
    """One candidate the model weighed for a position, with its natural-log probability.

    A token's alternatives are (text, logprob) pairs, read by index (`pair[0]`, `pair[1]`)
    everywhere: the usual chunk's are the chunk's own `dict.items()` pairs, plain tuples made
    in C (`TokenAssembler._one_plain_token`), and this named pair is what the general path and
    stored runs make. Plain pairs matter beyond their cost: the cyclic garbage collector stops
    tracking a plain tuple of strings and floats once it has seen it, never a subclass of
    tuple, and every open stream holds five per token until its run is saved (with 200 open
    streams the collector took about a tenth of the worker's CPU, docs/PERFORMANCE.md).
    """

    text: str
    logprob: float


@dataclass(kw_only=True, slots=True)
class Token:
    """One generated token. `logprob` is None when the backend gave no probability for it."""

    text: str
    logprob: float | None
    alternatives: tuple[tuple[str, float], ...] = ()  # (text, logprob), most likely first


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# Not frozen: a stream makes one per chunk, and a frozen dataclass sets each field through
# object.__setattr__ (about twice the cost). Nothing changes a delta after it is made.
@dataclass(kw_only=True, slots=True)
class Delta:
    """One piece of a streamed completion.

    `tokens` concatenate to `text` when `logprobs` is REAL; otherwise `tokens` is empty and only
    `text` is meaningful. A delta may carry only `finish_reason` and/or `usage` (empty text).
    """

    text: str = ""
    tokens: tuple[Token, ...] = ()
    logprobs: LogprobStatus = LogprobStatus.ABSENT
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Completion:
    """A whole (non-streamed) completion."""

    text: str
    tokens: tuple[Token, ...]
    logprobs: LogprobStatus
    finish_reason: str | None
    usage: Usage | None


@dataclass(frozen=True, kw_only=True, slots=True)
class CompletionRequest:
    """Validated sampling parameters: the only source of what is sent upstream.

    `logprobs` is the number of alternatives wanted per token (0-5 in the UI); the client still
    asks for at least one so every token can be tinted by its own probability.
    """

    model: str
    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = 5
    # Insert mode: the text after the insertion point (`prompt` is the text before it). The
    # client wraps both in the model family's FIM format; None is plain completion.
    suffix: str | None = None


# --- Request -------------------------------------------------------------------------------------

# What an upstream that misbehaves may make us read: an error page is only parsed for a short
# JSON message, and a non-streamed answer with logprobs for a few thousand tokens is well under
# a MiB.
ERROR_BODY_LIMIT = 64 * 1024
COMPLETION_BODY_LIMIT = 16 * 1024 * 1024
DETAIL_LIMIT = 200


def build_payload(backend: Backend, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of `POST /v1/completions`: an allow-list built from the validated request.

    This is the only place an upstream body is built, and it sends only what the backend's
    capabilities (`dialects.py`) say it accepts: hosted NIM rejects unknown keys with 400/422,
    TGI has no `logprobs`, Ollama accepts `logprobs` but never answers it (protocol.md §0).
    In Insert mode the model family's FIM prompt is built here; a `suffix` field is never sent
    (most servers reject it, protocol.md §7).
    """
    caps = backend.caps
    model_id = request.model or backend.model
    prompt, stops = request.prompt, request.stop
    if request.suffix is not None:
        model = backend.find_model(model_id)
        fim_format = model.fim if model is not None else None
        if fim_format is None:
            raise UpstreamError(
                ErrorKind.BAD_REQUEST, "This model has no fill-in-the-middle format configured."
            )
        prompt = fim_format.prompt(request.prompt, request.suffix)
        # The family's stops first: without them the model runs on past the middle.
        stops = tuple(dict.fromkeys((*fim_format.stops, *stops)))[: caps.stop_limit]
    optional: dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "seed": request.seed,
        "stop": list(stops) if stops else None,
    }
    payload: dict[str, Any] = {
        "model": model_id,
        "prompt": prompt,
        "max_tokens": request.max_tokens,
        **{k: v for k, v in optional.items() if k in caps.params and v is not None},
    }
    # At least one, so every sampled token carries its own probability even when the user
    # wants no alternatives; never more than the backend accepts (OpenAI caps at 5, vLLM
    # answers 400 above --max-logprobs, protocol.md §2, §3.1).
    wanted = max(1, min(request.logprobs, caps.max_alternatives))
    if caps.logprobs == "int":
        payload["logprobs"] = wanted
    elif caps.logprobs == "bool":
        payload["logprobs"] = True
        payload["top_logprobs"] = wanted
    payload["stream"] = stream
    if stream and caps.stream_usage:
        # Without it OpenAI, vLLM, llama.cpp and Ollama send no token counts in a stream.
        payload["stream_options"] = {"include_usage": True}
    return payload


def auth_headers(backend: Backend) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}


# --- Server-sent events --------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental server-sent-events parser: bytes in, the `data` of each complete event out.

    Follows the WHATWG event-stream rules
    (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
    `\\n`, `\\r\\n` and `\\r` end lines, `:` starts a comment (llama.cpp's keep-alive pings),
    `event:`/`id:`/`retry:` carry nothing a completion needs, and several `data:` lines of one
    event are joined with `\\n`. Bytes may be split anywhere, including inside a UTF-8 character
    or between the `\\r` and `\\n` of one line end.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._data: list[str] | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[str]:
        return self._consume(self._decoder.decode(chunk), final=False)

    def close(self) -> list[str]:
        """End of stream: also dispatch an event the server did not finish with a blank line."""
        return self._consume(self._decoder.decode(b"", final=True), final=True)

    def _consume(self, text: str, *, final: bool) -> list[str]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        # The pending tail has no line end in it, except perhaps a final `\r` that may be the
        # first half of a `\r\n`: scan only from there.
        scan_from = len(self._pending) - 1 if self._pending.endswith("\r") else len(self._pending)
        buffer = self._pending + text
        events: list[str] = []
        if "\r" not in buffer:
            # Every server we know ends lines with \n alone: split, and take `data:` lines and
            # event ends inline; anything else goes through `_line`. Same result, less work.
            lines = buffer.split("\n")
            self._pending = lines.pop()
            data = self._data
            for line in lines:
                if not line:
                    if data is not None:
                        events.append(data[0] if len(data) == 1 else "\n".join(data))
                        data = None
                elif line.startswith("data:"):
                    value = line[6:] if line.startswith("data: ") else line[5:]
                    if data is None:
                        data = [value]
                    else:
                        data.append(value)
                else:
                    self._data = data
                    self._line(line, events)
                    data = self._data
            self._data = data
            if final:
                self._end(events)
            return events
        start = 0
        for match in _LINE_END.finditer(buffer, scan_from):
            if not final and match.group() == "\r" and match.end() == len(buffer):
                break
            self._line(buffer[start : match.start()], events)
            start = match.end()
        self._pending = buffer[start:]
        if final:
            self._end(events)
        return events

    def _end(self, events: list[str]) -> None:
        # The stream closed: a last line without its line end, then the blank line that
        # dispatches whatever event is still open.
        if self._pending:
            self._line(self._pending, events)
        self._pending = ""
        self._line("", events)

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data is not None:
                events.append("\n".join(self._data))
                self._data = None
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            if self._data is None:
                self._data = []
            self._data.append(value)


# --- Logprobs ------------------------------------------------------------------------------------

# OpenAI spells a token that is not valid UTF-8 on its own as `bytes:\xe2\x82`.
_BYTES_TOKEN = re.compile(r"bytes:((?:\\x[0-9a-fA-F]{2})+)")
# How many tokens past a disagreement with the text to look for the tokens to agree again.
_RESYNC_WINDOW = 8


@dataclass(frozen=True, slots=True)
class _Entry:
    """One token as the upstream described it, before it is placed on the text."""

    text: str | None
    data: bytes | None
    logprob: float | None
    alternatives: tuple[tuple[str | None, bytes | None, float], ...]


def _as_logprob(value: object, *, prob: bool = False) -> float | None:
    """A finite natural-log probability, or None.

    NaN, ±inf and a `prob` of 0 become None ("no usable probability") rather than -inf: -inf
    cannot travel in JSON to the browser, and vLLM clamps real logprobs to -9999 anyway, so a
    non-finite value only ever means a broken or missing number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if prob:
        # llama.cpp `post_sampling_probs` sends probabilities in 0..1 (protocol.md §4.1).
        if not 0.0 < number <= 1.0:
            return None
        number = math.log(number)
    return number if math.isfinite(number) else None


def _token_string(raw: object) -> tuple[str | None, bytes | None]:
    if not isinstance(raw, str):
        return None, None
    match = _BYTES_TOKEN.fullmatch(raw)
    if match:
        return None, bytes.fromhex(match.group(1).replace("\\x", ""))
    return raw, None


def _token_bytes(raw: object) -> bytes | None:
    if isinstance(raw, list) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw
    ):
        return bytes(raw)
    return None


def _legacy_entries(obj: Mapping[str, Any]) -> list[_Entry]:
    """OpenAI/vLLM `{tokens, token_logprobs, top_logprobs: [{token: logprob} | null]}`."""
    tokens = obj.get("tokens") if isinstance(obj.get("tokens"), list) else []
    logprobs = obj.get("token_logprobs") if isinstance(obj.get("token_logprobs"), list) else []
    tops = obj.get("top_logprobs") if isinstance(obj.get("top_logprobs"), list) else []
    entries = []
    for i in range(max(len(tokens), len(logprobs))):
        text, data = _token_string(tokens[i] if i < len(tokens) else None)
        top = tops[i] if i < len(tops) else None
        alternatives = []
        if isinstance(top, dict):
            for key, value in top.items():
                alt_text, alt_data = _token_string(key)
                alt_logprob = _as_logprob(value)
                if alt_logprob is not None:
                    alternatives.append((alt_text, alt_data, alt_logprob))
        logprob = _as_logprob(logprobs[i]) if i < len(logprobs) else None
        entries.append(_Entry(text, data, logprob, tuple(alternatives)))
    return entries


def _content_entry(item: Mapping[str, Any]) -> tuple[str | None, bytes | None, float | None]:
    text, data = _token_string(item.get("token"))
    data = _token_bytes(item.get("bytes")) if "bytes" in item else data
    if "logprob" in item:
        return text, data, _as_logprob(item.get("logprob"))
    return text, data, _as_logprob(item.get("prob"), prob=True)


def _content_entries(items: list[Any]) -> list[_Entry]:
    """llama.cpp / NIM model-card `{"content": [{token, bytes, logprob|prob, top_logprobs}]}`."""
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text, data, logprob = _content_entry(item)
        top = item.get("top_logprobs", item.get("top_probs"))
        alternatives = []
        for alt in top if isinstance(top, list) else ():
            if isinstance(alt, dict):
                alt_text, alt_data, alt_logprob = _content_entry(alt)
                if alt_logprob is not None:
                    alternatives.append((alt_text, alt_data, alt_logprob))
        entries.append(_Entry(text, data, logprob, tuple(alternatives)))
    return entries


def _entries(obj: object) -> list[_Entry]:
    if isinstance(obj, list):  # Ollama's native shape, a bare list of content items
        return _content_entries(obj)
    if not isinstance(obj, dict):
        return []
    if "content" in obj:
        content = obj["content"]
        return _content_entries(content) if isinstance(content, list) else []
    if "tokens" in obj or "token_logprobs" in obj:
        return _legacy_entries(obj)
    return []


def _retext(token: Token, text: str) -> Token:
    # The sampled token's own entry among the alternatives reads the same as the token.
    alternatives = tuple(
        (text, pair[1]) if text and pair[0] == token.text else pair for pair in token.alternatives
    )
    return dataclasses.replace(token, text=text, alternatives=alternatives)


def _align(tokens: list[Token], text: str) -> list[Token]:
    """Place tokens on the text so that they always concatenate to exactly `text`.

    Token strings are used wherever they agree with the text. Where they do not - a byte piece of
    a character that vLLM decodes alone as U+FFFD, a stop sequence or special token the server
    trimmed from the text, `token_id:…` names - the text wins: the disagreeing run of tokens keeps
    its probabilities, the last token of the run (the one that completes the character) gets the
    text up to where the following tokens agree again, the others get "". Text no token accounts
    for becomes an unscored token (logprob None). If the tokens never agree again within a few
    tokens, the rest of the text is one unscored token and the rest of the probabilities are
    dropped rather than pinned on text they may not belong to.
    """
    placed: list[Token] = []
    position = 0
    i = 0
    while i < len(tokens):
        if text.startswith(tokens[i].text, position):
            placed.append(tokens[i])
            position += len(tokens[i].text)
            i += 1
            continue
        resume_token, resume_at = -1, -1
        for j in range(i + 1, min(len(tokens), i + _RESYNC_WINDOW) + 1):
            if j == len(tokens):
                resume_token, resume_at = j, len(text)
                break
            anchor = "".join(token.text for token in tokens[j : j + 2])
            found = text.find(anchor, position) if anchor else -1
            if found >= 0:
                resume_token, resume_at = j, found
                break
        if resume_token < 0:
            break
        placed.extend(_retext(token, "") for token in tokens[i : resume_token - 1])
        placed.append(_retext(tokens[resume_token - 1], text[position:resume_at]))
        position = resume_at
        i = resume_token
    if position < len(text):
        placed.append(Token(text=text[position:], logprob=None))
    return placed


_SECOND = operator.itemgetter(1)
_MAX_FLOAT = sys.float_info.max


class TokenAssembler:
    """Turns the logprobs of successive chunks into `Token`s, carrying partial UTF-8 between them.

    A multibyte character can be split across tokens (byte-fallback tokens) and across stream
    chunks. When the upstream sends token `bytes` (llama.cpp, OpenAI's `bytes:\\x..` names), the
    token text is rebuilt from the accumulated bytes with one incremental decoder, so the
    character ends up whole in the token that completes it and the earlier piece shows as "".
    Then `_align` makes the tokens of each chunk concatenate to that chunk's text.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, obj: object, text: str) -> tuple[tuple[Token, ...], LogprobStatus]:
        token = self._one_plain_token(obj, text)
        if token is not None:
            return (token,), LogprobStatus.REAL
        return self._feed_entries(obj, text)

    def _feed_entries(self, obj: object, text: str) -> tuple[tuple[Token, ...], LogprobStatus]:
        """The general way, for every shape."""
        entries = _entries(obj)
        if not entries:
            return (), LogprobStatus.ABSENT
        if all(entry.text is None and entry.data is None for entry in entries):
            # Hosted NIM sends `token_logprobs: [0.0]` with no tokens even when logprobs were
            # not asked for: that is not a 100 % token (protocol.md §1.4).
            if all(entry.logprob == 0.0 for entry in entries):
                return (), LogprobStatus.PLACEHOLDER
            if len(entries) == 1 and entries[0].logprob is not None:
                # Streams carry one token per chunk: a lone nameless entry scores the chunk.
                return (self._token(entries[0], text),), LogprobStatus.REAL
            return (), LogprobStatus.ABSENT
        tokens = [self._token(entry, None) for entry in entries]
        return tuple(_align(tokens, text)), LogprobStatus.REAL

    def _token(self, entry: _Entry, text: str | None) -> Token:
        pending = self._decoder.getstate()[0]
        if text is None:
            if entry.data is not None:
                text = self._decoder.decode(entry.data)
            else:
                # A string token after byte pieces that never completed: show what was left.
                text = self._decoder.decode(b"", final=True) + (entry.text or "")
                self._decoder.reset()
        alternatives = [
            Alternative(text=self._alternative_text(pending, alt_text, alt_data), logprob=logprob)
            for alt_text, alt_data, logprob in entry.alternatives
        ]
        alternatives.sort(key=lambda alternative: alternative.logprob, reverse=True)
        return Token(text=text, logprob=entry.logprob, alternatives=tuple(alternatives))

    def _one_plain_token(self, obj: object, text: str) -> Token | None:
        """The token of the commonest chunk, or None to take the general way.

        A stream chunk in the legacy shape (vLLM, OpenAI, NIM) nearly always carries exactly one
        token that spells the chunk's text, a finite logprob and plain-string alternatives, with
        no byte pieces pending: then the token is built here directly, the same as the general
        way would build it (tests/test_completions.py holds them to that), at a fraction of its
        cost per token. Anything else (byte tokens, several tokens, odd values) returns None.
        """
        if type(obj) is not dict:
            return None
        tokens = obj.get("tokens")
        logprobs = obj.get("token_logprobs")
        if (
            type(tokens) is not list
            or type(logprobs) is not list
            or len(tokens) != 1
            or len(logprobs) != 1
            or tokens[0] != text
            or not text
            or text.startswith("bytes:")
            or self._decoder.getstate()[0]
        ):
            return None
        logprob = logprobs[0]
        if type(logprob) is not float or not -math.inf < logprob < math.inf:
            return None
        tops = obj.get("top_logprobs")
        top = tops[0] if type(tops) is list and tops else None
        if top is None:
            return Token(text=text, logprob=logprob)
        if type(top) is not dict:
            return None
        # One pass checks every value and whether the server already sent them most likely
        # first (vLLM and NIM do): then no sort. A value out of order or not finite fails the
        # chained comparison and is looked at again (nan fails every comparison).
        previous = _MAX_FLOAT
        in_order = True
        for key, value in top.items():
            if type(value) is not float or key.startswith("bytes:"):
                return None
            if not previous >= value > -math.inf:
                if not -math.inf < value < math.inf:
                    return None
                in_order = False
            previous = value
        if in_order:
            alternatives = tuple(top.items())
        else:
            # Sorted as pairs (a C-level key), most likely first; equal ones keep their order.
            alternatives = tuple(sorted(top.items(), key=_SECOND, reverse=True))
        return Token(text=text, logprob=logprob, alternatives=alternatives)

    @staticmethod
    def _alternative_text(pending: bytes, text: str | None, data: bytes | None) -> str:
        if data is None:
            return text or ""
        # What the output would have read had this candidate been sampled after the pending
        # bytes; a candidate that is itself an incomplete character shows as `\xe2\x82`.
        return (pending + data).decode("utf-8", errors="backslashreplace")


def parse_logprobs(obj: object, text: str) -> tuple[tuple[Token, ...], LogprobStatus]:
    """Normalise one choice's `logprobs` (any upstream shape) into tokens placed on `text`.

    Shapes (protocol.md §9): null/missing → ABSENT; legacy `{tokens, token_logprobs,
    top_logprobs, text_offset}` (OpenAI, vLLM); `{"content": [...]}` with `logprob` or `prob`
    (llama.cpp, NIM model card); all-0.0 logprobs without token strings → PLACEHOLDER.
    Alternatives are sorted by logprob, most likely first, and kept as given (the sampled token
    may or may not be among them). Probabilities are never invented.
    """
    return TokenAssembler().feed(obj, text)


# --- Chunks and completions ----------------------------------------------------------------------

# TGI streams its raw stop reasons (protocol.md §6).
_FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop"}


def _finish_reason(value: object) -> str | None:
    if not isinstance(value, str) or not value:  # TGI sends "" on non-final chunks
        return None
    return _FINISH_REASONS.get(value, value)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _usage(obj: object) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    prompt, completion = _count(obj.get("prompt_tokens")), _count(obj.get("completion_tokens"))
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _first_choice(choices: object) -> Mapping[str, Any] | None:
    if not isinstance(choices, list):
        return None
    if len(choices) == 1 and type(only := choices[0]) is dict and only.get("index", 0) == 0:
        return only  # a stream chunk's usual shape
    # We ask for one choice (no `n`), so this is index 0, or the first if a server numbers oddly.
    candidates = [choice for choice in choices if isinstance(choice, dict)]
    first = [choice for choice in candidates if choice.get("index", 0) == 0]
    return (first or candidates or [None])[0]


def _is_error(payload: Mapping[str, Any]) -> bool:
    return not payload.get("choices") and ("error" in payload or payload.get("object") == "error")


def _delta(payload: Mapping[str, Any], assembler: TokenAssembler) -> Delta:
    usage = _usage(payload.get("usage"))
    choice = _first_choice(payload.get("choices"))
    if choice is None:
        return Delta(usage=usage)
    if usage is not None and not usage.prompt_tokens and not usage.completion_tokens:
        # Ollama puts all-zero usage on every chunk under include_usage and the real one on a
        # final `choices: []` chunk (protocol.md §5).
        usage = None
    text = choice.get("text") if isinstance(choice.get("text"), str) else ""
    tokens, status = assembler.feed(choice.get("logprobs"), text)
    return Delta(
        text=text,
        tokens=tokens,
        logprobs=status,
        finish_reason=_finish_reason(choice.get("finish_reason")),
        usage=usage,
    )


def _completion(body: bytes, backend: Backend, request: CompletionRequest) -> Completion:
    try:
        payload = json.loads(body)
    except ValueError:
        raise UpstreamError(
            ErrorKind.PROTOCOL, "The backend's answer was not valid JSON."
        ) from None
    if not isinstance(payload, dict):
        raise UpstreamError(ErrorKind.PROTOCOL, "The backend's answer was not a completion.")
    if _is_error(payload):
        raise _error_from_payload(payload, model=request.model, secret=backend.api_key)
    choice = _first_choice(payload.get("choices"))
    if choice is None:
        raise UpstreamError(ErrorKind.PROTOCOL, "The backend's answer contained no completion.")
    text = choice.get("text") if isinstance(choice.get("text"), str) else ""
    tokens, status = parse_logprobs(choice.get("logprobs"), text)
    return Completion(
        text=text,
        tokens=tokens,
        logprobs=status,
        finish_reason=_finish_reason(choice.get("finish_reason")),
        usage=_usage(payload.get("usage")),
    )


# --- Errors --------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
# Keys an upstream may echo back in a message (NVIDIA `nvapi-`, OpenAI-style `sk-`, bearer).
_SECRET = re.compile(r"\b(?:nvapi|sk)-[A-Za-z0-9_\-]{6,}|\bBearer\s+\S+", re.IGNORECASE)
# Error `type` words (OpenAI, vLLM, llama.cpp, Ollama, TGI `error_type`) → an equivalent status.
_STATUS_BY_TYPE = (
    ("auth", 401),
    ("permission", 403),
    ("notfound", 404),
    ("ratelimit", 429),
    ("quota", 429),
    ("overloaded", 429),
    ("timeout", 408),
    ("invalidrequest", 400),
    ("badrequest", 400),
    ("validation", 422),
    ("unprocessable", 422),
    ("unavailable", 503),
    ("generation", 500),
    ("server", 500),
    ("internal", 500),
)


@sensitive_variables("secret")
def _sanitize(text: str, secret: str = "") -> str | None:
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _SECRET.sub("[redacted]", text)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > DETAIL_LIMIT:
        text = text[: DETAIL_LIMIT - 1].rstrip() + "…"
    return text or None


def _detail(payload: object) -> str | None:
    """The message of a JSON error body, whichever server wrote it (protocol.md §9)."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):  # OpenAI, vLLM, llama.cpp, Ollama
        message = error.get("message")
        return message if isinstance(message, str) else None
    if isinstance(error, str):  # TGI
        return error
    detail = payload.get("detail")
    if isinstance(detail, str):  # RFC 7807 problem details (hosted NIM), FastAPI
        return detail
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail[:3]:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                location = ".".join(str(part) for part in item.get("loc") or ())
                parts.append(f"{location}: {item['msg']}" if location else item["msg"])
        return "; ".join(parts) or None
    for key in ("message", "title"):  # old vLLM flat errors; problem details without detail
        if isinstance(payload.get(key), str):
            return payload[key]
    return None


def _retry_after(headers: Mapping[str, str] | httpx.Headers | None) -> float | None:
    headers = httpx.Headers(headers or {})
    with contextlib.suppress(ValueError):
        milliseconds = float(headers.get("retry-after-ms", ""))
        if math.isfinite(milliseconds) and milliseconds >= 0:
            return milliseconds / 1000
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_for_status(
    status: int, detail: str | None, retry_after: float | None, model: str | None
) -> UpstreamError:
    def error(kind: ErrorKind, message: str) -> UpstreamError:
        return UpstreamError(kind, message, status=status, retry_after=retry_after)

    if status in (401, 403):
        return error(
            ErrorKind.AUTH,
            "The backend rejected the API key. "
            "Check NVIDIA_API_KEY / the key in server configuration.",
        )
    if status == 402:
        return error(
            ErrorKind.AUTH,
            "The backend account is out of credits or its plan does not cover this (HTTP 402). "
            "Top up the account or pick another backend.",
        )
    if status in (404, 410):
        name = f'"{_sanitize(model)}" ' if model and _sanitize(model) else ""
        return error(
            ErrorKind.NOT_FOUND,
            f"The model {name}is not available on this backend (unknown or retired). "
            "Pick another model.",
        )
    if status == 408:
        return error(ErrorKind.TIMEOUT, "The backend timed out (HTTP 408). Try again.")
    if status == 429:
        wait = f"{math.ceil(retry_after)} s" if retry_after is not None else "a moment"
        return error(ErrorKind.RATE_LIMITED, f"Rate limited by the backend; try again in {wait}.")
    if status == 413:
        return error(ErrorKind.BAD_REQUEST, "The prompt is too large for the backend (HTTP 413).")
    if 400 <= status < 500 and status != 424:  # TGI's 424 is a failed generation
        if detail:
            return error(ErrorKind.BAD_REQUEST, f"The backend rejected the request: {detail}")
        return error(
            ErrorKind.BAD_REQUEST,
            f"The backend rejected the request (HTTP {status}). Check the parameters.",
        )
    if status >= 400:
        return error(
            ErrorKind.UNAVAILABLE, f"The backend failed (HTTP {status}). Try again in a moment."
        )
    # A redirect or an odd success code: most likely a base URL that is not an API root.
    return error(
        ErrorKind.PROTOCOL,
        f"The backend answered HTTP {status} instead of a completion. "
        "Check its configured base URL.",
    )


@sensitive_variables("secret")
def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | httpx.Headers | None = None,
    *,
    model: str | None = None,
    secret: str = "",
) -> UpstreamError:
    """Map a non-2xx upstream answer to an `UpstreamError` with a short, safe message.

    Only a message found in a JSON error field may reach the user (for 4xx validation errors),
    with control characters stripped, keys redacted (`secret` and anything key-shaped) and cut to
    DETAIL_LIMIT; a plain-text or HTML body (a 500 page may hold secrets) is never shown.
    """
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    detail = _detail(payload)
    return _error_for_status(
        status, _sanitize(detail, secret) if detail else None, _retry_after(headers), model
    )


@sensitive_variables("secret")
def _error_from_payload(
    payload: Mapping[str, Any], *, model: str | None, secret: str
) -> UpstreamError:
    """An error sent as JSON where a completion was expected, e.g. mid-stream (§1.5, §3.3)."""
    error = payload.get("error", payload)
    status = None
    kind_word = payload.get("error_type")  # TGI
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
            status = code
        kind_word = error.get("type", kind_word)
    if status is None and isinstance(kind_word, str):
        normalised = re.sub(r"[^a-z]", "", kind_word.lower())
        status = next((s for word, s in _STATUS_BY_TYPE if word in normalised), None)
    detail = _detail(payload)
    if status is None:
        return UpstreamError(
            ErrorKind.UNAVAILABLE,
            "The backend reported an error during the completion. Try again in a moment.",
        )
    return _error_for_status(status, _sanitize(detail, secret) if detail else None, None, model)


def _error_from_exception(exc: Exception, client: httpx.AsyncClient) -> UpstreamError:
    if isinstance(exc, httpx.PoolTimeout):
        # Every pooled connection is in use by other runs: our side is busy, not the backend.
        return UpstreamError(
            ErrorKind.UNAVAILABLE, "The server is busy with other runs; try again in a moment."
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(
            ErrorKind.TIMEOUT,
            "The backend did not accept a connection in time. Try again.",
            retryable=True,
        )
    if isinstance(exc, httpx.ReadTimeout):
        gap = client.timeout.read
        wait = f"for {gap:g} s" if gap is not None else "for too long"
        return UpstreamError(
            ErrorKind.TIMEOUT,
            f"The backend sent nothing {wait}; it may be overloaded. Try again in a moment.",
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(ErrorKind.TIMEOUT, "The backend timed out. Try again in a moment.")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(
            ErrorKind.UNAVAILABLE,
            "Could not reach the backend at its configured address.",
            retryable=True,
        )
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return UpstreamError(
            ErrorKind.UNAVAILABLE,
            "The connection to the backend dropped before the completion finished. Try again.",
            retryable=True,
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return UpstreamError(
            ErrorKind.UNAVAILABLE,
            "The backend address in the server configuration is not a valid http(s) URL.",
        )
    if isinstance(exc, httpx.DecodingError):
        return UpstreamError(ErrorKind.PROTOCOL, "The backend's answer could not be decoded.")
    return UpstreamError(
        ErrorKind.UNAVAILABLE, "The request to the backend failed. Try again in a moment."
    )


def _log_failure(backend: Backend, error: UpstreamError, cause: BaseException | None) -> None:
    # Kind, status and exception class only: upstream bodies and keys never reach the log.
    logger.warning(
        "Upstream %s failed: %s%s%s",
        backend.id,
        error.kind,
        f" (HTTP {error.status})" if error.status else "",
        f" ({type(cause).__name__})" if cause is not None else "",
    )


# --- Calls ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _within(deadline: float, limit: float) -> AsyncIterator[None]:
    """Bound one await by the run's total deadline (a loop-clock time).

    Scoped per await, never across a `yield`: a timeout spanning a yield would cancel whatever
    the consumer is doing at that moment instead of the upstream read.
    """
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise _time_limit_error(limit) from None


def _time_limit_error(limit: float) -> UpstreamError:
    return UpstreamError(ErrorKind.TIMEOUT, f"The run hit the {limit:g} s time limit.")


class _StreamDeadline:
    """The run's total deadline over one stream attempt's awaits, on one timer.

    `_within` arms a timer for each await it bounds; a stream awaits once per chunk (one chunk
    per token), and arming and cancelling a timer cost more than parsing the chunk (about 9 us
    on uvloop, docs/PERFORMANCE.md). This one is armed once per attempt and bounds its opening
    and every read: when it fires while the task is inside `with deadline:`, the task is
    cancelled there and the cancellation becomes the time-limit error; when it fires while the
    consumer holds a delta (the block, like `_within`, never spans a `yield`), the next
    `with deadline:` raises it. Cancellations from anyone else pass through, told apart as
    `asyncio.timeout` does.
    """

    __slots__ = ("_cancelled", "_cancelling", "_expired", "_handle", "_limit", "_task")

    def __init__(self, when: float, limit: float) -> None:
        self._limit = limit
        self._task: asyncio.Task | None = None
        self._cancelling = 0
        self._expired = False
        self._cancelled = False
        self._handle = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._cancelled = True
            self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()

    def __enter__(self) -> None:
        if self._expired:
            raise _time_limit_error(self._limit)
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        task, self._task = self._task, None
        if self._cancelled:
            self._cancelled = False
            if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise _time_limit_error(self._limit) from None


def _deadline() -> tuple[float, float]:
    limit = float(settings.UPSTREAM_TOTAL_TIMEOUT)
    return asyncio.get_running_loop().time() + limit, limit


@sensitive_variables("headers")
def _open(
    client: httpx.AsyncClient, backend: Backend, request: CompletionRequest, *, stream: bool
) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
    headers = {"Accept": "text/event-stream" if stream else "application/json"}
    headers.update(auth_headers(backend))
    return client.stream(
        "POST",
        f"{backend.base_url}/completions",
        json=build_payload(backend, request, stream=stream),
        headers=headers,
    )


async def _read(response: httpx.Response, limit: int, *, strict: bool) -> bytes:
    """Read at most `limit` bytes of a body.

    `strict=False` (error bodies): a body that fails or runs long is cut short, as it is only
    searched for a message. `strict=True` (completions): failures propagate.
    """
    body = bytearray()
    try:
        async with contextlib.aclosing(response.aiter_bytes()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > limit:
                    if strict:
                        raise UpstreamError(
                            ErrorKind.PROTOCOL, "The backend's answer was unexpectedly large."
                        )
                    break
    except httpx.HTTPError:
        if strict:
            raise
    return bytes(body[:limit])


async def _check_status(
    response: httpx.Response, backend: Backend, request: CompletionRequest
) -> None:
    if response.is_success:
        return
    body = await _read(response, ERROR_BODY_LIMIT, strict=False)
    raise error_from_response(
        response.status_code,
        body,
        response.headers,
        model=request.model or backend.model,
        secret=backend.api_key,
    )


@contextlib.contextmanager
def _upstream_errors(client: httpx.AsyncClient, backend: Backend) -> Iterator[None]:
    """Turn every failure into an `UpstreamError` (logged once); raw httpx errors never escape."""
    try:
        yield
    except UpstreamError as error:
        _log_failure(backend, error, None)
        raise
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = _error_from_exception(exc, client)
        _log_failure(backend, error, exc)
        raise error from None


def _retry_delay(error: UpstreamError, attempt: int, deadline: float) -> float | None:
    """How long to wait before another attempt, or None to give up now.

    Jittered exponential backoff (half fixed, half random, so many clients failing together do
    not retry together), at least what `Retry-After` asks; a Retry-After beyond
    UPSTREAM_RETRY_MAX_WAIT, or a wait that would cross the run's deadline, ends the retries and
    the user sees "try again in N s" instead.
    """
    if not error.retryable or attempt >= settings.UPSTREAM_RETRIES:
        return None
    backoff = float(settings.UPSTREAM_RETRY_BACKOFF) * 2**attempt
    delay = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 (jitter, not crypto)
    if error.retry_after is not None:
        if error.retry_after > settings.UPSTREAM_RETRY_MAX_WAIT:
            return None
        delay = max(delay, error.retry_after)
    if asyncio.get_running_loop().time() + delay >= deadline:
        return None
    return delay


async def stream_completion(
    client: httpx.AsyncClient,
    backend: Backend,
    request: CompletionRequest,
    *,
    read_interval: float | Callable[[], float] = 0.0,
) -> AsyncIterator[Delta]:
    """Stream one completion as `Delta`s, one per upstream JSON chunk.

    The upstream request is opened inside this generator: when the consumer stops (closes the
    generator, or its task is cancelled because the browser went away) the response is closed
    and so is the upstream connection. Consume it with `contextlib.aclosing` so that happens
    promptly. Raises `UpstreamError` only, possibly after some deltas; the run as a whole is
    bounded by `settings.UPSTREAM_TOTAL_TIMEOUT`.

    A failed attempt is retried (`_retry_delay`) only while nothing has been yielded: once any
    delta reached the consumer a failure is reported, never silently retried, so text is never
    shown twice or spliced from two samples.

    `read_interval` > 0: once text has arrived, a read that found less than a socket buffer's
    worth is followed by a pause of that long, so the next read takes the several chunks that
    arrived meanwhile in one go. A read and its wake-up cost more than parsing a chunk, and a
    paced upstream sends one chunk per token (docs/PERFORMANCE.md). A callable is asked before
    each pause (`streaming.cadence` lengthens it when the worker is busy).
    """
    deadline, limit = _deadline()
    attempt = 0
    while True:
        delivered = False
        try:
            async with contextlib.aclosing(
                _stream_once(client, backend, request, deadline, limit, read_interval)
            ) as deltas:
                async for delta in deltas:
                    delivered = True
                    yield delta
            return
        except UpstreamError as error:
            delay = None if delivered else _retry_delay(error, attempt, deadline)
            if delay is None:
                raise
            attempt += 1
            logger.info("Retrying %s in %.2f s (attempt %d)", backend.id, delay, attempt + 1)
            await asyncio.sleep(delay)


async def _stream_once(
    client: httpx.AsyncClient,
    backend: Backend,
    request: CompletionRequest,
    deadline: float,
    limit: float,
    read_interval: float | Callable[[], float] = 0.0,
) -> AsyncIterator[Delta]:
    """One attempt of `stream_completion`."""
    with _upstream_errors(client, backend):
        async with contextlib.AsyncExitStack() as stack:
            within_deadline = _StreamDeadline(deadline, limit)
            stack.callback(within_deadline.close)
            with within_deadline:
                response = await stack.enter_async_context(
                    _open(client, backend, request, stream=True)
                )
                await _check_status(response, backend, request)
            if "event-stream" not in response.headers.get("content-type", "") and (
                "json" in response.headers.get("content-type", "")
            ):
                # A server that ignores `stream: true` answers with one JSON completion.
                with within_deadline:
                    body = await _read(response, COMPLETION_BODY_LIMIT, strict=True)
                completion = _completion(body, backend, request)
                yield Delta(
                    text=completion.text,
                    tokens=completion.tokens,
                    logprobs=completion.logprobs,
                    finish_reason=completion.finish_reason,
                    usage=completion.usage,
                )
                return
            chunks = await stack.enter_async_context(contextlib.aclosing(response.aiter_bytes()))
            parser = SSEParser()
            assembler = TokenAssembler()
            finished = False
            text_seen = False
            received = 0  # tokens (chunks with text, where a chunk carries no logprobs)
            pace_from: tuple[float, int] | None = None  # (loop time, tokens) at the first text
            while True:
                with within_deadline:
                    chunk = await anext(chunks, None)
                for data in parser.feed(chunk) if chunk is not None else parser.close():
                    if data.strip() == "[DONE]":
                        await _finish_body(chunks)
                        return
                    if not data.strip():
                        continue
                    delta = _delta(_parse_chunk(data, backend, request), assembler)
                    finished = finished or delta.finish_reason is not None
                    text_seen = text_seen or bool(delta.text)
                    received += len(delta.tokens) or bool(delta.text)
                    yield delta
                if chunk is None:
                    break
                if (
                    read_interval
                    and text_seen
                    and not finished
                    and received < request.max_tokens
                    and len(chunk) < _SMALL_READ
                ):
                    # Not once a finish_reason came, nor once max_tokens tokens did: the stream's
                    # last chunks follow at once, and pausing for them would delay the run's end.
                    now = asyncio.get_running_loop().time()
                    if pace_from is None:
                        pace_from = (now, received)
                    interval = read_interval() if callable(read_interval) else read_interval
                    pause = _read_pause(interval, request.max_tokens, received, pace_from, now)
                    await asyncio.sleep(pause)  # the next read checks the deadline
            # [DONE] is a convention, not a guarantee: a finish_reason already said it is over.
            if not finished:
                raise UpstreamError(
                    ErrorKind.PROTOCOL, "The stream ended before the completion finished."
                )


# How long after its expected arrival the max_tokens-th token is read (see _read_pause).
_LAST_TOKEN_MARGIN = 0.002


def _read_pause(
    interval: float, max_tokens: int, received: int, since: tuple[float, int], now: float
) -> float:
    """The pause before the next read: `interval`, or less when the run's last token (the
    `max_tokens`-th) is due sooner at the pace the tokens have come since `since` (loop time,
    tokens then). Without it a run ending at max_tokens was read on average half an interval
    late, and in the bench's paced stream 40 ms late (docs/PERFORMANCE.md). A run that ends
    earlier (a stop sequence, the model's end of text) cannot be foreseen and keeps the
    interval."""
    start, then = since
    if received <= then or now <= start:
        return interval
    due = (max_tokens - received) * (now - start) / (received - then)
    return min(interval, due + _LAST_TOKEN_MARGIN)


# How long to wait, after `[DONE]`, for the body's end to arrive.
_BODY_END_SECONDS = 0.02


async def _finish_body(chunks: AsyncIterator[bytes]) -> None:
    """Read the rest of a stream's body if it ends at once, so that the connection goes back to
    the pool and the next run skips a new connection (and for https a new TLS handshake).

    Servers end the body right after `[DONE]` (usually in the same packet). One that holds it
    open is not waited for: after a few milliseconds the connection is closed, not pooled.

    The bound is anyio's cancel scope, not `asyncio.timeout`: the last read also closes the
    response, and httpcore shields that close with anyio's scopes, which hold against anyio's
    own cancellation only. On a busy worker the 20 ms often ran out during the close, and an
    asyncio cancellation there cut it short: the connection was lost (see
    `network._ReleasingStream`, and docs/PERFORMANCE.md).
    """
    with contextlib.suppress(httpx.HTTPError), anyio.move_on_after(_BODY_END_SECONDS):
        async for _ in chunks:
            pass


# A read below this size means the upstream is slower than we read: waiting costs no throughput.
# (httpcore reads up to 64 KiB at a time; an unpaced upstream fills that.)
_SMALL_READ = 16 * 1024


def _loads(data: str) -> Any:
    """JSON, parsed by orjson (a third of json.loads's cost per chunk). What orjson refuses and
    json accepts (NaN and Infinity, which some servers write for logprobs; a lone surrogate
    escape) goes to json. One difference stays: orjson reads an integer past 64 bits as a float,
    and no count or logprob we read is one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _parse_chunk(data: str, backend: Backend, request: CompletionRequest) -> Mapping[str, Any]:
    try:
        payload = _loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise UpstreamError(ErrorKind.PROTOCOL, "The backend sent a malformed stream chunk.")
    if _is_error(payload):
        raise _error_from_payload(
            payload, model=request.model or backend.model, secret=backend.api_key
        )
    return payload


async def create_completion(
    client: httpx.AsyncClient, backend: Backend, request: CompletionRequest
) -> Completion:
    """One non-streamed completion, retried like a stream. Raises `UpstreamError` only."""
    deadline, limit = _deadline()
    attempt = 0
    while True:
        try:
            return await _create_once(client, backend, request, deadline, limit)
        except UpstreamError as error:
            delay = _retry_delay(error, attempt, deadline)
            if delay is None:
                raise
            attempt += 1
            await asyncio.sleep(delay)


async def _create_once(
    client: httpx.AsyncClient,
    backend: Backend,
    request: CompletionRequest,
    deadline: float,
    limit: float,
) -> Completion:
    with _upstream_errors(client, backend):
        async with (
            _within(deadline, limit),
            _open(client, backend, request, stream=False) as response,
        ):
            await _check_status(response, backend, request)
            body = await _read(response, COMPLETION_BODY_LIMIT, strict=True)
        return _completion(body, backend, request)


# --- Models and tokens --------------------------------------------------------------------------

# Small requests that a page or a command waits on: a short deadline of their own.
SIDE_CALL_TIMEOUT = 5.0


async def _side_call(
    client: httpx.AsyncClient, backend: Backend, method: str, url: str, body: Any = None
) -> Any:
    with _upstream_errors(client, backend):
        async with asyncio.timeout(SIDE_CALL_TIMEOUT):
            response = await client.request(
                method,
                url,
                json=body,
                headers={"Accept": "application/json", **auth_headers(backend)},
            )
        if not response.is_success:
            raise error_from_response(
                response.status_code,
                response.content[:ERROR_BODY_LIMIT],
                response.headers,
                secret=backend.api_key,
            )
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(ErrorKind.PROTOCOL, "The backend's answer was not JSON.") from None


async def list_models(client: httpx.AsyncClient, backend: Backend) -> list[str]:
    """The model ids `GET /v1/models` lists (OpenAI shape `{"data": [{"id": ...}]}`)."""
    payload = await _side_call(client, backend, "GET", f"{backend.base_url}/models")
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise UpstreamError(ErrorKind.PROTOCOL, "The backend's model list was not understood.")
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def count_tokens(
    client: httpx.AsyncClient, backend: Backend, model: str, text: str
) -> int | None:
    """The prompt's token count from the backend's own tokenizer, or None if it has none.

    vLLM / self-hosted NIM `POST /tokenize {model, prompt}` → `{count, tokens}`; llama.cpp
    `POST /tokenize {content}` → `{tokens}`; TGI `POST /tokenize {inputs}` → a list
    (protocol.md §8). All three live at the server root, not under /v1.
    """
    style = backend.caps.tokenize
    url = f"{backend.api_root}/tokenize"
    if style == "vllm":
        payload = await _side_call(client, backend, "POST", url, {"model": model, "prompt": text})
        if isinstance(payload, dict):
            count = _count(payload.get("count"))
            if count is None and isinstance(payload.get("tokens"), list):
                count = len(payload["tokens"])
            return count
    elif style == "llamacpp":
        body = {"content": text, "add_special": False, "parse_special": True}
        payload = await _side_call(client, backend, "POST", url, body)
        if isinstance(payload, dict) and isinstance(payload.get("tokens"), list):
            return len(payload["tokens"])
    elif style == "tgi":
        payload = await _side_call(client, backend, "POST", url, {"inputs": text})
        if isinstance(payload, list):
            return len(payload)
    else:
        return None
    raise UpstreamError(ErrorKind.PROTOCOL, "The backend's tokenize answer was not understood.")


# --- Clients -------------------------------------------------------------------------------------


def make_client(
    *,
    max_connections: int | None = None,
    timeout: httpx.Timeout | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An upstream client with explicit timeouts and pool limits from settings.

    `read` is the longest gap between two chunks (it must cover the prefill of a long prompt);
    the deadline for a whole run is UPSTREAM_TOTAL_TIMEOUT, enforced per call. A request body is
    small, so writes share the connect timeout.
    """
    if timeout is None:
        timeout = httpx.Timeout(
            connect=settings.UPSTREAM_CONNECT_TIMEOUT,
            read=settings.UPSTREAM_READ_TIMEOUT,
            write=settings.UPSTREAM_CONNECT_TIMEOUT,
            pool=settings.UPSTREAM_POOL_TIMEOUT,
        )
    connections = max_connections or settings.UPSTREAM_MAX_CONNECTIONS
    # Every connection may stay idle for the next run (httpx keeps 20): after a burst of more
    # runs than that, each one past 20 would otherwise open a new connection, over https a TLS
    # handshake: about 0.7 ms of the worker's CPU each (bench/tls_pool.py). Idle ones
    # close after 30 s, and a server's close of one is noticed before it is reused.
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=30.0,
    )
    client = httpx.AsyncClient(
        timeout=timeout, limits=limits, transport=transport, follow_redirects=False
    )
    if transport is None:
        network.install(client._transport)  # leaner reads than anyio's: see network.py
    return client


# An httpx client is bound to the event loop that first used it, so there is one per loop: the
# ASGI lifespan installs the server's own, anything else (a test, a management command) gets a
# lazily made one.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def set_client(client: httpx.AsyncClient) -> None:
    """Install `client` for the running event loop (ASGI lifespan startup)."""
    _clients[asyncio.get_running_loop()] = client


def get_client() -> httpx.AsyncClient:
    """The client for the running event loop, made on first use."""
    loop = asyncio.get_running_loop()
    # A client's idle connections refer back to their loop, so a weak key alone would never
    # let go of a finished loop: drop those explicitly.
    for old in [old for old in _clients if old.is_closed()]:
        del _clients[old]
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = make_client()
    return client


async def close_client() -> None:
    """Close the running event loop's client (ASGI lifespan shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
