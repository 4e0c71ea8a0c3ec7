"""Pure helpers for engine tests: build merged chunks from rows, run a strategy to the end."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from tickreplay.engine.config import RunConfig
from tickreplay.engine.core import Engine, EngineResult
from tickreplay.strategy.api import Strategy

DAY = 86_400 * 10**9


def chunk(rows: Sequence[tuple[int, int, float] | tuple[int, int, float, float]]) -> pa.RecordBatch:
    """A merged chunk from (ts, sym, price[, size]) rows, in the given order."""
    return pa.record_batch({
        "ts": pa.array([r[0] for r in rows], pa.int64()),
        "sym": pa.array([r[1] for r in rows], pa.int32()),
        "price": pa.array([float(r[2]) for r in rows], pa.float64()),
        "size": pa.array([float(r[3]) if len(r) > 3 else 1.0 for r in rows], pa.float64()),
    })


def random_stream(n: int, n_sym: int, seed: int, days: int = 3) -> pa.RecordBatch:
    """A merged stream with many equal timestamps, sorted by (ts, sym, row)."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, days * DAY, n) // 1000 * 1000)  # coarse: many ties
    sym = rng.integers(0, n_sym, n).astype(np.int32)
    order = np.lexsort((np.arange(n), sym, ts))
    price = np.round(100 * np.exp(np.cumsum(rng.normal(0, 2e-4, n))), 2)
    return pa.record_batch({"ts": ts[order], "sym": sym[order], "price": price,
                            "size": np.ones(n)})


def run(strategy: Strategy, symbols: Sequence[str], batches: Sequence[pa.RecordBatch],
        config: RunConfig | None = None) -> EngineResult:
    """Run a strategy over the batches and finish."""
    eng = Engine(strategy, tuple(symbols), config or RunConfig())
    eng.start()
    for b in batches:
        eng.feed(b)
    return eng.finish()


def split(batch: pa.RecordBatch, size: int) -> list[pa.RecordBatch]:
    """Cut a batch into chunks of ``size`` rows."""
    return [batch.slice(i, size) for i in range(0, batch.num_rows, size)]
