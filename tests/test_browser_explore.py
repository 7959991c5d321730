"""Browser tests of exploring and comparing: branching from an alternative, compare columns,
the diff, the sampling lens, the confidence overview, demo mode and the keyboard shortcuts.

The system Chromium against uvicorn (`conftest.run_app`) with the built-in model, paced so that
runs visibly stream. Each user may run four generations at once, for the four-column compare.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
from conftest import run_app
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore-app")
    with run_app(
        tmp, OFFLINE_MODEL_TOKENS_PER_SECOND="60", PLAYGROUND_MAX_CONCURRENT_PER_USER="4"
    ) as server:
        server.db = tmp / "db.sqlite3"
        yield server


def query(app, sql: str, *args):
    with sqlite3.connect(app.db) as db:
        return db.execute(sql, args).fetchall()


def generate(page, max_tokens: str = "30", temperature: str | None = None, top_p=None) -> None:
    page.get_by_label("Max tokens", exact=True).fill(max_tokens)
    if temperature is not None:
        page.get_by_label("Temperature", exact=True).fill(temperature)
    if top_p is not None:
        page.get_by_label("Top P", exact=True).fill(top_p)
    before = page.locator("#history-list > li").count()
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#history-list > li")).to_have_count(before + 1, timeout=30_000)
    expect(page.locator("#stats")).to_contain_text("Finish")


# Each token span's [text, logprob, [[alt_text, alt_logprob], ...]] from the page: the span's text
# and data-logprob, and its alternatives from the run's data columns (rendering.py), in their order.
RUN_DATA = """() => {
  const run = document.querySelector('#result [data-run]');
  const data = JSON.parse(run.querySelector('script.run-data').textContent);
  let at = 0;
  return [...run.querySelectorAll('.t')].map((span, i) => {
    const alts = data.t.slice(at, at + data.n[i]).map((t, k) => [t, data.l[at + k] / 10000]);
    at += data.n[i];
    alts.sort((a, b) => b[1] - a[1]);
    const lp = span.dataset.logprob;
    return [span.textContent, lp === undefined ? null : Number(lp), alts];
  });
}"""


def run_data(page) -> list:
    return page.evaluate(RUN_DATA)


def shown_run_id(page) -> str:
    return page.locator("#result [data-run]").get_attribute("data-run-id")


def test_branching_creates_a_child_run_and_the_navigator_moves_between_siblings(page, app):
    page.goto(app.url + "/")
    generate(page, temperature="1")
    parent = shown_run_id(page)
    data = run_data(page)
    # A token with an alternative the model did not take.
    index, alt = next(
        (i, k) for i, (text, _, alts) in enumerate(data) for k, (a, _) in enumerate(alts)
        if a != text and a.strip()
    )  # fmt: skip
    chosen = data[index][2][alt][0]
    page.mouse.move(0, 0)
    page.locator(f'#result .t[data-i="{index}"]').focus()
    button = page.locator(f'#tooltip button[data-k="{alt}"]')
    expect(button).to_be_visible()
    button.click()

    nav = page.locator("#branch-nav")
    expect(nav).to_contain_text("2 / 2", timeout=30_000)
    child = shown_run_id(page)
    assert child != parent
    (prompt, parent_id, branch_index), = query(
        app, "select prompt, parent_run_id, branch_index from playground_run where id = ?", child
    )  # fmt: skip
    ((parent_prompt,),) = query(app, "select prompt from playground_run where id = ?", parent)
    assert (parent_id, branch_index) == (int(parent), index)
    assert prompt.endswith(chosen)
    assert prompt == parent_prompt + "".join(t[0] for t in data[:index]) + chosen

    nav.get_by_role("link", name="‹ Previous").click()
    expect(nav).to_contain_text("1 / 2")
    expect(page.locator("#result [data-run]")).to_have_attribute("data-run-id", parent)
    nav.get_by_role("link", name="Next ›").click()
    expect(nav).to_contain_text("2 / 2")
    expect(page.locator("#result [data-run]")).to_have_attribute("data-run-id", child)


@pytest.mark.parametrize("columns", [2, 4])
def test_compare_columns_stream_concurrently_each_with_its_stats(page, app, columns):
    page.goto(f"{app.url}/compare/?columns={columns}")
    for n in range(columns):
        page.locator(f"#id_c{n}-max_tokens").fill("40")
    page.evaluate(
        """(columns) => {
        window.__first = {}; window.__done = {};
        for (let n = 0; n < columns; n++) {
          const live = document.getElementById(`c${n}-live`);
          new MutationObserver(() => {
            if (live.textContent.length && !(n in window.__first)) window.__first[n] = performance.now();
          }).observe(live, {childList: true, subtree: true, characterData: true});
          const status = document.getElementById(`c${n}-status`);
          new MutationObserver(() => {
            if (status.textContent.includes('Done') && !(n in window.__done)) window.__done[n] = performance.now();
          }).observe(status, {childList: true, subtree: true, characterData: true});
        }
      }""",
        columns,
    )
    page.get_by_role("button", name="Generate all").click()
    expect(page.locator("#compare-status")).to_have_text("All columns done.", timeout=60_000)
    first = page.evaluate("window.__first")
    done = page.evaluate("window.__done")
    assert len(first) == len(done) == columns, (first, done)
    # Overlap: every column had received text before any column finished.
    assert max(first.values()) < min(done.values()), (first, done)
    for n in range(columns):
        expect(page.locator(f"#c{n}-stats")).to_contain_text("Finish")
        assert page.locator(f"#c{n}-result .t").count() > 0
    assert page.locator("#compare-diff a").count() == columns * (columns - 1) // 2


def test_a_load_balancers_error_page_on_compare_is_reported_not_swapped_in(page, app):
    page.goto(f"{app.url}/compare/?columns=2")
    page.locator("#compare-prompt").fill("def kept_in_compare():\n")
    page.route(
        "**/compare/run",
        lambda route: route.fulfill(
            status=503,
            content_type="text/html",
            body="<!DOCTYPE html><html><body><h1>Service Unavailable</h1>lb-node-7</body></html>",
        ),
    )
    with page.expect_response(lambda r: r.url.endswith("/compare/run")):
        page.get_by_role("button", name="Generate all").click()
    expect(page.locator("#compare-status")).to_contain_text("The server could not answer (503")
    expect(page.locator("main")).not_to_contain_text("lb-node-7")
    expect(page.locator("#compare-prompt")).to_have_value("def kept_in_compare():\n")
    expect(page.get_by_role("button", name="Generate all")).to_be_enabled()


def test_the_diff_marks_the_first_divergence_with_both_sides_probabilities(page, app):
    page.goto(f"{app.url}/compare/?columns=2")
    for n, temperature in enumerate(["0", "1.5"]):
        page.locator(f"#id_c{n}-max_tokens").fill("40")
        page.locator(f"#id_c{n}-temperature").fill(temperature)
    page.get_by_role("button", name="Generate all").click()
    expect(page.locator("#compare-status")).to_have_text("All columns done.", timeout=60_000)
    page.get_by_role("link", name="Diff 1 ↔ 2").click()
    a, b = re.search(r"a=(\d+)&b=(\d+)", page.url).groups()
    tokens = {}
    for run in (a, b):
        (raw,), = query(app, "select tokens from playground_run where id = ?", run)  # fmt: skip
        tokens[run] = [t[0] for t in json.loads(raw)]
    fork = next(
        (i for i, (x, y) in enumerate(zip(tokens[a], tokens[b], strict=False)) if x != y),
        None,
    )
    assert fork is not None, "greedy and T=1.5 runs of 40 tokens should differ"
    expect(page.locator("#fork")).to_have_attribute("data-fork", str(fork))
    expect(page.locator(".diff .fork")).to_have_count(2)
    for side in page.locator(".diff section").all():
        expect(side.locator(".fork")).to_have_attribute("data-i", str(fork))
    summary = page.locator(".fork-summary")
    expect(summary).to_contain_text(f"diverge at token {fork}")
    expect(summary.locator("li")).to_have_count(2)
    expect(summary.locator("li").first).to_contain_text("%")


def test_the_lens_marks_the_alternatives_top_p_cuts(page, app):
    page.goto(app.url + "/")
    generate(page, max_tokens="40", temperature="1", top_p="0.5")
    run = page.locator("#result [data-run]")
    expect(run).to_have_attribute("data-top-p", "0.5")
    expect(run).to_have_attribute("data-temperature", "1")
    data = run_data(page)

    def cut(alts):
        """How many alternatives top P 0.5 cuts, and how near 0.5 the nearest running sum is.

        At temperature 1 the returned logprobs are the distribution itself; as the lens does,
        their sum is taken as 1 unless the rounded logprobs make it more."""
        probs = [math.exp(lp) for _, lp in alts]
        total = max(sum(probs), 1.0)
        before, out, margin = 0.0, 0, 1.0
        for p in probs:
            out += before >= 0.5
            margin = min(margin, abs(before - 0.5))
            before += p / total
        return out, margin

    # A token top P cuts from, away from the edge where rounding could tip the count.
    index = next(
        i for i, (_, _, alts) in enumerate(data) if cut(alts)[0] > 0 and cut(alts)[1] > 0.002
    )
    page.mouse.move(0, 0)
    page.locator(f'#result .t[data-i="{index}"]').focus()
    tooltip = page.get_by_role("tooltip")
    expect(tooltip.locator("li.cut")).to_have_count(cut(data[index][2])[0])
    expect(tooltip).to_contain_text("top P cuts")
    expect(tooltip.locator("li.tt-alt").first).not_to_have_class(re.compile(r"\bcut\b"))


def test_the_gutter_and_the_surprising_tokens_jump_to_their_token(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def parse(lines):\n    result = []\n")
    generate(page, max_tokens="60", temperature="1")
    data = run_data(page)
    page.mouse.move(0, 0)

    surprising = page.locator(".surprising button").first
    lowest = min(i for i, t in enumerate(data) if t[1] is not None and t[1] == min(
        x[1] for x in data if x[1] is not None))  # fmt: skip
    surprising.click()
    focused = page.evaluate("document.activeElement.dataset.i")
    assert data[int(focused)][1] == data[lowest][1]
    expect(page.get_by_role("tooltip")).to_be_visible()

    # Each gutter mark is its line's least likely token.
    lines, line = [], []
    for i, (text, lp, _) in enumerate(data):
        line.append((lp, i))
        for _ in range(text.count("\n")):
            lines.append(line)
            line = []
    lines.append(line)
    marks = page.locator(".gutter > *")
    assert marks.count() == len(lines)
    buttons = page.locator(".gutter button")
    assert buttons.count() > 1
    target = buttons.nth(buttons.count() - 1)
    jump = int(target.get_attribute("data-jump"))
    target.click()
    expect(page.locator(f'#result .t[data-i="{jump}"]')).to_be_focused()
    number = int(re.search(r"Line (\d+)", target.get_attribute("title")).group(1))
    known = [lp for lp, _ in lines[number - 1] if lp is not None]
    assert data[jump][1] == min(known)


def test_demo_mode_replays_a_saved_run_exactly(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill('def greet(name):\n    """Say <hello> & bye."""\n')
    generate(page, max_tokens="50", temperature="1")
    page.get_by_placeholder("Name this session").fill("Demo <b>me</b>")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    present = page.get_by_role("link", name="Present").first
    href = present.get_attribute("href")
    run = re.search(r"run=(\d+)", href).group(1)
    (text,), = query(app, "select text from playground_run where id = ?", run)  # fmt: skip

    page.goto(f"{app.url}{href}&speed=2")
    page.evaluate(
        """() => { window.__steps = 0; new MutationObserver(() => window.__steps++)
          .observe(document.querySelector('#replay-text'), {childList: true}); }"""
    )
    box = page.locator("[data-replay]")
    expect(box).to_have_attribute("data-done", "true", timeout=30_000)
    assert page.locator("#replay-text").text_content() == text
    assert page.evaluate("window.__steps") > 3, "the replay streams in steps"
    expect(page.locator(".replay-final [data-run]")).to_be_visible()
    expect(page.get_by_role("heading", name="Demo <b>me</b>")).to_be_visible()
    expect(page.locator(".topbar")).to_be_hidden()
    expect(page.locator("#generate-form")).to_have_count(0)

    page.get_by_role("link", name="instant").click()
    expect(box).to_have_attribute("data-done", "true")
    assert page.locator("#replay-text").text_content() == text
    assert "speed=instant" in page.url


def test_every_shortcut_in_the_help_overlay_works(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Max tokens", exact=True).fill("20")
    page.locator("h2").first.click()  # out of any field
    page.keyboard.press("?")
    overlay = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(overlay).to_be_visible()
    listed = overlay.locator("tr").evaluate_all("rows => rows.map(r => r.dataset.shortcut)")
    assert set(listed) == {"generate", "stop", "regenerate", "next", "previous", "alternatives",
                           "choose", "escape", "theme", "help"}  # fmt: skip
    page.keyboard.press("?")
    expect(overlay).to_be_hidden()
    page.keyboard.press("?")
    page.keyboard.press("Escape")
    expect(overlay).to_be_hidden()

    history = page.locator("#history-list > li")
    before = history.count()
    page.keyboard.press("g")  # generate
    expect(history).to_have_count(before + 1, timeout=30_000)
    page.keyboard.press("r")  # regenerate
    expect(history).to_have_count(before + 2, timeout=30_000)
    expect(page.locator("#stats")).to_contain_text("Finish")

    page.keyboard.press("j")  # next token: the first
    expect(page.locator('#result .t[data-i="0"]')).to_be_focused()
    page.keyboard.press("j")
    page.keyboard.press("ArrowRight")
    expect(page.locator('#result .t[data-i="2"]')).to_be_focused()
    page.keyboard.press("k")  # previous token
    expect(page.locator('#result .t[data-i="1"]')).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(page.locator('#result .t[data-i="0"]')).to_be_focused()
    page.keyboard.press("a")  # open the alternatives
    expect(page.locator("#tooltip button").first).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator('#result .t[data-i="0"]')).to_be_focused()
    page.keyboard.press("Enter")  # Enter on a token opens them too
    expect(page.locator("#tooltip button").first).to_be_focused()
    page.keyboard.press("1")  # choose: a branch from the first alternative
    expect(page.locator("#branch-nav")).to_contain_text("2 / 2", timeout=30_000)

    page.get_by_label("Max tokens", exact=True).fill("400")
    page.locator("h2").first.click()
    page.keyboard.press("g")
    expect(page.locator("#live")).not_to_be_empty()
    page.keyboard.press("s")  # stop
    expect(page.locator("#status")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    html = page.locator("html")
    page.keyboard.press("t")  # theme: system -> dark -> light -> system
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(22, 24, 29)"
    page.keyboard.press("t")
    expect(html).to_have_attribute("data-theme", "light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(247, 247, 245)"
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")  # kept in localStorage
    page.keyboard.press("t")
    expect(html).not_to_have_attribute("data-theme", re.compile(".*"))

    # Typing in a field is never a shortcut.
    page.get_by_label("Prompt").press("Control+End")
    page.get_by_label("Prompt").type("g?")
    expect(overlay).to_be_hidden()
    assert page.get_by_label("Prompt").input_value().endswith("g?")


def test_a_saved_theme_is_applied_without_waiting_for_the_deferred_script(page, app):
    """theme.js, blocking in <head>, sets the saved theme before the first paint; app.js (deferred)
    is held back here to show the theme does not wait for it."""
    page.goto(app.url + "/")
    page.evaluate("localStorage.setItem('playground-theme', 'dark')")
    page.route("**/static/playground/app.js", lambda route: route.abort())
    page.goto(app.url + "/")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
