"""The confidence overview of a completion: a gutter mark per line, the most surprising tokens,
and a small chart of each token's probability.

Computed from the run's tokens in one pass, after the run (like `rendering`, never per token).
Token indexes are the `data-i` of `rendering`'s spans: only the leading tokens that spell the
completion have spans, so only those are counted. The chart is SVG we write ourselves from
numbers; the only text from the model (a surprising token) goes through the template's escaping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from playground.rendering import probability_bucket, whitespace_visible

__all__ = ["Overview", "build_overview"]

SURPRISING = 8
# As in rendering: NUL and lone surrogates cannot be shown (nor encoded), one U+FFFD each.
_UNRENDERABLE = re.compile("[\x00\ud800-\udfff]")
CHART_POINTS = 400  # a long completion is drawn with the least likely token of each slice


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    index: int | None  # the least likely token of the line (its data-i), None without one
    bucket: int | None
    probability: float | None


@dataclass(frozen=True, slots=True)
class Surprise:
    index: int
    text: str  # whitespace made visible; escaped by the template
    probability: float


@dataclass(frozen=True, slots=True)
class Overview:
    lines: list[Line]
    surprising: list[Surprise]
    chart: SafeString

    def gutter(self) -> SafeString:
        """The gutter's marks, one per line, as HTML.

        Written here rather than in a template loop: a long completion has hundreds of lines,
        and the template engine's lookups and number localisation per line were the largest
        part of a run's final message (docs/PERFORMANCE.md). Every value is a number we
        computed or a percentage we formatted, never model text, so there is nothing to escape.
        """
        marks = []
        for line in self.lines:
            if line.index is None:
                marks.append('<span class="g"></span>')
                continue
            label = f"Line {line.number}: least likely token {percent(line.probability)}"
            marks.append(
                f'<button type="button" class="g p{line.bucket}" data-jump="{line.index}" '
                f'title="{label}" aria-label="{label}"></button>'
            )
        return mark_safe("".join(marks))  # noqa: S308 (numbers and our own words only)


def percent(probability: float) -> str:
    """A probability as a short percentage: 12.3%, 4.56%, <0.01%."""
    p = probability * 100
    if p >= 10:
        return f"{p:.1f}%"
    if p >= 0.01:
        return f"{p:.2f}%"
    return "<0.01%"


def _pairs(tokens: Sequence) -> list[tuple[str, float | None]]:
    """(text, logprob) of live `Token`s or of stored `[text, logprob, alternatives]` lists."""
    if tokens and isinstance(tokens[0], list | tuple):
        return [(t[0], t[1]) for t in tokens]
    return [(t.text, t.logprob) for t in tokens]


def build_overview(tokens: Sequence, text: str) -> Overview | None:
    """The overview of a completion, or None when no token has a known probability."""
    lines: list[list] = [[None, None]]  # per line: [least logprob, its index]
    line = lines[0]
    known: list[tuple[float, int]] = []
    pos = 0
    pieces = _pairs(tokens)
    for i, (piece, lp) in enumerate(pieces):
        if not text.startswith(piece, pos):
            break  # rendering gives no span past here, so nothing to jump to
        pos += len(piece)
        # Known and finite (inf - inf and nan - nan are nan): one test instead of two calls.
        if lp is not None and lp - lp == 0.0:
            known.append((lp, i))
            if line[0] is None or lp < line[0]:
                line[0], line[1] = lp, i
        # A token's newlines end lines: the token counts on the line it started on.
        if "\n" in piece:
            lines.extend([None, None] for _ in range(piece.count("\n")))
            line = lines[-1]
    if not known:
        return None
    surprising = [
        Surprise(
            index=i,
            text=_UNRENDERABLE.sub("\ufffd", whitespace_visible(pieces[i][0])),
            probability=math.exp(lp),
        )
        for lp, i in sorted(known)[:SURPRISING]
    ]
    return Overview(
        lines=[
            Line(
                number=n,
                index=index,
                bucket=None if lp is None else probability_bucket(lp),
                probability=None if lp is None else math.exp(lp),
            )
            for n, (lp, index) in enumerate(lines, 1)
        ],
        surprising=surprising,
        chart=_chart([lp for lp, _ in known]),
    )


def _chart(logprobs: list[float]) -> SafeString:
    """Probability (0 at the bottom, 1 at the top) of each token, left to right, as SVG."""
    step = max(1, math.ceil(len(logprobs) / CHART_POINTS))
    lows = [min(logprobs[i : i + step]) for i in range(0, len(logprobs), step)]
    width = max(len(lows) - 1, 1)
    points = " ".join(f"{x},{100 - 100 * math.exp(lp):.1f}" for x, lp in enumerate(lows))
    if len(lows) == 1:
        points += f" 1,{100 - 100 * math.exp(lows[0]):.1f}"
    label = f"Probability of each of {len(logprobs)} tokens, from the first to the last"
    # format_html escapes every value; the label is ours, the points are formatted numbers.
    return format_html(
        '<svg class="chart" viewBox="0 0 {} 100" preserveAspectRatio="none" role="img" '
        'aria-label="{}"><title>{}</title>'
        '<line x1="0" y1="50" x2="{}" y2="50" class="chart-mid"/>'
        '<polyline points="{}" vector-effect="non-scaling-stroke"/></svg>',
        width,
        label,
        label,
        width,
        points,  # numbers we formatted: escaping leaves them as they are
    )
