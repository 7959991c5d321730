"""The built-in offline model: a small code model that needs no key, no network, no download.

With no upstream configured the playground still works end to end on this model: an
interpolated modified Kneser-Ney 5-gram model over code tokens, trained in about fifteen seconds
on the Python standard library that every Python installation carries and cached on disk
(`settings.OFFLINE_MODEL_PATH`), mixed at generation time with a small n-gram cache of the
prompt itself so that names the prompt defines come back, and kept in step with Python's
lexical state (strings, brackets, indentation; `syntax.py`). It is a real statistical model
with real probabilities, so every playground feature (sampling settings, seeds, stop sequences,
token probabilities and alternatives) behaves as it would with a large model, only with less
impressive code. `python -m playground.offline.evaluation` measures it (`evaluation.py`).

Public interface:

- `MODEL_ID`, the model name the OpenAI-compatible endpoints (`playground.api`) answer to;
- `build_model(path)` and `load_model(path=None)`, the cache;
- `OfflineModel.generate(request)`, a sync iterator of tokens (a `Generation`, which exposes
  `finish_reason` once exhausted), plus `tokenize` and `count_tokens`;
- `stream_completion(request)`, the async adapter the web app streams from, and
  `complete(request)`, its non-streaming counterpart.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from playground.completions import (
    Completion,
    CompletionRequest,
    Delta,
    LogprobStatus,
    Usage,
)

from .model import MAX_ALTERNATIVES, Generation, OfflineModel, timed_batch
from .training import build_model, is_fresh, read_model

__all__ = [
    "MAX_ALTERNATIVES",
    "MODEL_ID",
    "Generation",
    "OfflineModel",
    "build_model",
    "complete",
    "default_path",
    "is_fresh",
    "load_model",
    "stream_completion",
]

MODEL_ID = "playground-offline"

# One worker-thread hop per batch: small enough that the first tokens show at once and a
# cancelled stream stops within a few milliseconds, large enough that thread hops stay cheap.
BATCH_TOKENS = 16
BATCH_SECONDS = 0.01

_models: dict[Path, OfflineModel] = {}
_lock = threading.Lock()


def default_path() -> Path:
    from django.conf import settings

    return Path(settings.OFFLINE_MODEL_PATH)


def load_model(path: Path | None = None) -> OfflineModel:
    """The model cached at `path` (default: `settings.OFFLINE_MODEL_PATH`), loaded once.

    Builds the cache first when it is missing, of another format version, or damaged. Blocks
    for as long as that takes (a build is seconds, a load well under one): call it from a
    worker thread in async code.
    """
    path = Path(path) if path is not None else default_path()
    model = _models.get(path)
    if model is not None:
        return model
    # One lock for all paths: loading is rare, and two requests arriving together on a cold
    # start must not both build the model.
    with _lock:
        model = _models.get(path)
        if model is None:
            if not is_fresh(path):
                build_model(path)
            try:
                data = read_model(path)
            except ValueError:
                build_model(path)
                data = read_model(path)
            model = _models[path] = OfflineModel(data)
    return model


async def stream_completion(
    request: CompletionRequest, *, tokens_per_second: float = 0.0
) -> AsyncIterator[Delta]:
    """Stream a completion of the offline model as `Delta`s.

    Yields deltas of a few tokens each (REAL logprobs), then one last delta carrying
    `finish_reason` and `usage`. The model runs in worker threads, one short batch at a time,
    so the event loop is never blocked for long; when the consumer stops iterating (the client
    went away and the generator is closed or cancelled), no further batch is started.

    `tokens_per_second` > 0 paces the output one token at a time. The model is far faster than
    a real 7B model on a GPU; the playground paces it so that a newcomer sees a completion
    stream in, as it would from a real backend (OFFLINE_MODEL_TOKENS_PER_SECOND, 0 = unpaced).
    """
    loop = asyncio.get_running_loop()
    model = await asyncio.to_thread(load_model)
    generation = await asyncio.to_thread(model.generate, request)
    started = loop.time()
    emitted = 0
    while not generation.done:
        batch = await asyncio.to_thread(timed_batch, generation, BATCH_TOKENS, BATCH_SECONDS)
        if not batch:
            continue
        if tokens_per_second <= 0:
            yield Delta(
                text="".join(token.text for token in batch),
                tokens=tuple(batch),
                logprobs=LogprobStatus.REAL,
            )
            continue
        for token in batch:
            delay = started + emitted / tokens_per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            emitted += 1
            yield Delta(text=token.text, tokens=(token,), logprobs=LogprobStatus.REAL)
    yield Delta(
        finish_reason=generation.finish_reason,
        usage=Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        ),
    )


def complete(request: CompletionRequest) -> Completion:
    """The whole completion at once (blocking; from async code, run it in a thread)."""
    generation = load_model().generate(request)
    tokens = tuple(generation)
    return Completion(
        text="".join(token.text for token in tokens),
        tokens=tokens,
        logprobs=LogprobStatus.REAL,
        finish_reason=generation.finish_reason,
        usage=Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        ),
    )
