"""Two uvicorn processes sharing Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432), as in
docs/DEPLOY.md: the rate limit and the concurrent-generation cap count across both, and a stream
on one completes while the other is stopped.

Issue 3 (saved sessions) adds here: a session saved through one process is served by the other.
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
        "PLAYGROUND_RATE_LIMIT_WINDOW": "60",
        "PLAYGROUND_MAX_CONCURRENT_PER_USER": "1",
        # The tests stand in for clients at several addresses behind one proxy.
        "PLAYGROUND_TRUST_X_FORWARDED_FOR": "true",
    }
    with run_app(tmp_path / "a", **common) as a, run_app(tmp_path / "b", **common) as b:
        yield a, b


def post(client, address: str, **changes):
    return client.post("/generate", data={**FORM, **changes}, headers={"X-Forwarded-For": address})


def test_the_rate_limit_counts_across_both_processes(two_workers):
    a, b = (session(server.url) for server in two_workers)
    answers = [post(client, "192.0.2.1").status_code for client in (a, b) * 3]
    assert answers == [200] * 6
    refused = post(b, "192.0.2.1")
    assert refused.status_code == 429
    assert "Too many generations" in refused.text
    assert post(a, "192.0.2.1").status_code == 429
    assert post(a, "192.0.2.99").status_code == 200  # someone else is not limited


def test_the_concurrency_cap_counts_across_both_processes(two_workers, upstream):
    a, b = (session(server.url) for server in two_workers)
    upstream.script(fail="stall_before_first_byte", stall=30)
    with a.stream("POST", "/generate", data=FORM, headers={"X-Forwarded-For": "192.0.2.2"}) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        next(chunks)  # running on A
        busy = post(b, "192.0.2.2")
        assert busy.status_code == 429
        assert "generations running" in busy.text
    # The stream on A is closed: its slot is free for B at once.
    deadline = time.monotonic() + 5
    while (answer := post(b, "192.0.2.2")).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def test_a_stream_on_one_completes_while_the_other_is_stopped(two_workers, upstream):
    first, second = two_workers
    client = session(second.url)
    upstream.script(tokens=["a", "b", "c", "d", "e", "f", "g", "h"], chunk_delay=0.2)
    with client.stream(
        "POST", "/generate", data=FORM, headers={"X-Forwarded-For": "192.0.2.3"}
    ) as response:
        chunks = response.iter_bytes()
        body = next(chunks)
        first.process.terminate()
        first.process.wait(10)
        body += b"".join(chunks)
    assert b"event: done" in body
    assert b'"status": "complete"' in body
