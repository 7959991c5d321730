"""Turn a finished completion into HTML: Pygments highlighting merged with one span per token.

This is the only module that turns tokens into HTML. After a run ends the server renders the
completion once (never inside the stream loop: it is CPU work), so the browser receives ready
markup and does no highlighting of its own.

The contract with the template, stylesheet and tooltip script:

* ``RenderedCompletion.html`` is the inner markup of the completion's ``<code>`` element. With
  probabilities, every model token is exactly one element, in order::

      <span class="t p7 k" data-i="17" data-logprob="-0.1234" tabindex="0">def</span>

  ``t`` marks a token; ``p0``..``p9`` is its probability bucket (see `probability_bucket`); the
  Pygments short classes (``k``, ``s2``, ``nf``, ...) of the lexer token it lies in follow on the
  same span. A model token that crosses lexer tokens holds nested ``<span class="k">`` pieces
  instead. ``data-logprob`` (natural log, 4 decimals) is present only when the logprob is known,
  and then so is the ``pN`` class. ``data-i`` runs 0..n-1 without gaps.
* Without probabilities the markup is plain Pygments output: ``<span class="k">`` and bare text.
* ``RenderedCompletion.data_json`` goes inside ``<script type="application/json">``: the
  alternatives of the token spans, as columns::

      {"n": [5, 5, 0, ...], "t": ["def", " class", ...], "l": [-962, -19630, ...]}

  ``n[i]`` is how many alternatives the span with ``data-i="i"`` has; ``t`` and ``l`` hold all
  of them token after token, their texts and their logprobs in ten-thousandths (integers: the
  logprob to 4 decimals). A token has at most ``alternatives_shown``, all finite, in the order
  its Token holds them (the read path puts them most likely first; the tooltip sorts them
  again rather than rely on it). The token's own text and logprob are its span's text and
  ``data-logprob``, so a CR in it is written ``&#13;`` (an HTML parser reads a bare one as LF).
  The tooltip reads the data once: the same as attributes on every span measured about five
  times larger.

Budget: a 4,096-token completion (13.5k-15k characters of Python) with five alternatives per
token rendered in 15-30 ms on the 2-core reference machine as its speed varies, half of it
the tooltip data built by a Python loop over every alternative (docs/PERFORMANCE.md). Built a
column at a time in C instead, the data takes 2.7 ms of a 7 ms render on the quick machine:
a sixth lexing, a third the merge (one linear pass with memoised escaping, no per-token regex)
and a third the data.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape as html_escape
from itertools import chain, repeat
from operator import attrgetter, itemgetter, mul
from pathlib import Path

import orjson
from django.utils.safestring import SafeString, mark_safe
from pygments.lexer import Lexer
from pygments.lexers import PythonLexer, get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.token import STANDARD_TYPES, _TokenType
from pygments.util import ClassNotFound

from playground import lexing
from playground.completions import LogprobStatus, Token

__all__ = [
    "RenderedCompletion",
    "probability_bucket",
    "render_completion",
    "render_plain",
    "whitespace_visible",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class RenderedCompletion:
    """A completion ready for the page; see the module docstring for the markup contract."""

    html: SafeString  # inner markup of the completion's <code> element
    data_json: SafeString  # tooltip data for <script type="application/json">; "[]" without spans
    token_count: int  # tokens the backend reported
    mean_logprob: float | None  # over the tokens with a known, finite logprob
    perplexity: float | None  # exp(-mean_logprob)
    has_probabilities: bool  # whether the markup has token spans (and the JSON entries)
    language: str  # the lexer's display name, e.g. "Python"


# Decile buckets of the probability exp(logprob): p0 is p < 0.1, pK is K/10 <= p < (K+1)/10 and
# p9 is p >= 0.9. Comparing logprobs against log(K/10) avoids an exp() per token and puts -inf in
# p0 and (noisy) positive logprobs in p9 without special cases.
_BUCKET_BOUNDS = tuple(math.log(k / 10) for k in range(1, 10))
_BUCKET_CLASSES = tuple(f"t p{k}" for k in range(10))
_TEXT = itemgetter(0)  # of an alternative's (text, logprob) pair
_LOGPROB = itemgetter(1)
_ALTERNATIVES = attrgetter("alternatives")

# Lone surrogates cannot be encoded as UTF-8 (the response would fail mid-write), and browsers
# drop NUL from text content, so both become U+FFFD. One character for one keeps every offset.
_UNRENDERABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"

# What json_script escapes (django.utils.html._json_script_escapes): the payload sits inside a
# <script> element, where `</script>` or `<!--` in a token would otherwise end or alter it.
_JSON_SCRIPT_ESCAPES = (
    ("<", "\\u003C"),
    (">", "\\u003E"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)

_WHITESPACE_VISIBLE = str.maketrans({" ": "·", "\t": "→", "\n": "⏎"})


def probability_bucket(logprob: float) -> int:
    """Return the decile of exp(logprob): 0 for p < 0.1, ..., 9 for p >= 0.9 (and 0 for nan)."""
    if logprob != logprob:  # nan compares false with every bound and would land in 9
        return 0
    return bisect_right(_BUCKET_BOUNDS, logprob)


def whitespace_visible(text: str) -> str:
    """Show whitespace in a token as the tooltip does: space ·, tab →, newline ⏎."""
    return text.translate(_WHITESPACE_VISIBLE)


def render_plain(text: str) -> SafeString:
    """Escape streamed text for the live area, with no raw line break in the result.

    The result travels as a single SSE `data:` line, and SSE ends a line at CR as well as LF, so
    both become character references (which HTML turns back into the same characters).
    """
    text = _scrub(text)
    escaped = html_escape(text).replace("\n", "&#10;").replace("\r", "&#13;")
    # Safe: every character with meaning in HTML (& < > " ') went through html.escape.
    return mark_safe(escaped)  # noqa: S308


def render_completion(
    *,
    prompt: str,
    tokens: Sequence[Token],
    text: str,
    logprobs: LogprobStatus,
    language: str | None = None,
    alternatives_shown: int = 5,
) -> RenderedCompletion:
    """Highlight `text` as the continuation of `prompt` and wrap each token in a span.

    `language` is a Pygments alias; None or "" means Python (code models mostly write Python and
    `guess_lexer` misfires on short snippets), an alias Pygments does not know means plain text.

    Tokens are trusted only as far as they spell `text`: the longest run of leading tokens whose
    texts are a prefix of `text` gets spans, and the rest of `text` is highlighted without them
    (a backend that reports byte-level tokens as U+FFFD pieces stops the spans at the first one).
    The statistics still cover every token the backend reported.
    """
    lexer = _lexer_for(language)
    prompt = _scrub(prompt)
    text = _scrub(text)
    ends, classes = _lex_completion(lexer, prompt, text)

    real = logprobs is LogprobStatus.REAL and len(tokens) > 0
    if not real:
        return RenderedCompletion(
            html=_highlight_only(text, ends, classes),
            # Safe: a constant.
            data_json=mark_safe("[]"),  # noqa: S308
            token_count=len(tokens),
            mean_logprob=None,
            perplexity=None,
            has_probabilities=False,
            language=lexer.name,
        )

    texts = _aligned_texts(tokens, text)
    html = _merge(tokens, texts, text, ends, classes)
    data_json = _data_json(tokens, len(texts), max(alternatives_shown, 0))
    known = [lp for t in tokens if (lp := t.logprob) is not None and math.isfinite(lp)]
    mean = math.fsum(known) / len(known) if known else None
    return RenderedCompletion(
        html=html,
        data_json=data_json,
        token_count=len(tokens),
        mean_logprob=mean,
        # exp(-mean) overflows only for a mean below about -709, which no sampler produces, but a
        # broken backend might: report infinity rather than fail the page.
        perplexity=None if mean is None else _exp_or_inf(-mean),
        has_probabilities=len(texts) > 0,
        language=lexer.name,
    )


def _scrub(text: str) -> str:
    # The common case costs one isascii() or one encode() over the whole string.
    if text.isascii():
        return _UNRENDERABLE.sub(_REPLACEMENT, text) if "\x00" in text else text
    if "\x00" not in text:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return text
    return _UNRENDERABLE.sub(_REPLACEMENT, text)


def _exp_or_inf(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@lru_cache(maxsize=64)
def _lexer_for(language: str | None) -> Lexer:
    # stripnl/ensurenl off so nothing is added or removed; _lex_completion also bypasses
    # get_tokens() (which rewrites \r\n) and checks the lexed text is the input, so offsets hold.
    # Lexer instances keep no state between calls, so one per alias is shared across requests.
    if not language:
        return PythonLexer(stripnl=False, ensurenl=False)
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


def warm_up() -> None:
    """Compile the default lexer's rules now rather than in the first render.

    lexing.py compiles a state's alternation for each character a token starts with the first
    time one does (about 2 ms each): lexing a real module (the standard library's difflib, on
    every Python) compiles the ones ordinary code needs, under a second once per process.
    """
    import difflib

    try:
        source = Path(difflib.__file__).read_text(encoding="utf-8")
    except (OSError, TypeError, UnicodeDecodeError):  # an install without its .py sources
        source = "def f(x=1):\n    return [x, 'a', \"b\", 2.5]  # c\n"
    list(lexing.tokens(_lexer_for(None), source + "".join(map(chr, range(32, 127)))))


@lru_cache(maxsize=512)
def _css_classes(ttype: _TokenType) -> str:
    """Pygments' short class names for a token type, as HtmlFormatter writes them.

    Mirrors HtmlFormatter._get_css_classes without a prefix: a non-standard subtype carries its
    standard ancestors' classes too (``"nb nb-Foo"``), so stylesheets from get_style_defs apply.
    Plain text has no class.
    """
    names = [_css_class(ttype)]
    while ttype not in STANDARD_TYPES:
        ttype = ttype.parent
        names.insert(0, _css_class(ttype))
    return " ".join(n for n in names if n)


def _css_class(ttype: _TokenType) -> str:
    name = STANDARD_TYPES.get(ttype)
    if name is not None:
        return name
    suffix = ""
    while name is None:
        suffix = "-" + ttype[-1] + suffix
        ttype = ttype.parent
        name = STANDARD_TYPES.get(ttype)
    return name + suffix


def _lex_completion(lexer: Lexer, prompt: str, text: str) -> tuple[list[int], list[str]]:
    """Lex prompt and completion together and keep the completion's part.

    Returns parallel lists: segment end offsets within `text` and the segment's CSS classes;
    segments are contiguous from offset 0, and neighbours with equal classes are merged.
    Lexing the prompt too puts the lexer in the right state where the completion starts (inside
    a string literal the prompt opened, say).
    """
    source = prompt + text
    start = len(prompt)
    values: list[str] = []
    ends: list[int] = []
    classes: list[str] = []
    pos = 0
    # lexing.tokens: Pygments' own tokens, matched a rule set at a time (about twice as fast).
    for _, ttype, value in lexing.tokens(lexer, source):
        values.append(value)
        pos += len(value)
        if pos <= start or not value:
            continue
        cls = _css_classes(ttype)
        if classes and classes[-1] == cls:
            ends[-1] = pos - start
        else:
            ends.append(pos - start)
            classes.append(cls)
    if "".join(values) != source:
        # A lexer that drops or rewrites characters would shift every offset after the change;
        # unhighlighted text is better than misplaced highlighting.
        return ([len(text)], [""]) if text else ([], [])
    return ends, classes


def _aligned_texts(tokens: Sequence[Token], text: str) -> list[str]:
    """The scrubbed texts of the leading tokens that spell a prefix of `text`."""
    raw = [t.text for t in tokens]
    joined = "".join(raw)
    scrubbed = _scrub(joined)
    texts = raw if scrubbed is joined else [_scrub(t) for t in raw]
    if scrubbed == text:
        return texts
    aligned: list[str] = []
    pos = 0
    for piece in texts:
        if not text.startswith(piece, pos):
            break
        aligned.append(piece)
        pos += len(piece)
    return aligned


def _highlight_only(text: str, ends: list[int], classes: list[str]) -> SafeString:
    out: list[str] = []
    start = 0
    for end, cls in zip(ends, classes, strict=True):
        piece = html_escape(text[start:end], quote=False)
        out.append(f'<span class="{cls}">{piece}</span>' if cls else piece)
        start = end
    # Safe: text went through html.escape; class names come from Pygments' token-type table.
    return mark_safe("".join(out))  # noqa: S308


def _merge(
    tokens: Sequence[Token],
    texts: list[str],
    text: str,
    ends: list[int],
    classes: list[str],
) -> SafeString:
    """Walk tokens and lexer segments together once; return the markup.

    `texts` are the aligned token texts (see _aligned_texts), so they spell a prefix of `text`
    and every non-empty token starts inside segment `seg`.
    """
    out: list[str] = []
    append = out.append
    # A token's text is what the tooltip shows and compares with its alternatives, and an HTML
    # parser reads a bare CR (or CR LF) as LF: written as a reference, a CR survives parsing.
    escape = _escape_keeping_cr if "\r" in text else _escape_text
    # Code repeats itself: the same indentation, names and punctuation come back hundreds of
    # times, so escaping through a dict beats escaping every piece.
    escaped: dict[str, str] = {}
    escaped_get = escaped.get
    spaced = [f" {cls}" if cls else "" for cls in classes]
    seg = 0  # the lexer segment holding offset `pos`
    pos = 0
    for i, piece in enumerate(texts):
        lp = tokens[i].logprob
        if lp is not None and lp - lp == 0.0:  # known and finite: inf - inf and nan - nan are nan
            bucket_class = _BUCKET_CLASSES[bisect_right(_BUCKET_BOUNDS, lp)]
            attrs = f'" data-i="{i}" data-logprob="{lp:.4f}" tabindex="0">'
        else:
            bucket_class = "t"
            attrs = f'" data-i="{i}" tabindex="0">'

        end = pos + len(piece)
        if pos == end:
            # An empty token (some backends send them) still gets its span: data-i stays dense.
            append(f'<span class="{bucket_class}{attrs}</span>')
        elif end <= ends[seg]:
            # The token lies inside one lexer token: one element carries both sets of classes.
            e = escaped_get(piece)
            if e is None:
                e = escaped[piece] = escape(piece)
            append(f'<span class="{bucket_class}{spaced[seg]}{attrs}{e}</span>')
            if end == ends[seg]:
                seg += 1
        else:
            # The token crosses lexer tokens: nest their spans (rarer, and measured slower).
            append(f'<span class="{bucket_class}{attrs}')
            start = pos
            while start < end:
                stop = min(ends[seg], end)
                part = escape(text[start:stop])
                cls = classes[seg]
                append(f'<span class="{cls}">{part}</span>' if cls else part)
                if stop == ends[seg]:
                    seg += 1
                start = stop
            append("</span>")
        pos = end
    # Tokens that stopped spelling the text (see _aligned_texts) leave a tail: highlight only.
    while pos < len(text):
        part = escape(text[pos : ends[seg]])
        append(f'<span class="{classes[seg]}">{part}</span>' if classes[seg] else part)
        pos = ends[seg]
        seg += 1
    # Safe: text went through html.escape; attribute values are numbers we formatted and class
    # names from fixed tables (our buckets, Pygments' token-type names).
    return mark_safe("".join(out))  # noqa: S308


def _escape_text(text: str) -> str:
    # quote=False: every piece is element content, never an attribute value.
    return html_escape(text, quote=False)


def _escape_keeping_cr(text: str) -> str:
    return html_escape(text, quote=False).replace("\r", "&#13;")


def _data_json(tokens: Sequence[Token], count: int, shown: int) -> SafeString:
    """The tooltip data of the first `count` tokens: ``{"n": [...], "t": [...], "l": [...]}``."""
    per_token = list(map(_ALTERNATIVES, tokens[:count])) if shown else [()] * count
    try:
        data = _columns(per_token, shown)
    # round() refuses nan (ValueError) and infinity (OverflowError); orjson a lone surrogate.
    except (ValueError, OverflowError, TypeError):
        data = None
    # An alternative's NUL shows up JSON-escaped. It is rare, so look for it once in the result
    # rather than in every alternative; only then (or past the fast path's limits) go token by
    # token, leaving out what cannot be shown and scrubbing what cannot be sent.
    if data is None or "\\u0000" in data:
        data = _columns([_top_alternatives(alts, shown) for alts in per_token], shown)
    # Safe: orjson escapes `"`, `\` and control characters in strings, and these replacements
    # leave no <, > or & (nor U+2028/U+2029) anywhere, so the JSON cannot close its <script>
    # element or open a comment in it. Outside strings it has none of them to replace.
    for char, escape in _JSON_SCRIPT_ESCAPES:
        if char in data:
            data = data.replace(char, escape)
    return mark_safe(data)  # noqa: S308


def _columns(per_token: list[Sequence[tuple[str, float]]], shown: int) -> str | None:
    """Alternatives as columns, or None when a token has more than `shown` of them.

    Column-wise, every step is one C-level pass over all the alternatives (about 2 ms for
    4,096 tokens of five, where formatting each logprob to four decimals took 2.6 ms alone),
    and the integers take fewer bytes than decimal fractions, gzipped or not.
    """
    counts = list(map(len, per_token))
    if counts and max(counts) > shown:
        return None
    flat = list(chain.from_iterable(per_token))
    logprobs = map(round, map(mul, map(_LOGPROB, flat), repeat(10_000.0)))
    return orjson.dumps({"n": counts, "t": list(map(_TEXT, flat)), "l": list(logprobs)}).decode()


def _top_alternatives(
    alternatives: Sequence[tuple[str, float]], shown: int
) -> list[tuple[str, float]]:
    # A -inf candidate had no chance and a nan one is noise: neither is worth showing (nor is
    # either valid JSON). Text that cannot be encoded or shown becomes U+FFFD.
    finite = [(_scrub(text), lp) for text, lp in alternatives if math.isfinite(lp)]
    return sorted(finite, key=_LOGPROB, reverse=True)[:shown]
