"""ASGI entry point: Django plus a small lifespan wrapper.

Django's ASGI handler rejects `lifespan` scopes, so this wrapper answers them itself: at startup
it creates the worker's one shared `httpx.AsyncClient` (a connection pool per process and event
loop) and asks backends configured with `discover` for their models; at shutdown it closes it. `http` scopes go straight to Django. Without a lifespan
(tests, management commands) `completions.get_client()` falls back to a lazy per-loop client.
"""

import asyncio
import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "playground.settings")

from playground import redaction  # noqa: E402  (settings module must be set first)
from playground.handler import get_asgi_application  # noqa: E402
from playground.security import cap_request_body  # noqa: E402

# uvicorn's loggers print through their own handlers: they get the key-masking filter too.
redaction.install()

# Bodies are capped before Django spools them (see security.py); Django's middleware runs on the
# event loop (see middleware.py).
django_application = cap_request_body(get_asgi_application())


async def application(scope, receive, send):
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    from playground import completions

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                client = completions.make_client()
                completions.set_client(client)
                # Backends configured with `discover = true` list their models once at startup.
                from playground import backends

                await backends.discover_models(client)
            except Exception as exc:  # report to the server, which then refuses to start
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            # The default lexer's rules, compiled for lexing.py (under a second, once), before
            # the first run's render needs them.
            from playground import rendering

            await asyncio.to_thread(rendering.warm_up)
            tune_garbage_collector()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            from playground import history

            await completions.close_client()
            # Runs still being saved are written, and the saver's connection closed.
            await history.drain()
            await asyncio.to_thread(history.saver.stop)
            await send({"type": "lifespan.shutdown.complete"})
            return


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a relay (docs/PERFORMANCE.md).

    A stream holds thousands of small objects (tokens and their alternatives) until its run is
    saved; with 200 streams open, collections that walk every live object were a fifth of the
    worker's CPU. Everything loaded at startup (Django, templates, the offline model's tables)
    is frozen out of collection, and the youngest generation is collected after 50,000
    allocations instead of 700: the objects of a finished run are still freed by reference
    counting at once, only reference cycles wait longer.

    The middle generation is collected after 100 young collections instead of 20. Its cost is
    the objects alive in it when it runs (the open streams' tokens: 220 ms a time at 200
    streams), not how many passed through, so running it a fifth as often saves four fifths of
    it (6-8 % of the worker at 200 streams, docs/PERFORMANCE.md); only cycles that outlive a
    young collection wait longer to be freed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 100, 100)
