"""Browser tests: the system Chromium against the app served by uvicorn.

They show what a person sees: text streaming in before the run ends, a token's tooltip with its
alternatives, Stop keeping the partial text (and the upstream connection closed), and upstream or
validation errors reported without losing the prompt.
"""

from __future__ import annotations

import re

import pytest
from conftest import run_app
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory, upstream_module):
    """The app with the offline model (paced, so a run visibly streams) and a loopback upstream."""
    with run_app(
        tmp_path_factory.mktemp("browser-app"),
        COMPLETIONS_BASE_URL=upstream_module.base_url,
        COMPLETIONS_MODEL="bigcode/starcoder2-7b",
        OFFLINE_MODEL_TOKENS_PER_SECOND="150",
    ) as server:
        yield server


def open_playground(page, app, backend: str = "offline"):
    page.goto(app.url + "/")
    page.get_by_label("Model", exact=True).select_option(backend)
    return page


def record_streaming(page):
    """Note, in the page, whether text showed up in the live area while the run was going."""
    page.evaluate(
        """() => {
        window.__seenLive = false;
        window.__liveUpdates = 0;
        new MutationObserver(() => {
          window.__liveUpdates++;
          const live = document.querySelector('#live');
          if (live.textContent.length && document.body.classList.contains('running')) {
            window.__seenLive = true;
          }
        }).observe(document.querySelector('#live'), {childList: true, subtree: true});
      }"""
    )


def wait_for_end(page):
    expect(page.locator("#stats")).to_contain_text("Finish", timeout=30_000)


def test_generate_streams_then_shows_tokens_with_a_tooltip_of_alternatives(page, app):
    open_playground(page, app)
    page.get_by_label("Max tokens", exact=True).fill("150")
    record_streaming(page)
    page.get_by_role("button", name="Generate").click()
    wait_for_end(page)
    assert page.evaluate("window.__seenLive"), "text must appear before the run ends"
    assert page.evaluate("window.__liveUpdates") > 3
    expect(page.locator("#status")).to_have_text("Done.")

    tokens = page.locator("#result .t")
    assert tokens.count() > 10
    assert tokens.first.get_attribute("data-logprob") is not None

    page.mouse.move(0, 0)  # keep the pointer off the output: hovering a token takes the tooltip
    token = tokens.nth(3)
    token.focus()
    tooltip = page.get_by_role("tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("%")
    expect(tooltip).to_contain_text("logprob")
    alternatives = tooltip.locator("li")
    assert 1 <= alternatives.count() <= 5
    # The sampled token is marked among the alternatives, or, when sampling picked one outside
    # the top five (the offline model samples with a random seed), a note says so instead.
    outside = tooltip.get_by_text("The chosen token was not among the top alternatives.")
    expect(tooltip.locator("li.chosen").or_(outside)).to_have_count(1)
    assert token.get_attribute("aria-describedby") == "tooltip"

    page.keyboard.press("Escape")
    expect(tooltip).to_be_hidden()
    tokens.filter(has_text=re.compile(r"\S")).nth(5).hover()
    expect(tooltip).to_be_visible()

    stats = page.locator("#stats")
    for label in ["Prompt", "Completion", "First token", "Total", "Speed", "Finish", "Perplexity"]:
        expect(stats).to_contain_text(label)


def test_the_tooltip_lists_the_backends_alternatives_most_likely_first(page, app, upstream_module):
    # Sent out of order, with more decimals than the data keeps: listed most likely first, each
    # with its probability; the head shows the span's own text and logprob.
    upstream_module.script(
        dialect="vllm",
        tokens=["x", " =", " 1", "\r\n"],
        logprobs=[-0.5, -0.05, -0.2, -0.01],
        alternatives=[
            {},
            {" +": -2.0, " =": -0.05, " :": -1.2039728},
            {},
            {"\n": -5.0, "\r\n": -0.01},
        ],
    )
    open_playground(page, app, backend="completions")
    page.get_by_role("button", name="Generate").click()
    wait_for_end(page)
    page.mouse.move(0, 0)
    page.locator('#result .t[data-i="1"]').focus()
    tooltip = page.get_by_role("tooltip")
    expect(tooltip.locator(".tt-token")).to_have_text("·=")
    expect(tooltip.locator(".tt-logprob")).to_have_text("logprob -0.0500")
    expect(tooltip.locator("li .tt-alt-token")).to_have_text(["·=", "·:", "·+"])
    expect(tooltip.locator("li .tt-alt-prob")).to_have_text(["95.1%", "30.0%", "13.5%"])
    expect(tooltip.locator("li.chosen")).to_have_text(re.compile("chosen"))

    page.locator('#result .t[data-i="0"]').focus()
    expect(tooltip.locator(".tt-token")).to_have_text("x")
    expect(tooltip.locator("li")).to_have_count(0)

    # A CR LF token is its own first alternative (streamed, its CR came as a reference).
    page.locator('#result .t[data-i="3"]').focus()
    expect(tooltip.locator("li")).to_have_count(2)
    expect(tooltip.locator("li").first).to_have_class(re.compile(r"\bchosen\b"))
    # Reopened from the history, the run's markup is parsed as HTML, which would read a bare CR
    # LF as LF: the token is still its own first alternative.
    page.keyboard.press("Escape")
    page.evaluate("document.querySelector('#result [data-run]').dataset.before = 'yes'")
    page.locator("#history-list li").first.get_by_role("link", name="Open").click()
    page.wait_for_function("() => !document.querySelector('#result [data-run]').dataset.before")
    page.locator('#result .t[data-i="3"]').focus()
    expect(tooltip.locator("li").first).to_have_class(re.compile(r"\bchosen\b"))


def test_whitespace_is_made_visible_in_the_tooltip(page, app):
    open_playground(page, app)
    page.get_by_label("Prompt").fill("def f(x):\n    return x\n\n\ndef g(y):\n")
    page.get_by_label("Max tokens", exact=True).fill("60")
    page.get_by_role("button", name="Generate").click()
    wait_for_end(page)
    spaces = page.locator("#result .t").filter(has_text=re.compile(r"^\s+$"))
    assert spaces.count() > 0
    page.mouse.move(0, 0)
    spaces.first.focus()
    head = page.locator("#tooltip .tt-token")
    expect(head).to_have_text(re.compile(r"^[·→⏎]+$"))


def test_ctrl_enter_generates_from_the_prompt(page, app):
    open_playground(page, app)
    page.get_by_label("Max tokens", exact=True).fill("20")
    page.get_by_label("Prompt").click()
    page.keyboard.press("Control+Enter")
    wait_for_end(page)
    assert page.locator("#result .t").count() > 0


def test_tab_indents_in_the_prompt_editor(page, app):
    open_playground(page, app)
    prompt = page.get_by_label("Prompt")
    prompt.fill("def f():\n")
    prompt.press("End")
    page.keyboard.press("Control+End")
    page.keyboard.press("Tab")
    page.keyboard.type("pass")
    expect(prompt).to_have_value("def f():\n    pass")


def test_slider_and_number_stay_in_sync(page, app):
    open_playground(page, app)
    page.get_by_label("Temperature slider").fill("1.3")
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("1.3")
    page.get_by_label("Top P", exact=True).fill("0.5")
    page.get_by_label("Top P", exact=True).dispatch_event("input")
    expect(page.get_by_label("Top P slider")).to_have_value("0.5")


def test_stop_keeps_the_partial_text_and_closes_the_upstream_stream(page, app, upstream_module):
    upstream_module.script(
        dialect="vllm", tokens=[f"tok{i} " for i in range(400)], chunk_delay=0.05
    )
    open_playground(page, app, backend="completions")
    page.get_by_role("button", name="Generate").click()
    live = page.locator("#live")
    expect(live).to_contain_text("tok3 ")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#status")).to_contain_text("Stopped")
    request = [r for r in upstream_module.requests if r.path == "/v1/completions"][-1]
    assert request.disconnected.wait(10), "the server must close the upstream stream"
    text = live.text_content()
    assert text.startswith("tok0 tok1 tok2 tok3 ")
    assert "tok399" not in text
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.get_by_label("Prompt")).not_to_have_value("")


def test_an_upstream_error_is_shown_and_the_prompt_and_parameters_stay(page, app, upstream_module):
    upstream_module.script(dialect="nim", status=401)
    open_playground(page, app, backend="completions")
    prompt = "def secret_sauce():\n    # keep me\n"
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Temperature", exact=True).fill("0.9")
    page.get_by_role("button", name="Generate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("rejected the API key")
    expect(page.get_by_label("Prompt")).to_have_value(prompt)
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("0.9")


def test_a_validation_error_appears_beside_its_field_and_nothing_is_lost(page, app):
    open_playground(page, app)
    page.get_by_label("Prompt").fill("x = 1\n")
    page.get_by_label("Temperature", exact=True).fill("5")
    page.get_by_label("Temperature", exact=True).evaluate("el => el.removeAttribute('max')")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-temperature")).to_contain_text("less than or equal to 2")
    expect(page.locator("#status")).to_contain_text("fix the highlighted fields")
    expect(page.get_by_label("Prompt")).to_have_value("x = 1\n")


def test_insert_mode_fills_the_middle_in_place_with_tooltips_on_it_only(page, app):
    open_playground(page, app)
    page.get_by_label("Insert").check()
    after = page.get_by_label("After")
    expect(after).to_be_visible()
    expect(after).to_be_focused()
    page.get_by_label("Prompt").fill("def area(width, height):\n    ")
    after.fill("\n    return result\n")
    page.keyboard.press("Control+Enter")
    wait_for_end(page)
    run = page.locator("#result [data-run]")
    before = run.locator('[data-part="before"]')
    middle = run.locator('[data-part="middle"]')
    expect(before).to_have_text("def area(width, height):\n    ")
    expect(run.locator('[data-part="after"]')).to_have_text("\n    return result\n")
    tokens = middle.locator(".t")
    assert tokens.count() > 0
    assert run.locator(".t").count() == tokens.count()  # only the inserted tokens
    page.mouse.move(0, 0)
    tokens.first.focus()
    expect(page.get_by_role("tooltip")).to_contain_text("%")


def test_the_prompt_token_count_updates_while_typing(page, app):
    open_playground(page, app)
    count = page.locator("#token-count")
    expect(count).to_contain_text("tokens")
    page.get_by_label("Prompt").fill("x")
    expect(count).to_contain_text(re.compile(r"Prompt: [12] tokens"))


def test_max_tokens_is_capped_to_what_the_context_window_leaves(page, app):
    open_playground(page, app)
    max_tokens = page.get_by_label("Max tokens", exact=True)
    max_tokens.fill("1000")
    page.get_by_label("Prompt").fill("a = b\n" * 900)
    count = page.locator("#token-count")
    expect(count).to_contain_text(re.compile(r"Prompt: \d{4} tokens"))  # the long prompt's count
    left = int(re.search(r"(\d+) of 4096 left", count.inner_text()).group(1))
    assert left < 1000
    expect(max_tokens).to_have_attribute("max", str(left))
    expect(max_tokens).to_have_value(str(left))
    expect(page.get_by_label("Max tokens slider")).to_have_attribute("max", str(left))
