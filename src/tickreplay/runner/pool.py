"""The worker's side of a runner: spawn it (sandboxed), talk to it, keep its output bounded.

Why a private channel: protocol messages used to share stdout with the strategy's own prints,
so a strategy printing ``{"type": "done", ...}`` was taken for the runner, and one printing
without a newline swallowed the real ``done``. Now messages travel on an inherited socket;
stdout and stderr are only the job's runner output, kept to a bounded head and tail.

Why a sandbox: the runner executes user code. Under bubblewrap it has no network (so no
object store), its own pid namespace (so no ``/proc`` of the worker), the platform's state dir
hidden (the signing key lives there), and exactly one writable directory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from tickreplay.osutil import die_with_parent, kill_group
from tickreplay.runner.protocol import Failed, Message, RunnerJob, decode, encode
from tickreplay.settings import Settings

# Variables a runner may inherit: nothing that names a credential or the platform's key.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONHASHSEED", "PYTHONPATH", "VIRTUAL_ENV")


class BoundedOutput:
    """The first ``head`` and last ``tail`` bytes of a stream, and how much was dropped between."""

    def __init__(self, head: int = 16_384, tail: int = 49_152) -> None:
        self.head_max, self.tail_max = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.tail_max:
            cut = len(self.tail) - self.tail_max
            self.dropped += cut
            del self.tail[:cut]

    def text(self) -> str:
        mid = f"\n[... {self.dropped} bytes dropped ...]\n" if self.dropped else ""
        return (bytes(self.head).decode(errors="replace") + mid
                + bytes(self.tail).decode(errors="replace"))


BACKENDS = ("process", "sandbox", "podman", "kubernetes")


def backend_name(settings: Settings) -> str:
    """The runner backend: ``runner_backend`` (or the older ``runner_sandbox``), 'auto'
    meaning the sandbox when bubblewrap is installed and a plain process otherwise."""
    mode = settings.runner_backend
    if mode == "auto":
        mode = {"bwrap": "sandbox", "process": "process"}.get(settings.runner_sandbox, "auto")
    if mode == "bwrap":
        mode = "sandbox"
    if mode == "auto":
        return "sandbox" if shutil.which("bwrap") else "process"
    if mode not in BACKENDS:
        raise ValueError(f"runner_backend={mode!r}: expected one of {', '.join(BACKENDS)}")
    if mode == "sandbox" and not shutil.which("bwrap"):
        raise RuntimeError("runner_backend=sandbox but bubblewrap (bwrap) is not installed")
    return mode


def sandbox_mode(settings: Settings) -> str:
    """'bwrap' or 'process': how a runner child of this worker is wrapped. The podman backend's
    pods are confined by podman; the worker's other children (the params inspector) still use
    bubblewrap when it is installed."""
    backend = backend_name(settings)
    if backend in ("podman", "kubernetes"):
        return "bwrap" if shutil.which("bwrap") else "process"
    return "bwrap" if backend == "sandbox" else "process"


def runner_command(settings: Settings, workdir: Path, fd: int, inputs: Path) -> list[str]:
    """The argv of a runner: the child module, wrapped in bubblewrap unless disabled; of the
    data, only ``inputs`` (the job's own partitions, staged there) is visible, read-only."""
    return sandboxed(settings, workdir,
                     [sys.executable, "-m", "tickreplay.runner.child", "--fd", str(fd)],
                     readonly=[inputs])


# Programs a strategy could run (os.system, subprocess): hidden in the sandbox.
_PROGRAM_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin")
# Where the host keeps files only their owner may read (shadow passwords, host keys, other
# services' data): those are hidden too, since root in the sandbox maps to the worker's user.
_PRIVATE_ROOTS = ("/etc", "/var/lib", "/var/log", "/root", "/home", "/srv", "/opt")


def sandboxed(settings: Settings, workdir: Path, child: list[str],
              readonly: list[Path] | None = None) -> list[str]:
    """``child`` wrapped in bubblewrap (unless disabled): new user/pid/net/ipc/uts namespaces
    (no network at all), the platform read-only, the state dir, programs and private files
    hidden, ``readonly`` visible read-only and ``workdir`` the one writable place."""
    if sandbox_mode(settings) != "bwrap":
        return child
    home = settings.home.resolve()
    hidden = [Path("/tmp"), home]
    argv = ["bwrap", "--die-with-parent", "--unshare-all", "--new-session",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--tmpfs", str(home)]  # hides signing.key and the stack's state
    for kind, path in _private_and_programs():
        hidden.append(path)
        argv += (["--tmpfs", str(path)] if kind == "dir"
                 else ["--ro-bind", "/dev/null", str(path)])
    # The interpreter and the code it imports stay visible even when they live under a
    # hidden directory (a checkout or venv in /tmp or /root, say): read-only.
    interpreter = Path(os.path.realpath(sys.executable))
    for path in [*_code_paths(keep_hidden=home), interpreter]:
        if any(path.is_relative_to(h) for h in hidden):
            argv += ["--ro-bind", str(path), str(path)]
    for path in readonly or []:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(workdir), str(workdir),  # the one writable place
             # the empty /tmp and state dir stay empty: nothing written outside workdir
             "--remount-ro", "/tmp", "--remount-ro", str(home),
             "--chdir", str(workdir), "--", *child]
    return argv


def _private_and_programs() -> list[tuple[str, Path]]:
    """``("dir" | "file", path)`` to hide: program directories, and entries (two levels deep)
    of the private roots that others may not read."""
    found: list[tuple[str, Path]] = [("dir", Path(d)) for d in _PROGRAM_DIRS
                                     if os.path.isdir(d) and not os.path.islink(d)]

    def walk(base: str, depth: int) -> None:
        try:
            entries = list(os.scandir(base))
        except OSError:
            return
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.is_symlink():
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            if not st.st_mode & 0o004 or (is_dir and not st.st_mode & 0o001):
                found.append(("dir" if is_dir else "file", Path(e.path)))
            elif is_dir and depth > 1:
                walk(e.path, depth - 1)

    for root in _PRIVATE_ROOTS:
        if os.path.isdir(root) and not os.stat(root).st_mode & 0o004:
            found.append(("dir", Path(root)))
        else:
            walk(root, 2)
    return found


def _code_paths(keep_hidden: Path) -> list[Path]:
    """Directories the runner's Python needs: prefixes and import path entries, except any
    that contains ``keep_hidden`` (binding it would expose the state dir again)."""
    import tickreplay

    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(tickreplay.__file__).resolve().parents[1]}
    found |= {Path(p) for p in sys.path if p and Path(p).is_dir()}
    out = sorted({p.resolve() for p in found if p.exists()}, key=lambda p: len(p.parts))
    out = [p for p in out if not keep_hidden.is_relative_to(p)]
    # Drop paths inside another one already bound (binding the outer one suffices).
    return [p for i, p in enumerate(out) if not any(p.is_relative_to(q) for q in out[:i])]


def runner_env(workdir: Path) -> dict[str, str]:
    """A scrubbed environment: no TICKREPLAY_*, AWS_* or other secrets reach user code."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env.update(HOME=str(workdir), TMPDIR=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    return env


def _is_runner(pid: int) -> bool:
    """Whether ``pid`` is the runner's Python (not bwrap, whose argv names it too)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode(errors="replace")).name != "bwrap" and \
        b"tickreplay.runner.child" in argv


class RunnerProcess:
    """One spawned runner: its process, channel, bounded output, and private work dir."""

    def __init__(self, proc: asyncio.subprocess.Process | None, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, workdir: Path) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.workdir = workdir
        self.stdout = BoundedOutput()
        self.stderr = BoundedOutput()
        self.messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self.bad_lines = 0  # lines on the channel that were not a valid message
        self.inputs = workdir.with_name(workdir.name + ".inputs")
        self.cgroup: Any = None
        # (No process: a runner elsewhere, e.g. a Kubernetes pod, whose output is read after.)
        self._tasks = [asyncio.ensure_future(self._pump(proc.stdout if proc else None,
                                                        self.stdout)),
                       asyncio.ensure_future(self._pump(proc.stderr if proc else None,
                                                        self.stderr)),
                       asyncio.ensure_future(self._read_channel())]

    @classmethod
    async def spawn(cls, settings: Settings, runs_dir: Path) -> RunnerProcess:
        from tickreplay.runner.limits import RunnerCgroup

        runs_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
        inputs = workdir.with_name(workdir.name + ".inputs")
        inputs.mkdir()
        cgroup = RunnerCgroup.create(settings.run_pids_max, settings.run_memory_mb * 1024**2)

        def in_child() -> None:  # before exec: die with the worker, join the runner's cgroup
            die_with_parent()
            cgroup.join()

        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *runner_command(settings, workdir, theirs.fileno(), inputs),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=runner_env(workdir),
                pass_fds=(theirs.fileno(),), preexec_fn=in_child,
                start_new_session=True, cwd=workdir)
        except BaseException:
            cgroup.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=2**24)
        runner = cls(proc, reader, writer, workdir)
        runner.inputs, runner.cgroup = inputs, cgroup
        return runner

    def _process(self) -> asyncio.subprocess.Process:
        """The runner's process (a process or sandbox runner always has one)."""
        assert self.proc is not None, "a runner without a local process overrides this"
        return self.proc

    @property
    def pid(self) -> int:
        """The runner's pid on the host (the leader of its process group)."""
        return self._process().pid

    def visible(self, path: Path) -> str:
        """``path`` as the runner sees it (the same path: the sandbox binds it in place)."""
        return str(path)

    def stage_inputs(self, paths: dict[str, Path]) -> dict[str, str]:
        """Make the job's partitions (files of the node cache) visible to this runner, and
        only those: hard links in its read-only inputs directory (a copy across filesystems).

        Returns the paths the runner reads them at.
        """
        out: dict[str, str] = {}
        for i, (key, src) in enumerate(sorted(paths.items())):
            dest = self.inputs / f"{i:05d}.parquet"
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
            out[key] = self.visible(dest)
        return out

    def exit_failure(self) -> Failed | None:
        """The failure, when how the runner ended says more than its exit code (a Kubernetes
        Job's deadline, a strategy's exit read off its Pod); None here."""
        return None

    def oom_killed(self) -> bool:
        """Whether the runner's memory cap killed it."""
        return self.cgroup.oom_killed()

    async def _pump(self, stream: asyncio.StreamReader | None, sink: BoundedOutput) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65_536):
            sink.add(chunk)

    async def _read_channel(self) -> None:
        try:
            async for line in self.reader:
                msg = decode(line)
                if msg is None:
                    self.bad_lines += 1
                    continue
                await self.messages.put(msg)
        except (ConnectionError, OSError):
            pass
        await self.messages.put(None)  # channel closed: the runner is gone

    def alive(self) -> bool:
        return self._process().returncode is None

    async def send(self, obj: RunnerJob | str) -> None:
        """Send the job, or a control line such as ``protocol.STOP``."""
        data = (obj + "\n").encode() if isinstance(obj, str) else encode(obj)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    def kill(self) -> None:
        if self._process().returncode is None:
            kill_group(self._process().pid)

    def terminate(self) -> None:
        """SIGTERM to the runner, as a node drain or spot reclaim sends it: it writes a final
        checkpoint and stops."""
        if self._process().returncode is None:
            # Under bubblewrap the runner has a session of its own inside: signal it there
            # (bwrap itself would die of SIGTERM and take the runner with it, unsaved).
            pids = [p for p in (self.cgroup.pids() if self.cgroup is not None else [])
                    if _is_runner(p)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if not pids:
                kill_group(self._process().pid, signal.SIGTERM)

    async def wait(self) -> int:
        code = await self._process().wait()
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        return code

    def output(self) -> dict[str, str]:
        """The strategy's stdout and stderr (bounded head + tail)."""
        return {"stdout": self.stdout.text(), "stderr": self.stderr.text()}

    async def close(self) -> None:
        """Kill if needed, release the channel, remove the work dir."""
        self.kill()
        await self.wait()
        self.writer.close()
        for t in self._tasks:
            t.cancel()
        self.remove()

    def remove(self) -> None:
        """Remove what the runner left: its cgroup (killing stragglers), its directories."""
        if self.cgroup is not None:
            self.cgroup.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.inputs, ignore_errors=True)
