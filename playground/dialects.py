"""What each kind of completions server accepts and returns: the built-in dialect profiles.

"OpenAI-compatible" servers differ exactly where a playground cares (protocol.md §0): which
request fields they accept (hosted NIM answers 400/422 to an unknown one, llama.cpp rejects
`echo`/`suffix`/`best_of`, TGI has no `logprobs` field), how logprobs are asked for, how many
alternatives come back, how many stop strings are allowed, whether a stream can carry usage,
and whether there is a tokenize endpoint. A `Capabilities` value says all of that for one
backend; most operators only name a dialect and get its profile, and a TOML backend may override
any field (see `backends.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The optional sampling fields of `POST /v1/completions` the playground can send; `model`,
# `prompt`, `max_tokens` and `stream` always go.
SAMPLING_PARAMS = frozenset(
    {"temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop"}
)
LOGPROBS_STYLES = ("int", "bool", "none")  # `logprobs: N` | `logprobs: true, top_logprobs: N`
TOKENIZE_STYLES = ("", "vllm", "llamacpp", "tgi", "offline")


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What one backend accepts; `build_payload` sends nothing outside it."""

    params: frozenset[str] = SAMPLING_PARAMS
    logprobs: str = "int"  # one of LOGPROBS_STYLES; "none": never asked for
    max_alternatives: int = 5
    stop_limit: int = 4
    stream_usage: bool = True  # accepts `stream_options: {"include_usage": true}`
    tokenize: str = ""  # one of TOKENIZE_STYLES; "" = no tokenize endpoint

    def with_overrides(self, overrides: dict[str, Any]) -> Capabilities:
        changes = dict(overrides)
        if "params" in changes:
            unknown = set(changes["params"]) - SAMPLING_PARAMS
            if unknown:
                raise ValueError(f"unknown parameters {sorted(unknown)}")
            changes["params"] = frozenset(changes["params"])
        if changes.get("logprobs", "int") not in LOGPROBS_STYLES:
            raise ValueError(f"logprobs must be one of {LOGPROBS_STYLES}")
        if changes.get("tokenize", "") not in TOKENIZE_STYLES:
            raise ValueError(f"tokenize must be one of {TOKENIZE_STYLES}")
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Capabilities] = {
    # integrate.api.nvidia.com: additionalProperties:false schemas, 4 stops for StarCoder2,
    # logprobs "not consistently implemented" (placeholders seen), stream usage unknown so not
    # asked for (an unknown field would be a 422), no documented tokenize (protocol.md §1).
    "nim-hosted": Capabilities(
        logprobs="int", max_alternatives=5, stop_limit=4, stream_usage=False
    ),
    # Self-hosted NIM 2.x is vLLM: legacy logprobs up to --max-logprobs (20), POST /tokenize (§3).
    "vllm": Capabilities(logprobs="int", max_alternatives=20, stream_usage=True, tokenize="vllm"),
    # OpenAI legacy completions: logprobs 0..5 (§2).
    "openai": Capabilities(logprobs="int", max_alternatives=5, stream_usage=True),
    # llama.cpp server: `logprobs: N` becomes n_probs, the `content` list shape, /tokenize (§4).
    "llamacpp": Capabilities(
        logprobs="int", max_alternatives=20, stream_usage=True, tokenize="llamacpp"
    ),
    # Ollama accepts `logprobs` on /v1/completions but never returns any (§5): not asked for.
    "ollama": Capabilities(logprobs="none", max_alternatives=0, stream_usage=True),
    # TGI: no logprobs, presence_penalty or stream_options on /v1/completions; 4 stops (§6).
    "tgi": Capabilities(
        params=SAMPLING_PARAMS - {"presence_penalty"},
        logprobs="none",
        max_alternatives=0,
        stream_usage=False,
        tokenize="tgi",
    ),
    "offline": Capabilities(max_alternatives=5, tokenize="offline"),
}
# Other names operators use for the same servers.
ALIASES = {
    "openai-compatible": "vllm",
    "nim": "vllm",
    "nim-self-hosted": "vllm",
    "nvidia": "nim-hosted",
    "llama.cpp": "llamacpp",
}
DIALECT_NAMES = tuple(sorted({*PROFILES, *ALIASES} - {"offline"}))


def canonical(name: str) -> str:
    """The profile name for a dialect name, or ValueError naming the known ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PROFILES:
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(DIALECT_NAMES)}")
    return key


def profile(name: str) -> Capabilities:
    return PROFILES[canonical(name)]
