"""What ``tickreplay up`` left running in a state dir: PID records, the lock, ``ports.json``.

Why a PID file records the process's create time and command line as well as its pid: the
kernel recycles pids, and a recycled pid must never be signalled. Why ``ports.json`` is kept
apart from the PID files: ``down`` removes those, yet the next ``up`` must come back on the
same ports.

Layout in a state dir::

    pids/<part>.pid     JSON: pid, create_time, cmdline, ports, endpoint, log
    stack.lock          held by ``up`` and ``down`` while they change what runs
    ports.json          the ports of the last ``up``; kept by ``down``
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tickreplay.errors import StackError
from tickreplay.osutil import atomic_write
from tickreplay.stack.ports import DEFAULT_PORTS

log = logging.getLogger(__name__)

# The servers, in start order (stopped in reverse); every other part is a worker named
# ``worker-<n>``.
SERVICES: tuple[str, ...] = ("temporal", "seaweedfs", "api")
# Mode of every file here but stack.env: others may read what runs where.
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class PartStatus:
    """One process of the stack as its PID file and the kernel see it."""

    name: str
    pid: int
    alive: bool
    endpoint: str | None
    log: Path | None


@dataclass(frozen=True)
class PidRecord:
    """The content of ``pids/<name>.pid``: enough to find that very process again, and no other."""

    name: str
    pid: int
    create_time: float
    cmdline: list[str]
    ports: dict[str, int]
    endpoint: str | None
    log: str | None

    @classmethod
    def capture(cls, name: str, pid: int, ports: dict[str, int], endpoint: str | None,
                log_path: Path) -> PidRecord:
        """Record the running process ``pid`` (its create time and command line identify it)."""
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
        """What ``tickreplay ps`` shows: the record plus whether the kernel still runs it."""
        return PartStatus(self.name, self.pid, self.process() is not None, self.endpoint,
                          Path(self.log) if self.log else None)


def part_order(name: str) -> tuple[int, int]:
    """Sort key: services in start order, then workers by number (``worker-10`` after ``-9``)."""
    if name in SERVICES:
        return (SERVICES.index(name), 0)
    return (len(SERVICES), int(name.rpartition("-")[2]) if name[-1:].isdigit() else 0)


def pid_path(state_dir: Path, name: str) -> Path:
    """Where the PID record of part ``name`` lives."""
    return state_dir / "pids" / f"{name}.pid"


def write_record(state_dir: Path, rec: PidRecord) -> None:
    """Write ``rec`` whole, so a concurrent ``ps`` never reads half a record."""
    path = pid_path(state_dir, rec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(dataclasses.asdict(rec)), mode=PUBLIC_MODE)


def read_records(state_dir: Path) -> dict[str, PidRecord]:
    """Every readable PID record, in :func:`part_order`; unreadable files are removed."""
    records: dict[str, PidRecord] = {}
    for path in sorted((state_dir / "pids").glob("*.pid")):
        try:
            rec = PidRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable pid file %s (%s)", path, e)
            path.unlink(missing_ok=True)
            continue
        records[rec.name] = rec
    return dict(sorted(records.items(), key=lambda kv: part_order(kv[0])))


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold ``stack.lock`` (without waiting): two concurrent `up`s would both see a part
    missing and start it twice.

    Raises:
        StackError: Another ``up`` or ``down`` holds the lock.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "stack.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError("stack", f"another `tickreplay up` or `down` is running on "
                                      f"{state_dir}") from None
        yield


def _ports_path(state_dir: Path) -> Path:
    return state_dir / "ports.json"


def read_last_ports(state_dir: Path) -> dict[str, int]:
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


def write_last_ports(state_dir: Path, ports: dict[str, int]) -> None:
    """Remember the ports of this ``up`` for the next one (see :func:`read_last_ports`)."""
    atomic_write(_ports_path(state_dir), json.dumps(ports, indent=2) + "\n", mode=PUBLIC_MODE)
