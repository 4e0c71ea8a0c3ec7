"""Client side of durable backtests: submit, inspect, fetch and cancel jobs on Temporal.

The CLI talks to Temporal directly at this stage (a REST/gRPC API comes later). Specs are
validated here, before anything is started, so a bad field is reported at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from tickreplay.errors import JobConflictError
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.strategy.loader import StrategyBundle, bundle_from_spec, load_strategy
from tickreplay.workflows.types import (
    JobInput,
    JobOptions,
    JobResult,
    RunHeartbeat,
    SweepInput,
    SweepResult,
)

_STATUS = {
    WorkflowExecutionStatus.RUNNING: "RUNNING",
    WorkflowExecutionStatus.COMPLETED: "SUCCEEDED",
    WorkflowExecutionStatus.FAILED: "FAILED",
    WorkflowExecutionStatus.CANCELED: "CANCELLED",
    WorkflowExecutionStatus.TERMINATED: "TERMINATED",
    WorkflowExecutionStatus.TIMED_OUT: "TIMED_OUT",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "RUNNING",
}


def status_name(status: WorkflowExecutionStatus | None) -> str:
    """The job status a user sees (``SUCCEEDED``, ``FAILED``, ...) for a workflow status."""
    return _STATUS.get(status, str(status)) if status is not None else "UNKNOWN"


# The memo key holding the digest of a job's input, set when its workflow starts.
INPUT_DIGEST_MEMO = "job_input_sha256"
# Letters, digits, ".", "_", "-": a job id names object prefixes (checkpoints/{id}/, results
# {id}/), so "/" or an empty id would reach into other jobs' objects.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


async def connect(settings: Settings) -> Client:
    """A Temporal client for the configured address and namespace."""
    return await Client.connect(settings.temporal_address, **settings.temporal_options())


def _check_job_id(job_id: str | None) -> None:
    if job_id is not None and not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use 1-200 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit")


def prepare(spec: BacktestSpec, job_id: str | None = None,
            options: JobOptions | None = None) -> JobInput:
    """Read the strategy, validate its params locally, and build the workflow input."""
    bundle = bundle_from_spec(spec.strategy)
    strategy, _ = load_strategy(bundle, spec.params)  # bad params fail here, not on a worker
    spec_json = spec.model_dump(mode="json")
    spec_json["params"] = strategy.params.model_dump(mode="json")
    if spec.events is None:  # plan exactly the kinds the strategy (and fill model) read
        from tickreplay.engine.core import data_kinds

        spec_json["events"] = list(data_kinds(strategy.events, spec.config.fill_model))
    _check_job_id(job_id)
    return JobInput(job_id or new_job_id(), spec_json, _bundle_dict(bundle), options or JobOptions())


def prepare_image(spec: BacktestSpec, image: str, job_id: str | None = None,
                  options: JobOptions | None = None) -> JobInput:
    """The workflow input of a strategy-image job: the reference is checked here, resolved to
    its digest by the job's first activity; the params are validated by the runner (the
    strategy's code is in the image, not here)."""
    from tickreplay.runner.registry import ImageRef

    ImageRef.parse(image)
    _check_job_id(job_id)
    return JobInput(job_id or new_job_id(), spec.model_dump(mode="json"), {},
                    options or JobOptions(), strategy_image=image)


def input_digest(job: JobInput) -> str:
    """sha256 of the canonical JSON of what defines a job: spec, strategy bundle, options.

    Two submissions under one id are "the same job" exactly when these digests are equal.
    """
    doc = {"spec": job.spec, "bundle": job.bundle, "options": dataclasses.asdict(job.options)}
    if job.strategy_image:  # (absent otherwise: bundle jobs keep their digests)
        doc["strategy_image"] = job.strategy_image
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _bundle_dict(bundle: StrategyBundle) -> dict[str, Any]:
    return {"files": bundle.files, "entry": bundle.entry, "class": bundle.class_name}


def new_job_id(prefix: str = "bt") -> str:
    """A fresh, unguessable job id."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


async def submit(client: Client, settings: Settings, job: JobInput) -> WorkflowHandle[Any, Any]:
    """Start the workflow (id = job id), or return the job already under that id.

    The same id with the same input (see :func:`input_digest`) is the same job, running or
    closed: it is returned and never run again. The same id with a different input is refused
    before anything starts: left alone, Temporal would start a second run after the first
    closed and its conflicting result would mark the original job FAILED.

    Raises:
        JobConflictError: The id belongs to a job with a different input.
    """
    digest = input_digest(job)
    if (handle := await _existing(client, job.job_id, digest)) is not None:
        return handle
    try:
        await client.start_workflow(
            "BacktestWorkflow", job, id=job.job_id, task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            memo={INPUT_DIGEST_MEMO: digest}, result_type=JobResult)
    except WorkflowAlreadyStartedError:
        pass  # closed in between: _existing below decides
    # Checked again after the start: a concurrent submit under the same id may have won.
    handle = await _existing(client, job.job_id, digest)
    if handle is None:  # pragma: no cover - the start above succeeded or the id exists
        raise RuntimeError(f"job {job.job_id} was started but cannot be described")
    return handle


async def _existing(client: Client, job_id: str, digest: str) -> WorkflowHandle[Any, Any] | None:
    """The job under ``job_id`` if its input has ``digest``; ``None`` if there is no job."""
    handle = client.get_workflow_handle(job_id, result_type=JobResult)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    theirs = await desc.memo_value(INPUT_DIGEST_MEMO, None)
    if theirs is None:  # started before digests were recorded: read its input instead
        theirs = await _started_input_digest(client, handle)
    if theirs != digest:
        raise JobConflictError(job_id, status_name(desc.status))
    return handle


async def _started_input_digest(client: Client, handle: WorkflowHandle[Any, Any]) -> str | None:
    async for event in handle.fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        if not payloads:
            return None
        try:
            (job, *_) = await client.data_converter.decode(payloads, [JobInput])
        except Exception:  # noqa: BLE001 - not a backtest's input (e.g. a sweep's): no match
            return None
        return input_digest(job) if isinstance(job, JobInput) else None
    return None


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
            hb = RunHeartbeat.from_details(
                await client.data_converter.decode(act.heartbeat_details.payloads))
            if hb is not None and hb.progress >= out.get("ticks_done", 0):
                out.update(ticks_done=hb.progress, sim_ts=hb.sim_ts,
                           ticks_total=hb.ticks_total or out.get("ticks_total", 0))
    return out


def results_store(settings: Settings) -> Any:
    """The results bucket."""
    from tickreplay.data.objectstore import S3Store

    return S3Store(settings.results_bucket, settings=settings)


def download_results(settings: Settings, job_id: str, out: Path) -> dict[str, Any]:
    """Copy a published result to ``out``, verified: signed by this platform, exactly the files
    its manifest lists (anything else under the job's prefix is refused), hashes matching.

    Everything is downloaded into a fresh directory and verified there first, so files already
    in ``out`` neither mask nor spoil the check, and nothing lands in ``out`` unless verified.

    Raises:
        FileNotFoundError: No published result for this job.
        ResultsError: The result does not verify (named files, signature, or hash).
    """
    import shutil
    import tempfile

    from tickreplay.results import verify_results

    store = results_store(settings)
    objects = store.list(f"{job_id}/")
    if not any(o.key == f"{job_id}/manifest.json" for o in objects):
        raise FileNotFoundError(f"job {job_id} has no published result (no manifest)")
    key = settings.platform_key()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=out) as tmp:
        for o in objects:
            dest = Path(tmp) / o.key.removeprefix(f"{job_id}/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.download(o.key, dest)
        manifest = verify_results(Path(tmp), key=key)
        for f in Path(tmp).iterdir():
            shutil.move(f, out / f.name)
    return manifest


def job_logs(settings: Settings, job_id: str) -> dict[str, Any]:
    """Events, the error (with traceback) and the strategy's log records of a job."""
    from tickreplay.data.objectstore import S3Store

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
