"""The app against the per-run floor and the lean floor, by hand: `python -m bench.lean_floor`.

Not part of `make bench` (which has no room left under ten minutes): docs/PERFORMANCE.md,
*Profile*, the tenth round. At each level the app, the *floor with the product's per-run work*
(`FLOOR_READER=product`) and the same floor with the leanest reader of the tokens
(`FLOOR_READER=lean`, `bench/floor.py`'s `LeanSavedTexts`) are served side by side and take
one batch each in turns, ROUNDS times, each round on its own seeds; printed: the medians of CPU
per 1,000 tokens and the median of the rounds' ratios.

    python -m bench.lean_floor [ROUNDS] [LEVELS]      # default: 5 rounds at 50,200,500
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench import procs
from bench.relay import app_env, cpu_batch, csrf_token, per_token, served_floor, spec

SEED = 80_000  # apart from every seed of `make bench`


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    levels = [int(n) for n in sys.argv[2].split(",")] if len(sys.argv) > 2 else [50, 200, 500]
    with procs.upstream() as upstream:
        for streams in levels:
            with (
                tempfile.TemporaryDirectory() as tmp,
                procs.app(Path(tmp), **app_env(upstream.port)) as app,
                served_floor(upstream.port, "product") as product,
                served_floor(upstream.port, "lean") as lean,
            ):
                csrf = csrf_token(app)
                for _ in range(2):  # warm-up, as the floors had theirs
                    procs.run_load(spec("relay", app.port, 4, csrf))
                cpu: dict[str, list[float]] = {"app": [], "product": [], "lean": []}
                for k in range(rounds):
                    seed = SEED + 1000 * k
                    load = spec("relay", app.port, streams, csrf, seed=seed)
                    cpu["app"].append(per_token(cpu_batch(app.pid, load)))
                    for name, floor in (("product", product), ("lean", lean)):
                        load = spec("relay", floor.app.port, streams, floor.csrf, seed=seed)
                        run = cpu_batch(floor.app.pid, load)
                        failed = sum(not r["ok"] for r in run["results"])
                        if failed:
                            print(f"{streams} streams: {failed} failed on the {name} floor")
                        cpu[name].append(per_token(run))
                median = {name: statistics.median(v) * 1e6 for name, v in cpu.items()}
                ratio = {
                    name: statistics.median(
                        [a / b for a, b in zip(cpu[name], cpu["lean"], strict=True)]
                    )
                    for name in ("app", "product")
                }
                rounds_ms = {name: [round(v * 1e6, 1) for v in vs] for name, vs in cpu.items()}
                print(
                    f"{streams} streams, ms per 1,000 tokens: app {median['app']:.1f}, "
                    f"per-run floor {median['product']:.1f}, lean floor {median['lean']:.1f}; "
                    f"app / lean {ratio['app']:.2f}x, per-run / lean {ratio['product']:.2f}x; "
                    f"rounds {rounds_ms}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
