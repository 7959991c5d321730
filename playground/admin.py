"""The Django admin: users (Django's own), sessions, runs and share links."""

from django.contrib import admin

from playground.models import Draft, Run, Session, ShareLink


class RunInline(admin.TabularInline):
    model = Run
    fields = ("created_at", "status", "backend", "model", "completion_tokens", "finish_reason")
    readonly_fields = fields
    extra = 0
    show_change_link = True


class ShareLinkInline(admin.TabularInline):
    model = ShareLink
    fields = ("created_at", "revoked_at")
    readonly_fields = ("created_at",)
    extra = 0


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "visibility", "backend", "model", "updated_at")
    list_filter = ("visibility", "backend")
    search_fields = ("name", "prompt", "user__username")
    raw_id_fields = ("user",)
    inlines = [RunInline, ShareLinkInline]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("pk", "session", "user", "status", "backend", "completion_tokens", "created_at")
    list_filter = ("status", "backend", "logprobs")
    raw_id_fields = ("user", "session", "parent_run")
    search_fields = ("text", "session__name")


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ("session", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    raw_id_fields = ("session",)
    # The token is a secret of whoever holds the link: not shown in lists, nor searchable.
    exclude = ("token",)


@admin.register(Draft)
class DraftAdmin(admin.ModelAdmin):
    list_display = ("pk", "user", "updated_at")
    raw_id_fields = ("user",)
