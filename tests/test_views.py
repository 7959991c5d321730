"""The page and the generate endpoint, in process: what the browser and the upstream see."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import tooltips
from django.test import Client
from sse import post_stream

FORM = {
    "backend": "offline",
    "prompt": "def add(a, b):\n",
    "temperature": "0.7",
    "top_p": "0.95",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "seed": "3",
    "max_tokens": "40",
    "logprobs": "3",
}


# Runs are saved at the end of every generation, from the stream's own thread.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _unpaced(settings):
    settings.OFFLINE_MODEL_TOKENS_PER_SECOND = 0


class Fragment(HTMLParser):
    """Collects token spans (with their text), elements by id, and the run's JSON data."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[dict] = []
        self.ids: dict[str, dict] = {}
        self.json_blobs: list[str] = []
        self.text_by_id: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []
        self._in_json = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self._stack.append((tag, attributes))
        if "id" in attributes:
            self.ids[attributes["id"]] = attributes
            self.text_by_id.setdefault(attributes["id"], "")
        if tag == "span" and "t" in (attributes.get("class") or "").split():
            self.tokens.append({**attributes, "text": ""})
        self._in_json = tag == "script" and attributes.get("type") == "application/json"

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break
        self._in_json = False

    def handle_data(self, data):
        if self._in_json:
            self.json_blobs.append(data)
            return
        open_token = None
        for _, attributes in reversed(self._stack):
            if "t" in (attributes.get("class") or "").split() and self.tokens:
                open_token = self.tokens[-1]
                break
        if open_token is not None:
            open_token["text"] += data
        for _, attributes in self._stack:
            if "id" in attributes:
                self.text_by_id[attributes["id"]] += data


def run(data: dict | None = None, **changes):
    status, headers, events = post_stream("/generate", {**(data or FORM), **changes})
    return status, headers, events


def final(events) -> Fragment:
    unnamed = [e for e in events if not e.event]
    return Fragment(unnamed[-1].data)


def summary(events) -> dict:
    (done,) = [e for e in events if e.event == "done"]
    return json.loads(done.data)


# --- the page -----------------------------------------------------------------------------


def test_page_has_every_control_labelled_and_loads_only_our_own_assets(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    for label in [
        "Model",
        "Prompt",
        "Temperature",
        "Top P",
        "Frequency penalty",
        "Presence penalty",
        "Seed",
        "Random seed",
        "Max tokens",
        "Alternatives shown per token",
        "Stop sequence 1",
        "Stop sequence 4",
    ]:
        assert f">{label}<" in page or f"> {label}<" in page, label
    assert "/static/vendor/htmx-4.0.1.min.js" in page
    assert "/static/vendor/hx-sse-4.0.1.min.js" in page
    assert 'hx-headers:inherited=\'{"X-CSRFToken": "' in page
    assert "hx-ignore" in page
    assert "https://" not in page
    assert "http://" not in page
    assert "Built-in demo model" in page


def test_static_assets_are_served(client):
    for path in [
        "/static/vendor/htmx-4.0.1.min.js",
        "/static/vendor/hx-sse-4.0.1.min.js",
        "/static/playground/app.js",
        "/static/playground/app.css",
    ]:
        response = client.get(path)
        assert response.status_code == 200, path


# --- generating with the offline model ----------------------------------------------------


def test_generate_streams_text_then_a_rendered_completion_with_probabilities():
    status, headers, events = run()
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Accel-Buffering"] == "no"
    start, *middle, end, done = events
    assert 'id="live" hx-swap-oob="innerHTML"' in start.data  # the previous run is cleared
    assert middle, "the text must arrive in pieces before the final render"
    assert all(m.data.startswith("<span>") for m in middle)
    fragment = Fragment(end.data)
    assert fragment.tokens, "every token is a span"
    assert [int(t["data-i"]) for t in fragment.tokens] == list(range(len(fragment.tokens)))
    assert all("data-logprob" in t for t in fragment.tokens)
    data = tooltips.entries(end.data)
    assert len(data) == len(fragment.tokens)
    assert all(len(entry[2]) <= 3 for entry in data)  # alternatives shown per token
    stats = summary(events)
    assert done.event == "done"
    assert stats["status"] == "complete"
    assert stats["finish_reason"] in {"length", "stop"}
    assert stats["completion_tokens"] == len(fragment.tokens)
    assert stats["prompt_tokens"] > 0
    assert stats["mean_logprob"] < 0
    assert stats["perplexity"] > 1
    assert stats["ttft_ms"] is not None


def test_streamed_text_equals_the_rendered_completion():
    _, _, events = run()
    live = "".join(Fragment(e.data.replace("<span>", '<span id="x">', 1)).text_by_id["x"]
                   for e in events[1:-2])  # fmt: skip
    rendered = "".join(t["text"] for t in final(events).tokens)
    assert live == rendered
    assert live


def test_same_seed_gives_the_same_completion():
    first = [t["text"] for t in final(run()[2]).tokens]
    second = [t["text"] for t in final(run()[2]).tokens]
    assert first == second


def test_stop_sequence_ends_the_completion():
    _, _, events = run(max_tokens="200", stop=["\n"])
    text = "".join(t["text"] for t in final(events).tokens)
    assert "\n" not in text
    assert summary(events)["finish_reason"] == "stop"


def test_stats_line_is_rendered():
    _, _, events = run()
    fragment = final(events)
    assert "stats" in fragment.ids
    assert "tok/s" in fragment.text_by_id["stats"] or "—" in fragment.text_by_id["stats"]
    assert "Perplexity" in fragment.text_by_id["stats"]


def test_invalid_parameters_answer_422_with_messages_beside_fields_and_nothing_streams():
    status, headers, events = run(temperature="7", max_tokens="0")
    assert status == 422
    assert not headers["Content-Type"].startswith("text/event-stream")


def test_invalid_parameters_fragment_targets_each_field():
    from django.test import Client

    response = Client().post(
        "/generate", {**FORM, "temperature": "7", "prompt": " "}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 422
    fragment = Fragment(response.content.decode())
    assert "less than or equal to 2" in fragment.text_by_id["err-temperature"]
    assert "Write a prompt first" in fragment.text_by_id["err-prompt"]
    assert fragment.text_by_id["err-top_p"] == ""  # a valid field's old message is cleared
    assert fragment.ids["err-temperature"]["hx-swap-oob"] == "innerHTML"


def test_without_javascript_the_form_post_returns_the_whole_page_with_the_result():
    response = Client().post("/generate", FORM)
    assert response.status_code == 200
    fragment = Fragment(response.content.decode())
    assert fragment.tokens
    assert "def add(a, b):" in response.content.decode()  # the prompt stays in the editor


def test_without_javascript_errors_keep_the_prompt_and_show_the_message():
    response = Client().post("/generate", {**FORM, "top_p": "3", "prompt": "x = 1\n"})
    assert response.status_code == 422
    page = response.content.decode()
    assert "x = 1\n</textarea>" in page
    assert "less than or equal to 1" in page


def test_post_without_csrf_token_is_refused():
    response = Client(enforce_csrf_checks=True).post("/generate", FORM)
    assert response.status_code == 403
    assert "CSRF verification failed" in response.content.decode()  # Django's page, no htmx


def test_an_htmx_request_with_a_stale_token_gets_a_message_and_the_renewed_token():
    # A sign-in in another tab renews the token: the older page's requests are refused. htmx
    # swaps the 403, so it must only set the status (out of band) and hand over the new token.
    client = Client(enforce_csrf_checks=True)
    client.get("/")  # the CSRF cookie
    stale = "A" * 64  # a well-formed token masked from another secret
    htmx = {"HX-Request": "true"}
    refused = client.post("/generate", {**FORM, "csrfmiddlewaretoken": stale}, headers=htmx)
    assert refused.status_code == 403
    body = refused.content.decode()
    assert '<p id="status" hx-swap-oob="innerHTML">' in body
    assert "security token was out of date" in body
    assert "try again" in body
    assert "CSRF verification failed" not in body
    assert refused["Cache-Control"] == "no-store"
    renewed = refused["X-CSRF-Renewed"]
    again = client.post("/generate", FORM, headers={**htmx, "X-CSRFToken": renewed})
    assert again.status_code == 200
    assert again["Content-Type"].startswith("text/event-stream")
    again.close()


def test_an_htmx_request_for_something_gone_gets_a_status_message_and_no_page():
    client = Client()
    gone = client.post("/runs/999999/restore", headers={"HX-Request": "true"})
    assert gone.status_code == 404
    body = gone.content.decode()
    assert body.strip().startswith('<p id="status" hx-swap-oob="innerHTML">')
    assert "Not found: it was deleted" in body
    assert "<h1>" not in body
    plain = client.post("/runs/999999/restore")
    assert plain.status_code == 404
    assert "hx-swap-oob" not in plain.content.decode()


@pytest.mark.urls("tests.failing_urls")
def test_an_htmx_request_that_hits_a_bug_gets_a_status_message_and_no_page():
    client = Client(raise_request_exception=False)
    failed = client.get("/broken", headers={"HX-Request": "true"})
    assert failed.status_code == 500
    body = failed.content.decode()
    assert "The server failed on this request and nothing changed." in body
    assert '<p id="compare-status" hx-swap-oob="innerHTML">' in body
    assert "a bug in a view" not in body
    plain = client.get("/broken")
    assert plain.status_code == 500
    assert "hx-swap-oob" not in plain.content.decode()


def test_a_refusal_without_any_csrf_cookie_sets_one_that_the_renewed_token_matches():
    client = Client(enforce_csrf_checks=True)
    htmx = {"HX-Request": "true"}
    refused = client.post("/draft", {"prompt": "kept"}, headers=htmx)
    assert refused.status_code == 403
    assert "csrftoken" in refused.cookies
    saved = client.post(
        "/draft", {"prompt": "kept"}, headers={**htmx, "X-CSRFToken": refused["X-CSRF-Renewed"]}
    )
    assert saved.status_code == 204


# --- against an OpenAI-compatible upstream on loopback -----------------------------------


def upstream_form(**changes):
    return {**FORM, "backend": "completions", "max_tokens": "16", **changes}


def test_upstream_generation_sends_only_validated_parameters(completions_backend):
    upstream = completions_backend
    upstream.script(dialect="vllm", tokens=["    return", " a", " +", " b", "\n"], alternatives=3)
    status, _, events = run(upstream_form(stop=["\\n\\n"]))
    assert status == 200
    (request,) = upstream.requests
    assert request.path == "/v1/completions"
    assert request.headers["authorization"] == "Bearer test-key-0123456789abcdef"
    body = request.json
    assert set(body) <= {
        "model", "prompt", "max_tokens", "temperature", "top_p", "frequency_penalty",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "logprobs",
    }  # fmt: skip
    assert body["model"] == "bigcode/starcoder2-7b"
    assert body["stop"] == ["\n\n"]
    assert body["seed"] == 3
    assert body["stream"] is True
    assert body["logprobs"] == 3
    fragment = final(events)
    assert [t["text"] for t in fragment.tokens] == ["    return", " a", " +", " b", "\n"]
    assert all("data-logprob" in t for t in fragment.tokens)
    assert summary(events)["prompt_tokens"] == 7


def test_the_key_never_reaches_the_browser(completions_backend):
    completions_backend.script(dialect="vllm")
    _, _, events = run(upstream_form())
    assert "test-key-0123456789abcdef" not in "".join(e.data for e in events)
    page = Client().get("/").content.decode()
    assert "test-key" not in page
    assert "127.0.0.1:" not in page  # nor the upstream's address


@pytest.mark.parametrize(
    "choice", ["{url}", "elsewhere", "completions:some/other-model", "offline:{url}"]
)
def test_a_url_or_unknown_id_as_backend_is_refused_with_400_and_nothing_is_sent(
    completions_backend, choice
):
    choice = choice.format(url=completions_backend.base_url)
    response = Client().post(
        "/generate", upstream_form(backend=choice), headers={"HX-Request": "true"}
    )
    assert response.status_code == 400
    fragment = Fragment(response.content.decode())
    assert "Unknown backend or model" in fragment.text_by_id["err-backend"]
    assert "Nothing was sent" in fragment.text_by_id["status"]
    assert completions_backend.requests == []


@pytest.mark.parametrize(
    ("dialect", "note"),
    [("ollama", "sent no token probabilities"), ("tgi", "sent no token probabilities"),
     ("nim", "placeholder probabilities")],
)  # fmt: skip
def test_backends_without_probabilities_show_plain_text_and_say_so(
    completions_backend, dialect, note
):
    completions_backend.script(dialect=dialect, tokens=["    return", " a", "\n"])
    _, _, events = run(upstream_form())
    fragment = final(events)
    assert not fragment.tokens  # never a fake 100 %
    assert note in events[-2].data
    assert "return" in events[-2].data
    assert summary(events)["logprobs"] in {"absent", "placeholder"}


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"status": 401}, "rejected the API key"),
        ({"status": 404}, "not available"),
        ({"status": 410}, "not available"),
        ({"status": 422}, "rejected the request"),
        ({"status": 429, "headers": {"Retry-After": "7"}}, "try again in 7"),
        ({"status": 503}, "Try again"),
        ({"dialect": "nim", "status": 403}, "rejected the API key"),
    ],
)
def test_upstream_errors_become_a_short_message_in_the_output(completions_backend, script, message):
    completions_backend.script(**script)
    status, _, events = run(upstream_form())
    assert status == 200
    end = events[-2].data
    assert 'role="alert"' in end
    assert message in end
    assert summary(events)["status"] == "failed"


def test_an_html_error_page_is_never_shown(completions_backend):
    completions_backend.script(
        status=500, body="<html><body><script>x</script>SECRET-abc123 at db01</body></html>"
    )
    _, _, events = run(upstream_form())
    everything = "".join(e.data for e in events)
    assert "SECRET-abc123" not in everything
    assert "<script>x" not in everything
    assert "failed" in events[-2].data


def test_a_stream_cut_mid_way_keeps_the_text_that_arrived(completions_backend):
    completions_backend.script(
        dialect="vllm", tokens=["a", "b", "c", "d", "e"], fail="reset_mid_stream", fail_after=3
    )
    _, _, events = run(upstream_form())
    fragment = final(events)
    assert [t["text"] for t in fragment.tokens] == ["a", "b", "c"]
    assert 'role="alert"' in events[-2].data
    assert "kept below" in events[-2].data
    assert summary(events)["status"] == "failed"


def test_an_error_event_mid_stream_keeps_the_text_and_says_what_happened(completions_backend):
    completions_backend.script(dialect="vllm", tokens=["x", "y", "z"], fail="error_event")
    _, _, events = run(upstream_form())
    assert 'role="alert"' in events[-2].data
    assert summary(events)["status"] == "failed"


def test_connection_refused_is_a_clear_message(settings):
    from upstream import closed_port_url

    settings.COMPLETIONS_BASE_URL = closed_port_url()
    _, _, events = run(upstream_form())
    assert "Could not reach the backend" in events[-2].data


def test_multibyte_characters_split_across_chunks_arrive_whole(completions_backend):
    completions_backend.script(
        dialect="llamacpp", tokens=["s = '", b"\xe4\xbd", b"\xa0", "好'"], fail="split_multibyte"
    )
    _, _, events = run(upstream_form())
    text = "".join(t["text"] for t in final(events).tokens)
    assert text == "s = '你好'"
    assert "\ufffd" not in "".join(e.data for e in events)
