"""With known keys configured, no URL of the app ever shows a key or its last 8 characters.

Every pattern in the URL configuration is resolved and requested (GET, HEAD and a POST, as
htmx and without it); patterns added later (share pages, admin) are crawled automatically, and
a pattern with arguments gets sample values from ARGUMENTS.
"""

from __future__ import annotations

import re

import pytest
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
