"""The loaded offline model: next-token distributions and sampling from them.

A generation step combines three estimates of the next token:

- the corpus model: the longest context (up to `ORDER - 1` tokens) with statistics from the
  standard library, interpolated with modified Kneser-Ney over all its suffixes down to the
  unigram level, restricted to a candidate set (the most frequent continuations of each
  matched context) and renormalised over it;
- the prompt cache, mixed in: the same idea over the prompt itself, so that the names the
  prompt defines come back (see `_Context.cache_distribution`). It helps names recur, not whole
  lines: at the start of a line it only offers the prompt's recent names, so the corpus model
  decides how each line begins and the prompt's lines are not replayed one after the other;
- the lexical state (`syntax.py`): what the n-gram context cannot see (the open string and
  brackets, the indentation a block needs, how the line began) reweights the candidates, and a
  closing quote is told apart from an opening one.

Two more factors keep low temperatures from looping: a token that would complete an exact
copy of a recent line is discounted by how likely that copy is to be completed (a look ahead),
and one that would repeat the last few tokens within a line by a fitted factor.

Each step is a real distribution over its candidates: the probabilities that are sampled from
and reported sum to 1. The mixture weights and the lexical weights were fitted on held-out code
(`weights.py`, `evaluation.py`).
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections.abc import Iterator
from functools import lru_cache
from itertools import chain, islice

from playground.completions import Alternative, CompletionRequest, Token

from .syntax import ARGUMENT_KINDS, K_QUOTE, Kind, Lexer, classify, is_name
from .tokenizer import tokenize
from .training import BOS, ORDER, UNK, ModelData
from .weights import CACHE_WEIGHTS, ECHO_WEIGHTS, NAME_WEIGHT, SYNTAX_WEIGHTS

MAX_ALTERNATIVES = 20
MIN_CANDIDATES = 24
# A prompt ending in one space (after `x =` or `return`) is common when typing, but a lone space
# is almost never a token in the corpus, where the space is glued to the next word. Such a
# prompt is "healed": the space is taken out of the context and the first token must start
# with it; that token is then reported without the space the prompt already has.
_HEAL = " "

# One decoded context: (total, backoff weight gamma, {token: count}, candidate token ids).
_Level = tuple[int, float, dict[int, int], tuple[int, ...]]
# A distribution: token ids and their natural-log probabilities, most likely first.
_Distribution = tuple[tuple[int, ...], tuple[float, ...]]
# The corpus model's distribution: token ids and their probabilities.
_CorpusDistribution = tuple[tuple[int, ...], tuple[float, ...]]
# The prompt cache's guess: (matched context length, whether that context crosses a line break,
# how often it occurred, {token: probability}).
_CacheGuess = tuple[int, bool, int, dict[int, float]]

# The prompt cache counts contexts of up to CACHE_ORDER tokens over the last CACHE_WINDOW tokens
# of the prompt (the model's advertised context length), apart in code and in prose (strings
# and comments). When the current line has begun and its last k tokens occurred in the prompt,
# the cache predicts what followed them, with weight lambda * n / (n + beta): n is how often
# the context occurred, and (lambda, beta) depend on k, on whether the context reaches back
# over a line break and on the mode (`weights.CACHE_WEIGHTS`). Elsewhere (at the start of a
# line, or when nothing matched) it offers the CACHE_NAMES names the prompt used last, in
# proportion to how often it used them; they share the corpus model's probability of a name
# (spaced or not) with weight `weights.NAME_WEIGHT`.
CACHE_ORDER = 3
CACHE_WINDOW = 4096
CACHE_NAMES = 64
# Code seldom repeats a line it has just written, but the cache and the corpus model, which
# see a few tokens back, would happily copy a recent line again and again. A token that would
# continue a copy of one of the REPEAT_LINES last lines of at least REPEAT_MIN_CHARS characters
# (the prompt's or the completion's) has its probability multiplied by 1 - REPEAT_DISCOUNT * r,
# r being the probability (by a look ahead along that line) that the line then ends as an exact
# copy: the distribution of whole lines is the model's, with exact repeats made 10 times rarer.
# Held-out log-loss would prefer no discount, by 0.008 nats/token (`evaluation.py --fit`);
# without it, low temperatures replay the prompt's lines.
REPEAT_LINES = 8
REPEAT_MIN_CHARS = 10
REPEAT_DISCOUNT = 0.9
# Look ahead only for a copy this likely, and only as long as finishing it stays this likely.
_REPEAT_MIN_PROBABILITY = 1e-3
# Within a line, a token that would repeat the block of the last 1 to ECHO_PERIOD tokens
# (`.path` after `os.path`, `, 0` after `, 0`) has its probability multiplied by
# `weights.ECHO_WEIGHTS`[period, times the block is then repeated (up to 3)].
ECHO_PERIOD = 4


def _pack(ids: list[int]) -> bytes:
    return array("I", ids).tobytes()


def _name_class(text: str) -> int:
    """0: not a name; 1: a name with a space before it (` x`); 2: a bare name (`x`)."""
    if not is_name(text):
        return 0
    return 1 if text.startswith(" ") else 2


class OfflineModel:
    """A loaded n-gram model. Thread-safe: it is read-only apart from its lookup caches."""

    def __init__(self, data: ModelData) -> None:
        self.meta = data.meta
        self.vocab = data.vocab
        self._closer = dict(data.closers)  # id of a quote -> id of that quote closing a string
        self._closers = frozenset(self._closer.values())
        self._index = {
            token: i for i, token in enumerate(self.vocab) if i > UNK and i not in self._closers
        }
        self._table = data.table
        self._discounts = data.discounts
        self._candidates = data.candidates_per_context
        counts = array("I")
        counts.frombytes(data.unigram_counts)
        total, n1, n2, n3 = data.unigram_stats
        d1, d2, d3 = self._discounts[0]
        gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
        discount = (0.0, d1, d2)
        uniform = gamma / len(self.vocab)
        self._unigram = [
            (c - (discount[c] if c < 3 else d3)) / total + uniform if c else uniform for c in counts
        ]
        ranked = sorted(range(UNK + 1, len(self.vocab)), key=lambda i: (-counts[i], i))
        self._fallback = tuple(ranked[: self._candidates])
        self.newline = self._index.get("\n", -1)
        self._kinds: list[Kind] = [classify(token) for token in self.vocab]
        self._kind_codes = bytes(kind for kind, _ in self._kinds)
        self._name_classes = bytes(_name_class(token) for token in self.vocab)
        # Per-instance caches (lru_cache is thread-safe). Hot contexts such as "(" or "\n" have
        # thousands of continuations; decoding them once per process instead of once per step
        # is most of the speed.
        self._level = lru_cache(maxsize=16384)(self._decode_level)
        self._distribution = lru_cache(maxsize=8192)(self._compute_distribution)
        self._corpus_view = lru_cache(maxsize=1024)(self._compute_view)

    # --- Tokens ------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The model's tokens of `text`; they concatenate back to `text` exactly."""
        return tokenize(text)

    def count_tokens(self, text: str) -> int:
        return len(tokenize(text))

    def _lookup(self, text: str) -> int:
        index = self._index
        # A browser textarea sends CRLF; the corpus has LF. Same newline, same statistics.
        return index.get(text, index.get("\n", UNK) if text == "\r\n" else UNK)

    # --- Distributions -----------------------------------------------------------------

    def _decode_level(self, key: bytes) -> _Level | None:
        blob = self._table.get(key)
        if blob is None:
            return None
        packed = array("I")
        packed.frombytes(blob)
        total, n1, n2, n3 = packed[:4]
        size = (len(packed) - 4) // 2
        ids = packed[4 : 4 + size]
        d1, d2, d3 = self._discounts[len(key) // packed.itemsize]
        gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
        return (
            total,
            gamma,
            dict(zip(ids, packed[4 + size :], strict=True)),
            tuple(ids[: self._candidates]),
        )

    def _longest_context(self, history: list[int]) -> bytes:
        """The longest suffix of `history` the model has statistics for, packed."""
        found = b""
        for length in range(1, min(ORDER - 1, len(history)) + 1):
            key = _pack(history[-length:])
            if self._level(key) is None:
                # The count cut-off keeps every suffix of a kept context, so no longer one
                # can match either.
                break
            found = key
        return found

    def _compute_distribution(self, key: bytes) -> _CorpusDistribution:
        context = array("I")
        context.frombytes(key)
        # Shortest context first: each level interpolates with the one below it.
        levels: list[_Level] = []
        for length in range(1, len(context) + 1):
            level = self._level(_pack(context[-length:]))
            assert level is not None  # noqa: S101 (_longest_context only returns stored keys)
            levels.append(level)
        candidates = dict.fromkeys(chain.from_iterable(lv[3] for lv in reversed(levels)))
        if len(candidates) < MIN_CANDIDATES:
            # A rare context has few continuations (or none, when nothing matched): the most
            # frequent tokens join them, so the probability Kneser-Ney keeps back for unseen
            # continuations has somewhere to go.
            for token in self._fallback:
                candidates.setdefault(token)
                if len(candidates) >= MIN_CANDIDATES:
                    break
        # Per level: (total, gamma, counts, the discount for a count of 0, 1, 2, 3+ ... up to a
        # large count, so that the loop needs no min()).
        steps = [
            (total, gamma, counts, (0.0, d1, d2, *([d3] * 61)))
            for (total, gamma, counts, _), (d1, d2, d3) in zip(
                levels, self._discounts[1 : len(levels) + 1], strict=True
            )
        ]
        unigram = self._unigram
        probabilities = []
        for token in candidates:
            p = unigram[token]
            for total, gamma, counts, discount in steps:
                c = counts.get(token)
                p = gamma * p + (c - discount[c if c < 64 else 63]) / total if c else gamma * p
            probabilities.append(p)
        norm = math.fsum(probabilities)
        return tuple(candidates), tuple(p / norm for p in probabilities)

    def _step(self, context: _Context, heal: bool) -> _Distribution:
        """The distribution of the token after `context`: corpus, cache and lexical state."""
        ids, probs = self._distribution(self._longest_context(context.model_history()))
        cache = context.cache_distribution()
        if cache is None:
            mixed = dict(zip(ids, probs, strict=True))
        else:
            weight = cache_weight(cache, context.line_start, context.lexer.prose)
            mixed = self._mix(context, ids, probs, cache, weight)
        ranked = self._condition(context, mixed)
        if context.repeats and REPEAT_DISCOUNT:
            ranked = self._discount_repeats(context, ranked)
        if heal:
            ranked = [
                (q, token)
                for q, token in ranked
                if len(text := context.text(token)) > 1 and text.startswith(_HEAL)
            ]
        log_norm = math.log(-math.fsum(q for q, _ in ranked)) if ranked else 0.0
        return (
            tuple(token for _, token in ranked),
            tuple(math.log(-q) - log_norm for q, _ in ranked),
        )

    def _mix(
        self,
        context: _Context,
        ids: tuple[int, ...],
        probs: tuple[float, ...],
        cache: _CacheGuess,
        weight: float,
    ) -> dict[int, float]:
        """The corpus model's probabilities `probs` of `ids` mixed with the cache's guess.

        A matched context's guess is mixed in with `weight`. Names (matched length 0) only
        share the corpus model's probability of a name: a share `weight` of the probability of
        a spaced name goes to the cache's spaced names, likewise for bare ones, and every other
        token keeps its probability. Either way the result still sums to 1.
        """
        matched, _, _, cached = cache
        if matched:
            keep = 1 - weight
            mixed = {token: p * keep for token, p in zip(ids, probs, strict=True)}
            for token, p in cached.items():
                mixed[token] = mixed.get(token, 0.0) + weight * p
            return mixed
        size = len(self.vocab)
        classes = self._name_classes
        cache_mass = [0.0, 0.0, 0.0]
        cached_classes = []
        for token, p in cached.items():
            c = context.name_class(token)
            cached_classes.append(c)
            cache_mass[c] += p
        corpus_mass = [0.0, 0.0, 0.0]
        keep = (1.0, 1 - weight if cache_mass[1] else 1.0, 1 - weight if cache_mass[2] else 1.0)
        mixed = {}
        for token, p in zip(ids, probs, strict=True):
            c = classes[token] if token < size else context.name_class(token)
            corpus_mass[c] += p
            mixed[token] = p * keep[c]
        share = [
            weight * corpus_mass[c] / cache_mass[c] if cache_mass[c] else 0.0 for c in range(3)
        ]
        for (token, p), c in zip(cached.items(), cached_classes, strict=True):
            if share[c]:
                mixed[token] = mixed.get(token, 0.0) + share[c] * p
        return mixed

    def _condition(self, context: _Context, mixed: dict[int, float]) -> list[tuple[float, int]]:
        """The candidates reweighted by echoes (see ECHO_WEIGHTS) and the lexical state, as
        (-weight, token) pairs (the weights are unnormalised), most likely first.

        A quote that would close the open string is only ever the closing quote's id (and the
        other way round): the same text never appears twice.
        """
        for token, echo in context.echoes().items():
            if token in mixed:
                mixed[token] *= ECHO_WEIGHTS.get(echo, 1.0)
        lexer = context.lexer
        relevant = lexer.relevant_kinds()
        codes, size = self._kind_codes, len(self.vocab)
        ranked: list[tuple[float, int]] = []
        special = []
        for token, p in mixed.items():
            code = codes[token] if token < size else context.kind(token)[0]
            if code in relevant or code == K_QUOTE:
                special.append((token, p))
            else:
                ranked.append((-p, token))
        if special:
            closer, closers = self._closer, self._closers
            weights = SYNTAX_WEIGHTS
            factors: dict[Kind, float] = {}
            kinds = self._kinds
            for token, p in special:
                kind = kinds[token] if token < size else context.kind(token)
                if kind[0] == K_QUOTE:
                    closes = lexer.closes(*kind)
                    if (token in closers) != (closes and (token in closers or token in closer)):
                        continue
                if kind[0] in relevant:
                    key = kind if kind[0] in ARGUMENT_KINDS else kind[0]
                    factor = factors.get(key)
                    if factor is None:
                        factor = factors[key] = weights.get(lexer.feature(*kind), 1.0)
                    p *= factor
                ranked.append((-p, token))
        ranked.sort()
        return ranked

    def _discount_repeats(
        self, context: _Context, ranked: list[tuple[float, int]]
    ) -> list[tuple[float, int]]:
        """`ranked` with the tokens that continue a copy of a recent line discounted (see
        REPEAT_DISCOUNT). Several recent lines can share the current line's beginning and its
        next token: their chances of being copied add up."""
        done = len(context.line)
        norm = -math.fsum(q for q, _ in ranked)
        weights = {token: -q for q, token in ranked}
        repeat: dict[int, float] = {}
        for line in context.repeats:
            token = line[done] if done < len(line) else self.newline
            if weights.get(token, 0.0) >= _REPEAT_MIN_PROBABILITY * norm:
                repeat[token] = repeat.get(token, 0.0) + self._finishes(context, line)
        if not repeat:
            return ranked
        discounted = [
            (q * (1 - REPEAT_DISCOUNT * min(1.0, repeat[token])) if token in repeat else q, token)
            for q, token in ranked
        ]
        discounted.sort()
        return discounted

    def _finishes(self, context: _Context, line: tuple[int, ...]) -> float:
        """The probability that the current line, so far a prefix of `line`, ends as an exact
        copy of it once its next token is taken: the product of the probabilities of its
        remaining tokens and of the newline after them. The look ahead uses the corpus model
        and the cache (not the lexical state), and stops once the product is negligible."""
        done = len(context.line)
        if done >= len(line):
            return 1.0
        ahead = context.look_ahead(line)
        tail = context.ids[-(ORDER - 1) :]
        p = 1.0
        for position in range(done + 1, len(line) + 1):
            step = ahead.get(position)
            if step is None:
                history = [*tail, *line[done:position]]
                token = line[position] if position < len(line) else self.newline
                step = ahead[position] = self._token_probability(context, history, token)
            p *= step
            if p < _REPEAT_MIN_PROBABILITY:
                break
        return p

    def _token_probability(self, context: _Context, history: list[int], token: int) -> float:
        """The probability of `token` after `history` (the last tokens of a hypothetical
        continuation of the current line), from the corpus model and the cache."""
        size = len(self.vocab)
        corpus, class_mass = self._corpus_view(
            self._longest_context([t if t < size else UNK for t in history[-(ORDER - 1) :]])
        )
        p = corpus.get(token, 0.0)
        cache = context.cache_distribution(history, line_start=False)
        if cache is None:
            return p
        weight = cache_weight(cache, False, context.lexer.prose)
        matched, _, _, cached = cache
        if matched:
            return (1 - weight) * p + weight * cached.get(token, 0.0)
        c = context.name_class(token)
        if not c:
            return p
        cache_mass = math.fsum(q for t, q in cached.items() if context.name_class(t) == c)
        if not cache_mass:
            return p
        return (1 - weight) * p + weight * class_mass[c] * cached.get(token, 0.0) / cache_mass

    def _compute_view(self, key: bytes) -> tuple[dict[int, float], tuple[float, float, float]]:
        """The corpus model's distribution as {token: probability}, and its total probability
        of names (none, spaced, bare)."""
        ids, probs = self._distribution(key)
        mass = [0.0, 0.0, 0.0]
        classes = self._name_classes
        for token, p in zip(ids, probs, strict=True):
            mass[classes[token]] += p
        return dict(zip(ids, probs, strict=True)), (mass[0], mass[1], mass[2])

    def _prepare(self, prompt: str) -> tuple[int, _Context, bool]:
        """(prompt token count, context, whether the first token is healed)."""
        tokens = tokenize(prompt)
        heal = bool(tokens) and tokens[-1] == _HEAL
        if heal:
            context = _Context(self, tokens[:-1])
            if not self._step(context, heal=True)[0]:
                heal = False
                context = _Context(self, tokens)
        else:
            context = _Context(self, tokens)
        return len(tokens), context, heal

    def distribution(self, prompt: str) -> list[Alternative]:
        """The whole candidate distribution for the token after `prompt`, most likely first.

        This is exactly the distribution the first generated token is sampled from (before any
        temperature, top_p or penalty); its probabilities sum to 1.
        """
        _, context, heal = self._prepare(prompt)
        ids, logps = self._step(context, heal)
        cut = len(_HEAL) if heal else 0
        return [
            Alternative(text=context.text(t)[cut:], logprob=lp)
            for t, lp in zip(ids, logps, strict=True)
        ]

    # --- Generation --------------------------------------------------------------------

    def generate(self, request: CompletionRequest) -> Generation:
        """Start a completion; iterate the result for its tokens (see `Generation`)."""
        return Generation(self, request)


class _Context:
    """The tokens so far (prompt, then generated): their lexical state, the current line and
    the last ones (for REPEAT_DISCOUNT and ECHO_WEIGHTS), and the prompt cache.

    The cache is a small Witten-Bell n-gram model of the prompt itself (a "cache language
    model", Kuhn & De Mori 1990; code is especially repetitive and local, Tu et al. 2014): it
    lets the model reuse names the prompt defined, even names the corpus never saw. Tokens the
    corpus does not know get ids past the vocabulary, local to this context.
    """

    __slots__ = (
        "_ahead",
        "_counts",
        "_line_start",
        "_model",
        "_names",
        "_oov",
        "_oov_ids",
        "_recent",
        "_totals",
        "ids",
        "lexer",
        "line",
        "repeats",
    )

    def __init__(self, model: OfflineModel, tokens: list[str]) -> None:
        self._model = model
        self._oov: list[str] = []
        self._oov_ids: dict[str, int] = {}
        self.lexer = Lexer()
        self.ids = [BOS]
        self._line_start = True  # nothing but indentation yet on the current line
        # _counts[k][(prose, *context of k tokens)] = {next token: count} (for k = 0, the key
        # is ()); _totals likewise the sums.
        self._counts: list[dict[tuple, dict[int, int]]] = [{} for _ in range(CACHE_ORDER + 1)]
        self._totals: list[dict[tuple, int]] = [{} for _ in range(CACHE_ORDER + 1)]
        self._names: dict[int, None] = {}  # names in the order of their last use
        self.line: list[int] = []  # the current line's tokens after its indentation
        self._recent: list[tuple[int, ...]] = []  # the last lines (see REPEAT_LINES)
        self.repeats: list[tuple[int, ...]] = []  # those the current line is a prefix of
        self._ahead: dict[tuple[int, ...], dict[int, float]] = {}  # look-ahead steps
        first_counted = max(1, len(tokens) + 1 - CACHE_WINDOW)
        for text in tokens:
            self.append(self.next_id(text), count=len(self.ids) >= first_counted)

    def encode(self, text: str) -> int:
        """The id of a token's text: the model's, else one local to this context."""
        token = self._model._lookup(text)
        if token == UNK:
            token = self._oov_ids.get(text, -1)
            if token < 0:
                token = self._oov_ids[text] = len(self._model.vocab) + len(self._oov)
                self._oov.append(text)
        return token

    def next_id(self, text: str) -> int:
        """The id of `text` as the next token: a quote that closes the open string gets the
        closing quote's id."""
        token = self.encode(text)
        closer = self._model._closer.get(token)
        if closer is not None and self.lexer.closes(*self.kind(token)):
            return closer
        return token

    def text(self, token: int) -> str:
        size = len(self._model.vocab)
        return self._model.vocab[token] if token < size else self._oov[token - size]

    def kind(self, token: int) -> Kind:
        size = len(self._model.vocab)
        return self._model._kinds[token] if token < size else classify(self._oov[token - size])

    def name_class(self, token: int) -> int:
        size = len(self._model.vocab)
        if token < size:
            return self._model._name_classes[token]
        return _name_class(self._oov[token - size])

    def append(self, token: int, *, count: bool = False) -> None:
        """Extend the context. Generated tokens are not counted into the cache by default:
        counting them lets any loop the sampler falls into reinforce itself (the evaluation
        counts held-out text as it goes, as prompt text is)."""
        self.ids.append(token)
        prose = self.lexer.prose
        self.lexer.feed(*self.kind(token))
        if token == self._model.newline:
            self._end_line()
        elif not self._line_start or not self.text(token).isspace():
            self._line_start = False
            done = len(self.line)
            self.line.append(token)
            self.repeats = [
                line for line in self.repeats if len(line) > done and line[done] == token
            ]
        if count:
            self._count(len(self.ids) - 1, prose)

    def _end_line(self) -> None:
        """A newline: remember the line that ends (if long enough), start the next one."""
        line = tuple(self.line)
        if len("".join(map(self.text, line)).strip()) >= REPEAT_MIN_CHARS:
            if line in self._recent:
                self._recent.remove(line)
            self._recent.append(line)
            del self._recent[:-REPEAT_LINES]
        self._line_start = True
        self.line = []
        self.repeats = list(self._recent)
        self._ahead = {}

    def echoes(self) -> dict[int, tuple[int, int]]:
        """{token: (period, times)} for the tokens that would end the current line with a block
        of `period` tokens repeated `times` + 1 times (see ECHO_WEIGHTS)."""
        ids = self.line
        found: dict[int, tuple[int, int]] = {}
        for period in range(1, min(ECHO_PERIOD, (len(ids) + 1) // 2) + 1):
            token = ids[-period]
            if token in found or any(
                ids[-2 * period + 1 + i] != ids[-period + 1 + i] for i in range(period - 1)
            ):
                continue
            sequence = [*ids, token]
            block = sequence[-period:]
            times = 1
            while times < 3 and sequence[-(times + 2) * period : -(times + 1) * period] == block:
                times += 1
            found[token] = (period, times)
        return found

    def look_ahead(self, line: tuple[int, ...]) -> dict[int, float]:
        """The look-ahead steps along a recent line computed so far on the current line:
        {position in `line`: probability of its token there}."""
        return self._ahead.setdefault(line, {})

    def _count(self, position: int, prose: bool) -> None:
        """Count the token at `position`, which came in prose (a string or a comment) or not:
        contexts are counted apart in prose and in code, so that a docstring is not filled with
        copies of the code around it, nor the code with copies of docstrings."""
        ids = self.ids
        token = ids[position]
        for k in range(min(CACHE_ORDER, position) + 1):
            key = (prose, *ids[position - k : position]) if k else ()
            counts = self._counts[k].setdefault(key, {})
            counts[token] = counts.get(token, 0) + 1
            self._totals[k][key] = self._totals[k].get(key, 0) + 1
        if self.name_class(token):
            self._names.pop(token, None)
            self._names[token] = None

    def model_history(self) -> list[int]:
        """The last tokens as the corpus model sees them: unknown ones are UNK."""
        size = len(self._model.vocab)
        return [t if t < size else UNK for t in self.ids[-(ORDER - 1) :]]

    @property
    def line_start(self) -> bool:
        """Nothing but indentation yet on the current line."""
        return self._line_start

    def cache_distribution(
        self, history: list[int] | None = None, line_start: bool | None = None
    ) -> _CacheGuess | None:
        """(matched context length, whether the context crosses a line break, how often it
        occurred, {token: probability}) from the cache, or None if it has nothing to offer.

        Once the current line has begun, the candidates are the tokens that followed its last
        one (or two, three) tokens in the prompt, with Witten-Bell probabilities renormalised
        over that set. At the start of a line, or when nothing matched, they are the prompt's
        recent names (matched length 0). `history` and `line_start` stand for `ids` and
        `line_start` in a look ahead.
        """
        ids = self.ids if history is None else history
        levels: list[tuple[dict[int, int], int]] = []
        crosses = False
        if not (self._line_start if line_start is None else line_start):
            newline = self._model.newline
            prose = self.lexer.prose
            for k in range(1, min(CACHE_ORDER, len(ids)) + 1):
                key = (prose, *ids[-k:])
                counts = self._counts[k].get(key)
                if counts is None:
                    break
                crosses = crosses or key[1] == newline
                levels.append((counts, self._totals[k][key]))
        unigram = self._counts[0].get(())
        if not unigram:
            return None
        size = self._totals[0][()]
        if levels:
            candidates = dict.fromkeys(chain.from_iterable(counts for counts, _ in levels), 0.0)
            for token in candidates:
                p = unigram.get(token, 0) / size
                for counts, total in levels:
                    p = (counts.get(token, 0) + len(counts) * p) / (total + len(counts))
                candidates[token] = p
            norm = math.fsum(candidates.values())
            probabilities = {token: p / norm for token, p in candidates.items()}
            return len(levels), crosses, levels[-1][1], probabilities
        names = list(islice(reversed(self._names), CACHE_NAMES))
        if not names:
            return None
        norm = sum(unigram[token] for token in names)
        return 0, False, 0, {token: unigram[token] / norm for token in names}


def cache_weight(cache: _CacheGuess, line_start: bool, prose: bool) -> float:
    """The cache's share of the mixture (see CACHE_WEIGHTS)."""
    matched, crosses, seen, _ = cache
    if not matched:
        return NAME_WEIGHT[line_start, prose]
    lam, beta = CACHE_WEIGHTS[matched, crosses, prose]
    return lam * seen / (seen + beta)


def _choose(
    ids: tuple[int, ...],
    logps: tuple[float, ...],
    generated: dict[int, int],
    request: CompletionRequest,
    rng: random.Random,
) -> int:
    """The index of the sampled candidate.

    The order is vLLM's: penalties on the logits, then temperature, then top_p. `logps` is
    sorted most likely first, so without penalties it is already the nucleus order.
    """
    fp, pp = request.frequency_penalty, request.presence_penalty
    logits: tuple[float, ...] | list[float] = logps
    if generated and (fp or pp):
        logits = [
            lp - n * fp - (pp if n else 0.0)
            for lp, n in zip(logps, (generated.get(t, 0) for t in ids), strict=True)
        ]
    if request.temperature <= 0:
        # max() keeps the first of equal logits: ties go to the token the model ranks higher.
        return max(range(len(logits)), key=logits.__getitem__)
    top = max(logits)
    weights = [math.exp((lg - top) / request.temperature) for lg in logits]
    order: range | list[int] = range(len(weights))
    if logits is not logps:
        order = sorted(order, key=lambda i: -weights[i])
    if request.top_p < 1:
        threshold = request.top_p * math.fsum(weights)
        nucleus: list[int] = []
        acc = 0.0
        for i in order:
            nucleus.append(i)
            acc += weights[i]
            if acc >= threshold:
                break
        order = nucleus
    r = rng.random() * math.fsum(weights[i] for i in order)
    for i in order:
        r -= weights[i]
        if r < 0:
            return i
    return order[-1]


class Generation(Iterator[Token]):
    """One completion being generated: an iterator of `Token`s.

    Iterating runs the model one token at a time. When the iterator is exhausted,
    `finish_reason` is "stop" (a stop sequence was produced; the text ends before it) or
    "length" (`max_tokens` were generated); it is None while generation is still running.
    `prompt_tokens` is known from the start and `completion_tokens` (every token sampled,
    including one that completed a stop sequence) grows as tokens are made.

    Each token's `logprob` and `alternatives` come from the model's own distribution before
    temperature, top_p and the frequency/presence penalties (vLLM's "raw" logprobs): they show
    what the model believes, and the sampling settings only decide which candidate is taken.
    """

    def __init__(self, model: OfflineModel, request: CompletionRequest) -> None:
        self.request = request
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.prompt_tokens, self._context, self._heal = model._prepare(request.prompt)
        self._model = model
        self._steps = self._run()

    def __next__(self) -> Token:
        return next(self._steps)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _sample(self) -> Iterator[Token]:
        """Tokens as the model makes them, with no regard for stop sequences."""
        model, request, context = self._model, self.request, self._context
        # S311: sampling, not security; a seeded Random is what makes `seed` reproducible.
        rng = random.Random(request.seed)  # noqa: S311
        k = max(0, min(request.logprobs, MAX_ALTERNATIVES))
        generated: dict[int, int] = {}
        heal = self._heal
        while self.completion_tokens < request.max_tokens:
            ids, logps = model._step(context, heal)
            i = _choose(ids, logps, generated, request, rng)
            token = ids[i]
            cut = len(_HEAL) if heal else 0
            heal = False
            context.append(token)
            generated[token] = generated.get(token, 0) + 1
            self.completion_tokens += 1
            yield Token(
                text=context.text(token)[cut:],
                logprob=logps[i],
                alternatives=tuple(
                    Alternative(text=context.text(t)[cut:], logprob=lp)
                    for t, lp in zip(ids[:k], logps[:k], strict=True)
                ),
            )

    def _run(self) -> Iterator[Token]:
        """`_sample` with stop sequences applied.

        A token is held back while the text from it onwards could still be the start of a stop
        sequence, so nothing is ever yielded that a later token turns into part of a stop
        string. When a stop sequence appears, the text is cut just before it; a token that
        straddles the cut is yielded with its text truncated (keeping its logprob and
        alternatives), so the yielded tokens always concatenate to the completion's text.
        """
        stops = tuple(s for s in self.request.stop if s)
        if not stops:
            yield from self._sample()
            self.finish_reason = "length"
            return
        pending: list[Token] = []
        text = ""  # the pending tokens' text
        for token in self._sample():
            pending.append(token)
            text += token.text
            hits = [i for i in (text.find(s) for s in stops) if i >= 0]
            if hits:
                cut = min(hits)
                for held in pending:
                    if cut <= 0:
                        break
                    if len(held.text) > cut:
                        held = Token(
                            text=held.text[:cut],
                            logprob=held.logprob,
                            alternatives=held.alternatives,
                        )
                    yield held
                    cut -= len(held.text)
                self.finish_reason = "stop"
                return
            # The earliest position from which the text could still grow into a stop string.
            hold = len(text)
            longest = max(len(s) for s in stops)
            for start in range(max(0, len(text) - longest + 1), len(text)):
                tail = text[start:]
                if any(s.startswith(tail) for s in stops):
                    hold = start
                    break
            while pending and len(pending[0].text) <= hold:
                released = pending.pop(0)
                hold -= len(released.text)
                text = text[len(released.text) :]
                yield released
        yield from pending
        self.finish_reason = "length"


def timed_batch(generation: Generation, max_tokens: int, max_seconds: float) -> list[Token]:
    """Up to `max_tokens` tokens from `generation`, stopping early after `max_seconds`."""
    deadline = time.perf_counter() + max_seconds
    batch: list[Token] = []
    for token in generation:
        batch.append(token)
        if len(batch) >= max_tokens or time.perf_counter() >= deadline:
            break
        # Releases the GIL for a moment: the event loop's thread (and other requests) would
        # otherwise wait for Python's 5 ms switch interval each time they need it.
        time.sleep(0)
    return batch
