"""Hand-computed tests of the fill models, partial fills and order types (docs/semantics.md,
"Fill models", "Size", "Order types", "Order lifecycle"): one test per rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from enginekit import DAY, chunk, events, run

from tickreplay import Strategy
from tickreplay.engine.config import RunConfig
from tickreplay.strategy.api import StrategyError

QUOTE = RunConfig(fill_model="quote")
Act = Callable[["Bot"], object]


class Bot(Strategy):
    """Runs the scripted actions at the given event numbers (trades and quotes counted
    together, 0-based) and records fills and order events."""

    events = ("trades", "quotes")

    def __init__(self, script: dict[int, list[Act]],
                 kinds: tuple[str, ...] = ("trades", "quotes")) -> None:
        super().__init__()
        self.events = kinds  # type: ignore[misc]
        self.script = script
        self.n = 0
        self.ids: list[int] = []
        self.fills: list[tuple] = []
        self.seen: list[tuple] = []
        self.books: list[list] = []

    def _step(self) -> None:
        for act in self.script.get(self.n, []):
            act(self)
        self.n += 1

    def on_tick(self, tick) -> None:
        self._step()

    def on_quote(self, quote) -> None:
        self._step()

    def on_fill(self, fill) -> None:
        self.fills.append((fill.order_id, fill.ts, fill.qty, fill.price, fill.liquidity))

    def on_order(self, event) -> None:
        self.seen.append((event.order_id, event.status, event.reason))


def TBot(script: dict[int, list[Act]]) -> Bot:
    return Bot(script, ("trades",))


def order(*args, **kw) -> Act:
    return lambda b: b.ids.append(b.order(*args, **kw))


def statuses(bot: Bot, oid: int) -> list[str]:
    return [s for i, s, _ in bot.seen if i == oid]


# ------------------------------------------------------------------ quote model
def test_quote_model_market_buy_takes_the_ask_up_to_its_size_then_the_next_quotes() -> None:
    b = Bot({0: [order("A", 50)]})
    r = run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0, 10, 30),
                               ("q", 1, 0, 99.5, 100.5, 10, 15),
                               ("q", 2, 0, 99.0, 101.0, 10, 100)])], QUOTE)
    assert b.fills == [(1, 1, 15.0, 100.5, "taker"), (1, 2, 35.0, 101.0, "taker")]
    assert statuses(b, 1) == ["accepted", "partially_filled", "filled"]
    assert r.trades["liquidity"].to_pylist() == ["taker", "taker"]
    assert r.trades["position"].to_pylist() == [15.0, 50.0]
    assert r.trades["cash"].to_pylist() == [1e6 - 15 * 100.5, 1e6 - 15 * 100.5 - 35 * 101.0]


def test_quote_model_market_sell_takes_the_bid_with_slippage() -> None:
    b = Bot({0: [order("A", -5)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 98.0, 99.0)])],
        RunConfig(fill_model="quote", slippage_bps=10))
    assert b.fills == [(1, 1, -5.0, 98.0 * (1 - 0.001), "taker")]


def test_quote_model_market_orders_do_not_fill_on_trades() -> None:
    b = Bot({0: [order("A", 5)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("t", 1, 0, 99.5, 100),
                           ("t", 2, 0, 99.6, 100), ("q", 3, 0, 99.1, 100.1)])], QUOTE)
    assert b.fills == [(1, 3, 5.0, 100.1, "taker")]


def test_quote_model_limit_marketable_on_arrival_takes_the_touch_resting_fills_at_limit() -> None:
    b = Bot({0: [order("A", 5, type="limit", limit=101.0),
                 order("A", 5, type="limit", limit=99.0)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.5, 100.5),
                           ("q", 2, 0, 99.0, 99.9), ("q", 3, 0, 98.5, 98.9)])], QUOTE)
    # Order 1 arrives at quote 1 with the ask (100.5) under its limit: takes the ask.
    # Order 2 rests at 99 (asks 100.5, 99.9 are above it) until the ask comes to 98.9.
    assert b.fills == [(1, 1, 5.0, 100.5, "taker"), (2, 3, 5.0, 99.0, "maker")]


def test_quote_model_a_resting_limit_fills_when_a_trade_prints_through_it() -> None:
    b = Bot({0: [order("A", 20, type="limit", limit=99.0)]})
    run(b, ["A"], [events([("q", 0, 0, 98.0, 100.0), ("q", 1, 0, 98.5, 99.5),
                           ("t", 2, 0, 99.0, 50),   # at the limit: not through it
                           ("t", 3, 0, 98.9, 8),    # through it: up to the trade's size
                           ("t", 4, 0, 98.8, 50)])], QUOTE)
    assert b.fills == [(1, 3, 8.0, 99.0, "maker"), (1, 4, 12.0, 99.0, "maker")]


def test_quote_without_sizes_is_unlimited() -> None:
    b = Bot({0: [order("A", 1e9)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0)])], QUOTE)
    assert b.fills == [(1, 1, 1e9, 100.0, "taker")]


def test_orders_on_one_event_share_its_size_in_queue_order() -> None:
    b = Bot({0: [order("A", 20), order("A", 20)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0, 1, 30), ("q", 1, 0, 99.0, 100.0, 1, 30),
                           ("q", 2, 0, 99.0, 100.5, 1, 30)])], QUOTE)
    assert b.fills == [(1, 1, 20.0, 100.0, "taker"), (2, 1, 10.0, 100.0, "taker"),
                       (2, 2, 10.0, 100.5, "taker")]


def test_a_quotes_only_run_needs_the_quote_model() -> None:
    class FX(Strategy):
        events = ("quotes",)

    with pytest.raises(StrategyError, match="fill_model='quote'"):
        run(FX(), ["A"], [events([("q", 0, 0, 1.0, 1.1)])])
    b = Bot({0: [order("A", 3)]}, ("quotes",))
    run(b, ["A"], [events([("q", 0, 0, 1.0, 1.1), ("q", 1, 0, 1.05, 1.15)])], QUOTE)
    assert b.fills == [(1, 1, 3.0, 1.15, "taker")]


# ------------------------------------------------------------------ size
def test_max_participation_caps_each_trade_under_the_trade_model() -> None:
    b = Bot({0: [order("A", 100)]})
    run(b, ["A"], [events([("t", 0, 0, 10.0, 40), ("t", 1, 0, 10.1, 50),
                           ("t", 2, 0, 10.2, 200)])], RunConfig(max_participation=0.5))
    assert b.fills == [(1, 1, 25.0, 10.1, "taker"), (1, 2, 75.0, 10.2, "taker")]


def test_max_participation_caps_the_touch_under_the_quote_model() -> None:
    b = Bot({0: [order("A", -10)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0, 8, 8), ("q", 1, 0, 99.0, 100.0, 8, 8),
                           ("q", 2, 0, 98.0, 99.0, 40, 8)])],
        RunConfig(fill_model="quote", max_participation=0.25))
    assert b.fills == [(1, 1, -2.0, 99.0, "taker"), (1, 2, -8.0, 98.0, "taker")]


# ------------------------------------------------------------------ order types (trade model)
def test_stop_limit_triggers_then_fills_as_a_limit() -> None:
    b = TBot({0: [order("A", 1, type="stop_limit", stop=101.0, limit=101.5),
                 order("A", 1, type="stop_limit", stop=101.0, limit=101.5)]})
    run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.5), (2, 0, 101.2)])])
    assert b.fills == [(1, 2, 1.0, 101.5, "maker"), (2, 2, 1.0, 101.5, "maker")]
    b = TBot({0: [order("A", 1, type="stop_limit", stop=101.0, limit=101.5)]})
    run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 102.0), (2, 0, 101.8), (3, 0, 101.0)])])
    assert b.fills == [(1, 3, 1.0, 101.5, "maker")]  # triggered at 102, fills when <= 101.5


def test_fok_fills_in_full_on_its_first_eligible_event_or_is_cancelled() -> None:
    b = Bot({0: [order("A", 50, tif="fok")]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0, 5, 30),
                           ("q", 2, 0, 99.0, 100.0, 5, 500)])], QUOTE)
    assert b.fills == [] and b.seen[-1][1:] == ("cancelled", "fok: only 30 of 50 available")
    b = Bot({0: [order("A", 50, tif="fok")]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0, 5, 60)])], QUOTE)
    assert b.fills == [(1, 1, 50.0, 100.0, "taker")]


def test_ioc_takes_what_its_first_eligible_event_has_and_cancels_the_rest() -> None:
    b = Bot({0: [order("A", 50, tif="ioc")]})
    r = run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0, 5, 30),
                               ("q", 2, 0, 99.0, 100.0, 5, 500)])], QUOTE)
    assert b.fills == [(1, 1, 30.0, 100.0, "taker")] and r.open_orders == 0
    assert statuses(b, 1) == ["accepted", "partially_filled", "cancelled"]


def test_gtd_expires_at_its_expire_ts() -> None:
    b = TBot({0: [order("A", 1, type="limit", limit=90.0, tif="gtd", expire_ts=5)]})
    r = run(b, ["A"], [chunk([(0, 0, 100.0), (3, 0, 95.0), (5, 0, 80.0), (6, 0, 80.0)])])
    assert b.fills == [] and r.open_orders == 0
    assert statuses(b, 1) == ["accepted", "expired"]


def test_oco_the_first_fill_cancels_the_rest_of_the_group() -> None:
    b = TBot({0: [order("A", -1, type="limit", limit=105.0, oco="exit"),
                 order("A", -1, type="stop", stop=95.0, oco="exit")]})
    r = run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 106.0), (2, 0, 90.0)])])
    assert b.fills == [(1, 1, -1.0, 105.0, "maker")] and r.open_orders == 0
    assert b.seen[-1] == (2, "cancelled", "oco: order 1 of group 'exit' filled")


def test_bracket_children_start_with_the_entry_fill_and_cancel_each_other() -> None:
    bracket: Act = lambda b: b.ids.extend(
        b.bracket("A", 10, take_profit=105.0, stop_loss=95.0))
    b = TBot({0: [bracket]})
    r = run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 106.0), (2, 0, 107.0), (3, 0, 90.0)])])
    # Entry fills at 106 (market); the take-profit may fill from the next tick (107 >= 105).
    assert b.fills == [(1, 1, 10.0, 106.0, "taker"), (2, 2, -10.0, 105.0, "maker")]
    assert r.open_orders == 0 and statuses(b, 3)[-1] == "cancelled"
    b = TBot({0: [bracket]})
    run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.0), (2, 0, 94.0), (3, 0, 110.0)])])
    assert b.fills == [(1, 1, 10.0, 100.0, "taker"), (3, 2, -10.0, 94.0, "taker")]


def test_bracket_children_follow_partial_fills() -> None:
    b = TBot({0: [lambda b: b.ids.extend(b.bracket("A", 10, entry=100.0, take_profit=105.0,
                                                  stop_loss=95.0))]})
    r = run(b, ["A"], [chunk([(0, 0, 101.0, 100), (1, 0, 100.0, 8), (2, 0, 106.0, 6),
                              (3, 0, 99.0, 100), (4, 0, 94.0, 100)])],
            RunConfig(max_participation=0.5))
    # entry: 4 at t1 (half of 8); take-profit 3 of those 4 at t2; entry's last 6 at t3;
    # stop-loss then covers 4 + 6 - 3 = 7, filled at t4 (half of 100 is enough).
    assert b.fills == [(1, 1, 4.0, 100.0, "maker"), (2, 2, -3.0, 105.0, "maker"),
                       (1, 3, 6.0, 100.0, "maker"), (3, 4, -7.0, 94.0, "taker")]
    assert r.trades["position"].to_pylist()[-1] == 0.0 and r.open_orders == 0


def test_modify_is_a_cancel_replace_with_the_order_latency() -> None:
    cfg = RunConfig(latency_ns=10)
    script = {0: [order("A", 1, type="limit", limit=90.0)],
              2: [lambda b: b.modify(b.ids[0], limit=100.0)]}
    b = TBot(script)  # the old version is off at once; the new one live from ts 20 + 10
    run(b, ["A"], [chunk([(0, 0, 100.0), (15, 0, 99.0), (20, 0, 99.0), (25, 0, 85.0),
                          (30, 0, 99.0)])], cfg)
    assert b.fills == [(1, 30, 1.0, 100.0, "maker")]
    assert statuses(b, 1) == ["accepted", "modified", "filled"]
    b = TBot(script)  # with cancel latency the old version stays live until ts 30
    run(b, ["A"], [chunk([(0, 0, 100.0), (15, 0, 99.0), (20, 0, 99.0), (25, 0, 85.0),
                          (30, 0, 99.0)])], RunConfig(latency_ns=10, cancel_latency=True))
    assert b.fills == [(1, 25, 1.0, 90.0, "maker")]


def test_cancel_is_immediate_unless_cancels_take_the_latency() -> None:
    script = {0: [order("A", 1, type="limit", limit=90.0)],
              1: [lambda b: b.cancel(b.ids[0])]}
    rows = [(0, 0, 100.0), (10, 0, 100.0), (15, 0, 85.0), (30, 0, 85.0)]
    b = TBot(script)
    run(b, ["A"], [chunk(rows)], RunConfig(latency_ns=10))
    assert b.fills == [] and statuses(b, 1) == ["accepted", "cancelled"]
    b = TBot(script)
    run(b, ["A"], [chunk(rows)], RunConfig(latency_ns=10, cancel_latency=True))
    assert b.fills == [(1, 15, 1.0, 90.0, "maker")]  # filled before the cancel arrived


def test_reduce_only_never_flips_the_position() -> None:
    b = TBot({0: [order("A", 10)], 2: [order("A", -15, reduce_only=True)]})
    r = run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.0), (2, 0, 101.0), (3, 0, 102.0)])])
    assert b.fills == [(1, 1, 10.0, 100.0, "taker"), (2, 3, -10.0, 102.0, "taker")]
    assert r.trades["position"].to_pylist()[-1] == 0.0 and r.open_orders == 0


def test_orders_lists_open_orders_with_their_status() -> None:
    snap: Act = lambda b: b.books.append([(o.order_id, o.status, o.filled, o.remaining)
                                          for o in b.orders()])
    b = Bot({0: [order("A", 50), snap], 1: [snap], 2: [snap]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0, 5, 20),
                           ("q", 2, 0, 99.0, 100.0, 5, 100)])], QUOTE)
    assert b.books == [[(1, "submitted", 0.0, 50.0)], [(1, "partially_filled", 20.0, 30.0)],
                       []]


def test_marks_follow_the_latest_event_a_quote_marks_at_its_mid() -> None:
    b = Bot({0: [order("A", 2)]})
    r = run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 101.0),
                               ("q", 2, 0, 103.0, 104.0)])], QUOTE)
    assert r.equity["equity"].to_pylist() == [1e6 - 2 * 101.0 + 2 * 103.5]


# ------------------------------------------------------------------ review regressions
def test_an_order_sent_from_a_day_roll_callback_waits_for_a_later_event() -> None:
    class Roller(Bot):
        def on_order(self, event) -> None:
            super().on_order(event)
            if event.status == "expired":
                self.ids.append(self.order("A", 5))

    b = Roller({0: [order("A", 1, type="limit", limit=50.0, tif="day")]}, ("trades",))
    r = run(b, ["A"], [chunk([(10, 0, 100.0), (DAY + 5, 0, 101.0), (DAY + 9, 0, 102.0)])],
            RunConfig(latency_ns=1))
    assert b.fills == [(2, DAY + 9, 5.0, 102.0, "taker")]
    assert r.trades["submit_ts"].to_pylist() == [DAY + 5]  # stamped with the new day's event


class DayLogger(Strategy):
    """Two DAY orders (B first, then A); each expiry is logged and answered with an order."""

    def on_start(self) -> None:
        self.n = 0

    def on_tick(self, tick) -> None:
        if self.n < 2:
            self.order(("B", "A")[self.n], 1, type="limit", limit=1.0, tif="day")
        self.n += 1

    def on_order(self, event) -> None:
        if event.status == "expired":
            self.log("expired", order=event.order_id)
            self.order(event.symbol, 1)


def test_lifecycle_callbacks_keep_their_order_across_a_resume() -> None:
    from tickreplay.engine.core import Engine

    rows = chunk([(1, 1, 100.0), (2, 0, 100.0), (DAY + 1, 0, 100.0), (DAY + 2, 1, 100.0),
                  (DAY + 3, 0, 100.0), (DAY + 4, 1, 100.0)])
    full = run(DayLogger(), ["A", "B"], [rows])
    eng = Engine(DayLogger(), ("A", "B"), RunConfig())
    eng.start()
    eng.feed(rows, limit=2)
    resumed = Engine.restore(eng.checkpoint(), DayLogger())
    resumed.feed(rows.slice(2))
    again = resumed.finish()
    assert [x["order"] for x in full.logs] == [1, 2]
    assert again.logs == full.logs and again.trades.equals(full.trades)


def test_a_filled_order_cannot_be_cancelled_from_on_fill() -> None:
    class Canceller(Bot):
        def on_fill(self, fill) -> None:
            super().on_fill(fill)
            self.results = [*getattr(self, "results", []), self.cancel(fill.order_id)]

    b = Canceller({0: [order("A", 5)]}, ("trades",))
    run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.0)])])
    assert b.results == [False] and statuses(b, 1) == ["accepted", "filled"]


def test_modifying_a_bracket_childs_price_keeps_it_sized_by_the_entry() -> None:
    def setup(b: Bot) -> None:
        b.ids.extend(b.bracket("A", 10, take_profit=110.0, stop_loss=95.0))
        b.modify(b.ids[2], stop=96.0)

    b = TBot({0: [setup]})
    r = run(b, ["A"], [chunk([(0, 0, 100.0), (1, 0, 100.0), (2, 0, 99.0), (3, 0, 95.5)])])
    assert b.fills == [(1, 1, 10.0, 100.0, "taker"), (3, 3, -10.0, 95.5, "taker")]
    assert r.trades["position"].to_pylist()[-1] == 0.0


def test_a_bracket_child_that_caught_up_covers_the_entrys_later_fills() -> None:
    b = TBot({0: [lambda b: b.ids.extend(b.bracket("A", 10, entry=100.0, take_profit=101.0,
                                                  stop_loss=95.0))]})
    r = run(b, ["A"], [chunk([(0, 0, 100.5, 100), (1, 0, 100.0, 8), (2, 0, 101.0, 100),
                              (3, 0, 99.0, 12), (4, 0, 94.0, 100)])],
            RunConfig(max_participation=0.5))
    # entry 4; take-profit 4 (caught up, stays on the book); entry 6 more; the stop covers 6.
    assert b.fills == [(1, 1, 4.0, 100.0, "maker"), (2, 2, -4.0, 101.0, "maker"),
                       (1, 3, 6.0, 100.0, "maker"), (3, 4, -6.0, 94.0, "taker")]
    assert r.trades["position"].to_pylist()[-1] == 0.0 and r.open_orders == 0


def test_a_replaced_order_queues_behind_the_others_on_the_event_it_applies() -> None:
    b = Bot({0: [order("A", -5, type="limit", limit=99.0), order("A", -5, type="limit",
                                                                 limit=99.0)],
             2: [lambda b: b.modify(b.ids[0], limit=98.5)]})
    run(b, ["A"], [events([("q", 0, 0, 98.0, 99.5, 10, 10), ("q", 1, 0, 98.0, 99.5, 10, 10),
                           ("q", 2, 0, 98.0, 99.5, 10, 10), ("q", 3, 0, 99.0, 99.5, 5, 10)])],
        QUOTE)
    assert b.fills == [(2, 3, -5.0, 99.0, "maker")]


def test_a_stop_limit_triggered_later_or_a_limit_modified_across_takes_the_touch() -> None:
    b = Bot({0: [order("A", 1, type="stop_limit", stop=101.0, limit=105.0)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.5, 100.5),
                           ("q", 2, 0, 100.5, 101.5)])], QUOTE)
    assert b.fills == [(1, 2, 1.0, 101.5, "taker")]
    b = Bot({0: [order("A", 1, type="limit", limit=95.0)],
             1: [lambda b: b.modify(b.ids[0], limit=105.0)]})
    run(b, ["A"], [events([("q", 0, 0, 99.0, 100.0), ("q", 1, 0, 99.0, 100.0),
                           ("q", 2, 0, 99.0, 100.0)])], QUOTE)
    assert b.fills == [(1, 2, 1.0, 100.0, "taker")]


def test_an_order_sent_when_a_cancel_arrives_waits_for_a_later_event() -> None:
    class Replacer(Bot):
        def on_order(self, event) -> None:
            super().on_order(event)
            if event.status == "cancelled":
                self.ids.append(self.order("A", 2))

    b = Replacer({0: [order("A", 1, type="limit", limit=50.0)],
                  1: [lambda b: b.cancel(b.ids[0])]}, ("trades",))
    run(b, ["A"], [chunk([(0, 0, 100.0), (5, 0, 100.0), (15, 0, 100.0), (20, 0, 101.0)])],
        RunConfig(latency_ns=0, cancel_latency=True))
    assert b.fills == [(2, 20, 2.0, 101.0, "taker")]  # not on ts 15, where the cancel arrived
