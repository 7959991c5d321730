"""Saving runs: the saver thread (`history.Saver`) and the tokens column (`models.TokensField`).

The saver runs every save of a process in one thread, on one connection, and writes the saves
that are waiting together in one transaction; none of that may cost a run: a failing save fails
alone, and a batch whose commit fails is written again save by save.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from django.db import connection, transaction
from django.db.backends.signals import connection_created

from playground import history
from playground.models import Run, Session

pytestmark = pytest.mark.django_db(transaction=True)


def run_row(owner_key: str, **fields) -> Run:
    with transaction.atomic():  # as history's save does: its writes in a savepoint of the batch
        return Run.objects.create(owner_key=owner_key, status="complete", **fields)


def save_together(saver: history.Saver, jobs: list) -> list:
    """Queue `jobs` while the saver's thread is held on a first job, so they are one batch;
    their outcomes (results or exceptions), in order."""
    gate = threading.Event()

    async def go():
        first = saver.run(gate.wait, 10)
        futures = [saver.run(job) for job in jobs]
        gate.set()
        await first
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        return asyncio.run(go())
    finally:
        saver.stop()


def test_runs_ending_together_are_saved_in_one_transaction_and_all_kept():
    saver = history.Saver()
    commits = []
    jobs = [lambda i=i: run_row(f"batch-{i}", text=str(i)) for i in range(5)]

    def count_commit():
        transaction.on_commit(lambda: commits.append(1))
        return "counted"

    outcomes = save_together(saver, [*jobs, count_commit])
    assert [r.text for r in outcomes[:5]] == ["0", "1", "2", "3", "4"]
    assert sorted(Run.objects.values_list("owner_key", flat=True)) == [
        f"batch-{i}" for i in range(5)
    ]
    assert commits == [1]  # the callback ran once, at the batch's one commit


def test_a_failing_save_fails_alone_and_the_others_of_its_batch_are_kept():
    saver = history.Saver()

    def broken():
        # No atomic block of its own: the saver's savepoint around each save rolls it back.
        Run.objects.create(owner_key="half-written", status="complete")
        raise ValueError("a bug in one save")

    outcomes = save_together(saver, [lambda: run_row("before"), broken, lambda: run_row("after")])
    assert isinstance(outcomes[1], ValueError)
    assert {r.owner_key for r in outcomes if isinstance(r, Run)} == {"before", "after"}
    # The failed save's own write was rolled back with its savepoint.
    assert sorted(Run.objects.values_list("owner_key", flat=True)) == ["after", "before"]


def test_a_batch_whose_commit_fails_is_saved_again_one_by_one():
    # On SQLite a foreign key is checked at commit: a run of a session deleted meanwhile fails
    # the whole transaction there (and at its insert on PostgreSQL). The other runs are kept.
    saver = history.Saver()
    session = Session.objects.create(owner_key="o", name="gone soon")
    gone = session.pk
    session.delete()
    outcomes = save_together(
        saver,
        [
            lambda: run_row("first"),
            lambda: run_row("orphan", session_id=gone),
            lambda: run_row("last"),
        ],
    )
    assert isinstance(outcomes[1], Exception)
    assert sorted(Run.objects.values_list("owner_key", flat=True)) == ["first", "last"]


def test_saves_share_one_connection_until_the_saver_is_idle_or_stopped():
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(threading.get_ident())

    connection_created.connect(count)
    saver = history.Saver(idle_seconds=30)
    try:

        async def one_by_one():
            return [await saver.run(run_row, f"run-{i}") for i in range(4)]

        assert len(asyncio.run(one_by_one())) == 4
        assert len(opened) == 1  # four saves, one connection
        assert saver._thread is not None
        saver.stop()
        assert saver._thread is None
        asyncio.run(one_by_one())  # the thread starts again on the next save
        assert len(opened) == 2
    finally:
        saver.stop()
        connection_created.disconnect(count)
    assert Run.objects.count() == 8


def test_an_idle_saver_ends_its_thread():
    # (closing its connection on the way out: PostgreSQL could not drop the test database
    # after this suite otherwise)
    saver = history.Saver(idle_seconds=0.05)
    ended = threading.Event()

    def note_thread():
        thread = threading.current_thread()
        threading.Thread(target=lambda: (thread.join(), ended.set()), daemon=True).start()
        return run_row("idle")

    async def save():
        return await saver.run(note_thread)

    asyncio.run(save())
    assert ended.wait(10)  # the thread ended by itself
    assert saver._thread is None
    assert Run.objects.get().owner_key == "idle"


TOKENS = [
    ["def", -0.01, [["def", -0.01], ["class", -4.5]]],
    [" naïve_😀", None, []],
    ["\u2028</script>", -1.25e-7, [["\\", -3.0]]],
]


def test_tokens_are_stored_as_plain_json_and_read_back_unchanged():
    run = run_row("tokens", tokens=TOKENS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT tokens FROM playground_run WHERE id = %s", [run.pk])
        (raw,) = cursor.fetchone()
    # Any JSON reader reads the column (PostgreSQL's jsonb gives it back parsed).
    assert (json.loads(raw) if isinstance(raw, str) else raw) == TOKENS
    assert Run.objects.get(pk=run.pk).tokens == TOKENS


def test_a_value_orjson_refuses_is_still_stored_by_json():
    huge = 2**70  # past 64 bits: orjson refuses to write it, json does not
    run = run_row("huge", tokens=[["x", None, []], huge])
    assert Run.objects.get(pk=run.pk).tokens[1] == huge


def test_saved_tokens_keep_finite_alternatives_of_every_kind_and_read_back_the_same():
    from playground.completions import Alternative, Token

    nan, inf = float("nan"), float("inf")
    tokens = [
        # The read path's plain pairs, kept as they are.
        Token(text="def", logprob=-0.1, alternatives=(("def", -0.1), ("class", -2.5))),
        # Non-finite logprobs: JSON has none, so the token's becomes null and the pair goes.
        Token(text=" f", logprob=nan, alternatives=((" f", -0.2), (" g", -inf), (" h", nan))),
        # The general path's named tuples, and a mix of both kinds.
        Token(
            text="(", logprob=-0.3, alternatives=(Alternative("(", -0.3), Alternative("[", -4.0))
        ),
        Token(text=")", logprob=-0.4, alternatives=((")", -0.4), Alternative(",", -3.0))),
        Token(text=":", logprob=None, alternatives=()),
        # A NUL (which PostgreSQL cannot store) in a plain pair is replaced like any other.
        Token(text="x", logprob=-0.5, alternatives=(("x", -0.5), ("\x00", -1.0))),
    ]
    row = run_row("o" * 32, tokens=history.storable_tokens(history.tokens_to_json(tokens)))
    saved = Run.objects.get(pk=row.pk).tokens
    assert saved == [
        ["def", -0.1, [["def", -0.1], ["class", -2.5]]],
        [" f", None, [[" f", -0.2]]],
        ["(", -0.3, [["(", -0.3], ["[", -4.0]]],
        [")", -0.4, [[")", -0.4], [",", -3.0]]],
        [":", None, []],
        ["x", -0.5, [["x", -0.5], ["\ufffd", -1.0]]],
    ]
    assert [t.alternatives for t in history.tokens_from_json(saved)][0] == (
        ("def", -0.1),
        ("class", -2.5),
    )
