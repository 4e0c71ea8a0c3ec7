"""Recovery on a real Temporal dev server and real SeaweedFS (issue 11): a worker SIGKILLed in
every stage is replaced within seconds; an object-store outage mid-run is waited out. Both
end with the uninterrupted run's result hash. (Apart from test_integrity.py so that the two
pytest workers share the long waits.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integritykit import FAST, as_awaitable, busy_spec, events, has_checkpoint
from temporalio.client import WorkflowExecutionStatus
from wfkit import isolated_settings, record_history, spawn_worker, stop_process, wait_for

from tickreplay.data.objectstore import S3Store
from tickreplay.jobs import operations as jobs
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.settings import Settings
from tickreplay.stack.seaweedfs import SeaweedFS
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def isettings(s3_server: Settings, temporal_address: str, tmp_path_factory) -> Settings:
    return isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("rcache"),
                             ["CCC", "DDD"], "2024-04-01", "2024-04-03", 150_000, seed=12)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_process(p, signal.SIGKILL)


# ------------------------------------------------------------------ 5. recovery in seconds
async def test_a_lost_worker_is_replaced_within_seconds_in_every_stage(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """Before: 92 s during a run, 122 s during warm_cache, 10 min during publish_results.

    One job, three SIGKILLs: in warm_cache, in run_backtest (after a checkpoint) and in
    publish_results (fault injection keeps a worker inside warm/publish for 20 s). Recovery =
    from the SIGKILL to the stage starting again on the next worker (its ``*_started`` event).
    The issue's target is < 20 s; the assertion leaves room for a loaded CI machine, and
    `make chaos` prints the measured figures.
    """
    client = await jobs.connect(isettings)
    spec = busy_spec(isettings, every=500)
    reference = result_hash(run_local(spec, isettings.model_copy(
        update={"cache_dir": tmp_path / "ref"})))

    def worker(fault: str | None, name: str) -> None:
        workers.append(spawn_worker(isettings.model_copy(update={"fault_delay": fault}),
                                    tmp_path / f"{name}.log"))

    worker("warm_cache=20", "w1")
    job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.2, **FAST))
    handle = await jobs.submit(client, isettings, job)
    recovery: dict[str, float] = {}
    plan = [("warm_cache", "warm_started", "publish_results=20"),
            ("run_backtest", "run_started", "publish_results=20"),
            ("publish_results", "publish_started", None)]
    killed = 0.0
    for stage, began, next_fault in plan:
        async def inside(began: str = began, since: float = killed, stage: str = stage) -> bool:
            if not [e for e in events(isettings, job.job_id, began) if e["ts"] > since]:
                return False
            return stage != "run_backtest" or await has_checkpoint(client, job.job_id)

        await wait_for(inside, 120, 0.1)
        if stage != "run_backtest":
            await asyncio.sleep(1.0)  # well inside the (delayed) activity
        killed = time.time()
        os.killpg(workers[-1].pid, signal.SIGKILL)
        worker(next_fault, f"after-{stage}")
        await wait_for(lambda began=began, killed=killed: as_awaitable(
            [e for e in events(isettings, job.job_id, began) if e["ts"] > killed]), 120, 0.2)
        again = [e["ts"] for e in events(isettings, job.job_id, began) if e["ts"] > killed]
        recovery[stage] = again[0] - killed
    result = await asyncio.wait_for(handle.result(), 240)
    assert result.result_hash == reference
    print("recovery after SIGKILL: " + ", ".join(f"{k} {v:.1f} s" for k, v in recovery.items()))
    assert all(v < 30 for v in recovery.values()), recovery
    await record_history(client, job.job_id, "v2_killed_in_every_stage")


# ------------------------------------------------------------------ 4. object-store outage
async def test_an_object_store_outage_mid_run_is_waited_out(
        isettings: Settings, temporal_address: str, workers: list, tmp_path: Path) -> None:
    """S3 stops for 15 s after the first checkpoint, then comes back on the same port; the job
    finishes with the uninterrupted run's hash. (Before, a 5-minute outage failed the job for
    good; `make chaos` runs the 15-minute outage, too long for this suite.)"""
    from tickreplay.data.generate import generate

    s3 = SeaweedFS.start(tmp_path / "s3", access_key="outage", secret_key="outage-secret-0123",
                         die_with_parent=True)
    try:
        # Its own task queue: jobs earlier tests of this module left running on the shared
        # one would otherwise reach this worker (another S3) and hold its slots (seen: no
        # checkpoint within 120 s in a full-suite run, while the test alone passed in 45 s).
        settings = isettings.model_copy(update={
            "s3_endpoint": s3.endpoint, "s3_access_key": "outage",
            "s3_secret_key": "outage-secret-0123", "cache_dir": tmp_path / "cache",
            "task_queue": f"{isettings.task_queue}-outage"})
        for b in (settings.data_bucket, settings.results_bucket, settings.artifacts_bucket):
            S3Store(b, settings=settings).ensure_bucket()
        generate(S3Store(settings.data_bucket, settings=settings), ["CCC", "DDD"], "2024-04-01",
                 "2024-04-03", ticks_per_day=60_000, seed=11)
        spec = busy_spec(settings, every=500, work=400)
        reference = result_hash(run_local(spec, settings.model_copy(
            update={"cache_dir": tmp_path / "ref"})))
        client = await jobs.connect(settings)
        workers.append(spawn_worker(settings, tmp_path / "w1.log"))
        job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.5))
        handle = await jobs.submit(client, settings, job)
        # The first checkpoint OBJECT, not its heartbeat: the SDK sends heartbeats at most
        # every 8 s (0.8 x the timeout) and a fast run could finish before one names it.
        ckpts = S3Store(settings.artifacts_bucket, settings=settings)
        await wait_for(lambda: asyncio.to_thread(ckpts.list, f"checkpoints/{job.job_id}/"),
                       120, 0.1)
        port = s3.ports["s3.port"]
        s3.stop(grace=0)
        # Mid-run: it cannot publish (nor even stage) without S3, so it must still be running.
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await asyncio.sleep(15)
        s3 = SeaweedFS.start(tmp_path / "s3", s3_port=port, access_key="outage",
                             secret_key="outage-secret-0123", die_with_parent=True)
        result = await asyncio.wait_for(handle.result(), 300)
        assert result.result_hash == reference
    finally:
        s3.stop(grace=0)
        shutil.rmtree(tmp_path / "s3", ignore_errors=True)
