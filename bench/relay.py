"""Sections 1 and 2: what the relay adds to a stream, alone and with many at once.

The baseline is the same request sent straight to the same upstream, by the same load
generator, in the same run. Time to first token is measured at the client: for the relay, from
opening the connection to the first `data: <span>` event (the first streamed text; the `run-start`
event before it carries none); directly, to the first `data: {` chunk.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import procs
from bench.report import Row

TOKENS = 512
DELAY_MS = 5.0
REPEATS = 15  # 25 until the ninth round: 15 keeps the whole bench within ten minutes
LEVELS = (50, 200, 500)


def app_env(upstream_port: int) -> dict[str, str]:
    return {
        "COMPLETIONS_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "COMPLETIONS_MODEL": "default",
        "PLAYGROUND_MAX_TOKENS": "4096",
        # The default pool (100) would queue the 200- and 500-stream levels behind each other;
        # a deployment expecting that many streams per worker raises it the same way.
        "UPSTREAM_MAX_CONNECTIONS": "1000",
        # Every bench stream comes from one address, so the per-user limits (30 a minute, 4 at
        # once) would refuse nearly all of them. Raised, not turned off: admission still counts
        # every generation in the cache, so its cost stays in the numbers. The per-process cap
        # keeps its default (900 with the pool above), above the 500-stream level.
        "PLAYGROUND_RATE_LIMIT": "1000000",
        "PLAYGROUND_MAX_CONCURRENT_PER_USER": "100000",
    }


def csrf_token(app: procs.App) -> str:
    response = httpx.get(app.url + "/", timeout=30)
    response.raise_for_status()
    return response.cookies["csrftoken"]


def spec(
    mode: str, port: int, streams: int, csrf: str = "", seed: int = 1, tokens: int = TOKENS
) -> dict:
    return {
        "mode": mode,
        "port": port,
        "streams": streams,
        "tokens": tokens,
        "delay_ms": DELAY_MS,
        "seed": seed,
        "csrf": csrf,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def overhead(upstream: procs.Upstream) -> list[Row]:
    """Section 1: one stream at a time, relay and direct interleaved, REPEATS of each."""
    upstream_port = upstream.port
    with (
        tempfile.TemporaryDirectory() as tmp,
        procs.app(Path(tmp), **app_env(upstream_port)) as app,
    ):
        csrf = csrf_token(app)
        procs.run_load(spec("relay", app.port, 1, csrf))  # warm-up: templates, client pool
        direct: list[dict] = []
        relay: list[dict] = []
        app_cpu = 0.0
        for i in range(REPEATS):
            direct += procs.run_load(spec("direct", upstream_port, 1, seed=i))["results"]
            before = procs.cpu_seconds(app.pid)
            relay += procs.run_load(spec("relay", app.port, 1, csrf, seed=i))["results"]
            app_cpu += procs.cpu_seconds(app.pid) - before
    errors = sum(not r["ok"] for r in direct + relay)
    d_ttft = statistics.median(r["ttft"] for r in direct if r["ok"])
    r_ttft = statistics.median(r["ttft"] for r in relay if r["ok"])
    d_total = statistics.median(r["total"] for r in direct if r["ok"])
    r_total = statistics.median(r["total"] for r in relay if r["ok"])
    ttft_over = r_ttft - d_ttft
    ratio = r_total / d_total
    section = "1 Relay overhead"
    return [
        Row(
            section,
            f"TTFT overhead, median of {REPEATS}",
            f"{ttft_over * 1000:+.2f} ms",
            f"relay {ms(r_ttft)} vs direct {ms(d_ttft)}",
            "≤ 5 ms",
            ttft_over <= 0.005,
        ),
        Row(
            section,
            f"{TOKENS}-token total, relay / direct",
            f"{ratio:.4f}×",
            f"relay {ms(r_total)} vs direct {ms(d_total)}",
            "≤ 1.02×",
            ratio <= 1.02,
        ),
        Row(section, "streams with wrong text or errors", str(errors), "", "0", errors == 0),
        Row(
            section,
            "app CPU per 1,000 tokens, one stream at a time",
            f"{app_cpu / (REPEATS * TOKENS / 1000) * 1000:.1f} ms",
            f"{app_cpu:.2f} CPU-s over {REPEATS} runs (request, stream and final render); "
            "the target is for many streams (section 2)",
        ),
    ]


def concurrency(
    upstream: procs.Upstream, levels: tuple[int, ...] = LEVELS
) -> tuple[list[Row], dict]:
    """Section 2: N simultaneous streams against one fresh worker per level."""
    upstream_port = upstream.port
    rows: list[Row] = []
    raw: dict = {}
    for streams in levels:
        with (
            tempfile.TemporaryDirectory() as tmp,
            procs.app(Path(tmp), **app_env(upstream_port)) as app,
            served_floor(upstream_port, "features") as features,
            served_floor(upstream_port, "product") as product,
        ):
            csrf = csrf_token(app)
            for _ in range(3):  # warm-up: imports, templates, the client's pool
                procs.run_load(spec("relay", app.port, 4, csrf))
            # What one request costs the worker before any token: N arrivals at once queue for it.
            one_token = spec("relay", app.port, streams, csrf, seed=30_000, tokens=1)
            per_request = cpu_batch(app.pid, one_token)["cpu"] / streams
            features_per_request = one_token_cost(features, streams)
            direct = procs.run_load(spec("direct", upstream_port, streams, seed=10_000))
            rss_before = procs.rss_bytes(app.pid)
            before = snapshot(app.pid, upstream.pid)
            with procs.PeakRss(app.pid) as peak:
                relay = procs.run_load(
                    spec("relay", app.port, streams, csrf, seed=FIRST_BATCH_SEED)
                )
            used = {k: v - before[k] for k, v in snapshot(app.pid, upstream.pid).items()}
            relay["cpu"] = used["app"]
            features_run, product_run = alternate_cpu_batches(
                relay, app, csrf, [features, product], streams
            )
        floor_run = minimal_relay(upstream_port, streams)
        django_run = django_relay(upstream_port, streams)
        httpx_run = django_relay(upstream_port, streams, reader="httpx")
        rows += level_rows(streams, direct, relay, used, peak.peak - rss_before)
        rows += floor_rows(streams, direct, floor_run, FLOOR)
        rows += floor_rows(streams, direct, django_run, DJANGO_FLOOR)
        rows += floor_rows(streams, direct, httpx_run, HTTPX_FLOOR)
        rows += floor_rows(streams, direct, features_run, FEATURES_FLOOR)
        rows += floor_rows(streams, direct, product_run, PRODUCT_FLOOR)
        raw[streams] = {
            "direct": direct,
            "relay": relay,
            "used": used,
            "per_request": per_request,
            "floor_per_token": per_token(floor_run),
            "django_per_token": per_token(django_run),
            "django_per_request": django_run["per_request"],
            "httpx_per_token": per_token(httpx_run),
            "httpx_per_request": httpx_run["per_request"],
            "features_per_token": per_token(features_run),
            "features_per_request": features_per_request,
            "app_per_token": per_token(relay),
            "pairs": list(zip(relay["cpu_batches"], features_run["cpu_batches"], strict=True)),
            "product_pairs": list(
                zip(relay["cpu_batches"], product_run["cpu_batches"], strict=True)
            ),
        }
    return rows, raw


# One batch's CPU per token moves by 10-30 % from run to run on this VM; the app and the floors
# it is held to (the per-token and per-run floors) take three batches each, in turns, and the
# median of the three is their number. A round shares its seed; the seeds are apart from every
# other batch's.
FIRST_BATCH_SEED = 20_000
CPU_BATCH_SEEDS = (60_000, 70_000)


def cpu_batch(pid: int, load: dict) -> dict:
    """One more batch of `load` against the process `pid`, with the CPU it used."""
    before = procs.cpu_seconds(pid)
    run = procs.run_load(load)
    run["cpu"] = procs.cpu_seconds(pid) - before
    return run


def alternate_cpu_batches(
    run: dict, relay: procs.App, csrf: str, floors: list[ServedFloor], streams: int
) -> list[dict]:
    """The app's first batch (`run`) is followed by one of each floor's, then they take turns
    for two more batches each: each round of batches sees the same moment of the machine, whose
    speed drifts within a run (the speed probe moved by a fifth in some). `run`'s CPU per token
    becomes the median of its three batches; each floor's run, with its three, is returned."""
    floor_runs: list[list[dict]] = [[] for _ in floors]
    app_batches = [per_token(run)]
    for k, seed in enumerate((FIRST_BATCH_SEED, *CPU_BATCH_SEEDS)):
        if k:
            load = spec("relay", relay.port, streams, csrf, seed=seed)
            app_batches.append(per_token(cpu_batch(relay.pid, load)))
        # The same seed as the app's batch: each round relays the same texts.
        for runs, floor in zip(floor_runs, floors, strict=True):
            load = spec("relay", floor.app.port, streams, floor.csrf, seed=seed)
            runs.append(cpu_batch(floor.app.pid, load))
    run["cpu_batches"] = app_batches
    for runs in floor_runs:
        runs[0]["cpu_batches"] = [per_token(x) for x in runs]
    return [runs[0] for runs in floor_runs]


def per_token(run: dict) -> float:
    """CPU-seconds per token relayed: the median over the run's batches where it has several."""
    if "cpu_batches" in run:
        return statistics.median(run["cpu_batches"])
    tokens = sum(r["ok"] for r in run["results"]) * TOKENS
    return run["cpu"] / tokens if tokens else float("nan")


def batches_detail(run: dict) -> str:
    """The batches behind a median, for the table."""
    if "cpu_batches" not in run:
        return ""
    each = ", ".join(f"{v * 1e6:.1f}" for v in run["cpu_batches"])
    return f"median of {len(run['cpu_batches'])} batches ({each} ms); the first: "


def minimal_relay(upstream_port: int, streams: int) -> dict:
    """The same streams through the minimal relay (bench/floor.py), and its CPU."""
    with procs.floor(upstream_port) as relay:
        procs.run_load(spec("relay", relay.port, 4))  # warm-up
        return cpu_batch(relay.pid, spec("relay", relay.port, streams, seed=40_000))


@dataclass(frozen=True)
class ServedFloor:
    """The minimal relay as a Django view (bench/django_floor.py), served like the app and
    warmed up, with the CSRF token its requests carry."""

    app: procs.App
    csrf: str


@contextlib.contextmanager
def served_floor(upstream_port: int, reader: str = "socket") -> Iterator[ServedFloor]:
    """bench/django_floor.py in its own worker; `reader` is its FLOOR_READER: `"httpx"` reads
    the upstream through the app's httpx client, `"features"` does the product's per-token work
    as well, `"product"` its per-run work too, `"lean"` that with the leanest reader."""
    env = {"DJANGO_SETTINGS_MODULE": "bench.django_floor", "FLOOR_READER": reader}
    with (
        tempfile.TemporaryDirectory() as tmp,
        procs.app(Path(tmp), **env, **app_env(upstream_port)) as relay,
    ):
        csrf = csrf_token(relay)
        for _ in range(2):
            procs.run_load(spec("relay", relay.port, 4, csrf))  # warm-up
        yield ServedFloor(relay, csrf)


def one_token_cost(floor: ServedFloor, streams: int) -> float:
    """CPU-seconds a request costs the floor: `streams` one-token runs arriving at once."""
    one_token = spec("relay", floor.app.port, streams, floor.csrf, seed=30_000, tokens=1)
    return cpu_batch(floor.app.pid, one_token)["cpu"] / streams


def django_relay(upstream_port: int, streams: int, reader: str = "socket") -> dict:
    """The same streams through the minimal relay as a Django view (bench/django_floor.py),
    served like the app: its CPU per stream and, as for the app, per one-token request."""
    with served_floor(upstream_port, reader) as floor:
        per_request = one_token_cost(floor, streams)
        load = spec("relay", floor.app.port, streams, floor.csrf, seed=50_000)
        run = cpu_batch(floor.app.pid, load)
        run["per_request"] = per_request
    return run


FLOOR = ("floor: minimal relay", "bench/floor.py, same cadence, no Django, tokens, render or save")
DJANGO_FLOOR = (
    "floor under Django: minimal relay as a view",
    "bench/django_floor.py, the app's settings and middleware, no form, limits, tokens, "
    "render, templates or save",
)
HTTPX_FLOOR = (
    "floor under Django and httpx: the same view reading through httpx",
    "bench/django_floor.py with FLOOR_READER=httpx: the upstream read through the app's "
    "httpx client (its pool and socket backend) instead of a raw socket",
)
PRODUCT_FLOOR = (
    "floor with the product's per-run work: the features floor saving and showing each run",
    "bench/django_floor.py with FLOOR_READER=product: the features floor, and at each run's end "
    "the run saved as a row by the app's saver and its highlighted completion with the tooltip "
    "data sent as the last message; no form, limits, owner, templates, overview, stats or "
    "history item",
)
FEATURES_FLOOR = (
    "floor with the product's per-token work: the httpx floor doing it",
    "bench/django_floor.py with FLOOR_READER=features: the httpx floor, reading with the "
    "app's own code into tokens with their alternatives, and at each run's end the highlighted "
    "render and the saved JSON, in a worker thread; no form, limits, templates or database",
)


def floor_rows(streams: int, direct: dict, run: dict, which: tuple[str, str]) -> list[Row]:
    name, what = which
    ok = [r for r in run["results"] if r["ok"]]
    d_ttfts = [r["ttft"] for r in direct["results"] if r["ok"]]
    ttfts = [r["ttft"] for r in ok] or [float("nan")]
    p50 = statistics.median(ttfts) - statistics.median(d_ttfts)
    p95 = percentile(ttfts, 0.95) - percentile(d_ttfts, 0.95)
    tokens = len(ok) * TOKENS
    cpu_per_k = per_token(run) * 1000 if tokens else float("nan")
    direct_rate = len(d_ttfts) * TOKENS / direct["wall"]
    section = f"2 Concurrency, {streams} streams"
    return [
        Row(
            section,
            f"{name}, TTFT overhead median / p95",
            f"{p50 * 1000:.1f} / {p95 * 1000:.1f} ms",
            f"{what}; {streams - len(ok)} errors",
        ),
        Row(
            section,
            f"{name}, CPU per 1,000 tokens",
            f"{cpu_per_k * 1000:.1f} ms",
            f"{batches_detail(run)}{run['cpu']:.2f} CPU-s; at the direct rate "
            f"({direct_rate:,.0f} tok/s) it needs "
            f"{direct_rate / 1000 * cpu_per_k:.2f} cores",
        ),
    ]


def snapshot(app_pid: int, upstream_pid: int) -> dict[str, float]:
    return {
        "app": procs.cpu_seconds(app_pid),
        "upstream": procs.cpu_seconds(upstream_pid),
        "machine": procs.machine_busy(),
        "stall": procs.cpu_stall(),
    }


def level_rows(streams: int, direct: dict, relay: dict, used: dict, rss_delta: int) -> list[Row]:
    cpu = used["app"]
    ok = [r for r in relay["results"] if r["ok"]]
    errors = streams - len(ok)
    d_ok = [r for r in direct["results"] if r["ok"]]
    d_ttfts = [r["ttft"] for r in d_ok]
    r_ttfts = [r["ttft"] for r in ok] or [float("nan")]
    p50 = statistics.median(r_ttfts) - statistics.median(d_ttfts)
    p95 = percentile(r_ttfts, 0.95) - percentile(d_ttfts, 0.95)
    tokens = len(ok) * TOKENS
    rate = tokens / relay["wall"]
    direct_rate = len(d_ok) * TOKENS / direct["wall"]
    cpu_per_k = per_token(relay) * 1000 if tokens else float("nan")
    section = f"2 Concurrency, {streams} streams"
    target_level = streams == 200
    return [
        Row(
            section,
            "TTFT overhead median / p95",
            f"{p50 * 1000:.1f} / {p95 * 1000:.1f} ms",
            f"direct p95 {ms(percentile(d_ttfts, 0.95))}",
            "p95 ≤ 50 ms" if target_level else "",
            p95 <= 0.050 if target_level else None,
        ),
        Row(
            section,
            "errors or mixed streams",
            str(errors),
            f"direct: {streams - len(d_ok)}",
            "0" if target_level else "",
            errors == 0 if target_level else None,
        ),
        Row(
            section,
            "tokens/s delivered",
            f"{rate:,.0f}",
            f"direct {direct_rate:,.0f} ({rate / direct_rate:.2f}×)",
            "",
            None,
        ),
        Row(
            section,
            "app CPU per 1,000 tokens",
            f"{cpu_per_k * 1000:.1f} ms",
            f"{batches_detail(relay)}{cpu:.2f} CPU-s, client {relay['client_cpu']:.2f} CPU-s; "
            "at the direct rate "
            f"it needs {direct_rate / 1000 * cpu_per_k:.2f} cores of the worker's one",
            "≤ 25 ms",
            cpu_per_k <= 0.025,
        ),
        Row(
            section,
            "machine CPU during the relay run",
            f"{used['machine'] / relay['wall']:.2f} cores busy",
            f"app {used['app']:.1f}, upstream {used['upstream']:.1f}, client "
            f"{relay['client_cpu']:.1f}, other processes "
            f"{used['machine'] - used['app'] - used['upstream'] - relay['client_cpu']:.1f} CPU-s; "
            f"some task waiting for a CPU {used['stall'] / relay['wall']:.0%} of the time",
        ),
        Row(
            section,
            "memory per open stream",
            f"{rss_delta / streams / 1024:.0f} KiB",
            f"peak RSS +{rss_delta / 2**20:.1f} MiB",
            "",
            None,
        ),
    ]


def parse_cost(alternatives: int) -> float:
    """CPU-seconds per token of the client's read path alone, in this process: SSE framing,
    the JSON parse (orjson) and the Delta/Token/Alternative objects (best of 5, so other load
    on the machine inflates it least)."""
    from bench.upstream import frame, token_texts
    from playground import completions
    from playground.backends import Backend

    backend = Backend(id="bench", label="bench", kind="openai", model="bench")
    request = completions.CompletionRequest(model="bench", prompt="p", max_tokens=TOKENS)
    frames = [frame(i, t, 0, alternatives) for i, t in enumerate(token_texts(1, TOKENS))]

    def read_all() -> None:
        parser = completions.SSEParser()
        assembler = completions.TokenAssembler()
        for chunk in frames:
            for data in parser.feed(chunk):
                completions._delta(completions._parse_chunk(data, backend, request), assembler)

    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(4):
            read_all()
        best = min(best, (time.process_time() - started) / (4 * TOKENS))
    return best


def chunk_parse_cost(alternatives: int = 5) -> float:
    """CPU-seconds per token of orjson parsing each chunk's JSON alone: the part of the read
    path the floor relay does too (best of 5)."""
    import orjson

    from bench.upstream import frame, token_texts

    payloads = [
        frame(i, t, 0, alternatives)[len(b"data: ") :].strip()
        for i, t in enumerate(token_texts(1, TOKENS))
    ]
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(4):
            for payload in payloads:
                orjson.loads(payload)
        best = min(best, (time.process_time() - started) / (4 * TOKENS))
    return best


def save_cost() -> float:
    """CPU-seconds per token of a saved run's tokens column: `history.tokens_to_json`, the scan
    for unstorable characters and the JSON encoding (orjson, `models.TokensEncoder`); the INSERT
    itself is per run, not per token (best of 5)."""
    from bench.render import completion_tokens
    from playground.history import storable_tokens, tokens_to_json
    from playground.models import TokensEncoder

    tokens = completion_tokens()[:TOKENS]
    encoder = TokensEncoder()
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(4):
            encoder.encode(storable_tokens(tokens_to_json(tokens)))
        best = min(best, (time.process_time() - started) / (4 * TOKENS))
    return best


def render_cost() -> float:
    """CPU-seconds per token of the final render of a TOKENS-token run (best of 5)."""
    from bench.render import completion_tokens
    from playground.completions import LogprobStatus
    from playground.rendering import render_completion

    tokens = completion_tokens()[:TOKENS]
    text = "".join(t.text for t in tokens)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        render_completion(
            prompt="def f():\n", tokens=tokens, text=text, logprobs=LogprobStatus.REAL
        )
        best = min(best, (time.process_time() - started) / TOKENS)
    return best


def turns_row(
    section: str, streams: int, pairs: list[tuple[float, float]], floor_name: str, excess: str
) -> Row:
    """The app against a floor whose batches took turns with its own: the median ratio."""
    ratios = [app / floor for app, floor in pairs]
    each = ", ".join(f"{app * 1e6:.1f} / {floor * 1e6:.1f}" for app, floor in pairs)
    return Row(
        section,
        f"the app against the floor with the product's {floor_name} work, batches taken in "
        f"turns, {streams} streams",
        f"{statistics.median(ratios):.2f}×",
        f"median of {len(ratios)} rounds, app / floor CPU per 1,000 tokens: {each} ms; the "
        f"app's excess over that floor is {excess}",
    )


def floor(raw: dict) -> list[Row]:
    """Where the CPU per 1,000 tokens goes, measured apart from the relay."""
    section = "2 Where the CPU goes"
    read, chunk, render, save = parse_cost(5), chunk_parse_cost(5), render_cost(), save_cost()
    rows = [
        Row(
            section,
            "read path, 5 alternatives",
            f"{read * 1e6:.1f} ms",
            f"SSE parse + JSON parse ({chunk * 1e6:.1f} ms of it, which the floor relay does "
            "too) + Delta/Token objects, in-process, best of 5",
        ),
        Row(
            section,
            "read path, 1 alternative",
            f"{parse_cost(1) * 1e6:.1f} ms",
            "what 4 fewer alternatives per token would save",
        ),
        Row(
            section,
            f"final render, {TOKENS}-token runs",
            f"{render * 1e6:.1f} ms",
            "render_completion (in a worker thread, same process); best of 5",
        ),
        Row(
            section,
            f"saved tokens, {TOKENS}-token runs",
            f"{save * 1e6:.1f} ms",
            "tokens_to_json + the unstorable-character scan + the JSON (orjson); best of 5",
        ),
    ]
    features = read - chunk + render + save
    kinds = (
        (
            "floor_per_token",
            "floor with the app's features",
            "the floor relay's {base:.1f} ms + what it does not do, measured above: the tokens "
            f"and alternatives ({(read - chunk) * 1e6:.1f}), the highlighted render "
            f"({render * 1e6:.1f}), the saved tokens ({save * 1e6:.1f}); no request handling, "
            "writes or templates",
        ),
        (
            "django_per_token",
            "floor under Django with the app's features",
            "the Django floor's {base:.1f} ms (its requests included) + the same features "
            f"({features * 1e6:.1f}); no form, limits, templates or database",
        ),
        (
            "httpx_per_token",
            "floor under Django and httpx with the app's features",
            "the brief's fixed stack: the httpx floor's {base:.1f} ms + the same features "
            f"({features * 1e6:.1f}); no form, limits, templates or database",
        ),
    )
    for key, name, detail in kinds:
        for streams, data in raw.items():
            base = data[key] * 1e6
            rows.append(
                Row(
                    section,
                    f"{name}, {streams} streams",
                    f"{base + features * 1e6:.1f} ms",
                    detail.format(base=base),
                )
            )
    for streams, data in raw.items():
        # The product's per-token work measured under the same load (the features floor)
        # against the sum of its parts measured in this idle process: how much more that work
        # costs beside hundreds of streams (caches, the collector, the other processes).
        measured = data["features_per_token"]
        summed = data["httpx_per_token"] + features
        # What a run costs the app beyond what a request costs the features floor (both
        # measured as one-token runs arriving at once): the form, admission, the recorder, the
        # run-end fragment and the INSERT, spread over a run's tokens.
        per_run = data["per_request"] - data["features_per_request"]
        base = measured + per_run / TOKENS
        app = data["app_per_token"]
        rows.append(
            Row(
                section,
                f"the app's floor: the fixed stack with the app's per-token and per-run work, "
                f"{streams} streams",
                f"{base * 1e6:.1f} ms",
                f"the floor with the product's per-token work, measured: {measured * 1e6:.1f} ms "
                f"({measured / summed:.2f}× the httpx floor plus the features measured here, "
                f"{summed * 1e6:.1f}) + the app's run beyond that floor's request "
                f"({per_run * 1000:.2f} ms a run, {per_run / TOKENS * 1e6:.1f} per 1,000 tokens); "
                f"the app spent {app * 1e6:.1f} ms, {app / base:.2f}× this",
            )
        )
    # The same comparisons without the machine's drift: the app's batches and each floor's
    # taken in turns, each app batch divided by the floor batch of the same round.
    for key, floor_name, excess in (
        ("pairs", "per-token", "its own request, templates and database"),
        (
            "product_pairs",
            "per-run",
            "its request (form, limits, owner) and its templates (the run's start and end, the "
            "overview, stats and history item)",
        ),
    ):
        for streams, data in raw.items():
            rows.append(turns_row(section, streams, data[key], floor_name, excess))
    for streams, data in raw.items():
        cost = data["per_request"]
        django = data["django_per_request"]
        rows.append(
            Row(
                section,
                f"app CPU per request, {streams} one-token runs at once",
                f"{cost * 1000:.2f} ms",
                f"so the 95th of {streams} simultaneous arrivals waits ≥ "
                f"{0.95 * streams * cost * 1000:.0f} ms for the worker's one core; the Django "
                f"floor's request {django * 1000:.2f} ms (≥ {0.95 * streams * django * 1000:.0f}"
                f" ms), the httpx floor's {data['httpx_per_request'] * 1000:.2f} ms",
            )
        )
    for streams, data in raw.items():
        direct = data["direct"]
        tokens = sum(r["ok"] for r in direct["results"]) * TOKENS
        if tokens:
            rows.append(
                Row(
                    section,
                    f"loopback client reading {streams} direct streams",
                    f"{direct['client_cpu'] / tokens * 1e6:.1f} ms",
                    "raw asyncio sockets on uvloop: the cheapest reader of these bytes",
                )
            )
    return rows
