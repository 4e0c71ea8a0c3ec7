"""Engine benchmark: 10 M ticks of one symbol, floor vs per-tick vs vectorised, in one run.

Each case runs in its own child process so that its peak RSS is its own. Data is generated
once into ``bench-data/`` (deterministic) and read from a local catalog through the same
verified cache and stream as a real run. Prints a table and writes ``bench-results/engine.md``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench-data"
OUT = ROOT / "bench-results"
TICKS_PER_DAY = 1_000_000
START = "2024-01-02"
END_10 = "2024-01-15"  # 10 weekdays -> 10 M ticks
END_20 = "2024-01-29"  # 20 weekdays -> 20 M ticks
PARAMS = {"fast": 50, "slow": 500, "qty": 100}


def _settings():
    from tickreplay.settings import Settings

    return Settings(home=DATA / "home", cache_max_bytes=50 * 1024**3)


def ensure_data() -> None:
    """Generate the catalog once (20 weekdays of one symbol)."""
    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import open_store

    marker = DATA / f"ready-{TICKS_PER_DAY}"
    if marker.exists():
        return
    generate(open_store(DATA / "catalog"), ["BENCH"], START, END_20,
             ticks_per_day=TICKS_PER_DAY, seed=42)
    marker.touch()


def _plan(end: str):
    from tickreplay.data.cache import PartitionCache
    from tickreplay.data.catalog import plan_data
    from tickreplay.data.objectstore import open_store
    from tickreplay.runner.driver import count_ticks, fetch_plan

    s = _settings()
    store = open_store(DATA / "catalog")
    plan = plan_data(store, ["BENCH"], START, end)
    paths = fetch_plan(plan, store, PartitionCache(s.resolved_cache_dir(), s.cache_max_bytes))
    return plan, paths, count_ticks(paths)


def case(name: str, end: str) -> dict:
    """Run one case in this process; returns ticks, seconds and peak RSS."""
    from tickreplay.engine.config import Commission, RunConfig
    from tickreplay.runner.driver import simulate
    from tickreplay.strategy.loader import bundle_from_spec

    plan, paths, total = _plan(end)
    resolve = lambda p: paths[p.key]
    cfg = RunConfig(latency_ns=1_000_000, slippage_bps=1,
                    commission=Commission(per_share=0.005, minimum=1.0))
    t0 = time.perf_counter()
    extra = {}
    if name.startswith("floor"):
        import pyarrow.parquet as pq

        cols = ["ts", "price", "size"] if name == "floor" else ["ts", "price"]
        n = 0
        for p in plan.partitions:
            pf = pq.ParquetFile(resolve(p), page_checksum_verification=True)
            for batch in pf.iter_batches(batch_size=262_144, columns=cols):
                n += batch.num_rows
        ticks = n
    else:
        spec = "sma_cross.py" if name == "per-tick" else "sma_cross_vectorized.py"
        bundle = bundle_from_spec(str(ROOT / "examples" / spec))
        result = simulate(bundle, PARAMS, plan, cfg, resolve, ticks_total=total)
        ticks = result.ticks
        extra["trades"] = result.trades.num_rows
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": name, "ticks": ticks, "seconds": elapsed, "ticks_per_s": ticks / elapsed,
            "peak_rss": rss, **extra}


def _child(name: str, end: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", name, end], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run every case and print the table."""
    from rich.console import Console
    from rich.table import Table

    ensure_data()
    _plan(END_20)  # warm the cache outside the measurements
    rows = [
        ("floor: pyarrow reads ts, price, size (page checksums on)", _child("floor", END_10),
         None),
        ("per-tick path, examples/sma_cross.py (reads ts, price, size)",
         _child("per-tick", END_10), 1e6),
        ("floor: pyarrow reads ts, price (page checksums on)", _child("floor-2", END_10), None),
        ("vectorised path, examples/sma_cross_vectorized.py (reads ts, price)",
         _child("vector", END_10), 30e6),
        ("vectorised path, 2x date range (20 M ticks)", _child("vector", END_20), 30e6),
    ]
    table = Table(title="tickreplay engine benchmark (one symbol, 1 ms latency, 1 bps slippage)")
    for col in ("case", "ticks", "seconds", "M ticks/s", "target", "peak RSS MB", "trades"):
        table.add_column(col, justify="left" if col == "case" else "right")
    lines = ["| case | ticks | seconds | M ticks/s | target | peak RSS MB | trades |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r, target in rows:
        cells = [label, f"{r['ticks']:,}", f"{r['seconds']:.2f}", f"{r['ticks_per_s'] / 1e6:.2f}",
                 f">= {target / 1e6:g}" if target else "floor", f"{r['peak_rss'] / 1e6:.0f}",
                 str(r.get("trades", ""))]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "engine.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(case(sys.argv[2], sys.argv[3])))
    else:
        main()
