"""The workspace in process: drafts, sessions, runs, sharing, export/import, View code, and the
security of all of it (ownership, CSRF, escaping)."""

from __future__ import annotations

import asyncio
import json

import pytest
import tooltips
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import AsyncClient, Client
from sse import parse_events, settle

from playground import history
from playground.backends import get_backend
from playground.completions import build_payload
from playground.models import Draft, Run, Session, ShareLink

pytestmark = pytest.mark.django_db(transaction=True)

FORM = {
    "backend": "offline",
    "prompt": "def add(a, b):\n",
    "temperature": "0.7",
    "top_p": "0.95",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "seed": "3",
    "max_tokens": "30",
    "logprobs": "3",
}
HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    '<div hx-get="/x" hx-trigger="load">',
]


@pytest.fixture(autouse=True)
def _unpaced(settings):
    settings.OFFLINE_MODEL_TOKENS_PER_SECOND = 0


def user(name: str):
    return get_user_model().objects.create_user(name, password="pw-" + name)


def signed_in(name: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=name))
    return client


def generate(client: Client, **changes) -> list:
    """POST /generate as htmx does, with this client's cookies, and read the whole stream."""

    async def go():
        async_client = AsyncClient()
        async_client.cookies = client.cookies
        response = await async_client.post(
            "/generate", {**FORM, **changes}, headers={"HX-Request": "true"}
        )
        if not response.streaming:
            await settle()
            return response.status_code, []
        body = b"".join([chunk async for chunk in response.streaming_content])
        await settle()
        return response.status_code, parse_events(body)

    return asyncio.run(go())


def make_session(owner, name="Mine", prompt="def f():\n", **fields) -> Session:
    session = Session.objects.create(user=owner, name=name, prompt=prompt, **fields)
    Run.objects.create(
        user=owner,
        session=session,
        prompt=prompt,
        backend="offline",
        text="    return 1\n",
        tokens=[["    ", -0.1, [["    ", -0.1], ["\t", -2.5]]], ["return 1\n", -0.7, []]],
        logprobs="real",
        status="complete",
        params={"logprobs": 2, "temperature": 0.5},
    )
    return session


# --- drafts and saving ---------------------------------------------------------------------


def test_the_draft_is_autosaved_and_prefills_the_editor_after_a_reload():
    client = Client()
    client.get("/")
    response = client.post("/draft", {**FORM, "prompt": "class Draft:\n", "temperature": "1.3"})
    assert response.status_code == 204
    page = client.get("/").content.decode()
    assert "class Draft:\n</textarea>" in page
    assert 'value="1.3"' in page
    assert Draft.objects.count() == 1


def test_an_anonymous_draft_and_sessions_move_to_the_account_on_sign_in():
    user("ann")
    client = Client()
    client.post("/draft", {**FORM, "prompt": "x = 'before sign-in'\n"})
    client.post("/sessions/save", {**FORM, "name": "anon work"})
    client.post("/accounts/login/", {"username": "ann", "password": "pw-ann"})
    assert Session.objects.get(name="anon work").user.username == "ann"
    assert "before sign-in" in client.get("/").content.decode()
    assert "anon work" in client.get("/sessions/").content.decode()


def test_runs_are_recorded_and_saving_attaches_the_editors_runs():
    client = Client()
    client.get("/")
    status, events = generate(client)
    assert status == 200
    run = Run.objects.get()
    assert run.session is None
    assert run.status == "complete"
    assert run.text
    assert run.tokens
    assert run.logprobs == "real"
    assert run.params["temperature"] == 0.7
    assert "api_key" not in json.dumps(run.params)
    assert run.ttft_ms is not None
    assert run.total_ms >= run.ttft_ms
    assert 'id="history-list" hx-swap-oob="afterbegin"' in events[-2].data

    response = client.post("/sessions/save", {**FORM, "name": "Adder"})
    session = Session.objects.get(name="Adder")
    assert response.status_code == 302
    assert response["Location"] == f"/sessions/{session.pk}/"
    run.refresh_from_db()
    assert run.session == session

    generate(client, session=str(session.pk))
    assert session.runs.count() == 2


def test_a_stopped_run_is_saved_with_the_text_that_had_arrived(settings):
    settings.OFFLINE_MODEL_TOKENS_PER_SECOND = 50
    from playground import streaming
    from playground.owners import Owner

    backend = get_backend("offline")
    from playground.forms import GenerateForm

    form = GenerateForm({**FORM, "max_tokens": "200"})
    assert form.is_valid()
    owner = Owner(None, "stopper")
    record = history.make_recorder(owner, None, history.params_from_cleaned(form.cleaned_data))

    async def stop_midway():
        body = streaming.relay(backend, form.to_request(), record=record)
        seen = ""

        async def consume():
            nonlocal seen
            async for chunk in body:
                seen += chunk.decode()

        task = asyncio.create_task(consume())
        while seen.count("<span>") < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # what Django does when the browser disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle()

    asyncio.run(stop_midway())
    run = Run.objects.get(owner_key="stopper")
    assert run.status == "stopped"
    assert run.text
    assert len(run.tokens) < 200


def test_a_failed_run_keeps_its_error(completions_backend):
    completions_backend.script(dialect="vllm", status=401)
    client = Client()
    generate(client, backend="completions")
    run = Run.objects.get()
    assert run.status == "failed"
    assert run.error_kind == "auth"
    assert run.error_message


# --- sessions ------------------------------------------------------------------------------


def test_the_list_is_newest_first_searchable_and_paginated():
    owner = user("lee")
    for i in range(25):
        make_session(owner, name=f"s{i:02}", prompt=f"prompt {i}")
    client = signed_in("lee")
    page = client.get("/sessions/").content.decode()
    assert page.index("s24") < page.index("s23")
    assert "s04" not in page
    assert "Page 1 of 2" in page
    assert "s04" in client.get("/sessions/?page=2").content.decode()
    found = client.get("/sessions/?q=prompt 7").content.decode()
    assert "s07" in found
    assert "s08" not in found


def test_rename_duplicate_and_delete_after_confirmation():
    owner = user("rae")
    session = make_session(owner)
    client = signed_in("rae")
    client.post(f"/sessions/{session.pk}/rename", {"name": "  Renamed  "})
    session.refresh_from_db()
    assert session.name == "Renamed"
    response = client.post(f"/sessions/{session.pk}/duplicate")
    copy = Session.objects.exclude(pk=session.pk).get()
    assert copy.name == "Renamed (copy)"
    assert copy.runs.count() == 1
    assert response["Location"] == f"/sessions/{copy.pk}/"
    confirm = client.get(f"/sessions/{session.pk}/delete")
    assert b"cannot be undone" in confirm.content
    assert Session.objects.filter(pk=session.pk).exists()
    client.post(f"/sessions/{session.pk}/delete")
    assert not Session.objects.filter(pk=session.pk).exists()


def test_a_past_run_reopens_with_tokens_and_tooltip_data():
    owner = user("pat")
    session = make_session(owner)
    run = session.runs.get()
    client = signed_in("pat")
    response = client.get(f"/runs/{run.pk}/", headers={"HX-Request": "true"})
    html = response.content.decode()
    assert 'id="result" hx-swap-oob="innerHTML"' in html
    assert 'class="t p9' in html
    assert "run-data" in html
    assert tooltips.entries(html)[0] == ["    ", -0.1, [["    ", -0.1], ["\t", -2.5]]]
    page = client.get(f"/sessions/{session.pk}/?run={run.pk}").content.decode()
    assert "run-data" in page


def test_restore_puts_a_runs_parameters_back_into_the_editor():
    owner = user("ron")
    session = make_session(owner)
    run = session.runs.get()
    run.params = {**run.params, "temperature": 1.7}
    run.save()
    client = signed_in("ron")
    client.post(f"/runs/{run.pk}/restore")
    assert 'value="1.7"' in client.get(f"/sessions/{session.pk}/").content.decode()


# --- sharing -------------------------------------------------------------------------------


def test_a_share_link_is_a_frozen_read_only_snapshot_and_revoking_it_is_a_404_at_once():
    owner = user("sam")
    session = make_session(owner, prompt="def shared():\n")
    client = signed_in("sam")
    client.post(f"/sessions/{session.pk}/links")
    link = ShareLink.objects.get()
    assert len(link.token) >= 32  # 24 random bytes
    session.refresh_from_db()
    session.prompt = "def later_edit():\n"
    session.save()
    viewer = Client()
    response = viewer.get(f"/share/{link.token}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "def shared():" in page
    assert "later_edit" not in page
    assert "run-data" in page
    assert 'class="t p9' in page
    assert response["X-Robots-Tag"].startswith("noindex")
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["Cache-Control"] == "private, no-store"
    assert viewer.post(f"/share/{link.token}/").status_code == 405

    copied = viewer.post(f"/share/{link.token}/copy")
    copy = Session.objects.exclude(pk=session.pk).get()
    assert copied["Location"] == f"/sessions/{copy.pk}/"
    assert copy.user is None
    assert copy.prompt == "def shared():\n"
    assert copy.runs.count() == 1

    client.post(f"/sessions/{session.pk}/links/{link.pk}/revoke")
    assert viewer.get(f"/share/{link.token}/").status_code == 404
    client.post(f"/sessions/{session.pk}/links")
    assert ShareLink.objects.filter(revoked_at__isnull=True).count() == 1


def test_team_sessions_are_in_the_gallery_for_signed_in_users_only():
    owner, _ = user("tia"), user("tom")
    session = make_session(owner, name="Team demo", visibility="team")
    make_session(owner, name="Private one")
    other = signed_in("tom")
    gallery = other.get("/team/").content.decode()
    assert "Team demo" in gallery
    assert "Private one" not in gallery
    assert other.get(f"/sessions/{session.pk}/").status_code == 200
    anonymous = Client()
    assert "Team demo" not in anonymous.get("/team/").content.decode()
    assert anonymous.get(f"/sessions/{session.pk}/").status_code == 404


# --- export, import, View code -----------------------------------------------------------


def test_export_then_import_gives_an_identical_session():
    owner = user("eve")
    session = make_session(owner)
    client = signed_in("eve")
    exported = client.get(f"/sessions/{session.pk}/export")
    assert "attachment" in exported["Content-Disposition"]
    upload = SimpleUploadedFile("s.json", exported.content, "application/json")
    response = client.post("/sessions/import", {"file": upload})
    imported = Session.objects.exclude(pk=session.pk).get()
    assert response["Location"] == f"/sessions/{imported.pk}/"
    again = client.get(f"/sessions/{imported.pk}/export")
    assert json.loads(again.content) == json.loads(exported.content)


def test_import_refuses_what_is_not_an_export():
    user("ian")
    client = signed_in("ian")
    upload = SimpleUploadedFile("s.json", b'{"hello": 1}', "application/json")
    response = client.post("/sessions/import", {"file": upload})
    assert response.status_code == 400
    assert b"not a playground session export" in response.content


def test_export_and_import_sessions_commands_move_everything(tmp_path):
    owner = user("max")
    make_session(owner, name="one")
    make_session(owner, name="two", visibility="team")
    path = tmp_path / "sessions.jsonl"
    call_command("export_sessions", str(path))
    before = [json.loads(line) for line in path.read_text().splitlines()]
    Session.objects.all().delete()
    call_command("import_sessions", str(path))
    call_command("export_sessions", str(tmp_path / "again.jsonl"))
    after = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert after == before


@pytest.mark.parametrize("backend_id", ["offline", "completions"])
def test_view_code_sends_the_exact_payload_and_never_the_key(completions_backend, backend_id):
    client = Client()
    response = client.post("/code", {**FORM, "backend": backend_id, "stop": ["\\n\\n"]})
    page = response.content.decode()
    from html import unescape

    from playground.forms import GenerateForm

    form = GenerateForm({**FORM, "backend": backend_id, "stop": ["\\n\\n"]})
    assert form.is_valid()
    expected = build_payload(form.selected_backend, form.to_request(), stream=True)
    text = unescape(page)
    body = text.split("-d '", 1)[1].split("'</code>", 1)[0]
    assert json.loads(body) == expected
    assert "test-key-0123456789abcdef" not in text
    if backend_id == "completions":
        assert "$COMPLETIONS_API_KEY" in text
        assert "process.env.COMPLETIONS_API_KEY" in text
        assert "os.environ['COMPLETIONS_API_KEY']" in text


# --- security ------------------------------------------------------------------------------

ACTIONS = ["view", "run", "edit", "rename", "delete", "share", "revoke", "export"]


def act(client: Client, action: str, session: Session, link: ShareLink):
    pk = session.pk
    if action == "view":
        return client.get(f"/sessions/{pk}/").status_code
    if action == "run":
        return generate(client, session=str(pk))[0]
    if action == "edit":
        return client.post("/draft", {**FORM, "session": pk, "prompt": "hacked"}).status_code
    if action == "rename":
        return client.post(f"/sessions/{pk}/rename", {"name": "hacked"}).status_code
    if action == "delete":
        return client.post(f"/sessions/{pk}/delete").status_code
    if action == "share":
        return client.post(f"/sessions/{pk}/links").status_code
    if action == "revoke":
        return client.post(f"/sessions/{pk}/links/{link.pk}/revoke").status_code
    return client.get(f"/sessions/{pk}/export").status_code


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("actor", ["owner", "other", "anonymous"])
def test_private_sessions_are_404_to_everyone_but_their_owner(actor, action):
    owner, _ = user("own"), user("oth")
    session = make_session(owner, name="secret", prompt="def secret():\n")
    link = ShareLink.objects.create(session=session, token="t" * 32, snapshot={})
    client = {"owner": signed_in("own"), "other": signed_in("oth"), "anonymous": Client()}[actor]
    status = act(client, action, session, link)
    if actor == "owner":
        assert status in (200, 204, 302)
        return
    assert status == 404
    session.refresh_from_db()
    assert (session.name, session.prompt) == ("secret", "def secret():\n")
    assert session.runs.count() == 1
    assert ShareLink.objects.filter(revoked_at__isnull=True).count() == 1


@pytest.mark.parametrize("action", ACTIONS)
def test_a_share_token_gives_read_only_access_and_no_way_to_write(action):
    owner = user("own")
    session = make_session(owner, name="shared", visibility="link")
    link = ShareLink.objects.create(session=session, token="s" * 32, snapshot={"name": "x"})
    viewer = Client()
    assert viewer.get(f"/share/{link.token}/").status_code == 200
    # The token in place of an id reaches nothing; a write on the share URL is refused.
    assert viewer.get(f"/sessions/{link.token}/").status_code == 404
    assert viewer.post(f"/share/{link.token}/", {"name": "hacked"}).status_code == 405
    assert act(viewer, action, session, link) == 404
    session.refresh_from_db()
    assert session.name == "shared"
    assert session.runs.count() == 1
    assert not ShareLink.objects.get().revoked_at


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/draft", {**FORM, "prompt": "changed"}),
        ("/sessions/save", {**FORM, "name": "new"}),
        ("/sessions/{pk}/rename", {"name": "changed"}),
        ("/sessions/{pk}/duplicate", {}),
        ("/sessions/{pk}/delete", {}),
        ("/sessions/{pk}/links", {}),
        ("/sessions/{pk}/visibility", {"visibility": "team"}),
        ("/runs/{run}/restore", {}),
        ("/generate", {**FORM, "session": "{pk}"}),
    ],
)
def test_a_post_without_the_csrf_token_changes_nothing(path, data):
    owner = user("csr")
    session = make_session(owner)
    run = session.runs.get()
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    data = {k: (v.format(pk=session.pk) if isinstance(v, str) else v) for k, v in data.items()}
    before = (Session.objects.count(), Run.objects.count(), Draft.objects.count())
    response = client.post(path.format(pk=session.pk, run=run.pk), data)
    assert response.status_code == 403
    assert (Session.objects.count(), Run.objects.count(), Draft.objects.count()) == before
    session.refresh_from_db()
    assert session.name == "Mine"
    assert session.visibility == "private"
    assert not ShareLink.objects.exists()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_names_prompts_and_outputs_are_escaped_on_every_page(hostile):
    owner, _ = user("esc"), user("see")
    session = make_session(owner, name=hostile, prompt=hostile, visibility="team")
    run = session.runs.get()
    run.text, run.tokens = hostile, [[hostile, -0.2, [[hostile, -0.2]]]]
    run.save()
    client = signed_in("esc")
    client.post(f"/sessions/{session.pk}/duplicate")
    linked = Session.objects.exclude(pk=session.pk).get()
    client.post(f"/sessions/{linked.pk}/links")
    token = ShareLink.objects.get().token
    pages = [
        client.get("/sessions/"),
        client.get(f"/sessions/{session.pk}/"),
        client.get(f"/sessions/{session.pk}/?run={run.pk}"),
        client.get(f"/sessions/{linked.pk}/share"),
        client.get(f"/sessions/{session.pk}/delete"),
        signed_in("see").get("/team/"),
        signed_in("see").get(f"/sessions/{session.pk}/"),
        Client().get(f"/share/{token}/"),
    ]
    for response in pages:
        assert response.status_code == 200
        html = response.content.decode()
        assert hostile not in html, response.request["PATH_INFO"]


def test_require_login_guards_everything_but_shared_links(settings):
    settings.PLAYGROUND_REQUIRE_LOGIN = True
    owner = user("req")
    session = make_session(owner, visibility="link")
    link = ShareLink.objects.create(session=session, token="r" * 32, snapshot={"name": "open"})
    anonymous = Client()
    for path in ["/", "/sessions/", "/team/", f"/sessions/{session.pk}/"]:
        response = anonymous.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert anonymous.post("/generate", FORM).status_code == 302
    assert anonymous.get(f"/share/{link.token}/").status_code == 200
    assert anonymous.get("/accounts/login/").status_code == 200
    assert signed_in("req").get("/").status_code == 200


def test_the_admin_manages_sessions_runs_and_links_and_the_sign_in_page_is_ours(admin_client):
    owner = user("adm")
    session = make_session(owner, name="In the admin")
    ShareLink.objects.create(session=session, token="a" * 32, snapshot={})
    for path in [
        "/admin/playground/session/",
        f"/admin/playground/session/{session.pk}/change/",
        "/admin/playground/run/",
        "/admin/playground/sharelink/",
        "/admin/auth/user/",
    ]:
        response = admin_client.get(path)
        assert response.status_code == 200, path
        assert "a" * 32 not in response.content.decode()  # a link's token stays secret
    page = Client().get("/accounts/login/").content.decode()
    assert "/static/playground/app.css" in page
    assert "Sign in" in page
