"""An A/B run of the app's CPU, by hand: `python -m bench.ab BASE [ROUNDS] [LEVELS]`.

The working tree against the commit BASE (checked out into a temporary git worktree), each
served as `make run` serves it (bench/procs.py) from its own tree, side by side against one
upstream. At each level they take one batch each in turns, ROUNDS times, each round on its own
seeds, so both see the same moment of the machine, whose speed drifts within minutes
(docs/PERFORMANCE.md). Printed: the medians of CPU per 1,000 tokens, the median of the rounds'
ratios and in how many rounds the working tree was lower. Only a difference of about 10 %, in
most rounds, is a result (two identical trees have read 3 % apart). Both trees run in this
checkout's virtualenv, so BASE must need the same dependencies.

    python -m bench.ab HEAD~1 [ROUNDS] [LEVELS]      # default: 6 rounds at 50,200,500
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import procs
from bench.relay import app_env, cpu_batch, csrf_token, per_token, spec

SEED = 120_000  # apart from every seed of `make bench` and bench.lean_floor


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """The tree of `rev`, checked out apart from the working tree (no index or branch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), rev],
            cwd=procs.ROOT,
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=procs.ROOT, check=True
            )


def main() -> None:
    base = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    levels = [int(n) for n in sys.argv[3].split(",")] if len(sys.argv) > 3 else [50, 200, 500]
    with worktree(base) as base_root, procs.upstream() as upstream:
        for streams in levels:
            with (
                tempfile.TemporaryDirectory() as tmp_a,
                tempfile.TemporaryDirectory() as tmp_b,
                procs.app(Path(tmp_a), base_root, **app_env(upstream.port)) as a,
                procs.app(Path(tmp_b), **app_env(upstream.port)) as b,
            ):
                apps = {"base": (a, csrf_token(a)), "work": (b, csrf_token(b))}
                for app, csrf in apps.values():
                    for _ in range(2):  # warm-up
                        procs.run_load(spec("relay", app.port, 4, csrf))
                cpu: dict[str, list[float]] = {"base": [], "work": []}
                for k in range(rounds):
                    # The same texts for both; which goes first alternates.
                    order = ["base", "work"] if k % 2 == 0 else ["work", "base"]
                    for name in order:
                        app, csrf = apps[name]
                        load = spec("relay", app.port, streams, csrf, seed=SEED + 1000 * k)
                        run = cpu_batch(app.pid, load)
                        failed = sum(not r["ok"] for r in run["results"])
                        if failed:
                            print(f"{streams} streams: {failed} failed on {name}")
                        cpu[name].append(per_token(run))
                ratios = [w / b for w, b in zip(cpu["work"], cpu["base"], strict=True)]
                lower = sum(r < 1 for r in ratios)
                each = ", ".join(
                    f"{b * 1e6:.1f}/{w * 1e6:.1f}"
                    for b, w in zip(cpu["base"], cpu["work"], strict=True)
                )
                print(
                    f"{streams} streams, ms per 1,000 tokens: base "
                    f"{statistics.median(cpu['base']) * 1e6:.1f}, work "
                    f"{statistics.median(cpu['work']) * 1e6:.1f}; work / base "
                    f"{statistics.median(ratios):.3f}x, lower in {lower} of {rounds}; "
                    f"rounds (base/work) {each}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
