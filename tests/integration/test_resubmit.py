"""Re-submitting a job id (issue 11, item 10), against a real Temporal dev server.

Same id + same input is the same job, running or closed (never a second run); same id + a
different spec, strategy or options is refused at once, before anything starts. No worker is
needed: the jobs sit on a task queue nobody polls, or are terminated to close them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


def _job(job_id: str, fast: int = 10, stall: float = 600.0) -> Any:
    from tickreplay.jobs.operations import prepare
    from tickreplay.spec import BacktestSpec
    from tickreplay.workflows.types import JobOptions

    spec = BacktestSpec.parse({
        "strategy": str(ROOT / "examples" / "sma_cross.py"), "data_url": "s3://nowhere",
        "symbols": "AAA", "start": "2024-03-04", "end": "2024-03-05",
        "params": {"fast": fast, "slow": 80}})
    return prepare(spec, job_id, JobOptions(stall_timeout_s=stall))


async def _run(temporal_address: str, body: Any) -> None:
    from temporalio.client import Client

    from tickreplay.settings import Settings

    client = await Client.connect(temporal_address)
    settings = Settings(temporal_address=temporal_address, task_queue=f"idle-{uuid.uuid4().hex}")
    await body(client, settings)


def test_same_id_same_spec_returns_the_running_job(temporal_address: str) -> None:
    from tickreplay.jobs import operations as jobs

    async def body(client: Any, settings: Any) -> None:
        job_id = f"bt-{uuid.uuid4().hex[:12]}"
        first = await jobs.submit(client, settings, _job(job_id))
        again = await jobs.submit(client, settings, _job(job_id))
        d1, d2 = await first.describe(), await again.describe()
        assert d1.run_id == d2.run_id
        await first.terminate("test over")

    asyncio.run(_run(temporal_address, body))


def test_same_id_same_spec_after_close_returns_the_closed_job_not_a_new_run(
        temporal_address: str) -> None:
    from temporalio.client import WorkflowExecutionStatus

    from tickreplay.jobs import operations as jobs

    async def body(client: Any, settings: Any) -> None:
        job_id = f"bt-{uuid.uuid4().hex[:12]}"
        first = await jobs.submit(client, settings, _job(job_id))
        run_id = (await first.describe()).run_id
        await first.terminate("closed for the test")
        again = await jobs.submit(client, settings, _job(job_id))
        desc = await client.get_workflow_handle(job_id).describe()
        assert desc.run_id == run_id, "a second run was started under the same job id"
        assert desc.status == WorkflowExecutionStatus.TERMINATED
        assert (await again.describe()).run_id == run_id

    asyncio.run(_run(temporal_address, body))


@pytest.mark.parametrize("closed", [False, True], ids=["running", "closed"])
@pytest.mark.parametrize("change", ["params", "options"])
def test_same_id_different_input_is_refused_at_once(temporal_address: str, closed: bool,
                                                    change: str) -> None:
    from tickreplay.jobs import operations as jobs

    async def body(client: Any, settings: Any) -> None:
        job_id = f"bt-{uuid.uuid4().hex[:12]}"
        first = await jobs.submit(client, settings, _job(job_id))
        run_id = (await first.describe()).run_id
        if closed:
            await first.terminate("closed for the test")
        other = _job(job_id, fast=11) if change == "params" else _job(job_id, stall=30.0)
        with pytest.raises(jobs.JobConflictError) as info:
            await jobs.submit(client, settings, other)
        message = str(info.value)
        assert job_id in message and "different spec" in message and "\n" not in message
        desc = await client.get_workflow_handle(job_id).describe()
        assert desc.run_id == run_id  # nothing new was started
        if not closed:
            await first.terminate("test over")

    asyncio.run(_run(temporal_address, body))


def test_a_job_id_that_would_reach_other_jobs_objects_is_refused() -> None:
    for bad in ("a/b", "", "../x", " x"):
        with pytest.raises(ValueError, match="invalid job id"):
            _job(bad)
