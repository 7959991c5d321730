"""Browser tests of the workspace: saving, history, sharing, the team gallery, export/import.

The system Chromium against uvicorn (`conftest.run_app`), with the built-in model paced slowly
enough that Stop lands in the middle of a run.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT, run_app
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

USERS = {"alice": "alice-pw-0123", "bob": "bob-pw-0123"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workspace-app")
    with run_app(tmp, OFFLINE_MODEL_TOKENS_PER_SECOND="20") as server:
        server.db = tmp / "db.sqlite3"
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{server.db}"}
        env.pop("DJANGO_ENV", None)
        script = "; ".join(
            f"User.objects.create_user({name!r}, password={password!r})"
            for name, password in USERS.items()
        )
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             f"from django.contrib.auth.models import User; {script}"],
            cwd=ROOT, env=env, check=True,
        )  # fmt: skip
        yield server


def sign_in(page, app, name: str) -> None:
    page.goto(app.url + "/accounts/login/")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(USERS[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who")).to_have_text(name)


def generate(page, max_tokens: str = "12") -> None:
    page.get_by_label("Max tokens", exact=True).fill(max_tokens)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#stats")).to_contain_text("Finish", timeout=30_000)


def save_as(page, name: str) -> None:
    page.get_by_placeholder("Name this session").fill(name)
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    expect(page.get_by_label("Session name", exact=True)).to_have_value(name)


def check_tooltip(page, scope: str) -> None:
    page.mouse.move(0, 0)
    page.locator(f"{scope} .t").nth(1).focus()
    tooltip = page.get_by_role("tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("%")
    expect(tooltip.locator("li.chosen")).to_have_count(1)


def wait_for_autosave(page, action, text: str) -> None:
    """Do `action` and wait for the autosave that carries `text`."""
    with page.expect_response(
        lambda r: r.url.endswith("/draft") and text in (r.request.post_data or "")
    ) as response:
        action()
    assert response.value.status == 204


def open_with_a_run(page, app, prompt: str) -> None:
    """The editor, with a run of `prompt` made (and so in History)."""
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill(prompt)
    generate(page)


def restore_first(page) -> None:
    """Restore parameters, on the newest run of the History panel."""
    page.locator("#history-list li").first.get_by_role("button", name="Restore parameters").click()


def test_the_draft_survives_a_reload(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def survives_reload():\n")
    wait_for_autosave(
        page, lambda: page.get_by_label("Temperature", exact=True).fill("1.25"), "1.25"
    )
    expect(page.locator("#autosave")).to_have_text("Draft saved")
    page.reload()
    expect(page.get_by_label("Prompt")).to_have_value("def survives_reload():\n")
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("1.25")


def test_generate_save_reload_and_reopen_a_run_with_its_tooltips(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def reopen_me(x):\n")
    generate(page)
    first = page.locator("#result pre").text_content()
    expect(page.locator("#history-list li")).to_have_count(1)
    save_as(page, "Reopen test")
    page.reload()
    expect(page.get_by_label("Prompt")).to_have_value("def reopen_me(x):\n")
    item = page.locator("#history-list li").first
    expect(item).to_contain_text("Complete")
    item.get_by_role("link", name="Open").click()
    expect(page.locator("#result pre")).to_have_text(first)
    check_tooltip(page, "#result")

    page.goto(app.url + "/sessions/")
    page.get_by_role("link", name="Reopen test").click()
    expect(page.locator("#history-list li")).to_have_count(1)


def test_restore_from_a_run_just_added_to_history_puts_its_prompt_back(page, app):
    # The history item of a run that just ended comes in the stream's last message, rendered
    # without the request: its Restore form must still pass CSRF (a 403 here lost the click).
    open_with_a_run(page, app, "def restore_me(y):\n")
    page.get_by_label("Prompt").fill("something else entirely")
    item = page.locator("#history-list li").first
    with page.expect_response(lambda r: r.url.endswith("/restore")) as restored:
        item.get_by_role("button", name="Restore parameters").click()
    assert restored.value.status < 400
    expect(page.get_by_label("Prompt")).to_have_value("def restore_me(y):\n")


def test_an_autosave_of_text_typed_just_before_restore_never_lands_after_it(page, app):
    # Clicking Restore blurs the prompt, whose change event autosaves what was typed; that
    # autosave (and the debounced one behind it) must reach the server before the restore, or
    # the draft ends up holding the typed text and the restored prompt is lost on reload.
    open_with_a_run(page, app, "def restore_wins(z):\n")
    order = []

    def record(kind):
        def handler(route):
            typed = "typed+over" in (route.request.post_data or "")
            order.append(("start", kind, typed))
            response = route.fetch()
            order.append(("end", kind, typed))
            route.fulfill(response=response)

        return handler

    page.route("**/draft", record("draft"))
    page.route("**/restore", record("restore"))
    page.get_by_label("Prompt").fill("typed over")
    with page.expect_navigation(url=re.compile(r"\?run=\d+$")):
        restore_first(page)
    expect(page.get_by_label("Prompt")).to_have_value("def restore_wins(z):\n")
    page.unroute_all(behavior="wait")
    restore = order.index(("start", "restore", False))
    assert ("end", "draft", True) in order[:restore], order
    assert ("start", "draft", True) not in order[restore:], order
    page.reload()
    expect(page.get_by_label("Prompt")).to_have_value("def restore_wins(z):\n")


def test_after_a_failed_restore_the_editor_is_autosaved_again(page, app):
    open_with_a_run(page, app, "def kept_after_failure():\n")
    page.route("**/restore", lambda route: route.fulfill(status=500, body="Server error"))
    with page.expect_response(lambda r: r.url.endswith("/restore")):
        restore_first(page)
    wait_for_autosave(page, lambda: page.get_by_label("Prompt").fill("still mine"), "still+mine")
    page.reload()
    expect(page.get_by_label("Prompt")).to_have_value("still mine")


NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def test_a_proxys_error_page_is_not_swapped_into_the_output_and_nothing_is_lost(page, app):
    open_with_a_run(page, app, "def behind_a_proxy():\n")
    first = page.locator("#result pre").text_content()
    page.route(
        "**/generate",
        lambda route: route.fulfill(status=502, content_type="text/html", body=NGINX_502),
    )
    with page.expect_response(lambda r: r.url.endswith("/generate")):
        page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("The server could not answer (502")
    expect(page.locator("#result pre")).to_have_text(first)
    expect(page.locator("main")).not_to_contain_text("nginx")
    expect(page.get_by_label("Prompt")).to_have_value("def behind_a_proxy():\n")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()


def test_a_restore_answered_with_an_empty_error_keeps_its_button_and_says_so(page, app):
    open_with_a_run(page, app, "def empty_answer():\n")
    page.route("**/restore", lambda route: route.fulfill(status=504, body=""))
    with page.expect_response(lambda r: r.url.endswith("/restore")):
        restore_first(page)
    expect(page.locator("#status")).to_contain_text("The server could not answer (504")
    first = page.locator("#history-list li").first
    expect(first.get_by_role("button", name="Restore parameters")).to_be_visible()


def test_a_page_whose_csrf_token_was_renewed_elsewhere_says_so_and_works_on_the_next_try(page, app):
    open_with_a_run(page, app, "def renewed(t):\n")
    # No autosave pending when the token goes stale (its debounce restarts with each input).
    temperature = page.get_by_label("Temperature", exact=True)
    wait_for_autosave(page, lambda: temperature.fill("0.35"), "temperature=0.35")
    first = page.locator("#result pre").text_content()
    # What a sign-in in another tab does: the cookie's secret changes under the open page.
    page.context.add_cookies([{"name": "csrftoken", "value": "R" * 32, "url": app.url}])
    with page.expect_response(lambda r: r.url.endswith("/generate")) as refused:
        page.get_by_role("button", name="Generate").click()
    assert refused.value.status == 403
    expect(page.locator("#status")).to_contain_text("security token was out of date")
    expect(page.get_by_label("Prompt")).to_have_value("def renewed(t):\n")
    expect(page.locator("#result pre")).to_have_text(first)  # the output is left as it was
    expect(page.locator("body")).not_to_contain_text("CSRF")
    with page.expect_response(lambda r: r.url.endswith("/generate")) as again:
        page.get_by_role("button", name="Generate").click()
    assert again.value.status == 200
    expect(page.locator("#history-list li")).to_have_count(2, timeout=30_000)
    wait_for_autosave(page, lambda: page.get_by_label("Prompt").fill("after renewal"), "after")


def test_restoring_a_run_deleted_elsewhere_says_so_and_keeps_the_editor(page, app):
    open_with_a_run(page, app, "def deleted_elsewhere():\n")
    item = page.locator("#history-list li").first
    with sqlite3.connect(app.db) as db:  # as its session's deletion in another tab does
        db.execute("DELETE FROM playground_run WHERE id = ?", (item.get_attribute("data-run-id"),))
    page.get_by_label("Prompt").fill("still here")
    with page.expect_response(lambda r: r.url.endswith("/restore")) as gone:
        item.get_by_role("button", name="Restore parameters").click()
    assert gone.value.status == 404
    expect(page.locator("#status")).to_contain_text("Not found: it was deleted")
    expect(item.get_by_role("button", name="Restore parameters")).to_be_visible()
    expect(page.get_by_label("Prompt")).to_have_value("still here")
    expect(page.locator("body")).not_to_contain_text("requested resource")
    wait_for_autosave(page, lambda: page.get_by_label("Prompt").fill("kept after 404"), "404")


def test_a_stopped_run_keeps_its_partial_text_in_history(page, app):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def stopped_run():\n")
    page.get_by_label("Max tokens", exact=True).fill("400")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#live")).to_contain_text(re.compile(r"\S{3}"))
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#status")).to_contain_text("Stopped")
    partial = page.locator("#live").text_content()
    item = page.locator("#history-list li[data-status='stopped']").first
    expect(item).to_be_visible(timeout=10_000)
    item.get_by_role("link", name="Open").click()
    shown = page.locator("#result pre").text_content()
    assert shown.startswith(partial[: len(partial) // 2])
    assert len(shown) < 400 * 2


def test_share_by_link_frozen_with_tooltips_then_revoke(page, app, browser):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def shared_frozen():\n")
    generate(page)
    save_as(page, "Shared <b>demo</b>")
    page.get_by_role("link", name="Share").click()
    page.get_by_role("button", name="Make a new link").click()
    url = page.locator(".share-url").first.input_value()
    page.get_by_role("link", name="Back to the session").click()
    wait_for_autosave(
        page, lambda: page.get_by_label("Prompt").fill("def edited_later():\n"), "edited_later"
    )

    stranger = browser.new_context()
    viewer = stranger.new_page()
    response = viewer.goto(url)
    assert response.status == 200
    assert response.headers["x-robots-tag"].startswith("noindex")
    expect(viewer.get_by_role("heading", name="Shared <b>demo</b>")).to_be_visible()
    expect(viewer.locator(".prompt-shown")).to_have_text("def shared_frozen():\n")
    check_tooltip(viewer, ".shared-run")
    viewer.get_by_role("link", name="Open in playground").click()
    viewer.get_by_role("button", name="Open in playground").click()
    expect(viewer.get_by_label("Prompt")).to_have_value("def shared_frozen():\n")

    page.get_by_role("link", name="Share").click()
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator(".share-url")).to_have_count(0)
    assert viewer.goto(url).status == 404
    stranger.close()


def test_a_team_session_is_seen_by_a_teammate_and_not_by_an_anonymous_visitor(browser, app):
    alice_context, bob_context, anon_context = (browser.new_context() for _ in range(3))
    alice, bob, anon = (c.new_page() for c in (alice_context, bob_context, anon_context))
    sign_in(alice, app, "alice")
    alice.goto(app.url + "/")
    alice.get_by_label("Prompt").fill("def team_demo():\n")
    save_as(alice, "Team demo")
    session_url = alice.url
    alice.get_by_role("link", name="Share").click()
    alice.get_by_label("Team (every signed-in user)").check()
    alice.get_by_role("button", name="Apply").click()

    sign_in(bob, app, "bob")
    bob.goto(app.url + "/team/")
    bob.get_by_role("link", name="Team demo").click()
    expect(bob.locator(".prompt-shown")).to_have_text("def team_demo():\n")
    bob.get_by_role("button", name="Open in playground").click()
    expect(bob.get_by_label("Prompt")).to_have_value("def team_demo():\n")
    expect(bob.get_by_label("Session name", exact=True)).to_have_value("Team demo")

    anon.goto(app.url + "/team/")
    expect(anon.get_by_role("link", name="Team demo")).to_have_count(0)
    assert anon.goto(session_url).status == 404
    for context in (alice_context, bob_context, anon_context):
        context.close()


def test_export_then_import_gives_an_identical_session(page, app, tmp_path):
    page.goto(app.url + "/")
    page.get_by_label("Prompt").fill("def round_trip():\n")
    generate(page)
    save_as(page, "Round trip")
    with page.expect_download() as info:
        page.get_by_role("link", name="Export").click()
    path = tmp_path / "session.json"
    info.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["runs"][0]["tokens"]

    page.goto(app.url + "/sessions/")
    page.get_by_label("Session file (.json)").set_input_files(path)
    page.get_by_role("button", name="Import").click()
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    expect(page.get_by_label("Session name", exact=True)).to_have_value("Round trip")
    again = page.request.get(page.url.split("?")[0] + "export").json()
    assert again == exported
