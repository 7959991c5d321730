"""The app's URLconf and its error handlers, plus one view with a bug, for tests/test_views.py."""

from django.urls import path

from playground.urls import handler404, handler500, urlpatterns

__all__ = ["handler404", "handler500", "urlpatterns"]


def broken(request):
    raise RuntimeError("a bug in a view")


urlpatterns = [*urlpatterns, path("broken", broken)]
