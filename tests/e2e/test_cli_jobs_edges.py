"""The job commands at their edges, as a user meets them (issue 11, items 6, 10, 11, 12).

A real Temporal dev server and SeaweedFS (session fixtures), one real worker process, and the
CLI as a subprocess pointed at them through ``TICKREPLAY_*`` variables. Every failure is one
line ``error: ...`` on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.wfkit import isolated_settings, spawn_worker, stop_process

from tickreplay.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
RANGE = ["--start", "2024-03-04", "--end", "2024-03-05"]


class CLI:
    """``python -m tickreplay.cli`` with the test stack's settings in the environment."""

    def __init__(self, settings: Settings) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
        self.env.update(settings.to_env())

    def __call__(self, *args: str, ok: bool = True, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], capture_output=True,
                           text=True, env=env or self.env, cwd=ROOT, timeout=200, check=False)
        assert (p.returncode == 0) == ok, f"tickreplay {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
        if not ok:
            assert "Traceback" not in p.stderr, p.stderr
        return p


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def stack(s3_server: Settings, temporal_address: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Settings]:
    base = tmp_path_factory.mktemp("edges")
    settings = isolated_settings(s3_server, temporal_address, base / "cache", ["AAA", "BBB"],
                                 "2024-03-04", "2024-03-05", 5_000, seed=3)
    settings = settings.model_copy(update={"home": base / "home"})
    worker = spawn_worker(settings, base / "worker.log")
    try:
        yield settings
    finally:
        stop_process(worker, signal.SIGKILL)


@pytest.fixture(scope="module")
def cli(stack: Settings) -> CLI:
    return CLI(stack)


def _wait_done(cli: CLI, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        st = json.loads(cli("status", job_id, "--json").stdout)
        if st["status"] not in ("RUNNING", "PENDING") or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def _started_input(settings: Settings, job_id: str) -> Any:
    from tickreplay.jobs.operations import connect
    from tickreplay.workflows.types import JobInput

    async def go() -> Any:
        client = await connect(settings)
        async for event in client.get_workflow_handle(job_id).fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            return (await client.data_converter.decode(payloads, [JobInput]))[0]

    return asyncio.run(go())


def test_unknown_job_cancel_logs_status_are_one_line_errors(cli: CLI) -> None:
    for cmd in ("cancel", "logs", "status"):
        p = cli(cmd, "bt-no-such-job", ok=False)
        assert "no such job 'bt-no-such-job'" in one_error_line(p)


def test_a_finished_job_cannot_be_cancelled_and_resubmits_follow_its_input(
        cli: CLI, stack: Settings) -> None:
    job_id = f"bt-edge-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    args = ["submit", "examples/sma_cross.py", "--symbols", "AAA", *RANGE, "--param", "fast=5",
            "--param", "slow=40", "--job-id", job_id, "--stall-timeout", "42", "--json"]
    assert json.loads(cli(*args).stdout)["job_id"] == job_id
    assert _started_input(stack, job_id).options.stall_timeout_s == 42.0  # item 6
    st = _wait_done(cli, job_id)
    assert st["status"] == "SUCCEEDED", st
    p = cli("cancel", job_id, ok=False)
    line = one_error_line(p)
    assert "already finished (SUCCEEDED)" in line and "cancel requested" not in p.stdout
    # Same id, same input: the same (closed) job, not a second run.
    assert json.loads(cli(*args).stdout)["job_id"] == job_id
    # Same id, another spec: refused at once, naming the id.
    p = cli(*[a if a != "fast=5" else "fast=6" for a in args], ok=False)
    line = one_error_line(p)
    assert job_id in line and "different spec" in line
    assert json.loads(cli("status", job_id, "--json").stdout)["status"] == "SUCCEEDED"


def test_submit_and_sweep_name_missing_symbols_unless_allowed(cli: CLI) -> None:
    p = cli("submit", "examples/sma_cross.py", "--symbols", "AAA,ZZZZ", *RANGE, ok=False)
    line = one_error_line(p)
    assert "ZZZZ" in line and "--allow-missing" in line
    p = cli("sweep", "examples/sma_cross.py", "--symbols", "AAA,ZZZZ", *RANGE,
            "--grid", "fast=5,6", ok=False)
    assert "ZZZZ" in one_error_line(p)
    p = cli("submit", "examples/sma_cross.py", "--symbols", "AAA,ZZZZ", *RANGE,
            "--allow-missing", "--json")
    assert json.loads(p.stdout)["job_id"]


def test_a_strategy_error_is_not_printed_with_a_double_prefix(cli: CLI, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tickreplay import Strategy\n\nclass Bad(Strategy):\n"
                   "    def on_tick(self, tick):\n        raise RuntimeError('boom at tick')\n")
    p = cli("submit", str(bad), "--symbols", "AAA", *RANGE, "--wait", "--json", ok=False)
    st = json.loads(p.stdout)
    assert st["status"] == "FAILED"
    logs = cli("logs", st["job_id"]).stderr
    assert "StrategyError: " in logs and "StrategyError: StrategyError" not in logs


def test_job_commands_refuse_to_guess_an_address_when_no_stack_is_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
    env["TICKREPLAY_HOME"] = str(tmp_path / "empty-home")
    cli = CLI(Settings())
    for args in (["status", "bt-x"], ["cancel", "bt-x"], ["logs", "bt-x"], ["gc"],
                 ["results", "bt-x", "--out", str(tmp_path / "r")],
                 ["submit", "examples/sma_cross.py", "--symbols", "AAA", *RANGE]):
        p = cli(*args, ok=False, env=env)
        assert "no stack is running" in one_error_line(p), args
