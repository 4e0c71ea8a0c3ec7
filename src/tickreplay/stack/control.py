"""The embedded stack behind ``tickreplay up / down / ps``: Temporal, SeaweedFS and workers.

Why detached processes with PID files rather than a supervisor: ``up`` must return (to a shell,
``make demo``, a test) while the stack keeps running, and ``down`` from another shell must stop
exactly what ``up`` started. Each part runs in its own session, so a Ctrl-C in the terminal that
ran ``up`` does not reach it. A PID file records the process's create time and command line as
well as its pid: the kernel recycles pids, and a recycled pid must never be signalled.

Layout of a state dir (default ``Settings().home``, i.e. ``~/.tickreplay``)::

    stack.json  stack.env  stack.lock      what runs where; KEY=VALUE lines other commands load
    ports.json                             the ports of the last ``up``; kept by ``down``
    pids/<part>.pid                        JSON: pid, create_time, cmdline, ports, endpoint, log
    temporal/temporal.sqlite, temporal.log workflow histories survive ``down`` / ``up``
    s3/data/, s3/weed.log                  SeaweedFS volumes, filer metadata, credentials
    logs/worker-<n>.log                    worker output
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tickreplay.errors import StackError
from tickreplay.settings import Settings
from tickreplay.stack.services import SeaweedFS, TemporalDevServer, log_tail, port_is_free

log = logging.getLogger(__name__)

WORKER_MODULE = "tickreplay.workers.main"
DEFAULT_PORTS: dict[str, int] = {"temporal": 7233, "ui": 8233, "s3": 8333}
_PORT_OWNER = {"temporal": ("temporal", "gRPC"), "ui": ("temporal", "Web UI"), "s3": ("seaweedfs", "S3")}
_SERVICES = ("temporal", "seaweedfs")
# A worker that cannot import its code or reach Temporal dies within a second or two; one that
# is still alive after this long is past its start-up failures.
_WORKER_SETTLE_S = 2.0
# Bound on waiting for a worker to show up as a poller: the check is a confirmation, not a gate.
_POLLER_WAIT_S = 30.0


@dataclass(frozen=True)
class PartStatus:
    """One process of the stack as its PID file and the kernel see it."""

    name: str
    pid: int
    alive: bool
    endpoint: str | None
    log: Path | None


@dataclass(frozen=True)
class StackInfo:
    """What runs in a state dir; ``started`` and ``warnings`` are filled in by :func:`up`."""

    state_dir: Path
    parts: list[PartStatus]
    temporal_address: str | None = None
    ui_url: str | None = None
    s3_endpoint: str | None = None
    started: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def all_alive(self) -> bool:
        """True when something is recorded and every recorded part is running."""
        return bool(self.parts) and all(p.alive for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (paths as strings)."""
        d = dataclasses.asdict(self)
        d["state_dir"] = str(self.state_dir)
        for part in d["parts"]:
            part["log"] = str(part["log"]) if part["log"] else None
        return d


@dataclass(frozen=True)
class _PidRecord:
    name: str
    pid: int
    create_time: float
    cmdline: list[str]
    ports: dict[str, int]
    endpoint: str | None
    log: str | None

    @classmethod
    def capture(cls, name: str, pid: int, ports: dict[str, int], endpoint: str | None,
                log_path: Path) -> _PidRecord:
        proc = psutil.Process(pid)
        return cls(name, pid, proc.create_time(), proc.cmdline(), ports, endpoint, str(log_path))

    def process(self) -> psutil.Process | None:
        """The running process this record describes; ``None`` if it is gone or the pid reused."""
        try:
            proc = psutil.Process(self.pid)
            if (abs(proc.create_time() - self.create_time) < 0.01
                    and proc.cmdline() == self.cmdline
                    and proc.status() != psutil.STATUS_ZOMBIE):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return None

    def status(self) -> PartStatus:
        return PartStatus(self.name, self.pid, self.process() is not None, self.endpoint,
                          Path(self.log) if self.log else None)


def _part_order(name: str) -> tuple[int, int]:
    if name in _SERVICES:
        return (_SERVICES.index(name), 0)
    return (len(_SERVICES), int(name.rpartition("-")[2]) if name[-1:].isdigit() else 0)


def _ports_path(state_dir: Path) -> Path:
    return state_dir / "ports.json"


def _read_last_ports(state_dir: Path) -> dict[str, int]:
    """The ports of the last successful ``up`` in this state dir (``{}`` if none or unreadable).

    Kept apart from the PID files, which ``down`` removes: the next ``up`` must come back on
    the same ports, or every client configured for this stack would talk to the wrong one.
    """
    try:
        doc = json.loads(_ports_path(state_dir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s (%s)", _ports_path(state_dir), e)
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items()
            if k in DEFAULT_PORTS and isinstance(v, int) and 0 < v < 65536}


def _pid_path(state_dir: Path, name: str) -> Path:
    return state_dir / "pids" / f"{name}.pid"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _write_record(state_dir: Path, rec: _PidRecord) -> None:
    _pid_path(state_dir, rec.name).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(_pid_path(state_dir, rec.name), json.dumps(dataclasses.asdict(rec)))


def _read_records(state_dir: Path) -> dict[str, _PidRecord]:
    records: dict[str, _PidRecord] = {}
    for path in sorted((state_dir / "pids").glob("*.pid")):
        try:
            rec = _PidRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable pid file %s (%s)", path, e)
            path.unlink(missing_ok=True)
            continue
        records[rec.name] = rec
    return dict(sorted(records.items(), key=lambda kv: _part_order(kv[0])))


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    # Two concurrent `up`s would both see a part missing and start it twice.
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "stack.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError("stack", f"another `tickreplay up` or `down` is running on "
                                      f"{state_dir}") from None
        yield


def status(state_dir: Path) -> StackInfo:
    """Every part recorded in ``state_dir``: pid, whether that very process still runs, endpoint."""
    state_dir = Path(state_dir).expanduser().resolve()
    records = _read_records(state_dir)
    temporal, s3 = records.get("temporal"), records.get("seaweedfs")
    return StackInfo(
        state_dir=state_dir,
        parts=[rec.status() for rec in records.values()],
        temporal_address=temporal.endpoint if temporal else None,
        ui_url=f"http://127.0.0.1:{temporal.ports['ui']}" if temporal else None,
        s3_endpoint=s3.endpoint if s3 else None,
    )


def up(
    state_dir: Path,
    *,
    temporal_port: int | None = None,
    ui_port: int | None = None,
    s3_port: int | None = None,
    workers: int = 1,
    timeout: float = 90.0,
    settings: Settings | None = None,
) -> StackInfo:
    """Start whatever part of the stack is not running and return once all of it is healthy.

    Parts already running (per their PID files) are kept; a PID file whose process is gone is
    removed and that part started again. Blocking: do not call from inside an event loop.

    Args:
        state_dir: Where data, logs, PID files, ``stack.json`` and ``stack.env`` live.
        temporal_port: Temporal gRPC port. ``None``: the port it runs on, else the one of the
            last ``up`` in this state dir (``ports.json``, kept by ``down``), else 7233.
            Likewise ``ui_port`` (8233) and ``s3_port`` (8333).
        ui_port: Temporal Web UI port.
        s3_port: SeaweedFS S3 port.
        workers: How many worker processes (``worker-1`` .. ``worker-N``) should run.
        timeout: Seconds for the whole start-up before it is abandoned.
        settings: Source of the S3 credentials, buckets, namespace and task queue
            (default ``Settings()``), so the stack and every client agree.

    Returns:
        The stack's status; ``started`` is empty when everything was already up.

    Raises:
        StackError: A port is taken, a part failed to start (the message names the part and
            ends with its log tail; everything this call started is stopped again), or the
            running stack uses other ports than the ones asked for.
    """
    state_dir = Path(state_dir).expanduser().resolve()
    settings = settings or Settings()
    with _locked(state_dir):
        alive: dict[str, _PidRecord] = {}
        previous: dict[str, int] = _read_last_ports(state_dir)
        for name, rec in _read_records(state_dir).items():
            if rec.process() is None:
                log.info("%s (pid %d) is gone; removing its stale pid file", name, rec.pid)
                _pid_path(state_dir, name).unlink(missing_ok=True)
                previous.update(rec.ports)
            else:
                alive[name] = rec
        ports = _choose_ports(state_dir, alive, previous, {"temporal": temporal_port,
                                                           "ui": ui_port, "s3": s3_port})
        wanted = [*_SERVICES, *(f"worker-{i}" for i in range(1, workers + 1))]
        missing = [name for name in wanted if name not in alive]
        if not missing:
            _write_atomic(_ports_path(state_dir), json.dumps(ports, indent=2) + "\n")
            return status(state_dir)
        _check_ports_free(ports, missing)
        return _start(state_dir, ports, missing, alive, settings, time.monotonic() + timeout)


def _choose_ports(state_dir: Path, alive: dict[str, _PidRecord], previous: dict[str, int],
                  requested: dict[str, int | None]) -> dict[str, int]:
    # A part that died comes back on its old port: the parts still running were given that one.
    running = {k: v for rec in alive.values() for k, v in rec.ports.items()}
    ports: dict[str, int] = {}
    for key, want in requested.items():
        have = running.get(key)
        if have is not None and want is not None and want != have:
            part, role = _PORT_OWNER[key]
            raise StackError(part, f"already running from {state_dir} with {role} port {have}; "
                                   f"run `tickreplay down` first to move it to {want}")
        ports[key] = next(p for p in (want, have, previous.get(key), DEFAULT_PORTS[key])
                          if p is not None)
    if len(set(ports.values())) < len(ports):
        raise StackError("stack", f"ports must differ: {ports}")
    return ports


def _check_ports_free(ports: dict[str, int], missing: list[str]) -> None:
    # Checked before anything starts, so a taken S3 port does not leave Temporal half-started.
    for key, port in ports.items():
        part, role = _PORT_OWNER[key]
        if part in missing and not port_is_free(port):
            raise StackError(part, f"{role} port {port} on 127.0.0.1 is already in use "
                                   f"(choose another with --{key}-port)")


def _start(state_dir: Path, ports: dict[str, int], missing: list[str],
           alive: dict[str, _PidRecord], settings: Settings, deadline: float) -> StackInfo:
    started: list[_PidRecord] = []
    warnings: list[str] = []

    def remaining() -> float:
        return max(1.0, deadline - time.monotonic())

    try:
        if "temporal" in missing:
            try:
                tsrv = TemporalDevServer.start(state_dir / "temporal", port=ports["temporal"],
                                               ui_port=ports["ui"], timeout=remaining())
            except RuntimeError as e:
                raise StackError("temporal", str(e)) from None
            started.append(_record(state_dir, "temporal", tsrv.pid,
                                   {"temporal": tsrv.port, "ui": ports["ui"]},
                                   tsrv.address, tsrv.log_path))
        if "seaweedfs" in missing:
            try:
                weed = SeaweedFS.start(state_dir / "s3", s3_port=ports["s3"],
                                       access_key=settings.s3_access_key,
                                       secret_key=settings.s3_secret_key, timeout=remaining())
            except RuntimeError as e:
                raise StackError("seaweedfs", str(e)) from None
            started.append(_record(state_dir, "seaweedfs", weed.pid, {"s3": ports["s3"]},
                                   weed.endpoint, weed.log_path))
        endpoints = _Endpoints(f"127.0.0.1:{ports['temporal']}", f"http://127.0.0.1:{ports['s3']}")
        if "seaweedfs" in missing:
            _create_buckets(settings, endpoints.s3)
        new_workers = [name for name in missing if name.startswith("worker-")]
        if new_workers:
            procs = {name: _spawn_worker(state_dir, name, endpoints, settings)
                     for name in new_workers}
            for name, proc in procs.items():
                started.append(_record(state_dir, name, proc.pid, {}, None,
                                       state_dir / "logs" / f"{name}.log"))
            warnings += _await_workers(state_dir, procs, endpoints, settings, deadline)
    except BaseException:
        for rec in reversed(started):
            _stop_records([rec], grace=5.0 if rec.name != "seaweedfs" else 0.0)
            _pid_path(state_dir, rec.name).unlink(missing_ok=True)
        raise
    info = dataclasses.replace(status(state_dir), started=[r.name for r in started],
                               warnings=warnings)
    _write_stack_files(state_dir, info, ports, settings)
    return info


@dataclass(frozen=True)
class _Endpoints:
    temporal: str
    s3: str


def _record(state_dir: Path, name: str, pid: int, ports: dict[str, int], endpoint: str | None,
            log_path: Path) -> _PidRecord:
    rec = _PidRecord.capture(name, pid, ports, endpoint, log_path)
    _write_record(state_dir, rec)
    return rec


def _create_buckets(settings: Settings, endpoint: str) -> None:
    from tickreplay.data.objectstore import S3Store

    s3 = settings.model_copy(update={"s3_endpoint": endpoint})
    for bucket in (settings.data_bucket, settings.results_bucket, settings.artifacts_bucket):
        try:
            S3Store(bucket, settings=s3).ensure_bucket()
        except Exception as e:  # botocore raises many unrelated types; all mean the same here
            raise StackError("seaweedfs", f"could not create bucket {bucket!r}: {e}") from e


def _worker_env(state_dir: Path, endpoints: _Endpoints, settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TICKREPLAY_HOME": str(state_dir),
        "TICKREPLAY_TEMPORAL_ADDRESS": endpoints.temporal,
        "TICKREPLAY_S3_ENDPOINT": endpoints.s3,
        "TICKREPLAY_S3_ACCESS_KEY": settings.s3_access_key,
        "TICKREPLAY_S3_SECRET_KEY": settings.s3_secret_key,
        "PYTHONUNBUFFERED": "1",  # so the log tail in an error message is current
    }


def _spawn_worker(state_dir: Path, name: str, endpoints: _Endpoints,
                  settings: Settings) -> subprocess.Popen[bytes]:
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE], cwd=state_dir,
            env=_worker_env(state_dir, endpoints, settings), stdin=subprocess.DEVNULL,
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _await_workers(state_dir: Path, procs: dict[str, subprocess.Popen[bytes]],
                   endpoints: _Endpoints, settings: Settings, deadline: float) -> list[str]:
    """Fail if a worker dies while settling; then confirm each one polls (best effort)."""
    settle = time.monotonic() + _WORKER_SETTLE_S
    while time.monotonic() < settle:
        _raise_if_exited(state_dir, procs)
        time.sleep(0.2)
    _raise_if_exited(state_dir, procs)
    from temporalio.service import RPCError

    budget = min(_POLLER_WAIT_S, deadline - time.monotonic())
    try:
        pending = asyncio.run(_wait_for_pollers(state_dir, procs, endpoints.temporal,
                                                settings, budget))
    except StackError:
        raise
    except (RPCError, RuntimeError, OSError) as e:  # a confirmation only: a running worker stays
        return [f"could not confirm that the workers poll Temporal: {e}"]
    return [f"{name} (pid {procs[name].pid}) runs but did not show up as a poller of task "
            f"queue {settings.task_queue!r} within {budget:.0f} s; see its log"
            for name in sorted(pending)]


async def _wait_for_pollers(state_dir: Path, procs: dict[str, subprocess.Popen[bytes]],
                            address: str, settings: Settings, budget: float) -> set[str]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    deadline = time.monotonic() + budget
    client = await Client.connect(address, namespace=settings.temporal_namespace)
    # The SDK's default worker identity is "<pid>@<host>", which ties a poller to a process.
    pending = {name: f"{proc.pid}@" for name, proc in procs.items()}
    while pending and time.monotonic() < deadline:
        _raise_if_exited(state_dir, procs)
        identities: set[str] = set()
        for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
            resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.task_queue), task_queue_type=kind))
            identities.update(p.identity for p in resp.pollers)
        pending = {n: prefix for n, prefix in pending.items()
                   if not any(i.startswith(prefix) for i in identities)}
        if pending:
            await asyncio.sleep(0.5)
    return set(pending)


def _raise_if_exited(state_dir: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            log_path = state_dir / "logs" / f"{name}.log"
            raise StackError(name, f"worker exited with code {proc.returncode} while starting; "
                                   f"see {log_path}:\n{log_tail(log_path)}")


def _write_stack_files(state_dir: Path, info: StackInfo, ports: dict[str, int],
                       settings: Settings) -> None:
    doc = {
        **info.to_dict(),
        "ports": ports,
        "namespace": settings.temporal_namespace,
        "task_queue": settings.task_queue,
        "buckets": [settings.data_bucket, settings.results_bucket, settings.artifacts_bucket],
    }
    for transient in ("started", "warnings"):
        doc.pop(transient)
    for part in doc["parts"]:
        part.pop("alive")  # a snapshot would go stale; `tickreplay ps` checks the kernel
    _write_atomic(state_dir / "stack.json", json.dumps(doc, indent=2) + "\n")
    _write_atomic(_ports_path(state_dir), json.dumps(ports, indent=2) + "\n")
    env = {
        "TICKREPLAY_TEMPORAL_ADDRESS": info.temporal_address,
        "TICKREPLAY_S3_ENDPOINT": info.s3_endpoint,
        "TICKREPLAY_S3_ACCESS_KEY": settings.s3_access_key,
        "TICKREPLAY_S3_SECRET_KEY": settings.s3_secret_key,
    }
    # Holds the S3 secret: readable by the owner only.
    _write_atomic(state_dir / "stack.env", "".join(f"{k}={v}\n" for k, v in env.items()), 0o600)


def down(state_dir: Path, *, worker_grace: float = 60.0, service_grace: float = 30.0) -> list[str]:
    """Stop the processes named in the PID files: workers, then SeaweedFS, then Temporal.

    Workers get SIGTERM together and up to ``worker_grace`` seconds to checkpoint their running
    backtests; services get ``service_grace`` (SeaweedFS's filer needs about 15 s to stop
    cleanly). Whatever is still up then is SIGKILLed with its process group and descendants.
    A PID file whose pid now belongs to another process is dropped without signalling anyone.
    Data (Temporal's SQLite file, S3 objects) stays, and so does ``ports.json``: the next
    ``up`` reuses those ports.

    Returns:
        Names of the parts that were running and have been stopped.
    """
    state_dir = Path(state_dir).expanduser().resolve()
    if not state_dir.is_dir():
        return []
    with _locked(state_dir):
        records = _read_records(state_dir)
        stopped = _stop_records([r for r in records.values() if r.name not in _SERVICES],
                                worker_grace)
        for name in ("seaweedfs", "temporal"):
            if name in records:
                stopped += _stop_records([records[name]], service_grace)
        for name in records:
            _pid_path(state_dir, name).unlink(missing_ok=True)
        for path in ("stack.json", "stack.env"):
            (state_dir / path).unlink(missing_ok=True)
    return stopped


def _stop_records(records: list[_PidRecord], grace: float) -> list[str]:
    procs: dict[str, tuple[psutil.Process, list[psutil.Process]]] = {}
    for rec in records:
        proc = rec.process()
        if proc is None:
            log.info("%s (pid %d) is not running; dropping its pid file", rec.name, rec.pid)
            continue
        try:
            # Snapshot first: once the parent dies its children are reparented and untraceable.
            procs[rec.name] = (proc, proc.children(recursive=True))
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            procs.pop(rec.name, None)
    deadline = time.monotonic() + grace
    for name, (proc, descendants) in procs.items():
        if not _wait_gone(proc, deadline - time.monotonic()):
            if grace > 0:
                log.warning("%s (pid %d) still up %.0f s after SIGTERM; killing it", name,
                            proc.pid, grace)
            _kill_group(proc)
            _wait_gone(proc, 10.0)
        for child in descendants:
            try:
                child.kill()  # psutil re-checks identity, so a recycled pid is safe
            except psutil.NoSuchProcess:
                pass
            _wait_gone(child, 5.0)
    return list(procs)


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    end = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            proc.wait(timeout=0.2)  # reaps it when it is our child (tests, a failed `up`)
            return True
        except psutil.TimeoutExpired:
            pass
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True  # dead; its parent (not us) reaps it
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= end:
            return False


def _kill_group(proc: psutil.Process) -> None:
    try:
        # Each part leads its own session, so its group holds exactly what it spawned.
        if proc.is_running() and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
