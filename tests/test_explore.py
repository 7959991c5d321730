"""Exploring and comparing, in process: branching (ownership and validation), the navigator,
the compare stream, the token diff, the confidence overview, demo mode, and escaping in all of
their pages. The browser side is in tests/test_browser_explore.py."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from hostile import PAYLOADS, assert_inert, visible
from sse import parse_events, settle

from playground import history
from playground.branching import navigator
from playground.compare import token_diff
from playground.models import Run, Session, ShareLink
from playground.overview import build_overview
from playground.presenter import replay_pieces

pytestmark = pytest.mark.django_db(transaction=True)

FORM = {
    "backend": "offline",
    "prompt": "def add(a, b):\n",
    "temperature": "0.7",
    "top_p": "0.95",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "seed": "3",
    "max_tokens": "12",
    "logprobs": "3",
}
TOKENS = [
    ["    ", -0.1, [["    ", -0.1], ["\t", -2.5]]],
    ["return", -0.3, [["return", -0.3], ["pass", -1.6], ["yield", -3.0]]],
    [" a", -2.2, [[" a", -2.2], [" 1", -0.5]]],
    ["\n", -0.05, [["\n", -0.05]]],
]


@pytest.fixture(autouse=True)
def _unpaced(settings):
    settings.OFFLINE_MODEL_TOKENS_PER_SECOND = 0


def signed_in(name: str) -> Client:
    user = get_user_model().objects.get_or_create(username=name)[0]
    client = Client()
    client.force_login(user)
    return client


def owned_run(name: str, **fields) -> Run:
    user = get_user_model().objects.get_or_create(username=name)[0]
    session = Session.objects.create(user=user, name="S", prompt="def f():\n")
    values = {
        "prompt": "def f():\n",
        "backend": "offline",
        "text": "    return a\n",
        "tokens": TOKENS,
        "logprobs": "real",
        "status": "complete",
        "params": {**FORM, "seed_random": False, "stop": [], "mode": "complete"},
        "ttft_ms": 40,
        "total_ms": 200,
        **fields,
    }
    values["params"].pop("prompt", None)
    # As the recorder stores them: NUL and lone surrogates become U+FFFD (PostgreSQL refuses NUL).
    values = {key: history.storable(value) for key, value in values.items()}
    return Run.objects.create(user=user, session=session, **values)


def post_stream(client: Client, path: str, data: dict):
    async def go():
        async_client = AsyncClient()
        async_client.cookies = client.cookies
        response = await async_client.post(path, data, headers={"HX-Request": "true"})
        if not response.streaming:
            await settle()
            return response.status_code, response.content.decode(), []
        body = b"".join([chunk async for chunk in response.streaming_content])
        await settle()
        return response.status_code, "", parse_events(body)

    return asyncio.run(go())


# --- branching -------------------------------------------------------------------------------


def test_a_branch_continues_the_parent_with_the_chosen_alternative_and_its_parameters():
    parent = owned_run("ann")
    client = signed_in("ann")
    data = {"parent_run": parent.pk, "branch_index": 2, "branch_text": " 1", "temperature": "1.9"}
    status, _, events = post_stream(client, "/generate", data)
    assert status == 200
    assert events[-1].event == "done"
    child = Run.objects.exclude(pk=parent.pk).get()
    assert child.prompt == "def f():\n    return 1"
    assert (child.parent_run_id, child.branch_index, child.session_id) == (
        parent.pk,
        2,
        parent.session_id,
    )
    assert child.params["temperature"] == 0.7  # the parent's, not what the browser sent
    assert "2 / 2" in events[-2].data  # the navigator, in the run's final message


def test_a_branch_of_someone_elses_run_is_a_404_and_a_made_up_alternative_a_400():
    parent = owned_run("bea")
    other = signed_in("cid")
    data = {"parent_run": parent.pk, "branch_index": 2, "branch_text": " 1"}
    assert post_stream(other, "/generate", data)[0] == 404
    owner = signed_in("bea")
    assert post_stream(owner, "/generate", {**data, "branch_text": "rm -rf"})[0] == 400
    assert post_stream(owner, "/generate", {**data, "branch_index": 99})[0] == 400
    assert post_stream(owner, "/generate", {**data, "branch_index": "-1"})[0] == 400
    assert Run.objects.count() == 1


def test_the_navigator_orders_the_siblings_at_a_branch_point():
    parent = owned_run("dan")
    first = Run.objects.create(
        user=parent.user, parent_run=parent, branch_index=1, status="complete"
    )
    second = Run.objects.create(
        user=parent.user, parent_run=parent, branch_index=1, status="complete"
    )
    Run.objects.create(user=parent.user, parent_run=parent, branch_index=3, status="complete")
    (row,) = navigator(first)
    assert [r.pk for r in row["siblings"]] == [parent.pk, first.pk, second.pk]
    assert (row["position"], row["previous"].pk, row["next"].pk) == (2, parent.pk, second.pk)
    rows = navigator(parent)
    assert [(r["index"], r["position"], len(r["siblings"])) for r in rows] == [(1, 1, 3), (3, 1, 2)]
    page = signed_in("dan").get(f"/runs/{second.pk}/", headers={"HX-Request": "true"})
    assert "3 / 3" in page.content.decode()


# --- compare and diff ------------------------------------------------------------------------


def test_compare_streams_every_column_and_records_each_run(settings):
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 4
    client = signed_in("eve")
    data = {"prompt": "def add(a, b):\n", "columns": "3"}
    for n in range(3):
        data |= {f"c{n}-backend": "offline", f"c{n}-temperature": str(0.5 * n),
                 f"c{n}-top_p": "0.9", f"c{n}-max_tokens": "10", f"c{n}-seed": "7"}  # fmt: skip
    status, _, events = post_stream(client, "/compare/run", data)
    assert status == 200
    body = "".join(e.data for e in events)
    for n in range(3):
        assert f'id="c{n}-live"' in body
        assert f'id="c{n}-stats"' in body
    ids = json.loads(events[-1].data)["runs"]
    assert len(ids) == 3
    runs = Run.objects.filter(pk__in=ids)
    assert sorted(r.params["temperature"] for r in runs) == [0.0, 0.5, 1.0]
    assert "All columns done." in body


def test_each_compare_column_counts_against_the_per_user_limit(settings):
    settings.PLAYGROUND_MAX_CONCURRENT_PER_USER = 2
    data = {"prompt": "x", "columns": "3"}
    for n in range(3):
        data |= {f"c{n}-backend": "offline", f"c{n}-temperature": "1", f"c{n}-top_p": "1",
                 f"c{n}-max_tokens": "5"}  # fmt: skip
    status, html, _ = post_stream(signed_in("kim"), "/compare/run", data)
    assert status == 429
    assert "runs 3 generations at once" in html
    assert not Run.objects.exists()


def test_compare_rejects_a_bad_column_before_anything_runs():
    client = signed_in("fay")
    data = {"prompt": "x", "columns": "2", "c0-backend": "offline", "c0-temperature": "9",
            "c0-top_p": "1", "c0-max_tokens": "5", "c1-backend": "offline",
            "c1-temperature": "1", "c1-top_p": "1", "c1-max_tokens": "5"}  # fmt: skip
    status, html, _ = post_stream(client, "/compare/run", data)
    assert status == 422
    assert 'id="c0-errors"' in html
    assert "Temperature" in html
    data["c0-temperature"] = "1"
    data["c1-backend"] = "http://evil.test/v1"
    assert post_stream(client, "/compare/run", data)[0] == 400
    assert not Run.objects.exists()


def test_the_diff_finds_the_first_fork_and_both_sides_probabilities():
    a = SimpleNamespace(tokens=TOKENS)
    b = SimpleNamespace(tokens=[*TOKENS[:2], [" 1", -0.5, [[" 1", -0.5], [" a", -2.2]]], TOKENS[3]])
    diff = token_diff(a, b)
    assert diff["fork"] == 2
    left, right = diff["at_fork"]["left"], diff["at_fork"]["right"]
    assert (left["text"], left["other"]) == (" a", " 1")
    assert left["probability"] == pytest.approx(math.exp(-2.2))
    assert left["other_probability"] == pytest.approx(math.exp(-0.5))
    assert right["other_probability"] == pytest.approx(math.exp(-2.2))
    assert [t["mark"] for t in diff["left"]["tokens"]] == ["same", "same", "fork", "same"]
    assert token_diff(a, a)["fork"] is None
    shorter = token_diff(a, SimpleNamespace(tokens=TOKENS[:2]))
    assert shorter["fork"] == 2
    assert shorter["at_fork"]["right"]["text"] is None


def test_diff_and_present_are_scoped_to_their_owner():
    run = owned_run("gus")
    other = signed_in("hal")
    assert other.get(f"/diff/?a={run.pk}&b={run.pk}").status_code == 404
    assert other.get(f"/sessions/{run.session_id}/present?run={run.pk}").status_code == 404
    owner = signed_in("gus")
    assert owner.get(f"/diff/?a={run.pk}&b={run.pk}").status_code == 200
    assert owner.get(f"/sessions/{run.session_id}/present?run={run.pk}").status_code == 200
    assert owner.get(f"/sessions/{run.session_id}/present?run=999999").status_code == 404


# --- overview and demo mode ------------------------------------------------------------------


def test_the_overview_marks_each_lines_least_likely_token_and_the_most_surprising():
    tokens = [*TOKENS, ["x", -4.0, []], [" =", -0.2, []]]
    overview = build_overview(tokens, "    return a\nx =")
    assert [(line.number, line.index) for line in overview.lines] == [(1, 2), (2, 4)]
    assert overview.lines[0].bucket == 1  # exp(-2.2) = 0.11
    assert [s.index for s in overview.surprising][:3] == [4, 2, 1]
    assert overview.surprising[-1].text == "⏎"
    assert str(overview.chart).startswith('<svg class="chart"')
    assert build_overview([["a", None, []]], "a") is None


def test_the_gutter_has_a_mark_per_line_and_a_button_where_a_token_is_known():
    tokens = [["a", -0.1, []], ["\n", None, []], ["\n", None, []], ["b", -4.0, []]]
    gutter = str(build_overview(tokens, "a\n\nb").gutter())
    assert gutter == (
        '<button type="button" class="g p9" data-jump="0" '
        'title="Line 1: least likely token 90.5%" aria-label="Line 1: least likely token 90.5%">'
        "</button>"
        '<span class="g"></span>'
        '<button type="button" class="g p0" data-jump="3" '
        'title="Line 3: least likely token 1.83%" aria-label="Line 3: least likely token 1.83%">'
        "</button>"
    )


def test_the_replay_uses_the_stored_tokens_or_else_the_whole_text():
    run = SimpleNamespace(tokens=TOKENS, text="    return a\n")
    assert replay_pieces(run) == ["    ", "return", " a", "\n"]
    assert replay_pieces(SimpleNamespace(tokens=TOKENS, text="other")) == ["other"]


@pytest.mark.parametrize(
    "name", ["script", "img-onerror-quotes", "close-script-in-json", "htmx-oob", "nul"]
)
def test_explore_pages_keep_hostile_output_inert(name):
    payload = PAYLOADS[name]
    run = owned_run(
        "ivy",
        text=payload + "\n",
        tokens=[[payload, -3.0, [[payload, -3.0], ["ok", -0.1]]], ["\n", -0.1, []]],
        prompt=payload,
    )
    session = run.session
    session.name = history.storable(payload)
    session.visibility = "link"
    session.save()
    client = signed_in("ivy")
    client.post(f"/sessions/{session.pk}/links")
    token = ShareLink.objects.get().token
    pages = {
        "diff": client.get(f"/diff/?a={run.pk}&b={run.pk}"),
        "present": client.get(f"/sessions/{session.pk}/present?run={run.pk}&speed=2"),
        "present-shared": Client().get(f"/share/{token}/present?run=1"),
        "shown": client.get(f"/sessions/{session.pk}/?run={run.pk}"),
        "shared": Client().get(f"/share/{token}/"),
    }
    for page, response in pages.items():
        assert response.status_code == 200, page
        html = response.content.decode()
        found = assert_inert(html)
        assert visible(payload).replace("\n", "") in "".join(found.text).replace("\n", "") or (
            name == "nul"
        ), page


def test_the_tree_survives_export_and_import_and_a_share_page_shows_it_read_only():
    from playground import transfer

    parent = owned_run("joy")
    Run.objects.create(
        user=parent.user, session=parent.session, parent_run=parent, branch_index=2,
        status="complete", text="x", prompt="p",
    )  # fmt: skip
    data = transfer.export_session(parent.session)
    assert data["runs"][1]["branch"] == {"parent": 0, "index": 2}
    assert "branch" not in data["runs"][0]
    copy = transfer.import_session(data, {"user": parent.user})
    assert transfer.export_session(copy)["runs"] == data["runs"]
    child = copy.runs.get(parent_run__isnull=False)
    assert (child.parent_run.session_id, child.branch_index) == (copy.pk, 2)
    with pytest.raises(transfer.ImportError_):
        transfer.import_session(
            {**data, "runs": [{**data["runs"][1], "branch": {"parent": 5, "index": 0}}]},
            {"user": parent.user},
        )

    client = signed_in("joy")
    client.post(f"/sessions/{parent.session_id}/links")
    html = Client().get(f"/share/{ShareLink.objects.get().token}/").content.decode()
    assert 'aria-label="Tree of runs"' in html
    assert "Run 2: a branch of run 1 at token 2." in html
    assert "data-run-id" not in html  # read-only: no branch buttons
