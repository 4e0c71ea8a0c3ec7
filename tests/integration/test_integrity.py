"""Issue 11 on a real Temporal dev server and real SeaweedFS: no result forged or mixed up,
faults waited out, lost workers replaced in seconds, bad inputs failing at once and clearly.

Workers are real OS processes (so they can be SIGKILLed, or started with a read-only cache).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from integritykit import (
    FAST,
    artifacts,
    as_awaitable,
    busy_spec,
    events,
    has_checkpoint,
    started_times,
)
from temporalio.client import WorkflowFailureError
from wfkit import (
    EXAMPLES,
    STRATEGIES,
    isolated_settings,
    record_history,
    server_heartbeat,
    spawn_worker,
    stop_process,
    wait_for,
)

from tickreplay.data.objectstore import S3Store
from tickreplay.integrity import open_checkpoint, seal_checkpoint
from tickreplay.jobs import operations as jobs
from tickreplay.results import ResultsError, result_hash
from tickreplay.runner.driver import run_local
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.workflows.types import JobOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def isettings(s3_server: Settings, temporal_address: str, tmp_path_factory) -> Settings:
    return isolated_settings(s3_server, temporal_address, tmp_path_factory.mktemp("icache"),
                             ["CCC", "DDD"], "2024-04-01", "2024-04-03", 150_000, seed=11)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        stop_process(p, signal.SIGKILL)


# ------------------------------------------------------------------ 1. checkpoints bound to runs
async def test_a_checkpoint_of_another_run_or_without_the_key_is_refused(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """Before: the other job's checkpoint was restored silently; the job SUCCEEDED with twice
    the reference's trades and `tickreplay results` called it verified.

    One victim job, two attacks: first the checkpoint its heartbeat names is replaced by a
    valid, platform-sealed checkpoint of ANOTHER job (same strategy and data, other params) and
    its worker SIGKILLed; then, on the next worker, by that state sealed for the victim by
    someone without the key, and that worker SIGKILLed too.
    """
    client = await jobs.connect(isettings)
    victim_spec, other_spec = busy_spec(isettings, every=500), busy_spec(isettings, every=250)
    reference = result_hash(run_local(victim_spec, isettings.model_copy(
        update={"cache_dir": tmp_path / "ref"})))
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    store = artifacts(isettings)

    other = jobs.prepare(other_spec, options=JobOptions(checkpoint_every_s=0.2))
    other_handle = await jobs.submit(client, isettings, other)
    await wait_for(lambda: has_checkpoint(client, other.job_id), 120, 0.05)
    foreign = store.get_bytes((await server_heartbeat(client, other.job_id))["checkpoint_key"])
    await other_handle.terminate("its checkpoint is all this test needs")

    victim = jobs.prepare(victim_spec, options=JobOptions(checkpoint_every_s=0.2, **FAST))
    handle = await jobs.submit(client, isettings, victim)
    swapped: list[str] = []
    overwritten: set[str] = set()
    for attack in ("foreign", "forged"):
        async def checkpoint_after_swap() -> bool:
            hb = await server_heartbeat(client, victim.job_id)
            return bool(hb and hb.get("checkpoint_key")
                        and hb["checkpoint_key"] not in overwritten)

        await wait_for(checkpoint_after_swap, 120, 0.05)
        named = (await server_heartbeat(client, victim.job_id))["checkpoint_key"]
        payload = foreign
        if attack == "forged":  # the other job's state, sealed for the victim without the key
            state, ticks = open_checkpoint(foreign, _identity_of(foreign), isettings.platform_key())
            payload = seal_checkpoint(state, _identity_of(store.get_bytes(named)), ticks,
                                      os.urandom(32))
        # Every checkpoint of the victim, not just the named one: a resume may try the newest.
        for obj in store.list(f"checkpoints/{victim.job_id}/"):
            store.put_bytes(obj.key, payload)
            overwritten.add(obj.key)
        swapped.append(named)
        os.killpg(workers[-1].pid, signal.SIGKILL)
        workers.append(spawn_worker(isettings, tmp_path / f"w-{attack}.log"))
    result = await asyncio.wait_for(handle.result(), 240)
    assert result.result_hash == reference
    discarded: dict[str, str] = {}
    for e in events(isettings, victim.job_id, "checkpoint_discarded"):
        discarded[e.get("checkpoint_key")] = discarded.get(e.get("checkpoint_key"), "") + e["message"]
    assert "another run" in discarded[swapped[0]] and "spec" in discarded[swapped[0]], discarded
    assert "signature" in discarded[swapped[1]], discarded
    manifest = jobs.download_results(isettings, victim.job_id, tmp_path / "out")
    assert manifest["result_hash"] == reference
    await record_history(client, victim.job_id, "v2_checkpoints_refused")


def _identity_of(sealed: bytes) -> dict[str, Any]:
    import json
    import struct

    n = struct.unpack(">I", sealed[8:12])[0]
    return json.loads(sealed[12:12 + n])["identity"]


# ------------------------------------------------------------------ 2 + 3. results exact, protocol
async def test_hostile_strategy_cannot_spoof_and_its_result_cannot_be_padded_or_forged(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """Before: the strategy's printed {"type": "done"} was taken for the runner's (or its
    unterminated print swallowed the real one: 25 re-runs, then RunnerDied code 0), and a
    PWNED.txt in the result prefix still downloaded as verified."""
    client = await jobs.connect(isettings)
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    spec = busy_spec(isettings, every=500).model_copy(update={
        "strategy": f"{STRATEGIES / 'hostile.py'}:Hostile",
        "params": {"home": str(isettings.home), "endpoint": isettings.s3_endpoint}})
    job = jobs.prepare(spec)
    result = await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 180)
    assert result.status == "SUCCEEDED" and result.result_hash != "0" * 64
    (out,) = events(isettings, job.job_id, "runner_output")
    assert '"staging/evil"' in out["stdout"] and "says bye" in out["stderr"]
    probe = [r for r in jobs.job_logs(isettings, job.job_id)["strategy_logs"] if r["msg"] == "probe"]
    assert probe[0]["key"] == "" and probe[0]["env"] == []
    assert probe[0]["network"].startswith("refused")
    assert jobs.download_results(isettings, job.job_id, tmp_path / "ok")["result_hash"] == \
        result.result_hash

    results = S3Store(isettings.results_bucket, settings=isettings)
    results.put_bytes(f"{job.job_id}/PWNED.txt", b"pwned")
    with pytest.raises(ResultsError, match="PWNED.txt: not listed"):
        jobs.download_results(isettings, job.job_id, tmp_path / "pwned")
    assert not (tmp_path / "pwned" / "PWNED.txt").exists()
    results.delete(f"{job.job_id}/PWNED.txt")
    # A manifest re-written by someone without the key (here: its signature removed).
    import json

    manifest = json.loads(results.get_bytes(f"{job.job_id}/manifest.json"))
    manifest.pop("signature")
    results.put_bytes(f"{job.job_id}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ResultsError, match="not signed"):
        jobs.download_results(isettings, job.job_id, tmp_path / "unsigned")


# ------------------------------------------------------------------ 6. progress by time
async def test_a_stuck_strategy_is_stopped_after_its_stall_timeout_naming_the_real_tick(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """Before: it said "at tick 0" for a loop at tick 5000 (progress every 65,536 ticks)."""
    client = await jobs.connect(isettings)
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    spec = busy_spec(isettings, every=500).model_copy(
        update={"strategy": f"{STRATEGIES / 'stuck.py'}:StuckAt", "params": {"at": 5000}})
    job = jobs.prepare(spec, options=JobOptions(stall_timeout_s=4))
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 120)
    st = await jobs.status(client, job.job_id)
    assert st["status"] == "FAILED"
    assert "no progress for 4 s" in st["error"] and "at tick 5000 " in st["error"], st["error"]


async def test_a_slow_strategy_is_not_taken_for_a_stuck_one(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """Before: a strategy slower than stall_timeout / 65,536 ticks per tick was killed as stuck
    (here: one 4,000-tick chunk takes ~8 s against a 5 s stall timeout)."""
    from tickreplay.data.generate import generate

    client = await jobs.connect(isettings)
    bucket = f"slow-{os.urandom(3).hex()}"
    store = S3Store(bucket, settings=isettings)
    store.ensure_bucket()
    generate(store, ["EEE"], "2024-04-01", "2024-04-02", ticks_per_day=2000, seed=1)
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    spec = BacktestSpec.parse({"strategy": f"{STRATEGIES / 'stuck.py'}:Slow",
                               "data_url": f"s3://{bucket}", "symbols": "EEE",
                               "start": "2024-04-01", "end": "2024-04-02",
                               "params": {"work": 50_000}})
    job = jobs.prepare(spec, options=JobOptions(stall_timeout_s=5))
    try:
        result = await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 300)
    except WorkflowFailureError:
        pytest.fail(str((await jobs.status(client, job.job_id))["error"]))
    assert result.status == "SUCCEEDED" and result.metrics["ticks"] == 4000


async def test_a_run_past_its_deadline_is_stopped_and_fails_as_a_timeout(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    """A strategy that keeps making progress, only too slowly for its wall-clock budget."""
    client = await jobs.connect(isettings)
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    spec = busy_spec(isettings, every=500).model_copy(
        update={"strategy": f"{STRATEGIES / 'stuck.py'}:Slow", "params": {"work": 50_000}})
    job = jobs.prepare(spec, options=JobOptions(deadline_s=3))
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 120)
    st = await jobs.status(client, job.job_id)
    assert st["status"] == "FAILED" and st["placements"] == 1  # not retried elsewhere
    assert "deadline: the run was still going after 3 s" in st["error"], st["error"]


# ------------------------------------------------------------------ 8. damaged partitions
def _damage(kind: str, good: bytes) -> bytes:
    if kind == "empty":
        return b""
    if kind == "footer":  # the footer's metadata overwritten with garbage
        n = int.from_bytes(good[-8:-4], "little")
        return good[:-8 - n] + bytes(range(256)) * (n // 256) + bytes(n % 256) + good[-8:]
    buf = io.BytesIO()  # wrong schema: price is a string
    pq.write_table(pa.table({"ts": pa.array([1, 2], pa.int64()), "price": ["a", "b"],
                             "size": [1.0, 1.0]}), buf)
    return buf.getvalue()


@pytest.mark.parametrize(("kind", "says"), [("empty", "empty (0 bytes)"),
                                            ("footer", "corrupt partition"),
                                            ("schema", "wrong schema: column 'price'")])
async def test_a_damaged_partition_fails_the_job_at_once_naming_it(
        isettings: Settings, workers: list, tmp_path: Path, kind: str, says: str) -> None:
    """Before: retried 10 times over 2.5 min with "Parquet file size is 0 bytes" or "Invalid
    flatbuffers message" and no partition name."""
    from tickreplay.data.generate import generate

    client = await jobs.connect(isettings)
    bucket = f"bad-{kind}-{os.urandom(3).hex()}"
    store = S3Store(bucket, settings=isettings)
    store.ensure_bucket()
    generate(store, ["EEE"], "2024-04-01", "2024-04-02", ticks_per_day=2000, seed=1)
    bad = "ticks/symbol=EEE/date=2024-04-02/data.parquet"
    store.put_bytes(bad, _damage(kind, store.get_bytes(bad)))
    workers.append(spawn_worker(isettings, tmp_path / "w1.log"))
    spec = BacktestSpec.parse({"strategy": str(EXAMPLES / "sma_cross.py"),
                               "data_url": f"s3://{bucket}", "symbols": "EEE",
                               "start": "2024-04-01", "end": "2024-04-02"})
    job = jobs.prepare(spec)
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 60)
    st = await jobs.status(client, job.job_id)
    assert bad in st["error"] and says in st["error"], st["error"]
    assert [a for _, a in await started_times(client, job.job_id, "warm_cache")] == [1]
    if kind == "empty":
        await record_history(client, job.job_id, "v2_corrupt_partition")


# ------------------------------------------------------------------ 7. unusable node caches
def spawn_worker_with_cache(settings: Settings, log: Path, mount: str) -> subprocess.Popen[bytes]:
    """A worker whose cache dir is a tmpfs mounted ``mount`` (ro / tiny) in its own mount ns."""
    cache = Path(settings.resolved_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    script = (f"mount -t tmpfs -o {mount} tmpfs {cache} && "
              f"exec {sys.executable} -m tickreplay.workers.main")
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.parametrize(("mount", "reason"), [("ro,size=1m", "not writable"),
                                               ("size=64k", "MB free")])
async def test_a_node_with_an_unusable_cache_hands_the_run_to_another_node(
        isettings: Settings, workers: list, tmp_path: Path, mount: str, reason: str) -> None:
    """Before: the job failed on that node (or retried there) instead of moving elsewhere."""
    client = await jobs.connect(isettings)
    sick = isettings.model_copy(update={"cache_dir": tmp_path / "sick", "node_id": "sick-node"})
    workers.append(spawn_worker_with_cache(sick, tmp_path / "sick.log", mount))
    job = jobs.prepare(busy_spec(isettings, every=500, work=10))
    handle = await jobs.submit(client, isettings, job)
    seen = await wait_for(lambda: as_awaitable(events(isettings, job.job_id, "node_unhealthy")), 60)
    assert seen[0]["node"] == "sick-node" and reason in seen[0]["reason"]
    workers.append(spawn_worker(isettings, tmp_path / "ok.log"))
    result = await asyncio.wait_for(handle.result(), 180)
    assert result.status == "SUCCEEDED"
    assert {e["node"] for e in events(isettings, job.job_id, "cache_warm")} != {"sick-node"}
    await record_history(client, job.job_id, f"v2_node_unhealthy_{reason.split()[-1]}")


async def test_when_no_node_can_run_it_the_job_fails_naming_node_and_reason(
        isettings: Settings, workers: list, tmp_path: Path) -> None:
    client = await jobs.connect(isettings)
    sick = isettings.model_copy(update={"cache_dir": tmp_path / "sick", "node_id": "only-node"})
    workers.append(spawn_worker_with_cache(sick, tmp_path / "sick.log", "ro,size=1m"))
    job = jobs.prepare(busy_spec(isettings, every=500), options=JobOptions(find_node_s=5))
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for((await jobs.submit(client, isettings, job)).result(), 120)
    st = await jobs.status(client, job.job_id)
    assert "no node can run this job" in st["error"]
    assert "node only-node: cache dir" in st["error"] and "not writable" in st["error"]
    await record_history(client, job.job_id, "v2_no_node_can_run")
