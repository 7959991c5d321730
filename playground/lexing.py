"""Pygments' regex lexers, run with one regular-expression match per token instead of one per rule.

A `RegexLexer` tries the rules of its current state one after another, a Python-level call for
each, until one matches: Python's lexer has 56 rules in its root state, and a name is matched
only after the keyword and builtin rules before it failed. That loop was the largest part of the
final render (docs/PERFORMANCE.md). Here each state's rules are compiled into one alternation,
`(?:rule0)()|(?:rule1)()|...`, which the `re` engine tries in the same order in C; the empty group
after each rule says which one matched (`lastindex`: it is the last group of its alternative to
close). Ordered alternation matches what the first matching rule would, at the same place and
with the same length, so the tokens are Pygments' own: `tests/test_lexing.py` compares them
with `RegexLexer.get_tokens_unprocessed` over real sources and random text.

Most rules can only start with a few characters (a string rule with a quote, a number rule with
a digit or sign), and `re` tries the alternatives in turn: a name was still tried against some
thirty rules before its own. So for a token starting with an ASCII character only the rules
whose match can start with it are tried, in the same order: each rule's first characters are
worked out from its parsed pattern (`_first_characters`), and a state compiles the alternation
of such a subset the first time a token starts with that character. Leaving out rules that
cannot match at a place does not change which rule matches first. Python's lexer matched a
token about 2.5x faster so (docs/PERFORMANCE.md).

A rule whose action is a callback (`bygroups`, `using`, ...) gets the match object of its own
regex, matched again at the same place. A state whose rules cannot be combined (numbered
backreferences or conditionals, which renumbering would break; a pattern the combined regex
cannot compile) keeps Pygments' loop, as does any lexer that overrides
`get_tokens_unprocessed` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from re import _compiler, _constants, _parser  # type: ignore[attr-defined]

from pygments.lexer import Lexer, RegexLexer
from pygments.token import Error, Whitespace, _TokenType

# Flags a scoped group `(?ims-x:...)` can set; a rule's other flags must be the state's own.
_SCOPED = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}
_SCOPED_MASK = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE
# A leading `(?i)` sets flags for the whole pattern: `pattern.flags` has them, and the scoped group
# applies them, so it is dropped (an alternation allows global flags only at its very start).
_GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
# Group references by number (or conditionals on a group): renumbered in the alternation.
_NUMBERED_REFERENCE = re.compile(r"(?<!\\)(?:\\\\)*\\[1-9]|\(\?\(")


class _State:
    """One state's rules, and their alternation when they could be combined."""

    __slots__ = ("by_char", "combined", "first", "parts", "rules", "which")

    def __init__(self, rules: list) -> None:
        self.rules = rules
        self.combined = None  # the alternation's `match`, or None for Pygments' loop
        self.which: list[int] = []  # group index -> rule index
        # For an ASCII character: the alternation of only the rules a match can start with it,
        # and its group table; built the first time a token starts with that character.
        self.by_char: list[tuple | None] = [None] * 128
        self.parts: list[str] = []  # each rule as its piece of the alternation
        self.first: list[frozenset[int] | None] = []  # per rule, see _first_characters
        if rules:
            self._combine()

    def _combine(self) -> None:
        patterns = [rexmatch.__self__ for rexmatch, _, _ in self.rules]
        base = patterns[0].flags & ~_SCOPED_MASK
        parts = []
        for pattern in patterns:
            if pattern.flags & ~_SCOPED_MASK != base or _NUMBERED_REFERENCE.search(pattern.pattern):
                return
            on = "".join(c for flag, c in _SCOPED.items() if pattern.flags & flag)
            off = "".join(c for flag, c in _SCOPED.items() if not pattern.flags & flag)
            scope = f"{on}-{off}" if off else on
            source = pattern.pattern
            leading = _GLOBAL_FLAGS.match(source)
            if leading:
                source = source[leading.end() :]
            parts.append(f"(?{scope}:{source})()")
        entry = self._alternation(range(len(patterns)), parts, patterns, base)
        if entry is None:
            return
        self.combined, self.which = entry
        self.parts = parts
        self.first = [_first_characters(pattern) for pattern in patterns]

    @staticmethod
    def _alternation(indexes, parts, patterns, base) -> tuple | None:
        which = [-1]  # group 0 is the whole match
        for index in indexes:
            which += [-1] * patterns[index].groups + [index]
        try:
            combined = re.compile("|".join(parts[i] for i in indexes), base)
        except (re.error, OverflowError, RecursionError):
            return None
        if combined.groups != len(which) - 1:
            return None
        return combined.match, which

    def for_char(self, code: int) -> tuple:
        """(match, which) for a token starting with ASCII `code`; match is None when no rule can."""
        entry = self.by_char[code]
        if entry is None:
            indexes = [i for i, chars in enumerate(self.first) if chars is None or code in chars]
            if len(indexes) == len(self.parts):
                entry = (self.combined, self.which)
            elif not indexes:
                entry = (None, self.which)
            else:
                patterns = [rexmatch.__self__ for rexmatch, _, _ in self.rules]
                base = patterns[0].flags & ~_SCOPED_MASK
                entry = self._alternation(indexes, self.parts, patterns, base)
                if entry is None:
                    entry = (self.combined, self.which)
            self.by_char[code] = entry
        return entry


# --- Which characters a rule's match can start with ------------------------------------------
# Worked out from the parsed pattern (re._parser, the parser `re.compile` itself uses): the first
# element that consumes a character decides, after any zero-width ones (anchors, lookarounds,
# optional parts, whose own first characters are added). A rule that can match the empty string,
# or holds something not followed here (group references), may start anywhere: None.

_ONE_CHARACTER = {_constants.LITERAL, _constants.NOT_LITERAL, _constants.IN, _constants.ANY}
_REPEATS = {_constants.MAX_REPEAT, _constants.MIN_REPEAT}
if hasattr(_constants, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_constants.POSSESSIVE_REPEAT)
_ZERO_WIDTH = {_constants.AT, _constants.ASSERT, _constants.ASSERT_NOT}


class _Unknown(Exception):
    pass


def _first_characters(pattern: re.Pattern) -> frozenset[int] | None:
    """The ASCII code points a non-empty match of `pattern` can start with, or None (any)."""
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
        chars, nullable = _first(list(parsed), parsed.state, pattern.flags)
    except (_Unknown, re.error, RecursionError, TypeError, ValueError, IndexError):
        return None
    return None if nullable else frozenset(chars)


def _first(items: list, state, flags: int) -> tuple[set[int], bool]:
    """First ASCII characters of the sequence `items`, and whether it can match empty."""
    chars: set[int] = set()
    for op, av in items:
        if op in _ONE_CHARACTER:
            return chars | _ascii_matching(op, av, state, flags), False
        if op is _constants.SUBPATTERN:
            _, add, remove, sub = av
            more, nullable = _first(list(sub), state, (flags | add) & ~remove)
        elif op is _constants.ATOMIC_GROUP:
            more, nullable = _first(list(av), state, flags)
        elif op is _constants.BRANCH:
            more, nullable = set(), False
            for branch in av[1]:
                branch_chars, branch_nullable = _first(list(branch), state, flags)
                more |= branch_chars
                nullable = nullable or branch_nullable
        elif op in _REPEATS:
            low, _, sub = av
            more, nullable = _first(list(sub), state, flags)
            nullable = nullable or low == 0
        elif op in _ZERO_WIDTH:
            continue  # consumes nothing: the next element starts the match
        else:
            raise _Unknown(op)
        chars |= more
        if not nullable:
            return chars, False
    return chars, True


def _ascii_matching(op, av, state, flags: int) -> set[int]:
    """The ASCII characters one single-character element matches, asked of `re` itself (so
    classes, negation and case folding are its own)."""
    element = _parser.SubPattern(state, [(op, av)])
    matches = _compiler.compile(element, flags).fullmatch
    return {code for code in range(128) if matches(chr(code))}


# Compiled states by their rules table: most lexers share one per class, a few (C#'s, with its
# `unicodelevel` option) build one per instance. The table is kept with its states, so its id is
# not reused while it is a key.
_TABLES: dict[int, tuple[dict, dict[str, _State] | None]] = {}


def _states(lexer: RegexLexer) -> dict[str, _State] | None:
    tokendefs = lexer._tokens
    entry = _TABLES.get(id(tokendefs))
    if entry is None or entry[0] is not tokendefs:
        states = None
        if type(lexer).get_tokens_unprocessed is RegexLexer.get_tokens_unprocessed:
            states = {name: _State(rules) for name, rules in tokendefs.items()}
        if len(_TABLES) >= 256:
            _TABLES.clear()
        entry = _TABLES[id(tokendefs)] = (tokendefs, states)
    return entry[1]


def tokens(lexer: Lexer, text: str) -> Iterator[tuple[int, _TokenType, str]]:
    """`lexer.get_tokens_unprocessed(text)`, the same tokens, faster for regex lexers."""
    states = _states(lexer) if isinstance(lexer, RegexLexer) else None
    if states is None:
        yield from lexer.get_tokens_unprocessed(text)
        return
    # The loop of RegexLexer.get_tokens_unprocessed (Pygments 2.x), with the rule found by one
    # match of the state's alternation when it has one.
    pos = 0
    stack = ["root"]
    state = states["root"]
    end_of_text = len(text)
    while True:
        matched = False
        combined = state.combined
        if combined is not None:
            # Only the rules that can start with this character are tried (for ASCII).
            which = state.which
            if pos < end_of_text:
                code = ord(text[pos])
                if code < 128:
                    combined, which = state.by_char[code] or state.for_char(code)
            m = combined(text, pos) if combined is not None else None
            if m is not None:
                rexmatch, action, new_state = state.rules[which[m.lastindex]]
                if type(action) is _TokenType:
                    end = m.end()
                    yield pos, action, text[pos:end]
                    pos = end
                else:
                    m = rexmatch(text, pos)
                    if action is not None:
                        yield from action(lexer, m)
                    pos = m.end()
                matched = True
        else:
            for rexmatch, action, target in state.rules:
                m = rexmatch(text, pos)
                if m:
                    new_state = target
                    if action is not None:
                        if type(action) is _TokenType:
                            yield pos, action, m.group()
                        else:
                            yield from action(lexer, m)
                    pos = m.end()
                    matched = True
                    break
        if not matched:
            # No rule matched: a newline resets to the root state, anything else is an error.
            if pos >= end_of_text:
                return
            if text[pos] == "\n":
                stack = ["root"]
                state = states["root"]
                yield pos, Whitespace, "\n"
            else:
                yield pos, Error, text[pos]
            pos += 1
            continue
        if new_state is None:
            continue
        if isinstance(new_state, tuple):
            for name in new_state:
                if name == "#pop":
                    if len(stack) > 1:
                        stack.pop()
                elif name == "#push":
                    stack.append(stack[-1])
                else:
                    stack.append(name)
        elif isinstance(new_state, int):
            # Pop, but keep at least one state (as Pygments does for code that pops too much).
            if abs(new_state) >= len(stack):
                del stack[1:]
            else:
                del stack[new_state:]
        elif new_state == "#push":
            stack.append(stack[-1])
        state = states[stack[-1]]
