"""In a real browser: the page works under its Content-Security-Policy, and hostile model output,
alternatives and prompts open no dialog, run no script and send no request.

The `page` fixture already fails a test on any request leaving our origin; these tests also
fail on any same-origin request other than the page's own, on any CSP violation report, and on
any dialog.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from conftest import run_app
from hostile import PAYLOADS, visible
from playwright.sync_api import expect
from test_hostile import raw_stream

pytestmark = pytest.mark.browser

# Our own endpoints the page may call: the page, a generation, the debounced token count,
# the draft autosave and the history panel.
OWN_PATHS = ("/", "/generate", "/tokens", "/draft", "/history", "/static/")
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, upstream_module):
    with run_app(
        tmp_path_factory.mktemp("browser-security"),
        COMPLETIONS_BASE_URL=upstream_module.base_url,
        COMPLETIONS_MODEL="bigcode/starcoder2-7b",
        OFFLINE_MODEL_TOKENS_PER_SECOND="0",
    ) as server:
        yield server


@pytest.fixture
def watched(page):
    """The page, with dialogs, requests and CSP violations recorded."""
    dialogs: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.add_init_script(WATCH)
    yield page, dialogs, requests
    unexpected = [
        url
        for url in requests
        if not url.startswith("data:")
        and not (urlsplit(url).path in OWN_PATHS or urlsplit(url).path.startswith("/static/"))
    ]
    assert not unexpected, f"unexpected requests: {unexpected}"
    assert not dialogs, f"dialogs opened: {dialogs}"


def end_of_run(page):
    expect(page.locator("#stats")).to_contain_text("Finish", timeout=30_000)


def test_the_page_works_under_its_content_security_policy(watched, app):
    page, _, _ = watched
    response = page.goto(app.url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.get_by_label("Model", exact=True).select_option("offline")
    page.get_by_role("button", name="Generate").click()
    end_of_run(page)
    token = page.locator("#result .t").first
    token.hover()
    expect(page.locator("#tooltip")).to_be_visible()
    page.get_by_label("Temperature slider").fill("1.5")
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("1.5")
    assert page.evaluate("window.__csp") == []


def test_hostile_output_alternatives_and_prompt_do_nothing(watched, app, upstream_module):
    page, _, requests = watched
    payloads = list(PAYLOADS.values())
    tokens = [p + "\n" for p in payloads]
    alternatives = [{token: -0.1, payloads[i - 1]: -1.5} for i, token in enumerate(tokens)]
    upstream_module.script(
        status=200,
        body=raw_stream(tokens, alternatives),
        headers={"Content-Type": "text/event-stream"},
    )
    page.goto(app.url + "/")
    prompt = "\n".join(visible(p).replace("\x00", "") for p in payloads if len(p) < 1000)
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Model", exact=True).select_option("completions")
    page.get_by_role("button", name="Generate").click()
    end_of_run(page)

    shown = page.locator("#result code").text_content()
    for payload in payloads:
        assert visible(payload) in shown
    # Tooltips show alternatives as text too.
    for index in (1, 3, 6, 19):
        page.locator(f'#result .t[data-i="{index}"]').hover()
        expect(page.locator("#tooltip")).to_be_visible()
        assert page.locator("#tooltip img, #tooltip script, #tooltip svg").count() == 0
    # Our own: the confidence chart (svg.chart) and its jump buttons (button[data-jump]).
    assert (
        page.locator(
            "#output-panel img, #output-panel iframe, #output-panel svg:not(.chart)"
        ).count()
        == 0
    )
    assert page.locator("#output-panel svg.chart *").evaluate_all(
        "nodes => nodes.map(n => n.localName)"
    ) == ["title", "line", "polyline"]
    assert (
        page.locator(
            "#output-panel a, #output-panel button:not([data-jump]), "
            "#output-panel script:not([type])"
        ).count()
        == 0
    )
    buttons = page.locator("#output-panel button[data-jump]")
    assert buttons.evaluate_all("bs => bs.every(b => /^\\d+$/.test(b.dataset.jump))")
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("window.__csp") == []
    # Nothing typed is lost (a textarea's value has its line ends normalised to LF).
    assert page.get_by_label("Prompt").input_value() == prompt.replace("\r\n", "\n").replace(
        "\r", "\n"
    )
    assert sum(urlsplit(url).path == "/generate" for url in requests) == 1


def watch(page, allowed_paths: set[str]):
    """Record dialogs, requests and CSP violations of `page`; the checks run in `check`."""
    seen = {"dialogs": [], "requests": []}
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.add_init_script(WATCH)

    def check():
        unexpected = [
            url
            for url in seen["requests"]
            if not url.startswith("data:")
            and urlsplit(url).path not in allowed_paths | set(OWN_PATHS)
            and not urlsplit(url).path.startswith("/static/")
        ]
        assert not unexpected, f"unexpected requests: {unexpected}"
        assert not seen["dialogs"], f"dialogs opened: {seen['dialogs']}"
        assert page.evaluate("window.__xss") is None
        assert page.evaluate("window.__csp") == []

    return check


def test_hostile_session_names_runs_and_share_pages_do_nothing(browser, page, app, upstream_module):
    """Sessions named with every payload, one holding a run whose tokens and alternatives are
    the payloads and shared by link: the sessions list, the session with its history and past
    run, and the share page (in a context with no cookie) open no dialog, run no script, send
    no request and break no CSP rule."""
    import re

    payloads = list(PAYLOADS.values())
    names = [visible(p) for p in payloads]
    tokens = [p + "\n" for p in payloads]
    alternatives = [{token: -0.1, payloads[i - 1]: -1.5} for i, token in enumerate(tokens)]
    upstream_module.script(
        status=200,
        body=raw_stream(tokens, alternatives),
        headers={"Content-Type": "text/event-stream"},
    )
    page.goto(app.url + "/")
    csrf = page.evaluate(
        "JSON.parse(document.body.getAttribute('hx-headers:inherited'))['X-CSRFToken']"
    )
    headers = {"X-CSRFToken": csrf, "HX-Request": "true"}
    form = {
        "backend": "completions", "prompt": names[0], "temperature": "0.2", "top_p": "0.95",
        "frequency_penalty": "0", "presence_penalty": "0", "seed": "1", "max_tokens": "64",
        "logprobs": "2",
    }  # fmt: skip
    ran = page.request.post(app.url + "/generate", form=form, headers=headers)
    assert b"event: done" in ran.body()
    # The first save takes the run; every payload names a session.
    paths = []
    for name in names:
        saved = page.request.post(
            app.url + "/sessions/save", form={**form, "name": name}, headers=headers
        )
        assert saved.status == 204, saved.status
        paths.append(saved.headers["hx-redirect"])
    first = paths[0]
    pk = first.strip("/").split("/")[-1]
    linked = page.request.post(f"{app.url}/sessions/{pk}/links", headers=headers)
    assert linked.ok
    settings = page.request.get(app.url + linked.headers["hx-redirect"]).text()
    share = re.search(r"/share/[\w-]+/", settings).group(0)

    allowed = {"/sessions/", first, share, "/history"}
    check = watch(page, allowed)
    for number in (1, 2, 3):
        page.goto(f"{app.url}/sessions/?page={number}")
        expect(page.locator(".session-list")).to_be_visible()
        assert (
            page.locator(".session-list img, .session-list script, .session-list svg").count() == 0
        )
    listed = "".join(
        page.goto(f"{app.url}/sessions/?page={n}") and page.locator(".session-list").inner_text()
        for n in (1, 2, 3)
    )
    for name in names:
        if len(name) < 200 and "\x00" not in name:
            assert " ".join(name.split()) in " ".join(listed.split())
    page.goto(app.url + first)
    expect(page.locator("#history-list .history-item")).to_have_count(1)
    allowed.add(f"/runs/{page.locator('.history-item').get_attribute('data-run-id')}/")
    page.locator("#history-list .history-item a", has_text="Open").click()
    end_of_run(page)
    page.locator('#result .t[data-i="1"]').hover()
    expect(page.locator("#tooltip")).to_be_visible()
    # Our own confidence chart is the one svg allowed (its content is checked above).
    hostile = "#output-panel img, #output-panel iframe, #output-panel svg:not(.chart)"
    assert page.locator(hostile).count() == 0
    check()

    viewer = browser.new_context()
    shared = viewer.new_page()
    check_shared = watch(shared, {share})
    shared.goto(app.url + share)
    text = shared.locator("article.shared").inner_text()
    for payload in payloads:
        if len(payload) < 1000:
            assert " ".join(visible(payload).split())[:60] in " ".join(text.split())
    shared.locator(".shared .t").nth(3).hover()
    expect(shared.locator("#tooltip")).to_be_visible()
    assert (
        shared.locator(
            "article img, article iframe, article svg:not(.chart), article script:not([type])"
        ).count()
        == 0
    )
    check_shared()
    viewer.close()
