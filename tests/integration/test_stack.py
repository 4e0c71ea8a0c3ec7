"""The embedded stack (``tickreplay up / down / ps``) with real processes on free ports.

Every test stops what it started through ``down`` in the ``state_dir`` fixture, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import pytest
from typer.testing import CliRunner

from tickreplay.cli import app
from tickreplay.settings import Settings
from tickreplay.stack import control as stack
from tickreplay.stack.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _ports() -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    temporal, ui, s3, api, grpc = sorted(ports)
    return {"temporal_port": temporal, "ui_port": ui, "s3_port": s3, "api_port": api,
            "grpc_port": grpc}


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead child that the test process has not reaped yet is dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ours(state_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory lies in ``state_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(str(state_dir) in arg for arg in info["cmdline"] or []) or \
                str(info["cwd"] or "").startswith(str(state_dir)):
            found.append(proc)
    return found


def _namespace_answers(address: str) -> str:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    async def describe() -> str:
        client = await Client.connect(address)
        resp = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default"))
        return resp.namespace_info.name

    return asyncio.run(describe())


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "stack"
    try:
        yield path
    finally:
        # Throwaway data: no need for SeaweedFS's ~15 s graceful stop.
        stack.down(path, worker_grace=10, service_grace=0)


def test_cli_up_ps_second_up_is_noop_down_stops_all(state_dir: Path) -> None:
    runner = CliRunner()
    ports = _ports()
    args = ["--state-dir", str(state_dir), "--temporal-port", str(ports["temporal_port"]),
            "--ui-port", str(ports["ui_port"]), "--s3-port", str(ports["s3_port"]),
            "--api-port", str(ports["api_port"]), "--grpc-port", str(ports["grpc_port"])]

    first = runner.invoke(app, ["up", *args, "--workers", "0"])
    assert first.exit_code == 0, first.output
    # `up` ran the metadata database's migrations (issue 13).
    from tickreplay.db.migrate import current
    from tickreplay.db.store import open_engine

    assert current(open_engine(f"sqlite:///{state_dir / 'tickreplay.db'}")) == "0003"
    assert f"http://127.0.0.1:{ports['ui_port']}" in first.output
    assert f"http://127.0.0.1:{ports['s3_port']}" in first.output

    ps = runner.invoke(app, ["ps", "--state-dir", str(state_dir), "--json"])
    assert ps.exit_code == 0, ps.output
    parts = {p["name"]: p for p in json.loads(ps.output)["parts"]}
    assert sorted(parts) == ["api", "seaweedfs", "temporal"]
    assert all(p["alive"] for p in parts.values())
    assert parts["temporal"]["endpoint"] == f"127.0.0.1:{ports['temporal_port']}"
    api_url = f"http://127.0.0.1:{ports['api_port']}"
    assert parts["api"]["endpoint"] == api_url and api_url in first.output

    # Both answer, with the buckets made and the settings file other commands read.
    assert _namespace_answers(parts["temporal"]["endpoint"]) == "default"
    settings = Settings()
    s3 = boto3.client("s3", endpoint_url=parts["seaweedfs"]["endpoint"], region_name="us-east-1",
                      aws_access_key_id=settings.s3_access_key,
                      aws_secret_access_key=settings.s3_secret_key)
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {"market-data", "results", "artifacts"} <= buckets
    env = dict(line.split("=", 1) for line in (state_dir / "stack.env").read_text().splitlines())
    assert env["TICKREPLAY_TEMPORAL_ADDRESS"] == f"127.0.0.1:{ports['temporal_port']}"
    assert env["TICKREPLAY_S3_ENDPOINT"] == f"http://127.0.0.1:{ports['s3_port']}"
    assert env["TICKREPLAY_S3_SECRET_KEY"] == settings.s3_secret_key
    # The API answers, and stack.env holds its URL and a working token of the local user.
    assert env["TICKREPLAY_API_URL"] == api_url
    assert (state_dir / "stack.env").stat().st_mode & 0o077 == 0
    import httpx

    auth = {"Authorization": f"Bearer {env['TICKREPLAY_API_TOKEN']}"}
    assert httpx.get(f"{api_url}/v1/jobs", headers=auth, timeout=10).json()["jobs"] == []
    assert httpx.get(f"{api_url}/readyz", timeout=20).json()["status"] == "ok"

    again = runner.invoke(app, ["up", "--state-dir", str(state_dir), "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "already up" in again.output
    assert {p.name: p.pid for p in stack.status(state_dir).parts} == \
        {name: p["pid"] for name, p in parts.items()}

    down = runner.invoke(app, ["down", "--state-dir", str(state_dir), "--service-grace", "0"])
    assert down.exit_code == 0, down.output
    assert "seaweedfs" in down.output and "temporal" in down.output and "api" in down.output
    assert not any(_running(p["pid"]) for p in parts.values())
    assert stack.status(state_dir).parts == []
    assert not (state_dir / "stack.env").exists()
    assert _ours(state_dir) == []


@pytest.mark.parametrize(("key", "part"), [("temporal_port", "temporal"), ("ui_port", "temporal"),
                                           ("s3_port", "seaweedfs")])
def test_taken_port_is_named_and_nothing_starts(state_dir: Path, key: str, part: str) -> None:
    ports = _ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[key]))
        squatter.listen()
        with pytest.raises(stack.StackError) as caught:
            stack.up(state_dir, workers=0, api=False, **ports)
    assert caught.value.part == part
    assert f"port {ports[key]}" in str(caught.value)
    assert stack.status(state_dir).parts == []
    assert _ours(state_dir) == []


def test_stale_pid_file_restarts_that_part_and_recycled_pid_is_never_signalled(
        state_dir: Path) -> None:
    ports = _ports()
    first = stack.up(state_dir, workers=0, api=False, **ports)
    pids = {p.name: p.pid for p in first.parts}
    os.kill(pids["temporal"], signal.SIGKILL)
    psutil.Process(pids["temporal"]).wait(10)  # reap: we are its parent here
    assert {p.name: p.alive for p in stack.status(state_dir).parts} == \
        {"temporal": False, "seaweedfs": True}

    second = stack.up(state_dir, workers=0, api=False)
    assert second.started == ["temporal"]
    now = {p.name: p for p in second.parts}
    assert now["seaweedfs"].pid == pids["seaweedfs"]
    assert now["temporal"].alive and now["temporal"].pid != pids["temporal"]
    assert now["temporal"].endpoint == f"127.0.0.1:{ports['temporal_port']}"

    # A pid file naming a live process that is not the one recorded, as after pid reuse.
    me = psutil.Process()
    (state_dir / "pids" / "worker-7.pid").write_text(json.dumps({
        "name": "worker-7", "pid": me.pid, "create_time": me.create_time() - 100,
        "cmdline": me.cmdline(), "ports": {}, "endpoint": None, "log": None}))
    assert [p.alive for p in stack.status(state_dir).parts if p.name == "worker-7"] == [False]

    stopped = stack.down(state_dir, service_grace=0)
    assert sorted(stopped) == ["seaweedfs", "temporal"]
    assert me.is_running()
    assert not _running(now["temporal"].pid)
    assert not _running(now["seaweedfs"].pid)


def test_failing_worker_is_named_and_everything_started_is_stopped(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "WORKER_MODULE", "tickreplay.workers.no_such_module")
    with pytest.raises(stack.StackError) as caught:
        stack.up(state_dir, workers=1, **_ports())
    assert caught.value.part == "worker-1"
    assert "No module named tickreplay.workers.no_such_module" in str(caught.value)
    assert stack.status(state_dir).parts == []
    assert _ours(state_dir) == []


def test_worker_polls_temporal_and_down_stops_it(state_dir: Path) -> None:
    """Needs the lead's ``tickreplay.workers.main``: a worker that polls the shared queue."""
    info = stack.up(state_dir, workers=1, **_ports())
    parts = {p.name: p for p in info.parts}
    assert sorted(parts) == ["api", "seaweedfs", "temporal", "worker-1"]
    assert all(p.alive for p in parts.values())
    assert info.warnings == []  # the worker showed up as a poller of the task queue
    worker = psutil.Process(parts["worker-1"].pid)
    assert worker.environ()["TICKREPLAY_TEMPORAL_ADDRESS"] == info.temporal_address

    stopped = stack.down(state_dir, service_grace=0)
    assert stopped == ["worker-1", "api", "seaweedfs", "temporal"]  # the API before its backends
    assert not any(_running(p.pid) for p in parts.values())
    assert _ours(state_dir) == []
