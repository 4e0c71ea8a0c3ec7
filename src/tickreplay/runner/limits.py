"""Per-runner kernel limits: a process-count cap (a fork bomb stops there) and a memory cap whose
OOM kill can be told apart from any other death.

Why cgroups and not only rlimits: ``RLIMIT_NPROC`` counts processes per real user and the kernel
ignores it for root, which a worker often is; only a cgroup's ``pids.max`` bounds a fork bomb
whoever runs it. ``RLIMIT_AS`` (set by the child) turns most large allocations into a
``MemoryError`` the strategy sees; the memory cgroup catches what address-space accounting
misses (memory mapped by native code) and records that it killed, so the job fails as "out of
memory" instead of as a bare SIGKILL.

Both cgroup v1 (``/sys/fs/cgroup/{pids,memory}``, as on these machines) and v2 (one unified
tree) are handled. Where neither is writable the limits are skipped, ``available`` is False and
the reason is kept for the job's events; rlimits still apply.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
GROUP = "tickreplay"


@dataclass
class RunnerCgroup:
    """The cgroup(s) of one runner: created before it spawns, joined in its preexec, removed
    after it exits."""

    pids_max: int
    memory_bytes: int
    dirs: list[Path] = field(default_factory=list)
    unified: bool = False
    problem: str = ""

    @property
    def available(self) -> bool:
        return bool(self.dirs)

    @classmethod
    def create(cls, pids_max: int, memory_bytes: int, root: Path = ROOT) -> RunnerCgroup:
        name = f"run-{uuid.uuid4().hex[:12]}"
        cg = cls(pids_max, memory_bytes)
        try:
            if (root / "cgroup.controllers").is_file():  # v2: one tree, both controllers
                base = root / GROUP
                base.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    (root / "cgroup.subtree_control").write_text("+pids +memory")
                    (base / "cgroup.subtree_control").write_text("+pids +memory")
                d = base / name
                d.mkdir()
                cg.dirs, cg.unified = [d], True
                (d / "pids.max").write_text(str(pids_max))
                if memory_bytes > 0:
                    (d / "memory.max").write_text(str(memory_bytes))
                    with contextlib.suppress(OSError):
                        (d / "memory.swap.max").write_text("0")
            else:  # v1: a directory per controller
                for ctrl in ("pids", "memory"):
                    d = root / ctrl / GROUP / name
                    d.mkdir(parents=True)
                    cg.dirs.append(d)
                (cg.dirs[0] / "pids.max").write_text(str(pids_max))
                if memory_bytes > 0:
                    (cg.dirs[1] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        except OSError as e:
            cg.close()
            cg.dirs, cg.problem = [], f"no cgroup limits ({type(e).__name__}: {e})"
        return cg

    def join(self) -> None:
        """Move the calling process into the cgroup(s): call in the child before exec."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        """The processes in the cgroup now."""
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return sorted(out)

    def oom_killed(self) -> bool:
        """Whether the memory cap killed a process of this runner."""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value or 0) > 0:
                            return True
            with contextlib.suppress(OSError, ValueError):  # v1 kernels without oom_kill
                if not self.unified and d.parent.parent.name == "memory" and \
                        int((d / "memory.failcnt").read_text()) > 0 and \
                        int((d / "memory.max_usage_in_bytes").read_text()) >= self.memory_bytes:
                    return True
        return False

    def close(self) -> None:
        """Kill whatever is left in the cgroup(s) and remove them."""
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for d in self.dirs:
            for _ in range(50):  # rmdir fails while the killed tasks are still exiting
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
