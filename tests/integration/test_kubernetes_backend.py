"""The ``kubernetes`` runner backend against an EMULATED Kubernetes API over real HTTP.

No API server, kubelet or job controller can run on these machines, so: PyPI ``kmock``'s
``KubernetesEmulator`` serves the Kubernetes API on localhost (it stores objects and runs no
controller), and this module's ``Kubelet`` plays the job controller and the kubelet. For each
runner Job the worker creates it makes the Pod object, then runs the Job's pod template FOR
REAL with ``podman kube play`` (the runner image, the worker's hostPath directories, the
channel socket), and writes the container's end into the Pod's and the Job's status, or, when
told to, what an eviction, an OOM kill or a deadline looks like. So the backtest numbers are
real; the status transitions are the ones a cluster would write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_runner_sandbox import SMA, STRATEGIES, _job, _spec, world  # noqa: F401 - a fixture

from tickreplay.results import load_results, result_hash
from tickreplay.runner.backends import RunnerPool
from tickreplay.runner.kubejob import LABEL_ATTEMPT, LABEL_JOB, LABEL_USER, LABEL_WORKER
from tickreplay.runner.kubernetes import clean_orphans, kube_clients
from tickreplay.runner.podman import play_pod
from tickreplay.settings import Settings

kmock = pytest.importorskip("kmock")
NS = "tickreplay"


class Kubelet:
    """The job controller + kubelet of one node, for the emulator: Jobs in, Pods run by podman.

    ``mode`` says how each pod ends: ``run`` (as the container does), ``evict``, ``oom`` or
    ``deadline`` (the container is killed once the runner has started, and the status says so).
    """

    def __init__(self, settings: Settings, mode: str = "run") -> None:
        self.settings, self.mode = settings, mode
        self.seen: dict[str, dict[str, Any]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.pods: list[str] = []  # the podman pods it played

    async def loop(self) -> None:
        api, batch, _ = kube_clients(self.settings)
        while True:
            jobs = await asyncio.to_thread(batch.list_namespaced_job, NS)
            for j in jobs.items:
                name = j.metadata.name
                if name not in self.seen:
                    self.seen[name] = api.sanitize_for_serialization(j)
                    self.tasks.append(asyncio.ensure_future(self.run(name)))
            await asyncio.sleep(0.1)

    async def run(self, name: str) -> None:
        job = self.seen[name]
        _, batch, core = kube_clients(self.settings)
        template = job["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-x1", "namespace": NS,
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
        if self.mode != "run":
            await asyncio.sleep(1.5)  # the runner has connected and started its job
            await _podman("kill", "--signal", "KILL", container)
        code = int((await _podman("wait", container)).splitlines()[-1])
        await _podman("pod", "rm", "--force", "--time", "0", local)
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        pod_status: dict[str, Any] = {"phase": "Succeeded" if code == 0 else "Failed"}
        job_cond = {"type": "Complete" if code == 0 else "Failed", "status": "True",
                    "reason": "BackoffLimitExceeded"}
        if self.mode == "evict":
            pod_status.update(reason="Evicted", message="The node was low on resource: memory.")
            terminated = {"exitCode": 137, "reason": "Error"}
        elif self.mode == "oom":
            terminated = {"exitCode": 137, "reason": "OOMKilled"}
        elif self.mode == "deadline":
            job_cond["reason"] = "DeadlineExceeded"
        pod_status["containerStatuses"] = [{"name": "runner", "ready": False, "restartCount": 0,
                                            "image": "x", "imageID": "x",
                                            "state": {"terminated": terminated}}]
        await asyncio.to_thread(core.patch_namespaced_pod_status, f"{name}-x1", NS,
                                {"status": pod_status})
        await asyncio.to_thread(batch.patch_namespaced_job_status, name, NS,
                                {"status": {"conditions": [job_cond]}})


async def _podman(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec("podman", *argv,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode().strip()


@contextlib.asynccontextmanager
async def cluster(kw: dict[str, Any], mode: str = "run") -> AsyncIterator[tuple[Settings,
                                                                                   Kubelet]]:
    """The emulated API server, settings of a kubernetes-backend worker on node ``node-a``
    pointed at it, and the node's kubelet."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["batch/v1/jobs"] = {"kind": "Job", "namespaced": True}
        emulator.resources["v1/pods"] = {"kind": "Pod", "namespaced": True}
        settings = kw["settings"].model_copy(update={
            "runner_backend": "kubernetes", "runner_image": kw["image"],
            "kube_api_url": str(server.url).rstrip("/"), "kube_namespace": NS,
            "node_id": "node-a", "run_cpus": 2.0, "run_memory_mb": 2048})
        kubelet = Kubelet(settings, mode)
        task = asyncio.ensure_future(kubelet.loop())
        try:
            yield settings, kubelet
        finally:
            task.cancel()
            for t in kubelet.tasks:
                t.cancel()
            for local in kubelet.pods:  # never leave a pod behind (a cancelled run's, say)
                await _podman("pod", "rm", "--force", "--time", "0", local)


async def _run_one(kw: dict[str, Any], settings: Settings, labels: dict[str, str],
                   slow: bool = False) -> tuple[list[Any], int, Any]:
    pool = RunnerPool(settings, kw["base"] / "kruns")
    runner = await pool.acquire(labels=labels)
    spec = (_spec(kw, f"{STRATEGIES / 'stuck.py'}:Slow", {"work": 2000}) if slow
            else _spec(kw, SMA, {"fast": 5, "slow": 20}))
    try:
        await runner.send(_job(kw, spec, runner))
        msgs = []
        while (msg := await asyncio.wait_for(runner.messages.get(), 90)) is not None:
            msgs.append(msg)
        code = await runner.wait()
        done = [m for m in msgs if m.type == "done"]
        results = load_results(runner.workdir / "result") if done else None
        return msgs, code, (runner, results)
    finally:
        await runner.close()


@pytest.fixture
def kworld(world: dict[str, Any], runner_image: str) -> dict[str, Any]:  # noqa: F811
    world["image"] = runner_image
    return world


LABELS = {"tickreplay.io/job": "bt-kube-1", "tickreplay.io/user": "alice",
          "tickreplay.io/attempt": "2", "tickreplay.io/deadline-s": "900"}


def test_a_runner_job_runs_its_pod_template_to_the_same_hash(kworld: dict[str, Any]) -> None:
    """The Job the worker creates carries the issue's fields; its pod template, played by
    podman, runs the backtest to the hash of every other backend."""
    async def go() -> None:
        async with cluster(kworld) as (settings, kubelet):
            msgs, code, (_, results) = await _run_one(kworld, settings, LABELS)
            (done,) = [m for m in msgs if m.type == "done"]
            assert code == 0 and done.result_hash == result_hash(results)
            (job,) = kubelet.seen.values()
            labels = job["metadata"]["labels"]
            assert (labels[LABEL_JOB], labels[LABEL_USER], labels[LABEL_ATTEMPT],
                    labels[LABEL_WORKER]) == ("bt-kube-1", "alice", "2", "node-a")
            assert job["spec"]["backoffLimit"] == 0
            assert job["spec"]["activeDeadlineSeconds"] == 900
            pod = job["spec"]["template"]["spec"]
            assert pod["containers"][0]["image"] == kworld["image"]
            assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["node-a"]
            _, batch, _ = kube_clients(settings)
            for _ in range(50):  # removed with the runner (a foreground delete, off the loop)
                if not (await asyncio.to_thread(batch.list_namespaced_job, NS)).items:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the runner's Job was not deleted")
            kworld["kube_hash"] = done.result_hash

    asyncio.run(go())
    from tickreplay.runner.driver import run_local

    spec = _spec(kworld, SMA, {"fast": 5, "slow": 20})
    assert kworld["kube_hash"] == result_hash(run_local(spec, kworld["settings"]))


@pytest.mark.parametrize("mode, state, retryable", [
    ("evict", "lost", True), ("oom", "oom", False), ("deadline", "deadline", False)])
def test_an_evicted_oom_killed_or_overdue_pod_is_told_apart(
        kworld: dict[str, Any], mode: str, state: str, retryable: bool) -> None:
    async def go() -> None:
        async with cluster(kworld, mode) as (settings, _):
            msgs, _code, (runner, _) = await _run_one(kworld, settings, LABELS, slow=True)
            assert not [m for m in msgs if m.type == "done"]
            assert runner.last.state == state and runner.last.retryable == retryable
            assert runner.oom_killed() == (state == "oom")
            assert (runner.exit_failure() is not None) == (state == "deadline")

    asyncio.run(go())


def test_cancel_deletes_the_job_and_orphans_are_cleaned_up_by_label(
        kworld: dict[str, Any]) -> None:
    async def go() -> None:
        async with cluster(kworld) as (settings, _):
            _, batch, _ = kube_clients(settings)
            pool = RunnerPool(settings, kworld["base"] / "kruns")
            runner = await pool.acquire(labels=LABELS)
            name = runner.job
            runner.kill()  # cancel: foreground delete of the Job
            assert await asyncio.wait_for(runner.wait(), 30) == -1
            assert runner.last.reason == "the Job was deleted"
            await runner.close()
            assert name not in [j.metadata.name for j in
                                (await asyncio.to_thread(batch.list_namespaced_job, NS)).items]
            # A dead worker's Jobs: found by the worker label, deleted; others' left alone.
            from tickreplay.runner.kubejob import runner_job

            for worker in ("node-a", "node-b"):
                await asyncio.to_thread(batch.create_namespaced_job, NS, runner_job(
                    f"old-{worker}", "bob", 1, kworld["image"], node=worker, worker=worker,
                    out_dir="/x", inputs_dir="/y", namespace=NS))
            gone = await asyncio.to_thread(clean_orphans, settings)
            left = [j.metadata.labels[LABEL_WORKER] for j in
                    (await asyncio.to_thread(batch.list_namespaced_job, NS)).items]
            assert len(gone) == 1 and left == ["node-b"]

    asyncio.run(go())
