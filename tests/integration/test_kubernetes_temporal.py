"""The ``kubernetes`` runner backend under Temporal: a runner pod evicted or lost with its node
mid-run resumes from its last checkpoint to the uninterrupted hash.

Real: the Temporal dev server, SeaweedFS, a worker process with ``runner_backend=kubernetes``,
and each runner pod's work (the Job's pod template played by ``podman kube play`` with this
checkout's runner image). EMULATED, because no API server, kubelet or job controller can run on
these machines: the Kubernetes API (PyPI ``kmock``'s ``KubernetesEmulator`` over real HTTP, in
this test process) and the cluster's kubelet/job controller (``kubekit.Kubelet``, which writes
the Pod and Job status a cluster would write for each way a pod ends).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from kubekit import cluster
from wfkit import (
    STRATEGIES,
    isolated_settings,
    server_heartbeat,
    spawn_worker,
    stop_process,
    wait_for,
)

from tickreplay.jobs import operations as jobs
from tickreplay.results import result_hash
from tickreplay.runner.driver import run_local
from tickreplay.runner.kubejob import LABEL_ATTEMPT, LABEL_JOB, label_value
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration
kmock = pytest.importorskip("kmock")


@pytest.fixture(scope="module")
def ksettings(s3_server: Settings, temporal_address: str, runner_image: str,
              tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("kcache"),
                          ["KKK"], "2024-05-06", "2024-05-07", 150_000, seed=23)
    return s.model_copy(update={"runner_image": runner_image})


# (A node shutdown's SIGTERM path - final checkpoint, exit 4, retried - is covered against the
# emulator in test_kubernetes_backend.py and through Temporal by the SIGTERM tests of the
# other backends; two modes here keep the suite's time in bounds.)
@pytest.mark.parametrize("mode", ["evict", "node-lost"])
async def test_a_pod_the_cluster_takes_resumes_from_its_checkpoint_to_the_same_hash(
        ksettings: Settings, runner_image: str, mode: str, tmp_path: Path) -> None:
    """The first runner Job's pod is evicted, or lost with its node (deleted by the taint
    manager, no container status), once a checkpoint is heartbeated; the attempt fails as retryable, the workflow places the run again, and a
    second Job (attempt 2) resumes from the checkpoint to the uninterrupted hash."""
    spec = BacktestSpec.parse({
        "strategy": str(STRATEGIES / "busy_momentum.py"), "data_url": f"s3://{ksettings.data_bucket}",
        "symbols": "KKK", "start": "2024-05-06", "end": "2024-05-07", "params": {"work": 300}})
    reference = result_hash(run_local(spec, ksettings.model_copy(
        update={"cache_dir": tmp_path / "refcache"})))
    client = await jobs.connect(ksettings)
    # The default 10 s heartbeat timeout: the pod's loss is reported by the backend, not
    # noticed by a timeout, and a loaded machine must not add re-placements of its own.
    job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.2))

    async def checkpointed() -> bool:
        hb = await server_heartbeat(client, job.job_id)
        return bool(hb and hb.get("checkpoint_key"))

    async def trigger() -> None:
        await wait_for(checkpointed, 120, 0.1)

    async with cluster(ksettings, runner_image, [mode, "run"]) as (kube, kubelet):
        kubelet.trigger = trigger
        worker = spawn_worker(kube, tmp_path / "worker.log")
        try:
            handle = await jobs.submit(client, kube, job)
            result = await asyncio.wait_for(handle.result(), 240)
            assert worker.poll() is None  # the worker kept serving
        finally:
            stop_process(worker, signal.SIGKILL)

    assert result.result_hash == reference
    evs = jobs.job_logs(kube, job.job_id)["events"]
    finished = [e for e in evs if e["kind"] == "run_finished"]
    assert finished and finished[-1]["resumed_from_ticks"] > 0  # resumed, not restarted
    assert [e["backend"] for e in evs if e["kind"] == "runner_started"] == ["kubernetes"] * 2
    first, second = kubelet.seen.values()  # one Job per attempt, each named apart
    assert [j["metadata"]["labels"][LABEL_ATTEMPT] for j in (first, second)] == ["1", "2"]
    assert {j["metadata"]["labels"][LABEL_JOB] for j in (first, second)} == {label_value(job.job_id)}
    assert list(kubelet.ended.values()) == [mode, "run"]
