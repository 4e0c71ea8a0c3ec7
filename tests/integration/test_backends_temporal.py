"""The podman runner backend under Temporal: strategy images from a real registry, and a pod
SIGKILLed mid-run.

What is real: the Temporal dev server, SeaweedFS, a worker process with
``runner_backend=podman`` running this checkout's runner image (``make runner-image``), Debian's
``docker-registry`` on a free port, images built and pushed by ``tickreplay image build/push``
(podman). Skipped, saying why, where podman or the registry cannot run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from registrykit import start_registry
from wfkit import (
    EXAMPLES,
    FAST_FAILOVER,
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
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


@pytest.fixture(scope="module")
def psettings(s3_server: Settings, temporal_address: str, runner_image: str,
              tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("pcache"),
                          ["PPP"], "2024-05-06", "2024-05-07", 150_000, seed=21)
    return s.model_copy(update={"runner_backend": "podman", "runner_image": runner_image,
                                "run_cpus": 2.0, "run_memory_mb": 2048})


@pytest.fixture
def worker(psettings: Settings, tmp_path: Path) -> Iterator[list]:
    procs = [spawn_worker(psettings, tmp_path / "worker.log")]
    yield procs
    for p in procs:
        stop_process(p, signal.SIGKILL)


def _cli(settings: Settings, *args: str) -> str:
    env = {**settings.to_env(), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    out = subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], env=env,
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _spec(settings: Settings, strategy: str, params: dict) -> BacktestSpec:
    return BacktestSpec.parse({"strategy": strategy, "data_url": f"s3://{settings.data_bucket}",
                               "symbols": "PPP", "start": "2024-05-06", "end": "2024-05-07",
                               "params": params})


def _events(settings: Settings, job_id: str) -> list[dict]:
    return jobs.job_logs(settings, job_id)["events"]


async def test_a_strategy_image_runs_by_the_digest_its_tag_resolved_to(
        psettings: Settings, registry: str, worker: list, tmp_path: Path) -> None:
    """build -> push -> submit --image by tag: the first activity pins the digest, the pod runs
    it, the result names it; its trades are the bundle's (same code, same data)."""
    ref = f"{registry}/strategies/sma:v1"
    _cli(psettings, "image", "build", str(EXAMPLES / "sma_cross.py"), "--tag", ref)
    pinned = _cli(psettings, "image", "push", ref).splitlines()[-1]
    assert pinned.startswith(f"{registry}/strategies/sma@sha256:")
    digest = pinned.rsplit("@", 1)[1]

    spec = _spec(psettings, ref, {"fast": 5, "slow": 50})
    client = await jobs.connect(psettings)
    job = jobs.prepare_image(spec, ref)
    handle = await jobs.submit(client, psettings, job)
    result = await asyncio.wait_for(handle.result(), 240)
    resolved = [e for e in _events(psettings, job.job_id) if e["kind"] == "strategy_resolved"]
    assert resolved and resolved[0]["image"] == pinned
    started = [e for e in _events(psettings, job.job_id) if e["kind"] == "runner_started"]
    assert started and started[0]["backend"] == "podman"

    out = tmp_path / "results"
    _cli(psettings, "results", job.job_id, "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["strategy_digest"] == digest  # the image's, not its sources'
    assert manifest["result_hash"] == result.result_hash
    local = run_local(_spec(psettings, str(EXAMPLES / "sma_cross.py"), {"fast": 5, "slow": 50}),
                      psettings.model_copy(update={"cache_dir": tmp_path / "lc"}))
    assert local.trades.num_rows > 10
    assert pq.read_table(out / "trades.parquet").equals(local.trades)

    # The tag moves to other code: a new job runs the new digest, the old result stands.
    _cli(psettings, "image", "build", f"{STRATEGIES / 'stuck.py'}:Slow", "--tag", ref)
    moved = _cli(psettings, "image", "push", ref).splitlines()[-1]
    assert moved != pinned


@pytest.mark.parametrize("backend", ["podman", "sandbox"])
async def test_a_sigkilled_pod_or_sandbox_resumes_from_its_checkpoint_to_the_same_hash(
        psettings: Settings, backend: str, tmp_path: Path) -> None:
    """The pod or sandbox dies (SIGKILL: a lost node, an OOM kill of the container) while its
    worker lives: the attempt fails as retryable, the next one resumes from the last
    checkpoint, and the worker keeps serving."""
    settings = psettings.model_copy(update={"runner_backend": backend})
    # Slow enough (several seconds) that the kill lands mid-run even on a loaded machine.
    spec = _spec(settings, str(STRATEGIES / "busy_momentum.py"), {"work": 800})
    reference = result_hash(run_local(spec, settings.model_copy(
        update={"cache_dir": tmp_path / "refcache"})))
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        client = await jobs.connect(settings)
        job = jobs.prepare(spec, options=JobOptions(checkpoint_every_s=0.2, **FAST_FAILOVER))
        handle = await jobs.submit(client, settings, job)

        async def checkpointed() -> bool:
            hb = await server_heartbeat(client, job.job_id)
            return bool(hb and hb.get("checkpoint_key"))

        await wait_for(checkpointed, 120, 0.1)
        if backend == "podman":
            pods = await asyncio.to_thread(
                subprocess.run, ["podman", "pod", "ps", "--filter",
                                 f"label=tickreplay.io/job={job.job_id}", "--format",
                                 "{{.Name}}"], capture_output=True, text=True, check=True)
            await asyncio.to_thread(subprocess.run, ["podman", "kill", "--signal", "KILL",
                                                     f"{pods.stdout.split()[0]}-runner"],
                                    check=True, capture_output=True)
        else:  # the sandbox's process group (bwrap and the runner in it)
            (started,) = [e for e in _events(settings, job.job_id)
                          if e["kind"] == "runner_started"]
            os.killpg(started["pid"], signal.SIGKILL)
        result = await asyncio.wait_for(handle.result(), 240)
        assert result.result_hash == reference
        evs = _events(settings, job.job_id)
        finished = [e for e in evs if e["kind"] == "run_finished"]
        assert finished and finished[-1]["resumed_from_ticks"] > 0  # resumed, not restarted
        assert [e["backend"] for e in evs if e["kind"] == "runner_started"] == [backend] * 2
        assert worker.poll() is None  # the worker kept serving
    finally:
        stop_process(worker, signal.SIGKILL)
