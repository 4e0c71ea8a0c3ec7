"""``make demo``: the whole platform on one machine, as a new user would drive it.

Starts the embedded stack (Temporal dev server, SeaweedFS, one worker) under ``.state/``,
writes sample data into S3, submits the example strategy as a durable backtest, follows it
with a progress bar, downloads the verified results and prints metrics, result paths and the
Temporal UI URL. The stack is left running for exploration; ``tickreplay down`` stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the checkout: src/tickreplay/cli/demo.py
STATE = ROOT / ".state"


def _tr(*args: str) -> None:
    print("$ tickreplay " + " ".join(args), flush=True)
    env = {**os.environ, "TICKREPLAY_HOME": str(STATE)}
    subprocess.run([sys.executable, "-m", "tickreplay.cli", *args], check=True, cwd=ROOT, env=env)


def main() -> None:
    """Run the demo end to end; any failing step stops it with that step's error."""
    _tr("up", "--state-dir", str(STATE))
    _tr("data", "generate", "--out", "s3://market-data", "--symbols", "AAPL,MSFT",
        "--start", "2024-01-02", "--end", "2024-03-29", "--ticks-per-day", "20000", "--seed", "7")
    _tr("data", "ls", "s3://market-data")
    job_id = f"demo-{uuid.uuid4().hex[:8]}"
    _tr("submit", "examples/sma_cross.py", "--symbols", "AAPL,MSFT", "--start", "2024-01-02",
        "--end", "2024-03-29", "--param", "fast=50", "--param", "slow=400", "--latency-ms", "1",
        "--slippage-bps", "0.5", "--commission", "per_share=0.005,min=1", "--job-id", job_id,
        "--checkpoint-every", "5", "--wait")
    out = ROOT / "demo-results" / job_id
    _tr("results", job_id, "--out", str(out))
    stack = json.loads((STATE / "stack.json").read_text())
    print(f"\nresult files:  {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}")
    print(f"Temporal UI:   {stack.get('ui_url')}  (workflow id {job_id})")
    print(f"job logs:      TICKREPLAY_HOME={STATE} .venv/bin/tickreplay logs {job_id}")
    print(f"stop:          TICKREPLAY_HOME={STATE} .venv/bin/tickreplay down --state-dir {STATE}")


if __name__ == "__main__":
    main()
