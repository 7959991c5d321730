"""What the tooltip shows for each token of a rendered run, read the way app.js reads it.

A run's markup has one span per token (its text, and its logprob in `data-logprob`) and the
alternatives as columns in `<script class="run-data">` (see rendering.py). `entries` puts them
back together as `[text, logprob|None, [[alt_text, alt_logprob], ...]]` per token, alternatives
most likely first, and checks on the way that the columns agree with each other and the spans.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser


class _Spans(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[list] = []  # [text, data-logprob or None]
        self.blobs: list[str] = []
        self._open: list[bool] = []  # per open span: whether it is a token
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "span":
            is_token = "t" in (attributes.get("class") or "").split()
            self._open.append(is_token)
            if is_token:
                self.tokens.append(["", attributes.get("data-logprob")])
        self._in_data = tag == "script" and "run-data" in (attributes.get("class") or "")

    def handle_endtag(self, tag):
        if tag == "span" and self._open:
            self._open.pop()
        self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.blobs.append(data)
        elif any(self._open):
            self.tokens[-1][0] += data


def _reject_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")  # JSON.parse in the browser refuses it too


def entries(html: str, data: str | None = None) -> list:
    """Each token span's tooltip from `html` (one run), with `data` or the run-data in it."""
    parser = _Spans()
    parser.feed(html)
    parser.close()
    if data is None:
        (data,) = parser.blobs
    columns = json.loads(data, parse_constant=_reject_constant)
    assert set(columns) == {"n", "t", "l"}
    assert len(columns["n"]) == len(parser.tokens)
    assert sum(columns["n"]) == len(columns["t"]) == len(columns["l"])
    assert all(type(lp) is int for lp in columns["l"])  # ten-thousandths
    result, at = [], 0
    for (text, logprob), n in zip(parser.tokens, columns["n"], strict=True):
        texts, logprobs = columns["t"][at : at + n], columns["l"][at : at + n]
        at += n
        alternatives = [[t, lp / 10_000] for t, lp in zip(texts, logprobs, strict=True)]
        alternatives.sort(key=lambda pair: pair[1], reverse=True)
        result.append([text, None if logprob is None else float(logprob), alternatives])
    return result
