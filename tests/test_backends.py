"""Backend configuration (TOML, dialects), FIM prompts, token counts and check_backends."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client
from test_views import FORM, Fragment, final, run, upstream_form

from playground import backends
from playground.completions import CompletionRequest, build_payload

TOML = """
[[backend]]
id = "gpu"
label = "vLLM on the GPU box"
base_url = "{url}"
api_key_env = "GPU_KEY"
dialect = "vllm"
models = [
  "bigcode/starcoder2-15b",
  {{ id = "codellama/CodeLlama-7b-hf", context_window = 4096, max_tokens = 512 }},
]
[backend.capabilities]
stop_limit = 3

[[backend]]
id = "laptop"
base_url = "http://127.0.0.1:1/"
dialect = "ollama"
models = ["starcoder2:3b"]
"""


@pytest.fixture
def toml_backends(settings, tmp_path, upstream, monkeypatch):
    path = tmp_path / "backends.toml"
    path.write_text(TOML.format(url=upstream.base_url))
    monkeypatch.setenv("GPU_KEY", "gpu-secret-key-1234")
    settings.PLAYGROUND_BACKENDS = str(path)
    return upstream


def test_toml_backends_are_listed_with_their_models_and_dialect(toml_backends):
    gpu = backends.get_backend("gpu")
    assert gpu.api_key == "gpu-secret-key-1234"  # read from the named variable
    assert gpu.dialect == "vllm"
    assert gpu.stop_limit == 3
    assert [m.id for m in gpu.models] == ["bigcode/starcoder2-15b", "codellama/CodeLlama-7b-hf"]
    assert gpu.models[0].fim.name == "starcoder2"
    assert gpu.models[1].context_window == 4096
    laptop = backends.get_backend("laptop")
    assert laptop.base_url == "http://127.0.0.1:1/v1"
    assert laptop.caps.logprobs == "none"
    assert backends.configured_backends()[-1].is_offline


def test_the_picker_groups_models_by_backend(toml_backends):
    page = Client().get("/").content.decode()
    assert '<optgroup label="vLLM on the GPU box">' in page
    assert 'value="gpu:codellama/CodeLlama-7b-hf"' in page
    assert "gpu-secret" not in page


def test_a_second_model_is_chosen_by_id_and_sent(toml_backends):
    toml_backends.script(dialect="vllm")
    run({**FORM, "backend": "gpu:codellama/CodeLlama-7b-hf", "max_tokens": "16"})
    assert toml_backends.requests[-1].json["model"] == "codellama/CodeLlama-7b-hf"
    assert toml_backends.requests[-1].headers["authorization"] == "Bearer gpu-secret-key-1234"


def test_max_tokens_is_capped_by_the_model(toml_backends):
    status, _, _ = run({**FORM, "backend": "gpu:codellama/CodeLlama-7b-hf", "max_tokens": "600"})
    assert status == 422
    assert toml_backends.requests == []


@pytest.mark.parametrize(
    "text", ["[[backend]]\nid = 'x'\n", "[[backend]]\nid='Bad Id'\nbase_url='http://h'\n"]
)
def test_a_broken_backends_file_is_a_clear_configuration_error(settings, tmp_path, text):
    path = tmp_path / "b.toml"
    path.write_text(text)
    settings.PLAYGROUND_BACKENDS = str(path)
    with pytest.raises(ImproperlyConfigured):
        backends.configured_backends()


def test_an_unknown_completions_dialect_is_a_configuration_error(settings):
    settings.COMPLETIONS_BASE_URL = "http://127.0.0.1:1/v1"
    settings.COMPLETIONS_DIALECT = "gpt-9"
    with pytest.raises(ImproperlyConfigured, match="unknown dialect"):
        backends.configured_backends()


# --- fill in the middle ---------------------------------------------------------------------


def test_starcoder2_fim_prompt_and_stops_never_a_suffix_field(settings):
    settings.NVIDIA_API_KEY = "nvapi-test"
    nvidia = backends.get_backend("nvidia")
    request = CompletionRequest(
        model="bigcode/starcoder2-7b",
        prompt="def f(x):\n    ",
        suffix="\n    return y\n",
        max_tokens=8,
        stop=("\n\n", "a", "b"),
    )
    payload = build_payload(nvidia, request, stream=True)
    assert payload["prompt"] == (
        "<fim_prefix>def f(x):\n    <fim_suffix>\n    return y\n<fim_middle>"
    )
    assert payload["stop"] == ["<file_sep>", "<|endoftext|>", "\n\n", "a"]  # NIM: 4 at most
    assert "suffix" not in payload
    assert "stream_options" not in payload  # hosted NIM: unknown fields are a 422


def test_insert_mode_through_the_app_renders_the_middle_in_place(completions_backend):
    completions_backend.script(dialect="vllm", tokens=["y", " =", " x"])
    _, _, events = run(
        upstream_form(prompt="def f(x):\n    ", mode="insert", suffix="\n    return y\n")
    )
    sent = completions_backend.requests[-1].json
    assert sent["prompt"].startswith("<fim_prefix>def f(x):")
    assert sent["stop"][:2] == ["<file_sep>", "<|endoftext|>"]
    end = events[-2].data
    assert 'data-part="before"' in end
    assert 'data-part="after"' in end
    assert end.index('data-part="before"') < end.index('class="t ') < end.index('data-part="after"')
    assert [t["text"] for t in final(events).tokens] == ["y", " =", " x"]


def test_insert_mode_is_refused_for_a_model_without_a_fim_format(settings, completions_backend):
    settings.COMPLETIONS_MODEL = "some/chat-model"
    response = Client().post(
        "/generate",
        upstream_form(mode="insert", suffix="x"),
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert "fill-in-the-middle" in Fragment(response.content.decode()).text_by_id["err-mode"]
    assert completions_backend.requests == []


# --- token counts ---------------------------------------------------------------------------


def test_token_count_from_the_offline_tokenizer():
    response = Client().post("/tokens", {"backend": "offline", "prompt": "def f(x):\n"})
    assert response.status_code == 200
    assert "tokens" in response.content.decode()
    assert "of 4096 left" in response.content.decode()


def test_token_count_from_a_tokenize_endpoint(completions_backend):
    response = Client().post("/tokens", {"backend": "completions", "prompt": "one two three"})
    assert "Prompt: 3 tokens" in response.content.decode()
    assert completions_backend.requests[-1].path == "/tokenize"


def test_no_tokenize_endpoint_says_so_instead_of_guessing(settings, completions_backend):
    settings.COMPLETIONS_DIALECT = "openai"
    response = Client().post("/tokens", {"backend": "completions", "prompt": "one two"})
    assert "after a run, from usage" in response.content.decode()
    assert completions_backend.requests == []


# --- check_backends -------------------------------------------------------------------------


def check(*ids: str) -> tuple[str, int]:
    out = StringIO()
    code = 0
    try:
        call_command("check_backends", *ids, stdout=out, stderr=StringIO())
    except SystemExit as exc:
        code = exc.code
    return out.getvalue(), code


def test_check_backends_reports_a_working_backend_and_its_logprobs(completions_backend):
    completions_backend.script(dialect="vllm", tokens=["x"])
    output, code = check()
    assert code == 0
    lines = output.splitlines()
    assert lines[0].split()[:3] == ["backend", "model", "reachable"]
    row = next(line for line in lines if line.startswith("completions"))
    assert row.split()[2:5] == ["yes", "yes", "yes"]
    assert "real" in row
    probe = completions_backend.requests[-1].json
    assert (probe["max_tokens"], probe["logprobs"], probe["stream"]) == (1, 1, False)
    assert any(line.startswith("offline") for line in lines)


def test_check_backends_reports_placeholder_logprobs(settings, completions_backend):
    settings.COMPLETIONS_DIALECT = "nim-hosted"
    completions_backend.script(dialect="nim", tokens=["x"])
    output, _ = check("completions")
    assert "placeholder" in output


def test_check_backends_reports_a_retired_model_with_a_hint(completions_backend):
    completions_backend.script(dialect="nim", status=410)
    output, code = check("completions")
    assert code == 1
    assert "retired" in output
    assert "bigcode/starcoder2-7b" in output  # what the server lists instead


def test_check_backends_reports_a_rejected_key(completions_backend):
    from upstream import Script

    completions_backend.default = Script(status=401)
    output, code = check("completions")
    assert code == 1
    assert "key was rejected" in output or "NO" in output


def test_check_backends_reports_an_unreachable_backend(settings):
    from upstream import closed_port_url

    settings.COMPLETIONS_BASE_URL = closed_port_url()
    output, code = check("completions")
    assert code == 1
    row = next(line for line in output.splitlines() if line.startswith("completions"))
    assert row.split()[2] == "NO"


def test_status_badge_fragment(completions_backend):
    completions_backend.script(dialect="vllm", tokens=["x"])
    response = Client().get("/backends/status")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'data-backend="completions"' in page
    assert "ready" in page
