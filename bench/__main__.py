"""`python -m bench`: run the six measurements, print one table, update docs/PERFORMANCE.md.

    python -m bench              # everything (a few minutes on 2 cores)
    python -m bench --only 1,2   # some sections
    python -m bench --no-write   # print only

Only the block between the `bench:begin`/`bench:end` markers of docs/PERFORMANCE.md is
rewritten: the table and the machine it ran on. The prose around it (what each number means,
the profile, the optimisations) is written by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import offline, procs, relay, render, report, sessions
from bench.report import Row

DOC = procs.ROOT / "docs" / "PERFORMANCE.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def run(only: set[str]) -> list[Row]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "playground.settings")
    import django

    django.setup()
    # The in-process rows (where the CPU goes, the server render, the offline model) time the
    # app's code under the worker's garbage-collector settings, which the worker sets at
    # startup: with Python's defaults a 4,096-token render took 10-30 % longer here.
    from playground.asgi import tune_garbage_collector

    tune_garbage_collector()
    rows: list[Row] = []

    def step(key: str, label: str, fn) -> None:
        if key not in only:
            return
        started = time.perf_counter()
        print(f"[bench] {label}…", file=sys.stderr, flush=True)
        result = fn()
        rows.extend(result)
        print(f"[bench] {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    with procs.upstream(relay.DELAY_MS) as upstream:
        step("1", "1 relay overhead", lambda: relay.overhead(upstream))

        def concurrency() -> list[Row]:
            rows, raw = relay.concurrency(upstream)
            return rows + relay.floor(raw)

        step("2", "2 concurrency", concurrency)
        step("3", "3 server render", render.server_render)
        # One app and one Chromium for the page weight (4) and the long completion (3).
        step("3" if "3" in only else "4", "3+4 browser", lambda: render.browser(upstream))
    step("5", "5 offline model", offline.measure)
    step("6", "6 saved sessions", sessions.measure)
    rows.sort(key=lambda r: r.section[0])  # keep section order; stable within a section
    return rows


def speed_probe() -> float:
    """CPU-seconds for a fixed pure-Python loop, best of 3: how fast this machine is right now.
    On a shared VM it varies; the same code's numbers scale with it."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.process_time() - started)
    return best


def block(rows: list[Row], seconds: float, probes: tuple[float, float]) -> str:
    machine = procs.machine()
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        BEGIN,
        f"Latest run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all "
        f"(`python -m bench`). Load average at the end: {' / '.join(load)}. Speed probe (a "
        f"fixed Python loop, lower is faster): {probes[0] * 1000:.0f} ms at the start, "
        f"{probes[1] * 1000:.0f} ms at the end.",
        "",
        markdown_machine(machine),
        "",
        report.markdown_table(rows),
        END,
    ]
    return "\n".join(lines)


def markdown_machine(machine: dict[str, str]) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in machine.items())


def write(rows: list[Row], seconds: float, probes: tuple[float, float]) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + block(rows, seconds, probes) + tail)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="comma-separated sections")
    parser.add_argument("--no-write", action="store_true", help="do not touch PERFORMANCE.md")
    args = parser.parse_args()
    only = set(args.only.split(","))
    first_probe = speed_probe()
    started = time.perf_counter()
    rows = run(only)
    seconds = time.perf_counter() - started
    probes = (first_probe, speed_probe())
    print(report.text_table(rows))
    print(
        f"\n{seconds:.0f} s; machine: {procs.machine()['CPU']}; speed probe "
        f"{probes[0] * 1000:.0f} / {probes[1] * 1000:.0f} ms"
    )
    if not args.no_write and only == set("123456"):
        write(rows, seconds, probes)
        print(f"wrote {DOC.relative_to(procs.ROOT)}")


if __name__ == "__main__":
    main()
