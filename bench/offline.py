"""Section 5: the built-in offline model: build, load and generate, unpaced, in this process."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.report import Row

PROMPTS = (
    "def fibonacci(n):\n",
    "import os\n\n\ndef walk(path):\n",
    "class Stack:\n    def __init__(self):\n",
)
MAX_TOKENS = 1024


def measure() -> list[Row]:
    from playground.completions import CompletionRequest
    from playground.offline import OfflineModel, build_model, stream_completion
    from playground.offline.training import read_model

    section = "5 Offline model"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bin"
        started = time.perf_counter()
        build_model(path)
        built = time.perf_counter() - started
        size = path.stat().st_size
        started = time.perf_counter()
        model = OfflineModel(read_model(path))
        loaded = time.perf_counter() - started

    def request(prompt: str, seed: int) -> CompletionRequest:
        return CompletionRequest(
            model="playground-offline",
            prompt=prompt,
            max_tokens=MAX_TOKENS,
            temperature=0.8,
            seed=seed,
            logprobs=5,
        )

    count = 0
    started = time.perf_counter()
    for seed, prompt in enumerate(PROMPTS):
        count += sum(1 for _ in model.generate(request(prompt, seed)))
    direct_rate = count / (time.perf_counter() - started)

    # The way the app streams it: batches in worker threads, deltas on the event loop (it loads
    # the model from settings.OFFLINE_MODEL_PATH, built if missing).
    async def stream() -> int:
        tokens = 0
        for seed, prompt in enumerate(PROMPTS):
            async for delta in stream_completion(request(prompt, seed + 10)):
                tokens += len(delta.tokens)
        return tokens

    asyncio.run(stream())  # warm: load the configured model once, outside the timing
    started = time.perf_counter()
    streamed = asyncio.run(stream())
    stream_rate = streamed / (time.perf_counter() - started)
    return [
        Row(section, "build (train + write)", f"{built:.1f} s", f"{size / 2**20:.1f} MiB file"),
        Row(section, "load", f"{loaded * 1000:.0f} ms", "read + index, from a warm page cache"),
        Row(
            section,
            "generation, unpaced",
            f"{direct_rate:,.0f} tok/s",
            f"model.generate, {count} tokens; via stream_completion {stream_rate:,.0f} tok/s",
        ),
    ]
