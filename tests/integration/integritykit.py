"""Helpers of the integrity and recovery tests (real Temporal, real SeaweedFS, worker processes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from wfkit import STRATEGIES, server_heartbeat

from tickreplay.data.objectstore import S3Store
from tickreplay.jobs import operations as jobs
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec

FAST = {"heartbeat_timeout_s": 10.0, "schedule_to_start_s": 10.0}


def busy_spec(settings: Settings, every: int, work: int = 300) -> BacktestSpec:
    return BacktestSpec.parse({
        "strategy": str(STRATEGIES / "busy_momentum.py"), "data_url": f"s3://{settings.data_bucket}",
        "symbols": "CCC,DDD", "start": "2024-04-01", "end": "2024-04-03",
        "params": {"work": work, "every": every}})


def artifacts(settings: Settings) -> S3Store:
    return S3Store(settings.artifacts_bucket, settings=settings)


def events(settings: Settings, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    evs = jobs.job_logs(settings, job_id)["events"]
    return [e for e in evs if kind is None or e["kind"] == kind]


async def started_times(client: Any, job_id: str, activity: str) -> list[tuple[float, int]]:
    """(wall time, attempt) of every start of ``activity`` in the job's history."""
    out = []
    history = await client.get_workflow_handle(job_id).fetch_history()
    scheduled: dict[int, str] = {}
    for ev in history.events:
        if ev.HasField("activity_task_scheduled_event_attributes"):
            scheduled[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        if ev.HasField("activity_task_started_event_attributes"):
            a = ev.activity_task_started_event_attributes
            if scheduled.get(a.scheduled_event_id) == activity:
                out.append((ev.event_time.ToDatetime(dt.UTC).timestamp(), a.attempt))
    return out


async def has_checkpoint(client: Any, job_id: str) -> bool:
    hb = await server_heartbeat(client, job_id)
    return bool(hb and hb.get("checkpoint_key"))


async def as_awaitable(value: Any) -> Any:
    return value
