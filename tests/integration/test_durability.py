"""Durability on a real Temporal dev server: killed and preempted workers, cancel, sweeps.

Workers run as real OS processes so they can be SIGKILLed (a lost spot instance) or SIGTERMed
(a spot interruption notice). Every resumed run must give the uninterrupted run's result hash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from wfkit import (
    EXAMPLES,
    FAST_FAILOVER,
    HISTORIES,
    isolated_settings,
    record_history,
    server_heartbeat,
    spawn_worker,
    stop_process,
    wait_for,
)

from tickreplay.data.objectstore import S3Store
from tickreplay.jobs import operations as jobs
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions, SweepInput

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dsettings(s3_server: Settings, temporal_address: str, tmp_path_factory) -> Settings:
    return isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("dcache"),
                             ["CCC", "DDD"], "2024-04-01", "2024-04-05", 150_000, seed=9)


@pytest.fixture(scope="module")
def long_spec(dsettings: Settings) -> BacktestSpec:
    return BacktestSpec.parse({
        "strategy": str(EXAMPLES / "sma_cross.py"), "data_url": f"s3://{dsettings.data_bucket}",
        "symbols": "CCC,DDD", "start": "2024-04-01", "end": "2024-04-05",
        "params": {"fast": 20, "slow": 200},
        "config": {"latency_ns": 1_000_000, "slippage_bps": 1.0,
                   "commission": {"per_share": 0.005, "minimum": 1.0}}})


@pytest.fixture(scope="module")
def slow_spec(long_spec: BacktestSpec) -> BacktestSpec:
    """Seconds of work per run, so a signal surely lands mid-run."""
    strategy = Path(__file__).resolve().parents[1] / "strategies" / "busy_momentum.py"
    return long_spec.model_copy(update={"strategy": str(strategy), "params": {"work": 300}})


def _uninterrupted_hash(spec: BacktestSpec, settings: Settings, cache_dir: Path,
                        min_trades: int) -> str:
    """The run in-process, no Temporal at all: what every resumed run must reproduce."""
    local = run_local(spec, settings.model_copy(update={"cache_dir": cache_dir}))
    assert local.trades.num_rows > min_trades
    return result_hash(local)


@pytest.fixture(scope="module")
def slow_reference_hash(slow_spec: BacktestSpec, dsettings: Settings, tmp_path_factory) -> str:
    return _uninterrupted_hash(slow_spec, dsettings, tmp_path_factory.mktemp("slowcache"), 10)


@pytest.fixture(scope="module")
def reference_hash(long_spec: BacktestSpec, dsettings: Settings, tmp_path_factory) -> str:
    return _uninterrupted_hash(long_spec, dsettings, tmp_path_factory.mktemp("refcache"), 100)


@pytest.fixture
def workers(dsettings: Settings, tmp_path: Path) -> Iterator[list]:
    procs: list = []
    yield procs
    for p in procs:
        stop_process(p, signal.SIGKILL)


def checkpoints(settings: Settings, job_id: str) -> list[str]:
    return [o.key for o in S3Store(settings.artifacts_bucket, settings=settings)
            .list(f"checkpoints/{job_id}/")]


def events(settings: Settings, job_id: str) -> list[dict]:
    return jobs.job_logs(settings, job_id)["events"]


@pytest.mark.parametrize("kill_after_checkpoints", [1, 3, 5])
async def test_sigkilled_worker_is_replaced_and_the_result_is_identical(
        dsettings: Settings, long_spec: BacktestSpec, reference_hash: str, workers: list,
        tmp_path: Path, kill_after_checkpoints: int) -> None:
    client = await jobs.connect(dsettings)
    workers.append(spawn_worker(dsettings, tmp_path / "w1.log"))
    job = jobs.prepare(long_spec, options=JobOptions(checkpoint_every_s=0.1, **FAST_FAILOVER))
    handle = await jobs.submit(client, dsettings, job)
    async def checkpointed() -> bool:  # k checkpoints stored AND the server knows of one
        if len(checkpoints(dsettings, job.job_id)) < kill_after_checkpoints:
            return False
        hb = await server_heartbeat(client, job.job_id)
        return bool(hb and hb.get("checkpoint_key"))

    await wait_for(checkpointed, 120, 0.05)
    os.killpg(workers[0].pid, signal.SIGKILL)  # the runner child dies with it (PDEATHSIG)
    workers.append(spawn_worker(dsettings, tmp_path / "w2.log"))
    result = await asyncio.wait_for(handle.result(), 180)
    assert result.result_hash == reference_hash
    assert result.placements >= 2
    finished = [e for e in events(dsettings, job.job_id) if e["kind"] == "run_finished"]
    assert finished and finished[-1]["resumed_from_ticks"] > 0  # resumed, not restarted
    await record_history(client, job.job_id, f"backtest_killed_{kill_after_checkpoints}")


async def test_sigterm_takes_a_final_checkpoint_and_the_next_worker_resumes_from_it(
        dsettings: Settings, slow_spec: BacktestSpec, slow_reference_hash: str, workers: list,
        tmp_path: Path) -> None:
    client = await jobs.connect(dsettings)
    workers.append(spawn_worker(dsettings, tmp_path / "w1.log"))
    # A periodic checkpoint never comes (interval 1 h): only the shutdown path can write one.
    job = jobs.prepare(slow_spec, options=JobOptions(checkpoint_every_s=3600, **FAST_FAILOVER))
    handle = await jobs.submit(client, dsettings, job)

    async def running() -> bool:
        hb = await server_heartbeat(client, job.job_id)
        return bool(hb and hb["progress"] > 100_000)

    await wait_for(running, 120, 0.1)
    os.kill(workers[0].pid, signal.SIGTERM)
    assert await asyncio.to_thread(workers[0].wait, 60) == 0  # clean exit after the checkpoint
    assert len(checkpoints(dsettings, job.job_id)) == 1  # the final one, and only it
    workers.append(spawn_worker(dsettings, tmp_path / "w2.log"))
    result = await asyncio.wait_for(handle.result(), 180)
    assert result.result_hash == slow_reference_hash
    evs = events(dsettings, job.job_id)
    stopped = [e for e in evs if e["kind"] == "run_stopped"]
    starts = [e for e in evs if e["kind"] == "run_started"]
    assert len(stopped) == 1 and 100_000 < stopped[0]["ticks_done"] < 1_400_000, evs
    # The resumed run starts exactly where the interrupted one stopped: 0 ticks re-done.
    assert starts[-1]["ticks_done"] == stopped[0]["ticks_done"]
    assert checkpoints(dsettings, job.job_id) == []  # removed once the result was published
    await record_history(client, job.job_id, "backtest_sigterm")


async def test_cancel_stops_the_runner_and_marks_the_job_cancelled(
        dsettings: Settings, slow_spec: BacktestSpec, workers: list, tmp_path: Path) -> None:
    client = await jobs.connect(dsettings)
    workers.append(spawn_worker(dsettings, tmp_path / "w1.log"))
    job = jobs.prepare(slow_spec, options=JobOptions(checkpoint_every_s=3600))
    handle = await jobs.submit(client, dsettings, job)

    async def running() -> bool:
        return (await jobs.status(client, job.job_id)).get("ticks_done", 0) > 0

    await wait_for(running, 120, 0.1)
    (pid,) = [e["pid"] for e in events(dsettings, job.job_id) if e["kind"] == "runner_started"]
    assert psutil.pid_exists(pid)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(handle.result(), 60)
    assert isinstance(e.value.cause, CancelledError)
    assert (await jobs.status(client, job.job_id))["status"] == "CANCELLED"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert any(ev["kind"] == "run_cancelled" for ev in events(dsettings, job.job_id))
    await record_history(client, job.job_id, "backtest_cancelled")


async def test_sweep_runs_a_grid_of_six_with_at_most_two_at_once(
        dsettings: Settings, long_spec: BacktestSpec, workers: list, tmp_path: Path) -> None:
    client = await jobs.connect(dsettings)
    workers.append(spawn_worker(dsettings, tmp_path / "w1.log"))
    # three days per backtest: enough daily returns for a Sharpe ratio
    spec = long_spec.model_copy(update={"end": long_spec.start + dt.timedelta(days=2)})
    base = jobs.prepare(spec)
    sweep = SweepInput(jobs.new_job_id("sweep"), base, {"fast": [5, 10, 20], "slow": [60, 120]},
                       max_concurrent=2, metric="sharpe")
    handle = await jobs.submit_sweep(client, dsettings, sweep)
    result = await asyncio.wait_for(handle.result(), 300)
    assert len(result.rows) == 6 and all(r["status"] == "SUCCEEDED" for r in result.rows)
    values = [r["value"] for r in result.rows]
    assert values == sorted(values, reverse=True)
    assert [r["rank"] for r in result.rows] == [1, 2, 3, 4, 5, 6]
    assert {(r["params"]["fast"], r["params"]["slow"]) for r in result.rows} == {
        (f, s) for f in (5, 10, 20) for s in (60, 120)}
    spans = []
    for r in result.rows:
        d = await client.get_workflow_handle(r["job_id"]).describe()
        spans.append((d.start_time, d.close_time))
    for start, _ in spans:  # at any child's start, at most 2 children are open
        assert sum(1 for s, c in spans if s <= start < c) <= 2
    await record_history(client, sweep.sweep_id, "sweep")


def test_histories_json_are_valid() -> None:
    for f in HISTORIES.glob("*.json"):
        assert json.loads(f.read_text())["events"]
