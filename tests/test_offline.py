"""The built-in offline model: tokenizer, cache file, distributions and every sampling setting.

Most tests run on a small model trained once per session on a slice of the standard library
(well under a second to build); a few load the real default model.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from hypothesis import given
from hypothesis import strategies as st

from playground import offline
from playground.completions import CompletionRequest, Delta, LogprobStatus
from playground.offline import evaluation, syntax, training
from playground.offline import model as model_module
from playground.offline.tokenizer import tokenize

SMALL_CORPUS_CHARS = 400_000
CODE_PROMPT = (
    "import os\n\n\nclass Store:\n    def __init__(self, path):\n        self.path = path\n\n"
    "    def read(self):\n        with open(self.path) as f:\n            return f.read()\n\n"
    "    def "
)


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("offline") / "small-model.bin"
    training.build_model(path, corpus_chars=SMALL_CORPUS_CHARS)
    return path


@pytest.fixture
def model(small_model_path: Path) -> offline.OfflineModel:
    return offline.load_model(small_model_path)


@pytest.fixture
def small_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds that load_model starts on its own train on a small corpus too."""
    monkeypatch.setattr(training, "DEFAULT_CORPUS_CHARS", 30_000)


@pytest.fixture
def small_default(settings, small_model_path: Path) -> Path:
    """Point the default model path (used by stream_completion and complete) at the small model."""
    settings.OFFLINE_MODEL_PATH = small_model_path
    return small_model_path


def request(prompt: str = CODE_PROMPT, **kwargs) -> CompletionRequest:
    kwargs.setdefault("max_tokens", 40)
    return CompletionRequest(model=offline.MODEL_ID, prompt=prompt, **kwargs)


def run(model: offline.OfflineModel, req: CompletionRequest) -> tuple[list, str | None]:
    generation = model.generate(req)
    tokens = list(generation)
    return tokens, generation.finish_reason


def texts(tokens) -> list[str]:
    return [token.text for token in tokens]


# --- Tokenizer ----------------------------------------------------------------------------


@given(st.text())
def test_tokens_concatenate_to_any_text(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)


def test_tokenizer_splits_code_into_code_ish_pieces() -> None:
    assert tokenize("def f(x):\n        return x**2  # sq\r\n") == [
        "def",
        " f",
        "(",
        "x",
        ")",
        ":",
        "\n",
        "        ",
        "return",
        " x",
        "**",
        "2",
        "  ",
        "#",
        " sq",
        "\r\n",
    ]
    assert tokenize("s = f\"é{x!r}\" + rb'\\n'") == [
        "s",
        " =",
        ' f"',
        "é",
        "{",
        "x",
        "!",
        "r",
        "}",
        '"',
        " +",
        " rb'",
        "\\",
        "n",
        "'",
    ]


def test_model_tokenize_and_count_agree(model: offline.OfflineModel) -> None:
    text = "for i in range(10):\n    print(i)  # ünïcode ✓\n"
    assert model.tokenize(text) == tokenize(text)
    assert model.count_tokens(text) == len(tokenize(text))
    assert model.count_tokens("") == 0


# --- Cache file ---------------------------------------------------------------------------


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "model.bin"
    messages: list[str] = []
    offline.build_model(path, progress=messages.append, corpus_chars=60_000)
    assert messages
    assert offline.is_fresh(path)
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed, not left
    meta = training.read_meta(path)
    assert meta["format"] == training.FORMAT_VERSION
    assert 0 < meta["corpus_chars"] <= 60_000

    loaded = offline.load_model(path)
    assert loaded is offline.load_model(path)  # loaded once per process
    tokens, finish = run(loaded, request(max_tokens=5, seed=1))
    assert len(tokens) == 5
    assert finish == "length"


def test_a_cache_of_another_format_version_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    offline.build_model(path, corpus_chars=30_000)
    raw = path.read_bytes()
    header = training.MAGIC + training._HEADER.pack(
        training.FORMAT_VERSION - 1, training._HEADER.unpack_from(raw, len(training.MAGIC))[1]
    )
    path.write_bytes(header + raw[len(header) :])
    assert not offline.is_fresh(path)


def test_closing_quotes_have_ids_of_their_own(small_model_path: Path) -> None:
    data = training.read_model(small_model_path)
    assert data.closers
    for opening, closing in data.closers:
        assert opening != closing
        assert data.vocab[opening] == data.vocab[closing]
    texts = {data.vocab[closing] for _, closing in data.closers}
    assert {'"', "'", '"""'} <= texts


def test_identical_builds_give_identical_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    offline.build_model(first, corpus_chars=30_000)
    offline.build_model(second, corpus_chars=30_000)
    assert training.read_model(first).table == training.read_model(second).table


@pytest.mark.usefixtures("small_rebuilds")
def test_stale_or_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / "stale.bin"
    stale.write_bytes(b"not a model at all")
    assert not offline.is_fresh(stale)
    assert offline.load_model(stale).generate(request(max_tokens=2)) is not None
    assert offline.is_fresh(stale)

    damaged = tmp_path / "damaged.bin"
    offline.build_model(damaged)
    damaged.write_bytes(damaged.read_bytes()[:-1000])
    assert offline.is_fresh(damaged)  # the header is intact ...
    assert len(list(offline.load_model(damaged).generate(request(max_tokens=3)))) == 3


@pytest.mark.usefixtures("small_rebuilds")
def test_concurrent_first_loads_build_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: offline.load_model(path), range(4)))
    assert all(m is models[0] for m in models)


def test_real_default_model_loads_and_completes() -> None:
    model = offline.load_model()
    assert model.meta["corpus_tokens"] > 1_000_000
    tokens, finish = run(model, request(max_tokens=30, seed=0, temperature=0.8))
    assert len(tokens) == 30
    assert finish == "length"


# --- Distributions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        CODE_PROMPT,
        "",
        "x = ",  # ends in a space: healed
        "def frobnicate_widget(x):\n    return x\n\nvalue = frobnicate_widget",  # cache active
        "完全に未知の入力 🦜🦜🦜",
        "\t\t\r\n",
        'x = "an open string',  # a closing quote is a candidate: its own id, the same text
        'def f():\n    """Docstring."""\n    return f(\'\'\')\n',
        "if x:\n  y = [1, (2,\n",  # two-space indentation, open brackets
        "x = 1\nx = 1\nx = 1",  # a repeated line
        ")]}\n        )",  # brackets that were never opened
    ],
)
def test_distribution_is_real(model: offline.OfflineModel, prompt: str) -> None:
    alternatives = model.distribution(prompt)
    assert alternatives
    logprobs = [alt.logprob for alt in alternatives]
    assert all(lp <= 0 for lp in logprobs)
    assert logprobs == sorted(logprobs, reverse=True)
    assert math.fsum(math.exp(lp) for lp in logprobs) == pytest.approx(1.0, abs=1e-9)
    assert len({alt.text for alt in alternatives}) == len(alternatives)
    assert all(alt.text for alt in alternatives)


def test_prompt_cache_brings_back_names_from_the_prompt(model: offline.OfflineModel) -> None:
    prompt = "def frobnicate_widget(x):\n    return x\n\na = frobnicate_widget(1)\nb ="
    top = [alt.text for alt in model.distribution(prompt)[:5]]
    assert " frobnicate_widget" in top


def test_a_trailing_space_is_healed(model: offline.OfflineModel) -> None:
    alternatives = model.distribution("value = ")
    # Candidates continue the space the prompt already has instead of predicting after a lone
    # space (which the corpus almost never has): no second space, no stray newline.
    assert not any(alt.text.startswith(" ") for alt in alternatives[:10])
    tokens, _ = run(model, request("value = ", seed=1))
    assert tokens[0].text
    assert not tokens[0].text.startswith("\n")


def test_crlf_prompt_reads_as_lf(model: offline.OfflineModel) -> None:
    assert model.distribution("import os\r\n") == model.distribution("import os\n")


def _lexer_after(text: str) -> syntax.Lexer:
    lexer = syntax.Lexer()
    for token in tokenize(text):
        lexer.feed(*syntax.classify(token))
    return lexer


def _feature(lexer: syntax.Lexer, token: str) -> object:
    return lexer.feature(*syntax.classify(token))


def test_lexer_follows_brackets_strings_and_indentation() -> None:
    in_call = _lexer_after("result = compute([1, 2")
    assert _feature(in_call, "]") == "close"
    assert _feature(in_call, ")") == "close mismatched"
    assert _feature(_lexer_after("x = 1"), ")") == "close unopened"
    assert _feature(_lexer_after('x = "abc'), "\n") == "newline in string"
    assert _feature(_lexer_after('x = """abc'), "\n") == ("in string", "string", 3, "newline")
    assert _feature(_lexer_after("x = 1  # it's"), "\n") is None  # a quote in a comment
    assert _lexer_after('x = "a \\" b').closes(*syntax.classify('"'))  # an escaped quote
    assert not _lexer_after('x = "a \\').closes(*syntax.classify('"'))  # one to come

    block = _lexer_after("class A:\n    def f(self):\n")
    assert _feature(block, "        ") == ("after colon", "indent")
    assert _feature(block, "    ") == ("after colon", "same")
    assert _feature(block, "x") == ("after colon", "dedent")
    body = _lexer_after("class A:\n    def f(self):\n        return 1\n")
    assert _feature(body, "    ") == ("plain", "dedent")
    assert _feature(body, "            ") == ("plain", "indent")
    assert _feature(body, "      ") == ("plain", "dedent other")
    two_spaces = _lexer_after("if a:\n  if b:\n")
    assert _feature(two_spaces, "    ") == ("after colon", "indent")
    fragment = _lexer_after("        return x\n")  # a prompt can start indented
    assert _feature(fragment, "    ") == ("plain", "dedent")

    assert _feature(_lexer_after("if x"), " =") == ("=", "compound")
    assert _feature(_lexer_after("f(a"), "=") == ("= in brackets", False, True)
    assert _feature(_lexer_after("def f(a: int"), " =") is None  # annotated parameters
    assert _feature(_lexer_after("if x"), "\n") == "newline in header"
    assert _feature(_lexer_after("x = y +"), "\n") == "newline after operator"
    assert _feature(_lexer_after("from os import *"), "\n") is None


def test_closing_quotes_are_marked_for_training() -> None:
    tokens = tokenize('s = "a" + \'x\' + """c\n"d"\n"""')
    marked = [t for t, closes in zip(tokens, syntax.closing_quotes(tokens), strict=True) if closes]
    assert marked == ['"', "'", '"""']


def test_the_lexical_state_shapes_the_distribution(model: offline.OfflineModel) -> None:
    def probability(prompt: str, text: str) -> float:
        return sum(math.exp(a.logprob) for a in model.distribution(prompt) if a.text == text)

    # A block header is followed by a deeper indentation, not the same one.
    after_header = model.distribution("def f(x):\n    if x:\n")
    assert after_header[0].text == "        "
    assert probability("def f(x):\n    if x:\n", "    ") < 0.01
    # A one-line string is closed before the line ends.
    assert probability('x = "some text', "\n") < 0.01
    assert probability('x = "some text', '"') > 0.01
    # A bracket closes what is open.
    assert probability("x = compute([1, 2", ")") < 0.01


def test_a_recent_line_is_not_copied_whole(
    model: offline.OfflineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = "total = compute_total(items, discount)"

    def odds(prompt: str, text: str) -> float:
        p = sum(math.exp(a.logprob) for a in model.distribution(prompt) if a.text == text)
        return p / (1 - p)

    def copy_odds() -> tuple[float, float]:
        # ")" makes an exact copy of the line before likely (if a newline follows it); a
        # newline then makes it one: the odds of that are 1 - REPEAT_DISCOUNT as high.
        return odds(f"{line}\n{line[:-1]}", ")"), odds(f"{line}\n{line}", "\n")

    last_token, newline = copy_odds()
    monkeypatch.setattr(model_module, "REPEAT_DISCOUNT", 0.0)
    plain_last_token, plain_newline = copy_odds()
    assert last_token < plain_last_token * 0.5
    assert newline == pytest.approx(plain_newline * 0.1, rel=1e-6)


def test_echoes_are_found_within_the_line(model: offline.OfflineModel) -> None:
    def echoes(prompt: str) -> dict[str, tuple[int, int]]:
        context = model_module._Context(model, tokenize(prompt))
        return {context.text(token): echo for token, echo in context.echoes().items()}

    assert echoes("x = os.path.path") == {"path": (1, 1), ".": (2, 1)}
    assert echoes("x = [1, 0, 0, 0")[","] == (2, 2)
    assert echoes("x = 1\n") == {}  # a new line starts afresh


# --- Loops --------------------------------------------------------------------------------

# The prompts that used to loop at the page's default settings, and two more.
LOOPING_PROMPTS = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def ",
    "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n",
)


def test_has_loop() -> None:
    assert evaluation.has_loop("    return False\n" * 3)
    assert not evaluation.has_loop("    return False\n" * 2 + "    pass\n" * 5)  # short lines


def test_low_temperature_completions_do_not_loop(model: offline.OfflineModel) -> None:
    # Before the fix this was 1.0: every completion repeated the prompt's lines.
    rate, _ = evaluation.loop_rate(model, LOOPING_PROMPTS, seeds=(0, 1, 2, 3, 4), temperature=0.2)
    assert rate <= 0.2


def test_low_temperature_completions_of_the_real_model_do_not_loop() -> None:
    rate, _ = evaluation.loop_rate(
        offline.load_model(), LOOPING_PROMPTS, seeds=(0, 1, 2, 3, 4), temperature=0.2
    )
    assert rate <= 0.2


def test_held_out_log_loss_runs(model: offline.OfflineModel) -> None:
    loss, misses, tokens = evaluation.log_loss(model, evaluation.held_out_files()[:1])
    assert tokens > 100
    assert 0 < loss < 15
    assert 0 <= misses < 0.5


# --- Sampling -----------------------------------------------------------------------------


def test_same_seed_same_tokens(model: offline.OfflineModel) -> None:
    req = request(seed=1234, temperature=1.0, max_tokens=60)
    first, _ = run(model, req)
    second, _ = run(model, req)
    assert first == second


def test_different_seeds_differ(model: offline.OfflineModel) -> None:
    outputs = {"".join(texts(run(model, request(seed=s, max_tokens=60))[0])) for s in range(4)}
    assert len(outputs) > 1


def test_no_seed_still_samples(model: offline.OfflineModel) -> None:
    tokens, finish = run(model, request(seed=None, max_tokens=10))
    assert len(tokens) == 10
    assert finish == "length"


def test_temperature_zero_is_greedy(model: offline.OfflineModel) -> None:
    tokens, _ = run(model, request(temperature=0.0, seed=1, max_tokens=50))
    for token in tokens:
        assert token.logprob == token.alternatives[0].logprob
    assert run(model, request(temperature=0.0, seed=99, max_tokens=50))[0] == tokens
    first = model.distribution(CODE_PROMPT)[0]
    assert tokens[0].text == first.text


@pytest.mark.parametrize("top_p", [0.2, 0.5, 0.8])
def test_top_p_samples_only_from_the_nucleus(model: offline.OfflineModel, top_p: float) -> None:
    checked = 0
    for seed in range(5):
        tokens, _ = run(
            model, request(seed=seed, temperature=1.0, top_p=top_p, logprobs=20, max_tokens=40)
        )
        for token in tokens:
            nucleus, total = [], 0.0
            for alt in token.alternatives:
                if total >= top_p + 1e-9:
                    break
                nucleus.append(alt.text)
                total += math.exp(alt.logprob)
            if total >= top_p + 1e-9:
                assert token.text in nucleus
                checked += 1
    assert checked > 50


def test_tiny_top_p_is_greedy(model: offline.OfflineModel) -> None:
    nucleus_of_one, _ = run(model, request(seed=5, temperature=1.5, top_p=1e-9))
    greedy, _ = run(model, request(temperature=0.0))
    assert texts(nucleus_of_one) == texts(greedy)


def test_penalties_follow_openai_semantics() -> None:
    ids, logps = (10, 20), (math.log(0.6), math.log(0.4))
    greedy = CompletionRequest(model="m", prompt="", max_tokens=1, temperature=0.0)
    rng = model_module.random.Random(0)
    assert model_module._choose(ids, logps, {10: 1}, greedy, rng) == 0
    # 0.6 -> log(0.6) - 1 * 0.5 = -1.01 < log(0.4) = -0.92
    freq = CompletionRequest(**{**_fields(greedy), "frequency_penalty": 0.5})
    assert model_module._choose(ids, logps, {10: 1}, freq, rng) == 1
    # A frequency penalty scales with the count; a presence penalty does not.
    small_freq = CompletionRequest(**{**_fields(greedy), "frequency_penalty": 0.2})
    assert model_module._choose(ids, logps, {10: 1}, small_freq, rng) == 0
    assert model_module._choose(ids, logps, {10: 3}, small_freq, rng) == 1
    presence = CompletionRequest(**{**_fields(greedy), "presence_penalty": 0.5})
    assert model_module._choose(ids, logps, {10: 1}, presence, rng) == 1
    assert model_module._choose(ids, logps, {10: 5, 20: 1}, presence, rng) == 0


def _fields(req: CompletionRequest) -> dict:
    return {name: getattr(req, name) for name in req.__dataclass_fields__}


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalties_reduce_repetition(model: offline.OfflineModel, penalty: str) -> None:
    prompt = "x = 1\n" * 30

    def repeats(**kwargs) -> int:
        tokens, _ = run(model, request(prompt, seed=3, temperature=0.7, max_tokens=80, **kwargs))
        return len(tokens) - len(set(texts(tokens)))

    assert repeats(**{penalty: 1.5}) < repeats()


def test_logprobs_are_real(model: offline.OfflineModel) -> None:
    tokens, _ = run(model, request(seed=7, temperature=1.2, logprobs=5, max_tokens=60))
    for token in tokens:
        assert len(token.alternatives) == 5
        lps = [alt.logprob for alt in token.alternatives]
        assert lps == sorted(lps, reverse=True)
        assert all(lp <= 0 for lp in lps)
        assert math.fsum(math.exp(lp) for lp in lps) <= 1 + 1e-9
        assert token.logprob is not None
        assert token.logprob <= 0
        # A lower-ranked choice still carries its own logprob, no higher than the top-5's.
        if token.text not in {alt.text for alt in token.alternatives}:
            assert token.logprob <= lps[-1]
    assert any(t.text not in {a.text for a in t.alternatives} for t in tokens)


def test_alternatives_count_follows_logprobs(model: offline.OfflineModel) -> None:
    for k in (0, 1, 5, 20):
        tokens, _ = run(model, request(seed=1, logprobs=k, max_tokens=5))
        assert all(len(t.alternatives) <= k for t in tokens)
        assert any(len(t.alternatives) == k for t in tokens)


def test_max_tokens_is_respected(model: offline.OfflineModel) -> None:
    generation = model.generate(request(seed=2, max_tokens=17))
    assert generation.finish_reason is None
    assert generation.prompt_tokens == model.count_tokens(CODE_PROMPT)
    tokens = list(generation)
    assert len(tokens) == 17
    assert generation.completion_tokens == 17
    assert generation.finish_reason == "length"


def test_stop_sequence_cuts_the_text_exactly(model: offline.OfflineModel) -> None:
    full = "".join(texts(run(model, request(seed=11, temperature=0.9, max_tokens=120))[0]))
    # Stops that occur in the unconstrained text: one token, several tokens, mid-token.
    stops = ["\n", full[20:25], full[40:43], full[60:62]]
    for stop in stops:
        if not stop:
            continue
        tokens, finish = run(
            model, request(seed=11, temperature=0.9, max_tokens=120, stop=(stop, "NEVER SEEN"))
        )
        text = "".join(texts(tokens))
        assert finish == "stop"
        assert stop not in text
        assert text == full[: full.index(stop)]
        assert all(t.text for t in tokens)


def test_stop_never_produced_ends_by_length(model: offline.OfflineModel) -> None:
    plain, _ = run(model, request(seed=4, max_tokens=30))
    tokens, finish = run(model, request(seed=4, max_tokens=30, stop=("\x00never\x00",)))
    assert finish == "length"
    assert tokens == plain


def test_unicode_prompts(model: offline.OfflineModel) -> None:
    prompt = "# Grüße aus 東京 🚀\ndef grüße(名前):\n    return f'こんにちは {名前}' \n\n"
    tokens, finish = run(model, request(prompt, seed=1, max_tokens=30, logprobs=3))
    assert len(tokens) == 30
    assert finish == "length"
    assert all(t.text for t in tokens)


def test_complete_matches_generate(small_default: Path) -> None:
    req = request(seed=8, max_tokens=25)
    completion = offline.complete(req)
    tokens, finish = run(offline.load_model(), req)
    assert completion.tokens == tuple(tokens)
    assert completion.text == "".join(texts(tokens))
    assert completion.finish_reason == finish
    assert completion.logprobs is LogprobStatus.REAL
    assert completion.usage.completion_tokens == 25


# --- Async adapter ------------------------------------------------------------------------


async def _collect(req: CompletionRequest) -> list[Delta]:
    return [delta async for delta in offline.stream_completion(req)]


def test_stream_completion_yields_real_deltas_then_usage(small_default: Path) -> None:
    req = request(seed=3, max_tokens=100, logprobs=2)
    deltas = asyncio.run(_collect(req))
    *content, last = deltas
    assert content
    for delta in content:
        assert delta.logprobs is LogprobStatus.REAL
        assert delta.tokens
        assert len(delta.tokens) <= offline.BATCH_TOKENS
        assert delta.text == "".join(texts(delta.tokens))
        assert delta.finish_reason is None
    assert last.text == ""
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 100
    assert last.usage.prompt_tokens == offline.load_model().count_tokens(CODE_PROMPT)
    streamed = [token for delta in content for token in delta.tokens]
    assert streamed == run(offline.load_model(), req)[0]


def test_stream_completion_reports_stop(small_default: Path) -> None:
    deltas = asyncio.run(_collect(request(seed=3, max_tokens=200, stop=("\n",))))
    assert deltas[-1].finish_reason == "stop"
    assert "\n" not in "".join(d.text for d in deltas)


def test_stream_completion_stops_when_closed(small_default: Path) -> None:
    async def first_then_close() -> Delta:
        stream = offline.stream_completion(request(seed=3, max_tokens=1000))
        first = await anext(stream)
        await stream.aclose()
        return first

    first = asyncio.run(first_then_close())
    assert first.tokens


# --- Management command -------------------------------------------------------------------


@pytest.mark.usefixtures("small_rebuilds")
def test_prepare_offline_model_builds_once(settings, tmp_path: Path) -> None:
    settings.OFFLINE_MODEL_PATH = tmp_path / "var" / "model.bin"
    call_command("prepare_offline_model", stdout=StringIO())
    assert offline.is_fresh(settings.OFFLINE_MODEL_PATH)
    built = settings.OFFLINE_MODEL_PATH.stat().st_mtime_ns

    out = StringIO()
    call_command("prepare_offline_model", stdout=out, verbosity=2)
    assert "up to date" in out.getvalue()
    assert settings.OFFLINE_MODEL_PATH.stat().st_mtime_ns == built

    call_command("prepare_offline_model", "--force", stdout=StringIO())
    assert settings.OFFLINE_MODEL_PATH.stat().st_mtime_ns != built
