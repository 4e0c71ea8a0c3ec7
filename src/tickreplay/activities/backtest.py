"""Temporal activities of a backtest. All I/O of the orchestration lives here.

Every activity is safe to repeat: uploads are content-addressed or attempt-scoped, the result
is committed by a conditional manifest write, and a resumed run starts from a checkpoint that
was durably stored before its key was ever heartbeated.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tickreplay.settings import Settings
from tickreplay.workflows import types as t

HEARTBEAT_EVERY_S = 1.0
# Each progress signal costs ~4 history events: every 60 s keeps a 7-day run far below the
# 51,200-event limit. `tickreplay status` reads fresher progress from the heartbeat.
SIGNAL_EVERY_S = 60.0


class BacktestActivities:
    """Activities bound to one worker node: its settings, cache and own task queue."""

    def __init__(self, settings: Settings, node_queue: str, node: str) -> None:
        from tickreplay.data.cache import PartitionCache

        self.settings = settings
        self.node_queue = node_queue
        self.node = node
        self.cache = PartitionCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
        self.pool: RunnerPool | None = None  # created on first use, inside the event loop

    # ------------------------------------------------------------------ helpers
    def _artifacts(self) -> Any:
        from tickreplay.data.store import open_store

        return open_store(f"s3://{self.settings.artifacts_bucket}", self.settings)

    def _event(self, job_id: str, kind: str, /, **fields: Any) -> None:
        """Append an operational event to the job's log (one small object per event)."""
        rec = {"ts": time.time(), "kind": kind, "node": self.node, **fields}
        key = f"jobs/{job_id}/events/{time.time_ns():020d}-{kind}.json"
        try:
            self._artifacts().put_bytes(key, json.dumps(rec, default=str).encode())
        except Exception:  # noqa: BLE001 - an event log hiccup must never fail the job
            activity.logger.warning("could not write event %s for %s", kind, job_id)

    # ------------------------------------------------------------------ activities
    @activity.defn(name="resolve_strategy")
    def resolve_strategy(self, inp: t.ResolveInput) -> t.StrategyRef:
        """Store the strategy bundle content-addressed; its sha256 digest names it for good."""
        from tickreplay.data.store import ObjectExistsError
        from tickreplay.strategy.loader import StrategyBundle

        def work() -> t.StrategyRef:
            try:
                bundle = StrategyBundle(inp.bundle["files"], inp.bundle["entry"],
                                        inp.bundle.get("class"), "")
                bundle = StrategyBundle.from_bytes(bundle.to_bytes())
            except (KeyError, TypeError, ValueError) as e:
                raise ApplicationError(f"invalid strategy bundle: {e}", type=t.SPEC_ERROR,
                                       non_retryable=True) from None
            key = f"strategies/{bundle.digest}.json"
            store = self._artifacts()
            try:
                store.put_bytes(key, bundle.to_bytes(), if_none_match=True)
            except ObjectExistsError:
                pass  # same digest, same bytes
            self._event(inp.job_id, "strategy_resolved", digest=bundle.digest)
            return t.StrategyRef(bundle.digest, key)

        return work()

    @activity.defn(name="plan_data")
    def plan_data(self, inp: t.PlanInput) -> t.PlanRef:
        """Partitions + fingerprint, stored as JSON; an empty plan is a non-retryable error."""
        from tickreplay.data.catalog import plan_data
        from tickreplay.data.errors import EmptyPlanError
        from tickreplay.data.store import open_store
        from tickreplay.spec import BacktestSpec, SpecError

        def work() -> t.PlanRef:
            try:
                spec = BacktestSpec.parse(inp.spec)
                plan = plan_data(open_store(spec.data_url, self.settings), spec.symbols,
                                 spec.start, spec.end)
            except EmptyPlanError as e:
                raise ApplicationError(str(e), type=t.EMPTY_PLAN, non_retryable=True) from None
            except SpecError as e:
                raise ApplicationError(str(e), type=t.SPEC_ERROR, non_retryable=True) from None
            key = f"jobs/{inp.job_id}/plan-{plan.fingerprint[:16]}.json"
            self._artifacts().put_bytes(key, json.dumps(plan.to_dict()).encode())
            self._event(inp.job_id, "planned", fingerprint=plan.fingerprint,
                        partitions=len(plan.partitions))
            return t.PlanRef(key, plan.fingerprint, len(plan.partitions))

        return work()

    @activity.defn(name="warm_cache")
    def warm_cache(self, inp: t.WarmInput) -> t.WarmResult:
        """Fetch the plan's partitions into this node's cache; return this node's own queue."""
        from tickreplay.backtest import count_ticks, fetch_plan
        from tickreplay.data.catalog import DataPlan
        from tickreplay.data.errors import DataError
        from tickreplay.data.store import open_store

        def work() -> t.WarmResult:
            plan = DataPlan.from_dict(json.loads(self._artifacts().get_bytes(inp.plan_key)))
            store = open_store(plan.url, self.settings)
            try:
                paths = fetch_plan(plan, store, self.cache, on_fetched=activity.heartbeat)
            except DataError as e:
                raise ApplicationError(str(e), type=t.DATA_ERROR, non_retryable=True) from None
            total = count_ticks(paths)
            self._event(inp.job_id, "cache_warm", partitions=len(paths), ticks_total=total,
                        task_queue=self.node_queue)
            return t.WarmResult(self.node_queue, self.node, total)

        return work()

    @activity.defn(name="publish_results")
    def publish_results(self, inp: t.PublishInput) -> t.PublishOutput:
        """Verify the staged result and commit it under results/{job_id}/, manifest last."""
        from tickreplay.data.store import S3Store
        from tickreplay.results import (
            ResultConflictError,
            ResultsError,
            publish_results,
            verify_results,
        )

        def work() -> t.PublishOutput:
            artifacts = self._artifacts()
            results = S3Store(self.settings.results_bucket, settings=self.settings)
            results.ensure_bucket()
            with tempfile.TemporaryDirectory(prefix="tickreplay-publish-") as tmp:
                for obj in artifacts.list(inp.staging_prefix + "/"):
                    artifacts.download(obj.key, Path(tmp) / obj.key.rsplit("/", 1)[-1])
                try:
                    manifest = verify_results(Path(tmp))
                    if manifest["result_hash"] != inp.result_hash:
                        raise ResultsError("staged result hash does not match the run's")
                    publish_results(Path(tmp), results, inp.job_id)
                except ResultConflictError as e:
                    raise ApplicationError(str(e), type=t.RESULT_CONFLICT,
                                           non_retryable=True) from None
            url = f"s3://{self.settings.results_bucket}/{inp.job_id}/"
            self._event(inp.job_id, "published", results_url=url, result_hash=inp.result_hash)
            return t.PublishOutput(url, inp.result_hash)

        return work()

    @activity.defn(name="run_backtest")
    async def run_backtest(self, inp: t.RunInput) -> t.RunOutput:
        """Run the engine in a child process; heartbeat checkpoint keys; resume on retry."""
        info = activity.info()
        resume = inp.resume
        details = list(info.heartbeat_details or [])
        if details and isinstance(details[0], dict) and details[0].get("checkpoint_key"):
            resume = details[0]
        state: dict[str, Any] = {
            "checkpoint_key": (resume or {}).get("checkpoint_key"),
            "ticks_done": int((resume or {}).get("ticks_done", 0)),
            "progress": int((resume or {}).get("ticks_done", 0)),
            "ticks_total": inp.ticks_total,
            "sim_ts": 0,
            "node": self.node,
        }
        self._event(inp.job_id, "run_started", attempt=info.attempt,
                    resume_from=state["checkpoint_key"], ticks_done=state["ticks_done"])
        job = {
            "job_id": inp.job_id, "spec": inp.spec, "strategy_key": inp.strategy.key,
            "strategy_digest": inp.strategy.digest, "plan_key": inp.plan.key,
            "ticks_total": inp.ticks_total, "checkpoint_every_s": inp.options.checkpoint_every_s,
            "resume": {k: state[k] for k in ("checkpoint_key", "ticks_done")},
            "memory_mb": self.settings.run_memory_mb,
        }
        if self.pool is None:
            self.pool = RunnerPool(self.settings)
        runner = _Runner(self.pool, job)
        await runner.start()
        activity.heartbeat(dict(state))
        shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        last_signal = 0.0
        last_progress = time.monotonic()
        stopping = False
        try:
            while True:
                for msg in runner.drain():
                    kind = msg["type"]
                    if kind in ("progress", "checkpoint"):
                        last_progress = time.monotonic()
                    if kind == "progress":
                        state.update(progress=msg["ticks_done"], sim_ts=msg["sim_ts"])
                    elif kind == "checkpoint":
                        state.update(checkpoint_key=msg["key"], ticks_done=msg["ticks_done"])
                        activity.heartbeat(dict(state))
                    elif kind == "started":
                        self._event(inp.job_id, "runner_started", pid=msg["pid"],
                                    resumed_from=msg["resumed_from"])
                    elif kind == "warning":
                        state.update(checkpoint_key=None, ticks_done=0)
                        self._event(inp.job_id, "checkpoint_discarded", message=msg["message"])
                    elif kind == "stopped":
                        self._event(inp.job_id, "run_stopped", ticks_done=state["ticks_done"],
                                    checkpoint_key=state["checkpoint_key"])
                    elif kind == "done":
                        await self._signal_progress(info.workflow_id, state, final=msg["ticks"])
                        self._event(inp.job_id, "run_finished", ticks=msg["ticks"],
                                    result_hash=msg["result_hash"],
                                    resumed_from_ticks=msg["resumed_from_ticks"])
                        await runner.wait()
                        return t.RunOutput(msg["staging_prefix"], msg["result_hash"],
                                           msg["metrics"], msg["ticks"], msg["resumed_from_ticks"])
                    elif kind == "error":
                        await runner.wait()
                        self._fail(inp.job_id, msg, runner)
                if runner.finished():
                    code = await runner.wait()
                    if stopping:
                        activity.heartbeat(dict(state))
                        raise ApplicationError(
                            f"worker shutting down; checkpoint at {state['ticks_done']} ticks",
                            dict(state), type=t.WORKER_SHUTDOWN)
                    raise ApplicationError(
                        f"runner exited with code {code} without a result; "
                        f"stderr: {runner.stderr_tail()}", type="RunnerDied")
                if shutdown.done() and not stopping:
                    stopping = True
                    activity.logger.info("worker shutdown: asking runner of %s for a final "
                                         "checkpoint", inp.job_id)
                    runner.request_stop()
                if time.monotonic() - last_progress > inp.options.stall_timeout_s:
                    runner.kill()
                    await runner.wait()
                    self._fail(inp.job_id, {
                        "kind": t.STRATEGY_TIMEOUT, "retryable": False,
                        "message": f"no progress for {inp.options.stall_timeout_s:.0f} s "
                                   f"(strategy stuck in a loop?) at tick {state['progress']}",
                        "traceback": ""}, runner)
                activity.heartbeat(dict(state))
                if time.monotonic() - last_signal >= SIGNAL_EVERY_S:
                    last_signal = time.monotonic()
                    await self._signal_progress(info.workflow_id, state)
                await runner.next_message(HEARTBEAT_EVERY_S)
        except asyncio.CancelledError:
            runner.kill()
            await runner.wait()
            self._event(inp.job_id, "run_cancelled", ticks_done=state["progress"])
            raise
        finally:
            shutdown.cancel()
            runner.kill()

    def _fail(self, job_id: str, msg: dict[str, Any], runner: _Runner) -> None:
        """Record the failure (with traceback) in the job's logs and raise it, classified."""
        err = {"kind": msg["kind"], "message": msg["message"], "traceback": msg.get("traceback"),
               "stderr": runner.stderr_tail(), "node": self.node}
        try:
            self._artifacts().put_bytes(f"jobs/{job_id}/error.json",
                                        json.dumps(err, indent=2).encode())
        except Exception:  # noqa: BLE001 - the error still reaches the workflow
            activity.logger.warning("could not store the error of %s", job_id)
        self._event(job_id, "run_failed", error_type=msg["kind"], message=msg["message"])
        raise ApplicationError(msg["message"], {"traceback": msg.get("traceback")},
                               type=msg["kind"], non_retryable=not msg.get("retryable", False))

    async def _signal_progress(self, workflow_id: str, state: dict[str, Any],
                               final: int | None = None) -> None:
        """Tell the workflow how far we are (so its status query can answer without I/O)."""
        try:
            handle = activity.client().get_workflow_handle(workflow_id)
            await handle.signal("progress", t.Progress(
                final if final is not None else state["progress"], state["ticks_total"],
                state["sim_ts"]))
        except Exception:  # noqa: BLE001 - progress is best effort; the run goes on
            activity.logger.debug("progress signal failed", exc_info=True)


class RunnerPool:
    """Keeps one runner process spawned ahead of need (imports done, waiting for its job)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._spare: asyncio.Task[tuple[asyncio.subprocess.Process, Any]] | None = None

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, Any]:
        from tickreplay.runner.child import die_with_parent

        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the _Runner using it
        env = {**os.environ, **self.settings.to_env()}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tickreplay.runner.child", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env,
            preexec_fn=die_with_parent, start_new_session=True, limit=2**24)
        return proc, stderr

    async def acquire(self) -> tuple[asyncio.subprocess.Process, Any]:
        """A live, idle runner process; a replacement starts spawning at once."""
        proc, stderr = None, None
        spare, self._spare = self._spare, None  # taken before awaiting: never handed out twice
        if spare is not None:
            try:
                proc, stderr = await spare
            except OSError:
                proc = None
            if proc is not None and proc.returncode is not None:
                proc = None
        if proc is None:
            proc, stderr = await self._spawn()
        self._spare = asyncio.ensure_future(self._spawn())
        return proc, stderr

    async def close(self) -> None:
        """Let the spare runner exit (EOF on its stdin)."""
        if self._spare is not None:
            try:
                proc, stderr = await self._spare
            except OSError:
                return
            if proc.stdin is not None:
                proc.stdin.close()
            await proc.wait()
            stderr.close()
            self._spare = None


class _Runner:
    """The child process running the engine, and its message pipe."""

    def __init__(self, pool: RunnerPool, job: dict[str, Any]) -> None:
        self.pool = pool
        self.job = job
        self.proc: asyncio.subprocess.Process | None = None
        self.messages: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self._stderr: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc, self._stderr = await self.pool.acquire()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.job).encode() + b"\n")
        await self.proc.stdin.drain()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.messages.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # stray print from user code
            self._event.set()
        self._event.set()

    def drain(self) -> list[dict[str, Any]]:
        out, self.messages = self.messages, []
        self._event.clear()
        return out

    async def next_message(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    def finished(self) -> bool:
        return self._reader is not None and self._reader.done() and not self.messages

    def request_stop(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b"stop\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    def stderr_tail(self, n: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - n))
        return self._stderr.read().decode(errors="replace")
