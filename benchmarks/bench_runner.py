"""Runner start-up per backend: from asking for a runner to the strategy's first tick.

For each backend (process, sandbox, podman) and each of ``--runs`` jobs on a small local
dataset, as ``run_backtest`` does it: acquire a runner (a pod is started and connects; the
sandbox and process backends hand out the spare spawned ahead of need, so the first job pays
the spawn and later ones do not), stage the partitions, send the job, wait for ``started`` (the
strategy is loaded, the engine's first tick is next) and for ``done``. Prints a table (medians)
and writes ``bench-results/runner.md``. ``podman`` needs ``make runner-image``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import plan_data
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore
from tickreplay.runner.backends import RunnerPool
from tickreplay.runner.driver import fetch_plan
from tickreplay.runner.protocol import RunnerJob
from tickreplay.settings import Settings
from tickreplay.strategy.loader import bundle_from_spec, load_strategy

ROOT = Path(__file__).resolve().parents[1]


async def one_job(pool: RunnerPool, store: LocalStore, settings: Settings) -> dict[str, float]:
    """Milliseconds: acquire (pod up and connected), job sent -> started, -> done."""
    spec = {"strategy": str(ROOT / "examples" / "sma_cross.py"), "data_url": str(store.root),
            "symbols": ["AAA"], "start": "2024-03-04", "end": "2024-03-04",
            "params": {"fast": 5, "slow": 20}}
    bundle = bundle_from_spec(spec["strategy"])
    spec["params"] = load_strategy(bundle, spec["params"])[0].params.model_dump(mode="json")
    plan = plan_data(store, ["AAA"], _day(), _day())
    paths = fetch_plan(plan, store, PartitionCache(settings.resolved_cache_dir(), 10**10))
    t0 = time.perf_counter()
    runner = await pool.acquire()
    t1 = time.perf_counter()
    try:
        job = RunnerJob(job_id="bench", spec=spec, bundle=bundle.to_bytes().decode(),
                        strategy_digest=bundle.digest, plan=plan.to_dict(),
                        paths=runner.stage_inputs(paths), checkpoint_every_s=3600,
                        workdir=runner.visible(runner.workdir), memory_mb=2048)
        await runner.send(job)
        started = done = None
        while (msg := await asyncio.wait_for(runner.messages.get(), 120)) is not None:
            if msg.type == "started":
                started = time.perf_counter()
            if msg.type in ("done", "error"):
                done = time.perf_counter()
                assert msg.type == "done", msg
                break
        assert started is not None and done is not None
        return {"acquire": (t1 - t0) * 1e3, "to_first_tick": (started - t0) * 1e3,
                "job_to_started": (started - t1) * 1e3, "total": (done - t0) * 1e3}
    finally:
        await runner.close()


def _day() -> Any:
    import datetime as dt

    return dt.date(2024, 3, 4)


async def bench(backend: str, runs: int, base: Path, image: str) -> list[dict[str, float]]:
    store = LocalStore(base / "data")
    settings = Settings(home=base / "home", cache_dir=base / "cache", runner_backend=backend,
                        runner_image=image, run_cpus=2.0, run_memory_mb=2048)
    settings.platform_key(create=True)
    pool = RunnerPool(settings, base / "runs")
    try:
        return [await one_job(pool, store, settings) for _ in range(runs)]
    finally:
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default="localhost/tickreplay-runner:latest")
    ap.add_argument("--backends", default="process,sandbox,podman")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        base = Path(tmp)
        generate(LocalStore(base / "data"), ["AAA"], "2024-03-04", "2024-03-04",
                 ticks_per_day=20_000, seed=1)
        for backend in args.backends.split(","):
            res = asyncio.run(bench(backend, args.runs, base, args.image))
            first, rest = res[0], res[1:] or res
            rows.append((backend, first["to_first_tick"],
                         statistics.median(r["acquire"] for r in rest),
                         statistics.median(r["to_first_tick"] for r in rest),
                         statistics.median(r["total"] for r in rest)))
    lines = [("| backend | first job: ask -> first tick (ms) | later jobs: acquire (ms) | "
             "later jobs: ask -> first tick (ms) | later jobs: ask -> done, 20k ticks (ms) |"),
             "|---|---|---|---|---|"]
    lines += [f"| {b} | {f:.0f} | {a:.0f} | {t:.0f} | {d:.0f} |" for b, f, a, t, d in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "runner.md").write_text(f"Runner start-up, median of {args.runs - 1} jobs after the "
                                   f"first ({sys.platform}, {time.strftime('%Y-%m-%d')})\n\n"
                                   f"{table}\n")


if __name__ == "__main__":
    main()
