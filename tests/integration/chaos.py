"""`make chaos`: the durable stack under faults; every job must end with the uninterrupted hash.

One job per scenario, on two worker processes (two nodes) wherever a re-placement must go to
the other node. Each job's result hash (the workflow's, and that of the published result,
downloaded and verified with the platform's key) is compared with the hash of the same spec
run in-process by ``run_local``, without Temporal or faults.

Scenarios (``--scenarios``, default all):

- ``warm``: the worker is SIGKILLed inside ``warm_cache`` (it pauses there, heartbeating,
  under ``TICKREPLAY_FAULT_DELAY``; the second worker is started only then, so it cannot
  have taken the activity itself).
- ``run``: the worker running ``run_backtest`` is SIGKILLed after a random number (1-6) of
  checkpoints; repeated ``--rounds`` times (the former 20-round soak is ``--rounds 20``).
- ``publish``: the worker is SIGKILLed inside ``publish_results`` (as for ``warm``).
- ``runner``: only the runner's process group is SIGKILLed (host pid from the
  ``runner_started`` event); the worker lives and the workflow retries from a checkpoint.
- ``reclaim``: a spot reclaim or drain with notice: SIGTERM to the runner's Python (as a
  kubelet's graceful node shutdown sends it to the pod); it writes a final checkpoint and stops,
  and the run must resume from exactly that tick. Prints how long the stop and the resume took.
- ``foreign``: the checkpoint the run's heartbeat names (and then every other checkpoint of
  the job, since a resume also tries the newest stored ones) is overwritten with a valid
  sealed checkpoint of ANOTHER job (same strategy and data, other params), then the worker is
  SIGKILLed. Passing also needs a ``checkpoint_discarded`` event: the run must have refused
  it and restarted from the first tick.
- ``temporal``: the Temporal dev server is SIGKILLed after the run's first checkpoint, kept
  down ``--temporal-down-s`` (60 s), restarted on the same port and SQLite file.
- ``s3``: SeaweedFS is SIGKILLed after the run's first checkpoint, kept down ``--outage-s``
  (900 s = 15 min), restarted on the same S3 port and state dir. The simulation may well end
  during the outage; the run then waits to stage its result, which must survive too.

What is printed for each scenario:

- recovery: seconds from the END of the fault to the first sign, as the Temporal server
  records it, that the interrupted work is going again on a live worker. The fault ends at the
  SIGKILL (worker, runner, foreign) or when the restarted service answers again (s3, temporal).
  The sign is, for a SIGKILL, the server's start time of the next attempt of the interrupted
  activity (warm_cache, run_backtest or publish_results): it covers detection (heartbeat
  timeout), backoff, re-placement, and for run_backtest warming the new node's cache. For
  ``temporal``, the first run_backtest heartbeat the server receives after it is back (or the
  start of a new attempt). For ``s3``, the job's first object-store write after S3 is back: a
  new checkpoint named by a heartbeat, or the staged result (run_backtest completes). The
  Temporal server is polled every 0.2 s; when a short attempt was never seen pending, the
  start event the worker wrote for it (``warm_started``, ``run_started``, ``publish_started``)
  gives the time instead (marked ``~``).
- total: seconds from submit to the job's end.

A scenario passes when the job SUCCEEDED with the reference hash, its published result
verifies with that hash, and (SIGKILL scenarios) recovery took at most ``--max-recovery-s``
(20 s: "a lost worker's run restarts elsewhere in under 20 s in every stage").

Prints one line per scenario, a table at the end, and ``chaos: P/N passed``; exits 1 unless all
passed. Logs (workers, SeaweedFS, Temporal) stay in the printed temp dir when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from temporalio.client import Client, RetryConfig
from wfkit import EXAMPLES, stop_process, wait_for

import tickreplay
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import S3Store
from tickreplay.jobs import operations as jobs
from tickreplay.osutil import die_with_parent
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.runner.pool import _is_runner
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.stack.seaweedfs import SeaweedFS
from tickreplay.stack.temporal import TemporalDevServer
from tickreplay.workflows.types import JobOptions, JobResult

ACCESS, SECRET = "chaos", "chaos-secret-key"
SYMBOLS = ["CCC", "DDD"]
TICKS_PER_DAY = 1_000_000
# ~12 M ticks (~20 s of simulation here) for the kill scenarios; ~50 M ticks (~80 s) for the
# outages, so the run is still going when a 60 s Temporal outage ends.
SHORT = ("2024-04-01", "2024-04-08")
LONG = ("2024-04-01", "2024-05-03")
OPTIONS = JobOptions(checkpoint_every_s=2.0)  # product defaults otherwise (heartbeat 10 s ...)
POLL_S = 0.2
STAGE_DELAY_S = 300  # fault_delay of the stage a worker is killed in (it is killed long before)
SCENARIOS = ("warm", "run", "publish", "runner", "reclaim", "foreign", "temporal", "s3")
STARTED = 2  # PENDING_ACTIVITY_STATE_STARTED
CLOSED_WAIT_S = 900  # how long a job may take after its fault (outages add their own length)


def say(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------- what the server sees
@dataclass
class Act:
    """One pending activity of the job, as the Temporal server describes it."""

    kind: str
    state: int
    attempt: int
    started: float  # epoch s of the attempt's start (0: not started)
    beat: float  # epoch s of the last heartbeat the server received (0: none)
    identity: str
    details: dict[str, Any] | None


@dataclass
class Snap:
    at: float
    status: str
    acts: list[Act]

    def act(self, kind: str) -> Act | None:
        return next((a for a in self.acts if a.kind == kind), None)


def _epoch(ts: Any) -> float:
    return ts.seconds + ts.nanos / 1e9 if ts.seconds else 0.0


@dataclass
class Job:
    job_id: str
    submitted: float
    snaps: list[Snap] = field(default_factory=list)
    closed: float | None = None
    status: str = "RUNNING"
    watcher: asyncio.Task[None] | None = None

    def latest(self, kind: str) -> Act | None:
        for s in reversed(self.snaps):
            if (a := s.act(kind)) is not None:
                return a
        return None

    def beat(self) -> dict[str, Any]:
        a = self.latest("run_backtest")
        return (a.details or {}) if a is not None else {}


# ---------------------------------------------------------------------------- services and nodes
class Stack:
    """SeaweedFS and the Temporal dev server, restartable on the same ports and state dirs.

    Started from the main thread (die_with_parent is tied to the spawning thread).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.s3: SeaweedFS | None = None
        self.temporal: TemporalDevServer | None = None
        self.s3_port: int | None = None
        self.temporal_port: int | None = None

    def start_s3(self) -> None:
        self.s3 = SeaweedFS.start(self.base / "s3", s3_port=self.s3_port, access_key=ACCESS,
                                  secret_key=SECRET, die_with_parent=True)
        self.s3_port = self.s3.ports["s3.port"]

    def start_temporal(self) -> None:
        self.temporal = TemporalDevServer.start(self.base / "temporal", port=self.temporal_port,
                                                ui=False, die_with_parent=True)
        self.temporal_port = self.temporal.port

    def kill_s3(self) -> None:
        assert self.s3 is not None
        self.s3.stop(grace=0)  # SIGKILL of the process group: a crash, not a shutdown

    def kill_temporal(self) -> None:
        assert self.temporal is not None
        self.temporal.stop(grace=0)

    def close(self) -> None:
        if self.temporal is not None:
            self.temporal.stop()
        if self.s3 is not None:
            self.s3.stop(grace=0)  # throwaway data


class Nodes:
    """The worker processes of one scenario, each a node with its own name, cache and log."""

    def __init__(self, ctx: Chaos, scenario: str) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.dead: set[str] = set()

    def spawn(self, fault_delay: str | None = None) -> str:
        name = f"{self.scenario}-w{len(self.procs) + 1}"
        s = self.ctx.settings.model_copy(update={
            "node_id": name, "cache_dir": self.ctx.base / "nodes" / name / "cache",
            "fault_delay": fault_delay})
        log = self.ctx.base / "logs" / f"{name}.log"
        env = {**os.environ, **s.to_env()}
        # As wfkit.spawn_worker, but tied to this process: a killed chaos run leaves no worker.
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tickreplay.workers.main"], env=env,
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent)  # noqa: PLW1509 - one prctl call
        self.logs[name] = log
        return name

    async def ready(self, *names: str, timeout: float = 90) -> None:
        for name in names:
            async def polling(name: str = name) -> bool:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {self.procs[name].returncode}")
                return "polling" in self.logs[name].read_text(errors="replace")
            await wait_for(polling, timeout, 0.1)

    def of_identity(self, identity: str) -> str | None:
        pid = identity.split("@", 1)[0]
        return next((n for n, p in self.procs.items() if str(p.pid) == pid), None)

    def kill(self, name: str) -> float:
        p = self.procs[name]
        os.killpg(p.pid, signal.SIGKILL)
        at = time.time()
        p.wait()
        self.dead.add(name)
        return at

    def close(self) -> None:
        for p in self.procs.values():
            stop_process(p, signal.SIGTERM)
        for name in self.procs:
            shutil.rmtree(self.ctx.base / "nodes" / name, ignore_errors=True)


# ------------------------------------------------------------------------ one scenario's outcome
@dataclass
class Outcome:
    name: str
    ok: bool
    recovery: float | None = None
    recovery_approx: bool = False
    total: float | None = None
    detail: str = ""

    def row(self) -> str:
        rec = "-" if self.recovery is None else (
            f"{'~' if self.recovery_approx else ''}{max(self.recovery, 0.0):.1f} s")
        tot = "-" if self.total is None else f"{self.total:.1f} s"
        return (f"{self.name:<44} {'PASS' if self.ok else 'FAIL'}  {rec:>9}  {tot:>8}  "
                f"{self.detail}")


class ScenarioFailed(Exception):
    """The scenario could not be carried out as designed (not a verdict on the product)."""


# ---------------------------------------------------------------------------- the harness
class Chaos:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.stack = Stack(base)
        self.settings: Settings = None  # type: ignore[assignment] - set in setup()
        self.client: Any = None
        self.poller: Any = None  # describes jobs every 0.2 s, through outages: no retries
        self._reconnecting = 0.0
        self.specs: dict[str, BacktestSpec] = {}
        self.expected: dict[str, str] = {}

    # -------------------------------------------------------------- set-up
    async def setup(self, need_long: bool) -> None:
        (self.base / "logs").mkdir(parents=True)
        self.stack.start_s3()
        self.stack.start_temporal()
        assert self.stack.s3 is not None and self.stack.temporal is not None
        self.settings = Settings(
            s3_endpoint=self.stack.s3.endpoint, s3_access_key=ACCESS, s3_secret_key=SECRET,
            temporal_address=self.stack.temporal.address, home=self.base / "home",
            cache_dir=self.base / "refcache", task_queue=f"chaos-{uuid.uuid4().hex[:8]}",
            shutdown_grace_s=10)
        for b in (self.settings.data_bucket, self.settings.results_bucket,
                  self.settings.artifacts_bucket):
            S3Store(b, settings=self.settings).ensure_bucket()
        last = LONG if need_long else SHORT
        t0 = time.monotonic()
        generate(S3Store(self.settings.data_bucket, settings=self.settings), SYMBOLS, last[0],
                 last[1], ticks_per_day=TICKS_PER_DAY, seed=9)
        say(f"data: {', '.join(SYMBOLS)} {last[0]}..{last[1]}, {TICKS_PER_DAY:,} ticks/day "
            f"({time.monotonic() - t0:.0f} s)")
        for name, (start, end) in (("short", SHORT), ("long", LONG)):
            if name == "long" and not need_long:
                continue
            self.specs[name] = self.spec(start, end, {"fast": 20, "slow": 200})
            t0 = time.monotonic()
            local = run_local(self.specs[name], self.settings)
            self.expected[name] = result_hash(local)
            say(f"reference {name} ({start}..{end}): {local.run_info.get('ticks_per_s') or 0:,} "
                f"ticks/s, {local.trades.num_rows:,} trades, hash {self.expected[name][:16]} "
                f"({time.monotonic() - t0:.0f} s)")
        shutil.rmtree(self.base / "refcache", ignore_errors=True)
        self.client = await jobs.connect(self.settings)
        self.poller = await self._poll_client()

    def spec(self, start: str, end: str, params: dict[str, Any]) -> BacktestSpec:
        return BacktestSpec.parse({
            "strategy": str(EXAMPLES / "sma_cross.py"),
            "data_url": f"s3://{self.settings.data_bucket}", "symbols": ",".join(SYMBOLS),
            "start": start, "end": end, "params": params,
            "config": {"latency_ns": 1_000_000, "slippage_bps": 1.0,
                       "commission": {"per_share": 0.005, "minimum": 1.0}}})

    def artifacts(self) -> S3Store:
        return S3Store(self.settings.artifacts_bucket, settings=self.settings)

    # -------------------------------------------------------------- Temporal, outage-proof
    async def snapshot(self, job_id: str) -> Snap | None:
        """The job as the server sees it now; None while Temporal cannot be reached."""
        try:
            desc = await asyncio.wait_for(
                self.poller.get_workflow_handle(job_id).describe(), 5)
        except Exception:  # noqa: BLE001 - server down or restarting: try again later
            await self._reconnect()
            return None
        acts = []
        for a in desc.raw_description.pending_activities:
            details = None
            if a.heartbeat_details.payloads:
                (details, *_) = await self.poller.data_converter.decode(
                    a.heartbeat_details.payloads)
            acts.append(Act(a.activity_type.name, a.state, a.attempt, _epoch(a.last_started_time),
                            _epoch(a.last_heartbeat_time), a.last_worker_identity,
                            details if isinstance(details, dict) else None))
        return Snap(time.time(), jobs.status_name(desc.status), acts)

    async def _poll_client(self) -> Any:
        return await Client.connect(self.settings.temporal_address,
                                    namespace=self.settings.temporal_namespace,
                                    retry_config=RetryConfig(max_retries=1,
                                                             max_elapsed_time_millis=1000))

    async def _reconnect(self) -> None:
        # A client's channel normally reconnects by itself; fresh clients are the fallback.
        if time.monotonic() - self._reconnecting < 5:
            return
        self._reconnecting = time.monotonic()
        with contextlib.suppress(Exception):
            self.poller = await asyncio.wait_for(self._poll_client(), 5)
            self.client = await asyncio.wait_for(jobs.connect(self.settings), 5)

    async def submit(self, spec: BacktestSpec) -> Job:
        job_in = jobs.prepare(spec, options=OPTIONS)
        await jobs.submit(self.client, self.settings, job_in)
        job = Job(job_in.job_id, time.time())

        async def watch() -> None:
            while True:
                snap = await self.snapshot(job.job_id)
                if snap is not None:
                    job.snaps.append(snap)
                    if snap.status != "RUNNING":
                        job.status, job.closed = snap.status, snap.at
                        return
                await asyncio.sleep(POLL_S)

        job.watcher = asyncio.ensure_future(watch())
        return job

    async def until(self, job: Job, what: str, predicate: Callable[[], Any],
                    timeout: float = 180) -> Any:
        """Wait until ``predicate()`` (over what the watcher saw) holds; fail if the job ends."""
        deadline = time.monotonic() + timeout
        while True:
            if (value := predicate()):
                return value
            if job.closed is not None:
                raise ScenarioFailed(f"job ended {job.status} while waiting for {what}")
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def finish(self, job: Job, expected: str, timeout: float) -> tuple[bool, str]:
        """Wait for the job's end; check the workflow's and the published, verified hash."""
        assert job.watcher is not None
        try:
            await asyncio.wait_for(asyncio.shield(job.watcher), timeout)
        except TimeoutError:
            return False, f"not finished {timeout:.0f} s after the fault"
        handle = self.client.get_workflow_handle(job.job_id, result_type=JobResult)
        try:
            result = await handle.result()
        except Exception as e:  # noqa: BLE001 - a failed job is the verdict, with its reason
            return False, f"job {job.status}: {_cause(e)}"
        if result.result_hash != expected:
            return False, f"hash {result.result_hash[:16]} != reference {expected[:16]}"
        with tempfile.TemporaryDirectory(dir=self.base) as tmp:
            try:
                manifest = await asyncio.to_thread(jobs.download_results, self.settings,
                                                   job.job_id, Path(tmp))
            except Exception as e:  # noqa: BLE001
                return False, f"published result does not verify: {e}"
        if manifest.get("result_hash") != expected:
            return False, f"published hash {manifest.get('result_hash')} != reference"
        return True, f"hash {expected[:12]} (published, verified)"

    def newest_checkpoint(self, job_id: str) -> int | None:
        """Ticks of the newest checkpoint stored for the job (keys start with the tick count)."""
        try:
            keys = [o.key for o in self.artifacts().list(f"checkpoints/{job_id}/")]
        except Exception:  # noqa: BLE001 - informative only
            return None
        return max((int(k.rsplit("/", 1)[1].split("-", 1)[0]) for k in keys), default=0)

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return (await asyncio.to_thread(jobs.job_logs, self.settings, job_id))["events"]

    async def end(self, job: Job | None) -> None:
        """Leave no running workflow behind for the next scenario."""
        if job is None:
            return
        if job.watcher is not None and not job.watcher.done():
            job.watcher.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.client.get_workflow_handle(job.job_id).terminate("chaos scenario over"),
                    10)

    # -------------------------------------------------------------- scenarios
    async def scenario(self, name: str, tag: str,
                       body: Callable[[Nodes, Outcome, list[Job]], Awaitable[None]],
                       limit: float | None = None) -> Outcome:
        """Run one scenario; it reports, never aborts the chaos run. ``tag`` names its nodes;
        a recovery slower than ``limit`` seconds fails it even with the right hash."""
        out = Outcome(name, False)
        nodes = Nodes(self, tag)
        started: list[Job] = []
        t0 = time.monotonic()
        try:
            await body(nodes, out, started)
        except Exception as e:  # noqa: BLE001
            out.ok = False
            out.detail = (f"{out.detail}; " if out.detail else "") + f"error: {_cause(e)}"
        finally:
            for job in started:
                await self.end(job)
            nodes.close()
        if out.ok and limit is not None and out.recovery is not None and out.recovery > limit:
            out.ok = False
            out.detail += f"; FAIL: recovery {out.recovery:.1f} s is over the {limit:.0f} s limit"
        say(f"{out.row()}  [{time.monotonic() - t0:.0f} s]")
        return out

    async def kill_in_stage(self, stage: str) -> Outcome:
        """A worker SIGKILLed inside warm_cache or publish_results; the other node takes over."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            a = nodes.spawn(fault_delay=f"{stage}={STAGE_DELAY_S}")
            await nodes.ready(a)
            job = await self.submit(self.specs["short"])
            started.append(job)
            act = await self.until(job, f"{stage} on {a}", lambda: _running(job, stage),
                                   timeout=300)
            if nodes.of_identity(act.identity) != a:
                raise ScenarioFailed(f"{stage} runs on {act.identity}, not on {a}")
            b = nodes.spawn()  # only now: it cannot have taken the stage itself
            await nodes.ready(b)
            killed = nodes.kill(a)
            ok, info = await self.finish(job, self.expected["short"], CLOSED_WAIT_S)
            evs = await self.events(job.job_id)
            start_kind, done_kind = {"warm_cache": ("warm_started", "cache_warm"),
                                     "publish_results": ("publish_started", "published")}[stage]
            self.measure(out, job, killed, restart=stage, events=evs, kinds=[start_kind],
                         not_node=a)
            again = sorted({str(nodes.of_identity(x.identity)) for s in job.snaps
                            for x in s.acts if x.kind == stage and x.started > killed})
            out.ok = ok
            out.detail = (f"{a} killed in {stage} (attempt {act.attempt}); redone on "
                          f"{', '.join(again) or _event_nodes(evs, done_kind, killed)}; {info}")
        return await self.scenario(f"worker SIGKILL in {stage}", stage.split("_")[0], body,
                                   self.args.max_recovery_s)

    async def kill_in_run(self, round_no: int, kill_after: int) -> Outcome:
        """The worker running run_backtest SIGKILLed after ``kill_after`` checkpoints."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            pair = nodes.spawn(), nodes.spawn()
            await nodes.ready(*pair)
            job = await self.submit(self.specs["short"])
            started.append(job)
            store = self.artifacts()
            seen: set[str] = set()

            def enough() -> dict[str, Any] | None:
                hb = job.beat()
                if hb.get("checkpoint_key"):
                    seen.add(hb["checkpoint_key"])
                return hb if len(seen) >= kill_after else None

            hb = await self.until(job, f"{kill_after} checkpoints", enough)
            n_objects = len(store.list(f"checkpoints/{job.job_id}/"))
            victim = str(hb["node"])
            killed = nodes.kill(victim)
            ok, info = await self.finish(job, self.expected["short"], CLOSED_WAIT_S)
            evs = await self.events(job.job_id)
            self.measure(out, job, killed, restart="run_backtest", events=evs,
                         kinds=["run_started"], not_node=victim)
            out.ok = ok
            out.detail = (f"{victim} killed at tick {hb.get('progress', 0):,}/"
                          f"{hb.get('ticks_total', 0):,} ({n_objects} checkpoints stored); "
                          f"{_resumed(evs, killed)}; {info}")
        return await self.scenario(
            f"worker SIGKILL in run_backtest #{round_no} (ckpt {kill_after})", f"run{round_no}",
            body, self.args.max_recovery_s)

    async def runner_of(self, job: Job) -> tuple[int, str]:
        """Host pid (the sandbox's process group) and node of the job's newest runner."""
        runners = [e for e in await self.events(job.job_id) if e["kind"] == "runner_started"]
        if not runners:
            raise ScenarioFailed("no runner_started event")
        return int(runners[-1]["pid"]), str(runners[-1]["node"])

    async def finish_run(self, out: Outcome, job: Job, fault: float
                         ) -> tuple[bool, str, list[dict[str, Any]]]:
        """Wait for the job after a runner fault; measure when its run went on."""
        ok, info = await self.finish(job, self.expected["short"], CLOSED_WAIT_S)
        evs = await self.events(job.job_id)
        self.measure(out, job, fault, restart="run_backtest", events=evs, kinds=["run_started"])
        return ok, info, evs

    async def kill_runner(self) -> Outcome:
        """Only the runner's process group is SIGKILLed; the worker retries from a checkpoint."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            pair = nodes.spawn(), nodes.spawn()
            await nodes.ready(*pair)
            job = await self.submit(self.specs["short"])
            started.append(job)
            seen: set[str] = set()

            def two_checkpoints() -> bool:
                if key := job.beat().get("checkpoint_key"):
                    seen.add(key)
                return len(seen) >= 2

            await self.until(job, "2 checkpoints", two_checkpoints)
            pid, node = await self.runner_of(job)
            hb = job.beat()
            os.killpg(pid, signal.SIGKILL)
            killed = time.time()
            ok, info, evs = await self.finish_run(out, job, killed)
            out.ok = ok
            out.detail = (f"runner pgid {pid} on {node} killed at tick {hb.get('progress', 0):,}"
                          f"/{hb.get('ticks_total', 0):,}; {_resumed(evs, killed)}; {info}")
        return await self.scenario("runner SIGKILL", "runner", body, self.args.max_recovery_s)

    async def reclaim_runner(self) -> Outcome:
        """A spot reclaim with notice (a node drain): SIGTERM to the runner's Python, which
        writes a final checkpoint and stops; the run resumes from exactly that checkpoint.
        Measured: notice to stopped, notice to the resumed runner's start, ticks redone."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            pair = nodes.spawn(), nodes.spawn()
            await nodes.ready(*pair)
            job = await self.submit(self.specs["short"])
            started.append(job)
            await self.until(job, "a checkpoint", lambda: job.beat().get("checkpoint_key"))
            pids = _runner_pids((await self.runner_of(job))[0])
            if not pids:
                raise ScenarioFailed("no runner process under the sandbox")
            at_tick = job.beat().get("progress", 0)
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            noticed = time.time()
            ok, info, evs = await self.finish_run(out, job, noticed)
            stopped = [e for e in evs if e["kind"] == "run_stopped" and e["ts"] > noticed]
            resumed = [e for e in evs if e["kind"] == "runner_started" and e["ts"] > noticed]
            point = _resume_point(evs, noticed)
            out.ok = ok and bool(stopped) and point is not None and \
                point[1] == stopped[0]["ticks_done"]
            out.detail = (
                f"SIGTERM at tick {at_tick:,}; final checkpoint at tick "
                f"{stopped[0]['ticks_done'] if stopped else '?':,} after "
                f"{(stopped[0]['ts'] - noticed) if stopped else float('nan'):.1f} s; "
                f"{_resumed(evs, noticed)}, runner up "
                f"{(resumed[0]['ts'] - noticed) if resumed else float('nan'):.1f} s after the "
                f"notice; {info}")
        return await self.scenario("spot reclaim (runner SIGTERM)", "reclaim", body,
                                   self.args.max_recovery_s)

    async def foreign_checkpoint(self) -> Outcome:
        """Another job's valid sealed checkpoint swapped in; the run must refuse it."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            pair = nodes.spawn(), nodes.spawn()
            await nodes.ready(*pair)
            store = self.artifacts()
            donor = await self.submit(self.spec(*SHORT, {"fast": 10, "slow": 100}))
            started.append(donor)
            key = await self.until(donor, "the donor's checkpoint",
                                   lambda: donor.beat().get("checkpoint_key"))
            foreign = store.get_bytes(key)
            await self.client.get_workflow_handle(donor.job_id).cancel()
            await asyncio.wait_for(asyncio.shield(donor.watcher), 120)  # type: ignore[arg-type]
            job = await self.submit(self.specs["short"])
            started.append(job)
            seen: set[str] = set()

            def two_checkpoints() -> dict[str, Any] | None:
                hb = job.beat()
                if hb.get("checkpoint_key"):
                    seen.add(hb["checkpoint_key"])
                return hb if len(seen) >= 2 else None

            hb = await self.until(job, "2 checkpoints", two_checkpoints)
            swapped = [hb["checkpoint_key"]]
            store.put_bytes(swapped[0], foreign)
            victim = str(hb["node"])
            killed = nodes.kill(victim)
            # A resume tries the newest stored checkpoints too (not only the heartbeat's), so
            # the attacker overwrites every checkpoint of the job, as bucket write access allows.
            await asyncio.sleep(1.5)
            for obj in store.list(f"checkpoints/{job.job_id}/"):
                if obj.key not in swapped:
                    store.put_bytes(obj.key, foreign)
                    swapped.append(obj.key)
            ok, info = await self.finish(job, self.expected["short"], CLOSED_WAIT_S)
            evs = await self.events(job.job_id)
            self.measure(out, job, killed, restart="run_backtest", events=evs,
                         kinds=["run_started"], not_node=victim)
            refused = [e for e in evs if e["kind"] == "checkpoint_discarded" and e["ts"] > killed]
            out.ok = ok and bool(refused)
            out.detail = (f"{donor.job_id}'s checkpoint put at {len(swapped)} key(s), {victim} "
                          f"killed at tick {hb.get('progress', 0):,}; "
                          + (f"refused: {str(refused[0].get('message'))[:90]!r}" if refused
                             else "NOT refused (no checkpoint_discarded event)")
                          + f"; {_resumed(evs, killed)}; {info}")
        return await self.scenario("foreign checkpoint swapped in", "foreign", body,
                                   self.args.max_recovery_s)

    async def outage(self, service: str, down_s: float) -> Outcome:
        """SeaweedFS or Temporal SIGKILLed after the first checkpoint, restarted after down_s."""
        async def body(nodes: Nodes, out: Outcome, started: list[Job]) -> None:
            pair = nodes.spawn(), nodes.spawn()
            await nodes.ready(*pair)
            job = await self.submit(self.specs["long"])
            started.append(job)
            hb = await self.until(job, "the first checkpoint",
                                  lambda: job.beat() if job.beat().get("checkpoint_key") else None)
            (self.stack.kill_s3 if service == "s3" else self.stack.kill_temporal)()
            down = time.time()
            say(f"  {service} down at tick {hb.get('progress', 0):,}/{hb.get('ticks_total', 0):,} "
                f"(checkpoint {hb.get('checkpoint_key', '')[-30:]}), for {down_s:.0f} s")
            next_note = time.monotonic() + 60
            while time.time() - down < down_s:
                await asyncio.sleep(min(1.0, down_s - (time.time() - down)))
                if time.monotonic() >= next_note and service == "s3":
                    next_note += 60
                    b = job.beat()
                    say(f"  s3 down {time.time() - down:.0f} s: {job.status}, run at tick "
                        f"{b.get('progress', 0):,}/{b.get('ticks_total', 0):,}, checkpoint at "
                        f"{b.get('ticks_done', 0):,}, workers alive: "
                        f"{sum(p.poll() is None for p in nodes.procs.values())}/2")
            at_back = job.beat()
            (self.stack.start_s3 if service == "s3" else self.stack.start_temporal)()
            back = time.time()
            newest = self.newest_checkpoint(job.job_id)
            say(f"  {service} back after {back - down:.0f} s; newest checkpoint stored: "
                f"{newest if newest is None else format(newest, ',')} ticks")
            ok, info = await self.finish(job, self.expected["long"], CLOSED_WAIT_S + down_s)
            evs = await self.events(job.job_id)
            self.measure_outage(out, job, service, back, at_back, evs)
            alive = sum(p.poll() is None for p in nodes.procs.values())
            out.ok = ok
            placements = len([e for e in evs if e["kind"] == "run_started"])
            point = _resume_point(evs, down)
            redone = (f" ({newest - point[1]:,} ticks redone: newest stored checkpoint "
                      f"{newest:,})" if point and newest and newest > point[1] else "")
            out.detail = (f"down {back - down:.0f} s from tick {hb.get('progress', 0):,}/"
                          f"{hb.get('ticks_total', 0):,}; {placements} run attempt(s), "
                          f"{_resumed(evs, down)}{redone}; workers alive {alive}/2; {info}")
        label = {"s3": f"S3 down {down_s / 60:.0f} min mid-run" if down_s >= 60
                 else f"S3 down {down_s:.0f} s mid-run",
                 "temporal": f"Temporal down {down_s:.0f} s mid-run"}[service]
        return await self.scenario(label, service, body)

    # -------------------------------------------------------------- measuring recovery
    def measure(self, out: Outcome, job: Job, fault_end: float, *, restart: str,
                events: list[dict[str, Any]], kinds: list[str], not_node: str | None = None
                ) -> None:
        """recovery = fault end -> the server's start time of the next attempt of ``restart``."""
        out.total = (job.closed or time.time()) - job.submitted
        starts = [a.started for s in job.snaps for a in s.acts
                  if a.kind == restart and a.started > fault_end]
        if starts:
            out.recovery = min(starts) - fault_end
            return
        marks = [e["ts"] for e in events if e["kind"] in kinds and e["ts"] > fault_end
                 and e.get("node") != not_node]
        if marks:
            out.recovery, out.recovery_approx = min(marks) - fault_end, True

    def measure_outage(self, out: Outcome, job: Job, service: str, back: float,
                       at_back: dict[str, Any], events: list[dict[str, Any]]) -> None:
        out.total = (job.closed or time.time()) - job.submitted
        signs: list[float] = []
        for s in job.snaps:
            a = s.act("run_backtest")
            if a is not None and a.started > back:
                signs.append(a.started)  # a new attempt
            if service == "temporal":
                if a is not None and a.beat > back:
                    signs.append(a.beat)
                elif s.at > back and s.act("publish_results") is not None:
                    signs.append(s.at)
            else:
                key = (a.details or {}).get("checkpoint_key") if a is not None else None
                if s.at > back and ((key and key != at_back.get("checkpoint_key"))
                                    or (a is None and s.act("publish_results") is not None)
                                    or s.status != "RUNNING"):
                    signs.append(s.at)
        if signs:
            out.recovery = min(signs) - back
            return
        marks = [e["ts"] for e in events
                 if e["kind"] in ("run_started", "run_finished", "published") and e["ts"] > back]
        if marks:
            out.recovery, out.recovery_approx = min(marks) - back, True


# ---------------------------------------------------------------------------- small helpers
def _running(job: Job, kind: str) -> Act | None:
    a = job.latest(kind)
    return a if a is not None and a.state == STARTED and a.identity else None


def _resume_point(events: list[dict[str, Any]], after: float) -> tuple[str, int] | None:
    """Node and tick of the first run attempt after ``after``, as its runner reported it."""
    runs = [e for e in events if e["kind"] == "run_started" and e["ts"] > after]
    if not runs:
        return None
    node = str(runs[0].get("node"))
    runner = [e for e in events if e["kind"] == "runner_started" and e["ts"] >= runs[0]["ts"]
              and e.get("node") == node]
    tick = runner[0].get("resumed_from") if runner else None
    if tick is None:  # the runner never started: what the attempt was asked to resume from
        tick = runs[0].get("ticks_done")
    return node, int(tick or 0)


def _runner_pids(root: int) -> list[int]:
    """The runner's Python among the descendants of ``root`` (the sandbox's bwrap): inside
    bubblewrap it has a session of its own, so a signal to bwrap's group would miss it."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [k for k, p in parent.items() if p == pid]
        todo += kids
        found += [k for k in kids if _is_runner(k)]
    return found


def _resumed(events: list[dict[str, Any]], after: float) -> str:
    point = _resume_point(events, after)
    return f"resumed on {point[0]} from tick {point[1]:,}" if point else "no new run attempt"


def _event_nodes(events: list[dict[str, Any]], kind: str, after: float) -> str:
    nodes = sorted({str(e.get("node")) for e in events if e["kind"] == kind and e["ts"] > after})
    return ", ".join(nodes) or "?"


def _cause(e: BaseException) -> str:
    msgs = [f"{type(e).__name__}: {e}"]
    while (e := getattr(e, "cause", None) or e.__cause__) is not None:  # type: ignore[assignment]
        msgs.append(f"{type(e).__name__}: {e}")
    return " <- ".join(msgs)[:400]


# ---------------------------------------------------------------------------- main
async def main(args: argparse.Namespace) -> int:
    wanted = SCENARIOS if args.scenarios in ("", "all") else tuple(args.scenarios.split(","))
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        say(f"chaos: unknown scenario(s) {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(SCENARIOS)}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="tickreplay-chaos-"))
    say(f"chaos: scenarios {','.join(wanted)}, {args.rounds} run round(s), S3 outage "
        f"{args.outage_s:.0f} s, Temporal outage {args.temporal_down_s:.0f} s; logs in {base}; "
        f"product from {Path(tickreplay.__file__).parent}")
    ctx = Chaos(base, args)
    outcomes: list[Outcome] = []
    try:
        await ctx.setup(need_long=bool({"s3", "temporal"} & set(wanted)))
        rng = random.Random(2024)
        for name in SCENARIOS:
            if name not in wanted:
                continue
            if name == "warm":
                outcomes.append(await ctx.kill_in_stage("warm_cache"))
            elif name == "run":
                for i in range(args.rounds):
                    outcomes.append(await ctx.kill_in_run(i + 1, rng.randint(1, 6)))
            elif name == "publish":
                outcomes.append(await ctx.kill_in_stage("publish_results"))
            elif name == "runner":
                outcomes.append(await ctx.kill_runner())
            elif name == "reclaim":
                outcomes.append(await ctx.reclaim_runner())
            elif name == "foreign":
                outcomes.append(await ctx.foreign_checkpoint())
            elif name == "temporal":
                outcomes.append(await ctx.outage("temporal", args.temporal_down_s))
            elif name == "s3":
                outcomes.append(await ctx.outage("s3", args.outage_s))
    finally:
        ctx.stack.close()
    passed = sum(o.ok for o in outcomes)
    say("")
    say(f"{'scenario':<44} {'':4}  {'recovery':>9}  {'total':>8}  detail")
    for o in outcomes:
        say(o.row())
    say(f"chaos: {passed}/{len(outcomes)} passed (identical hashes: "
        + ", ".join(f"{k} {v[:16]}" for k, v in ctx.expected.items()) + ")")
    if passed == len(outcomes) and outcomes and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
        return 0
    say(f"logs kept in {base}/logs (workers), {base}/s3/weed.log, {base}/temporal/temporal.log")
    return 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--rounds", type=int, default=1,
                   help="worker SIGKILL rounds in run_backtest (random checkpoint count)")
    p.add_argument("--outage-s", type=float, default=900.0, help="S3 outage length")
    p.add_argument("--temporal-down-s", type=float, default=60.0, help="Temporal outage length")
    p.add_argument("--max-recovery-s", type=float, default=20.0,
                   help="a SIGKILL scenario recovering slower than this fails (issue 11, item 5)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) even if all pass")
    p.add_argument("--scenarios", default="all", help=f"comma list of {','.join(SCENARIOS)}")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
