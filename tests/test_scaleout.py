"""Two uvicorn processes sharing Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), as in
docs/DEPLOY.md: the rate limit and the concurrent-generation cap count across both, and a stream
on one completes while the other is stopped; and a session saved through one process is served
by the other (the anonymous owner's key lives in the signed session cookie, so the same cookie
works on both when they share SECRET_KEY).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from conftest import run_app
from live import FORM, session

REDIS_URL = "redis://127.0.0.1:6379/14"
POSTGRES = "postgres://postgres@127.0.0.1:5432/"


@pytest.fixture
def shared_services():
    """A fresh Redis database and a fresh PostgreSQL database, dropped afterwards."""
    import psycopg
    import redis

    store = redis.Redis.from_url(REDIS_URL)
    try:
        store.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is needed at 127.0.0.1:6379: {exc}")
    name = f"playground_scaleout_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(POSTGRES + "postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield {"CACHE_URL": REDIS_URL, "DATABASE_URL": POSTGRES + name}
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            store.flushdb()


@pytest.fixture
def two_workers(tmp_path, upstream, shared_services):
    common = {
        **shared_services,
        "COMPLETIONS_BASE_URL": upstream.base_url,
        "PLAYGROUND_RATE_LIMIT": "6",
        # An hour: a six-request test never straddles a window boundary (fixed windows reset).
        "PLAYGROUND_RATE_LIMIT_WINDOW": "3600",
        "PLAYGROUND_MAX_CONCURRENT_PER_USER": "1",
        # The tests stand in for clients at several addresses behind one proxy.
        "PLAYGROUND_TRUST_X_FORWARDED_FOR": "true",
        # Every worker and host of a deployment shares one key (it signs the session cookie).
        "SECRET_KEY": "scaleout-shared-secret-key-" + "s" * 40,
    }
    with run_app(tmp_path / "a", **common) as a, run_app(tmp_path / "b", **common) as b:
        yield a, b


def fresh_address() -> str:
    """A client address no earlier run has used, so counters left in the shared Redis by another
    run (CI and a developer on one machine) cannot leak in: a random /64 of 2001:db8::/32, the
    documentation prefix (limits group IPv6 clients by /64)."""
    return f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"


def post(client, address: str, **changes):
    return client.post("/generate", data={**FORM, **changes}, headers={"X-Forwarded-For": address})


def test_the_rate_limit_counts_across_both_processes(two_workers):
    a, b = (session(server.url) for server in two_workers)
    address = fresh_address()
    answers = [post(client, address).status_code for client in (a, b) * 3]
    assert answers == [200] * 6
    refused = post(b, address)
    assert refused.status_code == 429
    assert "Too many generations" in refused.text
    assert post(a, address).status_code == 429
    assert post(a, fresh_address()).status_code == 200  # someone else is not limited


def test_the_concurrency_cap_counts_across_both_processes(two_workers, upstream):
    a, b = (session(server.url) for server in two_workers)
    upstream.script(fail="stall_before_first_byte", stall=30)
    address = fresh_address()
    with a.stream("POST", "/generate", data=FORM, headers={"X-Forwarded-For": address}) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        next(chunks)  # running on A
        busy = post(b, address)
        assert busy.status_code == 429
        assert "generations running" in busy.text
    # The stream on A is closed: its slot is free for B at once.
    deadline = time.monotonic() + 5
    while (answer := post(b, address)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def test_a_stream_on_one_completes_while_the_other_is_stopped(two_workers, upstream):
    first, second = two_workers
    client = session(second.url)
    upstream.script(tokens=["a", "b", "c", "d", "e", "f", "g", "h"], chunk_delay=0.2)
    with client.stream(
        "POST", "/generate", data=FORM, headers={"X-Forwarded-For": fresh_address()}
    ) as response:
        chunks = response.iter_bytes()
        body = next(chunks)
        first.process.terminate()
        first.process.wait(10)
        body += b"".join(chunks)
    assert b"event: done" in body
    assert b'"status": "complete"' in body


def test_a_session_saved_through_one_process_is_served_by_the_other(two_workers):
    import httpx

    a, b = two_workers
    on_a = session(a.url)
    address = fresh_address()
    saved = on_a.post(
        "/sessions/save",
        data={**FORM, "name": "Saved on A", "prompt": "def on_a():\n"},
        headers={"X-Forwarded-For": address},
    )
    assert saved.status_code == 204
    path = saved.headers["HX-Redirect"]
    # The same browser (its cookies and CSRF token) now reaches the other process.
    on_b = httpx.Client(base_url=b.url, timeout=30, cookies=on_a.cookies, headers=on_a.headers)
    assert "Saved on A" in on_b.get("/sessions/").text
    page = on_b.get(path)
    assert page.status_code == 200
    assert "def on_a():" in page.text
    pk = path.strip("/").split("/")[-1]
    # A run made through B lands in the session, and A lists it.
    ran = post(on_b, address, session=pk)
    assert ran.status_code == 200
    assert b"event: done" in ran.content
    history = on_a.get("/history", params={"session": pk}).text
    assert 'data-status="complete"' in history
    # Someone else (no cookie) sees nothing of it on either process.
    for server in two_workers:
        stranger = httpx.Client(base_url=server.url, timeout=30)
        assert stranger.get(path).status_code == 404
        assert "Saved on A" not in stranger.get("/sessions/").text
