"""The embedded stack behind ``tickreplay up / down / ps``: Temporal, SeaweedFS, API, workers.

Why detached processes with PID files rather than a supervisor: ``up`` must return (to a shell,
``make demo``, a test) while the stack keeps running, and ``down`` from another shell must stop
exactly what ``up`` started. Each part runs in its own session, so a Ctrl-C in the terminal that
ran ``up`` does not reach it. The PID records (:mod:`tickreplay.stack.pids`) identify a process
by create time and command line as well as pid, so a recycled pid is never signalled.

Layout of a state dir (default ``Settings.load().home``, i.e. ``~/.tickreplay``)::

    stack.json  stack.env  stack.lock      what runs where; KEY=VALUE lines other commands load
    api.token                              the local user's token for the job API (0600)
    tickreplay.db                          the metadata database (SQLite, unless a DSN is set)
    ports.json                             the ports of the last ``up``; kept by ``down``
    pids/<part>.pid                        JSON: pid, create_time, cmdline, ports, endpoint, log
    temporal/temporal.sqlite, temporal.log workflow histories survive ``down`` / ``up``
    s3/data/, s3/weed.log                  SeaweedFS volumes, filer metadata, credentials
    logs/worker-<n>.log, logs/api.log      worker and API output
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tickreplay.errors import StackError
from tickreplay.osutil import atomic_write, kill_group
from tickreplay.settings import Settings
from tickreplay.stack.pids import (
    PUBLIC_MODE,
    SERVICES,
    PartStatus,
    PidRecord,
    locked,
    pid_path,
    read_last_ports,
    read_records,
    write_last_ports,
    write_record,
)
from tickreplay.stack.ports import DEFAULT_PORTS, check_ports_free, choose_ports
from tickreplay.stack.process import log_tail
from tickreplay.stack.seaweedfs import SeaweedFS
from tickreplay.stack.temporal import TemporalDevServer

# Importers of this module (the CLI, tests, docs/stack.md) use these names from here.
__all__ = ["DEFAULT_PORTS", "WORKER_MODULE", "PartStatus", "StackError", "StackInfo", "down",
           "status", "up"]

log = logging.getLogger(__name__)

# Read at each spawn, so a test can point workers at a module that fails to import.
WORKER_MODULE = "tickreplay.workers.main"
# A worker that cannot import its code or reach Temporal dies within a second or two; one that
# is still alive after this long is past its start-up failures.
_WORKER_SETTLE_S = 2.0
# Bound on waiting for a worker to show up as a poller: the check is a confirmation, not a gate.
_POLLER_WAIT_S = 30.0


@dataclass(frozen=True)
class StackInfo:
    """What runs in a state dir; ``started`` and ``warnings`` are filled in by :func:`up`."""

    state_dir: Path
    parts: list[PartStatus]
    temporal_address: str | None = None
    ui_url: str | None = None
    s3_endpoint: str | None = None
    api_url: str | None = None
    grpc_address: str | None = None
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


def status(state_dir: Path) -> StackInfo:
    """Every part recorded in ``state_dir``: pid, whether that very process still runs, endpoint."""
    state_dir = Path(state_dir).expanduser().resolve()
    records = read_records(state_dir)
    temporal, s3, api = records.get("temporal"), records.get("seaweedfs"), records.get("api")
    return StackInfo(
        state_dir=state_dir,
        parts=[rec.status() for rec in records.values()],
        temporal_address=temporal.endpoint if temporal else None,
        ui_url=f"http://127.0.0.1:{temporal.ports['ui']}" if temporal else None,
        s3_endpoint=s3.endpoint if s3 else None,
        api_url=api.endpoint if api else None,
        grpc_address=f"127.0.0.1:{api.ports['grpc']}" if api else None,
    )


def up(
    state_dir: Path,
    *,
    temporal_port: int | None = None,
    ui_port: int | None = None,
    s3_port: int | None = None,
    api_port: int | None = None,
    grpc_port: int | None = None,
    workers: int = 1,
    api: bool = True,
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
        api_port: The job API's REST port (8000); ``grpc_port`` its gRPC port (50051).
        grpc_port: See ``api_port``.
        workers: How many worker processes (``worker-1`` .. ``worker-N``) should run.
        api: Whether the job API (REST + gRPC) runs; its URL and the local user's token go
            into ``stack.env``, so the CLI talks to it.
        timeout: Seconds for the whole start-up before it is abandoned.
        settings: Source of the S3 credentials, buckets, namespace and task queue
            (default ``Settings.load()`` for this state dir), so the stack and every client
            agree.

    Returns:
        The stack's status; ``started`` is empty when everything was already up.

    Raises:
        StackError: A port is taken, a part failed to start (the message names the part and
            ends with its log tail; everything this call started is stopped again), or the
            running stack uses other ports than the ones asked for.
    """
    state_dir = Path(state_dir).expanduser().resolve()
    settings = settings or Settings.load(home=state_dir)
    with locked(state_dir):
        _migrate(settings, state_dir)
        alive: dict[str, PidRecord] = {}
        previous: dict[str, int] = read_last_ports(state_dir)
        for name, rec in read_records(state_dir).items():
            if rec.process() is None:
                log.info("%s (pid %d) is gone; removing its stale pid file", name, rec.pid)
                pid_path(state_dir, name).unlink(missing_ok=True)
                previous.update(rec.ports)
            else:
                alive[name] = rec
        running = {k: v for rec in alive.values() for k, v in rec.ports.items()}
        ports = choose_ports(state_dir, running, previous, {
            "temporal": temporal_port, "ui": ui_port, "s3": s3_port, "api": api_port,
            "grpc": grpc_port})
        services = [name for name in SERVICES if api or name != "api"]
        wanted = [*services, *(f"worker-{i}" for i in range(1, workers + 1))]
        missing = [name for name in wanted if name not in alive]
        if not missing:
            write_last_ports(state_dir, ports)
            return status(state_dir)
        check_ports_free(ports, missing)
        return _start(state_dir, ports, missing, alive, settings, time.monotonic() + timeout,
                      capacity=workers * settings.max_concurrent_runs)


def _start(state_dir: Path, ports: dict[str, int], missing: list[str],
           alive: dict[str, PidRecord], settings: Settings, deadline: float, *,
           capacity: int = 1) -> StackInfo:
    """Start the ``missing`` parts in order (Temporal, SeaweedFS, the API, workers).

    All or nothing: if any part fails, the parts this call started are stopped and their PID
    files removed, so a failed ``up`` leaves the state dir as it found it.
    """
    started: list[PidRecord] = []
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
        endpoints = _Endpoints(f"127.0.0.1:{ports['temporal']}", f"http://127.0.0.1:{ports['s3']}",
                               capacity)
        if "seaweedfs" in missing:
            _create_buckets(settings, endpoints.s3)
        if "api" in missing:
            proc = _spawn_api(state_dir, ports, endpoints, settings)
            url = f"http://127.0.0.1:{ports['api']}"
            started.append(_record(state_dir, "api", proc.pid,
                                   {"api": ports["api"], "grpc": ports["grpc"]}, url,
                                   state_dir / "logs" / "api.log"))
            _await_api(state_dir, proc, url, deadline)
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
            pid_path(state_dir, rec.name).unlink(missing_ok=True)
        raise
    info = dataclasses.replace(status(state_dir), started=[r.name for r in started],
                               warnings=warnings)
    _write_stack_files(state_dir, info, ports, settings)
    return info


@dataclass(frozen=True)
class _Endpoints:
    """Where the workers and the bucket set-up reach the servers (known before they run)."""

    temporal: str
    s3: str
    capacity: int = 1  # runner slots of all workers: the default cap on RUNNING jobs


def _record(state_dir: Path, name: str, pid: int, ports: dict[str, int], endpoint: str | None,
            log_path: Path) -> PidRecord:
    """Write the PID record at once: a later failure must be able to stop this part."""
    rec = PidRecord.capture(name, pid, ports, endpoint, log_path)
    write_record(state_dir, rec)
    return rec


def _migrate(settings: Settings, state_dir: Path) -> None:
    """Bring the metadata database to the newest schema (every ``up``; idempotent, ~50 ms)."""
    from tickreplay.db.migrate import upgrade
    from tickreplay.db.store import open_engine

    dsn = settings.model_copy(update={"home": state_dir}).resolved_db_dsn()
    engine = open_engine(dsn)
    try:
        upgrade(engine)
    except Exception as e:  # noqa: BLE001 - any database failure stops `up`, naming it
        raise StackError("database", f"migrations failed on {dsn}: {type(e).__name__}: {e}"
                         ) from None
    finally:
        engine.dispose()


def _create_buckets(settings: Settings, endpoint: str) -> None:
    """Create the buckets before any worker runs, so no job fails on a missing bucket."""
    from tickreplay.data.objectstore import S3Store

    s3 = settings.model_copy(update={"s3_endpoint": endpoint})
    for bucket in (settings.data_bucket, settings.results_bucket, settings.artifacts_bucket):
        try:
            S3Store(bucket, settings=s3).ensure_bucket()
        except Exception as e:  # botocore raises many unrelated types; all mean the same here
            raise StackError("seaweedfs", f"could not create bucket {bucket!r}: {e}") from e


def _worker_env(state_dir: Path, endpoints: _Endpoints, settings: Settings) -> dict[str, str]:
    """The caller's environment plus this stack's endpoints and keys, which take precedence.

    Unless set explicitly, the cap on RUNNING jobs is the stack's runner slots: an admitted job
    then has a runner at once, instead of waiting on a node queue until its schedule-to-start
    timeout re-places it (again and again, for a long queue of long jobs).
    """
    return {
        "TICKREPLAY_MAX_RUNNING_JOBS": str(max(1, endpoints.capacity)),
        **os.environ,
        "TICKREPLAY_HOME": str(state_dir),
        "TICKREPLAY_TEMPORAL_ADDRESS": endpoints.temporal,
        "TICKREPLAY_S3_ENDPOINT": endpoints.s3,
        "TICKREPLAY_S3_ACCESS_KEY": settings.s3_access_key,
        "TICKREPLAY_S3_SECRET_KEY": settings.s3_secret_key,
        "PYTHONUNBUFFERED": "1",  # so the log tail in an error message is current
    }


def _spawn_api(state_dir: Path, ports: dict[str, int], endpoints: _Endpoints,
               settings: Settings) -> subprocess.Popen[bytes]:
    """Start ``tickreplay api`` (REST + gRPC), detached, output appended to logs/api.log."""
    return _spawn_part(state_dir, "api", [
        "-m", "tickreplay.cli", "api", "--host", "127.0.0.1", "--port", str(ports["api"]),
        "--grpc-port", str(ports["grpc"])], endpoints, settings)


def _await_api(state_dir: Path, proc: subprocess.Popen[bytes], url: str, deadline: float
               ) -> None:
    """Wait until the API answers /healthz; fail ``up`` with its log tail if it dies."""
    import httpx

    while True:
        _raise_if_exited(state_dir, {"api": proc})
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StackError("api", f"{url}/healthz did not answer in time")
        time.sleep(0.2)


def local_token(settings: Settings, state_dir: Path, user: str = "local") -> str:
    """The token of the stack's local user, kept in ``api.token`` (0600) across ``up``s.

    Created with the user on the first ``up``; a stored token that no longer authenticates
    (user revoked, database replaced) is replaced by a new one.
    """
    from tickreplay.db.store import MetaStore, StoreError, open_engine

    path = state_dir / "api.token"
    engine = open_engine(settings.model_copy(update={"home": state_dir}).resolved_db_dsn())
    try:
        store = MetaStore(engine)
        if path.is_file() and store.authenticate(token := path.read_text().strip()):
            return token
        try:
            token = store.add_user(user)
        except StoreError:
            token = store.new_token(user)
        atomic_write(path, token + "\n", mode=0o600)
        return token
    finally:
        engine.dispose()


def _spawn_worker(state_dir: Path, name: str, endpoints: _Endpoints,
                  settings: Settings) -> subprocess.Popen[bytes]:
    """Start ``WORKER_MODULE`` detached, output appended to logs/<name>.log."""
    return _spawn_part(state_dir, name, ["-m", WORKER_MODULE], endpoints, settings)


def _spawn_part(state_dir: Path, name: str, args: list[str], endpoints: _Endpoints,
                settings: Settings) -> subprocess.Popen[bytes]:
    """``python ARGS`` detached (its own session) with the stack's environment, output
    appended to ``logs/<name>.log``."""
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        return subprocess.Popen(
            [sys.executable, *args], cwd=state_dir,
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
    """Names of the workers not seen polling the task queue within ``budget`` seconds."""
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
    """Fail ``up`` with the log tail of the first part (a worker, the API) that died while
    starting."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            log_path = state_dir / "logs" / f"{name}.log"
            raise StackError(name, f"exited with code {proc.returncode} while starting; "
                                   f"see {log_path}:\n{log_tail(log_path)}")


def _write_stack_files(state_dir: Path, info: StackInfo, ports: dict[str, int],
                       settings: Settings) -> None:
    """Write ``stack.json``, ``ports.json`` and ``stack.env``: how other commands find the stack."""
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
    atomic_write(state_dir / "stack.json", json.dumps(doc, indent=2) + "\n", mode=PUBLIC_MODE)
    write_last_ports(state_dir, ports)
    env = {
        "TICKREPLAY_TEMPORAL_ADDRESS": info.temporal_address,
        "TICKREPLAY_S3_ENDPOINT": info.s3_endpoint,
        "TICKREPLAY_S3_ACCESS_KEY": settings.s3_access_key,
        "TICKREPLAY_S3_SECRET_KEY": settings.s3_secret_key,
    }
    if info.api_url:  # the CLI then goes through the job API as the local user
        env["TICKREPLAY_API_URL"] = info.api_url
        env["TICKREPLAY_API_TOKEN"] = local_token(settings, state_dir)
    # Holds the S3 secret and the API token: readable by the owner only.
    atomic_write(state_dir / "stack.env", "".join(f"{k}={v}\n" for k, v in env.items()),
                 mode=0o600)


def down(state_dir: Path, *, worker_grace: float = 60.0, service_grace: float = 30.0) -> list[str]:
    """Stop the processes named in the PID files: workers, then the API, SeaweedFS, Temporal.

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
    with locked(state_dir):
        records = read_records(state_dir)
        stopped = _stop_records([r for r in records.values() if r.name not in SERVICES],
                                worker_grace)
        for name in reversed(SERVICES):  # the API first, Temporal last
            if name in records:
                stopped += _stop_records([records[name]], service_grace)
        for name in records:
            pid_path(state_dir, name).unlink(missing_ok=True)
        for path in ("stack.json", "stack.env"):
            (state_dir / path).unlink(missing_ok=True)
    return stopped


def _stop_records(records: list[PidRecord], grace: float) -> list[str]:
    """SIGTERM every still-identified process together, then SIGKILL laggards after ``grace``.

    Returns the names of the parts that were running.
    """
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
    """Whether ``proc`` ended within ``timeout`` seconds (a zombie counts as ended)."""
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
    """SIGKILL ``proc`` with its process group when it leads one, else only ``proc``."""
    try:
        # Each part leads its own session, so its group holds exactly what it spawned.
        if proc.is_running() and os.getpgid(proc.pid) == proc.pid:
            kill_group(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
