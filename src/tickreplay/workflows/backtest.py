"""Temporal workflows: one ``BacktestWorkflow`` per backtest, ``SweepWorkflow`` for a grid.

Deterministic code only: no I/O, no clock, no numpy. Activities are called by name so this
module never imports the activity implementations into the workflow sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TimeoutError,
    TimeoutType,
)

with workflow.unsafe.imports_passed_through():
    from tickreplay.errors import NodeUnhealthy, NoNodeCanRun, PlacementsExhausted, WorkerShutdown
    from tickreplay.workflows import search
    from tickreplay.workflows.types import (
        NON_RETRYABLE,
        AdmitInput,
        JobInput,
        JobResult,
        PlanInput,
        PlanRef,
        Progress,
        PublishInput,
        PublishOutput,
        RecordInput,
        ResolveInput,
        RunHeartbeat,
        RunInput,
        RunOutput,
        StrategyRef,
        SweepInput,
        SweepRecordInput,
        SweepResult,
        WarmInput,
        WarmResult,
        grid_points,
        sweep_job_id,
    )

# Storage hiccups are retried with capped backoff, by TIME (schedule-to-close), not by a count
# that an outage burns in seconds; errors of the inputs themselves are not retried.
STORAGE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=30), maximum_attempts=0,
                            non_retryable_error_types=NON_RETRYABLE)
STORAGE_BUDGET = timedelta(hours=2)
# Every activity heartbeats about once a second: a lost worker is noticed within this.
ACTIVITY_HEARTBEAT = timedelta(seconds=10)
# A run is attempted once per placement: the workflow itself decides what a failure means
# (a lost node is re-placed at once on another node, from the last checkpoint; a retryable
# error backs off by time). Server-side retries would go back to the dead node's own queue.
RUN_RETRY = RetryPolicy(maximum_attempts=1)
# Admission polls the metadata database for a free slot (the activity fails benignly while
# the user is at their limit); a fixed 1 s interval, for as long as the job waits.
ADMIT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=1.0,
                          maximum_attempts=0, non_retryable_error_types=NON_RETRYABLE)
# Status writes to the metadata database are retried until they land: never lost, so the
# database and Temporal agree even across worker kills and database outages.
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=30), maximum_attempts=0,
                       non_retryable_error_types=NON_RETRYABLE)


def _cause_message(err: BaseException) -> str:
    """The innermost failure's message (what the user needs to see)."""
    while getattr(err, "cause", None) is not None:
        err = err.cause  # type: ignore[attr-defined]
    return str(err)


@workflow.defn(name="BacktestWorkflow")
class BacktestWorkflow:
    """resolve_strategy -> plan_data -> warm_cache -> run_backtest (on that node) -> publish."""

    def __init__(self) -> None:
        self._status = "PENDING"
        self._stage = "queued"
        self._progress = Progress()
        self._error: str | None = None
        self._result: JobResult | None = None
        self._placements = 0
        self._image = ""  # the strategy image's pinned reference, once resolved

    @workflow.run
    async def run(self, job: JobInput) -> JobResult:
        try:
            if job.tracked:
                await self._admit(job)
            self._status = "RUNNING"
            result = await self._run(job)
        except (asyncio.CancelledError, CancelledError):
            await self._finish(job, "CANCELLED")
            raise
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):  # the run was stopped by our cancel request
                await self._finish(job, "CANCELLED")
                raise asyncio.CancelledError("cancelled by request") from e
            self._error = _cause_message(e)
            await self._finish(job, "FAILED")
            raise ApplicationError(f"backtest {job.job_id} failed: {self._error}",
                                   non_retryable=True) from e
        except ApplicationError as e:  # raised by this workflow (no node can run it)
            self._error = str(e)
            await self._finish(job, "FAILED")
            raise
        await self._finish(job, "SUCCEEDED")
        return result

    async def _admit(self, job: JobInput) -> None:
        """Wait PENDING until the metadata database admits the job (per-user and global
        limits, the user's submission order); the admitting write makes it RUNNING there."""
        self._status, self._stage = "PENDING", "queued"
        status = await workflow.execute_activity(
            "admit_job", AdmitInput(job.job_id), result_type=str,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=ADMIT_RETRY)
        if status == "CANCELLED":  # cancelled through the API before its workflow started
            raise asyncio.CancelledError(f"job {job.job_id} was cancelled before it started")
        if status != "RUNNING":
            raise ApplicationError(f"job {job.job_id} is {status} in the job database; "
                                   "not running it", non_retryable=True)
        workflow.upsert_search_attributes([search.STATUS.value_set("RUNNING")])

    async def _finish(self, job: JobInput, status: str) -> None:
        """The job's end: the status query, and for tracked jobs its search attribute and
        its row in the metadata database (written before the workflow closes)."""
        self._status = status
        if not job.tracked:
            return
        workflow.upsert_search_attributes([search.STATUS.value_set(status)])
        res = self._result
        record = RecordInput(job.job_id, status, error=self._error or "",
                             image_digest=self._image)
        if res is not None and status == "SUCCEEDED":
            record = RecordInput(job.job_id, status, result_hash=res.result_hash,
                                 results_path=res.results_url,
                                 data_fingerprint=res.data_fingerprint, metrics=res.metrics,
                                 image_digest=self._image)
        await workflow.execute_activity(
            "record_job", record, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY)

    async def _run(self, job: JobInput) -> JobResult:
        self._stage = "resolve_strategy"
        strategy = await workflow.execute_activity(
            "resolve_strategy", ResolveInput(job.job_id, job.bundle, job.strategy_image),
            result_type=StrategyRef,
            start_to_close_timeout=timedelta(minutes=2), heartbeat_timeout=ACTIVITY_HEARTBEAT,
            schedule_to_close_timeout=STORAGE_BUDGET, retry_policy=STORAGE_RETRY)
        self._image = strategy.image
        self._stage = "plan_data"
        plan = await workflow.execute_activity(
            "plan_data", PlanInput(job.job_id, job.spec), result_type=PlanRef,
            start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=ACTIVITY_HEARTBEAT,
            schedule_to_close_timeout=STORAGE_BUDGET, retry_policy=STORAGE_RETRY)
        output = await self._place_and_run(job, strategy, plan)
        self._stage = "publish_results"
        published = await workflow.execute_activity(
            "publish_results", PublishInput(job.job_id, output.staging_prefix, output.result_hash),
            result_type=PublishOutput, start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=ACTIVITY_HEARTBEAT, schedule_to_close_timeout=STORAGE_BUDGET,
            retry_policy=STORAGE_RETRY)
        self._progress.ticks_done = output.ticks
        self._result = JobResult(job.job_id, "SUCCEEDED", published.result_hash,
                                 published.results_url, output.metrics, strategy.digest,
                                 plan.fingerprint, self._placements)
        self._status = "SUCCEEDED"
        self._stage = "done"
        return self._result

    async def _place_and_run(self, job: JobInput, strategy: StrategyRef, plan: PlanRef
                             ) -> RunOutput:
        """Warm a node's cache, run there; if that node vanishes, re-place and resume.

        A lost node shows as a heartbeat timeout of the run (or a schedule-to-start timeout if
        it died before the run began); its last heartbeat names the last durable checkpoint.
        A worker shutting down hands over its final checkpoint the same way. Other retryable
        failures back off (capped) until ``retry_budget_s`` passes without progress.
        """
        opts = job.options
        resume: RunHeartbeat | None = None
        unhealthy: dict[str, str] = {}
        failing_since: Any = None
        backoff = 1.0
        while True:
            self._placements += 1
            node = await self._warm(job, plan, unhealthy)
            self._progress.ticks_total = node.ticks_total
            self._stage = "run_backtest"
            try:
                return await workflow.execute_activity(
                    "run_backtest",
                    RunInput(job.job_id, job.spec, strategy, plan, node.ticks_total, opts, resume,
                             user=job.user, placement=self._placements),
                    result_type=RunOutput, task_queue=node.task_queue,
                    start_to_close_timeout=timedelta(seconds=opts.max_run_s),
                    heartbeat_timeout=timedelta(seconds=opts.heartbeat_timeout_s),
                    schedule_to_start_timeout=timedelta(seconds=opts.schedule_to_start_s),
                    retry_policy=RUN_RETRY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except ActivityError as e:
                cause = e.cause
                lost = isinstance(cause, TimeoutError) and cause.type in (
                    TimeoutType.SCHEDULE_TO_START, TimeoutType.HEARTBEAT)
                handed_over = isinstance(cause, ApplicationError) and cause.type == WorkerShutdown.code
                retryable = isinstance(cause, ApplicationError) and not cause.non_retryable
                if not (lost or retryable):
                    raise
                if self._placements >= opts.max_placements:
                    raise ApplicationError(
                        f"gave up after {self._placements} placements (max_placements="
                        f"{opts.max_placements}); the last, on node {node.node}: "
                        f"{_cause_message(e)}", type=PlacementsExhausted.code,
                        non_retryable=True) from e
                details = list((cause.last_heartbeat_details if isinstance(cause, TimeoutError)
                                else cause.details) or [])  # type: ignore[union-attr]
                ticks_before = resume.ticks_done if resume else 0
                resume = RunHeartbeat.resume_point(details, resume)
                if lost or handed_over:
                    workflow.logger.info("node %s lost; re-placing from %s", node.node, resume)
                    continue
                if (resume.ticks_done if resume else 0) > ticks_before:
                    failing_since, backoff = None, 1.0
                failing_since = failing_since or workflow.now()
                if (workflow.now() - failing_since).total_seconds() > opts.retry_budget_s:
                    raise
                workflow.logger.info("run failed (%s); retrying in %.0f s", cause, backoff)
                await workflow.sleep(timedelta(seconds=backoff))
                backoff = min(backoff * 2, 30.0)

    async def _warm(self, job: JobInput, plan: PlanRef, unhealthy: dict[str, str]) -> WarmResult:
        """warm_cache on any healthy node; fails the job if only unhealthy nodes answer."""
        self._stage = "warm_cache"
        while True:
            try:
                return await workflow.execute_activity(
                    "warm_cache", WarmInput(job.job_id, plan.key, sorted(unhealthy)),
                    result_type=WarmResult, start_to_close_timeout=timedelta(hours=2),
                    heartbeat_timeout=ACTIVITY_HEARTBEAT, retry_policy=STORAGE_RETRY,
                    schedule_to_close_timeout=timedelta(seconds=job.options.find_node_s)
                    if unhealthy else STORAGE_BUDGET)
            except ActivityError as e:
                cause = e.cause
                if isinstance(cause, ApplicationError) and cause.type == NodeUnhealthy.code:
                    d = (list(cause.details or []) or [{}])[0]
                    unhealthy[str(d.get("node"))] = str(d.get("reason"))
                    workflow.logger.warning("%s; placing the run elsewhere", cause.message)
                    continue
                # Only "no healthy node answered in time" means that; a cancel or a healthy
                # node's own non-retryable error (corrupt data) is reported as itself.
                if unhealthy and not isinstance(cause, CancelledError) and not (
                        isinstance(cause, ApplicationError) and cause.non_retryable):
                    raise ApplicationError(
                        "no node can run this job: " + "; ".join(
                            f"node {n}: {r}" for n, r in sorted(unhealthy.items())),
                        type=NoNodeCanRun.code, non_retryable=True) from e
                raise

    @workflow.signal(name="progress")
    def on_progress(self, progress: Progress) -> None:
        """Sent by run_backtest about once a minute (after a resume it restarts from the checkpoint)."""
        self._progress = dataclasses.replace(progress, ticks_total=progress.ticks_total
                                             or self._progress.ticks_total)

    @workflow.query(name="status")
    def status(self) -> dict[str, Any]:
        """Status, stage, progress (ticks done/total, simulated time) and, at the end, results."""
        out: dict[str, Any] = {
            "status": self._status,
            "stage": self._stage,
            "ticks_done": self._progress.ticks_done,
            "ticks_total": self._progress.ticks_total,
            "sim_ts": self._progress.sim_ts,
            "placements": self._placements,
            "error": self._error,
        }
        if self._result is not None:
            out.update(result_hash=self._result.result_hash,
                       results_url=self._result.results_url, metrics=self._result.metrics)
        return out


@workflow.defn(name="SweepWorkflow")
class SweepWorkflow:
    """Run every grid point as a child BacktestWorkflow, at most ``max_concurrent`` at once."""

    def __init__(self) -> None:
        self._running = 0
        self._done = 0
        self._total = 0

    @workflow.run
    async def run(self, sweep: SweepInput) -> SweepResult:
        points = grid_points(sweep.grid)
        self._total = len(points)
        rows: list[dict[str, Any]] = [{} for _ in points]

        # A semaphore, not wait_condition + counter: several waiters woken in one activation
        # would all see a free slot before any of them took it.
        slots = asyncio.Semaphore(sweep.max_concurrent)
        base = sweep.base
        attrs = (search.job_attributes(base.user, "PENDING", base.strategy_digest)
                 if base.tracked else None)
        # A tracked point must record its own end when the sweep goes (cancel, failure):
        # asked to cancel, it does; terminated (the default), its row would stay RUNNING.
        close = (workflow.ParentClosePolicy.REQUEST_CANCEL if base.tracked
                 else workflow.ParentClosePolicy.TERMINATE)

        async def one(i: int, params: dict[str, Any]) -> None:
            job_id = sweep_job_id(sweep.sweep_id, i)
            spec = dict(base.spec)
            spec["params"] = {**spec.get("params", {}), **params}
            row: dict[str, Any] = {"job_id": job_id, "params": params}
            async with slots:
                self._running += 1
                try:
                    result = await workflow.execute_child_workflow(
                        BacktestWorkflow.run, JobInput(job_id, spec, base.bundle, base.options,
                                                       tracked=base.tracked, user=base.user,
                                                       strategy_digest=base.strategy_digest,
                                                       strategy_image=base.strategy_image),
                        id=job_id, search_attributes=attrs, parent_close_policy=close)
                    row.update(status="SUCCEEDED", result_hash=result.result_hash,
                               value=result.metrics.get(sweep.metric), metrics=result.metrics)
                except ChildWorkflowError as e:
                    row.update(status="FAILED", error=_cause_message(e), value=None)
                finally:
                    self._running -= 1
                    self._done += 1
            rows[i] = row

        if sweep.base.tracked:
            workflow.upsert_search_attributes([search.STATUS.value_set("RUNNING")])
        try:
            await asyncio.gather(*(one(i, p) for i, p in enumerate(points)))
        except (asyncio.CancelledError, CancelledError):
            if sweep.base.tracked:  # points not started yet end CANCELLED with the sweep
                workflow.upsert_search_attributes([search.STATUS.value_set("CANCELLED")])
                await workflow.execute_activity(
                    "record_sweep", SweepRecordInput(sweep.sweep_id, "CANCELLED", rows),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
            raise
        ok = [r for r in rows if r.get("value") is not None]
        rest = [r for r in rows if r.get("value") is None]
        ok.sort(key=lambda r: r["value"], reverse=sweep.maximize)
        ranked = ok + rest
        for rank, r in enumerate(ranked, 1):
            r["rank"] = rank
        if sweep.base.tracked:
            workflow.upsert_search_attributes([search.STATUS.value_set("SUCCEEDED")])
            await workflow.execute_activity(
                "record_sweep", SweepRecordInput(sweep.sweep_id, "SUCCEEDED", ranked),
                start_to_close_timeout=timedelta(seconds=30), retry_policy=DB_RETRY)
        return SweepResult(sweep.sweep_id, sweep.metric, ranked)

    @workflow.query(name="status")
    def status(self) -> dict[str, Any]:
        """How many grid points are done / running / in total."""
        return {"done": self._done, "running": self._running, "total": self._total}
