"""Hand-computed fills and PnL for every order type and time-in-force (docs/semantics.md)."""

from __future__ import annotations

import math

import pytest
from enginekit import DAY, chunk, run

from tickreplay import Strategy
from tickreplay.engine.config import Commission, RunConfig
from tickreplay.strategy.api import StrategyError


class Script(Strategy):
    """Submits the scripted orders at the given tick numbers (0-based) and records callbacks."""

    def __init__(self, script: dict[int, list[dict]], cancels: dict[int, list[int]] | None = None):
        super().__init__()
        self.script = script
        self.cancels = cancels or {}
        self.n = 0
        self.ids: list[int] = []
        self.fills: list = []
        self.cancel_results: list[bool] = []

    def on_tick(self, tick) -> None:
        for spec in self.script.get(self.n, []):
            self.ids.append(self.order(**spec))
        for k in self.cancels.get(self.n, []):
            self.cancel_results.append(self.cancel(self.ids[k]))
        self.n += 1

    def on_fill(self, fill) -> None:
        self.fills.append(fill)


def trades(result) -> list[tuple]:
    t = result.trades.to_pydict()
    return list(zip(t["order_id"], t["ts"], t["qty"], t["price"], t["fee"]))


def test_market_order_waits_for_latency_and_pays_slippage_and_commission() -> None:
    s = Script({0: [{"symbol": "A", "qty": 50}]})
    cfg = RunConfig(latency_ns=10, slippage_bps=10,
                    commission=Commission(per_share=0.01, minimum=1.0))
    r = run(s, ["A"], [chunk([(0, 0, 100.0), (5, 0, 101.0), (10, 0, 102.0), (20, 0, 103.0)])], cfg)
    assert trades(r) == [(1, 10, 50.0, 102.0 * 1.001, 1.0)]  # 0.01 x 50 = 0.5 < minimum 1
    assert r.trades["cash"][0].as_py() == 1_000_000.0 - 50 * 102.0 * 1.001 - 1.0
    assert r.equity["equity"][0].as_py() == pytest.approx(1_000_000 - 50 * 102.102 - 1 + 50 * 103)


def test_market_order_never_fills_on_its_own_tick_even_at_equal_timestamp() -> None:
    s = Script({0: [{"symbol": "A", "qty": -10}]})
    r = run(s, ["A"], [chunk([(7, 0, 50.0), (7, 0, 51.0), (8, 0, 52.0)])])
    assert trades(r) == [(1, 7, -10.0, 51.0, 0.0)]


def test_order_fills_only_on_its_own_symbol() -> None:
    s = Script({0: [{"symbol": "B", "qty": 1}]})
    r = run(s, ["A", "B"], [chunk([(1, 0, 10.0), (2, 0, 11.0), (3, 1, 20.0), (4, 0, 12.0)])])
    assert trades(r) == [(1, 3, 1.0, 20.0, 0.0)]
    assert r.trades["symbol"][0].as_py() == "B"


def test_limit_buy_fills_at_limit_when_a_trade_prints_at_or_below() -> None:
    s = Script({0: [{"symbol": "A", "qty": 10, "type": "limit", "limit": 99.5}]})
    r = run(s, ["A"], [chunk([(1, 0, 100.0), (2, 0, 99.6), (3, 0, 99.0), (4, 0, 98.0)])],
            RunConfig(slippage_bps=50))
    assert trades(r) == [(1, 3, 10.0, 99.5, 0.0)]  # limit price, no slippage


def test_limit_sell_mirrors_and_short_is_allowed() -> None:
    s = Script({0: [{"symbol": "A", "qty": -10, "type": "limit", "limit": 101.0}]})
    r = run(s, ["A"], [chunk([(1, 0, 100.0), (2, 0, 100.9), (3, 0, 101.0)])])
    assert trades(r) == [(1, 3, -10.0, 101.0, 0.0)]
    assert r.trades["position"][0].as_py() == -10.0


def test_stop_buy_triggers_through_the_stop_and_fills_as_market() -> None:
    s = Script({0: [{"symbol": "A", "qty": 5, "type": "stop", "stop": 102.0}]})
    r = run(s, ["A"], [chunk([(1, 0, 100.0), (2, 0, 101.9), (3, 0, 102.5), (4, 0, 103.0)])],
            RunConfig(slippage_bps=20))
    assert trades(r) == [(1, 3, 5.0, 102.5 * 1.002, 0.0)]


def test_stop_sell_triggers_at_or_below() -> None:
    s = Script({0: [{"symbol": "A", "qty": -5, "type": "stop", "stop": 99.0}]})
    r = run(s, ["A"], [chunk([(1, 0, 100.0), (2, 0, 99.0), (3, 0, 98.0)])])
    assert trades(r) == [(1, 2, -5.0, 99.0, 0.0)]


def test_ioc_cancels_what_did_not_fill_on_the_next_eligible_tick() -> None:
    s = Script({0: [{"symbol": "A", "qty": 1, "type": "limit", "limit": 99.0, "tif": "ioc"}]})
    cfg = RunConfig(latency_ns=5)
    # tick at ts=3 is not yet eligible; ts=6 is the first eligible and does not cross -> cancelled
    r = run(s, ["A"], [chunk([(0, 0, 100.0), (3, 0, 98.0), (6, 0, 100.0), (9, 0, 90.0)])], cfg)
    assert trades(r) == []
    assert r.open_orders == 0


def test_ioc_fills_when_marketable_on_the_next_eligible_tick() -> None:
    s = Script({0: [{"symbol": "A", "qty": 1, "type": "limit", "limit": 99.0, "tif": "ioc"}]})
    r = run(s, ["A"], [chunk([(0, 0, 100.0), (1, 0, 98.0)])])
    assert trades(r) == [(1, 1, 1.0, 99.0, 0.0)]


def test_day_order_expires_at_session_end_and_gtc_does_not() -> None:
    s = Script({0: [{"symbol": "A", "qty": 1, "type": "limit", "limit": 90.0, "tif": "day"},
                    {"symbol": "A", "qty": 2, "type": "limit", "limit": 90.0, "tif": "gtc"}]})
    r = run(s, ["A"], [chunk([(0, 0, 100.0), (DAY - 1, 0, 95.0), (DAY + 1, 0, 89.0)])])
    assert trades(r) == [(2, DAY + 1, 2.0, 90.0, 0.0)]


def test_cancel_removes_an_open_order_and_reports_filled_ones() -> None:
    s = Script({0: [{"symbol": "A", "qty": 1, "type": "limit", "limit": 50.0},
                    {"symbol": "A", "qty": 1}]},
               cancels={1: [0], 2: [1]})
    r = run(s, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.0), (2, 0, 40.0)])])
    assert trades(r) == [(2, 1, 1.0, 100.0, 0.0)]
    assert s.cancel_results == [True, False]


def test_average_cost_realized_pnl_and_position_flip() -> None:
    s = Script({0: [{"symbol": "A", "qty": 100}], 1: [{"symbol": "A", "qty": -150}],
                2: [{"symbol": "A", "qty": 50}]})
    r = run(s, ["A"], [chunk([(0, 0, 9.0), (1, 0, 10.0), (2, 0, 12.0), (3, 0, 11.0)])],
            RunConfig(commission=Commission(bps=10)))
    t = r.trades.to_pydict()
    assert t["price"] == [10.0, 12.0, 11.0]
    assert t["qty"] == [100.0, -150.0, 50.0]
    # long 100 @10 -> sell 150 @12 realizes 100 x 2 = 200, opens short 50 @12 -> buy 50 @11: +50
    assert t["realized_pnl"] == [0.0, 200.0, 50.0]
    assert t["is_close"] == [False, True, True]
    assert t["position"] == [100.0, -50.0, 0.0]
    assert t["fee"] == pytest.approx([1.0, 1.8, 0.55])
    final_cash = 1_000_000 - 1000 + 1800 - 550 - (1.0 + 1.8 + 0.55)
    assert r.equity["equity"][0].as_py() == pytest.approx(final_cash)
    assert r.equity["realized_pnl"][0].as_py() == 250.0
    assert s.fills[1].qty == -150.0 and s.fills[1].price == 12.0


def test_daily_equity_marks_each_day_at_its_last_trade() -> None:
    s = Script({0: [{"symbol": "A", "qty": 10}]})
    r = run(s, ["A"], [chunk([(0, 0, 10.0), (1, 0, 10.0), (5, 0, 11.0),
                              (DAY + 2, 0, 13.0), (DAY + 3, 0, 12.0)])])
    eq = r.equity.to_pydict()
    assert eq["date"] == ["1970-01-01", "1970-01-02"]
    assert eq["equity"] == [1_000_000 - 100 + 110, 1_000_000 - 100 + 120]
    assert r.exposure_days == 2


@pytest.mark.parametrize("bad, msg", [
    ({"symbol": "A", "qty": 0}, "non-zero"),
    ({"symbol": "A", "qty": math.nan}, "finite"),
    ({"symbol": "A", "qty": 1, "type": "twap"}, "order type"),
    ({"symbol": "A", "qty": 1, "tif": "gtx"}, "tif"),
])
def test_malformed_orders_fail_the_strategy_with_a_clear_message(bad: dict, msg: str) -> None:
    with pytest.raises(StrategyError, match=msg):
        run(Script({0: [bad]}), ["A"], [chunk([(0, 0, 1.0), (1, 0, 1.0)])])


@pytest.mark.parametrize("bad, reason", [
    ({"symbol": "ZZZ", "qty": 1}, "unknown symbol 'ZZZ'"),
    ({"symbol": "A", "qty": 1, "type": "limit"}, "invalid price: a limit order needs a positive"),
    ({"symbol": "A", "qty": 1, "type": "stop"}, "invalid price: a stop order needs a positive stop"),
    ({"symbol": "A", "qty": 1, "type": "stop_limit", "stop": 1.0}, "invalid price"),
    ({"symbol": "A", "qty": 1, "type": "limit", "limit": -1.0}, "invalid price"),
    ({"symbol": "A", "qty": 1, "tif": "gtd"}, "invalid expiry"),
    ({"symbol": "A", "qty": -1, "reduce_only": True}, "reduce-only violation: position 0"),
])
def test_orders_a_venue_would_refuse_are_rejected_with_the_reason(bad: dict,
                                                                   reason: str) -> None:
    """Rejected, not fatal: the order gets an id, on_order hears why, the logs record it,
    nothing fills."""
    class Listener(Script):
        def on_start(self) -> None:
            self.events: list = []

        def on_order(self, event) -> None:
            self.events.append(event)

    s = Listener({0: [bad]})
    r = run(s, ["A"], [chunk([(0, 0, 1.0), (1, 0, 1.0)])])
    assert r.trades.num_rows == 0 and r.open_orders == 0
    ((ev),) = s.events
    assert (ev.order_id, ev.status) == (s.ids[0], "rejected") and reason in ev.reason
    (log,) = [x for x in r.logs if x["msg"] == "order rejected"]
    assert log["order_id"] == s.ids[0] and reason in log["reason"]
