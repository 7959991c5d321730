"""With known keys configured, no URL of the app ever shows a key or its last 8 characters.

Every pattern in the URL configuration is resolved and requested (GET, HEAD and a POST, as
htmx and without it); patterns added later are crawled automatically, and a pattern with
arguments gets sample values from ARGUMENTS. A second crawl does the same with real objects:
a signed-in superuser's session with runs recorded against the keyed backends, a live share
link (its real token), the team gallery, every admin page, the export JSON and the View code
fragment; and the stored runs, exports and the JSON-lines dump never hold a key either.
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from sse import post_stream
from test_views import FORM

NVIDIA_KEY = "nvapi-CRAWLKEY-aaaabbbbccccdddd-11112222"
COMPLETIONS_KEY = "sk-crawl-key-eeeeffffgggghhhh-33334444"
SECRET_KEY = "crawl-secret-key-" + "q" * 40
SECRETS = [NVIDIA_KEY, COMPLETIONS_KEY]
# Sample values for route converters, by argument name (extend as routes with arguments land).
ARGUMENTS = {"token": "doesnotexist", "pk": "1", "id": "1", "slug": "x"}


def patterns(resolver: URLResolver | None = None, prefix: str = "") -> list[str]:
    resolver = resolver or get_resolver()
    found = []
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found.extend(patterns(entry, route))
        elif isinstance(entry, URLPattern):
            found.append(route)
    return found


def concrete(route: str) -> str:
    route = route.lstrip("^").rstrip("$")
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ARGUMENTS.get(m.group(1), "1"), route)
    return "/" + route


@pytest.fixture
def keys_configured(settings, upstream):
    settings.NVIDIA_API_KEY = NVIDIA_KEY
    settings.NVIDIA_BASE_URL = upstream.base_url
    settings.COMPLETIONS_BASE_URL = upstream.base_url
    settings.COMPLETIONS_API_KEY = COMPLETIONS_KEY
    settings.SECRET_KEY = SECRET_KEY
    return upstream


def assert_no_secret(where: str, body: bytes | str, headers) -> None:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text += "\n" + "\n".join(f"{k}: {v}" for k, v in dict(headers).items())
    for secret in SECRETS:
        assert secret not in text, where
        assert secret[-8:] not in text, where


def test_the_crawl_finds_every_route():
    routes = patterns()
    assert {"", "generate", "v1/models", "v1/completions"} <= set(routes)


def test_no_url_shows_a_key(keys_configured):
    upstream = keys_configured
    client = Client()
    for route in patterns():
        url = concrete(route)
        for method in ("get", "head", "options"):
            response = getattr(client, method)(url)
            assert response.status_code < 500, (method, url)
            assert_no_secret(f"{method} {url}", response.content, response.headers)
        for backend in ("nvidia", "completions", "offline"):
            form = {**FORM, "backend": backend, "max_tokens": "8"}
            upstream.script(status=401, body={"error": {"message": f"bad key {COMPLETIONS_KEY}"}})
            response = client.post(url, form)
            assert response.status_code < 500, ("post", url)
            assert_no_secret(f"post {url}", response.content, response.headers)
            upstream.script(status=401, body={"error": {"message": f"bad key {NVIDIA_KEY}"}})
            status, headers, events = post_stream(url, form)
            assert status < 500, ("htmx post", url)
            assert_no_secret(f"htmx post {url}", "".join(e.data for e in events), headers)
    # And the JSON API of the offline model, with an Authorization header of its own.
    response = Client().post(
        "/v1/completions",
        '{"model": "x", "prompt": "a"}',
        content_type="application/json",
        headers={"Authorization": f"Bearer {NVIDIA_KEY}"},
    )
    assert_no_secret("v1/completions", response.content, response.headers)


def crawl_with(client: Client, arguments: dict, *, posts: bool, skip=()) -> int:
    """GET, HEAD (and a form POST) every route with these arguments; how many answered 2xx."""
    ok = 0
    for route in patterns():
        if route.startswith("admin/") or any(part in route for part in skip):
            continue
        url = "/" + re.sub(
            r"<(?:\w+:)?(\w+)>", lambda m: str(arguments.get(m.group(1), "1")), route
        )
        for method in ("get", "head"):
            response = getattr(client, method)(url)
            assert response.status_code < 500, (method, url)
            assert_no_secret(f"{method} {url}", response.content, response.headers)
            ok += response.status_code < 300
        if posts:
            for backend in ("nvidia", "completions"):
                response = client.post(url, {**FORM, "backend": backend, "max_tokens": "8"})
                assert response.status_code < 500, ("post", url)
                body = b"".join(response) if response.streaming else response.content
                assert_no_secret(f"post {url}", body, response.headers)
    return ok


def test_no_page_of_a_real_workspace_shows_a_key(keys_configured, tmp_path):
    from test_workspace import generate

    from playground import transfer
    from playground.models import Run, Session, ShareLink

    upstream = keys_configured
    upstream.script(tokens=["x", " = ", "1"])
    upstream.script(tokens=["y", " = ", "2"])
    boss = get_user_model().objects.create_superuser("boss", password="boss-pw-0123")
    owner = Client()
    owner.force_login(boss)
    owner.get("/")
    for backend in ("nvidia", "completions"):
        status, _ = generate(owner, backend=backend, max_tokens="8", logprobs="2")
        assert status == 200
    assert owner.post("/sessions/save", {**FORM, "backend": "nvidia", "name": "keys"}).status_code
    session = Session.objects.get()
    assert session.runs.count() == 2
    owner.post(f"/sessions/{session.pk}/links")
    link = ShareLink.objects.get()
    team = Session.objects.create(user=boss, name="team one", visibility="team")
    run = session.runs.first()

    # Saved runs' parameters, the export, the share snapshot and the dump carry no key.
    stored = json.dumps(
        [list(Run.objects.values("params", "prompt", "text", "error_message"))], default=str
    )
    exported = json.dumps(transfer.export_session(session))
    call_command("export_sessions", str(tmp_path / "all.jsonl"))
    for where, text in {
        "runs": stored,
        "export": exported,
        "snapshot": json.dumps(link.snapshot),
        "dump": (tmp_path / "all.jsonl").read_text(),
    }.items():
        assert_no_secret(where, text, {})

    # Every route, for the owner (session, run, link and token real) and for an anonymous
    # visitor holding the share link, then the share page and export explicitly.
    arguments = {"pk": session.pk, "link": link.pk, "token": link.token}
    dangerous = ("/delete", "/revoke", "/visibility", "/import", "logout")
    assert crawl_with(owner, arguments, posts=False) > 10
    assert crawl_with(owner, {**arguments, "pk": run.pk}, posts=False)
    assert crawl_with(owner, {**arguments, "pk": team.pk}, posts=True, skip=dangerous)
    assert crawl_with(Client(), arguments, posts=True, skip=dangerous)
    for client, url in [
        (Client(), f"/share/{link.token}/"),
        (Client(), f"/share/{link.token}/copy"),
        (owner, f"/sessions/{session.pk}/export"),
        (owner, f"/sessions/{session.pk}/share"),
        (owner, f"/sessions/{session.pk}/?run={run.pk}"),
        (owner, f"/runs/{run.pk}/"),
        (owner, "/team/"),
        (owner, "/sessions/"),
        (owner, f"/history?session={session.pk}"),
    ]:
        response = client.get(url, headers={"HX-Request": "true"} if "/runs/" in url else {})
        assert response.status_code == 200, url
        assert_no_secret(url, response.content, response.headers)
    for backend in ("nvidia", "completions"):
        code = owner.post("/code", {**FORM, "backend": backend})
        assert code.status_code == 200
        assert_no_secret(f"code {backend}", code.content, code.headers)

    # Every admin page of every registered model, as a superuser.
    admin_urls = ["/admin/", "/admin/playground/", "/admin/auth/"]
    for model, _ in admin.site._registry.items():
        meta = model._meta
        base = f"/admin/{meta.app_label}/{meta.model_name}/"
        admin_urls += [base, base + "add/", base + "?q=key"]
        first = model.objects.order_by("pk").first()
        if first is not None:
            admin_urls += [f"{base}{first.pk}/change/", f"{base}{first.pk}/history/"]
            admin_urls += [f"{base}{first.pk}/delete/"]
    for url in admin_urls:
        response = owner.get(url)
        assert response.status_code == 200, url
        assert_no_secret(url, response.content, response.headers)
    assert any("/run/" in url and "/change/" in url for url in admin_urls)
