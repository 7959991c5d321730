"""Hostile text through the workspace: session names, saved prompts and parameters, recorded
runs (tokens and alternatives), the sessions list and its search, the history panel, a past run,
share settings and share pages, the team gallery, the delete confirmation, and an export/import
round trip.

Each payload of tests/hostile.py goes in the way a user (or a model) would put it there, through
the views and the real run recorder; every page that shows it must hold no injected element or
attribute (`assert_inert`) and show the payload as text. The browser half is in
tests/test_browser_security.py.
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hostile import PAYLOADS, assert_inert, visible
from test_hostile import raw_stream
from test_workspace import FORM, generate

from playground.models import Run, Session, ShareLink

pytestmark = pytest.mark.django_db(transaction=True)

NAMES = list(PAYLOADS)
SURROGATES = re.compile("[\ud800-\udfff]")


def postable(payload: str) -> str:
    """What a form can carry: a lone surrogate cannot be encoded; NUL can (as %00)."""
    return SURROGATES.sub("\ufffd", payload)


def as_name(payload: str) -> str:
    """A session name as the app keeps it: whitespace collapsed, at most 200 characters."""
    return " ".join(visible(payload).split())[:200]


def signed_in(name: str) -> Client:
    user, _ = get_user_model().objects.get_or_create(username=name)
    client = Client()
    client.force_login(user)
    return client


def text_of(response) -> str:
    assert response.status_code == 200, (response.request["PATH_INFO"], response.status_code)
    return "".join(assert_inert(response.content.decode()).text)


@pytest.fixture
def hostile_session(request, completions_backend):
    """A session named, prompted and parametrised with the payload, with one recorded run
    whose completion token and alternatives are the payload, shared by a link."""
    payload = PAYLOADS[request.param]
    owner = signed_in("owner")
    owner.post(
        "/sessions/save",
        {**FORM, "name": postable(payload), "prompt": postable(payload), "seed": postable(payload)},
    )
    session = Session.objects.get()
    assert session.name == (as_name(payload) or "Untitled session")
    assert session.prompt == visible(payload)

    tokens = ["x = ", payload, "\n"]
    alternatives = [{"x = ": -0.1, payload: -2.0}, {payload: -0.2, "y": -1.0}, {"\n": -0.3}]
    completions_backend.script(
        status=200,
        body=raw_stream(tokens, alternatives),
        headers={"Content-Type": "text/event-stream"},
    )
    status, _ = generate(
        owner,
        backend="completions",
        max_tokens="16",
        prompt=visible(payload),
        session=str(session.pk),
    )
    assert status == 200
    # Recorded, whatever the payload (a NUL or lone surrogate is stored as U+FFFD).
    run = Run.objects.get()
    assert run.status == "complete"
    assert run.text == visible("x = " + payload + "\n")
    assert run.tokens[1][0] == visible(payload)

    owner.post(f"/sessions/{session.pk}/links")
    link = ShareLink.objects.get(revoked_at__isnull=True)
    return payload, owner, session, run, link


@pytest.mark.parametrize("hostile_session", NAMES, indirect=True)
def test_hostile_names_prompts_and_runs_are_inert_on_every_workspace_page(hostile_session):
    payload, owner, session, run, link = hostile_session
    name, shown = as_name(payload), visible(payload)
    output = visible("x = " + payload + "\n")
    pk = session.pk

    # The owner's sessions list, and a search by the payload (reflected in the page).
    assert name in text_of(owner.get("/sessions/"))
    query = postable(payload).strip()[:200]
    searched = owner.get("/sessions/", {"q": query})
    text_of(searched)
    (box,) = [a for t, a in assert_inert(searched.content.decode()).elements if a.get("id") == "q"]
    assert box["value"] == visible(query)

    # The editor with its history panel, a past run in it, the panel alone, the run fragment.
    editor = owner.get(f"/sessions/{pk}/")
    text_of(editor)
    found = assert_inert(editor.content.decode())
    assert ("input", name) in [
        (t, a.get("value")) for t, a in found.elements if a.get("id") == "session-name"
    ]
    assert "".join(found.textarea).removeprefix("\n") in (shown, shown.removeprefix("\n"))
    assert output[:80].split()[0] in text_of(owner.get("/history", {"session": pk}))
    assert output in text_of(owner.get(f"/sessions/{pk}/", {"run": run.pk}))
    fragment = owner.get(f"/runs/{run.pk}/", headers={"HX-Request": "true"})
    assert output in text_of(fragment)

    # Share settings and the delete confirmation name the session.
    assert name in text_of(owner.get(f"/sessions/{pk}/share"))
    assert name in text_of(owner.get(f"/sessions/{pk}/delete"))

    # The share page and its "Open in playground" step, to someone without an account.
    viewer = Client()
    page = text_of(viewer.get(f"/share/{link.token}/"))
    assert name in page
    assert shown in page  # the prompt
    assert output in page  # the run, highlighted
    assert visible(postable(payload))[:200] in page  # the hostile parameter value
    assert name in text_of(viewer.get(f"/share/{link.token}/copy"))

    # The team gallery (and its search) and the read-only team view, for another user.
    owner.post(f"/sessions/{pk}/visibility", {"visibility": "team"})
    assert viewer.get(f"/share/{link.token}/").status_code == 404  # off "link": revoked
    teammate = signed_in("teammate")
    assert name in text_of(teammate.get("/team/"))
    text_of(teammate.get("/team/", {"q": query}))
    team_view = text_of(teammate.get(f"/sessions/{pk}/"))
    assert shown in team_view
    assert output in team_view


@pytest.mark.parametrize("hostile_session", NAMES, indirect=True)
def test_a_hostile_session_survives_export_and_import_and_stays_inert(hostile_session):
    payload, owner, session, _, _ = hostile_session
    exported = owner.get(f"/sessions/{session.pk}/export")
    data = json.loads(exported.content)
    assert data["prompt"] == visible(payload)
    assert data["runs"][0]["tokens"][1][0] == visible(payload)
    upload = SimpleUploadedFile("s.json", exported.content, "application/json")
    response = owner.post("/sessions/import", {"file": upload})
    assert response.status_code == 302
    imported = Session.objects.exclude(pk=session.pk).get()
    again = owner.get(f"/sessions/{imported.pk}/export")
    assert json.loads(again.content) == data
    editor = owner.get(f"/sessions/{imported.pk}/")
    text_of(editor)
    prompt = "".join(assert_inert(editor.content.decode()).textarea).removeprefix("\n")
    assert prompt in (visible(payload), visible(payload).removeprefix("\n"))
    imported_run = imported.runs.get()
    assert visible("x = " + payload + "\n") in text_of(
        owner.get(f"/sessions/{imported.pk}/", {"run": imported_run.pk})
    )
    assert as_name(payload) in text_of(owner.get("/sessions/"))


@pytest.mark.parametrize("name", NAMES)
def test_a_hostile_rename_is_inert_in_the_list_and_the_editor(name):
    payload = PAYLOADS[name]
    owner = signed_in("renamer")
    owner.post("/sessions/save", {**FORM, "name": "harmless"})
    session = Session.objects.get()
    baseline = owner.get("/sessions/").content.decode()
    owner.post(f"/sessions/{session.pk}/rename", {"name": postable(payload)})
    session.refresh_from_db()
    expected = as_name(payload) or "harmless"  # a blank name leaves the old one
    assert session.name == expected
    listed = owner.get("/sessions/")
    found = assert_inert(listed.content.decode(), baseline=baseline)
    assert expected in "".join(found.text)
    text_of(owner.get(f"/sessions/{session.pk}/"))
