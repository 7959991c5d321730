"""Abuse limits on generations: a rate limit, a per-user cap on concurrent runs, a per-process cap.

- **Who** a request is: the signed-in user, else the client address (IPv6 grouped by /64, since
  one host is handed a whole /64 and can rotate through it). `X-Forwarded-For` is believed only
  with PLAYGROUND_TRUST_X_FORWARDED_FOR, and then only its last entry (the one our proxy wrote).
- **Rate limit**: a fixed window of PLAYGROUND_RATE_LIMIT_WINDOW seconds, at most
  PLAYGROUND_RATE_LIMIT generations. The counter is `cache.add` then `cache.incr`, which are
  atomic in local memory and in Redis (INCR). Django's async `aincr` is a get-then-set, not
  atomic, so the sync calls run in a worker thread instead.
- **Concurrent runs per user**: the same counter pattern; the slot is released in the stream's
  `finally` (a closed tab or Stop frees it at once) and, should the stream never start, when
  the response is dropped. A TTL above the longest run frees the slots of a crashed worker.
- **Concurrent runs per process**: a plain counter, below the upstream connection pool size, so
  a burst gets a quick "busy" instead of queueing on the pool (`PoolTimeout`).

The counters live in the default cache: per process with the local-memory default, shared by
every worker and host with `CACHE_URL=redis://…` (see docs/DEPLOY.md).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest

log = logging.getLogger(__name__)

# Seconds past the longest possible run before a leaked per-user slot expires on its own.
SLOT_GRACE_SECONDS = 60


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Why a generation was not started: the status, a message for the page, Retry-After."""

    status: int
    message: str
    retry_after: int


def client_address(request: HttpRequest) -> str:
    address = request.META.get("REMOTE_ADDR", "") or ""
    if settings.PLAYGROUND_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded.strip():
            address = forwarded.split(",")[-1].strip()
    return address


def identity(request: HttpRequest, user=None) -> str:
    """The key limits are counted under: the signed-in user, else the client's address.

    Async callers pass the user from `await request.auser()`: reading `request.user` there
    would query the database from the event loop.
    """
    if user is None:
        user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    address = client_address(request)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"ip:{address[:64]}"
    if ip.version == 6:
        if ip.ipv4_mapped:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"ip:{ip}"


@functools.cache
def _counters() -> BaseCache:
    """The default cache, one object for the whole process.

    `django.core.cache.cache` is a proxy to a cache object per thread and per async context,
    so under ASGI every request made (and looked up through asgiref's Local) a cache object of
    its own: about a seventh of a lone generate request's CPU went to the five counter calls
    (docs/PERFORMANCE.md), and with Redis each new object opens its own connection pool. Both
    backends are safe to share: local memory locks around its dict, and redis-py's pool is
    thread-safe.
    """
    return caches.create_connection("default")


@receiver(setting_changed)
def _forget_counters(*, setting: str, **kwargs: object) -> None:
    if setting == "CACHES":  # tests point the limits at Redis and back
        _counters.cache_clear()


def _incr(key: str, timeout: float) -> int:
    cache = _counters()
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=timeout)
        return 1


def _decr(key: str) -> None:
    with contextlib.suppress(ValueError):  # already expired
        _counters().decr(key)


def _rate_limit(who: str) -> Refusal | None:
    limit = settings.PLAYGROUND_RATE_LIMIT
    window = settings.PLAYGROUND_RATE_LIMIT_WINDOW
    if limit <= 0 or window <= 0:
        return None
    now = time.time()
    bucket = int(now // window)
    count = _incr(f"playground:rate:{who}:{bucket}", window + 1)
    if count <= limit:
        return None
    retry = max(1, math.ceil((bucket + 1) * window - now))
    return Refusal(
        status=429,
        message=f"Too many generations: at most {limit} every {window} s. Try again in {retry} s.",
        retry_after=retry,
    )


class Slot:
    """A held generation slot; `release()` is idempotent and may run from any thread."""

    def __init__(self, user_key: str | None) -> None:
        self.user_key = user_key
        self._lock = threading.Lock()
        self.released = False

    def release(self) -> None:
        with self._lock:
            if self.released:
                return
            self.released = True
        global _running
        with _running_lock:
            _running -= 1
        if self.user_key:
            _decr(self.user_key)


# Generations running in this process (one event loop per uvicorn worker).
_running = 0
_running_lock = threading.Lock()


def running() -> int:
    return _running


def _take_user_slot(who: str) -> str | None | Refusal:
    """The per-user counter's key once incremented, None when there is no per-user cap."""
    per_user = settings.PLAYGROUND_MAX_CONCURRENT_PER_USER
    if per_user <= 0:
        return None
    user_key = f"playground:running:{who}"
    ttl = settings.UPSTREAM_TOTAL_TIMEOUT + SLOT_GRACE_SECONDS
    if _incr(user_key, ttl) > per_user:
        _decr(user_key)
        return Refusal(
            status=429,
            message=f"You already have {per_user} generations running. "
            "Stop one or wait for it to finish.",
            retry_after=2,
        )
    _counters().touch(user_key, ttl)  # the newest run keeps the counter alive
    return user_key


def _cache_in_process() -> bool:
    """The local-memory cache (the default on one machine) never blocks; Redis does."""
    backend = settings.CACHES["default"]["BACKEND"]
    return backend == "django.core.cache.backends.locmem.LocMemCache"


def _admit(who: str) -> str | None | Refusal:
    refusal = _rate_limit(who)
    return refusal if refusal is not None else _take_user_slot(who)


async def admit(request: HttpRequest) -> Slot | Refusal:
    """Count a generation against the limits: a held Slot, or why it may not start."""
    global _running
    with _running_lock:
        if _running >= settings.PLAYGROUND_MAX_CONCURRENT:
            return Refusal(
                status=503,
                message="The server is busy with other generations. Try again in a moment.",
                retry_after=1,
            )
        _running += 1  # reserved now, so concurrent admissions cannot overshoot
    try:
        # Cache calls to Redis block (a network round trip): in a worker thread, and
        # thread_sensitive=False, so they do not queue behind other requests' sync work.
        user = await request.auser() if hasattr(request, "auser") else None
        who = identity(request, user)
        if _cache_in_process():
            taken = _admit(who)  # a dict and a lock: no I/O, no reason for a thread hop
        else:
            taken = await sync_to_async(_admit, thread_sensitive=False)(who)
    except BaseException:
        with _running_lock:
            _running -= 1
        raise
    if isinstance(taken, Refusal):
        with _running_lock:
            _running -= 1
        return taken
    return Slot(taken)
