"""BacktestWorkflow end to end on a real Temporal dev server and a real SeaweedFS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from wfkit import EXAMPLES, isolated_settings, record_history

from tickreplay.jobs import operations as jobs
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workers.main import run_worker
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def wf_settings(s3_server: Settings, temporal_address: str, tmp_path_factory) -> Settings:
    return isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("wfcache"),
                             ["AAA", "BBB"], "2024-03-04", "2024-03-08", 4000, seed=3)


@pytest.fixture(scope="session")
async def client(wf_settings: Settings) -> Client:
    return await jobs.connect(wf_settings)


@pytest.fixture(scope="session")
async def worker(wf_settings: Settings, client: Client) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(wf_settings, stop, client=client, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    yield
    stop.set()
    await asyncio.wait_for(task, 60)


def spec_for(settings: Settings, strategy: str, **params: object) -> BacktestSpec:
    return BacktestSpec.parse({
        "strategy": strategy, "data_url": f"s3://{settings.data_bucket}",
        "symbols": "AAA,BBB", "start": "2024-03-04", "end": "2024-03-08",
        "params": params or {"fast": 10, "slow": 80},
        "config": {"latency_ns": 1_000_000, "slippage_bps": 1.0,
                   "commission": {"per_share": 0.005, "minimum": 1.0}}})


async def test_submit_succeeds_with_the_same_hash_as_a_local_run(
        wf_settings: Settings, client: Client, worker: None, tmp_path: Path) -> None:
    spec = spec_for(wf_settings, str(EXAMPLES / "sma_cross.py"))
    job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.2))
    handle = await jobs.submit(client, wf_settings, job)
    result = await asyncio.wait_for(handle.result(), 120)
    assert result.status == "SUCCEEDED"
    local = run_local(spec, wf_settings.model_copy(update={"cache_dir": tmp_path / "c"}))
    assert result.result_hash == result_hash(local)
    st = await jobs.status(client, job.job_id)
    assert st["status"] == "SUCCEEDED" and st["ticks_done"] == st["ticks_total"] == 40_000
    manifest = jobs.download_results(wf_settings, job.job_id, tmp_path / "out")
    assert manifest["result_hash"] == result.result_hash
    again = await jobs.submit(client, wf_settings, job)  # same id: same job, no second run
    assert (await again.result()).result_hash == result.result_hash
    await record_history(client, job.job_id, "backtest_succeeded")


async def test_strategy_exception_fails_the_job_and_the_worker_serves_the_next(
        wf_settings: Settings, client: Client, worker: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tickreplay import Strategy\n\nclass Bad(Strategy):\n"
                   "    def on_tick(self, tick):\n        if tick.price > 0:\n"
                   "            raise ValueError('strategy bug here')\n")
    job = jobs.prepare(spec_for(wf_settings, str(bad)).model_copy(update={"params": {}}))
    handle = await jobs.submit(client, wf_settings, job)
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(handle.result(), 120)
    assert "strategy bug here" in str(e.value.cause)
    logs = jobs.job_logs(wf_settings, job.job_id)
    assert "ValueError: strategy bug here" in logs["error"]["traceback"]
    assert "bad.py" in logs["error"]["traceback"]
    st = await jobs.status(client, job.job_id)
    assert st["status"] == "FAILED"
    await record_history(client, job.job_id, "backtest_strategy_failed")
    ok = jobs.prepare(spec_for(wf_settings, str(EXAMPLES / "sma_cross_vectorized.py")))
    assert (await asyncio.wait_for((await jobs.submit(client, wf_settings, ok)).result(),
                                   120)).status == "SUCCEEDED"
