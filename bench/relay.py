"""Sections 1 and 2: what the relay adds to a stream, alone and with many at once.

The baseline is the same request sent straight to the same upstream, by the same load
generator, in the same run. Time to first token is measured at the client: for the relay, from
opening the connection to the first `data: <span>` event (the first streamed text; the `run-start`
event before it carries none); directly, to the first `data: {` chunk.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import httpx

from bench import procs
from bench.report import Row

TOKENS = 512
DELAY_MS = 5.0
REPEATS = 25
LEVELS = (50, 200, 500)


def app_env(upstream_port: int) -> dict[str, str]:
    return {
        "COMPLETIONS_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "COMPLETIONS_MODEL": "default",
        "PLAYGROUND_MAX_TOKENS": "4096",
        # The default pool (100) would queue the 200- and 500-stream levels behind each other;
        # a deployment expecting that many streams per worker raises it the same way.
        "UPSTREAM_MAX_CONNECTIONS": "1000",
    }


def csrf_token(app: procs.App) -> str:
    response = httpx.get(app.url + "/", timeout=30)
    response.raise_for_status()
    return response.cookies["csrftoken"]


def spec(mode: str, port: int, streams: int, csrf: str = "", seed: int = 1) -> dict:
    return {
        "mode": mode,
        "port": port,
        "streams": streams,
        "tokens": TOKENS,
        "delay_ms": DELAY_MS,
        "seed": seed,
        "csrf": csrf,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def overhead(upstream_port: int) -> list[Row]:
    """Section 1: one stream at a time, relay and direct interleaved, REPEATS of each."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        procs.app(Path(tmp), **app_env(upstream_port)) as app,
    ):
        csrf = csrf_token(app)
        procs.run_load(spec("relay", app.port, 1, csrf))  # warm-up: templates, client pool
        direct: list[dict] = []
        relay: list[dict] = []
        for i in range(REPEATS):
            direct += procs.run_load(spec("direct", upstream_port, 1, seed=i))["results"]
            relay += procs.run_load(spec("relay", app.port, 1, csrf, seed=i))["results"]
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
    ]


def concurrency(upstream_port: int, levels: tuple[int, ...] = LEVELS) -> tuple[list[Row], dict]:
    """Section 2: N simultaneous streams against one fresh worker per level."""
    rows: list[Row] = []
    raw: dict = {}
    for streams in levels:
        with (
            tempfile.TemporaryDirectory() as tmp,
            procs.app(Path(tmp), **app_env(upstream_port)) as app,
        ):
            csrf = csrf_token(app)
            for _ in range(3):  # warm-up: imports, templates, the client's pool
                procs.run_load(spec("relay", app.port, 4, csrf))
            direct = procs.run_load(spec("direct", upstream_port, streams, seed=10_000))
            rss_before = procs.rss_bytes(app.pid)
            cpu_before = procs.cpu_seconds(app.pid)
            with procs.PeakRss(app.pid) as peak:
                relay = procs.run_load(spec("relay", app.port, streams, csrf, seed=20_000))
            cpu = procs.cpu_seconds(app.pid) - cpu_before
        rows += level_rows(streams, direct, relay, cpu, peak.peak - rss_before)
        raw[streams] = {"direct": direct, "relay": relay, "cpu": cpu}
    return rows, raw


def level_rows(streams: int, direct: dict, relay: dict, cpu: float, rss_delta: int) -> list[Row]:
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
    cpu_per_k = cpu / (tokens / 1000) if tokens else float("nan")
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
            f"{cpu:.2f} CPU-s; client {relay['client_cpu']:.2f} CPU-s",
            "≤ 25 ms",
            cpu_per_k <= 0.025,
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
