"""Who owns what: the owner of a request, and querysets scoped to it.

An owner is the signed-in user or, for an anonymous visitor, an opaque key kept in their Django
session (a signed cookie that lasts `SESSION_COOKIE_AGE`, so it survives a browser restart). On
sign-in everything the key owned moves to the account. Every query for a session, run or draft
goes through the functions here, so another owner's objects are simply not found (404).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import user_logged_in
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.db.models import Q, QuerySet
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils.decorators import sync_and_async_middleware

from playground.models import Draft, Run, Session

OWNER_KEY = "playground_owner"


@dataclass(frozen=True)
class Owner:
    user_id: int | None
    key: str

    def filter(self) -> Q:
        if self.user_id is not None:
            return Q(user_id=self.user_id)
        return Q(user__isnull=True, owner_key=self.key)

    def fields(self) -> dict:
        """What a new object of this owner is created with."""
        if self.user_id is not None:
            return {"user_id": self.user_id, "owner_key": ""}
        return {"user_id": None, "owner_key": self.key}


def _key(request: HttpRequest) -> str:
    # The signed-cookie backend reads the cookie, with no database query: safe in async views.
    key = request.session.get(OWNER_KEY)
    if not key:
        key = secrets.token_urlsafe(24)
        request.session[OWNER_KEY] = key
    return key


def owner_of(request: HttpRequest) -> Owner:
    user = request.user
    if user.is_authenticated:
        return Owner(user.pk, "")
    return Owner(None, _key(request))


async def aowner_of(request: HttpRequest) -> Owner:
    user = await request.auser()
    if user.is_authenticated:
        return Owner(user.pk, "")
    return Owner(None, _key(request))


def owned_sessions(request: HttpRequest) -> QuerySet[Session]:
    return Session.objects.filter(owner_of(request).filter())


def owned_runs(request: HttpRequest) -> QuerySet[Run]:
    return Run.objects.filter(owner_of(request).filter())


def team_sessions(request: HttpRequest) -> QuerySet[Session]:
    """Sessions shared with the team: every signed-in user sees them, anonymous visitors none."""
    if not request.user.is_authenticated:
        return Session.objects.none()
    return Session.objects.filter(visibility="team")


def draft_of(owner: Owner) -> Draft | None:
    return Draft.objects.filter(owner.filter()).first()


@receiver(user_logged_in)
def _adopt_anonymous_work(sender, request, user, **kwargs) -> None:
    """Move what the visitor made before signing in to their account."""
    if request is None:
        return
    key = request.session.get(OWNER_KEY)
    if not key:
        return
    anonymous = Q(user__isnull=True, owner_key=key)
    with transaction.atomic():
        Session.objects.filter(anonymous).update(user=user, owner_key="")
        Run.objects.filter(anonymous).update(user=user, owner_key="")
        draft = Draft.objects.filter(anonymous).first()
        if draft is not None:
            existing = Draft.objects.filter(user=user).first()
            if existing is None:
                draft.user, draft.owner_key = user, ""
                draft.save()
            else:
                # The draft being edited just now is the one the visitor expects to see.
                existing.prompt, existing.params = draft.prompt, draft.params
                existing.save()
                draft.delete()


# Paths open without signing in when PLAYGROUND_REQUIRE_LOGIN is on: the sign-in page itself,
# shared links (meant for people without an account), static files, and the admin (which has
# its own sign-in).
OPEN_PREFIXES = ("/accounts/login/", "/share/", "/static/", "/admin/")


def _needs_login(request: HttpRequest, user) -> bool:
    return (
        settings.PLAYGROUND_REQUIRE_LOGIN
        and not user.is_authenticated
        and not request.path.startswith(OPEN_PREFIXES)
    )


@sync_and_async_middleware
def require_login_middleware(get_response):
    """With PLAYGROUND_REQUIRE_LOGIN=true, everything but shared links needs a signed-in user.

    Sync and async in one, so the streaming route pays no thread hop for it.
    """
    import asyncio

    if asyncio.iscoroutinefunction(get_response):

        async def middleware(request):
            if _needs_login(request, await request.auser()):
                return redirect_to_login(request.get_full_path())
            return await get_response(request)

    else:

        def middleware(request):
            if _needs_login(request, request.user):
                return redirect_to_login(request.get_full_path())
            return get_response(request)

    return middleware
