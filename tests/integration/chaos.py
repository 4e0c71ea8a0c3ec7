"""`make chaos`: SIGKILL a worker mid-backtest N times (default 20) and count identical results.

Each round: a worker process runs a job; after a random number of checkpoints (known to the
Temporal server) the worker's process group is SIGKILLed; a fresh worker must finish the job
with the result hash of an uninterrupted local run. Prints `chaos: P/N passed`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wfkit import EXAMPLES, server_heartbeat, spawn_worker, stop_process, wait_for

from tickreplay import jobs
from tickreplay.backtest import run_local
from tickreplay.data.generate import generate
from tickreplay.data.store import S3Store
from tickreplay.results import result_hash
from tickreplay.services import SeaweedFS, TemporalDevServer
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions


async def one_round(settings: Settings, spec: BacktestSpec, expected: str, kill_after: int,
                    logs: Path) -> tuple[bool, str]:
    client = await jobs.connect(settings)
    first = spawn_worker(settings, logs / "w1.log")
    second = None
    try:
        job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.1,
                                                    heartbeat_timeout_s=3,
                                                    schedule_to_start_s=3))
        handle = await jobs.submit(client, settings, job)
        store = S3Store(settings.artifacts_bucket, settings=settings)

        async def checkpointed() -> bool:
            if len(store.list(f"checkpoints/{job.job_id}/")) < kill_after:
                return False
            hb = await server_heartbeat(client, job.job_id)
            return bool(hb and hb.get("checkpoint_key"))

        await wait_for(checkpointed, 60, 0.05)
        os.killpg(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        second = spawn_worker(settings, logs / "w2.log")
        result = await asyncio.wait_for(handle.result(), 300)
        return result.result_hash == expected, (
            f"{job.job_id} hash {result.result_hash[:12]}, "
            f"finished {time.monotonic() - killed:.1f} s after the kill")
    except Exception as e:  # noqa: BLE001 - a chaos round reports, never aborts the run
        return False, f"error: {e!r}"
    finally:
        stop_process(first, signal.SIGKILL)
        if second is not None:
            stop_process(second, signal.SIGTERM)


async def main(rounds: int) -> int:
    base = Path(tempfile.mkdtemp(prefix="tickreplay-chaos-"))
    with SeaweedFS.start(base / "s3", access_key="chaos", secret_key="chaos-secret-key",
                         die_with_parent=True) as s3, \
            TemporalDevServer.start(base / "temporal", ui=False, die_with_parent=True) as tmp:
        tag = uuid.uuid4().hex[:8]
        settings = Settings(s3_endpoint=s3.endpoint, s3_access_key="chaos",
                            s3_secret_key="chaos-secret-key", temporal_address=tmp.address,
                            home=base / "home", cache_dir=base / "cache", task_queue=f"chaos-{tag}",
                            shutdown_grace_s=10)
        for b in (settings.data_bucket, settings.results_bucket, settings.artifacts_bucket):
            S3Store(b, settings=settings).ensure_bucket()
        generate(S3Store(settings.data_bucket, settings=settings), ["CCC", "DDD"], "2024-04-01",
                 "2024-04-05", ticks_per_day=150_000, seed=9)
        spec = BacktestSpec.parse({
            "strategy": str(EXAMPLES / "sma_cross.py"),
            "data_url": f"s3://{settings.data_bucket}", "symbols": "CCC,DDD",
            "start": "2024-04-01", "end": "2024-04-05", "params": {"fast": 20, "slow": 200},
            "config": {"latency_ns": 1_000_000, "slippage_bps": 1.0,
                       "commission": {"per_share": 0.005, "minimum": 1.0}}})
        expected = result_hash(run_local(spec, settings))
        rng = random.Random(2024)
        passed = 0
        for i in range(rounds):
            kill_after = rng.randint(1, 6)
            t0 = time.monotonic()
            ok, info = await one_round(settings, spec, expected, kill_after, base)
            passed += ok
            print(f"round {i + 1:2d}: kill after checkpoint {kill_after}: "
                  f"{'PASS' if ok else 'FAIL'} ({info}, {time.monotonic() - t0:.1f} s)", flush=True)
        print(f"chaos: {passed}/{rounds} passed (expected hash {expected[:16]})")
        return 0 if passed == rounds else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
