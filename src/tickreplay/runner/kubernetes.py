"""The ``kubernetes`` runner backend: one ``batch/v1`` Job per run attempt, on the worker's node.

The Job (:func:`tickreplay.runner.kubejob.runner_job`) carries the same Pod spec the podman
backend plays, pinned to this worker's node: the worker warmed that node's cache, staged the
job's partitions in a hostPath directory there, and listens on the channel socket in the
runner's hostPath output directory, exactly as with podman (a Unix socket works across pods on
one node). So the protocol, checkpoints and results are unchanged; what this module adds is
the Job's life: create it, watch it and its Pod, map their status (:func:`kubejob.outcome`),
read the pod's log, delete it (foreground) on cancel or kill, and clean up the Jobs a dead
worker left behind (found by the worker label).

``kube_api_url`` points the client at an API server (tests: an emulated one over HTTP);
without it the in-cluster service account (or ``~/.kube/config``) is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from tickreplay.runner.kubejob import (
    LABEL_WORKER,
    Outcome,
    job_name,
    label_value,
    outcome,
    runner_job,
    traceback_in,
)
from tickreplay.runner.podman import PodRunner
from tickreplay.runner.protocol import Failed
from tickreplay.settings import Settings

POLL_S = 1.0


def kube_clients(settings: Settings) -> tuple[Any, Any, Any]:
    """``(ApiClient, BatchV1Api, CoreV1Api)`` for the configured API server."""
    from kubernetes import client, config

    if settings.kube_api_url:
        cfg = client.Configuration()
        cfg.host = settings.kube_api_url
        api = client.ApiClient(cfg)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
    return api, client.BatchV1Api(api), client.CoreV1Api(api)


def host_path(settings: Settings, path: Path) -> str:
    """``path`` (as the worker sees it) as a path on the node: the worker's state dir is the
    node's ``kube_node_home`` (the DaemonSet mounts one at the other)."""
    if settings.kube_node_home is None:
        return str(path)
    return str(Path(settings.kube_node_home) / path.resolve().relative_to(settings.home.resolve()))


class KubeRunner(PodRunner):
    """A runner that is a Kubernetes Job's Pod on this node."""

    job: str = ""
    last: Outcome | None = None
    logged = False  # the pod's log has been read into stderr

    @classmethod
    async def _start(cls, settings: Settings, image: str, name: str, workdir: Path,
                     inputs: Path, ctl: Path, labels: dict[str, str]
                     ) -> tuple[str, asyncio.Task[int]]:
        attempt = int(labels.get("tickreplay.io/attempt") or 1)
        job_id = labels.get("tickreplay.io/job") or name
        manifest = runner_job(
            job_id, labels.get("tickreplay.io/user", ""), attempt, image,
            node=settings.kube_node_name(),
            worker=settings.kube_node_name(), out_dir=host_path(settings, workdir),
            inputs_dir=host_path(settings, inputs), cpus=settings.run_cpus,
            memory_mb=settings.run_memory_mb,
            deadline_s=float(labels.get("tickreplay.io/deadline-s") or 86_400),
            namespace=settings.kube_namespace, spot=settings.kube_spot)
        _, batch, _ = kube_clients(settings)
        await asyncio.to_thread(batch.create_namespaced_job, settings.kube_namespace, manifest)
        jname = manifest["metadata"]["name"]
        return jname, asyncio.ensure_future(_watch(settings, jname))

    @classmethod
    async def _said(cls, settings: Settings, name: str) -> str:
        return await asyncio.to_thread(pod_log, settings, name)

    @classmethod
    async def _output(cls, name: str) -> asyncio.subprocess.Process | None:
        return None  # the pod's log is read once it has ended (see wait)

    async def _attached(self) -> None:
        self.job = self.pod  # pids: the kubelet's podPidsLimit; rlimits: the child, as always

    @classmethod
    def _discard(cls, settings: Settings, name: str) -> None:
        # In a thread: remove() runs on the event loop, and an API call must not block it.
        threading.Thread(target=_quietly, args=(delete_job, settings, name),
                         daemon=True).start()

    @property
    def pid(self) -> int:
        return 0  # on a node's kubelet, not a process of this worker

    def alive(self) -> bool:
        return not self._waiter.done()

    def kill(self) -> None:
        """Delete the Job (foreground: its Pod goes first); never blocks the event loop."""
        if self.alive():
            threading.Thread(target=_quietly, args=(delete_job, self.settings, self.job),
                             daemon=True).start()

    def terminate(self) -> None:
        """What a drain does: delete the Pod gracefully (SIGTERM, then its grace period)."""
        threading.Thread(target=_quietly, args=(_delete_pods, self.settings, self.job, 30),
                         daemon=True).start()

    async def wait(self) -> int:
        code = await self._waiter
        if not self.logged:  # once: close() waits again
            self.logged = True
            with contextlib.suppress(Exception):
                self.stderr.add((await asyncio.to_thread(pod_log, self.settings,
                                                         self.job)).encode())
        self.last = _OUTCOMES.pop(self.job, None) or self.last  # taken: the table never grows
        return code

    def oom_killed(self) -> bool:
        return self.last is not None and self.last.state == "oom"

    def exit_failure(self) -> Failed | None:
        """The failure, when the Job's status says more than its exit code: its deadline, or
        the strategy's own non-zero exit (not retried: the same code would fail again), with
        the traceback from the pod's log. A lost pod says nothing here: it is retried."""
        from tickreplay.errors import StrategyError, StrategyTimeout

        if self.last is None:
            return None
        if self.last.state == "deadline":
            return Failed(kind=StrategyTimeout.code, message="deadline: the runner Job passed "
                          "its activeDeadlineSeconds and was stopped")
        if self.last.state == "failed":
            log = self.stderr.text()
            return Failed(kind=StrategyError.code, traceback=traceback_in(log),
                          message=f"the strategy's runner exited with code "
                          f"{self.last.exit_code} ({self.last.reason}) without a result; the "
                          "end of its pod log: " + (log.strip()[-1500:] or "(empty)"))
        return None


def _quietly(fn: Any, *args: Any) -> None:
    """A background API call whose failure is only logged: the Job's watch (or the orphan
    clean-up of the next worker start) still sees what is left."""
    try:
        fn(*args)
    except Exception:
        logging.getLogger(__name__).warning("%s%s failed", fn.__name__, args[1:], exc_info=True)


# The outcome the watch saw per Job name, until wait() takes it (the waiter's result is the
# exit code, as for every pod runner; this is the rest).
_OUTCOMES: dict[str, Outcome] = {}


async def _watch(settings: Settings, name: str) -> int:
    """Poll the Job and its Pod until the attempt has an outcome; its exit code.

    137 for an OOM kill or a deadline, -1 for a lost pod (evicted, node gone): the activity
    reads :attr:`KubeRunner.last` for which.
    """
    while True:
        found = await asyncio.to_thread(_read, settings, name)
        if found is None:  # deleted (cancel, orphan clean-up): gone like a killed process
            _OUTCOMES[name] = Outcome("lost", reason="the Job was deleted")
            return -1
        out = outcome(*found)
        if out.finished:
            _OUTCOMES[name] = out
            if out.state in ("oom", "deadline"):
                return 137
            return out.exit_code if out.exit_code is not None else -1
        await asyncio.sleep(POLL_S)


def _read(settings: Settings, name: str) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    from kubernetes.client.exceptions import ApiException

    api, batch, core = kube_clients(settings)
    try:
        job = api.sanitize_for_serialization(batch.read_namespaced_job(name,
                                                                       settings.kube_namespace))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    pods = _pods_of(core, settings, name)
    return job, api.sanitize_for_serialization(pods[-1]) if pods else None


def _pods_of(core: Any, settings: Settings, name: str) -> list[Any]:
    """The Pods of Job ``name``. The label is checked here too: an API server that ignored
    the selector (the emulator in the tests does) must not make another Job's pod ours."""
    listed = core.list_namespaced_pod(settings.kube_namespace, label_selector=f"job-name={name}")
    return [p for p in listed.items if (p.metadata.labels or {}).get("job-name") == name]


def pod_log(settings: Settings, name: str) -> str:
    """The log of the Job's pod (its runner's stdout and stderr), or ''."""
    _, _, core = kube_clients(settings)
    pods = _pods_of(core, settings, name)
    if not pods:
        return ""
    return str(core.read_namespaced_pod_log(pods[-1].metadata.name, settings.kube_namespace,
                                            tail_lines=2000) or "")


def delete_job(settings: Settings, name: str) -> None:
    """Delete a Job and (foreground) its Pod; gone already is fine."""
    from kubernetes.client.exceptions import ApiException

    _, batch, _ = kube_clients(settings)
    try:
        batch.delete_namespaced_job(name, settings.kube_namespace,
                                    propagation_policy="Foreground")
    except ApiException as e:
        if e.status != 404:
            raise


def _delete_pods(settings: Settings, name: str, grace_s: int) -> None:
    _, _, core = kube_clients(settings)
    for pod in _pods_of(core, settings, name):
        with contextlib.suppress(Exception):
            core.delete_namespaced_pod(pod.metadata.name, settings.kube_namespace,
                                       grace_period_seconds=grace_s)


def clean_orphans(settings: Settings, keep: set[str] | None = None) -> list[str]:
    """Delete the runner Jobs this worker (by its label) started and no longer drives: those
    a dead predecessor on this node left behind. Returns their names."""
    _, batch, _ = kube_clients(settings)
    me = label_value(settings.kube_node_name())
    listed = batch.list_namespaced_job(settings.kube_namespace,
                                       label_selector=f"{LABEL_WORKER}={me}")
    # (The label is checked here too: a selector an API server ignored must not delete
    # another worker's Jobs.)
    gone = [j.metadata.name for j in listed.items
            if (j.metadata.labels or {}).get(LABEL_WORKER) == me
            and j.metadata.name not in (keep or set())]
    for name in gone:
        delete_job(settings, name)
    return gone


__all__ = ["KubeRunner", "clean_orphans", "delete_job", "job_name", "kube_clients"]
