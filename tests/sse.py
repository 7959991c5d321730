"""Reading the app's own event stream in tests, as the browser's SSE extension does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Event:
    event: str
    data: str


def parse_events(raw: bytes) -> list[Event]:
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data, seen = "", [], False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
                seen = True
        if seen:
            events.append(Event(name, "\n".join(data)))
    return events


async def settle() -> None:
    """Wait for the run's save, then close the database connections the saver's thread and the
    view's async ORM calls (in asgiref's worker thread) opened: the test client keeps Django from
    closing them, and an open connection would keep PostgreSQL from dropping the test database."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    from playground import history

    await history.drain()
    await asyncio.to_thread(history.saver.stop)
    await sync_to_async(connections.close_all)()


def post_stream(path: str, data: dict, **headers) -> tuple[int, dict, list[Event]]:
    """POST as htmx does and read the whole streamed answer."""
    from django.test import AsyncClient

    async def go():
        client = AsyncClient()
        response = await client.post(path, data, headers={"HX-Request": "true", **headers})
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content])
        else:
            body = response.content
        await settle()
        return response.status_code, dict(response.headers), parse_events(body)

    return asyncio.run(go())
