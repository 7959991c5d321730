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
* ``RenderedCompletion.data_json`` goes inside ``<script type="application/json">``: an array
  indexed by ``data-i`` whose entries are ``[text, logprob|null, [[alt_text, alt_logprob], ...]]``
  (at most ``alternatives_shown``, most likely first; logprobs to 4 decimals). The tooltip reads
  it once: the same data as attributes on every span measured about five times larger.

Budget: a 4,096-token completion (13.5k-15k characters of Python) with five alternatives per
token renders in 15-30 ms on the 2-core reference machine, as its speed varies
(docs/PERFORMANCE.md): about a fifth lexing, a fifth the merge and half the tooltip data (a
third of that formatting the 20k alternative logprobs). So the merge is one linear pass with
memoised escaping, no per-token regex, and the data one %-format for the whole JSON array.
"""

from __future__ import annotations

import math
import re
import sys
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape as html_escape

# The C-accelerated encoder behind json.dumps for one str: quotes it and escapes `"`, `\` and
# control characters, leaving non-ASCII as is. json.dumps per string costs seven times more.
from json.encoder import encode_basestring
from operator import itemgetter
from pathlib import Path

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
_LOGPROB = itemgetter(1)  # of an alternative's (text, logprob) pair
_MAX_FLOAT = sys.float_info.max

# Lone surrogates cannot be encoded as UTF-8 (the response would fail mid-write), and browsers
# drop NUL from text content, so both become U+FFFD. One character for one keeps every offset.
_UNRENDERABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"

# What json_script escapes (django.utils.html._json_script_escapes): the payload sits inside a
# <script> element, where `</script>` or `<!--` in a token would otherwise end or alter it.
_JSON_SCRIPT_ESCAPES = str.maketrans(
    {
        "<": "\\u003C",
        ">": "\\u003E",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
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
    html, lp_texts = _merge(tokens, texts, text, ends, classes)
    data_json = _data_json(tokens, texts, lp_texts, max(alternatives_shown, 0))
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
) -> tuple[SafeString, list[str]]:
    """Walk tokens and lexer segments together once; return the markup and each logprob's text.

    `texts` are the aligned token texts (see _aligned_texts), so they spell a prefix of `text`
    and every non-empty token starts inside segment `seg`.
    """
    out: list[str] = []
    append = out.append
    # Code repeats itself: the same indentation, names and punctuation come back hundreds of
    # times, so escaping through a dict beats escaping every piece.
    escaped: dict[str, str] = {}
    escaped_get = escaped.get
    lp_texts: list[str] = []
    spaced = [f" {cls}" if cls else "" for cls in classes]
    seg = 0  # the lexer segment holding offset `pos`
    pos = 0
    for i, piece in enumerate(texts):
        lp = tokens[i].logprob
        if lp is not None and lp - lp == 0.0:  # known and finite: inf - inf and nan - nan are nan
            lp_text = f"{lp:.4f}"
            bucket_class = _BUCKET_CLASSES[bisect_right(_BUCKET_BOUNDS, lp)]
            attrs = f'" data-i="{i}" data-logprob="{lp_text}" tabindex="0">'
        else:
            lp_text = "null"
            bucket_class = "t"
            attrs = f'" data-i="{i}" tabindex="0">'
        lp_texts.append(lp_text)

        end = pos + len(piece)
        if pos == end:
            # An empty token (some backends send them) still gets its span: data-i stays dense.
            append(f'<span class="{bucket_class}{attrs}</span>')
        elif end <= ends[seg]:
            # The token lies inside one lexer token: one element carries both sets of classes.
            e = escaped_get(piece)
            if e is None:
                # quote=False: every piece is element content, never an attribute value.
                e = escaped[piece] = html_escape(piece, quote=False)
            append(f'<span class="{bucket_class}{spaced[seg]}{attrs}{e}</span>')
            if end == ends[seg]:
                seg += 1
        else:
            # The token crosses lexer tokens: nest their spans (rarer, and measured slower).
            append(f'<span class="{bucket_class}{attrs}')
            start = pos
            while start < end:
                stop = min(ends[seg], end)
                part = html_escape(text[start:stop], quote=False)
                cls = classes[seg]
                append(f'<span class="{cls}">{part}</span>' if cls else part)
                if stop == ends[seg]:
                    seg += 1
                start = stop
            append("</span>")
        pos = end
    # Tokens that stopped spelling the text (see _aligned_texts) leave a tail: highlight only.
    while pos < len(text):
        part = html_escape(text[pos : ends[seg]], quote=False)
        append(f'<span class="{classes[seg]}">{part}</span>' if classes[seg] else part)
        pos = ends[seg]
        seg += 1
    # Safe: text went through html.escape; attribute values are numbers we formatted and class
    # names from fixed tables (our buckets, Pygments' token-type names).
    return mark_safe("".join(out)), lp_texts  # noqa: S308


def _data_json(
    tokens: Sequence[Token], texts: list[str], lp_texts: list[str], shown: int
) -> SafeString:
    """The tooltip data: ``[[text, logprob|null, [[alt_text, alt_logprob], ...]], ...]``."""
    data = _json_array(tokens, texts, lp_texts, shown, scrub=False)
    # Token texts are scrubbed already; an alternative's NUL shows up JSON-escaped and a lone
    # surrogate as a string that cannot be encoded. Both are rare, so look for them once in the
    # result instead of checking every alternative, and only then build it again scrubbing.
    if "\\u0000" in data or not (data.isascii() or _encodes(data)):
        data = _json_array(tokens, texts, lp_texts, shown, scrub=True)
    # Safe: every string in it went through _script_string (JSON-quoted, no <, > or & left), so
    # the JSON cannot close its <script> element or open a comment in it; the rest is numbers.
    return mark_safe(data)  # noqa: S308


def _script_string(text: str) -> str:
    """`text` as a JSON string that is safe inside <script> (what json_script escapes)."""
    return encode_basestring(text).translate(_JSON_SCRIPT_ESCAPES)


def _json_array(
    tokens: Sequence[Token], texts: list[str], lp_texts: list[str], shown: int, *, scrub: bool
) -> str:
    # The whole array is one %-format over one flat argument list: a format per entry costs
    # about a fifth more. Strings are encoded once each through a dict, as code repeats its
    # tokens and a model its alternatives.
    formats: list[str] = []
    add_format = formats.append
    args: list[str | float] = []
    encoded: dict[str, str] = {}
    encoded_get = encoded.get
    # strict=False: `texts` stops early when the tokens stop spelling the completion.
    for token, piece, lp_text in zip(tokens, texts, lp_texts, strict=False):
        e = encoded_get(piece)
        if e is None:
            e = encoded[piece] = _script_string(piece)
        start = len(args)
        args += (e, lp_text)
        candidates = token.alternatives if shown else ()
        if len(candidates) <= shown and not scrub:
            # Fast path for what backends nearly always send: few enough finite candidates,
            # most likely first. One chained comparison per candidate checks all of that
            # (nan fails every comparison, and ±inf lies outside the finite range).
            previous = _MAX_FLOAT
            for alt_text, logprob in candidates:
                if not -_MAX_FLOAT <= logprob <= previous:
                    del args[start + 2 :]
                    break
                previous = logprob
                e = encoded_get(alt_text)
                if e is None:
                    e = encoded[alt_text] = _script_string(alt_text)
                args += (e, logprob)
            else:
                add_format(_entry_format(len(candidates)))
                continue
        chosen = _top_alternatives(candidates, shown)
        for alt_text, logprob in chosen:
            args += (_script_string(_scrub(alt_text) if scrub else alt_text), logprob)
        add_format(_entry_format(len(chosen)))
    return "[" + ",".join(formats) % tuple(args) + "]"


def _top_alternatives(
    alternatives: Sequence[tuple[str, float]], shown: int
) -> list[tuple[str, float]]:
    # A -inf candidate had no chance and a nan one is noise: neither is worth showing (nor is
    # either valid JSON).
    finite = [pair for pair in alternatives if math.isfinite(pair[1])]
    return sorted(finite, key=_LOGPROB, reverse=True)[:shown]


@lru_cache(maxsize=64)
def _entry_format(alternatives: int) -> str:
    # One entry's share of the array's format: its token and `alternatives` pairs.
    return "[%s,%s,[" + ",".join(["[%s,%.4f]"] * alternatives) + "]]"


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
