"""The upstream client: payload allow-list, SSE and logprob parsing, error mapping (unit), and
real HTTP against the loopback fake upstream in tests/upstream.py (integration)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from upstream import DIALECTS, closed_port_url

from playground.backends import Backend
from playground.completions import (
    Alternative,
    Completion,
    CompletionRequest,
    Delta,
    ErrorKind,
    LogprobStatus,
    SSEParser,
    Token,
    TokenAssembler,
    UpstreamError,
    Usage,
    _StreamDeadline,
    auth_headers,
    build_payload,
    close_client,
    create_completion,
    error_from_response,
    get_client,
    make_client,
    parse_logprobs,
    set_client,
    stream_completion,
)

MODEL = "bigcode/starcoder2-7b"
KEY = "nvapi-test-key-0123456789"
REQUEST = CompletionRequest(model=MODEL, prompt="def add(a, b):\n", max_tokens=16)
QUICK = httpx.Timeout(5.0)


def backend_for(base_url: str = "http://127.0.0.1:9/v1", **overrides) -> Backend:
    fields = {
        "id": "test",
        "label": "Test",
        "kind": "openai",
        "model": MODEL,
        "base_url": base_url,
        "api_key": KEY,
    }
    if "max_alternatives" in overrides:
        from playground.dialects import Capabilities

        overrides["caps"] = Capabilities(max_alternatives=overrides.pop("max_alternatives"))
    return Backend(**{**fields, **overrides})


async def collect(
    client: httpx.AsyncClient, backend: Backend, request: CompletionRequest = REQUEST
) -> tuple[list[Delta], UpstreamError | None]:
    """All deltas of a stream, and the error that ended it (if any)."""
    deltas: list[Delta] = []
    try:
        async with contextlib.aclosing(stream_completion(client, backend, request)) as stream:
            async for delta in stream:
                deltas.append(delta)
    except UpstreamError as error:
        return deltas, error
    return deltas, None


def stream_from(base_url: str, *, timeout: httpx.Timeout = QUICK, request=REQUEST):
    async def go():
        async with make_client(timeout=timeout) as client:
            return await collect(client, backend_for(base_url), request)

    return asyncio.run(go())


def complete_from(base_url: str, *, timeout: httpx.Timeout = QUICK) -> Completion:
    async def go():
        async with make_client(timeout=timeout) as client:
            return await create_completion(client, backend_for(base_url), REQUEST)

    return asyncio.run(go())


def failure(call) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        call()
    return caught.value


# --- payload -------------------------------------------------------------------------------------


def test_payload_is_exactly_the_allow_list():
    request = CompletionRequest(
        model=MODEL,
        prompt="x = ",
        max_tokens=32,
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=-0.1,
        seed=0,
        stop=("\n\n", "<file_sep>"),
        logprobs=3,
    )
    assert build_payload(backend_for(), request, stream=True) == {
        "model": MODEL,
        "prompt": "x = ",
        "max_tokens": 32,
        "temperature": 0.2,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.1,
        "seed": 0,
        "stop": ["\n\n", "<file_sep>"],
        "logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_payload_omits_unset_seed_and_empty_stop_and_stream_options_when_not_streaming():
    payload = build_payload(backend_for(), REQUEST, stream=False)
    assert set(payload) == {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "stream",
    }
    assert payload["stream"] is False


@pytest.mark.parametrize(
    ("asked", "backend_cap", "sent"),
    [(0, 5, 1), (1, 5, 1), (3, 5, 3), (5, 5, 5), (9, 5, 5), (5, 2, 2), (0, 0, 1)],
)
def test_payload_asks_for_at_least_one_logprob_and_no_more_than_the_backend_allows(
    asked, backend_cap, sent
):
    request = CompletionRequest(model=MODEL, prompt="p", max_tokens=1, logprobs=asked)
    backend = backend_for(max_alternatives=backend_cap)
    assert build_payload(backend, request, stream=True)["logprobs"] == sent


def test_authorization_header_is_sent_only_with_a_key():
    assert auth_headers(backend_for()) == {"Authorization": f"Bearer {KEY}"}
    assert auth_headers(backend_for(api_key="")) == {}


# --- logprobs ------------------------------------------------------------------------------------


def test_legacy_logprobs_become_tokens_with_sorted_alternatives():
    # vLLM, protocol.md §3.2
    logprobs = {
        "text_offset": [0, 2, 4],
        "token_logprobs": [-0.05, -0.31, -0.02],
        "tokens": [" a", " +", " b"],
        "top_logprobs": [{" x": -3.2, " a": -0.05}, {" +": -0.31, ",": -1.4}, None],
    }
    tokens, status = parse_logprobs(logprobs, " a + b")
    assert status is LogprobStatus.REAL
    assert tokens == (
        Token(
            text=" a",
            logprob=-0.05,
            alternatives=(
                Alternative(text=" a", logprob=-0.05),
                Alternative(text=" x", logprob=-3.2),
            ),
        ),
        Token(
            text=" +",
            logprob=-0.31,
            alternatives=(
                Alternative(text=" +", logprob=-0.31),
                Alternative(text=",", logprob=-1.4),
            ),
        ),
        Token(text=" b", logprob=-0.02),
    )


def test_openai_alternatives_are_kept_as_given_when_the_sampled_token_is_not_among_them():
    # The real capture in protocol.md §2: " goal" is absent from its own top_logprobs.
    logprobs = {
        "tokens": [" goal"],
        "token_logprobs": [-10.029023],
        "top_logprobs": [
            {",": -3.721809, "-": -2.6293674, ".": -2.6775126, "/": -2.527664, "_": -2.10408}
        ],
        "text_offset": [4],
    }
    (token,), status = parse_logprobs(logprobs, " goal")
    assert status is LogprobStatus.REAL
    assert token.text == " goal"
    assert token.logprob == pytest.approx(-10.029023)
    assert [text for text, _ in token.alternatives] == ["_", "/", "-", ".", ","]


def test_content_logprobs_become_tokens():
    # llama.cpp, protocol.md §4.1
    world = {"id": 1917, "token": " world", "bytes": [32, 119, 111, 114, 108, 100]}
    there = {"id": 2045, "token": " there", "bytes": [32, 116, 104, 101, 114, 101]}
    logprobs = {
        "content": [
            {
                **world,
                "logprob": -0.31,
                "top_logprobs": [{**there, "logprob": -1.9}, {**world, "logprob": -0.31}],
            }
        ]
    }
    tokens, status = parse_logprobs(logprobs, " world")
    assert status is LogprobStatus.REAL
    assert tokens == (
        Token(
            text=" world",
            logprob=-0.31,
            alternatives=(
                Alternative(text=" world", logprob=-0.31),
                Alternative(text=" there", logprob=-1.9),
            ),
        ),
    )


def test_post_sampling_probs_are_converted_to_logprobs():
    logprobs = {
        "content": [
            {
                "token": "x",
                "bytes": [120],
                "prob": 0.5,
                "top_probs": [{"token": "y", "prob": 0.25}, {"token": "x", "prob": 0.5}],
            }
        ]
    }
    (token,), status = parse_logprobs(logprobs, "x")
    assert status is LogprobStatus.REAL
    assert token.logprob == pytest.approx(math.log(0.5))
    assert list(token.alternatives) == [
        ("x", pytest.approx(math.log(0.5))),
        ("y", pytest.approx(math.log(0.25))),
    ]


@pytest.mark.parametrize(
    "logprobs",
    [
        # Hosted NIM stream chunks, protocol.md §1.4
        {"text_offset": [], "token_logprobs": [0.0], "tokens": [], "top_logprobs": []},
        # NVIDIA model-card example
        {"content": [{"logprob": 0}, {"logprob": 0}]},
        {"content": [{"logprob": 0.0, "top_logprobs": []}]},
    ],
)
def test_placeholder_zero_logprobs_are_not_probabilities(logprobs):
    assert parse_logprobs(logprobs, "    return") == ((), LogprobStatus.PLACEHOLDER)


@pytest.mark.parametrize(
    "logprobs",
    [None, {}, {"content": None}, {"content": []}, {"tokens": [], "token_logprobs": []}, "junk"],
)
def test_missing_logprobs_are_absent(logprobs):
    assert parse_logprobs(logprobs, "text") == ((), LogprobStatus.ABSENT)


def test_a_sure_token_with_its_string_is_real_not_a_placeholder():
    tokens, status = parse_logprobs({"tokens": ["x"], "token_logprobs": [0.0]}, "x")
    assert status is LogprobStatus.REAL
    assert tokens == (Token(text="x", logprob=0.0),)


def test_non_finite_logprobs_are_dropped_not_shown():
    logprobs = {
        "tokens": ["a", "b", "c"],
        "token_logprobs": [float("nan"), float("-inf"), -1.0],
        "top_logprobs": [{"a": float("nan"), "z": -2.0}, {"b": float("-inf")}, None],
    }
    tokens, status = parse_logprobs(logprobs, "abc")
    assert status is LogprobStatus.REAL
    assert [t.logprob for t in tokens] == [None, None, -1.0]
    assert tokens[0].alternatives == (Alternative(text="z", logprob=-2.0),)
    assert tokens[1].alternatives == ()
    prob_zero = {"content": [{"token": "q", "prob": 0.0}]}
    assert parse_logprobs(prob_zero, "q")[0] == (Token(text="q", logprob=None),)


def test_a_character_split_across_byte_tokens_lands_in_the_completing_token():
    # llama.cpp sends `bytes`; its `token` strings are truncated mid-character (§4.1).
    logprobs = {
        "content": [
            {"token": "x", "bytes": [120], "logprob": -0.1},
            {"token": "", "bytes": [0xE2, 0x82], "logprob": -0.2},
            {"token": "", "bytes": [0xAC], "logprob": -0.3},
        ]
    }
    tokens, _ = parse_logprobs(logprobs, "x€")
    assert [(t.text, t.logprob) for t in tokens] == [("x", -0.1), ("", -0.2), ("€", -0.3)]


def test_openai_bytes_tokens_are_decoded():
    logprobs = {"tokens": ["bytes:\\xe2\\x82", "bytes:\\xac"], "token_logprobs": [-0.2, -0.3]}
    tokens, _ = parse_logprobs(logprobs, "€")
    assert [t.text for t in tokens] == ["", "€"]


def test_tokens_decoded_alone_as_replacement_characters_take_the_text():
    # vLLM decodes each byte-fallback token alone: two U+FFFD for one "€" in the text.
    logprobs = {
        "tokens": ["a", "\ufffd", "\ufffd", " b"],
        "token_logprobs": [-0.1, -0.2, -0.3, -0.4],
        "top_logprobs": [None, None, {"\ufffd": -0.3, "x": -2.0}, None],
    }
    tokens, _ = parse_logprobs(logprobs, "a€ b")
    assert [t.text for t in tokens] == ["a", "", "€", " b"]
    assert tokens[2].alternatives[0] == Alternative(text="€", logprob=-0.3)


def test_text_not_covered_by_tokens_is_kept_as_an_unscored_token():
    tokens, status = parse_logprobs({"tokens": ["ab"], "token_logprobs": [-0.5]}, "abcd")
    assert status is LogprobStatus.REAL
    assert tokens == (Token(text="ab", logprob=-0.5), Token(text="cd", logprob=None))


def test_a_token_the_server_trimmed_from_the_text_shows_no_text():
    # vLLM cuts a stop string from `text` but may still report its token.
    logprobs = {"tokens": ["x", " =", "<file_sep>"], "token_logprobs": [-0.1, -0.2, -0.3]}
    tokens, _ = parse_logprobs(logprobs, "x =")
    assert [(t.text, t.logprob) for t in tokens] == [("x", -0.1), (" =", -0.2), ("", -0.3)]


def test_a_lone_nameless_logprob_scores_the_chunk_text():
    assert parse_logprobs({"content": [{"logprob": -0.7}]}, " foo") == (
        (Token(text=" foo", logprob=-0.7),),
        LogprobStatus.REAL,
    )
    assert parse_logprobs({"content": [{"logprob": -0.7}, {"logprob": -0.1}]}, " foo") == (
        (),
        LogprobStatus.ABSENT,
    )


def test_assembler_carries_a_partial_character_to_the_next_chunk():
    assembler = TokenAssembler()
    first = assembler.feed({"content": [{"token": "", "bytes": [0xE4, 0xBD], "logprob": -1.0}]}, "")
    second = assembler.feed({"content": [{"token": "", "bytes": [0xA0], "logprob": -0.5}]}, "你")
    assert first == ((Token(text="", logprob=-1.0),), LogprobStatus.REAL)
    assert second == ((Token(text="你", logprob=-0.5),), LogprobStatus.REAL)


def test_assembler_places_a_trailing_byte_piece_on_the_text_when_the_first_was_never_sent():
    # A server that withholds the probabilities of an incomplete character sends only the
    # completing piece, which alone decodes to U+FFFD: the text wins.
    assembler = TokenAssembler()
    tokens, _ = assembler.feed({"content": [{"token": "", "bytes": [0xAC], "logprob": -0.5}]}, "€")
    assert tokens == (Token(text="€", logprob=-0.5),)


token_strings = st.one_of(
    st.text(max_size=4),
    st.sampled_from(["\ufffd", "bytes:\\xe2\\x82", "bytes:\\xac", "<file_sep>"]),
)


@given(
    names=st.lists(token_strings, max_size=12),
    text=st.text(max_size=24),
    logprob=st.floats(allow_nan=True, allow_infinity=True),
)
@hypothesis_settings(max_examples=300, deadline=None)
def test_real_tokens_always_concatenate_to_the_text(names, text, logprob):
    logprobs = {"tokens": names, "token_logprobs": [logprob] * len(names)}
    tokens, status = parse_logprobs(logprobs, text)
    if status is LogprobStatus.REAL:
        assert "".join(t.text for t in tokens) == text
    for token in tokens:
        assert token.logprob is None or math.isfinite(token.logprob)


# --- server-sent events --------------------------------------------------------------------------

# A llama.cpp-shaped stream with every framing quirk: a comment ping, event/id/retry fields,
# CRLF, CR and LF line ends, a data field split over two lines, `data:` without a space, and
# multibyte characters (2-, 3- and 4-byte) in the JSON and split across tokens.
RECORDED = (
    b": ping\r\n\r\n"
    b"event: completion\r\nid: 1\r\n"
    b'data: {"choices":[{"index":0,"text":"caf\xc3\xa9","logprobs":{"content":['
    b'{"token":"caf\xc3\xa9","bytes":[99,97,102,195,169],"logprob":-0.5,"top_logprobs":['
    b'{"token":"caf\xc3\xa9","bytes":[99,97,102,195,169],"logprob":-0.5},'
    b'{"token":"cafe","bytes":[99,97,102,101],"logprob":-1.25}]}]},"finish_reason":null}]}'
    b"\r\n\r\n"
    b'data: {"choices":[{"index":0,"text":"","logprobs":{"content":['
    b'{"token":"","bytes":[240,159],"logprob":-0.75}]},"finish_reason":null}]}\r\r'
    b'data: {"choices":[{"index":0,"text":"\xf0\x9f\x99\x82","logprobs":{"content":['
    b'{"token":"","bytes":[153,130],"logprob":-0.125}]},\n'
    b'data: "finish_reason":null}]}\n\n'
    b"retry: 1000\n"
    b'data:{"choices":[{"index":0,"text":" \xe4\xbd\xa0\xe5\xa5\xbd","logprobs":null,'
    b'"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    b"\r\n\r\n"
    b"data: [DONE]\r\n\r\n"
)
RECORDED_DELTAS = [
    Delta(
        text="café",
        tokens=(
            Token(
                text="café",
                logprob=-0.5,
                alternatives=(
                    Alternative(text="café", logprob=-0.5),
                    Alternative(text="cafe", logprob=-1.25),
                ),
            ),
        ),
        logprobs=LogprobStatus.REAL,
    ),
    Delta(text="", tokens=(Token(text="", logprob=-0.75),), logprobs=LogprobStatus.REAL),
    Delta(text="🙂", tokens=(Token(text="🙂", logprob=-0.125),), logprobs=LogprobStatus.REAL),
    Delta(text=" 你好", finish_reason="stop"),
    Delta(usage=Usage(prompt_tokens=3, completion_tokens=4)),
]


def parse_in_pieces(pieces: list[bytes]) -> list[str]:
    parser = SSEParser()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.close()


def test_sse_parser_reads_the_recorded_stream():
    events = parse_in_pieces([RECORDED])
    assert len(events) == 6
    assert '"finish_reason":null}]}' in events[2]
    assert "\n" in events[2]  # two data lines joined
    assert json.loads(events[2])["choices"][0]["text"] == "🙂"
    assert events[-1] == "[DONE]"


def test_sse_parser_gives_the_same_events_for_every_split_point():
    expected = parse_in_pieces([RECORDED])
    for i in range(len(RECORDED) + 1):
        assert parse_in_pieces([RECORDED[:i], RECORDED[i:]]) == expected, f"split at {i}"


def test_sse_parser_handles_a_stream_fed_byte_by_byte():
    expected = parse_in_pieces([RECORDED])
    assert parse_in_pieces([RECORDED[i : i + 1] for i in range(len(RECORDED))]) == expected


@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_sse_parser_gives_the_same_events_for_any_partition(cuts):
    points = [0, *sorted(cuts), len(RECORDED)]
    pieces = [RECORDED[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert parse_in_pieces(pieces) == parse_in_pieces([RECORDED])


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_sse_parser_accepts_each_line_ending(newline):
    raw = f"data: one{newline}data: two{newline}{newline}data: [DONE]{newline}{newline}"
    assert parse_in_pieces([raw.encode()]) == ["one\ntwo", "[DONE]"]


def test_sse_parser_strips_a_byte_order_mark_and_keeps_an_unterminated_last_event():
    assert parse_in_pieces([b"\xef\xbb", b"\xbfdata: a\n\ndata: b"]) == ["a", "b"]


@given(
    data=st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    event=st.sampled_from([None, "done"]),
)
@hypothesis_settings(max_examples=300, deadline=None)
def test_the_relays_own_messages_read_back_whole_by_an_event_stream_parser(data, event):
    # streaming.sse_message frames what the browser's EventSource reads: every line of the
    # message comes back, joined by LF; a CR (which would end a line) comes back as &#13;.
    from playground.streaming import sse_message

    framed = sse_message(data, event)
    assert framed.endswith(b"\n\n")
    assert parse_in_pieces([framed]) == [data.replace("\r", "&#13;")]
    assert framed.startswith(b"event: done\n" if event else b"data: ")


# Lines of an event stream, from the ones every server sends to the odd ones; no CR, so that
# LF-only streams take the parser's fast path and the same with CRLF line ends takes the general one.
sse_lines = st.lists(
    st.one_of(
        st.sampled_from(["", "data: [DONE]", ": ping", "event: x", "id: 1", "retry: 5", "data"]),
        st.builds(
            lambda v: "data: " + v,
            st.text(
                alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
            ),
        ),
        st.builds(lambda v: "data:" + v, st.text(max_size=6, alphabet="ab :{}")),
        st.text(
            max_size=8,
            alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        ),
    ),
    max_size=16,
)


@given(lines=sse_lines, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
@hypothesis_settings(max_examples=300, deadline=None)
def test_sse_parser_fast_path_for_lf_streams_agrees_with_the_general_one(lines, cuts):
    lf = "".join(line + "\n" for line in lines).encode()
    crlf = lf.replace(b"\n", b"\r\n")  # a CR anywhere sends every feed the general way
    points = [0, *sorted(c for c in cuts if c <= len(lf)), len(lf)]
    pieces = [lf[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert parse_in_pieces(pieces) == parse_in_pieces([crlf])


plain_tokens = st.text(min_size=1, max_size=4).filter(lambda t: not t.startswith("bytes:"))
# Mostly what servers send (finite floats, so the fast path is taken), sometimes not.
legacy_values = st.one_of(
    st.floats(min_value=-50, max_value=0),
    st.floats(min_value=-50, max_value=0),
    st.floats(min_value=-50, max_value=0),
    st.sampled_from([math.nan, -math.inf, math.inf, -1, 0, None, "-1.0"]),
)


@given(
    text=plain_tokens,
    token=st.one_of(st.none(), plain_tokens, st.just("bytes:\\xe2")),
    logprob=legacy_values,
    top=st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(plain_tokens, st.just(""), st.just("bytes:\\xac")), legacy_values, max_size=6
        ),
        st.just([]),
    ),
    pending=st.booleans(),
)
@hypothesis_settings(max_examples=400, deadline=None)
def test_the_one_plain_token_fast_path_builds_what_the_general_way_builds(
    text, token, logprob, top, pending
):
    obj = {
        "tokens": [text if token is None else token],
        "token_logprobs": [logprob],
        "top_logprobs": [top],
    }
    fast, general = TokenAssembler(), TokenAssembler()
    if pending:  # half a character left over from an earlier chunk: the general way must run
        for assembler in (fast, general):
            assembler.feed({"tokens": ["bytes:\\xe2"], "token_logprobs": [-1.0]}, "")
    assert fast.feed(obj, text) == general._feed_entries(obj, text)


def test_the_one_plain_token_fast_path_is_taken_for_a_usual_chunk():
    obj = {"tokens": [" x"], "token_logprobs": [-0.5], "top_logprobs": [{" y": -2.0, " x": -0.5}]}
    token = TokenAssembler()._one_plain_token(obj, " x")
    assert token == Token(
        text=" x",
        logprob=-0.5,
        alternatives=(Alternative(text=" x", logprob=-0.5), Alternative(text=" y", logprob=-2.0)),
    )


# --- streaming over a mock transport ----------------------------------------------------------


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], pause: float = 0.0) -> None:
        self.pieces = pieces
        self.pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if self.pause:
                await asyncio.sleep(self.pause)
            yield piece


def sse_response(pieces: list[bytes], pause: float = 0.0) -> httpx.Response:
    return httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, stream=Pieces(pieces, pause)
    )


def frames(*chunks: dict | str) -> bytes:
    return b"".join(
        f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks
    )


def mock_stream(responder) -> tuple[list[Delta], UpstreamError | None]:
    async def go():
        transport = httpx.MockTransport(responder)
        async with make_client(transport=transport) as client:
            return await collect(client, backend_for())

    return asyncio.run(go())


def test_stream_gives_identical_deltas_for_every_split_point():
    async def go():
        results = []
        for i in range(len(RECORDED) + 1):
            pieces = [RECORDED[:i], RECORDED[i:]]
            transport = httpx.MockTransport(lambda request, pieces=pieces: sse_response(pieces))
            async with make_client(transport=transport) as client:
                results.append(await collect(client, backend_for()))
        return results

    for i, (deltas, error) in enumerate(asyncio.run(go())):
        assert error is None, f"split at {i}"
        assert deltas == RECORDED_DELTAS, f"split at {i}"


def test_reading_at_an_interval_gives_the_same_deltas_and_pauses_only_after_text(monkeypatch):
    size = len(RECORDED) // 8 + 1
    pieces = [RECORDED[i : i + size] for i in range(0, len(RECORDED), size)]
    deltas, pauses = read_with_pauses(monkeypatch, pieces, interval=0.025)
    assert deltas == RECORDED_DELTAS
    assert pauses, "small reads after the first text are followed by a pause"
    assert set(pauses) == {0.025}
    assert len(pauses) < len(pieces)


def test_an_interval_given_as_a_callable_is_asked_before_each_pause(monkeypatch):
    # streaming.cadence lengthens the pause as the worker gets busier, run by run and read by
    # read: here each pause asked for is the next of 0.05, 0.07, 0.1, 0.08.
    asked = iter([0.05, 0.07, 0.1, 0.08])
    pieces = [*map(text_frame, "abcd"), text_frame("", "length"), frames("[DONE]")]
    deltas, pauses = read_with_pauses(monkeypatch, pieces, interval=lambda: next(asked))
    assert text_of(deltas) == "abcd"
    assert pauses == [0.05, 0.07, 0.1, 0.08]


def read_with_pauses(
    monkeypatch, pieces: list[bytes], request=REQUEST, interval=0.05
) -> tuple[list[Delta], list[float]]:
    """The deltas of a stream read with a pause of `interval`, and the pauses taken: not slept,
    but the loop's clock moves on by each, so the upstream's pace is one piece per read."""
    pauses: list[float] = []
    clock = [1000.0]

    async def pause(seconds):
        pauses.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", pause)

    async def go():
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock[0])
        transport = httpx.MockTransport(lambda _: sse_response(pieces))
        async with make_client(transport=transport) as client:
            stream = stream_completion(client, backend_for(), request, read_interval=interval)
            async with contextlib.aclosing(stream) as deltas:
                return [delta async for delta in deltas]

    return asyncio.run(go()), pauses


def text_of(deltas: list[Delta]) -> str:
    return "".join(delta.text for delta in deltas)


def text_frame(text: str, finish_reason: str | None = None) -> bytes:
    return frames({"choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]})


def test_reading_at_an_interval_stops_pausing_once_the_finish_reason_came(monkeypatch):
    pieces = [
        text_frame("a"),
        text_frame("b"),
        text_frame("c", "length"),
        frames({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3}}),
        frames("[DONE]"),
    ]
    deltas, pauses = read_with_pauses(monkeypatch, pieces)
    assert text_of(deltas) == "abc"
    assert pauses == [0.05, 0.05], "after the text of a and b, none after the finish"


def test_reading_at_an_interval_stops_pausing_once_max_tokens_arrived(monkeypatch):
    pieces = [*map(text_frame, "abc"), text_frame("", "length"), frames("[DONE]")]
    request = CompletionRequest(model=MODEL, prompt="p", max_tokens=3)
    deltas, pauses = read_with_pauses(monkeypatch, pieces, request)
    assert text_of(deltas) == "abc"
    # After b the third token is due one token's time (a read, 0.05 s here) later: no sooner.
    assert pauses == [0.05, 0.05], "after a and b; the third token was the last one asked for"


def test_the_pause_before_the_last_token_asked_for_ends_when_it_is_due(monkeypatch):
    # Read by read: a, then five tokens, then three, then the tenth and last asked for.
    pieces = [
        text_frame("a"),
        b"".join(map(text_frame, "bcdef")),
        b"".join(map(text_frame, "ghi")),
        text_frame("j"),
        text_frame("", "length"),
        frames("[DONE]"),
    ]
    request = CompletionRequest(model=MODEL, prompt="p", max_tokens=10)
    deltas, pauses = read_with_pauses(monkeypatch, pieces, request)
    assert text_of(deltas) == "abcdefghij"
    # 5 tokens in the first 0.05 s: the last 4 are due in 0.04 s; then 8 tokens in 0.092 s:
    # the last one in 0.0115 s. Each pause ends 2 ms after that; none once the tenth came.
    assert pauses[0] == 0.05
    assert pauses[1:] == [pytest.approx(0.042), pytest.approx(0.092 / 8 + 0.002)]


@pytest.mark.parametrize(
    ("sent", "normalised"),
    [("eos_token", "stop"), ("stop_sequence", "stop"), ("length", "length"), ("stop", "stop")],
)
def test_tgi_finish_reasons_are_normalised(sent, normalised):
    body = frames(
        {"choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": ""}]},
        {"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": sent}]},
        "[DONE]",
    )
    deltas, error = mock_stream(lambda request: sse_response([body]))
    assert error is None
    assert [d.finish_reason for d in deltas] == [None, normalised]


def test_ollama_zero_usage_on_text_chunks_is_no_usage():
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    body = frames(
        {"choices": [{"text": "a", "index": 0, "finish_reason": None}], "usage": zero},
        {"choices": [{"text": "", "index": 0, "finish_reason": "stop"}], "usage": zero},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
        "[DONE]",
    )
    deltas, _ = mock_stream(lambda request: sse_response([body]))
    assert [d.usage for d in deltas] == [None, None, Usage(prompt_tokens=5, completion_tokens=1)]


def test_a_stream_may_end_without_done_once_it_has_finished():
    body = frames({"choices": [{"index": 0, "text": "a", "finish_reason": "length"}]})
    deltas, error = mock_stream(lambda request: sse_response([body]))
    assert error is None
    assert [d.text for d in deltas] == ["a"]


def test_a_stream_that_ends_before_finishing_is_a_protocol_error():
    body = frames({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    deltas, error = mock_stream(lambda request: sse_response([body]))
    assert [d.text for d in deltas] == ["a"]
    assert error.kind is ErrorKind.PROTOCOL
    assert error.message == "The stream ended before the completion finished."


def test_a_malformed_chunk_is_a_protocol_error_after_the_good_ones():
    body = frames({"choices": [{"index": 0, "text": "a"}]}, '{"choices": [')
    deltas, error = mock_stream(lambda request: sse_response([body]))
    assert [d.text for d in deltas] == ["a"]
    assert error.kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"error": {"message": "boom", "type": "InternalServerError", "code": 500}}, "unavailable"),
        (
            {"error": {"object": "error", "message": "bad", "type": "BadRequestError"}},
            "bad_request",
        ),
        ({"error": {"message": "slow down", "type": "rate_limit_exceeded"}}, "rate_limited"),
        ({"error": "Request failed during generation", "error_type": "generation"}, "unavailable"),
        ({"error": {"message": "?"}}, "unavailable"),
    ],
)
def test_an_error_event_mid_stream_raises_after_the_earlier_deltas(event, kind):
    body = frames({"choices": [{"index": 0, "text": "a"}]}, event, "[DONE]")
    deltas, error = mock_stream(lambda request: sse_response([body]))
    assert [d.text for d in deltas] == ["a"]
    assert error.kind == kind


def test_a_server_that_ignores_stream_true_still_gives_a_delta():
    body = {
        "choices": [{"index": 0, "text": "abc", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    deltas, error = mock_stream(lambda request: httpx.Response(200, json=body))
    assert error is None
    assert deltas == [
        Delta(text="abc", finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=3))
    ]


def test_the_total_deadline_stops_a_stream_that_keeps_trickling(settings):
    settings.UPSTREAM_TOTAL_TIMEOUT = 0.3
    piece = frames({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    deltas, error = mock_stream(lambda request: sse_response([piece] * 1000, pause=0.05))
    assert deltas
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message == "The run hit the 0.3 s time limit."


@pytest.mark.parametrize(
    ("raised", "kind", "message"),
    [
        (httpx.ConnectError, "unavailable", "Could not reach the backend"),
        (httpx.ConnectTimeout, "timeout", "did not accept a connection"),
        (httpx.ReadTimeout, "timeout", "sent nothing for 5 s"),
        (httpx.WriteTimeout, "timeout", "timed out"),
        (httpx.PoolTimeout, "unavailable", "busy"),
        (httpx.RemoteProtocolError, "unavailable", "dropped"),
        (httpx.ReadError, "unavailable", "dropped"),
        (httpx.UnsupportedProtocol, "unavailable", "not a valid http(s) URL"),
        (httpx.DecodingError, "protocol", "could not be decoded"),
    ],
)
@pytest.mark.parametrize("streamed", [True, False])
def test_transport_failures_become_upstream_errors(raised, kind, message, streamed):
    def responder(request):
        raise raised("secret detail " + KEY, request=request)

    async def go():
        async with make_client(transport=httpx.MockTransport(responder), timeout=QUICK) as client:
            if streamed:
                return await collect(client, backend_for())
            await create_completion(client, backend_for(), REQUEST)
            return None

    if streamed:
        _, error = asyncio.run(go())
    else:
        error = failure(lambda: asyncio.run(go()))
    assert error.kind == kind
    assert message in error.message
    assert KEY not in error.message
    assert "secret" not in error.message


# --- error mapping -------------------------------------------------------------------------------

NIM_422 = {
    "type": "urn:inference-service:problem-details:unprocessable-entity",
    "title": "Unprocessable Entity",
    "status": 422,
    "detail": "body -> n\n  Extra inputs are not permitted (type=extra_forbidden)",
    "instance": "/v2/nvcf/pexec/functions/0000",
    "requestId": "1111",
}
HTML_500 = (
    b"<html><body><h1>Internal Server Error</h1><pre>Traceback: token=SECRET-abc123"
    b"</pre></body></html>"
)


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key provided: sk-****.",
                    "code": "invalid_api_key",
                }
            },
            "auth",
            "The backend rejected the API key. "
            "Check NVIDIA_API_KEY / the key in server configuration.",
        ),
        (
            403,
            {"status": 403, "title": "Forbidden", "detail": "Authorization failed"},
            "auth",
            "The backend rejected the API key. "
            "Check NVIDIA_API_KEY / the key in server configuration.",
        ),
        (
            402,
            {"status": 402, "title": "Payment Required"},
            "auth",
            "The backend account is out of credits or its plan does not cover this (HTTP 402). "
            "Top up the account or pick another backend.",
        ),
        (
            404,
            {"status": 404, "title": "Not Found", "detail": "Function '0000': Not found"},
            "not_found",
            f'The model "{MODEL}" is not available on this backend (unknown or retired). '
            "Pick another model.",
        ),
        (
            410,
            b"",
            "not_found",
            f'The model "{MODEL}" is not available on this backend (unknown or retired). '
            "Pick another model.",
        ),
        (
            400,
            {
                "error": {
                    "message": "Requested sample logprobs of 9, which is greater than max "
                    "allowed: 5",
                    "type": "BadRequestError",
                    "param": "logprobs",
                    "code": 400,
                }
            },
            "bad_request",
            "The backend rejected the request: Requested sample logprobs of 9, which is greater "
            "than max allowed: 5",
        ),
        (
            422,
            NIM_422,
            "bad_request",
            "The backend rejected the request: body -> n Extra inputs are not permitted "
            "(type=extra_forbidden)",
        ),
        (
            422,
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "validation",
            },
            "bad_request",
            "The backend rejected the request: Suffix is not supported and can be achieved by "
            "preprocessing the prompt.",
        ),
        (
            422,
            {"detail": [{"loc": ["body", "n"], "msg": "Extra inputs are not permitted"}]},
            "bad_request",
            "The backend rejected the request: body.n: Extra inputs are not permitted",
        ),
        (
            400,
            {"object": "error", "message": "suffix is not currently supported", "code": 400},
            "bad_request",
            "The backend rejected the request: suffix is not currently supported",
        ),
        (
            400,
            b"Bad Request: SECRET-abc123",
            "bad_request",
            "The backend rejected the request (HTTP 400). Check the parameters.",
        ),
        (
            429,
            {"status": 429, "title": "Too Many Requests"},
            "rate_limited",
            "Rate limited by the backend; try again in a moment.",
        ),
        (500, HTML_500, "unavailable", "The backend failed (HTTP 500). Try again in a moment."),
        (
            503,
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            "unavailable",
            "The backend failed (HTTP 503). Try again in a moment.",
        ),
        (
            302,
            b"",
            "protocol",
            "The backend answered HTTP 302 instead of a completion. Check its configured base URL.",
        ),
    ],
)
def test_error_responses_map_to_a_kind_and_a_safe_message(status, body, kind, message):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = error_from_response(status, raw, {}, model=MODEL, secret=KEY)
    assert (error.kind, error.message, error.status) == (kind, message, status)
    assert "SECRET" not in error.message


def test_an_html_error_page_never_reaches_the_message_at_any_status():
    for status in (400, 401, 404, 422, 429, 500, 502):
        assert "SECRET-abc123" not in error_from_response(status, HTML_500, {}).message


def test_error_detail_is_short_clean_and_free_of_keys():
    message = f"bad key {KEY} or nvapi-OtherKey123456 \x1b[31m\u202e\n" + "x" * 500
    error = error_from_response(
        400, json.dumps({"error": {"message": message}}).encode(), {}, secret=KEY
    )
    detail = error.message.removeprefix("The backend rejected the request: ")
    assert len(detail) <= 200
    assert detail.endswith("…")
    assert KEY not in detail
    assert "OtherKey" not in detail
    assert not any(ord(c) < 32 or c == "\u202e" for c in detail)


def test_retry_after_seconds_and_dates_are_parsed():
    error = error_from_response(429, b"", {"Retry-After": "12"})
    assert (error.kind, error.retry_after) == (ErrorKind.RATE_LIMITED, 12.0)
    assert error.message == "Rate limited by the backend; try again in 12 s."
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    error = error_from_response(429, b"", {"retry-after": later})
    assert 80 <= error.retry_after <= 91
    assert error_from_response(429, b"", {"Retry-After": "soon"}).retry_after is None
    assert error_from_response(503, b"", {"Retry-After": "3"}).retry_after == 3.0


# --- clients -------------------------------------------------------------------------------------


def test_make_client_takes_its_timeouts_from_settings(settings):
    settings.UPSTREAM_CONNECT_TIMEOUT = 1.5
    settings.UPSTREAM_READ_TIMEOUT = 30.0
    settings.UPSTREAM_POOL_TIMEOUT = 0.5

    async def go():
        async with make_client() as client:
            return client.timeout

    assert asyncio.run(go()) == httpx.Timeout(connect=1.5, read=30.0, write=1.5, pool=0.5)


def test_there_is_one_client_per_event_loop_and_the_lifespan_can_install_its_own():
    async def per_loop():
        first, second = get_client(), get_client()
        assert first is second
        await close_client()
        assert first.is_closed
        return first

    assert asyncio.run(per_loop()) is not asyncio.run(per_loop())

    async def installed():
        mine = make_client()
        set_client(mine)
        assert get_client() is mine
        await close_client()
        assert mine.is_closed
        assert get_client() is not mine
        await close_client()

    asyncio.run(installed())


# --- integration: the loopback upstream ----------------------------------------------------------

TOKENS = ["    return", " a", " +", " b", " €", "\n"]
EXPECTED_STATUS = {
    "vllm": LogprobStatus.REAL,
    "openai": LogprobStatus.REAL,
    "llamacpp": LogprobStatus.REAL,
    "nim": LogprobStatus.PLACEHOLDER,
    "ollama": LogprobStatus.ABSENT,
    "tgi": LogprobStatus.ABSENT,
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_streams_a_generation_in_each_dialect(upstream, dialect):
    upstream.script(dialect=dialect, tokens=TOKENS, prompt_tokens=9)
    deltas, error = stream_from(upstream.base_url)
    assert error is None
    assert "".join(d.text for d in deltas) == "".join(TOKENS)
    assert {d.logprobs for d in deltas if d.text} == {EXPECTED_STATUS[dialect]}
    if EXPECTED_STATUS[dialect] is LogprobStatus.REAL:
        tokens = [t for d in deltas for t in d.tokens]
        assert [t.text for t in tokens] == TOKENS
        assert [t.logprob for t in tokens] == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6])
        assert all(t.alternatives[0][0] == t.text for t in tokens)
        assert all(len(t.alternatives) == 2 for t in tokens)
    else:
        assert not any(d.tokens for d in deltas)
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    usages = [d.usage for d in deltas if d.usage]
    if dialect == "tgi":  # TGI has no stream_options on completions (protocol.md §6)
        assert usages == []
    else:
        assert usages[-1] == Usage(prompt_tokens=9, completion_tokens=len(TOKENS))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_completes_a_generation_in_each_dialect(upstream, dialect):
    upstream.script(dialect=dialect, tokens=TOKENS, finish_reason="length")
    completion = complete_from(upstream.base_url)
    assert completion.text == "".join(TOKENS)
    assert completion.logprobs is EXPECTED_STATUS[dialect]
    if completion.logprobs is LogprobStatus.REAL:
        assert [t.text for t in completion.tokens] == TOKENS
    else:
        assert completion.tokens == ()
    assert completion.finish_reason == "length"
    assert completion.usage == Usage(prompt_tokens=7, completion_tokens=len(TOKENS))


def test_sends_the_allow_listed_payload_with_the_key(upstream):
    stream_from(upstream.base_url)
    complete_from(upstream.base_url)
    streamed, plain = upstream.requests
    assert (streamed.method, streamed.path) == ("POST", "/v1/completions")
    assert streamed.headers["authorization"] == f"Bearer {KEY}"
    assert streamed.headers["accept"] == "text/event-stream"
    assert plain.headers["accept"] == "application/json"
    assert streamed.json == build_payload(backend_for(), REQUEST, stream=True)
    assert plain.json == build_payload(backend_for(), REQUEST, stream=False)


@pytest.mark.parametrize("dialect", ["llamacpp", "vllm", "openai"])
def test_a_character_split_across_tokens_and_tcp_writes_arrives_whole(upstream, dialect):
    tokens = ["x = '", b"\xe4\xbd", b"\xa0", "好'"]
    upstream.script(dialect=dialect, tokens=tokens, fail="split_multibyte")
    deltas, error = stream_from(upstream.base_url)
    assert error is None
    assert "".join(d.text for d in deltas) == "x = '你好'"
    assert [t.text for d in deltas for t in d.tokens] == ["x = '", "", "你", "好'"]


def test_openai_alternatives_without_the_sampled_token_over_the_wire(upstream):
    upstream.script(dialect="openai", tokens=[" goal"], alternatives=[{",": -3.7, "_": -2.1}])
    deltas, error = stream_from(upstream.base_url)
    assert error is None
    (token,) = [t for d in deltas for t in d.tokens]
    assert token.text == " goal"
    assert token.alternatives == (
        Alternative(text="_", logprob=-2.1),
        Alternative(text=",", logprob=-3.7),
    )


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_other_line_endings_over_the_wire(upstream, newline):
    upstream.script(dialect="vllm", newline=newline)
    deltas, error = stream_from(upstream.base_url)
    assert error is None
    assert "".join(d.text for d in deltas) == "    return a + b\n"


@pytest.mark.parametrize(
    ("dialect", "status", "kind"),
    [
        ("nim", 401, "auth"),
        ("nim", 403, "auth"),
        ("nim", 402, "auth"),
        ("nim", 404, "not_found"),
        ("nim", 410, "not_found"),
        ("nim", 422, "bad_request"),
        ("nim", 429, "rate_limited"),
        ("openai", 401, "auth"),
        ("vllm", 400, "bad_request"),
        ("vllm", 500, "unavailable"),
        ("llamacpp", 503, "unavailable"),
        ("ollama", 404, "not_found"),
        ("tgi", 422, "bad_request"),
        ("tgi", 424, "unavailable"),
    ],
)
@pytest.mark.parametrize("streamed", [True, False])
def test_error_statuses_over_the_wire(upstream, dialect, status, kind, streamed):
    upstream.script(dialect=dialect, status=status, error_message="nope")
    if streamed:
        deltas, error = stream_from(upstream.base_url)
        assert deltas == []
    else:
        error = failure(lambda: complete_from(upstream.base_url))
    assert (error.kind, error.status) == (kind, status)
    if kind == "bad_request":
        assert error.message == "The backend rejected the request: nope"


def test_rate_limit_carries_retry_after(upstream):
    upstream.script(dialect="nim", status=429, headers={"Retry-After": "12"})
    _, error = stream_from(upstream.base_url)
    assert (error.kind, error.retry_after) == (ErrorKind.RATE_LIMITED, 12.0)


def test_an_html_500_page_is_neither_shown_nor_logged(upstream, caplog):
    upstream.script(status=500, body=HTML_500)
    with caplog.at_level(logging.DEBUG, logger="playground"):
        _, error = stream_from(upstream.base_url)
    assert error.message == "The backend failed (HTTP 500). Try again in a moment."
    assert "Upstream test failed: unavailable (HTTP 500)" in caplog.text
    assert "SECRET" not in caplog.text
    assert KEY not in caplog.text


@pytest.mark.parametrize("streamed", [True, False])
def test_connection_refused_is_unavailable(streamed):
    if streamed:
        _, error = stream_from(closed_port_url())
    else:
        error = failure(lambda: complete_from(closed_port_url()))
    assert error.kind is ErrorKind.UNAVAILABLE
    assert error.message == "Could not reach the backend at its configured address."


def test_a_server_that_hangs_up_without_answering_is_unavailable(upstream):
    upstream.script(fail="close_before_response")
    _, error = stream_from(upstream.base_url)
    assert error.kind is ErrorKind.UNAVAILABLE


@pytest.mark.parametrize("streamed", [True, False])
def test_a_stall_before_the_first_byte_times_out(upstream, streamed):
    upstream.script(fail="stall_before_first_byte")
    short = httpx.Timeout(5.0, read=0.2)
    if streamed:
        deltas, error = stream_from(upstream.base_url, timeout=short)
        assert deltas == []
    else:
        error = failure(lambda: complete_from(upstream.base_url, timeout=short))
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message.startswith("The backend sent nothing for 0.2 s")
    assert upstream.requests[-1].disconnected.wait(5)


def test_a_stall_mid_stream_times_out_after_the_earlier_deltas(upstream):
    upstream.script(dialect="llamacpp", fail="stall_mid_stream", fail_after=2)
    deltas, error = stream_from(upstream.base_url, timeout=httpx.Timeout(5.0, read=0.3))
    assert [d.text for d in deltas] == ["    return", " a"]
    assert error.kind is ErrorKind.TIMEOUT


@pytest.mark.parametrize("dialect", ["vllm", "nim"])
def test_a_reset_mid_stream_raises_after_the_earlier_deltas(upstream, dialect):
    upstream.script(dialect=dialect, fail="reset_mid_stream", fail_after=3)
    deltas, error = stream_from(upstream.base_url)
    assert [d.text for d in deltas] == ["    return", " a", " +"]
    assert error.kind is ErrorKind.UNAVAILABLE
    assert error.message == (
        "The connection to the backend dropped before the completion finished. Try again."
    )


def test_a_reset_during_a_plain_completion_is_unavailable(upstream):
    upstream.script(fail="reset_mid_stream")
    assert failure(lambda: complete_from(upstream.base_url)).kind is ErrorKind.UNAVAILABLE


def test_a_truncated_plain_completion_is_a_protocol_error(upstream):
    upstream.script(fail="malformed_chunk")
    assert failure(lambda: complete_from(upstream.base_url)).kind is ErrorKind.PROTOCOL


def test_a_malformed_chunk_over_the_wire_is_a_protocol_error(upstream):
    upstream.script(dialect="openai", fail="malformed_chunk", fail_after=1)
    deltas, error = stream_from(upstream.base_url)
    assert [d.text for d in deltas] == ["    return"]
    assert error.kind is ErrorKind.PROTOCOL


@pytest.mark.parametrize("dialect", ["vllm", "nim", "tgi", "openai"])
def test_an_error_event_over_the_wire(upstream, dialect):
    upstream.script(dialect=dialect, fail="error_event", fail_after=2)
    deltas, error = stream_from(upstream.base_url)
    assert [d.text for d in deltas] == ["    return", " a"]
    assert error.kind is ErrorKind.UNAVAILABLE


def test_a_stream_cut_short_cleanly_is_a_protocol_error(upstream):
    upstream.script(dialect="vllm", fail="ends_early")
    deltas, error = stream_from(upstream.base_url)
    assert "".join(d.text for d in deltas) == "    return a + b\n"
    assert error.kind is ErrorKind.PROTOCOL


def test_a_finished_stream_without_done_is_fine(upstream):
    upstream.script(dialect="llamacpp", fail="no_done")
    _, error = stream_from(upstream.base_url)
    assert error is None


def test_the_total_deadline_ends_a_stream_that_never_ends(upstream, settings):
    settings.UPSTREAM_TOTAL_TIMEOUT = 0.5
    upstream.script(dialect="vllm", fail="never_ends", fail_after=2, chunk_delay=0.05)
    deltas, error = stream_from(upstream.base_url)
    assert [d.text for d in deltas] == ["    return", " a"]
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message == "The run hit the 0.5 s time limit."
    assert upstream.requests[-1].disconnected.wait(5)


def test_cancelling_the_consumer_closes_the_upstream_connection(upstream):
    upstream.script(dialect="vllm", tokens=["tick"] * 200, chunk_delay=0.05)

    async def go():
        first = asyncio.Event()

        async def consume(client):
            async with contextlib.aclosing(
                stream_completion(client, backend_for(upstream.base_url), REQUEST)
            ) as stream:
                async for _ in stream:
                    first.set()

        async with make_client(timeout=QUICK) as client:
            task = asyncio.create_task(consume(client))
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The client stays open: only the response's connection must have been closed.
            assert upstream.requests[-1].disconnected.wait(5)

    asyncio.run(go())
    assert not upstream.requests[-1].answered.is_set()


def test_closing_the_stream_early_closes_the_upstream_connection(upstream):
    upstream.script(dialect="llamacpp", tokens=["tick"] * 200, chunk_delay=0.05)

    async def go():
        async with make_client(timeout=QUICK) as client:
            stream = stream_completion(client, backend_for(upstream.base_url), REQUEST)
            first = await anext(stream)
            await stream.aclose()
            assert upstream.requests[-1].disconnected.wait(5)
            return first

    assert asyncio.run(go()).text == "tick"


def test_a_full_pool_is_reported_as_busy(upstream):
    upstream.script(dialect="vllm", fail="stall_mid_stream", fail_after=1)

    async def go():
        timeout = httpx.Timeout(5.0, pool=0.1)
        async with make_client(max_connections=1, timeout=timeout) as client:
            backend = backend_for(upstream.base_url)
            async with contextlib.aclosing(stream_completion(client, backend, REQUEST)) as held:
                await anext(held)
                return await collect(client, backend)

    deltas, error = asyncio.run(go())
    assert deltas == []
    assert error.kind is ErrorKind.UNAVAILABLE
    assert error.message == "The server is busy with other runs; try again in a moment."


def test_the_upstream_lists_its_models(upstream):
    response = httpx.get(f"{upstream.base_url}/models", timeout=5)
    assert response.json()["data"][0]["id"] == MODEL


def test_a_chunk_with_nan_and_infinity_written_as_json_literals_still_streams():
    # Python's json.dumps writes NaN and -Infinity, and some servers do; orjson refuses them.
    chunk = (
        '{"choices":[{"index":0,"text":"a","logprobs":{"tokens":["a"],"token_logprobs":[NaN],'
        '"top_logprobs":[{"a":-Infinity,"b":-1.5}]},"finish_reason":"stop"}]}'
    )
    deltas, error = mock_stream(lambda request: sse_response([frames(chunk, "[DONE]")]))
    assert error is None
    assert deltas == [
        Delta(
            text="a",
            tokens=(
                Token(text="a", logprob=None, alternatives=(Alternative(text="b", logprob=-1.5),)),
            ),
            logprobs=LogprobStatus.REAL,
            finish_reason="stop",
        )
    ]


# --- The run's deadline over a stream's awaits (completions._StreamDeadline) ---------------------


async def past(when: float) -> None:
    """Wait until the loop's clock has passed `when` (and any timer due at `when` has run)."""
    loop = asyncio.get_running_loop()
    reached = asyncio.Event()
    loop.call_at(when + 0.001, reached.set)
    await reached.wait()


def test_read_deadline_turns_its_own_cancellation_into_the_time_limit_error():
    async def go():
        loop = asyncio.get_running_loop()
        deadline = _StreamDeadline(loop.time() + 0.05, 0.05)
        with pytest.raises(UpstreamError) as raised, deadline:
            await loop.create_future()  # a read that never returns
        return raised.value, asyncio.current_task().cancelling()

    error, cancelling = asyncio.run(go())
    assert error.kind is ErrorKind.TIMEOUT
    assert error.message == "The run hit the 0.05 s time limit."
    assert cancelling == 0, "the task is left as it was, not still being cancelled"


def test_read_deadline_passed_between_reads_stops_the_next_read():
    async def go():
        loop = asyncio.get_running_loop()
        when = loop.time() + 0.02
        deadline = _StreamDeadline(when, 0.02)
        with deadline:
            await asyncio.sleep(0)  # a read that returns in time
        await past(when)  # the consumer holds the delta past the deadline: no cancel here
        with pytest.raises(UpstreamError) as raised, deadline:
            await asyncio.sleep(0)
        return raised.value

    assert asyncio.run(go()).kind is ErrorKind.TIMEOUT


def test_read_deadline_lets_other_cancellations_through_and_close_disarms_it():
    async def go():
        loop = asyncio.get_running_loop()
        deadline = _StreamDeadline(loop.time() + 5, 5)
        entered = asyncio.Event()

        async def reader():
            with deadline:
                entered.set()
                await loop.create_future()

        task = asyncio.create_task(reader())
        await entered.wait()
        task.cancel()  # the browser went away: not a time-limit error
        with pytest.raises(asyncio.CancelledError):
            await task
        when = loop.time() + 0.01
        closed = _StreamDeadline(when, 0.01)
        closed.close()
        await past(when)
        with closed:
            await asyncio.sleep(0)

    asyncio.run(go())


def test_the_usual_chunks_alternatives_leave_the_garbage_collectors_lists():
    """Every open stream holds its tokens until the run is saved; their alternatives are plain
    (text, logprob) tuples, which the cyclic collector stops tracking once it has seen them
    (it never does for a tuple subclass), so 200 open streams do not make every collection walk
    them: the pairs after one collection, their tuple after the next."""
    import gc

    chunk = {
        "tokens": [" fib"],
        "token_logprobs": [-0.25],
        "top_logprobs": [{" fib": -0.25, " foo": -2.5, " bar": -3.0}],
    }
    (token,), status = parse_logprobs(chunk, " fib")
    assert status is LogprobStatus.REAL
    assert token.alternatives == ((" fib", -0.25), (" foo", -2.5), (" bar", -3.0))
    gc.collect()
    assert not any(gc.is_tracked(pair) for pair in token.alternatives)
    gc.collect()
    assert not gc.is_tracked(token.alternatives)
