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

A rule whose action is a callback (`bygroups`, `using`, ...) gets the match object of its own
regex, matched again at the same place. A state whose rules cannot be combined (numbered
backreferences or conditionals, which renumbering would break; a pattern the combined regex
cannot compile) keeps Pygments' loop, as does any lexer that overrides
`get_tokens_unprocessed` itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

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

    __slots__ = ("combined", "rules", "which")

    def __init__(self, rules: list) -> None:
        self.rules = rules
        self.combined = None  # the alternation's `match`, or None for Pygments' loop
        self.which: list[int] = []  # group index -> rule index
        if rules:
            self._combine()

    def _combine(self) -> None:
        patterns = [rexmatch.__self__ for rexmatch, _, _ in self.rules]
        base = patterns[0].flags & ~_SCOPED_MASK
        parts = []
        which = [-1]  # group 0 is the whole match
        for index, pattern in enumerate(patterns):
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
            which += [-1] * pattern.groups + [index]
        try:
            combined = re.compile("|".join(parts), base)
        except (re.error, OverflowError, RecursionError):
            return
        if combined.groups != len(which) - 1:
            return
        self.combined = combined.match
        self.which = which


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
    while True:
        matched = False
        combined = state.combined
        if combined is not None:
            m = combined(text, pos)
            if m is not None:
                rexmatch, action, new_state = state.rules[state.which[m.lastindex]]
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
            if pos >= len(text):
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
