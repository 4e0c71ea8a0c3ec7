"""``make demo``: generate a small catalog, run the example strategy locally, print the result.

Kept as a module (not shell in the Makefile) so it runs the same way everywhere and fails with
a clear message at the step that broke.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tr(*args: str) -> None:
    cmd = [sys.executable, "-m", "tickreplay.cli", *args]
    print("$ tickreplay " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    """Generate data (once), run the per-tick SMA example, print metrics and the result hash."""
    data = ROOT / "demo-data"
    if not (data / "ticks").exists():
        _tr("data", "generate", "--out", str(data), "--symbols", "AAPL,MSFT",
            "--start", "2024-01-02", "--end", "2024-03-29", "--ticks-per-day", "20000",
            "--seed", "7")
    _tr("data", "ls", str(data))
    _tr("run", "examples/sma_cross.py", "--data", str(data), "--symbols", "AAPL,MSFT",
        "--start", "2024-01-02", "--end", "2024-03-29", "--param", "fast=50",
        "--param", "slow=400", "--latency-ms", "1", "--slippage-bps", "0.5",
        "--commission", "per_share=0.005,min=1", "--out", str(ROOT / "demo-results" / "local"))


if __name__ == "__main__":
    main()
