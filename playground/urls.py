"""URL routes: the playground page, the streaming generate endpoint, and the offline model's
OpenAI-compatible API."""

from django.urls import path

from playground import api, views

urlpatterns = [
    path("", views.index, name="index"),
    path("generate", views.generate, name="generate"),
    path("tokens", views.token_count, name="token-count"),
    path("backends/status", views.backend_status, name="backend-status"),
    path("v1/models", api.v1_models, name="v1-models"),
    path("v1/completions", api.v1_completions, name="v1-completions"),
]
