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
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tickreplay.settings import Settings
from tickreplay.workflows import types as t

T = TypeVar("T")
HEARTBEAT_EVERY_S = 1.0
# Each progress signal costs ~4 history events: every 60 s keeps a 7-day run far below the
# 51,200-event limit. `tickreplay status` reads fresher progress from the heartbeat.
SIGNAL_EVERY_S = 60.0



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

    # ------------------------------------------------------------------ activities
    @activity.defn(name="resolve_strategy")
    def resolve_strategy(self, inp: t.ResolveInput) -> t.StrategyRef:
        """Store the strategy bundle content-addressed; its sha256 digest names it for good."""
        from tickreplay.data.objectstore import ObjectExistsError
        from tickreplay.strategy.loader import StrategyBundle

        try:
            bundle = StrategyBundle(inp.bundle["files"], inp.bundle["entry"],
                                    inp.bundle.get("class"), "")
            bundle = StrategyBundle.from_bytes(bundle.to_bytes())
        except (KeyError, TypeError, ValueError) as e:
            raise ApplicationError(f"invalid strategy bundle: {e}", type=t.SPEC_ERROR,
                                   non_retryable=True) from None
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
    def plan_data(self, inp: t.PlanInput) -> t.PlanRef:
        """Partitions + fingerprint, stored as JSON; an empty plan is a non-retryable error."""
        from tickreplay.data.catalog import plan_data
        from tickreplay.data.errors import EmptyPlanError
        from tickreplay.data.objectstore import open_store
        from tickreplay.spec import BacktestSpec, SpecError

        try:
            spec = BacktestSpec.parse(inp.spec)
            with pulse():
                plan = self._retry(lambda: plan_data(open_store(spec.data_url, self.settings),
                                                     spec.symbols, spec.start, spec.end),
                                   "plan data")
        except EmptyPlanError as e:
            raise ApplicationError(str(e), type=t.EMPTY_PLAN, non_retryable=True) from None
        except SpecError as e:
            raise ApplicationError(str(e), type=t.SPEC_ERROR, non_retryable=True) from None
        key = f"jobs/{inp.job_id}/plan-{plan.fingerprint[:16]}.json"
        with pulse():
            self._retry(lambda: self._artifacts().put_bytes(key, json.dumps(plan.to_dict()).encode()),
                        "store plan")
        self._event(inp.job_id, "planned", fingerprint=plan.fingerprint,
                    partitions=len(plan.partitions))
        return t.PlanRef(key, plan.fingerprint, len(plan.partitions))

    @activity.defn(name="warm_cache")
    def warm_cache(self, inp: t.WarmInput) -> t.WarmResult:
        """Fetch the plan's partitions into this node's cache; return this node's own queue.

        A node whose cache is unusable (read-only, full) refuses with ``NodeUnhealthy`` naming
        itself and the reason, before downloading anything; the workflow then places the run
        on another node. So does a node the workflow already found unhealthy.
        """
        from tickreplay.data.errors import DataError
        from tickreplay.data.objectstore import open_store
        from tickreplay.runner.driver import count_ticks, fetch_plan

        self._event(inp.job_id, "warm_started", attempt=activity.info().attempt)
        if self.node in (inp.avoid_nodes or []):
            raise ApplicationError(f"node {self.node} was found unhealthy for this job; "
                                   "leaving it to another node", type="AvoidNode")
        with pulse():
            time.sleep(self.settings.fault_delay_s("warm_cache"))
            plan = self._load_plan(inp.plan_key)
            problem = self.cache.health_problem(self.cache.missing_bytes(plan.partitions))
            if problem is not None:
                self._event(inp.job_id, "node_unhealthy", reason=problem)
                raise ApplicationError(f"node {self.node}: {problem}",
                                       {"node": self.node, "reason": problem},
                                       type=t.NODE_UNHEALTHY, non_retryable=True)
            store = open_store(plan.url, self.settings)
            try:
                paths = self._retry(lambda: fetch_plan(plan, store, self.cache), "fetch data")
                total = count_ticks(paths)
            except DataError as e:
                raise ApplicationError(str(e), type=t.DATA_ERROR, non_retryable=True) from None
        self._event(inp.job_id, "cache_warm", partitions=len(paths), ticks_total=total,
                    task_queue=self.node_queue)
        return t.WarmResult(self.node_queue, self.node, total)

    def _load_plan(self, key: str) -> Any:
        from tickreplay.data.catalog import DataPlan

        return DataPlan.from_dict(json.loads(self._retry(lambda: self._artifacts().get_bytes(key),
                                                         "read plan")))

    @activity.defn(name="publish_results")
    def publish_results(self, inp: t.PublishInput) -> t.PublishOutput:
        """Verify the staged result (signature, files, hash); commit it under results/{job_id}/.

        Only the files the signed staged manifest lists are copied, so bytes anyone else put
        under the staging prefix never reach the result. After the commit, the job's
        checkpoints and staging objects are removed (results are never touched).
        """
        from tickreplay.data.objectstore import S3Store
        from tickreplay.results import ResultConflictError, ResultsError, publish_results
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
            except ResultConflictError as e:
                raise ApplicationError(str(e), type=t.RESULT_CONFLICT, non_retryable=True) from None
            except (ResultsError, FileNotFoundError) as e:
                raise ApplicationError(f"staged result refused: {e}", type=t.RESULT_ERROR,
                                       non_retryable=True) from None
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
    async def run_backtest(self, inp: t.RunInput) -> t.RunOutput:
        """Run the engine in a sandboxed runner; seal and heartbeat its checkpoints; resume."""
        from tickreplay.runner.pool import RunnerPool

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
        if self.pool is None:
            self.pool = RunnerPool(self.settings, self.settings.home / "runs" / self.node)
        runner = await self.pool.acquire()
        try:
            job = await self._while_beating(
                asyncio.to_thread(self._prepare_run, inp, state, runner.workdir), state)
            await runner.send(job)
            return await self._drive(inp, runner, state)
        except asyncio.CancelledError:
            self._event(inp.job_id, "run_cancelled", ticks_done=state["progress"])
            raise
        finally:
            await runner.close()

    async def _while_beating(self, work: Any, state: dict[str, Any]) -> Any:
        """Await ``work`` while heartbeating every second (the event loop stays free)."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return task.result()
            activity.heartbeat(dict(state))

    def _prepare_run(self, inp: t.RunInput, state: dict[str, Any], workdir: Path
                     ) -> dict[str, Any]:
        """Everything the runner reads, as local files; the checkpoint is checked here."""
        from tickreplay.data.errors import DataError
        from tickreplay.data.objectstore import open_store
        from tickreplay.integrity import IntegrityError, open_checkpoint
        from tickreplay.runner.driver import fetch_plan
        from tickreplay.strategy.loader import StrategyBundle

        artifacts = self._artifacts()
        raw = self._retry(lambda: artifacts.get_bytes(inp.strategy.key), "read strategy")
        if StrategyBundle.from_bytes(raw).digest != inp.strategy.digest or (
                inp.strategy.key != f"strategies/{hashlib.sha256(raw).hexdigest()}.json"
                and not inp.strategy.key.endswith(f"/{inp.strategy.digest}.json")):
            raise ApplicationError(f"strategy object {inp.strategy.key} does not hash to "
                                   f"{inp.strategy.digest}", type=t.SPEC_ERROR, non_retryable=True)
        plan = self._load_plan(inp.plan.key)
        try:
            paths = self._retry(lambda: fetch_plan(plan, open_store(plan.url, self.settings),
                                                   self.cache), "fetch data")
        except DataError as e:
            raise ApplicationError(str(e), type=t.DATA_ERROR, non_retryable=True) from None
        ckpt_file = None
        for key in self._resume_candidates(inp.job_id, state["checkpoint_key"]):
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
            state.update(checkpoint_key=key, ticks_done=ticks, progress=ticks)
            break
        else:
            if state["checkpoint_key"]:
                self._event(inp.job_id, "checkpoint_discarded", checkpoint_key=None,
                            message="no usable checkpoint; starting from the first tick")
            state.update(checkpoint_key=None, ticks_done=0, progress=0)
        return {
            "job_id": inp.job_id, "spec": inp.spec, "bundle": raw.decode(),
            "strategy_digest": inp.strategy.digest, "plan": plan.to_dict(),
            "paths": {k: str(v) for k, v in paths.items()}, "ticks_total": inp.ticks_total,
            "checkpoint_every_s": inp.options.checkpoint_every_s,
            "checkpoint_file": str(ckpt_file) if ckpt_file else None,
            "resumed_from": state["ticks_done"], "workdir": str(workdir),
            "memory_mb": self.settings.run_memory_mb,
        }

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

    async def _drive(self, inp: t.RunInput, runner: Any, state: dict[str, Any]) -> t.RunOutput:
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
                    msg = {"type": "tick"}
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
                        activity.heartbeat(dict(state))
                        self._event(inp.job_id, "run_stopped", ticks_done=state["ticks_done"],
                                    checkpoint_key=state["checkpoint_key"])
                        raise ApplicationError(
                            f"worker shutting down; checkpoint at {state['ticks_done']} ticks",
                            dict(state), type=t.WORKER_SHUTDOWN)
                    raise ApplicationError(
                        f"runner exited with code {code} without a result; its output: "
                        f"{runner.output()['stderr'][-2000:] or '(none)'}", dict(state),
                        type="RunnerDied")
                kind = msg["type"]
                if kind == "progress":
                    pos = (msg.get("ticks_done"), msg.get("sim_ts"), msg.get("phase"))
                    if pos != last_pos:
                        last_pos, last_move = pos, now
                    state.update(progress=int(msg.get("ticks_done") or 0),
                                 sim_ts=int(msg.get("sim_ts") or 0),
                                 at={"tick": msg.get("tick"), "ts": msg.get("sim_ts"),
                                     "symbol": msg.get("symbol"), "phase": msg.get("phase")})
                elif kind == "checkpoint":
                    last_move = now
                    if pending is not None:  # superseded before it was uploaded
                        (runner.workdir / f"ckpt-{pending:013d}.bin").unlink(missing_ok=True)
                    pending = int(msg["ticks_done"])
                elif kind == "started":
                    # The host pid of the runner's process group (inside a sandbox, the
                    # runner's own pid is that of its pid namespace).
                    self._event(inp.job_id, "runner_started", pid=runner.proc.pid,
                                resumed_from=msg.get("resumed_from"))
                elif kind == "warning":
                    state.update(checkpoint_key=None, ticks_done=0)
                    self._event(inp.job_id, "checkpoint_discarded", message=msg.get("message"))
                elif kind == "stopped":
                    pass  # reported once its final checkpoint is stored (below)
                elif kind == "done":
                    return await self._finish(inp, runner, msg, state)
                elif kind == "error":
                    await runner.wait()
                    self._fail(inp.job_id, msg, runner)

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
                    await runner.send("stop")
                if now - last_move > inp.options.stall_timeout_s:
                    runner.kill()
                    await runner.wait()
                    at = state.get("at") or {}
                    self._fail(inp.job_id, {
                        "kind": t.STRATEGY_TIMEOUT, "retryable": False,
                        "message": f"no progress for {inp.options.stall_timeout_s:.0f} s "
                                   f"(strategy stuck in a loop?) at tick {at.get('tick', 0)} "
                                   f"(ts={at.get('ts')}, symbol={at.get('symbol')}, "
                                   f"in {at.get('phase', 'start-up')})",
                        "traceback": ""}, runner)
                activity.heartbeat(dict(state))
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
    def _took(upload: asyncio.Future[tuple[str, int]], state: dict[str, Any]) -> None:
        """Point the heartbeat at an uploaded checkpoint (a failed upload changes nothing)."""
        try:
            key, ticks = upload.result()
        except Exception as e:  # noqa: BLE001 - storage down: the next checkpoint tries again
            activity.logger.warning("checkpoint upload failed: %s", e)
            return
        state.update(checkpoint_key=key, ticks_done=ticks)
        activity.heartbeat(dict(state))

    async def _finish(self, inp: t.RunInput, runner: Any, msg: dict[str, Any],
                      state: dict[str, Any]) -> t.RunOutput:
        """Check the runner's result, sign it, stage it; the run's output is its staged key."""
        code = await runner.wait()
        out = runner.output()
        if out["stdout"].strip() or out["stderr"].strip():
            self._event(inp.job_id, "runner_output", **out)
        prefix = await self._while_beating(
            asyncio.to_thread(self._stage_result, inp, runner.workdir / "result",
                              str(msg.get("result_hash"))), state)
        await self._signal_progress(activity.info().workflow_id, state, final=int(msg["ticks"]))
        self._event(inp.job_id, "run_finished", ticks=msg["ticks"], exit_code=code,
                    result_hash=msg["result_hash"], resumed_from_ticks=msg["resumed_from_ticks"])
        return t.RunOutput(prefix, str(msg["result_hash"]), msg["metrics"], int(msg["ticks"]),
                           int(msg["resumed_from_ticks"]))

    def _stage_result(self, inp: t.RunInput, out: Path, claimed_hash: str) -> str:
        """Verify the result directory the runner wrote, sign it and upload it to staging."""
        from tickreplay.engine.core import ENGINE_VERSION
        from tickreplay.results import ResultsError, sign_results, verify_results
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
            raise ApplicationError(f"result refused: {e}", type=t.RESULT_ERROR,
                                   non_retryable=True) from None
        artifacts = self._artifacts()
        prefix = f"staging/{inp.job_id}/{signed['result_hash']}/{os.urandom(6).hex()}"

        def upload() -> None:
            for name in sorted(signed["files"]):
                artifacts.put_file(f"{prefix}/{name}", out / name)
            artifacts.put_file(f"{prefix}/{MANIFEST}", out / MANIFEST)  # last: the commit

        self._retry(upload, "stage results")
        return prefix

    def _fail(self, job_id: str, msg: dict[str, Any], runner: Any) -> None:
        """Record the failure (with traceback and output) in the job's logs and raise it."""
        out = runner.output()
        err = {"kind": msg["kind"], "message": msg["message"], "traceback": msg.get("traceback"),
               "stderr": out["stderr"][-4000:], "stdout": out["stdout"][-4000:],
               "node": self.node}
        self._event(job_id, "run_failed", error_type=msg["kind"], message=msg["message"])

        def write() -> None:
            try:
                self._artifacts().put_bytes(f"jobs/{job_id}/error.json",
                                            json.dumps(err, indent=2).encode())
            except Exception:  # noqa: BLE001 - the error still reaches the workflow
                activity.logger.warning("could not store the error of %s", job_id)

        self._events.submit(write)
        raise ApplicationError(msg["message"], {"traceback": msg.get("traceback")},
                               type=msg["kind"], non_retryable=not msg.get("retryable", False))

    async def _signal_progress(self, workflow_id: str, state: dict[str, Any],
                               final: int | None = None) -> None:
        """Tell the workflow how far we are (so its status query can answer without I/O)."""
        try:
            handle = activity.client().get_workflow_handle(workflow_id)
            await asyncio.wait_for(handle.signal("progress", t.Progress(
                final if final is not None else state["progress"], state["ticks_total"],
                state["sim_ts"])), 5.0)
        except Exception:  # noqa: BLE001 - progress is best effort; the run goes on
            activity.logger.debug("progress signal failed", exc_info=True)
