"""Temporal activities of a backtest. All I/O of the orchestration lives here.

Every activity is safe to repeat: uploads are content-addressed or attempt-scoped, the result
is committed by a conditional manifest write, and a resumed run starts from a checkpoint that
was durably stored before its key was ever heartbeated.

Trust boundary: the worker holds the storage credentials and the platform's signing key; the
runner process (user code) holds neither. The worker fetches everything a run reads, checks a
checkpoint's seal and identity before handing it over, and seals checkpoints and signs results
that the runner leaves in its work directory.

Faults: every activity heartbeats about once a second (a lost worker is noticed within the
heartbeat timeout, in every stage), and object-store calls wait out an outage for
``outage_budget_s`` with capped backoff instead of burning a retry count in seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from temporalio import activity

from tickreplay.activities.errors import reported_error, reports_errors
from tickreplay.errors import (
    AvoidNode,
    IntegrityError,
    NodeUnhealthy,
    ResultConflictError,
    ResultsError,
    RunnerDied,
    SpecError,
    StrategyTimeout,
    WorkerShutdown,
)
from tickreplay.runner import protocol
from tickreplay.runner.protocol import RunnerJob
from tickreplay.settings import Settings
from tickreplay.workflows import types as t

if TYPE_CHECKING:
    from tickreplay.runner.pool import RunnerProcess

T = TypeVar("T")
HEARTBEAT_EVERY_S = 1.0
# Each progress signal costs ~4 history events: every 60 s keeps a 7-day run far below the
# 51,200-event limit. `tickreplay status` reads fresher progress from the heartbeat.
SIGNAL_EVERY_S = 60.0
# What the run loop sees when the runner said nothing for a second (it still heartbeats).
_QUIET = protocol.Progress(phase="(quiet)")



@contextmanager
def pulse(details: Callable[[], Any] | None = None) -> Iterator[None]:
    """Heartbeat about every second from a side thread while a SYNC activity works.

    Why: a download or upload of one big object can take longer than the heartbeat timeout;
    heartbeating only between steps made a lost worker invisible for minutes.
    """
    ctx = contextvars.copy_context()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_EVERY_S):
            try:
                ctx.run(activity.heartbeat, *([details()] if details else []))
            except Exception:  # noqa: BLE001 - a heartbeat hiccup must not kill the activity
                activity.logger.debug("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, daemon=True, name="tickreplay-pulse")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run_identity(inp: t.RunInput) -> dict[str, Any]:
    """What a checkpoint of this run must be bound to: it restores into nothing else."""
    from tickreplay.engine.core import ENGINE_VERSION

    return {"job_id": inp.job_id, "strategy_digest": inp.strategy.digest,
            "data_fingerprint": inp.plan.fingerprint, "spec": inp.spec,
            "engine_version": ENGINE_VERSION}


def _read_regular(path: Path) -> bytes:
    """Bytes of a regular file, refusing symlinks (the runner must not point us elsewhere)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


class BacktestActivities:
    """Activities bound to one worker node: its settings, cache, key and own task queue."""

    def __init__(self, settings: Settings, node_queue: str, node: str) -> None:
        from tickreplay.data.cache import PartitionCache

        self.settings = settings
        self.node_queue = node_queue
        self.node = node
        self.cache = PartitionCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
        self.key = settings.platform_key(create=True)
        self.pool: Any = None  # RunnerPool, created on first use inside the event loop
        # Events are best effort and must never block a heartbeating event loop (an S3
        # outage would otherwise stall it): one background thread writes them in order.
        self._events = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="events")

    # ------------------------------------------------------------------ helpers
    def _artifacts(self) -> Any:
        from tickreplay.data.objectstore import open_store

        return open_store(f"s3://{self.settings.artifacts_bucket}", self.settings)

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        from tickreplay.data.retry import with_outage_retry

        return with_outage_retry(fn, what, self.settings.outage_budget_s)

    def _event(self, job_id: str, kind: str, /, **fields: Any) -> None:
        """Append an operational event to the job's log (one small object per event)."""
        rec = {"ts": time.time(), "kind": kind, "node": self.node, **fields}
        key = f"jobs/{job_id}/events/{time.time_ns():020d}-{kind}.json"

        def write() -> None:
            try:
                self._artifacts().put_bytes(key, json.dumps(rec, default=str).encode())
            except Exception:  # noqa: BLE001 - an event log hiccup must never fail the job
                activity.logger.warning("could not write event %s for %s", kind, job_id)

        self._events.submit(write)

    def flush_events(self, timeout: float = 30.0) -> None:
        """Wait until every queued event is written (or failed)."""
        self._events.submit(lambda: None).result(timeout)

    @staticmethod
    def _beat(state: t.RunHeartbeat) -> None:
        """Heartbeat a snapshot of ``state`` (the SDK sends details later, batched)."""
        activity.heartbeat(copy.deepcopy(state))

    # ------------------------------------------------------------------ activities
    @activity.defn(name="resolve_strategy")
    @reports_errors
    def resolve_strategy(self, inp: t.ResolveInput) -> t.StrategyRef:
        """Store the strategy bundle content-addressed; its sha256 digest names it for good."""
        from tickreplay.data.objectstore import ObjectExistsError
        from tickreplay.strategy.loader import StrategyBundle

        try:
            bundle = StrategyBundle(inp.bundle["files"], inp.bundle["entry"],
                                    inp.bundle.get("class"), "")
            bundle = StrategyBundle.from_bytes(bundle.to_bytes())
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"invalid strategy bundle: {e}") from None
        # Addressed by the whole bundle (sources AND entry/class): two classes of one file
        # share a source digest but are different strategies.
        raw = bundle.to_bytes()
        key = f"strategies/{hashlib.sha256(raw).hexdigest()}.json"
        store = self._artifacts()

        def put() -> None:
            try:
                store.put_bytes(key, raw, if_none_match=True)
            except ObjectExistsError:
                pass  # same address, same bytes

        with pulse():
            self._retry(put, "store strategy bundle")
        self._event(inp.job_id, "strategy_resolved", digest=bundle.digest)
        return t.StrategyRef(bundle.digest, key)

    @activity.defn(name="plan_data")
    @reports_errors
    def plan_data(self, inp: t.PlanInput) -> t.PlanRef:
        """Partitions + fingerprint, stored as JSON; an empty plan is a non-retryable error."""
        from tickreplay.data.catalog import plan_data
        from tickreplay.data.objectstore import open_store
        from tickreplay.spec import BacktestSpec

        spec = BacktestSpec.parse(inp.spec)
        with pulse():
            plan = self._retry(lambda: plan_data(open_store(spec.data_url, self.settings),
                                                 spec.symbols, spec.start, spec.end), "plan data")
        key = f"jobs/{inp.job_id}/plan-{plan.fingerprint[:16]}.json"
        with pulse():
            self._retry(lambda: self._artifacts().put_bytes(key, json.dumps(plan.to_dict()).encode()),
                        "store plan")
        self._event(inp.job_id, "planned", fingerprint=plan.fingerprint,
                    partitions=len(plan.partitions))
        return t.PlanRef(key, plan.fingerprint, len(plan.partitions))

    @activity.defn(name="warm_cache")
    @reports_errors
    def warm_cache(self, inp: t.WarmInput) -> t.WarmResult:
        """Fetch the plan's partitions into this node's cache; return this node's own queue.

        A node whose cache is unusable (read-only, full) refuses with ``NodeUnhealthy`` naming
        itself and the reason, before downloading anything; the workflow then places the run
        on another node. So does a node the workflow already found unhealthy.
        """
        from tickreplay.runner.driver import count_ticks

        self._event(inp.job_id, "warm_started", attempt=activity.info().attempt)
        if self.node in (inp.avoid_nodes or []):
            raise AvoidNode(f"node {self.node} was found unhealthy for this job; "
                            "leaving it to another node")
        with pulse():
            time.sleep(self.settings.fault_delay_s("warm_cache"))
            plan = self._load_plan(inp.plan_key)
            problem = self.cache.health_problem(self.cache.missing_bytes(plan.partitions))
            if problem is not None:
                self._event(inp.job_id, "node_unhealthy", reason=problem)
                raise NodeUnhealthy(f"node {self.node}: {problem}",
                                    details={"node": self.node, "reason": problem})
            paths = self._fetch_data(plan)
            total = count_ticks(paths)
        self._event(inp.job_id, "cache_warm", partitions=len(paths), ticks_total=total,
                    task_queue=self.node_queue)
        return t.WarmResult(self.node_queue, self.node, total)

    def _fetch_data(self, plan: Any) -> dict[str, Path]:
        """The plan's partitions as files of this node's cache (downloaded and checked if new)."""
        from tickreplay.data.objectstore import open_store
        from tickreplay.runner.driver import fetch_plan

        store = open_store(plan.url, self.settings)
        return self._retry(lambda: fetch_plan(plan, store, self.cache), "fetch data")

    def _load_plan(self, key: str) -> Any:
        from tickreplay.data.catalog import DataPlan

        return DataPlan.from_dict(json.loads(self._retry(lambda: self._artifacts().get_bytes(key),
                                                         "read plan")))

    @activity.defn(name="publish_results")
    @reports_errors
    def publish_results(self, inp: t.PublishInput) -> t.PublishOutput:
        """Verify the staged result (signature, files, hash); commit it under results/{job_id}/.

        Only the files the signed staged manifest lists are copied, so bytes anyone else put
        under the staging prefix never reach the result. After the commit, the job's
        checkpoints and staging objects are removed (results are never touched).
        """
        from tickreplay.data.objectstore import S3Store
        from tickreplay.results import publish_results
        from tickreplay.results.files import MANIFEST, read_manifest

        self._event(inp.job_id, "publish_started", attempt=activity.info().attempt)
        artifacts = self._artifacts()
        results = S3Store(self.settings.results_bucket, settings=self.settings)

        def work() -> None:
            results.ensure_bucket()
            with tempfile.TemporaryDirectory(prefix="tickreplay-publish-") as tmp:
                artifacts.download(f"{inp.staging_prefix}/{MANIFEST}", Path(tmp) / MANIFEST)
                manifest = read_manifest(Path(tmp))
                for name in sorted(manifest.get("files", {})):
                    if "/" in name or name.startswith("."):
                        raise ResultsError(f"staged manifest lists a bad file name {name!r}")
                    artifacts.download(f"{inp.staging_prefix}/{name}", Path(tmp) / name)
                if manifest.get("result_hash") != inp.result_hash:
                    raise ResultsError("staged result hash does not match the run's")
                publish_results(Path(tmp), results, inp.job_id, key=self.key)

        with pulse():
            time.sleep(self.settings.fault_delay_s("publish_results"))
            try:
                self._retry(work, "publish results")
            except ResultConflictError:
                raise
            except (ResultsError, FileNotFoundError) as e:
                raise ResultsError(f"staged result refused: {e}") from None
            self._clean_up(inp.job_id)
        url = f"s3://{self.settings.results_bucket}/{inp.job_id}/"
        self._event(inp.job_id, "published", results_url=url, result_hash=inp.result_hash)
        return t.PublishOutput(url, inp.result_hash)

    def _clean_up(self, job_id: str) -> None:
        """Remove the finished job's checkpoints and staging objects (best effort)."""
        try:
            from tickreplay.results.garbage import clean_job

            stats = clean_job(self._artifacts(), job_id)
            self._event(job_id, "cleaned_up", **{k: v for k, v in vars(stats).items()
                                                 if isinstance(v, int | float)})
        except Exception:  # noqa: BLE001 - garbage left behind is for `tickreplay gc`
            activity.logger.warning("clean-up of %s failed", job_id, exc_info=True)

    # ------------------------------------------------------------------ the run
    @activity.defn(name="run_backtest")
    @reports_errors
    async def run_backtest(self, inp: t.RunInput) -> t.RunOutput:
        """Run the engine in a sandboxed runner; seal and heartbeat its checkpoints; resume."""
        from tickreplay.runner.pool import RunnerPool

        info = activity.info()
        resume = inp.resume
        beat = t.RunHeartbeat.from_details(info.heartbeat_details)
        if beat is not None and beat.checkpoint_key:
            resume = beat
        ticks = resume.ticks_done if resume else 0
        state = t.RunHeartbeat(checkpoint_key=resume.checkpoint_key if resume else None,
                               ticks_done=ticks, progress=ticks, ticks_total=inp.ticks_total,
                               node=self.node)
        self._event(inp.job_id, "run_started", attempt=info.attempt,
                    resume_from=state.checkpoint_key, ticks_done=state.ticks_done)
        if self.pool is None:
            self.pool = RunnerPool(self.settings, self.settings.home / "runs" / self.node)
        runner = await self.pool.acquire()
        try:
            job = await self._while_beating(
                asyncio.to_thread(self._prepare_run, inp, state, runner.workdir), state)
            await runner.send(job)
            return await self._drive(inp, runner, state)
        except asyncio.CancelledError:
            self._event(inp.job_id, "run_cancelled", ticks_done=state.progress)
            raise
        finally:
            await runner.close()

    async def _while_beating(self, work: Any, state: t.RunHeartbeat) -> Any:
        """Await ``work`` while heartbeating every second (the event loop stays free)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return task.result()
            self._beat(state)

    def _prepare_run(self, inp: t.RunInput, state: t.RunHeartbeat, workdir: Path) -> RunnerJob:
        """Everything the runner reads, as local files; the checkpoint is checked here."""
        from tickreplay.integrity import open_checkpoint
        from tickreplay.strategy.loader import StrategyBundle

        artifacts = self._artifacts()
        raw = self._retry(lambda: artifacts.get_bytes(inp.strategy.key), "read strategy")
        if StrategyBundle.from_bytes(raw).digest != inp.strategy.digest or (
                inp.strategy.key != f"strategies/{hashlib.sha256(raw).hexdigest()}.json"
                and not inp.strategy.key.endswith(f"/{inp.strategy.digest}.json")):
            raise SpecError(f"strategy object {inp.strategy.key} does not hash to "
                            f"{inp.strategy.digest}")
        plan = self._load_plan(inp.plan.key)
        paths = self._fetch_data(plan)
        ckpt_file = None
        for key in self._resume_candidates(inp.job_id, state.checkpoint_key):
            try:
                sealed = self._retry(lambda key=key: artifacts.get_bytes(key), "read checkpoint")
                blob, ticks = open_checkpoint(sealed, run_identity(inp), self.key)
            except (IntegrityError, FileNotFoundError) as e:
                activity.logger.warning("checkpoint %s refused: %s", key, e)
                self._event(inp.job_id, "checkpoint_discarded", checkpoint_key=key,
                            message=f"checkpoint refused ({e})")
                continue
            ckpt_file = workdir / "resume.ckpt"
            ckpt_file.write_bytes(blob)
            state.checkpoint_key, state.ticks_done, state.progress = key, ticks, ticks
            break
        else:
            if state.checkpoint_key:
                self._event(inp.job_id, "checkpoint_discarded", checkpoint_key=None,
                            message="no usable checkpoint; starting from the first tick")
            state.checkpoint_key, state.ticks_done, state.progress = None, 0, 0
        return RunnerJob(
            job_id=inp.job_id, spec=inp.spec, bundle=raw.decode(),
            strategy_digest=inp.strategy.digest, plan=plan.to_dict(),
            paths={k: str(v) for k, v in paths.items()}, ticks_total=inp.ticks_total,
            checkpoint_every_s=inp.options.checkpoint_every_s,
            checkpoint_file=str(ckpt_file) if ckpt_file else None,
            resumed_from=state.ticks_done, workdir=str(workdir),
            memory_mb=self.settings.run_memory_mb)

    def _resume_candidates(self, job_id: str, named: str | None, newest: int = 3) -> list[str]:
        """Checkpoints to try, newest first: the newest stored ones and the heartbeat's.

        Why not only the heartbeat's: while Temporal is unreachable a run keeps checkpointing
        to the object store but cannot heartbeat, so the server's last heartbeat can be far
        behind; every candidate must still pass the seal and identity check to be used.
        """
        keys: list[str] = []
        try:
            stored = self._artifacts().list(f"checkpoints/{job_id}/")
            keys = [o.key for o in stored if o.key.endswith(".ckpt")][-newest:]
        except Exception:  # noqa: BLE001 - listing is an optimisation; the heartbeat's key remains
            activity.logger.warning("could not list checkpoints of %s", job_id, exc_info=True)
        if named and named not in keys:
            keys.append(named)
        return sorted(keys, key=lambda k: k.rsplit("/", 1)[-1], reverse=True)

    async def _drive(self, inp: t.RunInput, runner: RunnerProcess, state: t.RunHeartbeat
                     ) -> t.RunOutput:
        """Follow the runner's messages until it is done, fails, stalls, or the worker stops."""
        info = activity.info()
        identity = run_identity(inp)
        shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
        upload: asyncio.Future[tuple[str, int]] | None = None
        pending: int | None = None  # ticks of the newest checkpoint not uploaded yet
        last_signal = 0.0
        last_move = time.monotonic()
        last_pos: tuple[Any, ...] | None = None
        stopping = False
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(runner.messages.get(), HEARTBEAT_EVERY_S)
                except TimeoutError:
                    msg = _QUIET
                now = time.monotonic()
                if msg is None:  # channel closed: the runner has exited
                    code = await runner.wait()
                    if stopping:
                        if upload is not None:
                            await asyncio.gather(upload, return_exceptions=True)
                            self._took(upload, state)
                            upload = None
                        if pending is not None:
                            final = asyncio.ensure_future(
                                self._store_checkpoint(inp, identity, runner, pending))
                            await asyncio.gather(final, return_exceptions=True)
                            self._took(final, state)
                        self._beat(state)
                        self._event(inp.job_id, "run_stopped", ticks_done=state.ticks_done,
                                    checkpoint_key=state.checkpoint_key)
                        raise WorkerShutdown(
                            f"worker shutting down; checkpoint at {state.ticks_done} ticks",
                            details=dataclasses.asdict(state))
                    raise RunnerDied(
                        f"runner exited with code {code} without a result; its output: "
                        f"{runner.output()['stderr'][-2000:] or '(none)'}",
                        details=dataclasses.asdict(state))
                match msg:
                    case protocol.Progress() if msg is not _QUIET:
                        pos = (msg.ticks_done, msg.sim_ts, msg.phase)
                        if pos != last_pos:
                            last_pos, last_move = pos, now
                        state.progress, state.sim_ts = msg.ticks_done, msg.sim_ts
                        state.at = t.TickAt(msg.tick, msg.sim_ts, msg.symbol, msg.phase)
                    case protocol.Checkpoint():
                        last_move = now
                        if pending is not None:  # superseded before it was uploaded
                            (runner.workdir / f"ckpt-{pending:013d}.bin").unlink(missing_ok=True)
                        pending = msg.ticks_done
                    case protocol.Started():
                        # The host pid of the runner's process group (inside a sandbox, the
                        # runner's own pid is that of its pid namespace).
                        self._event(inp.job_id, "runner_started", pid=runner.proc.pid,
                                    resumed_from=msg.resumed_from)
                    case protocol.Warning():
                        state.checkpoint_key, state.ticks_done = None, 0
                        self._event(inp.job_id, "checkpoint_discarded", message=msg.message)
                    case protocol.Done():
                        return await self._finish(inp, runner, msg, state)
                    case protocol.Failed():
                        await runner.wait()
                        self._fail(inp.job_id, msg, runner)
                    # Stopped: reported once its final checkpoint is stored (below).

                if upload is not None and (upload.done() or stopping):
                    await asyncio.gather(upload, return_exceptions=True)
                    self._took(upload, state)
                    upload = None
                if pending is not None and upload is None and not stopping:
                    upload = asyncio.ensure_future(
                        self._store_checkpoint(inp, identity, runner, pending))
                    pending = None
                if shutdown.done() and not stopping:
                    stopping = True
                    activity.logger.info("worker shutdown: asking the runner of %s for a final "
                                         "checkpoint", inp.job_id)
                    await runner.send(protocol.STOP)
                if now - last_move > inp.options.stall_timeout_s:
                    runner.kill()
                    await runner.wait()
                    at = state.at
                    where = (f"at tick {at.tick} (ts={at.ts}, symbol={at.symbol}, in {at.phase})"
                             if at else "at tick 0 (ts=None, symbol=None, in start-up)")
                    self._fail(inp.job_id, protocol.Failed(
                        kind=StrategyTimeout.code, message=f"no progress for "
                        f"{inp.options.stall_timeout_s:.0f} s (strategy stuck in a loop?) {where}"),
                        runner)
                self._beat(state)
                if now - last_signal >= SIGNAL_EVERY_S:
                    last_signal = now
                    await self._signal_progress(info.workflow_id, state)
        finally:
            shutdown.cancel()
            if upload is not None:
                upload.cancel()

    async def _store_checkpoint(self, inp: t.RunInput, identity: dict[str, Any], runner: Any,
                                ticks: int) -> tuple[str, int]:
        """Seal the runner's checkpoint file with the run's identity and upload it.

        The file name is ours (``ckpt-<ticks>.bin`` in the runner's own directory) and opened
        without following symlinks: the runner cannot make us read anything else.
        """
        from tickreplay.integrity import seal_checkpoint

        path = runner.workdir / f"ckpt-{ticks:013d}.bin"

        def work() -> tuple[str, int]:
            sealed = seal_checkpoint(_read_regular(path), identity, ticks, self.key)
            key = (f"checkpoints/{inp.job_id}/{ticks:013d}-"
                   f"{hashlib.sha256(sealed).hexdigest()[:16]}.ckpt")
            self._artifacts().put_bytes(key, sealed)  # durable before anyone is told about it
            path.unlink(missing_ok=True)
            return key, ticks

        return await asyncio.to_thread(work)

    @staticmethod
    def _took(upload: asyncio.Future[tuple[str, int]], state: t.RunHeartbeat) -> None:
        """Point the heartbeat at an uploaded checkpoint (a failed upload changes nothing)."""
        try:
            key, ticks = upload.result()
        except Exception as e:  # noqa: BLE001 - storage down: the next checkpoint tries again
            activity.logger.warning("checkpoint upload failed: %s", e)
            return
        state.checkpoint_key, state.ticks_done = key, ticks
        BacktestActivities._beat(state)

    async def _finish(self, inp: t.RunInput, runner: RunnerProcess, msg: protocol.Done,
                      state: t.RunHeartbeat) -> t.RunOutput:
        """Check the runner's result, sign it, stage it; the run's output is its staged key."""
        code = await runner.wait()
        out = runner.output()
        if out["stdout"].strip() or out["stderr"].strip():
            self._event(inp.job_id, "runner_output", **out)
        prefix = await self._while_beating(
            asyncio.to_thread(self._stage_result, inp, runner.workdir / "result",
                              msg.result_hash), state)
        await self._signal_progress(activity.info().workflow_id, state, final=msg.ticks)
        self._event(inp.job_id, "run_finished", ticks=msg.ticks, exit_code=code,
                    result_hash=msg.result_hash, resumed_from_ticks=msg.resumed_from_ticks)
        return t.RunOutput(prefix, msg.result_hash, msg.metrics, msg.ticks, msg.resumed_from_ticks)

    def _stage_result(self, inp: t.RunInput, out: Path, claimed_hash: str) -> str:
        """Verify the result directory the runner wrote, sign it and upload it to staging."""
        from tickreplay.engine.core import ENGINE_VERSION
        from tickreplay.results import sign_results, verify_results
        from tickreplay.results.files import MANIFEST

        try:
            if out.is_symlink() or not out.is_dir():
                raise ResultsError("the runner left no result directory")
            for f in out.iterdir():
                if f.is_symlink() or not f.is_file():
                    raise ResultsError(f"{f.name} in the result is not a regular file")
            manifest = verify_results(out)
            inputs = manifest.get("inputs", {})
            expect = {"strategy_digest": inp.strategy.digest,
                      "data_fingerprint": inp.plan.fingerprint, "engine_version": ENGINE_VERSION}
            wrong = {k: inputs.get(k) for k, v in expect.items() if inputs.get(k) != v}
            if wrong or manifest["result_hash"] != claimed_hash:
                raise ResultsError(f"result inputs do not match the run: {wrong or 'result hash'}")
            signed = sign_results(out, self.key)
        except ResultsError as e:
            raise ResultsError(f"result refused: {e}") from None
        artifacts = self._artifacts()
        prefix = f"staging/{inp.job_id}/{signed['result_hash']}/{os.urandom(6).hex()}"

        def upload() -> None:
            for name in sorted(signed["files"]):
                artifacts.put_file(f"{prefix}/{name}", out / name)
            artifacts.put_file(f"{prefix}/{MANIFEST}", out / MANIFEST)  # last: the commit

        self._retry(upload, "stage results")
        return prefix

    def _fail(self, job_id: str, msg: protocol.Failed, runner: RunnerProcess) -> NoReturn:
        """Record the failure (with traceback and output) in the job's logs and raise it."""
        out = runner.output()
        err = {"kind": msg.kind, "message": msg.message, "traceback": msg.traceback,
               "stderr": out["stderr"][-4000:], "stdout": out["stdout"][-4000:],
               "node": self.node}
        self._event(job_id, "run_failed", error_type=msg.kind, message=msg.message)

        def write() -> None:
            try:
                self._artifacts().put_bytes(f"jobs/{job_id}/error.json",
                                            json.dumps(err, indent=2).encode())
            except Exception:  # noqa: BLE001 - the error still reaches the workflow
                activity.logger.warning("could not store the error of %s", job_id)

        self._events.submit(write)
        raise reported_error(msg.kind, msg.message, {"traceback": msg.traceback})

    async def _signal_progress(self, workflow_id: str, state: t.RunHeartbeat,
                               final: int | None = None) -> None:
        """Tell the workflow how far we are (so its status query can answer without I/O)."""
        try:
            handle = activity.client().get_workflow_handle(workflow_id)
            await asyncio.wait_for(handle.signal("progress", t.Progress(
                final if final is not None else state.progress, state.ticks_total,
                state.sim_ts)), 5.0)
        except Exception:  # noqa: BLE001 - progress is best effort; the run goes on
            activity.logger.debug("progress signal failed", exc_info=True)
