"""Client side of durable backtests: submit, inspect, fetch and cancel jobs on Temporal.

The CLI talks to Temporal directly at this stage (a REST/gRPC API comes later). Specs are
validated here, before anything is started, so a bad field is reported at once.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy

from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.strategy.loader import StrategyBundle, bundle_from_spec, load_strategy
from tickreplay.workflows.types import JobInput, JobOptions, JobResult, SweepInput, SweepResult

_STATUS = {
    WorkflowExecutionStatus.RUNNING: "RUNNING",
    WorkflowExecutionStatus.COMPLETED: "SUCCEEDED",
    WorkflowExecutionStatus.FAILED: "FAILED",
    WorkflowExecutionStatus.CANCELED: "CANCELLED",
    WorkflowExecutionStatus.TERMINATED: "TERMINATED",
    WorkflowExecutionStatus.TIMED_OUT: "TIMED_OUT",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "RUNNING",
}


async def connect(settings: Settings) -> Client:
    """A Temporal client for the configured address and namespace."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


def prepare(spec: BacktestSpec, job_id: str | None = None,
            options: JobOptions | None = None) -> JobInput:
    """Read the strategy, validate its params locally, and build the workflow input."""
    bundle = bundle_from_spec(spec.strategy)
    strategy, _ = load_strategy(bundle, spec.params)  # bad params fail here, not on a worker
    spec_json = spec.model_dump(mode="json")
    spec_json["params"] = strategy.params.model_dump(mode="json")
    return JobInput(job_id or new_job_id(), spec_json, _bundle_dict(bundle), options or JobOptions())


def _bundle_dict(bundle: StrategyBundle) -> dict[str, Any]:
    return {"files": bundle.files, "entry": bundle.entry, "class": bundle.class_name}


def new_job_id(prefix: str = "bt") -> str:
    """A fresh, unguessable job id."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


async def submit(client: Client, settings: Settings, job: JobInput) -> WorkflowHandle[Any, Any]:
    """Start the workflow (id = job id); submitting the same id twice returns the same job."""
    return await client.start_workflow(
        "BacktestWorkflow", job, id=job.job_id, task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, result_type=JobResult)


async def submit_sweep(client: Client, settings: Settings, sweep: SweepInput
                       ) -> WorkflowHandle[Any, Any]:
    """Start a SweepWorkflow over a parameter grid."""
    return await client.start_workflow(
        "SweepWorkflow", sweep, id=sweep.sweep_id, task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, result_type=SweepResult)


async def status(client: Client, job_id: str) -> dict[str, Any]:
    """The workflow's own status query, or what Temporal knows if no worker can answer."""
    handle = client.get_workflow_handle(job_id)
    desc = await handle.describe()
    out: dict[str, Any] = {"job_id": job_id, "status": _STATUS.get(desc.status, str(desc.status))}
    try:
        out.update(await handle.query("status"))
    except Exception as e:  # noqa: BLE001 - no worker to answer: describe() is all we have
        out["query_error"] = str(e)
    if desc.status != WorkflowExecutionStatus.RUNNING:  # a closed run: Temporal's word is final
        out["status"] = _STATUS.get(desc.status, str(desc.status))
        return out
    # The workflow hears of progress once a minute (signals cost history); the running
    # attempt's last heartbeat, which the server keeps outside the history, is fresher.
    for act in desc.raw_description.pending_activities:
        if act.activity_type.name == "run_backtest" and act.heartbeat_details.payloads:
            (hb, *_) = await client.data_converter.decode(act.heartbeat_details.payloads)
            if isinstance(hb, dict) and hb.get("progress", 0) >= out.get("ticks_done", 0):
                out.update(ticks_done=hb["progress"], sim_ts=hb.get("sim_ts", 0),
                           ticks_total=hb.get("ticks_total") or out.get("ticks_total", 0))
    return out


def results_store(settings: Settings) -> Any:
    """The results bucket."""
    from tickreplay.data.store import S3Store

    return S3Store(settings.results_bucket, settings=settings)


def download_results(settings: Settings, job_id: str, out: Path) -> dict[str, Any]:
    """Copy a published result to ``out`` and verify it (manifest present, hashes match)."""
    from tickreplay.results import verify_results

    store = results_store(settings)
    objects = store.list(f"{job_id}/")
    if not any(o.key.endswith("/manifest.json") for o in objects):
        raise FileNotFoundError(f"job {job_id} has no published result (no manifest)")
    out.mkdir(parents=True, exist_ok=True)
    for o in objects:
        store.download(o.key, out / o.key.rsplit("/", 1)[-1])
    return verify_results(out)


def job_logs(settings: Settings, job_id: str) -> dict[str, Any]:
    """Events, the error (with traceback) and the strategy's log records of a job."""
    from tickreplay.data.store import S3Store

    artifacts = S3Store(settings.artifacts_bucket, settings=settings)
    events = [json.loads(artifacts.get_bytes(o.key))
              for o in artifacts.list(f"jobs/{job_id}/events/")]
    error = None
    if artifacts.head(f"jobs/{job_id}/error.json") is not None:
        error = json.loads(artifacts.get_bytes(f"jobs/{job_id}/error.json"))
    strategy_logs: list[dict[str, Any]] = []
    store = results_store(settings)
    if store.head(f"{job_id}/logs.jsonl") is not None:
        strategy_logs = [json.loads(line) for line in
                         store.get_bytes(f"{job_id}/logs.jsonl").decode().splitlines() if line]
    return {"events": events, "error": error, "strategy_logs": strategy_logs}
