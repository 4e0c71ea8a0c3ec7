"""Shared helpers for the Temporal integration tests (real dev server, real SeaweedFS)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tickreplay.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HISTORIES = ROOT / "tests" / "histories"
STRATEGIES = ROOT / "tests" / "strategies"
# A lost worker noticed in 3 s, a run re-placed after 3 s without a poller.
FAST_FAILOVER = {"heartbeat_timeout_s": 3.0, "schedule_to_start_s": 3.0}


async def record_history(client: Any, job_id: str, name: str) -> None:
    """Keep a real history as a replay fixture when TICKREPLAY_RECORD_HISTORIES is set."""
    if os.environ.get("TICKREPLAY_RECORD_HISTORIES"):
        history = await client.get_workflow_handle(job_id).fetch_history()
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())


def spawn_worker(settings: Settings, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """A worker as a real OS process (so it can be SIGKILLed or SIGTERMed)."""
    env = {**os.environ, **settings.to_env(), **extra_env}
    return subprocess.Popen([sys.executable, "-m", "tickreplay.workers.main"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Signal a process group and wait for it; SIGKILL if it does not go."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


async def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll an async predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def server_heartbeat(client: Any, job_id: str) -> dict[str, Any] | None:
    """The run_backtest heartbeat details as the Temporal SERVER has them (not in flight)."""
    desc = await client.get_workflow_handle(job_id).describe()
    for act in desc.raw_description.pending_activities:
        if act.activity_type.name == "run_backtest" and act.heartbeat_details.payloads:
            (details, *_) = await client.data_converter.decode(act.heartbeat_details.payloads)
            return details
    return None


def isolated_settings(base: Settings, temporal_address: str, cache_dir: Path, symbols: list[str],
                      start: str, end: str, ticks_per_day: int, seed: int) -> Settings:
    """Settings with their own queue and buckets on the shared servers, and sample data in S3."""
    import uuid

    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import S3Store

    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(update={
        "temporal_address": temporal_address, "task_queue": f"q-{tag}",
        "results_bucket": f"results-{tag}", "artifacts_bucket": f"artifacts-{tag}",
        "data_bucket": f"data-{tag}", "cache_dir": cache_dir, "shutdown_grace_s": 30.0,
        "max_concurrent_runs": 2})
    for b in (s.results_bucket, s.artifacts_bucket, s.data_bucket):
        S3Store(b, settings=s).ensure_bucket()
    generate(S3Store(s.data_bucket, settings=s), symbols, start, end,
             ticks_per_day=ticks_per_day, seed=seed)
    return s
