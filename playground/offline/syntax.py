"""Python's lexical state, followed token by token, for the offline model.

An n-gram model sees four tokens back: it cannot know that it is inside a string, how deep in
brackets it is, or how far the block it is writing is indented. `Lexer` follows that state over
the model's tokens (the ones of `tokenizer.py`), and gives the model three things:

- whether a quote token closes the string that is open (training gives a closing quote a token
  id of its own, so the n-gram learns that three quotes followed by text open a docstring and
  three quotes followed by a newline end one);
- a feature of each candidate next token in that state (`Lexer.feature`): a closing bracket
  that does not match, a newline inside a one-line string, an indentation the previous line
  does not allow, an assignment in an `if`, a string that has gone on for long, ... The model
  multiplies each candidate's probability by a weight per feature (`weights.SYNTAX_WEIGHTS`,
  fitted on held-out code) and renormalises;
- whether the next token comes in prose (a string or a comment) or in code: the prompt cache
  counts the two apart.

The lexer is forgiving, because a prompt can be anything: an unbalanced bracket or a string
broken by a newline is recovered from, never an error.
"""

from __future__ import annotations

import keyword
import re

(
    K_OTHER,
    K_NEWLINE,
    K_SPACE,
    K_HASH,
    K_OPEN,
    K_CLOSE,
    K_QUOTE,
    K_BACKSLASH,
    K_COLON,
    K_EQUALS,
    K_OPERATOR,
    K_DOT,
    K_NAME,
) = range(13)

KIND_NAMES = (
    "other",
    "newline",
    "space",
    "#",
    "open",
    "close",
    "quote",
    "backslash",
    ":",
    "=",
    "operator",
    ".",
    "name",
)
# A token's (kind, argument): the width of an indentation, the bracket it opens or closes, the
# quote of a string delimiter, the word of a name, whether an "=" has a space before it.
Kind = tuple[int, object]

_QUOTE_RE = re.compile(r" ?(?:[rRbBfFuU]{1,2})?(\"\"\"|'''|\"|')")
_OPENING = {")": "(", "]": "[", "}": "{"}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Operators, and what a line cannot end with (outside brackets) but for `,` (`x = 1,` is a
# tuple). `*` is left out: `from x import *`.
_OPERATORS = _words(
    "+ - / // % == != < > <= >= , | & ^ << >> @ -> := += -= *= /= //= %= **= |= &= ^= >>= <<= @="
    " and or not in is"
)
_COMMA = (K_OPERATOR, ",")
_COMPOUND = _words("if elif else for while def class with try except finally async")
_SIMPLE = _words(
    "return raise import from del pass break continue assert global nonlocal yield await"
)
# Soft keywords (`match x:` but also `match = ...`): no statement features for their lines.
_SOFT = frozenset({"match", "case", "type"})


_ALL_KINDS = frozenset(range(13))
_NO_KINDS: frozenset[int] = frozenset()
_CLOSE_KINDS = frozenset({K_CLOSE})
_QUOTE_KINDS = frozenset({K_CLOSE, K_QUOTE})
_BRACKET_KINDS = frozenset({K_CLOSE, K_EQUALS, K_COLON})
_LINE_KINDS = frozenset({K_CLOSE, K_EQUALS, K_COLON, K_NEWLINE})
_KEYWORDS = frozenset(keyword.kwlist)


# The kinds whose feature can depend on the token's argument (for the others, on its kind only).
ARGUMENT_KINDS = frozenset({K_SPACE, K_CLOSE, K_QUOTE, K_EQUALS})


def is_name(text: str) -> bool:
    """Whether a token is a name (`x`, ` self`): an identifier, not a keyword."""
    bare = text[1:] if text.startswith(" ") else text
    return bare.isidentifier() and bare not in _KEYWORDS


def classify(text: str) -> Kind:
    """The kind of a token, from its text alone."""
    if text in ("\n", "\r\n"):
        return K_NEWLINE, None
    if text.isspace():
        return K_SPACE, len(text.expandtabs(8))
    bare = text.lstrip(" ")
    if bare == "#":
        return K_HASH, None
    if bare in ("(", "[", "{"):
        return K_OPEN, bare
    if bare in _OPENING:
        return K_CLOSE, _OPENING[bare]
    if bare == "\\":
        return K_BACKSLASH, None
    if bare == ":":
        return K_COLON, None
    if bare == "=":
        return K_EQUALS, bare != text
    if bare == ".":
        return K_DOT, None
    quote = _QUOTE_RE.fullmatch(text)
    if quote:
        return K_QUOTE, quote.group(1)
    if bare in _OPERATORS:
        return K_OPERATOR, bare
    if bare.isidentifier():
        return K_NAME, bare
    return K_OTHER, None


class Lexer:
    """The lexical state after the tokens fed so far (`feed` them one `classify`d at a time)."""

    __slots__ = (
        "_after",
        "_brackets",
        "_colon",
        "_continued",
        "_def",
        "_docstring",
        "_escaped",
        "_fresh",
        "_head",
        "_head_word",
        "_indents",
        "_lambda",
        "_last",
        "_length",
        "_line_start",
        "_mode",
        "_pending",
        "_previous",
        "_quote",
        "_unit",
    )

    _CODE, _COMMENT, _STRING = range(3)

    def __init__(self) -> None:
        self._mode = self._CODE
        self._quote = ""  # the delimiter of the open string
        self._escaped = False  # the last token in the string was a backslash
        self._fresh = False  # the string was opened by the last token
        self._length = 0  # tokens in the string so far
        self._docstring = False  # the string began a statement
        self._brackets: list[str] = []
        self._indents: list[int] | None = None  # Python's indentation stack, once a line began
        self._unit = 4  # the last indentation step seen
        self._line_start = True  # no code yet on this logical line
        self._pending: int | None = None  # the width of this line's indentation, once seen
        # How the last logical line ended: "def" (a def or class header), ":" (another block
        # header) or "" (anything else).
        self._after = ""
        self._continued = False  # a backslash continues the line
        self._head = ""  # "compound", "simple", "soft" or "other": how the line starts
        self._head_word: object = None  # its first token's word
        self._colon = False  # the logical line has a ":" outside brackets
        self._def = False  # the logical line is a `def` (parameters can have annotations)
        self._lambda = False  # the logical line has a lambda
        self._last: Kind = (K_NEWLINE, None)  # the last two code tokens
        self._previous: Kind = (K_NEWLINE, None)

    def closes(self, kind: int, arg: object) -> bool:
        """Whether a token of this kind would end the open string."""
        return (
            self._mode == self._STRING
            and kind == K_QUOTE
            and arg == self._quote
            and not self._escaped
        )

    def feed(self, kind: int, arg: object) -> None:
        mode = self._mode
        if mode == self._COMMENT:
            if kind == K_NEWLINE:
                self._mode = self._CODE
                self._newline()
            return
        if mode == self._STRING:
            self._fresh = False
            self._length += 1
            if self._escaped:
                self._escaped = False
            elif kind == K_BACKSLASH:
                self._escaped = True
            elif kind == K_QUOTE and arg == self._quote:
                self._mode = self._CODE
                self._shift((K_QUOTE, arg))
            elif kind == K_NEWLINE and len(self._quote) == 1:
                self._mode = self._CODE  # a one-line string broken by a newline: recover
                self._newline()
            return
        if kind == K_NEWLINE:
            self._newline()
            return
        if kind == K_SPACE:
            if self._line_start and self._pending is None:
                self._pending = arg  # type: ignore[assignment]
            return
        if kind == K_HASH:
            self._mode = self._COMMENT
            return
        if self._line_start:
            self._begin_line(kind, arg)
        if kind == K_BACKSLASH:
            self._continued = True
            return
        self._continued = False
        if kind == K_QUOTE:
            self._mode = self._STRING
            self._quote = arg  # type: ignore[assignment]
            self._escaped = False
            self._fresh = True
            self._length = 0
            self._docstring = self._last[0] == K_NEWLINE and not self._brackets
        elif kind == K_OPEN:
            self._brackets.append(arg)  # type: ignore[arg-type]
        elif kind == K_CLOSE:
            if self._brackets:
                self._brackets.pop()
        elif kind == K_COLON and not self._brackets:
            self._colon = True
        elif kind == K_NAME and arg == "lambda":
            self._lambda = True
        self._shift((kind, arg))

    def _shift(self, token: Kind) -> None:
        self._previous = self._last
        self._last = token

    def _begin_line(self, kind: int, arg: object) -> None:
        width = self._pending or 0
        indents = self._indents
        if indents is None:
            # The first line: a prompt can be a fragment of indented code, so every level of
            # 4 up to it counts as an enclosing block.
            step = 4 if width % 4 == 0 else width
            self._indents = [0, *range(step, width + 1, step)] if width else [0]
        elif width > indents[-1]:
            self._unit = width - indents[-1]
            indents.append(width)
        else:
            while len(indents) > 1 and indents[-1] > width:
                indents.pop()
            indents[-1] = width  # an inconsistent dedent: take it as it is
        self._line_start = False
        self._pending = None
        if kind == K_NAME:
            self._head = (
                "compound"
                if arg in _COMPOUND
                else "simple"
                if arg in _SIMPLE
                else "soft"
                if arg in _SOFT
                else "other"
            )
        else:
            self._head = "other"
        self._def = arg in ("def", "async")
        self._head_word = arg
        self._colon = self._lambda = False

    def _newline(self) -> None:
        if self._brackets or self._continued:
            self._continued = False
            return
        if not self._line_start:
            if self._last[0] != K_COLON:
                self._after = ""
            else:
                self._after = "def" if self._def or self._head_word == "class" else ":"
        self._line_start = True
        self._pending = None
        self._shift((K_NEWLINE, None))

    @property
    def prose(self) -> bool:
        """Inside a string or a comment."""
        return self._mode != self._CODE

    def relevant_kinds(self) -> frozenset[int]:
        """The kinds of tokens `feature` can give a feature to in this state."""
        if self._mode == self._STRING:
            return _ALL_KINDS
        if self._mode == self._COMMENT:
            return _NO_KINDS
        if self._line_start:
            return _ALL_KINDS if self._pending is None else _QUOTE_KINDS
        if self._brackets:
            return _CLOSE_KINDS if self._def else _BRACKET_KINDS
        return _CLOSE_KINDS if self._head == "soft" else _LINE_KINDS

    def feature(self, kind: int, arg: object) -> object:
        """The feature of a candidate next token in this state, or None if it has none.

        Features are what the n-gram context cannot see: the string, bracket and indentation
        state, and how the logical line began.
        """
        mode = self._mode
        if mode == self._STRING:
            quote = len(self._quote)
            if kind == K_NEWLINE and quote == 1 and not self._escaped:
                return "newline in string"
            where = "docstring" if self._docstring else "string"
            if self._fresh and kind == K_NEWLINE:
                return ("newline right after the opening quote", where, quote)
            if kind == K_QUOTE and arg == self._quote and not self._escaped:
                length = self._length
                # 0, 1, 2, 3-4, 5-8, ..., 33+ tokens inside
                bucket = length if length < 3 else min(1 << (length - 1).bit_length(), 64)
                return ("close string", where, quote, bucket)
            return ("in string", where, quote, KIND_NAMES[kind])
        if mode == self._COMMENT:
            return None
        brackets = self._brackets
        if kind == K_CLOSE:
            if not brackets:
                return "close unopened"
            return "close" if brackets[-1] == arg else "close mismatched"
        if self._line_start:
            if self._pending is not None or brackets:
                if kind == K_QUOTE:  # a string statement: a docstring if first in a def
                    where = "first in def" if self._after == "def" else "elsewhere"
                    return ("string statement", where, len(arg))  # type: ignore[arg-type]
                return None
            if kind == K_SPACE:
                width = arg
            elif kind in (K_NEWLINE, K_HASH):
                return None
            else:
                width = 0
            indents = self._indents or [0]
            top = indents[-1]
            if width > top:  # type: ignore[operator]
                step = "indent" if width == top + self._unit else "indent other"
            elif width == top:
                step = "same"
            elif width in indents:
                step = "dedent"
            else:
                step = "dedent other"
            return ("after colon" if self._after else "plain", step)
        if brackets:
            if self._def:  # parameters: annotations and defaults
                return None
            if kind == K_EQUALS:
                keyword = self._last[0] == K_NAME and (
                    self._previous[0] == K_OPEN or self._previous == _COMMA
                )
                return ("= in brackets", arg, keyword)
            if kind == K_COLON:
                return (": in brackets", brackets[-1], self._lambda)
            return None
        if self._head == "soft":
            return None
        if kind == K_EQUALS:
            return ("=", self._head)
        if kind == K_COLON:
            return (":", self._head, self._lambda)
        if kind == K_NEWLINE and not self._continued:
            if self._head == "compound" and not self._colon:
                return "newline in header"
            if self._last[0] in (K_OPERATOR, K_EQUALS, K_DOT) and self._last != _COMMA:
                return "newline after operator"
        return None


# The features of tokens that make a syntax error wherever they occur (the others are only
# rare): their weights may go all the way down to the fitting's floor.
SYNTAX_ERRORS = frozenset(
    {
        "newline in string",
        "close unopened",
        "close mismatched",
        "newline in header",
        "newline after operator",
        ("after colon", "same"),
        ("after colon", "dedent"),
        ("after colon", "dedent other"),
        ("plain", "indent"),
        ("plain", "indent other"),
        ("plain", "dedent other"),
        ("=", "compound"),
        ("=", "simple"),
        (":", "simple", False),
        ("= in brackets", False, False),
        ("= in brackets", True, False),
        (": in brackets", "(", False),
    }
)


def closing_quotes(tokens: list[str]) -> list[bool]:
    """For each token, whether it closes a string (training marks those tokens)."""
    lexer = Lexer()
    flags = []
    for token in tokens:
        kind, arg = classify(token)
        flags.append(lexer.closes(kind, arg))
        lexer.feed(kind, arg)
    return flags
