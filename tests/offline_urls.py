"""A URLconf with only the offline model's OpenAI-compatible endpoints, for tests/test_api.py.

It keeps those tests independent of the rest of the app's routes and views.
"""

from django.urls import path

from playground import api

urlpatterns = [
    path("v1/completions", api.v1_completions),
    path("v1/models", api.v1_models),
]
