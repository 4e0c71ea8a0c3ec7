"""Durable backtests under the quote fill model, on the real stack (Temporal dev server,
SeaweedFS, a worker process with the sandbox runner): the plan carries the quotes, the result
equals a local run's, and a runner SIGKILLed mid-run (with partially filled orders open)
resumes from its checkpoint to the same hash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from wfkit import (
    EXAMPLES,
    FAST_FAILOVER,
    STRATEGIES,
    isolated_settings,
    server_heartbeat,
    spawn_worker,
    stop_process,
    wait_for,
)

from tickreplay.jobs import operations as jobs
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration
QUOTE = {"fill_model": "quote", "max_participation": 0.3, "latency_ns": 1_000_000,
         "slippage_bps": 1.0}


@pytest.fixture(scope="module")
def qsettings(s3_server: Settings, temporal_address: str,
              tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import S3Store

    s = isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("qcache"),
                          ["QQQ", "RRR"], "2024-06-03", "2024-06-04", 30_000, seed=16)
    # The same trades again (same seed: identical bytes) and their L1 quotes beside them.
    generate(S3Store(s.data_bucket, settings=s), ["QQQ", "RRR"], "2024-06-03", "2024-06-04",
             ticks_per_day=30_000, seed=16, quote_partitions=True)
    return s


@pytest.fixture(scope="module")
def worker(qsettings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    proc = spawn_worker(qsettings, tmp_path_factory.mktemp("qworker") / "worker.log")
    yield
    stop_process(proc, signal.SIGKILL)


def _spec(settings: Settings, strategy: str, params: dict) -> BacktestSpec:
    return BacktestSpec.parse({"strategy": strategy, "data_url": f"s3://{settings.data_bucket}",
                               "symbols": "QQQ,RRR", "start": "2024-06-03",
                               "end": "2024-06-04", "params": params, "config": QUOTE})


async def test_a_quote_model_job_plans_quotes_and_equals_a_local_run(
        qsettings: Settings, worker: None, tmp_path: Path) -> None:
    spec = _spec(qsettings, str(EXAMPLES / "sma_cross.py"), {"fast": 10, "slow": 80})
    job = jobs.prepare(spec)
    assert job.spec["events"] == ["trades", "quotes"]  # what the strategy + fill model read
    client = await jobs.connect(qsettings)
    result = await asyncio.wait_for((await jobs.submit(client, qsettings, job)).result(), 180)
    local = run_local(spec, qsettings.model_copy(update={"cache_dir": tmp_path / "c"}))
    assert result.result_hash == result_hash(local)
    assert local.trades.num_rows > 50 and set(local.trades["liquidity"].to_pylist()) == {"taker"}
    ids = local.trades["order_id"].to_pylist()
    assert len(ids) > len(set(ids))  # the participation cap split orders into parts
    manifest = jobs.download_results(qsettings, job.job_id, tmp_path / "out")
    assert manifest["inputs"]["config"]["fill_model"] == "quote"
    assert manifest["inputs"]["config"]["max_participation"] == 0.3
    st = await jobs.status(client, job.job_id)
    assert st["ticks_total"] == 4 * 30_000 * 4  # trades and 3 quotes per trade, 2 symbols x 2 days
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ticks"] == st["ticks_total"]


async def test_a_sigkilled_runner_resumes_a_quote_model_run_to_the_same_hash(
        qsettings: Settings, worker: None, tmp_path: Path) -> None:
    # Slow enough (several seconds) that the kill lands mid-run on a loaded machine too.
    spec = _spec(qsettings, str(STRATEGIES / "busy_momentum.py"), {"work": 1500, "every": 300})
    client = await jobs.connect(qsettings)
    job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.2, **FAST_FAILOVER))
    handle = await jobs.submit(client, qsettings, job)

    async def checkpointed() -> bool:
        hb = await server_heartbeat(client, job.job_id)
        return bool(hb and hb.get("checkpoint_key") and hb.get("ticks_done", 0) > 0)

    await wait_for(checkpointed, 120, 0.1)
    (started,) = [e for e in jobs.job_logs(qsettings, job.job_id)["events"]
                  if e["kind"] == "runner_started"]
    os.killpg(started["pid"], signal.SIGKILL)
    # The uninterrupted run, computed while the job resumes.
    reference = result_hash(await asyncio.to_thread(run_local, spec, qsettings.model_copy(
        update={"cache_dir": tmp_path / "ref"})))
    result = await asyncio.wait_for(handle.result(), 240)
    assert result.result_hash == reference
    finished = [e for e in jobs.job_logs(qsettings, job.job_id)["events"]
                if e["kind"] == "run_finished"]
    assert finished and finished[-1]["resumed_from_ticks"] > 0  # resumed, not restarted
