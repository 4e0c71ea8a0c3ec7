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
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from tickreplay.osutil import die_with_parent, kill_group
from tickreplay.runner.protocol import Message, RunnerJob, decode, encode
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


def sandbox_mode(settings: Settings) -> str:
    """'bwrap' or 'process', from ``runner_sandbox`` ('auto': bwrap when it is installed)."""
    mode = settings.runner_sandbox
    if mode == "auto":
        return "bwrap" if shutil.which("bwrap") else "process"
    if mode == "bwrap" and not shutil.which("bwrap"):
        raise RuntimeError("runner_sandbox=bwrap but bubblewrap (bwrap) is not installed")
    return mode


def runner_command(settings: Settings, workdir: Path, fd: int) -> list[str]:
    """The argv of a runner: the child module, wrapped in bubblewrap unless disabled."""
    return sandboxed(settings, workdir,
                     [sys.executable, "-m", "tickreplay.runner.child", "--fd", str(fd)])


def sandboxed(settings: Settings, workdir: Path, child: list[str]) -> list[str]:
    """``child`` wrapped in bubblewrap (unless disabled): no network, the state dir hidden,
    ``workdir`` the one writable place."""
    if sandbox_mode(settings) != "bwrap":
        return child
    home = settings.home.resolve()
    cache = settings.resolved_cache_dir().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    hidden = [Path("/tmp"), home]
    argv = ["bwrap", "--die-with-parent", "--unshare-all", "--new-session",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--tmpfs", str(home)]  # hides signing.key and the stack's state
    # The interpreter and the code it imports stay visible even when they live under a
    # hidden directory (a checkout or venv in /tmp, say): read-only.
    for path in _code_paths(keep_hidden=home):
        if any(path.is_relative_to(h) for h in hidden):
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind", str(cache), str(cache),  # partitions: read-only
             "--bind", str(workdir), str(workdir),  # the one writable place
             "--chdir", str(workdir), "--", *child]
    return argv


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


class RunnerProcess:
    """One spawned runner: its process, channel, bounded output, and private work dir."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, workdir: Path) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.workdir = workdir
        self.stdout = BoundedOutput()
        self.stderr = BoundedOutput()
        self.messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self.bad_lines = 0  # lines on the channel that were not a valid message
        self._tasks = [asyncio.ensure_future(self._pump(proc.stdout, self.stdout)),
                       asyncio.ensure_future(self._pump(proc.stderr, self.stderr)),
                       asyncio.ensure_future(self._read_channel())]

    @classmethod
    async def spawn(cls, settings: Settings, runs_dir: Path) -> RunnerProcess:
        runs_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *runner_command(settings, workdir, theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=runner_env(workdir),
                pass_fds=(theirs.fileno(),), preexec_fn=die_with_parent,
                start_new_session=True, cwd=workdir)
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=2**24)
        return cls(proc, reader, writer, workdir)

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
        return self.proc.returncode is None

    async def send(self, obj: RunnerJob | str) -> None:
        """Send the job, or a control line such as ``protocol.STOP``."""
        data = (obj + "\n").encode() if isinstance(obj, str) else encode(obj)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    def kill(self) -> None:
        if self.proc.returncode is None:
            kill_group(self.proc.pid)

    async def wait(self) -> int:
        code = await self.proc.wait()
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
        shutil.rmtree(self.workdir, ignore_errors=True)


class RunnerPool:
    """Keeps one runner spawned ahead of need (imports done, waiting for its job)."""

    def __init__(self, settings: Settings, runs_dir: Path) -> None:
        self.settings = settings
        self.runs_dir = runs_dir
        self._spare: asyncio.Task[RunnerProcess] | None = None

    async def acquire(self) -> RunnerProcess:
        """A live, idle runner; a replacement starts spawning at once."""
        runner = None
        spare, self._spare = self._spare, None  # taken before awaiting: never handed out twice
        if spare is not None:
            try:
                runner = await spare
            except OSError:
                runner = None
            if runner is not None and not runner.alive():
                await runner.close()
                runner = None
        if runner is None:
            runner = await RunnerProcess.spawn(self.settings, self.runs_dir)
        self._spare = asyncio.ensure_future(RunnerProcess.spawn(self.settings, self.runs_dir))
        return runner

    async def close(self) -> None:
        """Let the spare runner exit (EOF on its channel)."""
        if self._spare is not None:
            try:
                runner = await self._spare
            except OSError:
                return
            runner.writer.close()
            await runner.wait()
            shutil.rmtree(runner.workdir, ignore_errors=True)
            self._spare = None
