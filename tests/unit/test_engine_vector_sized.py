"""The vectorised path under the quote fill model and participation caps: trades and equity
identical, bit for bit, to the per-tick path on the same signals (docs/semantics.md,
"Vectorised path"), whatever the chunking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest
from enginekit import random_events, random_stream, run, split

from tickreplay import Strategy
from tickreplay.engine.config import RunConfig
from tickreplay.engine.core import data_kinds


def signal(ts: np.ndarray | int, price: np.ndarray | float) -> np.ndarray | float:
    """A target that changes now and then, from the row alone (so both paths agree)."""
    return (np.floor_divide(ts, 7_919_000_000) % 5 - 2) * 7.0


class PerTick(Strategy):
    events = ("trades",)

    def on_start(self) -> None:
        self.target: dict[str, float] = {}

    def _on(self, ts: int, symbol: str, price: float) -> None:
        want = float(signal(ts, price))
        if want != self.target.get(symbol, 0.0):
            self.order(symbol, want - self.target.get(symbol, 0.0))
            self.target[symbol] = want

    def on_tick(self, tick) -> None:
        self._on(tick.ts, tick.symbol, tick.price)

    def on_quote(self, quote) -> None:
        self._on(quote.ts, quote.symbol, quote.bid)


class Vector(Strategy):
    events = ("trades",)
    columns = ("price",)

    def on_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        return signal(batch.column("ts").to_numpy(), 0.0)  # type: ignore[return-value]


class Fills:
    """Mixin: an on_fill that records (so fills are made one at a time)."""

    def on_fill(self, fill) -> None:
        self.fills = [*getattr(self, "fills", []), (fill.order_id, fill.qty, fill.price)]


CASES = {
    "quote model": RunConfig(fill_model="quote", latency_ns=5_000_000, slippage_bps=1),
    "quote model, 30% of the touch": RunConfig(fill_model="quote", max_participation=0.3),
    "trade model, half of each trade": RunConfig(max_participation=0.5, slippage_bps=2),
    "trade model on an event stream": RunConfig(latency_ns=1_000_000),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("events", [("trades",), ("trades", "quotes")])
@pytest.mark.parametrize("with_on_fill", [False, True])
def test_vectorised_fills_equal_per_tick_fills(case: str, events: tuple[str, ...],
                                               with_on_fill: bool) -> None:
    cfg = CASES[case]
    stream = random_events(6_000, 3, seed=len(case) + len(events))
    if "quotes" not in data_kinds(events, cfg.fill_model):  # what the driver would stream
        trades = stream.filter(pa.compute.equal(stream.column("kind"), 1))
        stream = trades.select(["ts", "sym", "price", "size"])
    tick_cls = type("T", (Fills, PerTick) if with_on_fill else (PerTick,), {"events": events})
    vec_cls = type("V", (Fills, Vector) if with_on_fill else (Vector,), {"events": events})
    per_tick = run(tick_cls(), ["A", "B", "C"], split(stream, 1_000), cfg)
    for size in (6_000, 777, 64):
        vec = run(vec_cls(), ["A", "B", "C"], split(stream, size),
                  cfg.model_copy(update={"mode": "vector"}))
        assert vec.trades.num_rows > 50
        assert vec.trades.equals(per_tick.trades), (case, size)
        assert vec.equity.equals(per_tick.equity), (case, size)
        assert vec.open_orders == per_tick.open_orders, (case, size)
    if case.startswith("quote") or "of" in case:  # orders did fill in parts
        ids = per_tick.trades["order_id"].to_pylist()
        assert len(ids) > len(set(ids))


def test_participation_on_a_plain_trade_stream_matches_per_tick() -> None:
    stream = random_stream(5_000, 2, seed=4)
    stream = stream.set_column(3, "size", pa.array(np.arange(5_000) % 7 + 1.0))
    cfg = RunConfig(max_participation=0.25)
    per_tick = run(PerTick(), ["A", "B"], [stream], cfg)
    vec = run(Vector(), ["A", "B"], split(stream, 333), cfg.model_copy(update={"mode": "vector"}))
    assert vec.trades.equals(per_tick.trades) and vec.equity.equals(per_tick.equity)
    ids = per_tick.trades["order_id"].to_pylist()
    assert len(ids) > len(set(ids))  # partial fills across trades
