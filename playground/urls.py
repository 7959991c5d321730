"""URL routes: the playground page, the streaming generate endpoint, the workspace (sessions,
runs, sharing, export), accounts and the admin, and the offline model's OpenAI-compatible API."""

from django.contrib import admin
from django.urls import include, path

from playground import api, compare, presenter, views, workspace

urlpatterns = [
    path("", views.index, name="index"),
    path("generate", views.generate, name="generate"),
    path("tokens", views.token_count, name="token-count"),
    path("backends/status", views.backend_status, name="backend-status"),
    path("v1/models", api.v1_models, name="v1-models"),
    path("v1/completions", api.v1_completions, name="v1-completions"),
    # The workspace: see playground/workspace.py.
    path("draft", workspace.save_draft, name="draft"),
    path("code", workspace.view_code, name="view-code"),
    path("history", workspace.history_panel, name="history"),
    path("sessions/", workspace.session_list, name="sessions"),
    path("sessions/save", workspace.save_session, name="save-session"),
    path("sessions/import", workspace.import_session, name="import-session"),
    path("sessions/<int:pk>/", workspace.open_session, name="session"),
    path("sessions/<int:pk>/rename", workspace.rename_session, name="rename-session"),
    path("sessions/<int:pk>/duplicate", workspace.duplicate_session, name="duplicate-session"),
    path("sessions/<int:pk>/delete", workspace.delete_session, name="delete-session"),
    path("sessions/<int:pk>/export", workspace.export_session, name="export-session"),
    path("sessions/<int:pk>/share", workspace.share_settings, name="share-settings"),
    path("sessions/<int:pk>/visibility", workspace.set_visibility, name="set-visibility"),
    path("sessions/<int:pk>/links", workspace.create_link, name="create-link"),
    path("sessions/<int:pk>/links/<int:link>/revoke", workspace.revoke_link, name="revoke-link"),
    path("sessions/<int:pk>/copy", workspace.copy_team_session, name="copy-team-session"),
    path("runs/<int:pk>/", workspace.show_run, name="run"),
    path("runs/<int:pk>/restore", workspace.restore_run, name="restore-run"),
    path("team/", workspace.gallery, name="gallery"),
    path("share/<str:token>/", workspace.shared, name="shared"),
    path("share/<str:token>/copy", workspace.copy_shared, name="copy-shared"),
    # Explore and compare: see playground/compare.py and playground/presenter.py.
    path("compare/", compare.compare_page, name="compare"),
    path("compare/run", compare.compare_run, name="compare-run"),
    path("diff/", compare.diff, name="diff"),
    path("sessions/<int:pk>/present", presenter.present_session, name="present"),
    path("share/<str:token>/present", presenter.present_shared, name="present-shared"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

# An htmx request that fails as a whole gets a status message, not Django's page (views).
handler404 = "playground.views.not_found"
handler500 = "playground.views.server_error"
