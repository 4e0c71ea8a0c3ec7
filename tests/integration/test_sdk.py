"""The Python SDK (``tickreplay.client``) and the CLI going through it (issue 13, item 6).

What runs for real: the REST API served by uvicorn on a free port (``apikit.serve_api``) over
a real SQLite metadata database, a real Temporal dev server and SeaweedFS (session
fixtures), and a real worker (``apikit.in_process_worker``) running each backtest in its
sandboxed runner. The SDK talks to the API over real HTTP (httpx); the CLI runs as
``python -m tickreplay.cli`` subprocesses configured by ``TICKREPLAY_API_URL`` and
``TICKREPLAY_API_TOKEN``, exactly as ``tickreplay up`` will configure it through stack.env.
Nothing is mocked; the one wrapped transport (the tampering test) changes bytes in flight on
a real connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from apikit import END, START, SYMBOLS, ApiStack, in_process_worker, serve_api, stack_settings
from wfkit import EXAMPLES, ROOT

from tickreplay.client import ApiError, AsyncClient, Client, Job
from tickreplay.errors import ResultsError, StrategyError, TickreplayError
from tickreplay.results import verify_results
from tickreplay.settings import Settings

pytestmark = pytest.mark.integration

SMA = str(EXAMPLES / "sma_cross.py")
# Seconds of busy work per job on this small data set: something to cancel while it runs.
BUSY = str(ROOT / "tests" / "strategies" / "busy_momentum.py")
PARAMS = {"fast": 10, "slow": 80}
# The same inputs as the CLI's flags below, so both paths must give one result hash.
EXECUTION: dict[str, Any] = {"latency_ms": 1, "commission": "per_share=0.005,min=1",
                             "checkpoint_every_s": 1}
CLI_RUN = ["--symbols", ",".join(SYMBOLS), "--start", START, "--end", END, "--param", "fast=10",
           "--param", "slow=80", "--latency-ms", "1", "--commission", "per_share=0.005,min=1",
           "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def api(s3_server: Settings, temporal_address: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    settings = stack_settings(s3_server, temporal_address, tmp_path_factory.mktemp("sdk"))
    with serve_api(settings) as stack, in_process_worker(settings):
        yield stack


@pytest.fixture(scope="module")
def alice(api: ApiStack) -> Iterator[Client]:
    with Client(api.url, api.tokens["alice"]) as client:
        yield client


# What wait()'s on_progress saw, by job id.
SEEN: dict[str, list[tuple[str, int]]] = {}


@pytest.fixture(scope="module")
def done(alice: Client) -> Job:
    """A job submitted from a file path (the SDK uploads it) and waited for."""
    job = alice.submit(SMA, SYMBOLS, START, END, PARAMS, **EXECUTION)
    assert job.status == "PENDING" and job.job_id.startswith("bt-")
    seen = SEEN.setdefault(job.job_id, [])
    job.wait(poll=0.2, timeout=180, on_progress=lambda j: seen.append(
        (j.status, j.progress.ticks_done)))
    assert job.status == "SUCCEEDED", job.raw
    return job


def test_submit_from_a_path_wait_and_read_every_result(api: ApiStack, alice: Client,
                                                       done: Job) -> None:
    seen = SEEN[done.job_id]
    assert seen and seen[-1][0] == "SUCCEEDED"
    assert done.done and len(done.result_hash) == 64
    assert done.results_path.endswith(f"/{done.job_id}/")
    assert done.user == "alice" and done.symbols == SYMBOLS and str(done.start_date) == START
    assert done.finished_at is not None and done.submitted_at is not None
    # The SDK uploaded exactly the bundle the test helper uploads: content-addressed.
    assert done.strategy_digest == api.upload("sma_cross.py")

    trades = done.trades()
    assert isinstance(trades, pa.Table) and trades.num_rows > 0
    df = trades.to_pandas()
    assert len(df) == trades.num_rows and "price" in df.columns
    assert len(done.trades_df()) == trades.num_rows
    assert done.trades_csv().count(b"\n") == trades.num_rows + 1
    equity = done.equity()
    assert isinstance(equity, pa.Table) and equity.num_rows == 5  # one mark per session day
    metrics = done.fetch_metrics()
    assert done.metrics is not None
    assert metrics["ticks"] == done.metrics["ticks"] == done.progress.ticks_done > 0
    manifest = done.manifest()
    assert manifest["result_hash"] == done.result_hash
    assert set(manifest["files"]) == {"trades.parquet", "trades.csv", "equity.parquet",
                                      "metrics.json", "logs.jsonl"}
    logs = done.logs()
    assert "published" in [e["kind"] for e in logs["events"]] and logs["error"] is None
    assert [e["kind"] for e in logs["db_events"]] == ["succeeded"]
    # A refreshed copy and a fresh read agree.
    assert alice.job(done.job_id).result_hash == done.refresh().result_hash


def test_download_checks_every_file_and_the_signature(api: ApiStack, done: Job,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # what the directory held before stays
    manifest = done.download(out, key=api.settings.platform_key())
    assert manifest["result_hash"] == done.result_hash
    assert {p.name for p in out.iterdir()} == {*manifest["files"], "manifest.json", "notes.txt"}
    (out / "notes.txt").unlink()
    # The copy is byte-exact (logs.jsonl included): signature, file list, recomputed hash.
    assert verify_results(out, key=api.settings.platform_key())["result_hash"] == done.result_hash
    # Without the key (a user's machine): the sha256 checks alone.
    again = done.download(tmp_path / "plain")
    assert again["result_hash"] == done.result_hash


class _Tamper(httpx.HTTPTransport):
    """A real connection whose trades answer is changed in flight (one byte flipped)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/files/trades.parquet"):
            body = bytearray(response.read())
            body[len(body) // 2] ^= 0xFF
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=bytes(body))
        return response


def test_download_refuses_a_file_that_does_not_match_and_writes_nothing(
        api: ApiStack, done: Job, tmp_path: Path) -> None:
    with (Client(api.url, api.tokens["alice"], transport=_Tamper()) as tampered,
          pytest.raises(ResultsError, match=r"trades\.parquet: sha256")):
        tampered.download(done.job_id, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # not even a staging directory left


def test_jobs_iterates_every_page_with_filters_and_limits(api: ApiStack, alice: Client,
                                                          done: Job) -> None:
    key = f"sdk-{time.time_ns()}"
    first = alice.submit(SMA, "AAA", START, END, {"fast": 7, "slow": 60},
                         idempotency_key=key, **EXECUTION)
    same = alice.submit(SMA, "AAA", START, END, {"fast": 7, "slow": 60},
                        idempotency_key=key, **EXECUTION)
    assert same.job_id == first.job_id
    with pytest.raises(ApiError) as info:
        alice.submit(SMA, "AAA", START, END, {"fast": 7, "slow": 60}, idempotency_key=key,
                     **{**EXECUTION, "seed": 9})
    assert info.value.status == 409 and "Idempotency-Key" in info.value.message
    first.wait(poll=0.2, timeout=180)

    served = [j["job_id"] for j in api.http("GET", "/v1/jobs", params={"limit": 500})
              .json()["jobs"]]
    assert len(served) >= 2
    assert [j.job_id for j in alice.jobs(page_size=1)] == served
    assert [j.job_id for j in alice.jobs(page_size=2, limit=1)] == served[:1]
    ok = list(alice.jobs("SUCCEEDED", page_size=1))
    assert {done.job_id, first.job_id} <= {j.job_id for j in ok}
    assert all(j.status == "SUCCEEDED" for j in ok)
    with Client(api.url, api.tokens["bob"]) as bob:
        assert done.job_id not in {j.job_id for j in bob.jobs()}


def test_cancel_then_409_for_a_finished_job(api: ApiStack) -> None:
    with Client(api.url, api.tokens["bob"]) as bob:
        job = bob.submit(BUSY, SYMBOLS, START, END, {"work": 5000}, **EXECUTION)
        assert job.cancel() == "CANCELLING"
        job.wait(poll=0.2, timeout=180)
        assert job.status == "CANCELLED" and job.finished_at is not None
        for call in (job.cancel, job.trades):
            with pytest.raises(ApiError) as info:
                call()
            assert info.value.status == 409 and info.value.code == "Conflict"
        assert "already finished" in str(_raised(job.cancel))


def _raised(call: Any) -> ApiError:
    try:
        call()
    except ApiError as e:
        return e
    raise AssertionError("no ApiError")


@pytest.mark.parametrize("change, field", [
    ({"symbols": ["ZZZ"]}, "symbols"),
    ({"params": {"fast": "x"}}, "params"),
    ({"end": "2024-03-01"}, "end_date"),
    ({"symbol": "AAA"}, "symbol"),          # a misspelt field: FastAPI's 422 list
    ({"latency_ms": -1}, "latency_ms"),
])
def test_422_names_the_field(api: ApiStack, alice: Client, change: dict[str, Any],
                             field: str) -> None:
    args: dict[str, Any] = {"symbols": SYMBOLS, "start": START, "end": END, "params": PARAMS,
                            **EXECUTION, **change}
    digest = api.upload("sma_cross.py")
    with pytest.raises(ApiError) as info:
        alice.submit(digest, **args)
    e = info.value
    assert e.status == 422 and e.code == "InvalidRequest" and not e.retryable
    assert field in e.message and "\n" not in e.message


def test_401_404_unreachable_and_local_errors(api: ApiStack, alice: Client, done: Job) -> None:
    with Client(api.url, "trk_forged") as forged:
        e = _raised(lambda: forged.job(done.job_id))
    assert (e.status, e.code) == (401, "Unauthorized") and "bearer token" in e.message
    assert isinstance(e, TickreplayError)  # one hierarchy: `except TickreplayError` catches it

    e = _raised(lambda: alice.job("bt-nope"))
    assert (e.status, e.code) == (404, "NotFound") and "bt-nope" in e.message
    with Client(api.url, api.tokens["bob"]) as bob:  # another user's job: the same 404
        assert _raised(lambda: bob.job(done.job_id)).status == 404
        assert _raised(lambda: bob.trades(done.job_id)).status == 404
    assert _raised(lambda: alice.sweep_status("sweep-nope")).status == 404

    with Client(f"http://127.0.0.1:{_closed_port()}", "t", timeout=5) as nowhere:
        e = _raised(lambda: nowhere.job("x"))
    assert e.status == 0 and e.retryable and "cannot reach" in e.message
    with pytest.raises(StrategyError, match="not found"):
        alice.upload_strategy("no/such/strategy.py")
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:8000", "t")


def _closed_port() -> int:
    from tickreplay.stack.ports import free_port

    return free_port()


async def test_async_client_same_flow(api: ApiStack, tmp_path: Path) -> None:
    async with AsyncClient(api.url, api.tokens["alice"]) as client:
        job = await client.submit(SMA, ",".join(SYMBOLS), START, END, PARAMS, **EXECUTION)
        polls: list[str] = []
        await job.wait(poll=0.2, timeout=180, on_progress=lambda j: polls.append(j.status))
        assert job.status == "SUCCEEDED" and polls[-1] == "SUCCEEDED"
        trades = await job.trades()
        assert isinstance(trades, pa.Table) and trades.num_rows > 0
        assert len(await job.trades_df()) == trades.num_rows
        assert (await job.equity()).num_rows == 5
        assert job.metrics is not None
        assert (await job.fetch_metrics())["ticks"] == job.metrics["ticks"]
        manifest = await job.download(tmp_path / "out", key=api.settings.platform_key())
        assert manifest["result_hash"] == job.result_hash == (await job.manifest())["result_hash"]
        assert "published" in [e["kind"] for e in (await job.logs())["events"]]
        assert job.job_id in [j.job_id async for j in client.jobs(page_size=1)]
        e = None
        try:
            await client.job("bt-nope")
        except ApiError as raised:
            e = raised
        assert e is not None and e.status == 404
        try:
            await job.cancel()
        except ApiError as raised:
            e = raised
        assert e.status == 409


# ---------------------------------------------------------------------------------- the CLI
class CLI:
    """``python -m tickreplay.cli`` configured for the API, as stack.env will configure it."""

    def __init__(self, api: ApiStack, who: str = "alice") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
        self.env.update(api.settings.to_env())
        self.env.update(TICKREPLAY_HOME=str(api.settings.home), TICKREPLAY_API_URL=api.url,
                        TICKREPLAY_API_TOKEN=api.tokens[who])

    def __call__(self, *args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], capture_output=True,
                           text=True, env={**self.env, **env}, cwd=ROOT, timeout=240,
                           check=False)
        assert p.returncode == code, f"tickreplay {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
        if code:
            assert "Traceback" not in p.stderr, p.stderr
        return p


def error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli(api: ApiStack) -> CLI:
    return CLI(api)


def test_cli_submit_wait_status_results_jobs_logs_through_the_api(
        api: ApiStack, cli: CLI, done: Job, tmp_path: Path) -> None:
    p = cli("submit", SMA, *CLI_RUN, "--wait")
    job_id = p.stderr.split("submitted ", 1)[1].split()[0]
    assert "SUCCEEDED" in p.stdout and "result_hash" in p.stdout and "metrics" in p.stdout
    record = api.store.job_record(job_id)  # recorded by the API, under the token's user
    assert record is not None and record["user"] == "alice"
    # The same inputs through the SDK and through the CLI: one result.
    assert record["result_hash"] == done.result_hash

    st = json.loads(cli("status", job_id, "--json").stdout)
    assert st["status"] == "SUCCEEDED" and st["result_hash"] == done.result_hash
    assert st["results_url"].endswith(f"/{job_id}/") and st["metrics"]["ticks"] > 0
    assert st["ticks_done"] == st["ticks_total"] == st["metrics"]["ticks"]
    text = cli("status", job_id).stdout
    for word in ("status", "SUCCEEDED", "ticks_done", "result_hash", "results_url"):
        assert word in text

    out = tmp_path / "res"
    p = cli("results", job_id, "--out", str(out))
    assert f"results:     {out.resolve()}" in p.stdout
    assert f"result hash: {done.result_hash}" in p.stdout
    assert "note:" not in p.stderr  # the signing key is here: the signature was checked
    assert verify_results(out, key=api.settings.platform_key())["result_hash"] == done.result_hash

    listed = json.loads(cli("jobs", "--json").stdout)
    assert job_id in [j["job_id"] for j in listed] and done.job_id in [j["job_id"] for j in listed]
    one = json.loads(cli("jobs", "--status", "succeeded", "--limit", "1", "--json").stdout)
    assert len(one) == 1 and one[0]["status"] == "SUCCEEDED"
    assert job_id in cli("jobs", "--limit", "500").stdout

    logs = cli("logs", job_id)
    assert "published" in logs.stdout
    assert json.loads(cli("logs", job_id, "--json").stdout)["db_events"][0]["kind"] == "succeeded"

    # A job id chosen with --job-id, submitted without waiting: printed at once.
    mine = f"cli-{time.time_ns()}"
    p = cli("submit", SMA, *CLI_RUN, "--job-id", mine, "--json")
    assert json.loads(p.stdout) == {"job_id": mine}
    assert api.wait(mine)["status"] == "SUCCEEDED"
    assert "already finished" in error_line(cli("cancel", mine, code=1))


def test_cli_cancel_and_sweep_through_the_api(api: ApiStack) -> None:
    bob = CLI(api, "bob")
    busy = [*CLI_RUN[:6], "--param", "work=5000"]  # symbols, dates; busy work, no fast/slow
    job_id = json.loads(bob("submit", BUSY, *busy, "--json").stdout)["job_id"]
    assert f"cancel requested for {job_id}" in bob("cancel", job_id).stdout
    assert api.wait(job_id, "bob")["status"] == "CANCELLED"

    p = bob("sweep", SMA, "--symbols", "AAA", "--start", START, "--end", END,
            "--grid", "fast=5,8", "--grid", "slow=40", "--max-concurrent", "2", "--json")
    rows = json.loads(p.stdout)
    assert [r["rank"] for r in rows] == [1, 2] and "2 backtests" in p.stderr
    assert sorted(r["params"]["fast"] for r in rows) == [5, 8]
    assert all(r["status"] == "SUCCEEDED" and r["params"]["slow"] == 40 for r in rows)
    assert all(api.store.job_record(r["job_id"])["user"] == "bob" for r in rows)


def test_cli_errors_through_the_api_are_one_line(api: ApiStack, cli: CLI, tmp_path: Path
                                                 ) -> None:
    assert "bt-nope" in error_line(cli("status", "bt-nope", code=1))
    assert "bt-nope" in error_line(cli("logs", "bt-nope", code=1))
    assert "bt-nope" in error_line(cli("results", "bt-nope", "--out", str(tmp_path), code=1))
    bad = error_line(cli("submit", SMA, *CLI_RUN[2:], "--symbols", "ZZZ", code=2))
    assert "symbols" in bad and "ZZZ" in bad
    assert "params" in error_line(cli("submit", SMA, *CLI_RUN, "--param", "fast=x", code=2))
    assert "--data" in error_line(cli("submit", SMA, *CLI_RUN, "--data", str(tmp_path), code=2))
    assert "not found" in error_line(cli("submit", "nope.py", *CLI_RUN, code=2))
    forged = error_line(cli("jobs", code=1, TICKREPLAY_API_TOKEN="trk_forged"))
    assert "bearer token" in forged and "TICKREPLAY_API_TOKEN" in forged
    down = error_line(cli("jobs", code=1, TICKREPLAY_API_URL=f"http://127.0.0.1:{_closed_port()}"))
    assert "cannot reach the job API" in down
    # Without an API: `jobs` says what to configure; the other commands keep the direct path.
    env = {k: v for k, v in cli.env.items() if not k.startswith("TICKREPLAY_API_")}
    env["TICKREPLAY_HOME"] = str(tmp_path / "empty")
    p = subprocess.run([sys.executable, "-m", "tickreplay.cli", "jobs"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert p.returncode == 1 and "TICKREPLAY_API_URL" in error_line(p)
