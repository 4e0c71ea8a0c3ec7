"""The ``run_backtest`` activity: drive a sandboxed runner, seal and upload its checkpoints,
heartbeat where it is, resume from the newest checkpoint that verifies, stage its result.

Trust boundary: the runner (user code) holds no credentials and no key. Everything it reads is
fetched here; everything it writes (checkpoints, the result directory) is read without following
symlinks, checked, then sealed or signed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from temporalio import activity

from tickreplay.activities.errors import reported_error, reports_errors
from tickreplay.activities.node import HEARTBEAT_EVERY_S, NodeContext, read_regular
from tickreplay.errors import (
    IntegrityError,
    OutOfMemory,
    ResultsError,
    RunnerDied,
    SpecError,
    StrategyTimeout,
    WorkerShutdown,
)
from tickreplay.runner import protocol
from tickreplay.runner.protocol import RunnerJob
from tickreplay.workflows import types as t

if TYPE_CHECKING:
    from tickreplay.runner.pool import RunnerProcess

# Each progress signal costs ~4 history events: every 60 s keeps a 7-day run far below the
# 51,200-event limit. `tickreplay status` reads fresher progress from the heartbeat.
SIGNAL_EVERY_S = 60.0
# What the run loop sees when the runner said nothing for a second (it still heartbeats).
_QUIET = protocol.Progress(phase="(quiet)")


def run_identity(inp: t.RunInput) -> dict[str, Any]:
    """What a checkpoint of this run must be bound to: it restores into nothing else."""
    from tickreplay.engine.core import ENGINE_VERSION

    return {"job_id": inp.job_id, "strategy_digest": inp.strategy.digest,
            "data_fingerprint": inp.plan.fingerprint, "spec": inp.spec,
            "engine_version": ENGINE_VERSION}


class RunActivity(NodeContext):
    """The run of a backtest on this node (``run_backtest``)."""

    @activity.defn(name="run_backtest")
    @reports_errors
    async def run_backtest(self, inp: t.RunInput) -> t.RunOutput:
        """Run the engine in a sandboxed runner; seal and heartbeat its checkpoints; resume."""
        from tickreplay.runner.backends import RunnerPool

        info = activity.info()
        resume = t.RunHeartbeat.resume_point(info.heartbeat_details, inp.resume)
        ticks = resume.ticks_done if resume else 0
        state = t.RunHeartbeat(checkpoint_key=resume.checkpoint_key if resume else None,
                               ticks_done=ticks, progress=ticks, ticks_total=inp.ticks_total,
                               node=self.node)
        self._event(inp.job_id, "run_started", attempt=info.attempt,
                    resume_from=state.checkpoint_key, ticks_done=state.ticks_done)
        if self.pool is None:
            self.pool = RunnerPool(self.settings, self.settings.home / "runs" / self.node)
        runner = await self.pool.acquire(image=inp.strategy.image or None, labels={
            "tickreplay.io/job": inp.job_id, "tickreplay.io/user": inp.user,
            "tickreplay.io/attempt": str(inp.placement),
            "tickreplay.io/deadline-s": str(int(inp.options.deadline_s))})
        try:
            job = await self._while_beating(
                asyncio.to_thread(self._prepare_run, inp, state, runner), state)
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

    def _prepare_run(self, inp: t.RunInput, state: t.RunHeartbeat, runner: RunnerProcess
                     ) -> RunnerJob:
        """Everything the runner reads, as local files; the checkpoint is checked here. Of the
        node's cache, only this job's partitions are staged where the runner can see them."""
        workdir = runner.workdir
        from tickreplay.integrity import open_checkpoint
        from tickreplay.strategy.loader import StrategyBundle

        artifacts = self._artifacts()
        raw = b""  # an image job's strategy is in its image (run by digest)
        if not inp.strategy.image:
            raw = self._retry(lambda: artifacts.get_bytes(inp.strategy.key), "read strategy")
            if StrategyBundle.from_bytes(raw).digest != inp.strategy.digest or (
                    inp.strategy.key != f"strategies/{hashlib.sha256(raw).hexdigest()}.json"
                    and not inp.strategy.key.endswith(f"/{inp.strategy.digest}.json")):
                raise SpecError(f"strategy object {inp.strategy.key} does not hash to "
                                f"{inp.strategy.digest}")
        plan = self._load_plan(inp.plan.key)
        paths = runner.stage_inputs(self._fetch_data(plan))
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
            paths=paths, ticks_total=inp.ticks_total,
            checkpoint_every_s=inp.options.checkpoint_every_s,
            strategy_image=inp.strategy.image,
            checkpoint_file=runner.visible(ckpt_file) if ckpt_file else None,
            resumed_from=state.ticks_done, workdir=runner.visible(workdir),
            memory_mb=self.settings.run_memory_mb, file_mb=self.settings.run_file_mb,
            open_files=self.settings.run_open_files)

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
        started = last_move = time.monotonic()
        last_pos: tuple[Any, ...] | None = None
        stopping = False
        terminated = False  # the runner stopped on its own SIGTERM, after a final checkpoint
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(runner.messages.get(), HEARTBEAT_EVERY_S)
                except TimeoutError:
                    msg = _QUIET
                now = time.monotonic()
                if msg is None:  # channel closed: the runner has exited
                    code = await runner.wait()
                    if stopping or terminated:
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
                                    checkpoint_key=state.checkpoint_key,
                                    by="worker shutdown" if stopping else "SIGTERM")
                        if not stopping:  # the runner was told to go (drain, spot reclaim)
                            raise RunnerDied(
                                f"runner terminated (SIGTERM) after a final checkpoint at "
                                f"{state.ticks_done} ticks; resuming from it",
                                details=dataclasses.asdict(state))
                        raise WorkerShutdown(
                            f"worker shutting down; checkpoint at {state.ticks_done} ticks",
                            details=dataclasses.asdict(state))
                    if (said := runner.exit_failure()) is not None:  # e.g. a Job's deadline
                        self._fail(inp.job_id, said, runner)
                    if runner.oom_killed():
                        self._fail(inp.job_id, protocol.Failed(
                            kind=OutOfMemory.code, message=f"out of memory: the strategy went "
                            f"over the {self.settings.run_memory_mb} MB memory cap and was "
                            f"stopped at tick {state.progress}"), runner)
                    raise RunnerDied(
                        f"runner exited with code {code} without a result"
                        f"{f' ({runner.bad_lines} invalid protocol lines)' if runner.bad_lines else ''}"
                        "; its output: "
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
                        self._event(inp.job_id, "runner_started", pid=runner.pid,
                                    resumed_from=msg.resumed_from,
                                    backend=self.pool.backend)
                    case protocol.Warning():
                        state.checkpoint_key, state.ticks_done = None, 0
                        self._event(inp.job_id, "checkpoint_discarded", message=msg.message)
                    case protocol.Done():
                        return await self._finish(inp, runner, msg, state)
                    case protocol.Failed():
                        await runner.wait()
                        self._fail(inp.job_id, msg, runner)
                    case protocol.Stopped() if not stopping:
                        terminated = True
                    # Stopped on request: reported once its final checkpoint is stored.

                if upload is not None and (upload.done() or stopping or terminated):
                    await asyncio.gather(upload, return_exceptions=True)
                    self._took(upload, state)
                    upload = None
                if pending is not None and upload is None and not (stopping or terminated):
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
                if now - started > inp.options.deadline_s:
                    runner.kill()
                    await runner.wait()
                    self._fail(inp.job_id, protocol.Failed(
                        kind=StrategyTimeout.code, message=f"deadline: the run was still going "
                        f"after {inp.options.deadline_s:.0f} s (at tick {state.progress} of "
                        f"{inp.ticks_total}); stopped"), runner)
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
            sealed = seal_checkpoint(read_regular(path), identity, ticks, self.key)
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
        NodeContext._beat(state)

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
        # Best effort: the error reaches the workflow anyway, through the raise below.
        self._put_later(f"jobs/{job_id}/error.json", json.dumps(err, indent=2).encode(),
                        f"error of {job_id}")
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
