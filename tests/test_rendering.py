"""Tests for playground.rendering: the markup contract, highlighting state, and escaping.

The HTML is checked the way a browser would see it, by parsing it with the stdlib HTMLParser:
which elements and attributes exist, which classes a token carries, what text it shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
import tooltips
from hypothesis import given
from hypothesis import strategies as st

from playground.completions import Alternative, LogprobStatus, Token
from playground.rendering import (
    probability_bucket,
    render_completion,
    render_plain,
    whitespace_visible,
)

ALLOWED_ATTRIBUTES = {"class", "data-i", "data-logprob", "tabindex"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: str = ""

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


@dataclass
class Parsed:
    elements: list[Element] = field(default_factory=list)
    text: str = ""
    # Anything that is neither an element nor text: comments, doctypes, processing instructions.
    other: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> list[Element]:
        return [e for e in self.elements if e.tag == "span" and "t" in e.classes]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parsed = Parsed()
        self.open: list[Element] = []
        self.chunks: list[str] = []

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.parsed.elements.append(element)
        self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.parsed.elements.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.open, f"stray </{tag}>"
        assert self.open.pop().tag == tag

    def handle_data(self, data):
        self.chunks.append(data)
        for element in self.open:
            element.text += data

    def handle_comment(self, data):
        self.parsed.other.append(f"comment {data!r}")

    def handle_decl(self, decl):
        self.parsed.other.append(f"decl {decl!r}")

    def handle_pi(self, data):
        self.parsed.other.append(f"pi {data!r}")

    def unknown_decl(self, data):
        self.parsed.other.append(f"unknown decl {data!r}")


def parse(markup: str) -> Parsed:
    collector = _Collector()
    collector.feed(markup)
    collector.close()
    assert not collector.open, "unclosed elements"
    collector.parsed.text = "".join(collector.chunks)
    return collector.parsed


def _reject_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def load_json(data: str):
    # json.loads accepts NaN and Infinity by default; JSON.parse in the browser does not.
    return json.loads(data, parse_constant=_reject_constant)


def tooltip_entries(rendered) -> list:
    return tooltips.entries(rendered.html, rendered.data_json)


def tok(text: str, logprob: float | None = -0.1, alternatives: tuple = ()) -> Token:
    return Token(text=text, logprob=logprob, alternatives=alternatives)


def render(pieces, *, prompt: str = "", **kwargs):
    """Render `pieces` (strings or Tokens) as a REAL completion whose text they spell."""
    tokens = [p if isinstance(p, Token) else tok(p) for p in pieces]
    kwargs.setdefault("logprobs", LogprobStatus.REAL)
    return render_completion(
        prompt=prompt, tokens=tokens, text="".join(t.text for t in tokens), **kwargs
    )


def assert_only_our_markup(parsed: Parsed) -> None:
    assert parsed.other == []
    for element in parsed.elements:
        assert element.tag == "span", element
        assert set(element.attrs) <= ALLOWED_ATTRIBUTES, element
        if "t" in element.classes:
            assert element.attrs["tabindex"] == "0"
        else:
            # Pygments' spans carry a class and nothing else.
            assert set(element.attrs) == {"class"}, element


def test_each_token_is_one_focusable_span_with_contiguous_indices():
    pieces = ["def", " add", "(a", ",", " b", "):\n", "    ", "return", " a", " +", " b", "\n"]
    rendered = render(pieces)
    parsed = parse(rendered.html)

    spans = parsed.tokens
    assert [s.attrs["data-i"] for s in spans] == [str(i) for i in range(len(pieces))]
    assert [s.text for s in spans] == pieces
    assert all(s.attrs["tabindex"] == "0" for s in spans)
    assert rendered.token_count == len(pieces)
    assert rendered.has_probabilities is True
    assert rendered.language == "Python"
    assert_only_our_markup(parsed)


def test_text_content_is_the_completion_exactly_whitespace_included():
    pieces = ["if", " x", ":\n", "\t", "\ty", " =  ", "'a  b'", "\r\n", "\n\n", "   ", "# é ✓"]
    parsed = parse(render(pieces).html)
    assert parsed.text == "".join(pieces)
    # Whitespace-only tokens keep their own span so their tooltip can show them.
    assert [s.text for s in parsed.tokens] == pieces


def test_data_logprob_is_rounded_to_four_decimals_and_present_only_when_known():
    rendered = render([tok("a", -0.123456), tok(" =", None), tok(" 1", -2.00004)])
    spans = parse(rendered.html).tokens

    assert spans[0].attrs["data-logprob"] == "-0.1235"
    assert "data-logprob" not in spans[1].attrs
    assert not any(c.startswith("p") and c[1:].isdigit() for c in spans[1].classes)
    assert float(spans[2].attrs["data-logprob"]) == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("probability", "bucket"),
    [(0.0, 0), (0.05, 0), (0.1, 1), (0.15, 1), (0.5, 5), (0.899, 8), (0.9, 9), (1.0, 9)],
)
def test_probability_bucket_is_the_decile_of_the_probability(probability, bucket):
    logprob = math.log(probability) if probability else -math.inf
    assert probability_bucket(logprob) == bucket


def test_probability_bucket_handles_noise_and_nan():
    assert probability_bucket(1e-7) == 9  # rounding can make a certain token's logprob positive
    assert probability_bucket(-1e300) == 0
    assert probability_bucket(math.nan) == 0


def test_token_span_carries_its_bucket_class():
    rendered = render([tok("x", math.log(0.95)), tok(" =", math.log(0.42)), tok(" 1", -9.0)])
    classes = [s.classes for s in parse(rendered.html).tokens]
    assert "p9" in classes[0]
    assert "p4" in classes[1]
    assert "p0" in classes[2]
    assert all(sum(c.startswith("p") and c[1:].isdigit() for c in cs) == 1 for cs in classes)


def test_token_inside_one_lexer_token_gets_its_pygments_class_on_the_same_span():
    spans = parse(render(["def", " f", "():", " pass"]).html).tokens
    assert spans[0].classes[0] == "t"
    assert "k" in spans[0].classes
    assert spans[0].text == "def"


def test_lexer_token_split_over_model_tokens_gives_each_piece_its_class():
    parsed = parse(render(["ret", "urn"]).html)
    assert [(e.text, e.classes) for e in parsed.elements] == [
        ("ret", ["t", "p9", "k"]),
        ("urn", ["t", "p9", "k"]),
    ]


def test_token_crossing_lexer_tokens_nests_the_pygments_spans():
    parsed = parse(render(["x", " = 'hi'", "\n"]).html)
    assert [(e.text, e.classes) for e in parsed.elements] == [
        ("x", ["t", "p9", "n"]),
        (" = 'hi'", ["t", "p9"]),
        ("=", ["o"]),
        ("'hi'", ["s1"]),
        ("\n", ["t", "p9", "w"]),
    ]
    assert [e.text for e in parsed.tokens] == ["x", " = 'hi'", "\n"]


def test_completion_continuing_a_string_from_the_prompt_is_highlighted_as_a_string():
    rendered = render(["def", " f", '"', "\n"], prompt='x = "abc')
    first = parse(rendered.html).tokens[0]
    assert first.text == "def"
    assert "k" not in first.classes
    assert "s2" in first.classes


def test_same_completion_without_the_open_string_is_a_keyword():
    first = parse(render(["def", " f", '"', "\n"], prompt="x = 1\n").html).tokens[0]
    assert "k" in first.classes


def test_language_alias_selects_the_lexer_and_unknown_falls_back_to_text():
    assert render(["let x = 1;"], language="js").language == "JavaScript"
    assert render(["x"]).language == "Python"
    plain = render(["def f"], language="no-such-language")
    assert plain.language == "Text only"
    assert parse(plain.html).tokens[0].classes == ["t", "p9"]


@pytest.mark.parametrize("status", [LogprobStatus.ABSENT, LogprobStatus.PLACEHOLDER])
def test_without_probabilities_only_highlighting_is_rendered(status):
    text = "def f(x):\n    return x\n"
    tokens = [] if status is LogprobStatus.ABSENT else [tok("", 0.0) for _ in range(3)]
    rendered = render_completion(prompt="", tokens=tokens, text=text, logprobs=status)
    parsed = parse(rendered.html)

    assert parsed.tokens == []
    assert "data-logprob" not in rendered.html
    assert "data-i" not in rendered.html
    assert parsed.text == text
    assert ["k"] in [e.classes for e in parsed.elements]
    assert rendered.has_probabilities is False
    assert rendered.mean_logprob is None
    assert rendered.perplexity is None
    assert load_json(rendered.data_json) == []
    assert_only_our_markup(parsed)


def test_real_status_without_tokens_renders_highlighting_only():
    rendered = render_completion(prompt="", tokens=[], text="pass", logprobs=LogprobStatus.REAL)
    assert parse(rendered.html).tokens == []
    assert rendered.has_probabilities is False


def test_mean_logprob_and_perplexity_cover_the_known_logprobs():
    rendered = render([tok("a", -0.5), tok("b", None), tok("c", -1.5), tok("d", math.nan)])
    assert rendered.mean_logprob == pytest.approx(-1.0)
    assert rendered.perplexity == pytest.approx(math.e)


def test_json_has_one_entry_per_span_with_sorted_capped_alternatives():
    alternatives = (
        Alternative(text=" b", logprob=-3.0),
        Alternative(text=" a", logprob=-0.25),
        Alternative(text=" c", logprob=-1.123456),
    )
    rendered = render(
        [tok("x", -0.01, alternatives), tok(" =", None), tok(" 1", -0.2)], alternatives_shown=2
    )
    data = tooltip_entries(rendered)

    assert len(data) == len(parse(rendered.html).tokens) == 3
    assert data[0] == ["x", -0.01, [[" a", -0.25], [" c", -1.1235]]]
    assert data[1] == [" =", None, []]
    assert data[2] == [" 1", -0.2, []]
    # Logprobs in ten-thousandths, rounded; compact separators.
    assert load_json(rendered.data_json) == {
        "n": [2, 0, 0],
        "t": [" a", " c"],
        "l": [-2500, -11235],
    }
    assert ", " not in rendered.data_json


def test_json_keeps_the_backends_order_and_the_tooltip_sorts():
    ordered = (Alternative(text="a", logprob=-0.1), Alternative(text="b", logprob=-0.2))
    rendered = render([tok("a", -0.1, ordered), tok("b", -0.2, ordered[::-1])])
    assert load_json(rendered.data_json)["t"] == ["a", "b", "b", "a"]
    data = tooltip_entries(rendered)
    assert data[0][2] == data[1][2] == [["a", -0.1], ["b", -0.2]]


def test_plain_tuples_and_named_tuples_give_the_same_json():
    # The read path makes plain pairs; a saved run read back makes Alternatives.
    pairs = (("a", -0.123456), ("b", -2.5))
    named = tuple(Alternative(text=t, logprob=lp) for t, lp in pairs)
    assert render([tok("a", -0.1, pairs)]).data_json == render([tok("a", -0.1, named)]).data_json


def test_alternatives_shown_zero_sends_no_alternatives():
    alternatives = (Alternative(text="y", logprob=-0.1),)
    rendered = render([tok("y", -0.1, alternatives)], alternatives_shown=0)
    assert tooltip_entries(rendered) == [["y", -0.1, []]]
    assert load_json(rendered.data_json) == {"n": [0], "t": [], "l": []}


def test_non_finite_logprobs_never_reach_the_page():
    alternatives = (
        Alternative(text="a", logprob=-0.5),
        Alternative(text="b", logprob=-math.inf),
        Alternative(text="c", logprob=math.nan),
        Alternative(text="d", logprob=-1.0),
    )
    rendered = render([tok("a", math.inf, alternatives), tok("b", -math.inf), tok("c", math.nan)])
    spans = parse(rendered.html).tokens

    assert all("data-logprob" not in s.attrs for s in spans)
    assert tooltip_entries(rendered) == [
        ["a", None, [["a", -0.5], ["d", -1.0]]],
        ["b", None, []],
        ["c", None, []],
    ]
    assert rendered.mean_logprob is None


def test_json_is_safe_inside_a_script_element():
    payload = "</script><!--<script>&amp;\u2028\u2029"
    alternatives = (Alternative(text=payload, logprob=-1.0),)
    rendered = render([tok(payload, -0.5, alternatives)])

    for char in "<>&\u2028\u2029":
        assert char not in rendered.data_json
    assert tooltip_entries(rendered) == [[payload, -0.5, [[payload, -1.0]]]]


def test_a_carriage_return_survives_an_html_parser():
    # A browser reads a bare CR (or CR LF) in markup as LF; the tooltip compares a span's text
    # with the token's alternatives, so a CR is written as a reference.
    rendered = render(["x", "\r\n", "y = '\r'"])
    assert "\r" not in rendered.html
    assert [s.text for s in parse(rendered.html).tokens] == ["x", "\r\n", "y = '\r'"]


def test_empty_tokens_keep_their_span_so_indices_stay_contiguous():
    spans = parse(render(["", "x", "", " = 1", ""]).html).tokens
    assert [s.attrs["data-i"] for s in spans] == ["0", "1", "2", "3", "4"]
    assert [s.text for s in spans] == ["", "x", "", " = 1", ""]


def test_tokens_that_stop_spelling_the_text_get_spans_up_to_the_mismatch():
    # A backend reporting a split multi-byte character as two replacement-character tokens.
    tokens = [tok("s"), tok(" ="), tok(" '"), tok("\ufffd"), tok("\ufffd"), tok("'")]
    text = "s = 'é'"
    rendered = render_completion(prompt="", tokens=tokens, text=text, logprobs=LogprobStatus.REAL)
    parsed = parse(rendered.html)

    assert parsed.text == text
    assert [s.text for s in parsed.tokens] == ["s", " =", " '"]
    # The rest is still highlighted, as a string here, just without token spans.
    assert parsed.elements[-1].text == "é'"
    assert "s1" in parsed.elements[-1].classes
    assert len(tooltip_entries(rendered)) == 3
    assert rendered.token_count == 6
    assert rendered.has_probabilities is True


def test_prompt_is_not_part_of_the_output():
    rendered = render([" + 1"], prompt="secret_prompt_marker = 2")
    assert "secret_prompt_marker" not in rendered.html
    assert "secret_prompt_marker" not in rendered.data_json


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "' onmouseover='alert(1)",
    '<a href="javascript:alert(1)">x</a>',
    '<div hx-post="/x" hx-trigger="load">',
    "</script><script>alert(1)</script>",
    "\u2028",
    "\x00",
    "\ud800",
    ("<b>&amp;" * 12_500)[:100_000],
    "![x](https://evil.example/a.png)",
    "<!-- comment -->",
    "<![CDATA[x]]>",
    "&lt;script&gt;",
]


def scrubbed(text: str) -> str:
    """What the page shows for `text`: NUL and lone surrogates become U+FFFD."""
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


# In code the payload crosses many lexer tokens (nested spans); after "# " it lies inside one
# comment token (a single span with combined classes). Both ways of writing a token are covered.
@pytest.mark.parametrize("lead", ["x = ", "# "])
@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_token_text_is_shown_as_text(payload, lead):
    # The prompt holds the payload too (in a comment, so the lexer state is known): never shown.
    rendered = render([lead, payload, "\n"], prompt=f"# {payload}\n")
    parsed = parse(rendered.html)

    assert_only_our_markup(parsed)
    assert len(parsed.tokens) == 3
    assert parsed.tokens[1].text == scrubbed(payload)
    if lead == "# ":
        assert "c1" in parsed.tokens[1].classes
    assert parsed.text == lead + scrubbed(payload) + "\n"
    assert tooltip_entries(rendered)[1][0] == scrubbed(payload)
    rendered.html.encode("utf-8")
    rendered.data_json.encode("utf-8")


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_alternative_text_stays_inside_the_json(payload):
    alternatives = (Alternative(text="y", logprob=-0.1), Alternative(text=payload, logprob=-2.0))
    rendered = render([tok("y", -0.1, alternatives)])
    parsed = parse(rendered.html)

    assert_only_our_markup(parsed)
    assert parsed.text == "y"
    for char in "<>&\u2028\u2029":
        assert char not in rendered.data_json
    assert tooltip_entries(rendered) == [["y", -0.1, [["y", -0.1], [scrubbed(payload), -2.0]]]]
    rendered.data_json.encode("utf-8")


_LOGPROBS = st.one_of(
    # Sixteenths, so that the four decimals are exact and equal values tie exactly.
    st.integers(min_value=-200, max_value=4).map(lambda k: k / 16),
    st.sampled_from([math.inf, -math.inf, math.nan]),
)


@given(
    st.lists(
        st.lists(
            st.tuples(st.text(alphabet=st.characters(codec=None), max_size=4), _LOGPROBS),
            max_size=7,
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=0, max_value=6),
)
def test_the_tooltip_gets_the_top_finite_alternatives_of_any_token(per_token, shown):
    tokens = [tok(f"t{i}", -0.5, tuple(alts)) for i, alts in enumerate(per_token)]
    rendered = render(tokens, alternatives_shown=shown)

    expected = [
        sorted(
            ([scrubbed(t), lp] for t, lp in alts if math.isfinite(lp)),
            key=lambda pair: pair[1],
            reverse=True,
        )[:shown]
        for alts in per_token
    ]
    assert [entry[2] for entry in tooltip_entries(rendered)] == expected
    for char in "<>&\u2028\u2029":
        assert char not in rendered.data_json
    rendered.data_json.encode("utf-8")


@given(
    st.lists(
        st.text(alphabet=st.characters(codec=None), max_size=8),
        max_size=30,
    ),
    st.text(max_size=20),
)
def test_any_split_of_any_text_renders_every_token_as_text(pieces, prompt):
    rendered = render(pieces, prompt=prompt)
    parsed = parse(rendered.html)

    assert_only_our_markup(parsed)
    assert parsed.text == scrubbed("".join(pieces))
    assert [s.text for s in parsed.tokens] == [scrubbed(p) for p in pieces]
    assert [s.attrs["data-i"] for s in parsed.tokens] == [str(i) for i in range(len(pieces))]


def test_a_4096_token_completion_renders_every_token():
    # The size the performance budget is set for (4,096 tokens, five alternatives each). Timing
    # is measured outside the test suite; here only the result is checked.
    line = "    total = compute(values[i], weight=0.5)  # running sum\n"
    pieces = [line[j : j + 4] for j in range(0, len(line), 4)] * 300
    pieces = pieces[:4096]
    alternatives = tuple(Alternative(text=f"a{k}", logprob=-0.1 * (k + 1)) for k in range(5))
    rendered = render([tok(p, -0.05, alternatives) for p in pieces])
    parsed = parse(rendered.html)

    assert len(parsed.tokens) == 4096
    assert parsed.tokens[-1].attrs["data-i"] == "4095"
    assert parsed.text == "".join(pieces)
    assert len(tooltip_entries(rendered)) == 4096


def test_whitespace_visible_marks_spaces_tabs_and_newlines():
    assert whitespace_visible(" \tx\n") == "·→x⏎"
    assert whitespace_visible("abc") == "abc"


def test_render_plain_escapes_and_keeps_everything_on_one_line():
    text = "<script>alert('x')</script>\n\"a\" & b\r\nc\u2028\x00\ud800"
    plain = render_plain(text)

    assert "\n" not in plain
    assert "\r" not in plain
    assert "<" not in plain
    assert ">" not in plain
    assert "'" not in plain
    assert '"' not in plain
    parsed = parse(plain)
    assert parsed.elements == []
    assert parsed.text == scrubbed(text)
    plain.encode("utf-8")
