"""What the playground keeps: drafts, saved sessions, their runs, and share links.

Everything belongs to an owner: a signed-in user, or, for an anonymous visitor, an opaque
`owner_key` kept in their (signed-cookie) Django session. `owners.py` is the only place that
turns a request into an owner and scopes queries by it; the key moves to the account on sign-in.
"""

from __future__ import annotations

import json

import orjson
from django.conf import settings
from django.db import models


class TokensEncoder(json.JSONEncoder):
    """JSON for `Run.tokens` written by orjson: a 512-token run with five alternatives each is
    about 3,000 strings and floats, and json's encoder took several times as long (it was the
    largest part of saving a run, docs/PERFORMANCE.md). Whatever orjson refuses goes to json;
    the saved tokens never hold NaN or infinity (`history.tokens_to_json` makes them null)."""

    def encode(self, o):
        try:
            return orjson.dumps(o).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            return super().encode(o)


class TokensDecoder(json.JSONDecoder):
    """`Run.tokens` read back by orjson, for the same reason; json for what orjson refuses."""

    def decode(self, s, *args, **kwargs):
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            return super().decode(s, *args, **kwargs)


class TokensField(models.JSONField):
    """A JSONField encoded and decoded by the classes above.

    The column is the same JSON either way, so the field describes itself to migrations as a
    plain JSONField: naming the encoder there would make SQLite rebuild the runs table for a
    change that never reaches the database.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("encoder", TokensEncoder)
        kwargs.setdefault("decoder", TokensDecoder)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, _, args, kwargs = super().deconstruct()
        kwargs.pop("encoder", None)
        kwargs.pop("decoder", None)
        return name, "django.db.models.JSONField", args, kwargs


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private (only you)"
    TEAM = "team", "Team (every signed-in user)"
    LINK = "link", "Anyone with the link"


class RunStatus(models.TextChoices):
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Owned(models.Model):
    """An owner: `user`, or (anonymous) `owner_key` with no user."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    owner_key = models.CharField(max_length=64, blank=True, default="", db_index=True)

    class Meta:
        abstract = True


class Draft(Owned):
    """The editor's autosaved state: one per owner."""

    prompt = models.TextField(blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(user__isnull=False), name="one_draft_per_user"
            ),
            models.UniqueConstraint(
                fields=["owner_key"],
                condition=models.Q(user__isnull=True),
                name="one_draft_per_owner_key",
            ),
        ]

    def __str__(self) -> str:
        return f"draft {self.pk}"


class Session(Owned):
    """A saved prompt with its parameters, backend and model, and all its runs."""

    name = models.CharField(max_length=200)
    prompt = models.TextField(blank=True, default="")
    params = models.JSONField(default=dict, blank=True)
    backend = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [
            # The sessions list of a user / of an anonymous owner, newest first.
            models.Index(fields=["user", "-updated_at"], name="session_user_recent"),
            models.Index(fields=["owner_key", "-updated_at"], name="session_key_recent"),
            # The team gallery.
            models.Index(fields=["visibility", "-updated_at"], name="session_gallery"),
        ]

    def __str__(self) -> str:
        return self.name


class Run(Owned):
    """One generation: its request parameters (never a key), text, tokens and timings.

    `tokens` has the shape of `rendering`'s tooltip data: `[[text, logprob|null, [[alt, lp],
    ...]], ...]`. `session` is null for a run made in the unsaved editor (the draft workspace);
    Save attaches those runs to the new session.
    """

    session = models.ForeignKey(
        Session, null=True, blank=True, on_delete=models.CASCADE, related_name="runs"
    )
    params = models.JSONField(default=dict, blank=True)
    prompt = models.TextField(blank=True, default="")
    backend = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    text = models.TextField(blank=True, default="")
    tokens = TokensField(default=list, blank=True)
    logprobs = models.CharField(max_length=16, default="absent")
    ttft_ms = models.IntegerField(null=True, blank=True)
    total_ms = models.IntegerField(null=True, blank=True)
    prompt_tokens = models.IntegerField(null=True, blank=True)
    completion_tokens = models.IntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True, default="")
    status = models.CharField(max_length=16, choices=RunStatus.choices)
    error_kind = models.CharField(max_length=32, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # For a later tree of runs (branching from a token); unused for now.
    parent_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    branch_index = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["session", "-created_at"], name="run_session_recent"),
            models.Index(fields=["user", "session", "-created_at"], name="run_user_workspace"),
            models.Index(fields=["owner_key", "session", "-created_at"], name="run_key_workspace"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"


class ShareLink(models.Model):
    """A read-only link to a frozen snapshot of a session, taken when the link was made."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="links")
    token = models.CharField(max_length=64, unique=True)
    snapshot = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"link to {self.session_id}"
