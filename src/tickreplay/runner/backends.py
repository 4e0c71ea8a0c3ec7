"""Runners of the configured backend, handed to ``run_backtest``: one interface, three media.

``process`` and ``sandbox`` runners are :class:`~tickreplay.runner.pool.RunnerProcess` children
of the worker (the sandbox wraps them in bubblewrap); ``podman`` runners are
:class:`~tickreplay.runner.podman.PodRunner` Pods. All speak the same protocol and leave their
checkpoints and results in their output directory, so the activity drives them alike.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tickreplay.errors import SpecError
from tickreplay.runner.podman import PodRunner
from tickreplay.runner.pool import RunnerProcess, backend_name
from tickreplay.settings import Settings


class RunnerPool:
    """Hands out runners of the configured backend. For ``process`` and ``sandbox`` one runner
    is kept spawned ahead of need (imports done, waiting for its job); a pod runs the job's own
    image, so the ``podman`` backend starts one per job."""

    def __init__(self, settings: Settings, runs_dir: Path) -> None:
        self.settings = settings
        self.runs_dir = runs_dir
        self.backend = backend_name(settings)
        self._spare: asyncio.Task[RunnerProcess] | None = None

    async def acquire(self, image: str | None = None, labels: dict[str, str] | None = None
                      ) -> RunnerProcess:
        """A live, idle runner (for a strategy image: a pod of that image, pinned by digest).

        Raises:
            SpecError: A strategy image on a backend that cannot run images.
        """
        if self.backend == "kubernetes":
            from tickreplay.runner.kubernetes import KubeRunner  # the client only here

            return await KubeRunner.spawn_pod(self.settings, self.runs_dir,
                                              image or self.settings.runner_image, labels)
        if self.backend == "podman":
            return await PodRunner.spawn_pod(self.settings, self.runs_dir,
                                             image or self.settings.runner_image, labels)
        if image:
            raise SpecError(f"field 'strategy_image': {image} needs the podman or kubernetes "
                            f"runner backend (TICKREPLAY_RUNNER_BACKEND); this worker runs "
                            f"'{self.backend}'")
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
            runner.remove()
            self._spare = None
