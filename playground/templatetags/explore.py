"""Template tags of the explore features: the run's data attributes (its id and sampling, read by
the tooltip's lens and branch buttons), the branch navigator and the confidence overview."""

from __future__ import annotations

from django import template
from django.utils.html import format_html_join

from playground.branching import navigator
from playground.overview import build_overview
from playground.overview import percent as overview_percent

register = template.Library()


def _saved(record, past_run):
    # An unset template variable arrives as "".
    saved = record or past_run
    return saved if saved is not None and getattr(saved, "pk", None) else None


@register.simple_tag
def run_attributes(run, record=None, past_run=None):
    """` data-run-id=… data-temperature=… data-top-p=…` for the `[data-run]` element."""
    request = getattr(run, "request", None)
    source = record or past_run
    if request is not None and hasattr(request, "temperature"):
        temperature, top_p = request.temperature, request.top_p
    else:
        params = getattr(source, "params", None) or {}
        temperature, top_p = params.get("temperature"), params.get("top_p")
    attrs = []
    saved = _saved(record, past_run)
    if saved is not None:
        attrs.append(("data-run-id", saved.pk))
    if isinstance(temperature, int | float):
        attrs.append(("data-temperature", f"{float(temperature):g}"))
    if isinstance(top_p, int | float):
        attrs.append(("data-top-p", f"{float(top_p):g}"))
    # Safe: format_html_join escapes every value (numbers here).
    return format_html_join("", ' {}="{}"', attrs)


@register.simple_tag
def branch_rows(record=None, past_run=None):
    """The navigator's rows for the run shown. A live run's come with its record (computed in
    the saving thread: no query on the event loop); a past run's are queried here."""
    saved = _saved(record, past_run)
    if saved is None:
        return []
    rows = getattr(saved, "branch_nav", None)
    return navigator(saved) if rows is None else rows


@register.simple_tag
def confidence_overview(run, past_run=None):
    tokens = getattr(run, "tokens", None)
    if tokens is None:
        tokens = getattr(past_run, "tokens", None)
    return build_overview(tokens or [], run.text) if tokens else None


@register.filter
def percent(probability: float) -> str:
    return overview_percent(probability)
