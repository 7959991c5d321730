"""Abuse limits: the rate limit, the per-user and per-process caps on concurrent generations.

In process against the local-memory cache and against Redis at 127.0.0.1:6379, and against
uvicorn for what needs real connections (a closed stream freeing its slot at once).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import run_app
from django.core.cache import caches
from django.http import HttpRequest
from django.test import AsyncClient
from live import FORM, generate, session

from playground import limits

REDIS_URL = "redis://127.0.0.1:6379/15"


def request_from(address: str, forwarded: str | None = None) -> HttpRequest:
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = address
    if forwarded is not None:
        request.META["HTTP_X_FORWARDED_FOR"] = forwarded
    return request


def test_ipv6_addresses_of_one_slash_64_count_as_one_client():
    a = limits.identity(request_from("2001:db8:1:2:aaaa::1"))
    b = limits.identity(request_from("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    c = limits.identity(request_from("2001:db8:1:3::1"))
    assert a == b == "ip:2001:db8:1:2::/64"
    assert c != a
    assert limits.identity(request_from("::ffff:10.1.2.3")) == "ip:10.1.2.3"
    assert limits.identity(request_from("10.1.2.3")) == "ip:10.1.2.3"


def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(settings):
    spoofed = request_from("203.0.113.9", forwarded="198.51.100.1")
    assert limits.identity(spoofed) == "ip:203.0.113.9"
    settings.PLAYGROUND_TRUST_X_FORWARDED_FOR = True
    # Only the last entry is the proxy's own; what the client wrote before it is not believed.
    proxied = request_from("10.0.0.2", forwarded="198.51.100.1, 192.0.2.7")
    assert limits.identity(proxied) == "ip:192.0.2.7"


async def post(client: AsyncClient, address: str = "127.0.0.1", **changes):
    # The test client always connects from 127.0.0.1: the address comes as a trusted proxy's.
    response = await client.post(
        "/generate",
        {**FORM, **changes},
        headers={"HX-Request": "true", "X-Forwarded-For": address},
    )
    if response.streaming:
        body = b"".join([chunk async for chunk in response.streaming_content])
    else:
        body = response.content
    return response, body.decode()


@pytest.fixture(params=["locmem", "redis"])
def cache_backend(request, settings):
    if request.param == "redis":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": REDIS_URL,
            }
        }
    caches["default"].clear()
    yield request.param
    caches["default"].clear()


def test_the_rate_limit_answers_429_with_retry_after_and_calls_no_upstream(
    settings, completions_backend, cache_backend
):
    settings.PLAYGROUND_RATE_LIMIT = 3
    settings.PLAYGROUND_RATE_LIMIT_WINDOW = 3600  # a test never straddles a window
    settings.PLAYGROUND_TRUST_X_FORWARDED_FOR = True

    async def go():
        client = AsyncClient()
        answers = [await post(client, "2001:db8:7:7::1") for _ in range(3)]
        # Another address of the same /64 is the same client.
        answers.append(await post(client, "2001:db8:7:7:dead:beef::2"))
        answers.append(await post(client, "2001:db8:7:8::1"))  # another /64: its own budget
        return answers

    answers = asyncio.run(go())
    assert [r.status_code for r, _ in answers] == [200, 200, 200, 429, 200]
    refused, body = answers[3]
    assert 1 <= int(refused["Retry-After"]) <= 3600
    assert "Too many generations" in body
    assert 'hx-swap-oob="innerHTML"' in body  # lands in the status line
    assert len(completions_backend.requests) == 4


def test_signed_in_users_are_limited_per_user_not_per_address(
    settings, completions_backend, cache_backend
):
    """Two users at one address have a budget each; one user at two addresses has one."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    settings.PLAYGROUND_RATE_LIMIT = 2
    settings.PLAYGROUND_RATE_LIMIT_WINDOW = 3600  # a test never straddles a window
    settings.PLAYGROUND_TRUST_X_FORWARDED_FOR = True

    def signed_in(name: str) -> AsyncClient:
        user = get_user_model().objects.create_user(name, password=f"pw-{name}-0123")
        sync = Client()
        sync.force_login(user)
        client = AsyncClient()
        client.cookies = sync.cookies
        return client

    ann, bob = signed_in("ann"), signed_in("bob")

    async def go():
        return [
            await post(ann, "192.0.2.10"),
            await post(ann, "198.51.100.20"),  # ann again, elsewhere: the same budget
            await post(ann, "203.0.113.30"),  # over it, from a third address
            await post(bob, "192.0.2.10"),  # bob, at ann's first address: his own
            await post(bob, "192.0.2.10"),
            await post(bob, "198.51.100.20"),
            await post(AsyncClient(), "192.0.2.10"),  # an anonymous visitor there: its own
        ]

    answers = asyncio.run(go())
    assert [r.status_code for r, _ in answers] == [200, 200, 429, 200, 200, 429, 200]
    assert "Too many generations" in answers[2][1]
    assert int(answers[5][0]["Retry-After"]) >= 1
    assert len(completions_backend.requests) == 5


def test_the_limited_view_returns_a_response_not_a_coroutine(settings, completions_backend):
    # django-ratelimit#293: a sync decorator on an async view returned an unawaited coroutine.
    settings.PLAYGROUND_RATE_LIMIT = 1
    from django.test import Client

    client = Client()
    data = {**FORM}
    assert client.post("/generate", data).status_code == 200
    response = client.post("/generate", data)
    assert response.status_code == 429
    assert "Too many generations" in response.content.decode()  # the whole page, without JS
    assert response["Retry-After"]


def test_the_counter_is_atomic_under_concurrent_admissions(settings, cache_backend):
    settings.PLAYGROUND_RATE_LIMIT = 10
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 0

    async def go():
        return await asyncio.gather(*[limits.admit(request_from("192.0.2.50")) for _ in range(40)])

    results = asyncio.run(go())
    slots = [r for r in results if isinstance(r, limits.Slot)]
    assert len(slots) == 10
    for slot in slots:
        slot.release()
    assert limits.running() == 0


def test_per_user_slots_are_capped_and_released(settings, cache_backend):
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 2

    async def go():
        who = request_from("192.0.2.60")
        first, second, third = [await limits.admit(who) for _ in range(3)]
        assert isinstance(third, limits.Refusal)
        assert third.status == 429
        first.release()
        first.release()  # idempotent: a double release must not free a slot it does not hold
        fourth = await limits.admit(who)
        fifth = await limits.admit(who)
        assert isinstance(fourth, limits.Slot)
        assert isinstance(fifth, limits.Refusal)
        other = await limits.admit(request_from("192.0.2.61"))
        assert isinstance(other, limits.Slot)
        for slot in (second, fourth, other):
            slot.release()

    asyncio.run(go())
    assert limits.running() == 0


async def body_holding_a_slot(address: str):
    """A run's streamed body holding its client's generation slot, as the generate view makes
    it: the client's request and the body."""
    from playground import streaming
    from playground.backends import get_backend
    from playground.completions import CompletionRequest

    who = request_from(address)
    slot = await limits.admit(who)
    request = CompletionRequest(model="bigcode/starcoder2-7b", prompt="def f():", max_tokens=4)
    return who, streaming.relay(get_backend("completions"), request, on_end=slot.release)


def test_a_stream_that_is_never_started_still_frees_its_slot(settings, completions_backend):
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 1

    async def go():
        who, body = await body_holding_a_slot("192.0.2.70")
        del body  # dropped before its first chunk, as when the client leaves at once
        return await limits.admit(who)

    again = asyncio.run(go())
    assert isinstance(again, limits.Slot)
    again.release()


def test_a_stream_frees_its_slot_when_it_ends_and_not_before(settings, completions_backend):
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 1

    async def go():
        who, body = await body_holding_a_slot("192.0.2.71")
        messages = [await anext(body)]
        while_running = await limits.admit(who)  # the run still holds the user's one slot
        messages += [message async for message in body]
        return while_running, messages, await limits.admit(who)

    while_running, messages, after = asyncio.run(go())
    assert isinstance(while_running, limits.Refusal)
    assert messages[-1].startswith(b"event: done\n")
    assert isinstance(after, limits.Slot)
    after.release()


# --- against uvicorn: real connections -----------------------------------------------------


@pytest.fixture
def capped_app(tmp_path, upstream):
    with run_app(
        tmp_path,
        COMPLETIONS_BASE_URL=upstream.base_url,
        PLAYGROUND_MAX_CONCURRENT_PER_USER="2",
        UPSTREAM_MAX_CONNECTIONS="4",
        PLAYGROUND_MAX_CONCURRENT="3",
    ) as server:
        yield server


def open_stream(client, **changes):
    """Start a generation and read until it is running; the caller closes it."""
    stream = client.stream("POST", "/generate", data={**FORM, **changes})
    response = stream.__enter__()
    assert response.status_code == 200
    chunks = response.iter_bytes()
    next(chunks)  # the run has started (an abandoned iterator would close the stream)
    return stream, chunks


def test_a_third_concurrent_stream_is_refused_and_a_closed_one_frees_its_slot(capped_app, upstream):
    for _ in range(4):
        upstream.script(fail="stall_before_first_byte", stall=30)
    client = session(capped_app.url)
    first = open_stream(client)
    second = open_stream(client)
    third = generate(client)
    assert third.status_code == 429, third.text[:3000]
    assert "generations running" in third.text
    first[0].__exit__(None, None, None)  # the tab is closed
    deadline = time.monotonic() + 5
    while True:
        with client.stream("POST", "/generate", data=FORM) as response:
            if response.status_code == 200:
                break
        assert time.monotonic() < deadline, "the closed stream's slot was never freed"
        time.sleep(0.1)
    second[0].__exit__(None, None, None)


def test_the_process_cap_answers_busy_below_the_pool_size(tmp_path, upstream):
    for _ in range(4):
        upstream.script(fail="stall_before_first_byte", stall=30)
    with run_app(
        tmp_path,
        COMPLETIONS_BASE_URL=upstream.base_url,
        PLAYGROUND_MAX_CONCURRENT_PER_USER="0",
        UPSTREAM_MAX_CONNECTIONS="4",
        PLAYGROUND_MAX_CONCURRENT="3",
    ) as app:
        client = session(app.url)
        streams = [open_stream(client) for _ in range(3)]
        busy = generate(client)
        for stream, _ in streams:
            stream.__exit__(None, None, None)
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert "busy" in busy.text


def test_the_counters_move_to_redis_when_the_cache_setting_does(settings):
    """The limits keep one cache object per process (limits._counters); a changed CACHES
    setting (here, a test's; in production, a restart) must not leave them counting in the
    old place."""
    settings.PLAYGROUND_RATE_LIMIT = 50
    settings.PLAYGROUND_RATE_LIMIT_WINDOW = 3600
    key_for = "playground:rate:ip:192.0.2.77:{}".format
    bucket = int(time.time() // 3600)
    assert limits._rate_limit("ip:192.0.2.77") is None
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    redis = caches["default"]
    redis.delete(key_for(bucket))
    assert limits._rate_limit("ip:192.0.2.77") is None
    assert redis.get(key_for(bucket)) == 1, "counted in Redis, not in the old local memory"
    redis.delete(key_for(bucket))
