"""Validation of generation parameters: the only place a request's fields are checked.

The form turns browser input into a `CompletionRequest`, which is the allow-list of what can reach
an upstream: a field that is not declared here is never sent, and an out-of-range value stops at
`is_valid()` with a message shown beside its control.
"""

from __future__ import annotations

from django import forms
from django.conf import settings

from playground.backends import Backend, Model, default_backend, resolve
from playground.completions import CompletionRequest

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
SEED_MAX = 2**31 - 1  # the widest range every OpenAI-compatible server accepts

# What the page starts with: conservative settings that suit a code model.
DEFAULTS = {
    "temperature": 0.2,
    "top_p": 0.95,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "max_tokens": 128,
    "seed_random": True,
    "seed": 42,
    "logprobs": 5,
}


def decode_stop(raw: str) -> str:
    r"""Stop sequences are typed on one line, so `\n`, `\t` and `\\` stand for their characters."""
    out: list[str] = []
    chars = iter(raw)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")
        out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
    return "".join(out)


def encode_stop(value: str) -> str:
    """The inverse of `decode_stop`, to show a stop sequence in its input again."""
    return (
        value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    )


class RepeatedInput(forms.TextInput):
    """Several inputs sharing one name (the stop sequences); the value is the list of them."""

    def value_from_datadict(self, data, files, name):
        return data.getlist(name) if hasattr(data, "getlist") else data.get(name, [])


class StopSequencesField(forms.Field):
    widget = RepeatedInput

    def to_python(self, value) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise forms.ValidationError("Stop sequences must be text.")
        stops = [decode_stop(v) for v in value if v != ""]
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise forms.ValidationError(
                f"Each stop sequence may have at most {MAX_STOP_LENGTH} characters."
            )
        return tuple(dict.fromkeys(stops))  # drop duplicates, keep order


UNKNOWN_BACKEND = "unknown_backend"


class GenerateForm(forms.Form):
    # A picker value, `backend` or `backend:model`; never a URL (see `clean_backend`).
    backend = forms.CharField(label="Model", max_length=300)
    mode = forms.ChoiceField(
        label="Mode",
        choices=[("complete", "Complete"), ("insert", "Insert")],
        required=False,
    )
    suffix = forms.CharField(
        label="After",
        strip=False,
        required=False,
        max_length=settings.PLAYGROUND_MAX_PROMPT_CHARS,
    )
    prompt = forms.CharField(
        label="Prompt",
        strip=False,  # leading and trailing whitespace is meaningful to a code model
        max_length=settings.PLAYGROUND_MAX_PROMPT_CHARS,
        error_messages={"required": "Write a prompt first."},
    )
    temperature = forms.FloatField(label="Temperature", min_value=0.0, max_value=2.0)
    top_p = forms.FloatField(label="Top P", min_value=0.0, max_value=1.0)
    frequency_penalty = forms.FloatField(label="Frequency penalty", min_value=-2.0, max_value=2.0)
    presence_penalty = forms.FloatField(label="Presence penalty", min_value=-2.0, max_value=2.0)
    seed_random = forms.BooleanField(label="Random seed", required=False)
    seed = forms.IntegerField(label="Seed", min_value=0, max_value=SEED_MAX, required=False)
    max_tokens = forms.IntegerField(label="Max tokens", min_value=1)
    logprobs = forms.IntegerField(label="Alternatives shown per token", min_value=0, max_value=5)
    stop = StopSequencesField(label="Stop sequences", required=False)

    @property
    def selected(self) -> tuple[Backend, Model]:
        chosen = self.cleaned_data.get("backend") if hasattr(self, "cleaned_data") else None
        if chosen is None:
            chosen = self.data.get("backend") if self.is_bound else self.initial.get("backend")
        found = resolve(chosen or "")
        if found is None:
            backend = default_backend()
            return backend, backend.default_model
        return found

    @property
    def selected_backend(self) -> Backend:
        return self.selected[0]

    @property
    def selected_model(self) -> Model:
        return self.selected[1]

    @property
    def is_unknown_backend(self) -> bool:
        """The request named a backend or model nobody configured (a URL, say): a 400."""
        return self.has_error("backend", UNKNOWN_BACKEND)

    def clean_backend(self) -> str:
        value = self.cleaned_data["backend"]
        if resolve(value) is None:
            raise forms.ValidationError(
                "Unknown backend or model: choose one from the list.", code=UNKNOWN_BACKEND
            )
        return value

    def clean_mode(self) -> str:
        return self.cleaned_data.get("mode") or "complete"

    def clean_prompt(self) -> str:
        prompt = self.cleaned_data["prompt"]
        if not prompt.strip():
            raise forms.ValidationError("Write a prompt first.")
        return prompt

    def clean(self):
        cleaned = super().clean()
        found = resolve(cleaned.get("backend") or "")
        if found is None:
            return cleaned
        backend, model = found
        max_tokens = cleaned.get("max_tokens")
        # Never more than the context window could hold after a one-token prompt; the prompt's
        # real count is shown while typing (views.token_count) and checked by the backend.
        limit = min(model.max_tokens, model.context_window - 1)
        if max_tokens is not None and max_tokens > limit:
            self.add_error("max_tokens", f"{model.id} allows at most {limit} tokens.")
        if (
            not cleaned.get("seed_random")
            and cleaned.get("seed") is None
            and "seed" not in self.errors
        ):
            self.add_error("seed", "Enter a seed, or tick “Random seed”.")
        limit = min(MAX_STOP_SEQUENCES, backend.stop_limit)
        if cleaned.get("mode") == "insert":
            if model.fim is None:
                self.add_error(
                    "mode",
                    f"{model.id} has no fill-in-the-middle format configured (README: FIM).",
                )
            else:
                # The family's own stops are always sent; the user's share what is left.
                limit = max(0, min(limit, backend.stop_limit - len(model.fim.stops)))
        if len(cleaned.get("stop") or ()) > limit:
            self.add_error("stop", f"{backend.label} takes at most {limit} stop sequences here.")
        logprobs = cleaned.get("logprobs")
        if logprobs is not None:
            cleaned["logprobs"] = min(logprobs, backend.max_alternatives)
        return cleaned

    def to_request(self) -> CompletionRequest:
        data = self.cleaned_data
        insert = data.get("mode") == "insert"
        return CompletionRequest(
            model=self.selected_model.id,
            prompt=data["prompt"],
            max_tokens=data["max_tokens"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            frequency_penalty=data["frequency_penalty"],
            presence_penalty=data["presence_penalty"],
            seed=None if data.get("seed_random") else data["seed"],
            stop=data["stop"],
            logprobs=data["logprobs"],
            suffix=(data.get("suffix") or "") if insert else None,
        )


class _SharedFields(dict):
    """A form's declared fields that every instance shares instead of deep-copying.

    Django deep-copies `base_fields` into each form so that one instance may change its own
    fields (choices, widget attributes); this form never does, and the copy of its 13 fields was
    the largest single cost of a generate request's form (docs/PERFORMANCE.md). Rendering builds
    new attribute dicts each time, so sharing the field and widget objects is safe as long as no
    code assigns to `form.fields[...]` or a widget's `attrs` (tests/test_forms.py checks that two
    forms' fields are the same objects and that binding one leaves the other untouched).
    """

    def __deepcopy__(self, memo: dict) -> dict:
        return dict(self)


GenerateForm.base_fields = _SharedFields(GenerateForm.base_fields)
