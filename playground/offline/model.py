"""The loaded offline model: next-token distributions and sampling from them.

A generation step mixes two estimates of the next token:

- the corpus model: the longest context (up to `ORDER - 1` tokens) with statistics from the
  standard library, interpolated with modified Kneser-Ney over all its suffixes down to the
  unigram level, restricted to a candidate set (the most frequent continuations of each
  matched context) and renormalised over it;
- the prompt cache: the same idea over the prompt itself, so names the prompt defines come
  back (see `_Context`).

Both are real distributions over their candidates, so their mixture is one too: the
probabilities that are sampled from and reported sum to 1.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections.abc import Iterator
from functools import lru_cache
from itertools import chain

from playground.completions import Alternative, CompletionRequest, Token

from .tokenizer import tokenize
from .training import BOS, ORDER, UNK, ModelData

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
# The corpus model's distribution also keeps the plain probabilities, for the cache mixture.
_CorpusDistribution = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]

# The prompt cache: contexts of up to CACHE_ORDER tokens, over the last CACHE_WINDOW tokens
# (the model's advertised context length). Its weight in the mixture is
# CACHE_WEIGHT * n / (n + CACHE_PRIOR), n being how often its matched context occurred; the
# constants were tuned on held-out code (CPython's own tests, which are not in the corpus).
CACHE_ORDER = 3
CACHE_WINDOW = 4096
CACHE_WEIGHT = 0.8
CACHE_PRIOR = 0.5


def _pack(ids: list[int]) -> bytes:
    return array("I", ids).tobytes()


class OfflineModel:
    """A loaded n-gram model. Thread-safe: it is read-only apart from its lookup caches."""

    def __init__(self, data: ModelData) -> None:
        self.meta = data.meta
        self.vocab = data.vocab
        self._index = {token: i for i, token in enumerate(self.vocab) if i > UNK}
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
        # Per-instance caches (lru_cache is thread-safe). Hot contexts such as "(" or "\n" have
        # thousands of continuations; decoding them once per process instead of once per step
        # is most of the speed.
        self._level = lru_cache(maxsize=16384)(self._decode_level)
        self._distribution = lru_cache(maxsize=4096)(self._compute_distribution)

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
        discounts = [(0.0, *self._discounts[n]) for n in range(1, len(levels) + 1)]
        probabilities = []
        for token in candidates:
            p = self._unigram[token]
            for (total, gamma, counts, _), discount in zip(levels, discounts, strict=True):
                c = counts.get(token, 0)
                p = gamma * p + ((c - discount[min(c, 3)]) / total if c else 0.0)
            probabilities.append(p)
        norm = math.fsum(probabilities)
        ranked = sorted(zip(probabilities, candidates, strict=True), key=lambda pc: (-pc[0], pc[1]))
        return (
            tuple(token for _, token in ranked),
            tuple(math.log(p / norm) for p, _ in ranked),
            tuple(p / norm for p, _ in ranked),
        )

    def _step(self, context: _Context, heal: bool) -> _Distribution:
        """The distribution of the token after `context`, mixed with its prompt cache."""
        ids, logps, probs = self._distribution(self._longest_context(context.model_history()))
        cache = context.cache_distribution()
        if cache is not None and cache[0] > 0:
            weight, cached = cache
            mixed = dict(zip(ids, (p * (1 - weight) for p in probs), strict=True))
            for token, p in cached.items():
                mixed[token] = mixed.get(token, 0.0) + weight * p
            ranked = sorted(mixed.items(), key=lambda tp: (-tp[1], tp[0]))
            ids = tuple(t for t, _ in ranked)
            logps = tuple(math.log(p) for _, p in ranked)
        if not heal:
            return ids, logps
        kept = [
            (token, lp)
            for token, lp in zip(ids, logps, strict=True)
            if len(text := context.text(token)) > 1 and text.startswith(_HEAL)
        ]
        norm = math.log(math.fsum(math.exp(lp) for _, lp in kept)) if kept else 0.0
        return tuple(t for t, _ in kept), tuple(lp - norm for _, lp in kept)

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
    """The tokens so far (prompt, then generated) and the prompt cache counted over them.

    The cache is a small Witten-Bell n-gram model of the prompt itself (a "cache language
    model", Kuhn & De Mori 1990; code is especially repetitive and local, Tu et al. 2014): it
    lets the model reuse names the prompt defined, even names the corpus never saw. Tokens the
    corpus does not know get ids past the vocabulary, local to this context.
    """

    __slots__ = ("_counts", "_model", "_oov", "_oov_ids", "_totals", "ids")

    def __init__(self, model: OfflineModel, tokens: list[str]) -> None:
        self._model = model
        self._oov: list[str] = []
        self._oov_ids: dict[str, int] = {}
        self.ids = [BOS, *map(self.encode, tokens)]
        # _counts[k][context of k tokens] = {next token: count}; _totals likewise the sums.
        self._counts: list[dict[tuple[int, ...], dict[int, int]]] = [
            {} for _ in range(CACHE_ORDER + 1)
        ]
        self._totals: list[dict[tuple[int, ...], int]] = [{} for _ in range(CACHE_ORDER + 1)]
        for position in range(max(1, len(self.ids) - CACHE_WINDOW), len(self.ids)):
            self._count(position)

    def encode(self, text: str) -> int:
        """The id of a token's text: the model's, else one local to this context."""
        token = self._model._lookup(text)
        if token == UNK:
            token = self._oov_ids.get(text, -1)
            if token < 0:
                token = self._oov_ids[text] = len(self._model.vocab) + len(self._oov)
                self._oov.append(text)
        return token

    def text(self, token: int) -> str:
        size = len(self._model.vocab)
        return self._model.vocab[token] if token < size else self._oov[token - size]

    def append(self, token: int, *, count: bool = False) -> None:
        """Extend the context. Generated tokens are not counted into the cache by default:
        counting them lets any loop the sampler falls into reinforce itself."""
        self.ids.append(token)
        if count:
            self._count(len(self.ids) - 1)

    def _count(self, position: int) -> None:
        token = self.ids[position]
        for k in range(min(CACHE_ORDER, position) + 1):
            key = tuple(self.ids[position - k : position])
            counts = self._counts[k].setdefault(key, {})
            counts[token] = counts.get(token, 0) + 1
            self._totals[k][key] = self._totals[k].get(key, 0) + 1

    def model_history(self) -> list[int]:
        """The last tokens as the corpus model sees them: unknown ones are UNK."""
        size = len(self._model.vocab)
        return [t if t < size else UNK for t in self.ids[-(ORDER - 1) :]]

    def cache_distribution(self) -> tuple[float, dict[int, float]] | None:
        """(mixture weight, {token: probability}) from the cache, or None if it has nothing.

        Candidates are the tokens that followed the current last one (or two, three) in the
        prompt; their probabilities are renormalised over that set. The weight grows with how
        often the longest matched context occurred: a pattern the prompt repeats is trusted.
        """
        levels: list[tuple[dict[int, int], int]] = []
        for k in range(1, min(CACHE_ORDER, len(self.ids)) + 1):
            key = tuple(self.ids[-k:])
            counts = self._counts[k].get(key)
            if counts is None:
                break
            levels.append((counts, self._totals[k][key]))
        if not levels:
            return None
        unigram, size = self._counts[0][()], self._totals[0][()]
        candidates: dict[int, float] = {}
        for counts, _ in levels:
            candidates.update(dict.fromkeys(counts, 0.0))
        for token in candidates:
            p = unigram.get(token, 0) / size
            for counts, total in levels:
                p = (counts.get(token, 0) + len(counts) * p) / (total + len(counts))
            candidates[token] = p
        norm = math.fsum(candidates.values())
        seen = levels[-1][1]
        weight = CACHE_WEIGHT * seen / (seen + CACHE_PRIOR)
        return weight, {token: p / norm for token, p in candidates.items()}


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
