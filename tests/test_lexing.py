"""`lexing.tokens` gives exactly Pygments' tokens, for every kind of lexer and text.

It replaces `RegexLexer.get_tokens_unprocessed` in the render (see `playground/lexing.py`), so any
difference would misplace highlighting: these tests compare the two token for token, on real
source files, on a sample of every language family the playground is likely to show, and on
random text (which drives lexers through their error and state-popping paths).
"""

from __future__ import annotations

import difflib
import json
import re
import string
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pygments.lexer import RegexLexer
from pygments.lexers import CLexer, PythonLexer, get_lexer_by_name

from playground import lexing, rendering

STDLIB = Path(difflib.__file__).read_text() + Path(json.__file__).read_text()
MIXED = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    set -euo pipefail  # a comment
    for f in "$@"; do echo "${f%.txt}" >> out; done
    <div class="x" onclick='go()'>{{ a|b }} &amp; <!-- c --></div>
    SELECT id, name FROM users WHERE name LIKE 'a%' AND id <> 3; -- sql
    fn main() { let r#x: &'static str = "s\\n"; println!("{}", r#x); }
    const re = /ab+c/gi; let t = `x ${1 + 2} y`; /* block */ // line
    #include <stdio.h>
    int main(void) { printf("%d\\n", 0x1F); return 0; }
    def f(x: int) -> str: return f"{x!r:>10}" + r'\\d' + b"\\x00".decode()
    key: [1, 2.5e-3, "three", null, true]
    class A < B; def m; @v ||= {a: 1}; end; end
    my $s = "str"; $s =~ s/(a)\\1/b/g; print qq{$s\\n};
    """
)
# Python (the default), and languages people complete code in; rust, bash and perl have states
# with numbered backreferences, which keep Pygments' loop; C overrides get_tokens_unprocessed.
ALIASES = [
    "python",
    "javascript",
    "typescript",
    "java",
    "go",
    "rust",
    "c",
    "cpp",
    "csharp",
    "kotlin",
    "swift",
    "ruby",
    "php",
    "perl",
    "bash",
    "sql",
    "html",
    "css",
    "json",
    "yaml",
    "markdown",
    "lua",
    "haskell",
    "scala",
    "r",
]


def pygments_tokens(lexer, text: str) -> list:
    return list(lexer.get_tokens_unprocessed(text))


@pytest.mark.parametrize("alias", ALIASES)
def test_the_same_tokens_as_pygments_for_real_and_mixed_sources(alias):
    lexer = get_lexer_by_name(alias, stripnl=False, ensurenl=False)
    for text in (STDLIB, MIXED, "", "\n", "x"):
        assert list(lexing.tokens(lexer, text)) == pygments_tokens(lexer, text)


def test_python_states_are_combined_and_the_render_is_unchanged_by_them():
    lexer = PythonLexer(stripnl=False, ensurenl=False)
    states = lexing._states(lexer)
    # Every state of Python's lexer is matched by one alternation (none falls back).
    assert states is not None
    assert all(state.combined is not None for state in states.values())
    assert list(lexing.tokens(lexer, STDLIB)) == pygments_tokens(lexer, STDLIB)


def test_states_that_cannot_be_combined_and_lexers_with_their_own_loop_keep_pygments():
    rust = get_lexer_by_name("rust")
    states = lexing._states(rust)
    assert states is not None
    assert any(state.combined is None for state in states.values())  # numbered references
    assert lexing._states(CLexer()) is None  # CLexer overrides get_tokens_unprocessed
    assert isinstance(CLexer(), RegexLexer)


@pytest.mark.parametrize("alias", ["python", "javascript", "html", "sql", "css", "ini"])
def test_each_rule_is_tried_for_every_character_a_match_of_it_can_start_with(alias):
    # A token starting with an ASCII character is matched against only the rules whose first
    # characters include it; a rule left out that could have matched there would change the
    # tokens. So: wherever a rule matches something in the sample, its first character is one
    # the rule was worked out to start with (None: tried everywhere).
    lexer = get_lexer_by_name(alias, stripnl=False, ensurenl=False)
    text = MIXED + STDLIB[:2000] + "".join(map(chr, range(128)))
    for state in lexing._states(lexer).values():
        for (rexmatch, _, _), first in zip(state.rules, state.first, strict=False):
            if first is None:
                continue
            for pos, char in enumerate(text):
                if ord(char) < 128 and (m := rexmatch(text, pos)) and m.end() > pos:
                    assert ord(char) in first, (rexmatch.__self__.pattern, char)


def test_first_characters_follow_flags_classes_and_optional_parts():
    first = lexing._first_characters
    assert first(re.compile(r"(?i)select\b")) == {ord("s"), ord("S")}
    assert first(re.compile(r"(?<!\.)(?:abs|all)\b")) == {ord("a")}
    assert first(re.compile(r"[+-]?\d+")) == {ord(c) for c in "+-0123456789"}
    assert first(re.compile(r"\s+")) == {9, 10, 11, 12, 13, 28, 29, 30, 31, 32}
    assert first(re.compile(r"[^a]")) == set(range(128)) - {ord("a")}
    assert first(re.compile(r".")) == set(range(128)) - {10}
    assert first(re.compile(r"x*")) is None  # can match nothing: tried everywhere
    assert first(re.compile(r"(a)?\1b")) is None  # a group reference: not followed


CODE_ALPHABET = (
    string.ascii_letters[:12] + string.digits[:4] + " \t\n'\"`#$@\\/*{}()[]<>=+-.,:;!%&|?~_é😀"
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    alias=st.sampled_from(["python", "javascript", "html", "sql", "bash", "ruby", "yaml"]),
    text=st.text(alphabet=CODE_ALPHABET, max_size=200),
)
def test_the_same_tokens_as_pygments_for_random_text(alias, text):
    lexer = get_lexer_by_name(alias, stripnl=False, ensurenl=False)
    assert list(lexing.tokens(lexer, text)) == pygments_tokens(lexer, text)


def test_the_render_highlights_as_before():
    # The render's lexing goes through lexing.tokens; its segments are Pygments' tokens merged.
    prompt, text = "def f(x):\n", STDLIB[:3000]
    lexer = rendering._lexer_for(None)
    ends, classes = rendering._lex_completion(lexer, prompt, text)
    expected_ends, expected_classes, pos = [], [], 0
    for _, ttype, value in pygments_tokens(lexer, prompt + text):
        pos += len(value)
        if pos <= len(prompt) or not value:
            continue
        cls = rendering._css_classes(ttype)
        if expected_classes and expected_classes[-1] == cls:
            expected_ends[-1] = pos - len(prompt)
        else:
            expected_ends.append(pos - len(prompt))
            expected_classes.append(cls)
    assert (ends, classes) == (expected_ends, expected_classes)


def test_the_warm_up_compiles_the_default_lexer_even_without_the_stdlib_sources(monkeypatch):
    # It lexes difflib's source at startup; an install without .py files must still start.
    import difflib

    monkeypatch.setattr(difflib, "__file__", "/nonexistent/difflib.py")
    rendering.warm_up()
    root = lexing._states(rendering._lexer_for(None))["root"]
    assert root.by_char[ord("d")] is not None  # `def` was lexed: its rules are compiled
