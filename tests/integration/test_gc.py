"""Garbage of finished jobs (issue 11, item 9): real Temporal dev server, real SeaweedFS.

Checkpoints and staged results of closed (or unknown) jobs go; those of running jobs, every
job's events, and the results bucket stay. ``tickreplay gc`` reports what it removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tickreplay.data.objectstore import S3Store
from tickreplay.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]


def _settings(s3_server: Settings, temporal_address: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = s3_server.model_copy(update={
        "temporal_address": temporal_address, "task_queue": f"idle-{tag}",
        "artifacts_bucket": f"artifacts-{tag}", "results_bucket": f"results-{tag}"})
    for bucket in (s.artifacts_bucket, s.results_bucket):
        S3Store(bucket, settings=s).ensure_bucket()
    return s


def _litter(artifacts: S3Store, results: S3Store, job_id: str) -> int:
    """A job's checkpoints, staging, events and published result; returns the garbage bytes."""
    garbage = {f"checkpoints/{job_id}/0000000001000-a.ckpt": b"x" * 1000,
               f"checkpoints/{job_id}/0000000002000-b.ckpt": b"y" * 2000,
               f"staging/{job_id}/abc/123/trades.parquet": b"z" * 300}
    for key, data in garbage.items():
        artifacts.put_bytes(key, data)
    artifacts.put_bytes(f"jobs/{job_id}/events/1-run_finished.json", b"{}")
    results.put_bytes(f"{job_id}/manifest.json", b"{}")
    return sum(len(d) for d in garbage.values())


async def _start_idle(s: Settings, job_id: str) -> Any:
    """A workflow that stays RUNNING: nobody polls its task queue."""
    from temporalio.client import Client

    client = await Client.connect(s.temporal_address)
    return await client.start_workflow("BacktestWorkflow", {"job_id": job_id}, id=job_id,
                                       task_queue=s.task_queue)


def _keys(store: S3Store) -> set[str]:
    return {o.key for o in store.list()}


def test_clean_job_removes_only_that_jobs_checkpoints_and_staging(
        s3_server: Settings, temporal_address: str) -> None:
    from tickreplay.results.garbage import CleanStats, clean_job

    s = _settings(s3_server, temporal_address)
    artifacts = S3Store(s.artifacts_bucket, settings=s)
    results = S3Store(s.results_bucket, settings=s)
    size = _litter(artifacts, results, "bt-one")
    _litter(artifacts, results, "bt-one-more")  # shares the prefix "bt-one": must stay
    before_results = _keys(results)
    assert clean_job(artifacts, "bt-one") == CleanStats(3, size)
    left = _keys(artifacts)
    assert not any(k.startswith(("checkpoints/bt-one/", "staging/bt-one/")) for k in left)
    assert "jobs/bt-one/events/1-run_finished.json" in left
    assert sum(k.startswith(("checkpoints/bt-one-more/", "staging/bt-one-more/"))
               for k in left) == 3
    assert _keys(results) == before_results
    assert clean_job(artifacts, "bt-one") == CleanStats(0, 0)  # safe to repeat
    with pytest.raises(ValueError):
        clean_job(artifacts, "")


def test_gc_cleans_closed_and_unknown_jobs_never_running_ones(
        s3_server: Settings, temporal_address: str) -> None:
    s = _settings(s3_server, temporal_address)
    artifacts = S3Store(s.artifacts_bucket, settings=s)
    results = S3Store(s.results_bucket, settings=s)
    running, closed, unknown = (f"bt-{n}-{uuid.uuid4().hex[:8]}"
                                for n in ("running", "closed", "unknown"))
    sizes = {job: _litter(artifacts, results, job) for job in (running, closed, unknown)}

    async def start() -> Any:
        await _start_idle(s, running)
        handle = await _start_idle(s, closed)
        await handle.terminate("done for the test")

    asyncio.run(start())
    results_before, artifacts_before = _keys(results), _keys(artifacts)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
    env.update(s.to_env())

    def gc(*args: str) -> dict[str, Any]:
        p = subprocess.run([sys.executable, "-m", "tickreplay.cli", "gc", "--json", *args],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                           check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout)

    dry = gc("--dry-run")
    assert dry["dry_run"] and set(dry["cleaned"]) == {closed, unknown}
    assert _keys(artifacts) == artifacts_before  # a dry run deletes nothing
    report = gc()
    assert set(report["cleaned"]) == {closed, unknown} and running in report["running"]
    assert report["objects"] == 6 and report["bytes"] == sizes[closed] + sizes[unknown]
    left = _keys(artifacts)
    for job in (closed, unknown):
        assert not any(k.startswith((f"checkpoints/{job}/", f"staging/{job}/")) for k in left)
        assert f"jobs/{job}/events/1-run_finished.json" in left
    assert sum(k.startswith((f"checkpoints/{running}/", f"staging/{running}/"))
               for k in left) == 3
    assert _keys(results) == results_before
    assert gc()["objects"] == 0

    async def stop() -> None:
        from temporalio.client import Client

        client = await Client.connect(s.temporal_address)
        await client.get_workflow_handle(running).terminate("test over")

    asyncio.run(stop())
