"""Measuring the offline model, and fitting its mixture and lexical weights.

    python -m playground.offline.evaluation [MODEL_PATH] [--fit [--write]]

prints, for the cache at MODEL_PATH (default: a fresh build in a temporary directory):

- the held-out log-loss: the mean negative log-probability (nats/token) the model gives each
  token of CPython's own test files (`Lib/test/test_*.py`, which are not in the corpus), the
  first MAX_FILE_TOKENS tokens of every `len(files) // 60`-th file, each file scored as a
  prompt that grows token by token. A token outside the candidate set has probability 0 under
  the model; it is charged MISS_PROBABILITY instead, and the miss rate is reported too;
- the loop rate: the fraction of completions (100 tokens at temperature 0.2, top_p 0.95, five
  seeds per prompt) of `LOOP_PROMPTS` in which some line of 10 or more characters appears 3 or
  more times;
- build and load time, and generation speed.

`--fit` first refits the weights of `weights.py` on other held-out code (another slice of the
test files, and Django's modules) and prints them, with the log-loss on that code for a few
values of `model.REPEAT_DISCOUNT`; `--write` also writes them to `weights.py`. The metrics are
then those of the refitted weights.
"""

from __future__ import annotations

import json
import math
import sys
import sysconfig
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from playground.completions import CompletionRequest

from . import model as model_module
from . import weights as weights_module
from .model import OfflineModel, _Context, cache_weight
from .syntax import SYNTAX_ERRORS
from .tokenizer import tokenize
from .training import build_model, read_model

HELD_OUT_FILES = 60
MAX_FILE_TOKENS = 3000
MISS_PROBABILITY = 1e-6

LOOP_PROMPTS = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\n\n\ndef list_files(path):\n",
    "def read_config(path):\n    with open(path) as f:\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def ",
    "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n\n\n"
    "def save(path, data):\n",
    "for i in range(10):\n",
    "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n",
    "class Node:\n    def __init__(self, value, next=None):\n        self.value = value\n"
    "        self.next = next\n\n\nclass LinkedList:\n    def __init__(self):\n",
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser()\n",
    'def main():\n    print("Hello, world!")\n\n\n',
)


def held_out_files(part: str = "score") -> list[Path]:
    """The held-out files: "score" (what `log_loss` reports) or "fit" (what `--fit` fits on).

    Both are CPython test files (alternate slices). The fit also reads as many of Django's
    modules (a dependency of the playground, and not in the corpus), so that weights reflect
    application code as well as test code.
    """
    files = sorted((Path(sysconfig.get_paths()["stdlib"]) / "test").glob("test_*.py"))
    step = max(1, len(files) // HELD_OUT_FILES)
    if part == "score":
        return files[::step][:HELD_OUT_FILES]
    import django

    modules = sorted(
        path
        for path in Path(django.__path__[0]).rglob("*.py")
        if path.stat().st_size > 2000 and "migrations" not in path.parts
    )
    every = max(1, len(modules) // HELD_OUT_FILES)
    return files[step // 2 :: step][:HELD_OUT_FILES] + modules[::every][:HELD_OUT_FILES]


def _held_out_tokens(files: list[Path]) -> Iterator[list[str]]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield tokenize(text)[:MAX_FILE_TOKENS]


def _score(model: OfflineModel, files: list[Path]) -> Iterator[tuple[_Context, int]]:
    """(context, id of the actual next token) for every held-out position; the token is
    appended (and counted into the cache, as prompt tokens are) once the caller resumes."""
    for tokens in _held_out_tokens(files):
        context = _Context(model, [])
        for text in tokens:
            token = context.next_id(text)
            yield context, token
            context.append(token, count=True)


def log_loss(model: OfflineModel, files: list[Path] | None = None) -> tuple[float, float, int]:
    """(nats per token, miss rate, tokens) over the held-out files."""
    total = 0.0
    misses = n = 0
    for context, token in _score(model, files or held_out_files()):
        ids, logps = model._step(context, False)
        try:
            total -= logps[ids.index(token)]
        except ValueError:
            total -= math.log(MISS_PROBABILITY)
            misses += 1
        n += 1
    return total / n, misses / n, n


def has_loop(text: str) -> bool:
    """Whether some line of 10 or more characters appears 3 or more times in `text`."""
    lines = Counter(line for line in text.split("\n") if len(line.strip()) >= 10)
    return any(count >= 3 for count in lines.values())


def loop_rate(
    model: OfflineModel,
    prompts: tuple[str, ...] = LOOP_PROMPTS,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    temperature: float = 0.2,
    max_tokens: int = 100,
) -> tuple[float, float]:
    """(fraction of completions that loop, tokens generated per second)."""
    loops = completions = tokens = 0
    started = time.perf_counter()
    for prompt in prompts:
        for seed in seeds:
            generation = model.generate(
                CompletionRequest(
                    model="offline",
                    prompt=prompt,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=0.95,
                    seed=seed,
                )
            )
            text = "".join(token.text for token in generation)
            tokens += generation.completion_tokens
            completions += 1
            loops += has_loop(text)
    return loops / completions, tokens / (time.perf_counter() - started)


# --- Fitting ----------------------------------------------------------------------------


def _maximise_linear(pairs: list[tuple[float, float]], high: float = 1.0) -> float:
    """The w in [0, high] maximising sum(log(a + w * b)) (concave: bisection on the slope)."""
    lo, hi = 0.0, high
    for _ in range(50):
        mid = (lo + hi) / 2
        slope = sum(b / (a + mid * b) for a, b in pairs if a + mid * b > 0)
        lo, hi = (mid, hi) if slope > 0 else (lo, mid)
    return (lo + hi) / 2


def fit_cache_weights(model: OfflineModel, files: list[Path]) -> None:
    """Fit CACHE_WEIGHTS and NAME_WEIGHT (in place) by maximum likelihood on `files`.

    The mixture is linear in the cache's weight w, p(token) = a + w * b: each position gives
    (a, b) for the actual token. For a matched context, w = lambda * n / (n + beta): beta from
    a grid, lambda by bisection.
    """
    groups: defaultdict[object, list[tuple[int, float, float]]] = defaultdict(list)
    for context, token in _score(model, files):
        ids, probs = model._distribution(model._longest_context(context.model_history()))
        cache = context.cache_distribution()
        if cache is None:
            continue
        without = dict(zip(ids, probs, strict=True))
        with_cache = model._mix(context, ids, probs, cache, 1.0)
        a, b = without.get(token, 0.0), with_cache.get(token, 0.0) - without.get(token, 0.0)
        if a + b <= 0 and a <= 0:
            continue  # a miss either way
        matched, crosses, seen, _ = cache
        prose = context.lexer.prose
        key = (matched, crosses, prose) if matched else ("names", context.line_start, prose)
        groups[key].append((seen, a, b))
    for key, events in groups.items():
        if key[0] == "names":
            weight = _maximise_linear([(a, b) for _, a, b in events])
            weights_module.NAME_WEIGHT[key[1:]] = round(weight, 3)  # type: ignore[index]
            continue
        best = (-math.inf, 0.0, 0.0)
        for beta in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0):
            scaled = [(a, b * n / (n + beta)) for n, a, b in events]
            lam = _maximise_linear(scaled, high=0.999)
            likelihood = sum(math.log(a + lam * b) for a, b in scaled if a + lam * b > 0)
            best = max(best, (likelihood, lam, beta))
        weights_module.CACHE_WEIGHTS[key] = (round(best[1], 3), best[2])  # type: ignore[index]


def fit_syntax_weights(
    model: OfflineModel,
    files: list[Path],
    floors: tuple[float, float] = (1e-3, 0.05),
    iterations: int = 200,
) -> None:
    """Fit SYNTAX_WEIGHTS (in place) by maximum likelihood on `files` (generalised iterative
    scaling: each candidate has at most one feature).

    A factor never goes below `floors[0]` for a syntax error (the lexer can misread a prompt that
    is not Python: nothing is made impossible), nor below `floors[1]` for a construct that is
    merely rare in CPython's tests (annotations, two-space indentation, ...).
    """
    saved = dict(weights_module.SYNTAX_WEIGHTS)
    weights_module.SYNTAX_WEIGHTS.clear()
    events: list[tuple[dict[object, float], object]] = []
    try:
        for context, token in _score(model, files):
            ids, probs = model._distribution(model._longest_context(context.model_history()))
            cache = context.cache_distribution()
            if cache is None:
                mixed = dict(zip(ids, probs, strict=True))
            else:
                weight = cache_weight(cache, context.line_start, context.lexer.prose)
                mixed = model._mix(context, ids, probs, cache, weight)
            ranked = model._condition(context, mixed)
            if token not in {t for _, t in ranked}:
                continue
            norm = -math.fsum(q for q, _ in ranked)
            mass: defaultdict[object, float] = defaultdict(float)
            for q, t in ranked:
                feature = context.lexer.feature(*context.kind(t))
                if feature is not None:
                    mass[feature] -= q / norm
            actual = context.lexer.feature(*context.kind(token))
            if mass or actual is not None:
                events.append((dict(mass), actual))
    finally:
        weights_module.SYNTAX_WEIGHTS.update(saved)
    weights = _scale(events, iterations)
    weights_module.SYNTAX_WEIGHTS.clear()
    weights_module.SYNTAX_WEIGHTS.update(
        {
            f: round(max(floors[f not in SYNTAX_ERRORS], w), 3 if w < 10 else 1)
            for f, w in sorted(weights.items(), key=str)
        }
    )


def _scale(
    events: list[tuple[dict[object, float], object]], iterations: int
) -> dict[object, float]:
    """Generalised iterative scaling: the factor per feature that maximises the likelihood of
    the actual tokens. Each event is ({feature: probability of the candidates that have it},
    the actual token's feature or None); a candidate has at most one feature."""
    observed = Counter(actual for _, actual in events if actual is not None)
    features = {f for mass, _ in events for f in mass} | set(observed)
    weights = dict.fromkeys(features, 1.0)
    for _ in range(iterations):
        expected: defaultdict[object, float] = defaultdict(float)
        for mass, _ in events:
            z = 1 - sum(mass.values()) + sum(weights[f] * m for f, m in mass.items())
            for f, m in mass.items():
                expected[f] += weights[f] * m / z
        for f in features:
            if expected[f] > 0:
                ratio = (observed[f] + 0.5) / (expected[f] + 0.5)
                weights[f] = min(1e3, max(1e-4, weights[f] * ratio))
    return weights


def fit_echo_weights(
    model: OfflineModel, files: list[Path], floor: float = 0.01, iterations: int = 200
) -> None:
    """Fit ECHO_WEIGHTS (in place) by maximum likelihood on `files`, the rest of the model
    fixed."""
    weights_module.ECHO_WEIGHTS.clear()
    events: list[tuple[dict[object, float], object]] = []
    for context, token in _score(model, files):
        echoes = context.echoes()
        if not echoes:
            continue
        ids, logps = model._step(context, False)
        if token not in ids:
            continue
        probabilities = dict(zip(ids, logps, strict=True))
        mass: defaultdict[object, float] = defaultdict(float)
        for t, echo in echoes.items():
            if t in probabilities:
                mass[echo] += math.exp(probabilities[t])
        events.append((dict(mass), echoes.get(token)))
    weights = _scale(events, iterations)
    weights_module.ECHO_WEIGHTS.update(
        {f: round(max(floor, w), 3) for f, w in sorted(weights.items(), key=str)}  # type: ignore[misc]
    )


def repeat_discount_likelihood(
    model: OfflineModel, files: list[Path], discounts: tuple[float, ...]
) -> dict[float, float]:
    """The held-out log-loss (nats/token, misses excluded) for each REPEAT_DISCOUNT value.

    The discount multiplies a token's probability by 1 - d * r; with the rest of the model
    fixed, each position contributes log(p * (1 - d * r)) - log(1 - d * sum(p' * r')).
    """
    saved = model_module.REPEAT_DISCOUNT
    model_module.REPEAT_DISCOUNT = 0.0
    events: list[tuple[float, float, float]] = []  # (log p, r of the token, sum of p' * r')
    n = 0
    try:
        for context, token in _score(model, files):
            ids, logps = model._step(context, False)
            try:
                logp = logps[ids.index(token)]
            except ValueError:
                continue
            n += 1
            if not context.repeats:
                events.append((logp, 0.0, 0.0))
                continue
            done = len(context.line)
            repeat: dict[int, float] = {}
            probabilities = dict(zip(ids, logps, strict=True))
            for line in context.repeats:
                t = line[done] if done < len(line) else model.newline
                if t in probabilities:
                    repeat[t] = min(1.0, repeat.get(t, 0.0) + model._finishes(context, line))
            mass = math.fsum(math.exp(probabilities[t]) * r for t, r in repeat.items())
            events.append((logp, repeat.get(token, 0.0), mass))
    finally:
        model_module.REPEAT_DISCOUNT = saved
    return {
        d: -math.fsum(lp + math.log(1 - d * r) - math.log(1 - d * m) for lp, r, m in events) / n
        for d in discounts
    }


def _literal(value: object) -> str:
    """`repr`, with strings double-quoted as the formatter writes them."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        items = ", ".join(map(_literal, value))
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)


def write_weights(path: Path | None = None) -> None:
    """Write the current weights to `weights.py` (its docstring and comments are kept)."""
    path = path or Path(weights_module.__file__)
    text = path.read_text(encoding="utf-8")
    for name in ("CACHE_WEIGHTS", "NAME_WEIGHT", "ECHO_WEIGHTS", "SYNTAX_WEIGHTS"):
        table = getattr(weights_module, name)
        start = text.index(f"\n{name}: ") + 1
        head = text.index("{", start)
        end = text.index("\n}\n", head) + 3
        body = "".join(f"    {_literal(key)}: {_literal(value)},\n" for key, value in table.items())
        text = text[:head] + "{\n" + body + "}\n" + text[end:]
    path.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> None:
    fit = "--fit" in argv
    paths = [arg for arg in argv if not arg.startswith("--")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(paths[0]) if paths else Path(tmp) / "model.bin"
        if not paths:
            started = time.perf_counter()
            build_model(path)
            print(f"build: {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        model = OfflineModel(read_model(path))
        print(f"load: {time.perf_counter() - started:.2f} s")
        if fit:
            fit_cache_weights(model, held_out_files("fit"))
            print(f"CACHE_WEIGHTS = {weights_module.CACHE_WEIGHTS}")
            print(f"NAME_WEIGHT = {weights_module.NAME_WEIGHT}")
            fit_syntax_weights(model, held_out_files("fit"))
            print(f"SYNTAX_WEIGHTS = {weights_module.SYNTAX_WEIGHTS}")
            fit_echo_weights(model, held_out_files("fit"))
            print(f"ECHO_WEIGHTS = {weights_module.ECHO_WEIGHTS}")
            if "--write" in argv:
                write_weights()
            discounts = (0.0, 0.5, 0.9, 0.95, 0.99)
            losses = repeat_discount_likelihood(model, held_out_files("fit"), discounts)
            print("REPEAT_DISCOUNT:", ", ".join(f"{d}: {x:.4f}" for d, x in losses.items()))
        loss, misses, n = log_loss(model)
        hits = (loss + misses * math.log(MISS_PROBABILITY)) / (1 - misses)
        print(
            f"held-out log-loss: {loss:.4f} nats/token over {n} tokens ({misses:.2%} misses;"
            f" {hits:.4f} over the others)"
        )
        for temperature in (0.2, 0.5, 0.8):
            rate, speed = loop_rate(model, temperature=temperature)
            print(f"loop rate at temperature {temperature}: {rate:.2f} ({speed:,.0f} tokens/s)")


if __name__ == "__main__":
    main(sys.argv[1:])
