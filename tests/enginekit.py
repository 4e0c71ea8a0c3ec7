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


def events(rows: Sequence[tuple]) -> pa.RecordBatch:
    """An event-stream chunk (what ``open_event_stream`` yields) from rows, in the given order:
    ``("t", ts, sym, price, size)`` trades and ``("q", ts, sym, bid, ask[, bid_size, ask_size])``
    quotes (sizes default to unlimited)."""
    nan, inf = float("nan"), float("inf")
    cols: dict[str, list] = {c: [] for c in ("ts", "sym", "kind", "price", "size", "q_bid",
                                             "q_ask", "q_bid_size", "q_ask_size")}
    for r in rows:
        trade = r[0] == "t"
        vals = ((r[1], r[2], 1, float(r[3]), float(r[4]), nan, nan, nan, nan) if trade else
                (r[1], r[2], 0, nan, nan, float(r[3]), float(r[4]),
                 float(r[5]) if len(r) > 5 else inf, float(r[6]) if len(r) > 6 else inf))
        for c, v in zip(cols, vals):
            cols[c].append(v)
    types = {"ts": pa.int64(), "sym": pa.int32(), "kind": pa.int8()}
    return pa.record_batch({c: pa.array(v, types.get(c, pa.float64())) for c, v in cols.items()})


def random_events(n: int, n_sym: int, seed: int, days: int = 2,
                  quote_share: float = 0.6) -> pa.RecordBatch:
    """A merged event stream (trades and quotes with sizes, many equal timestamps) in the
    stream's total order (ts, sym, quotes before trades, row)."""
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, days * DAY, n) // 10**6 * 10**6
    sym = rng.integers(0, n_sym, n).astype(np.int32)
    kind = (rng.random(n) >= quote_share).astype(np.int8)  # 0 quote, 1 trade
    order = np.lexsort((np.arange(n), kind, sym, ts))
    ts, sym, kind = ts[order], sym[order], kind[order]
    mid = np.round(100 * np.exp(np.cumsum(rng.normal(0, 3e-4, n))), 2)
    half = np.round(rng.uniform(0.01, 0.05, n), 2)
    trade = kind == 1
    nan = np.full(n, np.nan)
    return pa.record_batch({
        "ts": ts, "sym": sym, "kind": kind,
        "price": np.where(trade, np.round(mid + rng.choice([-1, 1], n) * half, 2), nan),
        "size": np.where(trade, rng.integers(1, 60, n).astype(float), nan),
        "q_bid": np.where(trade, nan, mid - half), "q_ask": np.where(trade, nan, mid + half),
        "q_bid_size": np.where(trade, nan, rng.integers(1, 40, n).astype(float)),
        "q_ask_size": np.where(trade, nan, rng.integers(1, 40, n).astype(float)),
    })


def independent_equity(stream: pa.RecordBatch, result: EngineResult, symbols: Sequence[str],
                       cash0: float, mark: np.ndarray | None = None) -> list[float]:
    """End-of-day equity rebuilt from the raw events and the trade list, without the engine:
    cash from the fills, positions marked at each symbol's latest event (``mark`` per row;
    default the trade price)."""
    import math

    ts, sym = stream["ts"].to_numpy(), stream["sym"].to_numpy()
    px = stream["price"].to_numpy() if mark is None else mark
    tr = result.trades.to_pydict()
    out = []
    for day in sorted(set((ts // DAY).tolist())):
        end = (day + 1) * DAY
        cash = cash0 - math.fsum(q * p + f for t, q, p, f in
                                 zip(tr["ts"], tr["qty"], tr["price"], tr["fee"]) if t < end)
        value = 0.0
        for s, name in enumerate(symbols):
            pos = math.fsum(q for t, q, n in zip(tr["ts"], tr["qty"], tr["symbol"])
                            if t < end and n == name)
            seen = np.flatnonzero((sym == s) & (ts < end))
            if len(seen):
                value += pos * px[seen[-1]]
        out.append(cash + value)
    return out
