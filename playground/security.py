"""Response security headers and the request body cap.

- `security_headers` is a Django middleware (sync and async capable, so the stream route pays no
  thread hop) that adds the Content-Security-Policy and the headers Django's SecurityMiddleware
  does not set. The policy allows scripts, styles, fonts, images and fetches only from our own
  origin (images also as `data:`), no inline script and no `eval`: model-written markup that
  somehow reached the DOM could neither run nor call out.
- `cap_request_body` wraps the ASGI application. Django's ASGI handler spools a whole request
  body to disk before any view or `DATA_UPLOAD_MAX_MEMORY_SIZE` check runs, so a chunked upload
  without Content-Length (or with one that understates it) could fill the disk. The wrapper reads
  at most PLAYGROUND_MAX_BODY_BYTES and answers 413 past that, before Django sees the request.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # No powerful feature is used by the page; none may be used by anything injected into it.
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def security_headers(get_response):
    """Add HEADERS to every response that does not set them itself."""

    def apply(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    if iscoroutinefunction(get_response):

        async def middleware(request):
            return apply(await get_response(request))

        markcoroutinefunction(middleware)
    else:

        def middleware(request):
            return apply(get_response(request))

    return middleware


security_headers.sync_capable = True
security_headers.async_capable = True


async def _refuse(send, status: int, message: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(message)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": message})


def cap_request_body(app, limit: int | None = None):
    """An ASGI wrapper that reads a request body up to `limit` bytes, or answers 413.

    The body is read before the application is called, counting bytes as they arrive rather
    than trusting Content-Length, and handed to the application as one message; later
    `receive()` calls (Django listens for the disconnect) go to the server.
    """

    async def wrapper(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        cap = limit if limit is not None else settings.PLAYGROUND_MAX_BODY_BYTES
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await _refuse(send, 413, b"Request body too large.\n")
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await _refuse(send, 413, b"Request body too large.\n")
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return wrapper
