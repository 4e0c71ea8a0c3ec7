"""The job API over real HTTP against the embedded stack (issue 13): real Temporal dev server,
real SeaweedFS, a real worker, a real SQLite metadata database.

Submit -> poll -> results, cancel, idempotency (same and conflicting body), 401, 404 across
users, the 422 cases, admin visibility, search attributes, per-user limits and sweeps.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apikit import ApiStack, in_process_worker, serve_api, stack_settings
from wfkit import ROOT, record_history

from tickreplay.settings import Settings

pytestmark = pytest.mark.integration


def _record(api: ApiStack, workflow_id: str, name: str) -> None:
    """Keep the history as a replay fixture (tests/histories) when recording is asked for."""
    import asyncio

    from tickreplay.jobs.operations import connect

    async def go() -> None:
        await record_history(await connect(api.settings), workflow_id, name)

    asyncio.run(go())


@pytest.fixture(scope="module")
def api(s3_server: Settings, temporal_address: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    settings = stack_settings(s3_server, temporal_address, tmp_path_factory.mktemp("apijobs"),
                              max_running_per_user=2)
    with serve_api(settings) as stack, in_process_worker(settings):
        stack.digests["sma"] = stack.upload("sma_cross.py")
        yield stack


def test_submit_poll_and_fetch_verified_results(api: ApiStack) -> None:
    r = api.http("POST", "/v1/jobs", json=api.body(api.digests["sma"]))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status"] == "PENDING"
    job = api.wait(job_id)
    assert job["status"] == "SUCCEEDED", job
    assert len(job["result_hash"]) == 64 and job["results_path"].endswith(f"/{job_id}/")
    assert job["metrics"]["ticks"] > 0 and job["started_at"] <= job["finished_at"]
    assert job["progress"]["ticks_done"] == job["metrics"]["ticks"]
    assert job["user"] == "alice" and job["strategy_digest"] == api.digests["sma"]
    assert len(job["data_fingerprint"]) == 64
    _record(api, job_id, "api_backtest_succeeded")

    manifest = api.http("GET", f"/v1/jobs/{job_id}/manifest").json()
    assert manifest["result_hash"] == job["result_hash"]
    trades = pq.read_table(io.BytesIO(api.http("GET", f"/v1/jobs/{job_id}/trades").content))
    assert trades.num_rows == manifest["metrics"]["trades"] if "metrics" in manifest else True
    assert trades.num_rows > 0
    csv = api.http("GET", f"/v1/jobs/{job_id}/trades", params={"format": "csv"})
    assert csv.status_code == 200 and csv.text.count("\n") == trades.num_rows + 1
    equity = pq.read_table(io.BytesIO(api.http("GET", f"/v1/jobs/{job_id}/equity").content))
    assert equity.num_rows == 5  # one mark per session day
    metrics = api.http("GET", f"/v1/jobs/{job_id}/metrics").json()
    assert metrics["ticks"] == job["metrics"]["ticks"]
    logs = api.http("GET", f"/v1/jobs/{job_id}/logs").json()
    kinds = [e["kind"] for e in logs["events"]]
    assert "published" in kinds and [e["kind"] for e in logs["db_events"]] == ["succeeded"]

    # The same job submitted by the CLI path straight to Temporal gives the same hash: the
    # API adds bookkeeping, not a different simulation.
    again = api.http("POST", "/v1/jobs", json=api.body(api.digests["sma"]))
    assert api.wait(again.json()["job_id"])["result_hash"] == job["result_hash"]


def test_every_endpoint_needs_a_token_and_other_users_get_404(api: ApiStack) -> None:
    r = api.http("POST", "/v1/jobs", json=api.body(api.digests["sma"]))
    job_id = r.json()["job_id"]
    for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"),
                         ("POST", "/v1/jobs"), ("POST", f"/v1/jobs/{job_id}/cancel"),
                         ("GET", f"/v1/jobs/{job_id}/trades"), ("GET", f"/v1/jobs/{job_id}/logs"),
                         ("POST", "/v1/strategies"), ("POST", "/v1/sweeps"),
                         ("GET", "/v1/sweeps/x")):
        assert api.http(method, path, None).status_code == 401, path
        bad = api.http(method, path, None, headers={"Authorization": "Bearer trk_forged"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    api.wait(job_id)
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trades", f"/v1/jobs/{job_id}/logs",
                 f"/v1/jobs/{job_id}/manifest", f"/v1/jobs/{job_id}/metrics"):
        assert api.http("GET", path, "bob").status_code == 404, path
    assert api.http("POST", f"/v1/jobs/{job_id}/cancel", "bob").status_code == 404
    assert job_id not in {j["job_id"] for j in api.http("GET", "/v1/jobs", "bob").json()["jobs"]}
    # The admin sees everyone's jobs and results.
    assert api.http("GET", f"/v1/jobs/{job_id}", "root").json()["user"] == "alice"
    assert api.http("GET", f"/v1/jobs/{job_id}/manifest", "root").status_code == 200
    everyone = api.http("GET", "/v1/jobs", "root", params={"limit": 500}).json()["jobs"]
    assert job_id in {j["job_id"] for j in everyone}


def test_idempotency_key_same_body_same_job_other_body_409(api: ApiStack) -> None:
    body = api.body(api.digests["sma"], params={"fast": 7, "slow": 60})
    key = {"Idempotency-Key": f"k-{time.time_ns()}"}
    first = api.http("POST", "/v1/jobs", json=body, headers=key)
    second = api.http("POST", "/v1/jobs", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    other = api.http("POST", "/v1/jobs", json={**body, "seed": 9}, headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    # Keys are per user: bob's same key is his own, new job.
    bobs = api.http("POST", "/v1/jobs", "bob", json=body, headers=key)
    assert bobs.status_code == 202 and bobs.json()["job_id"] != first.json()["job_id"]
    # A chosen job id behaves like a key.
    chosen = {**body, "job_id": f"mine-{time.time_ns()}"}
    a = api.http("POST", "/v1/jobs", json=chosen)
    b = api.http("POST", "/v1/jobs", json=chosen)
    assert a.status_code == b.status_code == 202 and a.json()["job_id"] == chosen["job_id"]
    assert api.http("POST", "/v1/jobs", json={**chosen, "seed": 3}).status_code == 409
    assert api.http("POST", "/v1/jobs", "bob", json=chosen).status_code == 409
    for job_id in (first.json()["job_id"], bobs.json()["job_id"], chosen["job_id"]):
        api.wait(job_id, "root")


@pytest.mark.parametrize("change, field", [
    ({"symbols": []}, "symbols"),
    ({"symbols": ["ZZZ"]}, "symbols"),
    ({"symbols": ["AAA", "ZZZ"]}, "symbols"),
    ({"start_date": "2023-01-02", "end_date": "2023-01-31"}, "symbols"),  # no data in range
    ({"end_date": "2024-03-01"}, "end_date"),
    ({"start_date": "not-a-date"}, "start_date"),
    ({"strategy": "0" * 64}, "strategy"),
    ({"strategy": "abc"}, "strategy"),
    ({"params": {"fast": "x"}}, "params"),
    ({"params": {"nope": 1}}, "params"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"commission": "per_share=x"}, "commission"),
    ({"mode": "fast"}, "mode"),
    ({"symbol": "AAA"}, "symbol"),
    ({"job_id": "../escape"}, "job_id"),
    ({"strategy_image": "127.0.0.1:5000/strategies/sma:v1"}, "strategy"),  # both given
    ({"strategy": None, "strategy_image": "strategies/sma:v1"}, "strategy_image"),  # no host
    ({"strategy": None, "strategy_image": "127.0.0.1:5000/Bad/Case"}, "strategy_image"),
])
def test_invalid_bodies_are_422_naming_the_field(api: ApiStack, change: dict, field: str) -> None:
    before = api.store.counts()
    r = api.http("POST", "/v1/jobs", json={**api.body(api.digests["sma"]), **change})
    assert r.status_code == 422, r.text
    assert field in r.text
    assert api.store.counts() == before  # nothing recorded, no workflow started


def test_bad_queries_and_unknown_objects(api: ApiStack) -> None:
    assert api.http("GET", "/v1/jobs", params={"status": "DONE"}).status_code == 422
    bad = api.http("GET", "/v1/jobs", params={"cursor": "garbage"})
    assert bad.status_code == 422 and "cursor" in bad.text
    assert api.http("GET", "/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.http("GET", "/v1/jobs/nope").status_code == 404
    assert api.http("GET", "/v1/sweeps/nope").status_code == 404
    bad = api.http("POST", "/v1/strategies", json={"files": {"a.py": "x = ("}, "entry": "a.py"})
    assert bad.status_code == 422 and "strategy" in bad.text
    bad = api.http("POST", "/v1/strategies", json={"files": {"a.py": ""}, "entry": "b.py"})
    assert bad.status_code == 422 and "entry" in bad.text


def test_cancel_a_running_job(api: ApiStack) -> None:
    body = api.body(api.digests["sma"], params={"fast": 3, "slow": 30})
    body["symbols"] = ["AAA", "BBB"]
    job_id = api.http("POST", "/v1/jobs", "bob", json=body).json()["job_id"]
    r = api.http("POST", f"/v1/jobs/{job_id}/cancel", "bob")
    assert r.status_code == 202
    job = api.wait(job_id, "bob")
    assert job["status"] == "CANCELLED" and job["finished_at"]
    _record(api, job_id, "api_backtest_cancelled")
    again = api.http("POST", f"/v1/jobs/{job_id}/cancel", "bob")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]
    assert api.http("GET", f"/v1/jobs/{job_id}/trades", "bob").status_code == 409


def test_list_pages_filters_and_search_attributes(api: ApiStack) -> None:
    import asyncio

    from tickreplay.jobs.operations import connect

    mine = [j["job_id"] for j in api.http("GET", "/v1/jobs", params={"limit": 500}).json()["jobs"]]
    pages, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.http("GET", "/v1/jobs", params=params).json()
        pages += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == mine and len(mine) >= 3
    ok = api.http("GET", "/v1/jobs", params={"status": "SUCCEEDED"}).json()["jobs"]
    assert ok and all(j["status"] == "SUCCEEDED" for j in ok)

    async def listed() -> set[str]:
        client = await connect(api.settings)
        return {w.id async for w in client.list_workflows(
            "TickreplayUser='alice' AND TickreplayStatus='SUCCEEDED'")}

    deadline = time.monotonic() + 20  # the visibility store is eventually consistent
    while not {j["job_id"] for j in ok} <= (seen := asyncio.run(listed())):
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)


def test_per_user_limit_queues_pending_in_submission_order(api: ApiStack) -> None:
    """max_running_per_user=2 here: five jobs of one user never run more than two at once,
    start in the order submitted, and all succeed (none rejected)."""
    ids = [api.http("POST", "/v1/jobs", "bob", json=api.body(
        api.digests["sma"], params={"fast": 5 + i, "slow": 50})).json()["job_id"]
        for i in range(5)]
    peak = 0
    deadline = time.monotonic() + 240
    while True:
        rows = {i: api.store.job_record(i) for i in ids}
        peak = max(peak, sum(r["status"] == "RUNNING" for r in rows.values()))
        if all(r["status"] == "SUCCEEDED" for r in rows.values()):
            break
        assert not any(r["status"] in ("FAILED", "CANCELLED") for r in rows.values()), rows
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 1 <= peak <= 2
    starts = [rows[i]["started_at"] for i in ids]
    assert starts == sorted(starts)


def test_sweep_runs_every_point_as_a_job(api: ApiStack) -> None:
    body = {**api.body(api.digests["sma"]), "grid": {"fast": [5, 8], "slow": ["40"]},
            "max_concurrent": 2, "metric": "sharpe"}
    r = api.http("POST", "/v1/sweeps", json=body)
    assert r.status_code == 202, r.text
    sweep_id, jobs = r.json()["sweep_id"], r.json()["jobs"]
    assert len(jobs) == 2
    deadline = time.monotonic() + 240
    while (sw := api.http("GET", f"/v1/sweeps/{sweep_id}").json())["status"] != "SUCCEEDED":
        assert time.monotonic() < deadline, sw
        time.sleep(0.5)
    rows = sw["result"]["rows"]
    assert [r["rank"] for r in rows] == [1, 2] and {r["job_id"] for r in rows} == set(jobs)
    _record(api, sweep_id, "api_sweep")
    assert all(j["status"] == "SUCCEEDED" and j["params"]["slow"] == 40 for j in sw["jobs"])
    assert api.http("GET", f"/v1/sweeps/{sweep_id}", "bob").status_code == 404
    bad = api.http("POST", "/v1/sweeps", json={**body, "grid": {"fast": ["x"]}})
    assert bad.status_code == 422 and "grid" in bad.text


def test_cancel_a_sweep_its_unstarted_points_end_and_block_no_one(api: ApiStack) -> None:
    """A sweep runs one point at a time; cancelled at once, the points it never started end
    CANCELLED with it, and a job of the same user submitted meanwhile is not held up by them."""
    body = {**api.body(api.digests["sma"]), "grid": {"fast": [3, 4, 5, 6], "slow": [30]},
            "max_concurrent": 1}
    sweep = api.http("POST", "/v1/sweeps", "bob", json=body).json()
    job_id = api.http("POST", "/v1/jobs", "bob", json=api.body(api.digests["sma"])).json()["job_id"]
    assert api.http("POST", f"/v1/sweeps/{sweep['sweep_id']}/cancel", "alice").status_code == 404
    assert api.http("POST", f"/v1/sweeps/{sweep['sweep_id']}/cancel", "bob").status_code == 202
    assert api.wait(job_id, "bob")["status"] == "SUCCEEDED"
    deadline = time.monotonic() + 120
    while True:
        sw = api.http("GET", f"/v1/sweeps/{sweep['sweep_id']}", "bob").json()
        if sw["status"] == "CANCELLED" and all(
                j["status"] in ("SUCCEEDED", "CANCELLED") for j in sw["jobs"]):
            break
        assert time.monotonic() < deadline, sw
        time.sleep(0.3)
    assert sum(j["status"] == "CANCELLED" for j in sw["jobs"]) >= 3
    _record(api, sweep["sweep_id"], "api_sweep_cancelled")
    again = api.http("POST", f"/v1/sweeps/{sweep['sweep_id']}/cancel", "bob")
    assert again.status_code == 409


def test_a_job_id_of_a_workflow_the_api_does_not_know_is_409(api: ApiStack) -> None:
    """A job started straight on Temporal keeps its id: the API never adopts it."""
    import asyncio

    from wfkit import EXAMPLES

    from tickreplay.jobs import operations as jobs
    from tickreplay.spec import BacktestSpec

    spec = BacktestSpec.parse({"strategy": str(EXAMPLES / "sma_cross.py"),
                               "data_url": f"s3://{api.settings.data_bucket}", "symbols": "AAA",
                               "start": "2024-03-04", "end": "2024-03-05"})
    direct = jobs.prepare(spec, f"direct-{time.time_ns()}")

    async def start() -> None:
        await jobs.submit(await jobs.connect(api.settings), api.settings, direct)

    asyncio.run(start())
    r = api.http("POST", "/v1/jobs", json=api.body(api.digests["sma"], job_id=direct.job_id))
    assert r.status_code == 409 and "taken" in r.json()["detail"]
    assert api.store.job_record(direct.job_id) is None  # nothing left half-made


def test_health_readiness_metrics_and_the_committed_openapi(api: ApiStack) -> None:
    assert api.http("GET", "/healthz", None).json() == {"status": "ok"}
    ready = api.http("GET", "/readyz", None)
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "db": "ok",
                                                         "temporal": "ok", "s3": "ok"}
    assert api.http("GET", "/metrics", None).status_code == 401
    assert api.http("GET", "/metrics", "alice").status_code == 403  # user names inside
    text = api.http("GET", "/metrics", "root").text
    assert 'tickreplay_jobs{status="SUCCEEDED"}' in text
    assert "tickreplay_submit_seconds_count" in text and "tickreplay_job_run_seconds_bucket" in text
    assert 'tickreplay_user_running_jobs' in text
    served = api.http("GET", "/openapi.json", None).json()
    committed = json.loads((Path(ROOT) / "docs" / "openapi.json").read_text())
    assert served == committed, "docs/openapi.json is stale: run `make openapi`"
