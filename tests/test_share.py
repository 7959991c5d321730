"""What a share link exposes, and nothing more.

A link shows the frozen snapshot taken when it was made: the session's name, prompt,
parameters, model and runs (with highlighting and tooltips). Not the owner (name, email, id),
not the session's id, not the owner's other sessions or runs, not runs made after the link,
not the upstream's URL; and the page offers no action but "Open in playground" (a private copy
for the viewer). The headers keep it out of indexes, caches and Referer headers; a revoked link,
or one of a session taken off "link" or deleted, is a 404 on the next request.

The ownership matrix (no write through a share token) and the basic snapshot/revoke flow are in
tests/test_workspace.py; hostile content on share pages in tests/test_hostile_sessions.py.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from hostile import Inventory
from test_workspace import make_session

from playground.models import Run, Session, ShareLink

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM_URL = "http://127.0.0.1:9/private-upstream/v1"


@pytest.fixture
def shared(settings):
    settings.COMPLETIONS_BASE_URL = UPSTREAM_URL
    settings.COMPLETIONS_MODEL = "bigcode/starcoder2-7b"
    owner = get_user_model().objects.create_user(
        "owner-name-7f3", email="owner-7f3@example.test", password="pw-owner-0123"
    )
    session = make_session(owner, name="Shared one", prompt="def shared():\n")
    session.backend, session.model = "completions", "bigcode/starcoder2-7b"
    session.save()
    other = make_session(owner, name="Other private session", prompt="def other_secret():\n")
    other.runs.update(text="other run text 9c1")
    client = Client()
    client.force_login(owner)
    client.post(f"/sessions/{session.pk}/links")
    link = ShareLink.objects.get()
    # Made after the link: not in its snapshot.
    Run.objects.create(
        user=owner, session=session, prompt="x", text="later run text 4d2", status="complete"
    )
    return client, owner, session, link


def test_the_share_page_shows_the_snapshot_and_nothing_of_its_owner(shared):
    _, owner, session, link = shared
    response = Client().get(f"/share/{link.token}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Shared one" in page
    assert "def shared():" in page
    assert "return 1" in re.sub(r"<[^>]*>", "", page)  # its run, highlighted
    assert "run-data" in page  # with tooltips
    for private in [
        owner.username,
        owner.email,
        "Other private session",
        "other_secret",
        "other run text 9c1",
        "later run text 4d2",
        UPSTREAM_URL,
        "127.0.0.1:9",
        f"/sessions/{session.pk}/",
    ]:
        assert private not in page, private


def test_the_share_page_offers_no_action_but_opening_a_copy(shared):
    _, _, session, link = shared
    page = Inventory(Client().get(f"/share/{link.token}/").content.decode())
    forms = [attrs for tag, attrs in page.elements if tag == "form"]
    assert forms == []  # no rename, delete, share, revoke, run
    links = {attrs.get("href") for tag, attrs in page.elements if tag == "a"}
    assert f"/share/{link.token}/copy" in links
    # (The navigation's own "/sessions/" is the viewer's list; no link reaches this session.)
    assert not any(href and re.match(r"/sessions/\d", href) for href in links)
    assert not [a for t, a in page.elements if t in {"textarea", "select"}]
    htmx = [a for _, a in page.elements if any(k in a for k in ("hx-post", "hx-get"))]
    assert htmx == []
    # The confirmation step's only form copies into the viewer's own workspace.
    confirm = Inventory(Client().get(f"/share/{link.token}/copy").content.decode())
    actions = [attrs.get("action") for tag, attrs in confirm.elements if tag == "form"]
    assert actions == [f"/share/{link.token}/copy"]


@pytest.mark.parametrize("path", ["", "copy"])
def test_share_responses_keep_out_of_indexes_caches_and_referers(shared, path):
    _, _, _, link = shared
    response = Client().get(f"/share/{link.token}/{path}")
    assert response.status_code == 200
    assert response["X-Robots-Tag"].startswith("noindex")
    assert response["Cache-Control"] == "private, no-store"
    # The copy step keeps a same-origin Referer for its own POST (CSRF needs an Origin);
    # the share page itself sends none.
    assert response["Referrer-Policy"] == ("no-referrer" if not path else "same-origin")
    assert b'name="robots" content="noindex' in Client().get(f"/share/{link.token}/").content


def test_a_revoked_link_is_a_404_at_once_for_the_page_and_the_copy(shared):
    owner_client, _, session, link = shared
    viewer = Client()
    assert viewer.get(f"/share/{link.token}/").status_code == 200
    owner_client.post(f"/sessions/{session.pk}/links/{link.pk}/revoke")
    assert viewer.get(f"/share/{link.token}/").status_code == 404
    assert viewer.get(f"/share/{link.token}/copy").status_code == 404
    before = Session.objects.count()
    assert viewer.post(f"/share/{link.token}/copy").status_code == 404
    assert Session.objects.count() == before


def test_a_link_dies_with_its_session_or_when_the_session_goes_private(shared):
    owner_client, _, session, link = shared
    viewer = Client()
    owner_client.post(f"/sessions/{session.pk}/visibility", {"visibility": "private"})
    assert viewer.get(f"/share/{link.token}/").status_code == 404
    owner_client.post(f"/sessions/{session.pk}/links")
    fresh = ShareLink.objects.get(revoked_at__isnull=True)
    assert fresh.token != link.token
    assert viewer.get(f"/share/{fresh.token}/").status_code == 200
    assert viewer.get(f"/share/{link.token}/").status_code == 404  # the old one stays dead
    owner_client.post(f"/sessions/{session.pk}/delete")
    assert viewer.get(f"/share/{fresh.token}/").status_code == 404


def test_unknown_tokens_and_near_misses_are_404(shared):
    _, _, _, link = shared
    viewer = Client()
    for token in [link.token[:-1], link.token + "x", link.token.upper(), "1", str(link.pk)]:
        if token != link.token:
            assert viewer.get(f"/share/{token}/").status_code == 404, token
