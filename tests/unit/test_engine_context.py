"""The Strategy API's seam with the engine: StrategyContext, FillRecord, slippage, quote columns."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from enginekit import chunk, run, split

from tickreplay import Strategy
from tickreplay.engine.config import RunConfig
from tickreplay.engine.core import Engine
from tickreplay.engine.orders import Fill, slipped
from tickreplay.strategy.api import FillRecord, StrategyContext, StrategyError


class Recorder:
    """A StrategyContext that is not the engine: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def order(self, symbol: str, qty: float, type: str, limit: float | None,
              stop: float | None, tif: str, expire_ts: int | None = None,
              oco: str | None = None, reduce_only: bool = False) -> int:
        self.calls.append(("order", symbol, qty, type, limit, stop, tif, expire_ts, oco,
                           reduce_only))
        return 7

    def bracket(self, symbol: str, qty: float, entry: float | None, take_profit: float,
                stop_loss: float, tif: str) -> tuple[int, int, int]:
        self.calls.append(("bracket", symbol, qty, entry, take_profit, stop_loss, tif))
        return 1, 2, 3

    def modify(self, order_id: int, qty: float | None, limit: float | None,
               stop: float | None) -> bool:
        self.calls.append(("modify", order_id, qty, limit, stop))
        return True

    def orders(self) -> list[Any]:
        return []

    def cancel(self, order_id: int) -> bool:
        self.calls.append(("cancel", order_id))
        return True

    def position(self, symbol: str) -> float:
        return 3.0

    def cash(self) -> float:
        return 10.0

    def equity(self) -> float:
        return 12.5

    def log(self, msg: str, fields: dict[str, Any]) -> None:
        self.calls.append(("log", msg, fields))


def test_strategy_actions_go_through_any_strategy_context() -> None:
    s = Strategy()
    ctx: StrategyContext = Recorder()
    s._context = ctx
    assert s.order("A", 5) == 7
    s.order("B", -1, type="limit", limit=9.5, tif="day")
    assert s.cancel(7) is True
    s.log("hello", x=1)
    assert (s.position("A"), s.cash, s.equity) == (3.0, 10.0, 12.5)
    assert s.bracket("A", 2, take_profit=11.0, stop_loss=9.0) == (1, 2, 3)
    assert s.modify(7, limit=9.75) is True
    s.order("C", 1, type="limit", limit=5.0, tif="gtd", expire_ts=99, oco="g", reduce_only=True)
    assert ctx.calls == [  # type: ignore[attr-defined]
        ("order", "A", 5, "market", None, None, "gtc", None, None, False),
        ("order", "B", -1, "limit", 9.5, None, "day", None, None, False),
        ("cancel", 7), ("log", "hello", {"x": 1}),
        ("bracket", "A", 2, None, 11.0, 9.0, "gtc"), ("modify", 7, None, 9.75, None),
        ("order", "C", 1, "limit", 5.0, None, "gtd", 99, "g", True)]


def test_an_unattached_strategy_says_so() -> None:
    with pytest.raises(StrategyError, match="not attached to an engine"):
        Strategy().order("A", 1)
    with pytest.raises(StrategyError, match="not attached to an engine"):
        _ = Strategy().cash


def test_the_engine_is_a_strategy_context_with_the_same_signatures() -> None:
    methods = {n: m for n, m in vars(StrategyContext).items()
               if inspect.isfunction(m) and not n.startswith("_")}
    assert set(methods) == {"order", "cancel", "position", "cash", "equity", "log", "bracket",
                            "modify", "orders"}
    for name, member in methods.items():
        want = list(inspect.signature(member).parameters)
        assert list(inspect.signature(getattr(Engine, name)).parameters) == want, name


def test_engine_fill_has_exactly_the_fill_record_fields() -> None:
    record = {n for n, v in vars(FillRecord).items() if isinstance(v, property)}
    assert record == {f.name for f in dataclasses.fields(Fill)}


def test_on_fill_receives_the_engine_fill() -> None:
    class Once(Strategy):
        def on_start(self) -> None:
            self.fills: list[FillRecord] = []
            self.order("A", 2)

        def on_fill(self, fill: FillRecord) -> None:
            self.fills.append(fill)

    s = Once()
    run(s, ["A"], [chunk([(1, 0, 10.0), (2, 0, 11.0)])], RunConfig(slippage_bps=10))
    assert s.fills == [Fill(1, 1, "A", 2.0, 10.0 * 1.001, 0.0, "taker")]


@pytest.mark.parametrize("bps", [0.0, 0.5, 1.0, 3.0, 17.25, 100.0])
def test_slippage_is_one_formula_with_identical_bits_for_scalars_and_arrays(bps: float) -> None:
    rng = np.random.default_rng(int(bps * 100))
    marks = np.round(rng.uniform(0.01, 5000.0, 2000), 2)
    sides = np.where(rng.random(2000) < 0.5, 1.0, -1.0)
    arr = slipped(marks, sides, bps)
    slip = bps / 10_000.0
    for m, side, a in zip(marks.tolist(), sides.tolist(), arr.tolist()):
        scalar = slipped(m, side, bps)
        assert scalar == a
        assert scalar == (m * (1.0 + slip) if side > 0 else m * (1.0 - slip))  # the rule's text


def test_declared_quote_columns_are_set_on_the_tick_row_by_row() -> None:
    class Quotes(Strategy):
        columns = ("price", "size", "bid", "ask")

        def on_start(self) -> None:
            self.seen: list[tuple[int, str, float, float | None, float | None]] = []

        def on_tick(self, tick) -> None:
            self.seen.append((tick.ts, tick.symbol, tick.price, tick.bid, tick.ask))

    n = 50
    stream = pa.record_batch({
        "ts": pa.array(range(n), pa.int64()), "sym": pa.array([k % 2 for k in range(n)], pa.int32()),
        "price": pa.array([100.0 + k for k in range(n)]), "size": pa.array([1.0] * n),
        "bid": pa.array([99.0 + k for k in range(n)]), "ask": pa.array([101.0 + k for k in range(n)]),
    })
    s = Quotes()
    run(s, ["A", "B"], split(stream, 7))
    assert s.seen == [(k, "AB"[k % 2], 100.0 + k, 99.0 + k, 101.0 + k) for k in range(n)]


def test_quote_columns_are_left_alone_when_not_declared() -> None:
    class Plain(Strategy):
        def on_start(self) -> None:
            self.bids: list[float | None] = []

        def on_tick(self, tick) -> None:
            self.bids.append(tick.bid)

    stream = chunk([(0, 0, 1.0), (1, 0, 2.0)]).append_column("bid", pa.array([0.5, 1.5]))
    s = Plain()
    run(s, ["A"], [stream])
    assert s.bids == [None, None]
