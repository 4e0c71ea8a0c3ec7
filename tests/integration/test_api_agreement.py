"""The metadata database and Temporal agree after a worker is SIGKILLed while jobs run (issue 13).

Real processes throughout: the worker is an OS process (SIGKILLed with its runners' group),
Temporal is the dev server, S3 is SeaweedFS, the database a real SQLite file, and jobs go in
through the REST API over HTTP. After the kill a second worker takes over; every job's status
in the database then equals its workflow's status, the same inputs give the same result hash
whether or not their run was interrupted, and a cancel sent while no worker lived still lands.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apikit import ApiStack, serve_api, stack_settings
from wfkit import server_heartbeat, spawn_worker, stop_process

from tickreplay.jobs.operations import connect, status_name
from tickreplay.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]
BUSY = str(Path(__file__).resolve().parents[1] / "strategies" / "busy_momentum.py")


@pytest.fixture(scope="module")
def api(s3_server: Settings, temporal_address: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    settings = stack_settings(s3_server, temporal_address, tmp_path_factory.mktemp("agree"),
                              ticks_per_day=25_000, max_running_per_user=2,
                              max_concurrent_runs=2)
    with serve_api(settings) as stack:
        yield stack


def _workflow_statuses(settings: Settings, job_ids: list[str]) -> dict[str, str]:
    async def go() -> dict[str, str]:
        client = await connect(settings)
        return {j: status_name((await client.get_workflow_handle(j).describe()).status)
                for j in job_ids}

    return asyncio.run(go())


def _running_with_progress(settings: Settings, job_ids: list[str]) -> bool:
    async def go() -> bool:
        client = await connect(settings)
        for j in job_ids:
            hb = await server_heartbeat(client, j)
            if hb and hb.get("progress", 0) > 0:  # a runner is mid-run
                return True
        return False

    return asyncio.run(go())


def test_db_and_temporal_agree_after_the_worker_is_sigkilled(api: ApiStack,
                                                             tmp_path: Path) -> None:
    digest = api.upload(BUSY)
    body = {**api.body(digest), "checkpoint_every_s": 0.2}
    first = spawn_worker(api.settings, tmp_path / "worker-1.log")
    try:
        ids = [api.http("POST", "/v1/jobs", json={**body, "params": {"work": 400, "every": e}}
                        ).json()["job_id"] for e in (300, 300, 700, 700)]
        deadline = time.monotonic() + 120
        while not _running_with_progress(api.settings, ids):
            assert time.monotonic() < deadline, {j: api.store.job_record(j)["status"]
                                                 for j in ids}
            time.sleep(0.3)
        before = {j: api.store.job_record(j)["status"] for j in ids}
        assert "RUNNING" in before.values() and "PENDING" in before.values(), before
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its runners, no goodbye
        first.wait()
    # While no worker lives: a cancel is accepted (the workflow takes it up later).
    doomed = api.http("POST", "/v1/jobs", json={**body, "params": {"work": 400, "every": 900}}
                      ).json()["job_id"]
    assert api.http("POST", f"/v1/jobs/{doomed}/cancel").status_code == 202
    second = spawn_worker(api.settings, tmp_path / "worker-2.log")
    try:
        finished = {j: api.wait(j, timeout=300) for j in [*ids, doomed]}
    finally:
        stop_process(second)
    db = {j: api.store.job_record(j)["status"] for j in finished}
    assert db == _workflow_statuses(api.settings, list(finished))
    assert db[doomed] == "CANCELLED"
    assert all(db[j] == "SUCCEEDED" for j in ids), db
    hashes = [finished[j]["result_hash"] for j in ids]
    assert len(set(hashes[:2])) == 1 and len(set(hashes[2:])) == 1 and hashes[0] != hashes[2]
    # The limit held across the kill: never more than 2 RUNNING at once (admission is in the
    # database, so a dead worker's admitted jobs keep their slots until they end).
    starts = sorted((api.store.job_record(j)["started_at"], api.store.job_record(j)["finished_at"])
                    for j in ids)
    for t, _ in starts:
        assert sum(1 for s, e in starts if s <= t < e) <= 2
