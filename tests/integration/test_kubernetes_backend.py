"""The ``kubernetes`` runner backend against an EMULATED Kubernetes API over real HTTP.

No API server, kubelet or job controller can run on these machines, so: PyPI ``kmock``'s
``KubernetesEmulator`` serves the Kubernetes API on localhost (it stores objects and runs no
controller), and ``kubekit.Kubelet`` plays the job controller and the kubelet: it runs each
runner Job's pod template FOR REAL with ``podman kube play`` and writes the status a cluster
would (see ``tests/kubekit.py``). So the backtest numbers are real; the status transitions are
the ones a cluster would write. The same through Temporal: ``test_kubernetes_temporal.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubekit import NS, cluster
from test_runner_sandbox import SMA, STRATEGIES, _job, _spec, world  # noqa: F401 - a fixture

from tickreplay.errors import StrategyError
from tickreplay.results import load_results, result_hash
from tickreplay.runner.backends import RunnerPool
from tickreplay.runner.kubejob import LABEL_ATTEMPT, LABEL_JOB, LABEL_USER, LABEL_WORKER
from tickreplay.runner.kubernetes import clean_orphans, kube_clients
from tickreplay.settings import Settings

kmock = pytest.importorskip("kmock")
SLOW = (f"{STRATEGIES / 'stuck.py'}:Slow", {"work": 2000})


async def _run_one(kw: dict[str, Any], settings: Settings, labels: dict[str, str],
                   strategy: tuple[str, dict[str, Any]] = (SMA, {"fast": 5, "slow": 20})
                   ) -> tuple[list[Any], int, Any]:
    pool = RunnerPool(settings, kw["base"] / "kruns")
    runner = await pool.acquire(labels=labels)
    spec = _spec(kw, *strategy)
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
        async with cluster(kworld["settings"], kworld["image"]) as (settings, kubelet):
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
    ("evict", "lost", True), ("node-lost", "lost", True), ("shutdown", "lost", True),
    ("oom", "oom", False), ("deadline", "deadline", False)])
def test_an_evicted_lost_shut_down_oom_killed_or_overdue_pod_is_told_apart(
        kworld: dict[str, Any], mode: str, state: str, retryable: bool) -> None:
    """Each way a cluster ends a pod, as its status says it: the node's problems are retried
    (from the last checkpoint), the job's own are not."""
    async def go() -> None:
        async with cluster(kworld["settings"], kworld["image"], [mode]) as (settings, _):
            msgs, _code, (runner, _) = await _run_one(kworld, settings, LABELS, SLOW)
            assert not [m for m in msgs if m.type == "done"]
            assert runner.last.state == state and runner.last.retryable == retryable
            assert runner.oom_killed() == (state == "oom")
            assert (runner.exit_failure() is not None) == (state == "deadline")

            if mode == "shutdown":  # SIGTERM: a final checkpoint first, then "stopped"
                assert [m.type for m in msgs][-2:] == ["checkpoint", "stopped"]

    asyncio.run(go())


@pytest.mark.parametrize("strategy, on_channel", [("Raises", True), ("Exits", False)])
def test_a_failing_strategy_fails_its_job_with_its_traceback(
        kworld: dict[str, Any], strategy: str, on_channel: bool) -> None:
    """A strategy that raises reports its traceback on the channel; one that leaves with
    ``os._exit(1)`` says nothing there, and its Job's failed pod (exit 1, no disruption) is
    mapped to a non-retryable StrategyError whose traceback comes from the pod's log."""
    async def go() -> None:
        async with cluster(kworld["settings"], kworld["image"]) as (settings, _):
            msgs, code, (runner, _) = await _run_one(
                kworld, settings, LABELS, (f"{STRATEGIES / 'crash.py'}:{strategy}", {"at": 500}))
            failed = [m for m in msgs if m.type == "error"]
            assert runner.last.state == "failed" and not runner.last.retryable
            if on_channel:
                assert code == 3 and failed[0].kind == StrategyError.code
                assert "ValueError: bad signal at tick 500" in failed[0].traceback
                assert runner.exit_failure() is not None  # the channel's report comes first
            else:
                assert code == 1 and not failed
                said = runner.exit_failure()
                assert said is not None and said.kind == StrategyError.code
                assert said.traceback.startswith("Traceback (most recent call last):")
                assert said.traceback.endswith("ValueError: bad signal at tick 500")
                assert "exited with code 1" in said.message

    asyncio.run(go())


def test_cancel_deletes_the_job_and_orphans_are_cleaned_up_by_label(
        kworld: dict[str, Any]) -> None:
    async def go() -> None:
        async with cluster(kworld["settings"], kworld["image"]) as (settings, _):
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
