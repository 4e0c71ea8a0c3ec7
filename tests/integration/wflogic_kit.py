"""Test activities for the workflow-logic tests: same names and dataclasses as the real ones.

The real activities (tickreplay.activities.backtest) need S3, a cache and runner processes.
These stand-ins are registered under the SAME activity names (the workflow calls activities by
name), take and return the SAME dataclasses, and do whatever a test scripts: return at once,
raise a given ``ApplicationError``, heartbeat until cancelled, or go silent like a lost node.
Every call is recorded (input, task queue = node, whether it saw a cancellation).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from tickreplay.workflows.backtest import BacktestWorkflow, SweepWorkflow
from tickreplay.workflows.types import (
    PlanInput,
    PlanRef,
    PublishInput,
    PublishOutput,
    ResolveInput,
    RunInput,
    RunOutput,
    StrategyRef,
    WarmInput,
    WarmResult,
)

STAGES = ["resolve_strategy", "plan_data", "warm_cache", "run_backtest", "publish_results"]
TICKS_TOTAL = 1000

Handler = Callable[[Any], Awaitable[Any]]


@dataclass
class Call:
    """One activity invocation as the test activity saw it."""

    name: str
    inp: Any
    node: str  # the task queue's node suffix ("" for the shared queue)
    cancelled: bool = False


@dataclass
class Fakes:
    """Scriptable stand-ins for the five activities, bound to one test's task queues.

    ``on[name]`` replaces an activity's behaviour: an async function of the input returning the
    activity's result (or raising). Without one, each activity succeeds at once; ``warm_cache``
    places the run on node ``"a"``.
    """

    queue: str = field(default_factory=lambda: f"wfl-{uuid.uuid4().hex[:10]}")
    on: dict[str, Handler] = field(default_factory=dict)
    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    started: dict[str, asyncio.Event] = field(
        default_factory=lambda: defaultdict(asyncio.Event))
    cancelled: dict[str, asyncio.Event] = field(
        default_factory=lambda: defaultdict(asyncio.Event))

    def node_queue(self, node: str) -> str:
        return f"{self.queue}-node-{node}"

    def placed_on(self, node: str, ticks_total: int = TICKS_TOTAL) -> WarmResult:
        return WarmResult(self.node_queue(node), node, ticks_total)

    async def _do(self, name: str, inp: Any, default: Callable[[], Any]) -> Any:
        tq = activity.info().task_queue
        call = Call(name, inp, tq.removeprefix(f"{self.queue}-node-") if tq != self.queue else "")
        self.calls[name].append(call)
        self.started[name].set()
        try:
            handler = self.on.get(name)
            return await handler(inp) if handler is not None else default()
        except asyncio.CancelledError:
            call.cancelled = True
            self.cancelled[name].set()
            raise

    # -------------------------------------------------------------- the five activities
    @activity.defn(name="resolve_strategy")
    async def resolve_strategy(self, inp: ResolveInput) -> StrategyRef:
        return await self._do("resolve_strategy", inp,
                              lambda: StrategyRef("strat-digest", "strategies/s.json"))

    @activity.defn(name="plan_data")
    async def plan_data(self, inp: PlanInput) -> PlanRef:
        return await self._do("plan_data", inp,
                              lambda: PlanRef(f"jobs/{inp.job_id}/plan.json", "data-fp", 3))

    @activity.defn(name="warm_cache")
    async def warm_cache(self, inp: WarmInput) -> WarmResult:
        return await self._do("warm_cache", inp, lambda: self.placed_on("a"))

    @activity.defn(name="run_backtest")
    async def run_backtest(self, inp: RunInput) -> RunOutput:
        return await self._do("run_backtest", inp, lambda: run_output(inp))

    @activity.defn(name="publish_results")
    async def publish_results(self, inp: PublishInput) -> PublishOutput:
        return await self._do("publish_results", inp, lambda: PublishOutput(
            f"s3://results/{inp.job_id}/", inp.result_hash))


def _resume_point(resume: Any) -> tuple[str, int] | None:
    """(checkpoint_key, ticks_done) of ``RunInput.resume`` (a dataclass; a dict in older code)."""
    if resume is None:
        return None
    get = resume.get if isinstance(resume, dict) else lambda k: getattr(resume, k, None)
    return (get("checkpoint_key"), int(get("ticks_done") or 0))


def resumed_from(call: Call) -> tuple[str, int] | None:
    """Where the workflow told this run to resume from, or ``None`` (from the start)."""
    return _resume_point(call.inp.resume)


def run_output(inp: RunInput, metrics: dict[str, Any] | None = None) -> RunOutput:
    resumed = (_resume_point(inp.resume) or ("", 0))[1]
    return RunOutput(f"staging/{inp.job_id}", f"hash-{inp.job_id}", metrics or {"sharpe": 1.0},
                     inp.ticks_total, resumed)


async def beat_until_cancelled(_: Any = None, details: Any = None) -> Any:
    """A healthy long activity: heartbeats (which is how a cancel reaches it) until cancelled."""
    while True:
        activity.heartbeat(*([details] if details is not None else []))
        await asyncio.sleep(0.05)


@asynccontextmanager
async def workers(client: Client, fakes: Fakes, nodes: list[str]) -> AsyncIterator[None]:
    """The shared queue (workflows + light activities) and one run queue per live node.

    Laid out as tickreplay.workers.main does; heartbeats are sent every 0.1 s (not the default
    0.8 x timeout) so cancels arrive at once and a silent activity is the only one timed out.
    """
    beat = timedelta(milliseconds=100)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(Worker(
            client, task_queue=fakes.queue, workflows=[BacktestWorkflow, SweepWorkflow],
            activities=[fakes.resolve_strategy, fakes.plan_data, fakes.warm_cache,
                        fakes.publish_results],
            max_cached_workflows=0,  # replay every task: nondeterminism shows at once
            max_heartbeat_throttle_interval=beat, default_heartbeat_throttle_interval=beat))
        for node in nodes:
            await stack.enter_async_context(Worker(
                client, task_queue=fakes.node_queue(node), activities=[fakes.run_backtest],
                max_heartbeat_throttle_interval=beat, default_heartbeat_throttle_interval=beat))
        yield
