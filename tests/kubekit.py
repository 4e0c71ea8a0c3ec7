"""Kubernetes test kit: manifests checked against the ``kubernetes`` client's models, and an
EMULATED cluster for the runner backend.

No API server, kubelet or job controller can run on these machines, so :func:`cluster` serves
the Kubernetes API with PyPI ``kmock``'s ``KubernetesEmulator`` (real HTTP on localhost; it
stores objects and runs no controller), and :class:`Kubelet` plays the job controller and the
kubelet: for each runner Job it makes the Pod object, runs the Job's pod template FOR REAL with
``podman kube play`` (the runner image, the worker's hostPath directories, the channel socket),
serves the container's log as the pod's log, and writes the container's end into the Pod's and
the Job's status, or, when told to, what an eviction, a node loss, a node shutdown, an OOM kill
or a deadline looks like on a cluster. So the backtest numbers are real; the status
transitions are the ones a cluster would write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient

from tickreplay.settings import Settings

NS = "tickreplay"
# How each pod ends, besides ``run`` (as its container does): the container is killed once
# ``Kubelet.trigger`` returns, and the status says why.
MODES = ("run", "evict", "node-lost", "shutdown", "oom", "deadline")


def roundtrip(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """``obj`` through the client's ``kind`` model and back (unknown fields vanish)."""
    class Response:
        data = json.dumps(obj)

    api = ApiClient()
    return api.sanitize_for_serialization(api.deserialize(Response(), kind))


async def podman(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec("podman", *argv,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode().strip()


async def _after_start() -> None:
    await asyncio.sleep(1.5)  # the runner has connected and started its job


class Kubelet:
    """The job controller + kubelet of the emulated cluster: Jobs in, Pods run by podman.

    ``modes[i]`` says how the i-th Job's pod ends (the last one repeats); ``trigger`` is awaited
    before a pod that is not to ``run`` is ended (default: 1.5 s after it started).
    """

    def __init__(self, settings: Settings, emulator: Any, modes: Sequence[str] = ("run",),
                 trigger: Callable[[], Awaitable[None]] = _after_start) -> None:
        assert all(m in MODES for m in modes), modes
        self.settings, self.emulator, self.modes, self.trigger = settings, emulator, modes, trigger
        self.seen: dict[str, dict[str, Any]] = {}  # Job name -> the Job as created
        self.ended: dict[str, str] = {}  # Job name -> the mode its pod ended in
        self.tasks: list[asyncio.Task[None]] = []
        self.pods: list[str] = []  # the podman pods it played

    def mode_of(self, index: int) -> str:
        return self.modes[min(index, len(self.modes) - 1)]

    async def loop(self) -> None:
        from tickreplay.runner.kubernetes import kube_clients

        api, batch, _ = kube_clients(self.settings)
        while True:
            jobs = await asyncio.to_thread(batch.list_namespaced_job, NS)
            for j in jobs.items:
                name = j.metadata.name
                if name not in self.seen:
                    mode = self.mode_of(len(self.seen))
                    self.seen[name] = api.sanitize_for_serialization(j)
                    self.tasks.append(asyncio.ensure_future(self.run(name, mode)))
            await asyncio.sleep(0.1)

    async def run(self, name: str, mode: str) -> None:
        from tickreplay.runner.kubernetes import kube_clients
        from tickreplay.runner.podman import play_pod

        job = self.seen[name]
        _, batch, core = kube_clients(self.settings)
        template = job["spec"]["template"]
        pname = f"{name}-x1"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pname, "namespace": NS,
                            "labels": {**template["metadata"]["labels"], "job-name": name}},
               "spec": template["spec"]}
        await asyncio.to_thread(core.create_namespaced_pod, NS, pod)
        ctl = Path(self.settings.home) / "kubelet" / name
        ctl.mkdir(parents=True, exist_ok=True)
        local = f"{name}-{uuid.uuid4().hex[:6]}"  # unique on this machine, removed after
        self.pods.append(local)
        played = {**pod, "metadata": {"name": local, "labels": pod["metadata"]["labels"]}}
        (ctl / "pod.json").write_text(json.dumps(played))
        await play_pod(ctl / "pod.json", self.settings, template["spec"]["containers"][0]["image"])
        container = f"{local}-runner"
        if mode != "run":
            await self.trigger()
            # A node shutdown (spot reclaim, drain) is graceful: SIGTERM, then the grace period.
            await podman("kill", "--signal", "TERM" if mode == "shutdown" else "KILL", container)
        code = int((await podman("wait", container)).splitlines()[-1])
        self.emulator["get", f"/api/v1/namespaces/{NS}/pods/{pname}/log"] << (
            await podman("logs", container))
        await podman("pod", "rm", "--force", "--time", "0", local)
        self.ended[name] = mode
        await asyncio.to_thread(self._report, core, batch, name, pname, mode, code)

    def _report(self, core: Any, batch: Any, name: str, pname: str, mode: str,
                code: int) -> None:
        """What the kubelet, the node lifecycle controller and the Job controller write."""
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        pod_status: dict[str, Any] = {"phase": "Succeeded" if code == 0 else "Failed"}
        job_cond = {"type": "Complete" if code == 0 else "Failed", "status": "True",
                    "reason": "BackoffLimitExceeded"}
        if mode == "evict":
            pod_status.update(reason="Evicted", message="The node was low on resource: memory.")
            terminated = {"exitCode": 137, "reason": "Error"}
        elif mode == "shutdown":  # graceful node shutdown (kubelet's GracefulNodeShutdown)
            pod_status.update(reason="Terminated",
                              message="Pod was terminated in response to imminent node shutdown.")
        elif mode == "oom":
            terminated = {"exitCode": 137, "reason": "OOMKilled"}
        elif mode == "deadline":
            job_cond["reason"] = "DeadlineExceeded"
        if mode == "node-lost":
            # The node stopped answering: the taint manager marks the pod as disrupted and
            # deletes it (no container status ever comes back), then the Job fails.
            core.patch_namespaced_pod_status(pname, NS, {"status": {"conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                 "message": "Taint manager: deleting due to NoExecute taint"}]}})
            core.delete_namespaced_pod(pname, NS)
        else:
            pod_status["containerStatuses"] = [{"name": "runner", "ready": False,
                                                "restartCount": 0, "image": "x", "imageID": "x",
                                                "state": {"terminated": terminated}}]
            core.patch_namespaced_pod_status(pname, NS, {"status": pod_status})
        batch.patch_namespaced_job_status(name, NS, {"status": {"conditions": [job_cond]}})


@contextlib.asynccontextmanager
async def cluster(settings: Settings, image: str, modes: Sequence[str] = ("run",),
                  **update: Any) -> AsyncIterator[tuple[Settings, Kubelet]]:
    """The emulated API server, ``settings`` of a kubernetes-backend worker on node ``node-a``
    pointed at it (``update`` overrides), and the cluster's kubelet."""
    import kmock

    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["batch/v1/jobs"] = {"kind": "Job", "namespaced": True}
        emulator.resources["v1/pods"] = {"kind": "Pod", "namespaced": True}
        kube = settings.model_copy(update={
            "runner_backend": "kubernetes", "runner_image": image,
            "kube_api_url": str(server.url).rstrip("/"), "kube_namespace": NS,
            "node_id": "node-a", "run_cpus": 2.0, "run_memory_mb": 2048, **update})
        kubelet = Kubelet(kube, emulator, modes)
        task = asyncio.ensure_future(kubelet.loop())
        try:
            yield kube, kubelet
        finally:
            task.cancel()
            for t in kubelet.tasks:
                t.cancel()
            for local in kubelet.pods:  # never leave a pod behind (a cancelled run's, say)
                await podman("pod", "rm", "--force", "--time", "0", local)
