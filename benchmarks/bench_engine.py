"""Engine benchmark: 10 M ticks of one symbol, floor vs per-tick vs vectorised, in one run.

Each case runs in its own child process so that its peak RSS is its own. Data is generated
once into ``bench-data/`` (deterministic) and read from a local catalog through the same
verified cache and stream as a real run. Prints a table and writes ``bench-results/engine.md``.

The quote fill model has its own rows: 2 days of trades with 3 L1 quotes per trade, merged
(8 M events), per-tick and vectorised, beside the pyarrow floor reading both datasets. The
trade model's rows are also run on the engine as it was before the quote model
(``BASELINE``, checked out with ``git worktree`` into ``bench-data/``), so a slowdown shows
in the same run on the same machine.
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
END_Q = "2024-01-03"  # 2 weekdays of trades and quotes
PARAMS = {"fast": 50, "slow": 500, "qty": 100}
BASELINE = "c835391"  # the last commit before the quote model (issue 16)
QUOTES = DATA / "quotes-catalog"


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


def ensure_quote_data() -> None:
    """Generate the quotes catalog once (2 weekdays, trades and 3 quotes per trade)."""
    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import open_store

    marker = DATA / f"ready-quotes-{TICKS_PER_DAY}"
    if marker.exists():
        return
    generate(open_store(QUOTES), ["BENCH"], START, END_Q, ticks_per_day=TICKS_PER_DAY,
             seed=42, quote_partitions=True)
    marker.touch()


def baseline() -> Path | None:
    """A worktree of ``BASELINE`` (created once), or None where git cannot make one."""
    tree = DATA / f"baseline-{BASELINE}"
    if not (tree / "src").is_dir():
        made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                               str(tree), BASELINE], check=False, capture_output=True,
                              text=True)
        if made.returncode != 0:
            print(f"no baseline: {made.stderr.strip()}", file=sys.stderr)
            return None
    return tree


def _plan(end: str, quotes: bool = False):
    from tickreplay.data.cache import PartitionCache
    from tickreplay.data.catalog import plan_data
    from tickreplay.data.objectstore import open_store
    from tickreplay.runner.driver import count_ticks, fetch_plan

    s = _settings()
    store = open_store(QUOTES if quotes else DATA / "catalog")
    plan = (plan_data(store, ["BENCH"], START, end, events=("trades", "quotes")) if quotes
            else plan_data(store, ["BENCH"], START, end))
    paths = fetch_plan(plan, store, PartitionCache(s.resolved_cache_dir(), s.cache_max_bytes))
    return plan, paths, count_ticks(paths)


def case(name: str, end: str) -> dict:
    """Run one case in this process; returns ticks, seconds and peak RSS."""
    from tickreplay.engine.config import Commission, RunConfig
    from tickreplay.runner.driver import simulate
    from tickreplay.strategy.loader import bundle_from_spec

    quotes = name.endswith("-quote")
    plan, paths, total = _plan(end, quotes)
    resolve = lambda p: paths[p.key]
    cfg = RunConfig(latency_ns=1_000_000, slippage_bps=1,
                    commission=Commission(per_share=0.005, minimum=1.0))
    if quotes:
        cfg = cfg.model_copy(update={"fill_model": "quote"})
    t0 = time.perf_counter()
    extra = {}
    if name.startswith("floor"):
        import pyarrow.parquet as pq

        cols = ["ts", "price", "size"] if name in ("floor", "floor-quote") else ["ts", "price"]
        n = 0
        for p in plan.partitions:
            pf = pq.ParquetFile(resolve(p), page_checksum_verification=True)
            kind_cols = cols if getattr(p, "kind", "trades") == "trades" else \
                ["ts", "bid", "ask", "bid_size", "ask_size"]
            for batch in pf.iter_batches(batch_size=262_144, columns=kind_cols):
                n += batch.num_rows
        ticks = n
    else:
        spec = "sma_cross.py" if name.startswith("per-tick") else "sma_cross_vectorized.py"
        bundle = bundle_from_spec(str(ROOT / "examples" / spec))
        result = simulate(bundle, PARAMS, plan, cfg, resolve, ticks_total=total)
        ticks = result.ticks
        extra["trades"] = result.trades.num_rows
    elapsed = time.perf_counter() - t0
    rss = _peak_rss()
    return {"case": name, "ticks": ticks, "seconds": elapsed, "ticks_per_s": ticks / elapsed,
            "peak_rss": rss, **extra}


def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which starts afresh at exec (ru_maxrss carries
    the forking parent's peak over, so every child reported the generator's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _best(name: str, end: str, before: Path | None, runs: int = 3) -> tuple[dict, dict | None]:
    """The fastest of ``runs`` runs of a case, on this engine and on ``before``, alternating,
    so that the machine's drift hits both alike."""
    now: list[dict] = []
    old: list[dict] = []
    for _ in range(runs):
        now.append(_child(name, end))
        if before is not None:
            old.append(_child(name, end, before))

    def fastest(rs: list[dict]) -> dict:
        return min(rs, key=lambda r: r["seconds"])

    return fastest(now), (fastest(old) if old else None)


def _child(name: str, end: str, code: Path | None = None) -> dict:
    """One case in a child process, on this checkout's engine or on ``code`` (a worktree)."""
    import os

    env = {**os.environ, "PYTHONPATH": str(code / "src")} if code is not None else None
    out = subprocess.run([sys.executable, __file__, "--case", name, end], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run every case and print the table."""
    from rich.console import Console
    from rich.table import Table

    ensure_data()
    ensure_quote_data()
    _plan(END_20)  # warm the caches outside the measurements
    _plan(END_Q, quotes=True)
    before = baseline()
    tick_now, tick_old = _best("per-tick", END_10, before)
    vec_now, vec_old = _best("vector", END_10, before)
    earlier = f"  the same on the engine before the quote model ({BASELINE}), best of 3"
    rows = [
        ("floor: pyarrow reads ts, price, size (page checksums on)", _child("floor", END_10),
         None),
        ("per-tick path, examples/sma_cross.py (reads ts, price, size), best of 3", tick_now,
         1e6),
    ]
    if tick_old is not None:
        rows.append((earlier, tick_old, 1e6))
    rows += [
        ("floor: pyarrow reads ts, price (page checksums on)", _child("floor-2", END_10), None),
        ("vectorised path, examples/sma_cross_vectorized.py (reads ts, price), best of 3",
         vec_now, 30e6),
    ]
    if vec_old is not None:
        rows.append((earlier, vec_old, 30e6))
    rows += [
        ("vectorised path, 2x date range (20 M ticks)", _child("vector", END_20), 30e6),
        ("floor: pyarrow reads trades (ts, price, size) + quotes (ts, bid, ask, sizes)",
         _child("floor-quote", END_Q), None),
        ("quote model, per-tick, sma_cross.py: trades + quotes merged",
         _child("per-tick-quote", END_Q), None),
        ("quote model, vectorised, sma_cross_vectorized.py: trades + quotes merged",
         _child("vector-quote", END_Q), None),
    ]
    table = Table(title="tickreplay engine benchmark (one symbol, 1 ms latency, 1 bps slippage)")
    for col in ("case", "ticks", "seconds", "M ticks/s", "target", "peak RSS MB", "trades"):
        table.add_column(col, justify="left" if col == "case" else "right")
    lines = ["| case | ticks | seconds | M ticks/s | target | peak RSS MB | trades |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r, target in rows:
        cells = [label, f"{r['ticks']:,}", f"{r['seconds']:.2f}", f"{r['ticks_per_s'] / 1e6:.2f}",
                 f">= {target / 1e6:g}" if target else "floor" if "floor" in label else "",
                 f"{r['peak_rss'] / 1e6:.0f}",
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
