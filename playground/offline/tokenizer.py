"""Splits text into the code-ish tokens the offline model counts and predicts.

Every character lands in exactly one token, so tokens always concatenate back to the text. A
single space is glued to the word, number, string opener or operator that follows it (`x = 1`
is `x`, ` =`, ` 1`), which lets a short n-gram context see more code than if every space were a
token of its own. A newline is always its own token and the indentation after it is a separate
run of spaces, so "newline, indent, keyword" is a pattern the model can learn.
"""

from __future__ import annotations

import re

# Longest first: the regex alternation takes the first operator that matches.
_OPERATORS = (
    r"\*\*=|//=|>>=|<<=|\.\.\.|->|:=|==|!=|<=|>=|\*\*|//|<<|>>|[-+*/%&|^@]="
    r"|[-+*/%&|^~<>=!@.,:;()\[\]{}#\\?$`]"
)

TOKEN_RE = re.compile(
    r"\r?\n"
    r"| {2,}|\t+"
    # A string opener with its prefix (f", rb'''): before identifiers, or `f` would win alone.
    r"| ?(?:[rRbBfFuU]{1,2})?(?:\"\"\"|'''|\"|')"
    r"| ?[^\W\d]\w*"
    r"| ?0[xXoObB][0-9a-fA-F_]+"
    r"| ?\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?[jJ]?"
    r"| ?(?:" + _OPERATORS + r")"
    # Anything else (a lone space, an emoji, a control character) is a one-character token,
    # which is what guarantees that no character is ever skipped.
    r"|[\s\S]"
)


def tokenize(text: str) -> list[str]:
    """The tokens of `text`; `"".join(tokenize(text)) == text` always holds."""
    return TOKEN_RE.findall(text)
