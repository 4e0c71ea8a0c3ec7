"""The ``podman`` runner backend: the job's image (by digest) as a Pod, with ``podman kube play``.

The Pod spec is :func:`tickreplay.runner.podspec.runner_pod`, the one the Kubernetes backend
uses; podman adds ``--network none``. The worker side is the same as for the other backends
(:class:`tickreplay.runner.pool.RunnerProcess`): the same typed protocol, bounded output, staged
inputs, checkpoint and result files. What differs is how the pieces reach the runner:

- Channel: a pod cannot inherit a file descriptor, so the worker listens on a Unix socket in
  the runner's output directory (``/out/chan.sock`` inside) and accepts exactly one connection,
  made by ``tickreplay-runner --socket`` before any strategy code is loaded; the socket file is
  removed then, so nothing else can connect.
- Files: ``/out`` and ``/inputs`` are the runner's directories on the node; the output
  directory belongs to the image's user (10001), the staged partitions are world-readable.
- Output: ``podman logs --follow`` of the container (stdout and stderr kept apart).
- Limits: CPU and memory from the Pod spec; processes by writing ``pids.max`` into the
  container's cgroup before the job is sent (``kube play`` has no field for it); rlimits by the
  child, as in the sandbox. Out of memory: podman 4's ``State.OOMKilled`` stays false, but
  conmon leaves an ``oom`` file in the directory ``kube play`` ran from (a private one per run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Self

from tickreplay.errors import ImageNotFound, RunnerDied
from tickreplay.runner.podspec import INPUTS, OUT, RUNNER_UID, runner_pod
from tickreplay.runner.pool import RunnerProcess
from tickreplay.settings import Settings

PODMAN = "podman"
# Pull errors that no retry will fix (the digest was resolved and verified before the run).
_NOT_FOUND = ("manifest unknown", "not found", "name unknown", "unauthorized")


def podman_available() -> str | None:
    """Why the podman backend cannot run here, or None when it can."""
    if shutil.which(PODMAN) is None:
        return "podman is not installed (make system-deps installs it)"
    try:
        subprocess.run([PODMAN, "info", "--format", "{{.Host.OCIRuntime.Name}}"], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"podman does not work here: {e}"
    return None


def _registry_flags(settings: Settings, image: str) -> list[str]:
    """``--tls-verify`` for plain-HTTP (loopback or listed) registries, ``--creds`` if set."""
    from tickreplay.runner.registry import plain_http

    host = image.split("/", 1)[0]
    flags = ["--tls-verify=false"] if plain_http(host, settings.registry_insecure_hosts()) else []
    if settings.registry_username:
        flags.append(f"--creds={settings.registry_username}:{settings.registry_password or ''}")
    return flags


class PodRunner(RunnerProcess):
    """One runner Pod: the channel, output and files of :class:`RunnerProcess`, in podman."""

    pod: str
    container: str
    ctl: Path
    settings: Settings
    _waiter: asyncio.Task[int]
    _pid = 0

    @classmethod
    async def spawn_pod(cls, settings: Settings, runs_dir: Path, image: str,
                        labels: dict[str, str] | None = None) -> Self:
        """Start the Pod and wait for its runner to connect (it is then idle, awaiting a job).

        ``labels`` name the run (job, user, attempt, deadline): pod labels here, and what the
        Kubernetes backend builds its Job from.
        """
        runs_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
        inputs = workdir.with_name(workdir.name + ".inputs")
        ctl = workdir.with_name(workdir.name + ".ctl")  # kube play's cwd: the oom marker lands here
        inputs.mkdir(mode=0o755)
        ctl.mkdir(mode=0o700)
        os.chmod(workdir, 0o700)
        if os.geteuid() == 0:  # rootful podman: the image's user owns its output dir
            os.chown(workdir, RUNNER_UID, RUNNER_UID)
        name = f"tr-{uuid.uuid4().hex[:16]}"
        sock_path = workdir / "chan.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        if os.geteuid() == 0:
            os.chown(sock_path, RUNNER_UID, RUNNER_UID)
        os.chmod(sock_path, 0o600)
        listener.listen(1)
        listener.setblocking(False)
        try:
            name, waiter = await cls._start(settings, image, name, workdir, inputs, ctl,
                                            labels or {})
            accept = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(listener))
            done, _ = await asyncio.wait({accept, waiter}, timeout=settings.pod_start_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if accept not in done:
                accept.cancel()
                said = await cls._said(settings, name)
                if waiter.done():
                    raise RunnerDied(f"the runner pod exited with code {waiter.result()} before "
                                     f"it connected; its output: {said or '(none)'}")
                raise RunnerDied(f"the runner pod did not connect within "
                                 f"{settings.pod_start_timeout_s:.0f} s; output: {said}")
            conn, _ = accept.result()
        except BaseException:
            listener.close()
            await asyncio.to_thread(cls._discard, settings, name)
            for d in (workdir, inputs, ctl):
                shutil.rmtree(d, ignore_errors=True)
            raise
        listener.close()
        sock_path.unlink(missing_ok=True)  # one connection, the runner's: nobody else's
        reader, writer = await asyncio.open_unix_connection(sock=conn, limit=2**24)
        runner = cls(await cls._output(name), reader, writer, workdir)
        runner.inputs, runner.ctl, runner.pod = inputs, ctl, name
        runner.container, runner.settings = f"{name}-runner", settings
        runner._waiter = waiter
        await runner._attached()
        return runner

    # ------------------------------------------- what the Kubernetes backend does differently
    @classmethod
    async def _start(cls, settings: Settings, image: str, name: str, workdir: Path,
                     inputs: Path, ctl: Path, labels: dict[str, str]
                     ) -> tuple[str, asyncio.Task[int]]:
        """Start the runner; ``(its name, a task giving its exit code)``."""
        spec = runner_pod(name, image, out_dir=str(workdir), inputs_dir=str(inputs),
                          cpus=settings.run_cpus, memory_mb=settings.run_memory_mb,
                          labels=labels)
        (ctl / "pod.json").write_text(json.dumps(spec, indent=1))  # JSON is YAML
        await play_pod(ctl / "pod.json", settings, image)
        return name, asyncio.ensure_future(_podman_wait(f"{name}-runner"))

    @classmethod
    async def _said(cls, settings: Settings, name: str) -> str:
        """The runner's output so far (for an error message)."""
        return await _podman_logs(f"{name}-runner")

    @classmethod
    async def _output(cls, name: str) -> asyncio.subprocess.Process | None:
        """A process whose stdout/stderr are the runner's (pumped into the bounded output)."""
        return await asyncio.create_subprocess_exec(
            PODMAN, "logs", "--follow", f"{name}-runner", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def _attached(self) -> None:
        """After the runner connected, before its job: cap its processes."""
        self._pid = await _container_pid(self.container)
        _cap_pids(self._pid, self.settings.run_pids_max)

    @classmethod
    def _discard(cls, settings: Settings, name: str) -> None:
        _remove_pod(name)

    @property
    def pid(self) -> int:
        """The runner's pid on the host (its container's init process)."""
        return self._pid

    def visible(self, path: Path) -> str:
        """``path`` as the runner sees it: under ``/out`` or ``/inputs``."""
        for host, inside in ((self.workdir, OUT), (self.inputs, INPUTS)):
            if path.is_relative_to(host):
                return str(Path(inside) / path.relative_to(host))
        raise ValueError(f"{path} is not in a directory the runner pod can see")

    def stage_inputs(self, paths: dict[str, Path]) -> dict[str, str]:
        """As for the other backends, made readable by the image's user (whatever mode
        the node cache wrote them with)."""
        out = super().stage_inputs(paths)
        for f in self.inputs.iterdir():
            os.chmod(f, 0o444)
        return out

    def alive(self) -> bool:
        return not self._waiter.done()

    def kill(self) -> None:
        if self.alive():
            _podman_sync("kill", "--signal", "KILL", self.container)

    def terminate(self) -> None:
        """SIGTERM to the runner, as a node drain or spot reclaim sends it."""
        _podman_sync("kill", "--signal", "TERM", self.container)

    async def wait(self) -> int:
        code = await self._waiter
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks[:2], return_exceptions=True), 10)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        return code

    def oom_killed(self) -> bool:
        return (self.ctl / "oom").exists()

    def remove(self) -> None:
        self._discard(self.settings, self.pod)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        super().remove()
        shutil.rmtree(self.ctl, ignore_errors=True)


async def play_pod(spec_file: Path, settings: Settings, image: str) -> None:
    """``podman kube play --network none`` of a Pod spec file, from its directory (conmon's
    ``oom`` marker lands there)."""
    play = await asyncio.create_subprocess_exec(
        PODMAN, "kube", "play", "--network", "none", *_registry_flags(settings, image),
        str(spec_file), cwd=spec_file.parent, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await play.communicate()
    if play.returncode != 0:
        text = err.decode(errors="replace").strip()[-2000:]
        if "pull" in text.lower() and any(s in text.lower() for s in _NOT_FOUND):
            raise ImageNotFound(f"podman cannot pull {image}: {text}")
        raise RunnerDied(f"podman kube play of {image} failed: {text}")


async def _podman(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PODMAN, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def _podman_wait(container: str) -> int:
    """The container's exit code, once it has exited (137 after SIGKILL)."""
    code, out = await _podman("wait", container)
    try:
        return int(out.splitlines()[-1])
    except (ValueError, IndexError):
        return -1 if code == 0 else code


async def _podman_logs(container: str) -> str:
    return (await _podman("logs", container))[1][-2000:]


async def _container_pid(container: str) -> int:
    _, out = await _podman("inspect", "--format", "{{.State.Pid}}", container)
    try:
        return int(out)
    except ValueError:
        return 0


def _cap_pids(pid: int, pids_max: int) -> None:
    """Write ``pids.max`` into the cgroup of the container's init (v1 or v2): a fork bomb stops
    there. Raises if it cannot: a runner without the cap must not get a job."""
    if pid <= 0:
        raise RunnerDied("the runner pod has no process (exited at once?)")
    target: Path | None = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):  # v1
            target = Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.max"
            break
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():  # v2
            target = Path("/sys/fs/cgroup") / path.lstrip("/") / "pids.max"
    if target is None:
        raise RunnerDied(f"no pids cgroup for the runner pod (pid {pid})")
    target.write_text(str(pids_max))


def _podman_sync(*argv: str, timeout: float = 30) -> None:
    """A podman command whose failure changes nothing (the thing is already gone)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([PODMAN, *argv], check=False, capture_output=True, timeout=timeout)


def _remove_pod(pod: str) -> None:
    _podman_sync("pod", "rm", "--force", "--time", "0", pod, timeout=60)
