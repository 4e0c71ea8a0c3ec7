"""Orchestration benchmark: the same backtest through Temporal vs `tickreplay run`, in one run.

Starts a real SeaweedFS and Temporal dev server, one worker process, and measures (median of
3): a local in-process run (`run_local` + writing results) vs submit-to-result through
Temporal with the cache warm; the difference is the orchestration overhead per job. Then the
checkpoint cost: the time spent serialising and storing checkpoints to S3 (in process, at a
5 s and a 1 s interval) as a share of a 10 M tick run.
Prints a table and writes ``bench-results/temporal.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from wfkit import spawn_worker, stop_process

from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import plan_data
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import S3Store, open_store
from tickreplay.jobs import operations as jobs
from tickreplay.results import write_results
from tickreplay.runner.driver import count_ticks, fetch_plan, run_local, simulate, validated_params
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.stack.seaweedfs import SeaweedFS
from tickreplay.stack.temporal import TemporalDevServer
from tickreplay.strategy.loader import bundle_from_spec

REPEAT = 3


def _spec(settings: Settings) -> BacktestSpec:
    return BacktestSpec.parse({
        "strategy": str(ROOT / "examples" / "sma_cross.py"),
        "data_url": f"s3://{settings.data_bucket}", "symbols": "AAA,BBB",
        "start": "2024-05-06", "end": "2024-05-10", "params": {"fast": 50, "slow": 500},
        "config": {"latency_ns": 1_000_000, "slippage_bps": 1.0,
                   "commission": {"per_share": 0.005, "minimum": 1.0}}})


def _checkpoint_case(settings: Settings, spec: BacktestSpec, every: float | None
                     ) -> tuple[float, dict[str, float], int]:
    """Simulate with checkpoints stored to S3 every ``every`` s; (seconds, stats, max size)."""
    store = open_store(spec.data_url, settings)
    plan = plan_data(store, spec.symbols, spec.start, spec.end)
    paths = fetch_plan(plan, store, PartitionCache(settings.resolved_cache_dir(),
                                                   settings.cache_max_bytes))
    bundle = bundle_from_spec(spec.strategy)
    params = validated_params(bundle, spec.params)
    artifacts = S3Store(settings.artifacts_bucket, settings=settings)
    sizes: list[int] = []
    stats: dict[str, float] = {}

    def on_checkpoint(blob: bytes, ticks: int) -> None:
        artifacts.put_bytes(f"bench/{ticks}-{hashlib.sha256(blob).hexdigest()[:8]}", blob)
        sizes.append(len(blob))

    t0 = time.perf_counter()
    simulate(bundle, params, plan, spec.config, lambda p: paths[p.key],
             ticks_total=count_ticks(paths), on_checkpoint=on_checkpoint if every else None,
             checkpoint_every_s=every or 0, stats=stats)
    return time.perf_counter() - t0, stats, max(sizes, default=0)


async def main() -> None:
    from rich.console import Console
    from rich.table import Table

    base = Path(tempfile.mkdtemp(prefix="tickreplay-bench-"))
    with SeaweedFS.start(base / "s3", access_key="bench", secret_key="bench-secret-key",
                         die_with_parent=True) as s3, \
            TemporalDevServer.start(base / "temporal", ui=False, die_with_parent=True) as tmp:
        settings = Settings(s3_endpoint=s3.endpoint, s3_access_key="bench",
                            s3_secret_key="bench-secret-key", temporal_address=tmp.address,
                            home=base / "home", cache_dir=base / "cache",
                            task_queue=f"bench-{uuid.uuid4().hex[:6]}")
        for b in (settings.data_bucket, settings.results_bucket, settings.artifacts_bucket):
            S3Store(b, settings=settings).ensure_bucket()
        generate(S3Store(settings.data_bucket, settings=settings), ["AAA", "BBB"], "2024-05-06",
                 "2024-05-10", ticks_per_day=200_000, seed=1)
        spec = _spec(settings)
        worker = spawn_worker(settings, base / "worker.log")
        try:
            client = await jobs.connect(settings)
            local, remote = [], []
            run_local(spec, settings)  # warm the cache (the worker shares it)
            for i in range(REPEAT):
                t0 = time.perf_counter()
                rs = run_local(spec, settings)
                write_results(rs, base / f"local-{i}")
                local.append(time.perf_counter() - t0)
                job = jobs.prepare(spec)
                t0 = time.perf_counter()
                result = await (await jobs.submit(client, settings, job)).result()
                remote.append(time.perf_counter() - t0)
                assert result.status == "SUCCEEDED"
            ticks = rs.metrics["ticks"]
        finally:
            stop_process(worker, signal.SIGTERM)
        # Checkpoint cost on a longer run (10 M ticks, per-tick path): measured directly as the
        # time spent serialising + storing checkpoints, as a share of the run.
        generate(S3Store(settings.data_bucket, settings=settings), ["LONGA", "LONGB"],
                 "2024-06-03", "2024-06-07", ticks_per_day=1_000_000, seed=2)
        long_spec = spec.model_copy(update={"symbols": ("LONGA", "LONGB"),
                                            "start": dt.date(2024, 6, 3),
                                            "end": dt.date(2024, 6, 7)})
        ckpt = {every: _checkpoint_case(settings, long_spec, every) for every in (5.0, 1.0)}
    lm, rm = statistics.median(local), statistics.median(remote)
    rows = [
        ("tickreplay run (in-process), median", f"{lm:.2f} s", f"{ticks:,} ticks"),
        ("through Temporal (submit -> result), median", f"{rm:.2f} s", "target: overhead < 1 s"),
        ("orchestration overhead per job", f"{rm - lm:.2f} s",
         "PASS" if rm - lm < 1.0 else "above target"),
    ]
    for every, (total, stats, size) in ckpt.items():
        share = stats["checkpoint_s"] / total * 100
        rows.append((f"10 M ticks, checkpoint every {every:g} s",
                     f"{share:.2f} % of {total:.1f} s",
                     (f"{stats['checkpoints']:.0f} checkpoints, largest {size / 1e6:.2f} MB; "
                     "target < 5 %")))
    table = Table(title="tickreplay orchestration benchmark (per-tick SMA, 2 symbols)")
    for col in ("measure", "value", "note"):
        table.add_column(col)
    lines = ["| measure | value | note |", "|---|---:|---|"]
    for r in rows:
        table.add_row(*r)
        lines.append("| " + " | ".join(r) + " |")
    Console().print(table)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "temporal.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
