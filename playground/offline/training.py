"""Trains the offline model on the Python standard library and reads/writes its cache file.

The model is an interpolated modified Kneser-Ney n-gram model (Chen & Goodman, 1998) of order
`ORDER` over the tokens of `tokenizer.py`. Training counts n-grams over a deterministic, sorted
selection of the standard library's `.py` files (the one Python corpus that is always present),
so two builds on the same interpreter give the same file.

Cache file layout: `MAGIC`, then `<II` (format version, metadata length), the metadata (a
marshalled dict, readable on its own so a freshness check stays cheap), then the marshalled
model body. Every context's statistics are one packed `array("I")` byte string: loading the
file is then a few hundred thousand `bytes` objects, and only the contexts a prompt actually
reaches are ever decoded.
"""

from __future__ import annotations

import marshal
import os
import platform
import struct
import sys
import sysconfig
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from .syntax import closing_quotes
from .tokenizer import tokenize

# Bump whenever the tokenizer, the training or the layout changes: a cache with another version
# is rebuilt on the next load. 2: closing quotes have token ids of their own, 128 candidates per
# context, tkinter left out.
FORMAT_VERSION = 2
MAGIC = b"PGOFFLN\x00"
_HEADER = struct.Struct("<II")

ORDER = 5  # longest n-gram: a context of up to four tokens
BOS = 0  # start of a file: the context of an empty prompt
UNK = 1  # any token seen fewer than MIN_TOKEN_COUNT times, in the corpus or in a prompt
MIN_TOKEN_COUNT = 2
# Contexts of two or more tokens seen only once are dropped (a standard count cut-off): they
# would double the file for almost no gain, and their statistics back off to shorter contexts.
MIN_CONTEXT_COUNT = 2
# How many of a context's most frequent continuations become sampling candidates. All counts
# are stored for the probabilities; only the candidate set is bounded, which keeps each
# generation step's work small.
CANDIDATES_PER_CONTEXT = 128
# About all of CPython 3.11's library outside the skipped directories (8.5 MB); the cap keeps
# the build fast on a newer Python whose library has grown.
DEFAULT_CORPUS_CHARS = 9_000_000

# Tests, generated tables (encodings, pydoc_data), vendored or legacy code and the tkinter
# wrappers (thousands of `self.tk.call(self._w, ...)` lines, which low-temperature sampling
# would otherwise keep coming back to) are not the code a playground user is writing.
_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "dist-packages",
        "encodings",
        "ensurepip",
        "idlelib",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "test",
        "tests",
        "tkinter",
        "turtledemo",
    }
)


@dataclass(frozen=True, slots=True)
class ModelData:
    """Everything the cache file holds, as loaded."""

    meta: dict
    vocab: tuple[str, ...]
    # Per context length (0 for the unigram level): the modified-KN discounts D1, D2, D3+.
    discounts: tuple[tuple[float, float, float], ...]
    # Unigram level: continuation counts per token id, and (total, n1, n2, n3+) over them.
    unigram_counts: bytes
    unigram_stats: tuple[int, int, int, int]
    # Packed context token ids -> packed [total, n1, n2, n3+, ids..., counts...], ids sorted by
    # decreasing count.
    table: dict[bytes, bytes]
    candidates_per_context: int
    # A string delimiter that closes a string has its own id (same text, listed after the other
    # tokens in `vocab`): (id of the text, id of it closing a string) pairs.
    closers: tuple[tuple[int, int], ...]


def _expected_meta() -> dict:
    return {"format": FORMAT_VERSION, "byteorder": sys.byteorder, "itemsize": array("I").itemsize}


def stdlib_sources(max_chars: int) -> list[tuple[str, str]]:
    """`(relative path, text)` of the corpus files, sorted by path, up to `max_chars` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        paths.extend(
            Path(dirpath, name)
            for name in filenames
            if name.endswith(".py") and not name.startswith("test_")
        )
    sources: list[tuple[str, str]] = []
    total = 0
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if total + len(text) > max_chars:
            if sources:
                break
            text = text[:max_chars]
        sources.append((path.relative_to(root).as_posix(), text))
        total += len(text)
    return sources


def _discounts(counts: Counter) -> tuple[float, float, float]:
    """Chen & Goodman's estimates of D1, D2, D3+ from the counts of counts."""
    n1, n2, n3, n4 = (counts.get(i, 0) for i in (1, 2, 3, 4))
    if not (n1 and n2 and n3 and n4):  # a tiny corpus: fall back to the usual defaults
        return (0.5, 1.0, 1.5)
    y = n1 / (n1 + 2 * n2)
    d1 = 1 - 2 * y * n2 / n1
    d2 = 2 - 3 * y * n3 / n2
    d3 = 3 - 4 * y * n4 / n3
    # Each Dc must stay inside (0, c) or a seen token could get a negative share.
    return (min(max(d1, 0.05), 0.95), min(max(d2, 0.1), 1.9), min(max(d3, 0.15), 2.9))


def _stats(counts: list[int]) -> tuple[int, int, int, int]:
    n1 = n2 = n3 = 0
    for c in counts:
        if c == 1:
            n1 += 1
        elif c == 2:
            n2 += 1
        else:
            n3 += 1
    return (sum(counts), n1, n2, n3)


def _ngrams(seq: list[int], n: int) -> Counter:
    return Counter(zip(*(seq[i:] for i in range(n)), strict=False))


def train(
    sources: list[tuple[str, str]], *, progress: Callable[[str], None] | None = None
) -> ModelData:
    """Count n-grams over `sources` and return the model's statistics."""
    say = progress or (lambda _message: None)
    token_lists = [tokenize(text) for _name, text in sources]
    closing = [closing_quotes(tokens) for tokens in token_lists]
    frequencies = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted(
        (token for token, count in frequencies.items() if count >= MIN_TOKEN_COUNT),
        key=lambda token: (-frequencies[token], token),
    )
    closes = Counter(
        token
        for tokens, flags in zip(token_lists, closing, strict=True)
        for token, flag in zip(tokens, flags, strict=True)
        if flag
    )
    closer_texts = sorted(
        (token for token in kept if closes[token] >= MIN_TOKEN_COUNT),
        key=lambda token: (-closes[token], token),
    )
    vocab = ("", "", *kept, *closer_texts)  # BOS and UNK have no text: they are never generated
    index = {token: i for i, token in enumerate(vocab[: len(vocab) - len(closer_texts)]) if i > UNK}
    closer = {
        index[token]: i for i, token in enumerate(vocab) if i >= len(vocab) - len(closer_texts)
    }
    seq: list[int] = []
    for tokens, flags in zip(token_lists, closing, strict=True):
        seq.append(BOS)
        for token, flag in zip(tokens, flags, strict=True):
            token_id = index.get(token, UNK)
            seq.append(closer.get(token_id, token_id) if flag else token_id)
    say(f"{len(sources)} files, {len(seq):,} tokens, {len(vocab):,} token types")

    # ngrams[n]: how often each n-gram occurs. Level k (a context of k tokens) is built from
    # the (k+1)-grams: raw counts at the top level, and below it Kneser-Ney continuation
    # counts (how many distinct tokens precede the (k+1)-gram), read off the (k+2)-grams.
    ngrams = {n: _ngrams(seq, n) for n in range(2, ORDER + 1)}
    discounts: list[tuple[float, float, float]] = [(0.5, 1.0, 1.5)] * ORDER
    table: dict[bytes, bytes] = {}
    for k in range(ORDER - 1, 0, -1):
        if k == ORDER - 1:
            counts = ngrams[k + 1]
        else:
            counts = Counter(map(itemgetter(slice(1, None)), ngrams[k + 2]))
            del ngrams[k + 2]
        discounts[k] = _discounts(Counter(counts.values()))
        # How often each context occurs (with a following token) decides the cut-off.
        seen = _ngrams(seq[:-1], k) if k > 1 else None
        grouped: defaultdict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for gram, count in counts.items():
            context = gram[:-1]
            if seen is None or seen[context] >= MIN_CONTEXT_COUNT:
                grouped[context].append((-count, gram[-1]))
        for context, entries in grouped.items():
            entries.sort()
            total, n1, n2, n3 = _stats([-c for c, _ in entries])
            candidates = [(-c, token) for c, token in entries if token > UNK]
            packed = array("I", (total, n1, n2, n3))
            packed.extend(token for _, token in candidates)
            packed.extend(count for count, _ in candidates)
            table[array("I", context).tobytes()] = packed.tobytes()
        say(f"{k + 1}-grams: {len(grouped):,} contexts")

    continuation = Counter(map(itemgetter(1), ngrams[2]))
    discounts[0] = _discounts(Counter(continuation.values()))
    unigram = array("I", (continuation.get(i, 0) for i in range(len(vocab))))
    return ModelData(
        meta={
            **_expected_meta(),
            "order": ORDER,
            "python": platform.python_version(),
            "files": len(sources),
            "corpus_chars": sum(len(text) for _, text in sources),
            "corpus_tokens": len(seq),
            "built_at": int(time.time()),
        },
        vocab=vocab,
        discounts=tuple(discounts),
        unigram_counts=unigram.tobytes(),
        unigram_stats=_stats([c for c in unigram if c]),
        table=table,
        candidates_per_context=CANDIDATES_PER_CONTEXT,
        closers=tuple(sorted(closer.items())),
    )


def write_model(data: ModelData, path: Path) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    meta = marshal.dumps(data.meta)
    body = marshal.dumps(
        (
            data.vocab,
            data.discounts,
            data.unigram_counts,
            data.unigram_stats,
            data.table,
            data.candidates_per_context,
            data.closers,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name in the same directory: concurrent builders (two workers starting
    # at once) never write into each other's file, and the rename stays on one filesystem.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC)
            out.write(_HEADER.pack(FORMAT_VERSION, len(meta)))
            out.write(meta)
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; it holds nothing private
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict | None:
    """The metadata of a cache file, or None if it is missing, foreign or of another version."""
    try:
        with path.open("rb") as f:
            head = f.read(len(MAGIC) + _HEADER.size)
            if len(head) < len(MAGIC) + _HEADER.size or not head.startswith(MAGIC):
                return None
            version, length = _HEADER.unpack(head[len(MAGIC) :])
            if version != FORMAT_VERSION:
                return None
            # S302: the cache is written by this module into the app's own directory; marshal
            # is only ever fed our own files.
            meta = marshal.loads(f.read(length))  # noqa: S302
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in _expected_meta().items()):
        return None
    return meta


def is_fresh(path: Path) -> bool:
    """True if `path` holds a cache this code can load as is."""
    return read_meta(path) is not None


def read_model(path: Path) -> ModelData:
    """Load a cache file; ValueError if it is not a readable cache of the current version."""
    meta = read_meta(path)
    if meta is None:
        raise ValueError(f"{path} is not an offline-model cache of format {FORMAT_VERSION}")
    raw = path.read_bytes()
    offset = len(MAGIC) + _HEADER.size + _HEADER.unpack_from(raw, len(MAGIC))[1]
    try:
        body = marshal.loads(memoryview(raw)[offset:])  # noqa: S302 (our own file, see above)
        vocab, discounts, unigram_counts, unigram_stats, table, candidates, closers = body
    except (EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is a damaged offline-model cache") from exc
    return ModelData(
        meta=meta,
        vocab=vocab,
        discounts=discounts,
        unigram_counts=unigram_counts,
        unigram_stats=unigram_stats,
        table=table,
        candidates_per_context=candidates,
        closers=closers,
    )


def build_model(
    path: Path,
    *,
    progress: Callable[[str], None] | None = None,
    corpus_chars: int | None = None,
) -> None:
    """Train on the standard library (at most `corpus_chars` of it, by default
    `DEFAULT_CORPUS_CHARS`) and write the cache."""
    say = progress or (lambda _message: None)
    sources = stdlib_sources(DEFAULT_CORPUS_CHARS if corpus_chars is None else corpus_chars)
    if not sources:
        raise RuntimeError("no Python source found in the standard library to train on")
    say(f"Reading {len(sources)} files ({sum(len(t) for _, t in sources) / 1e6:.1f} M chars)")
    write_model(train(sources, progress=progress), Path(path))
    say(f"Wrote {path}")
