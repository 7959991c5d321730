"""Fill-in-the-middle prompt formats, one per model family.

Servers disagree about a `suffix` field (vLLM 400, llama.cpp and TGI reject it, hosted NIM "not
consistently implemented", protocol.md §7), so the playground never sends one: it builds the
family's FIM prompt itself and sends it as `prompt`, with the family's stop strings. A new family
needs only an entry here or a `fim_*` block in the backends TOML, no code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class FimFormat:
    """`template` holds `{before}` and `{after}` (replaced literally: code is full of braces)."""

    name: str
    template: str
    stops: tuple[str, ...] = ()

    def prompt(self, before: str, after: str) -> str:
        # One pass, so a `{after}` typed inside `before` is not itself replaced.
        head, _, tail = self.template.partition("{before}")
        return head + before + tail.replace("{after}", after, 1)


FAMILIES: dict[str, FimFormat] = {
    # StarCoder2 (arXiv 2402.19173 §5.1; Continue's starcoder2FimTemplate). The middle ends at
    # <file_sep> or EOS; hosted NIM allows 4 stops, so these two are the ones that matter.
    "starcoder2": FimFormat(
        name="starcoder2",
        template="<fim_prefix>{before}<fim_suffix>{after}<fim_middle>",
        stops=("<file_sep>", "<|endoftext|>"),
    ),
    "codellama": FimFormat(
        name="codellama", template="<PRE> {before} <SUF>{after} <MID>", stops=("<EOT>",)
    ),
    "deepseek-coder": FimFormat(
        name="deepseek-coder",
        template="<｜fim▁begin｜>{before}<｜fim▁hole｜>{after}<｜fim▁end｜>",
        stops=("<｜end▁of▁sentence｜>",),
    ),
    "qwen2.5-coder": FimFormat(
        name="qwen2.5-coder",
        template="<|fim_prefix|>{before}<|fim_suffix|>{after}<|fim_middle|>",
        stops=("<|endoftext|>", "<|file_sep|>"),
    ),
    # The built-in model is an n-gram model: it continues `before` and ignores `after`.
    "offline": FimFormat(name="offline", template="{before}", stops=()),
}
# Substrings of a model id that name its family, checked in order.
_GUESSES = (
    ("starcoder", "starcoder2"),
    ("codellama", "codellama"),
    ("code-llama", "codellama"),
    ("deepseek-coder", "deepseek-coder"),
    ("qwen2.5-coder", "qwen2.5-coder"),
)


def family_for(model: str) -> str | None:
    """The FIM family a model id suggests, or None."""
    lowered = model.lower()
    return next((family for part, family in _GUESSES if part in lowered), None)
