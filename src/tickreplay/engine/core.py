"""The simulation core: pure, deterministic, checkpointable. No I/O, no clock, no threads.

The engine consumes merged tick chunks (``pa.RecordBatch`` with ``ts`` int64, ``sym`` int32 =
index into the sorted symbol list, then ``price``, ``size`` and any declared extra columns) in
(ts, symbol, row) order, and drives one strategy through either path:

* per-tick (this module): ``on_tick`` for every row; orders through ``Strategy.order``, matched
  here against each later tick of their symbol;
* vectorised (``vector.py``): ``on_batch`` for each symbol's rows of a chunk returns target
  positions; the engine sends market orders for the differences, under the same fill rules, and
  applies every fill through the same code as the per-tick path, in the same (ts, symbol, row,
  order id) order.

Fill rules are documented in ``docs/semantics.md``; market fills are priced by
``orders.slipped``, the trade and equity records are ``trades.py``, the checkpoint envelope is
``checkpoint.py``. The engine is the strategy's ``StrategyContext``: ``Strategy.order`` and
friends call the methods under "strategy services" below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tickreplay.engine import checkpoint as ckpt
from tickreplay.engine.config import RunConfig
from tickreplay.engine.orders import (
    ACCEPTED,
    CANCELLED,
    DAY,
    DAY_NS,
    EXPIRED,
    FILLED,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    LIQUIDITY,
    MAKER,
    MARKET,
    MODIFIED,
    ORDER_TYPES,
    PARTIALLY_FILLED,
    REJECTED,
    STOP,
    STOP_LIMIT,
    TAKER,
    TIFS,
    Fill,
    Order,
    OrderEvent,
    OrderView,
    slipped,
)
from tickreplay.engine.portfolio import Portfolio
from tickreplay.engine.trades import EquityCurve, TradeLog
from tickreplay.engine.vector import VectorPath
from tickreplay.strategy.api import Quote, Strategy, StrategyError, Tick

# The version of these semantics: part of every result's hashed inputs and checked by restore, so
# a rule change must bump it (results and checkpoints of another version are not comparable).
ENGINE_VERSION = "2.0"  # 2.0: quotes, fill models, partial fills, order lifecycle
EVENT_KINDS = ("trades", "quotes")
_LIQ_CODE = {name: i for i, name in enumerate(LIQUIDITY)}
QUOTE, TRADE = 0, 1  # the ``kind`` column of an event stream (quotes sort first at equal ts)
# What _live says about an order on an event: not tryable, just arrived, resting.
_SKIP, _ARRIVED, _RESTING = 0, 1, 2
_EXTRA_COLUMNS = ("bid", "ask", "bid_size", "ask_size", "exchange", "conditions")


@dataclass
class EngineResult:
    """What a finished run produced (pure data; ``results`` turns it into files)."""

    trades: pa.Table
    equity: pa.Table
    logs: list[dict[str, Any]]
    ticks: int
    exposure_days: int
    open_orders: int
    extra: dict[str, Any] = field(default_factory=dict)


def data_kinds(events: Sequence[str], fill_model: str) -> tuple[str, ...]:
    """What a run's data stream must carry: the strategy's event kinds, and quotes to fill
    against under the quote model (in ``EVENT_KINDS`` order)."""
    return tuple(k for k in EVENT_KINDS
                 if k in events or (k == "quotes" and fill_model == "quote"))


class Engine:
    """One backtest's state machine: ``start()``, ``feed(chunk)`` repeatedly, ``finish()``."""

    def __init__(self, strategy: Strategy, symbols: Iterable[str], config: RunConfig) -> None:
        self.strategy = strategy
        self.symbols: tuple[str, ...] = tuple(symbols)
        if list(self.symbols) != sorted(set(self.symbols)):
            raise ValueError("symbols must be sorted and unique")
        self.config = config
        self.vectorized = {"auto": strategy.is_vectorized(), "tick": False, "vector": True}[
            config.mode
        ]
        if self.vectorized and not strategy.is_vectorized():
            raise StrategyError(f"{type(strategy).__name__} has no on_batch; cannot run vectorised")
        n = len(self.symbols)
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.portfolio = Portfolio(n, config.initial_cash)
        self._pending: list[list[Order]] = [[] for _ in range(n)]
        self._open: dict[int, Order] = {}
        self._next_id = 1
        self._day: int | None = None
        self._next_day_ns = -1
        self._day_exposed = False
        self.exposure_days = 0
        self.ticks_done = 0
        self.consumed = [0] * n
        self._trades = TradeLog()
        self._equity = EquityCurve()
        self._logs: list[dict[str, Any]] = []
        self._tick = Tick()
        self._started = False
        self._extras = tuple(c for c in strategy.columns if c in _EXTRA_COLUMNS)
        self._has_on_fill = type(strategy).on_fill is not Strategy.on_fill
        self._has_on_order = type(strategy).on_order is not Strategy.on_order
        events = tuple(strategy.events)
        if not events or any(e not in EVENT_KINDS for e in events):
            raise StrategyError(f"{type(strategy).__name__}.events must name some of "
                                f"{EVENT_KINDS}, got {events!r}")
        self._quote_model = config.fill_model == "quote"
        if "trades" not in events and not self._quote_model:
            raise StrategyError("a run without trades fills nothing under the trade fill "
                                "model: use fill_model='quote' (--fill-model quote)")
        self.kinds = data_kinds(events, config.fill_model)
        self._wants = events
        self._quote = Quote()
        self.consumed_quotes = [0] * n
        # entry id -> [take-profit id, stop-loss id, entry filled, tp filled, sl filled]
        self._brackets: dict[int, list[float]] = {}
        self._fresh: set[int] = set()  # bracket children activated during the current event
        self._amends = 0  # open orders with a cancel or modify on its way to the venue
        self._vector = VectorPath(self)
        strategy._context = self
        strategy.rng = np.random.default_rng(config.seed)

    # ------------------------------------------------------------------ strategy services
    # The StrategyContext protocol (tickreplay.strategy.api): what Strategy.order, .cancel,
    # .position, .cash, .equity and .log call.
    def order(self, symbol: str, qty: float, type: str, limit: float | None,
              stop: float | None, tif: str, expire_ts: int | None = None,
              oco: str | None = None, reduce_only: bool = False) -> int:
        """Validate and queue an order; it can fill from the next eligible event of its symbol."""
        return self._submit(symbol, qty, type, limit, stop, tif, expire_ts, oco, reduce_only)

    def _submit(self, symbol: str, qty: float, type: str, limit: float | None,
                stop: float | None, tif: str, expire_ts: int | None = None,
                oco: str | None = None, reduce_only: bool = False, parent: int = 0) -> int:
        """:meth:`order`, and a bracket's children (``parent``: inactive until it fills).

        A malformed call (qty, type, tif) is the strategy's bug: StrategyError. What a venue
        would refuse (unknown symbol, invalid price or expiry, a reduce-only order that would
        not reduce) is a rejected order: it gets an id, ``on_order`` hears why, and the
        run's logs record it.
        """
        if self.vectorized:
            raise StrategyError("order() is not available in the vectorised path: return targets")
        if not isinstance(qty, (int, float)) or not math.isfinite(qty) or qty == 0:
            raise StrategyError(f"order qty must be a finite non-zero number, got {qty!r}")
        type, tif = str(type).lower(), str(tif).lower()
        if type not in ORDER_TYPES:
            raise StrategyError(f"order type must be one of {ORDER_TYPES}, got {type!r}")
        if tif not in TIFS:
            raise StrategyError(f"order tif must be one of {TIFS}, got {tif!r}")
        oid = self._next_id
        self._next_id += 1
        now = self._tick.ts
        s = self._index.get(symbol)
        reason = "" if (type == MARKET and tif != GTD and not reduce_only and s is not None) \
            else self._refusal(s, symbol, float(qty), type, limit, stop, tif, expire_ts,
                               reduce_only and not parent, now)
        if reason:
            self._reject(oid, symbol, reason)
            return oid
        assert s is not None
        o = Order(oid, s, float(qty), type, None if limit is None else float(limit),
                  None if stop is None else float(stop), tif, now,
                  now + self.config.latency_ns, self._day if self._day is not None else -1,
                  None if expire_ts is None else int(expire_ts),
                  None if oco is None else str(oco), bool(reduce_only), parent, not parent)
        self._pending[s].append(o)
        self._open[oid] = o
        return oid

    def _refusal(self, s: int | None, symbol: str, qty: float, type: str, limit: float | None,
                 stop: float | None, tif: str, expire_ts: int | None, reduce_only: bool,
                 now: int) -> str:
        """Why a venue would reject this order ('' if it would not)."""
        if s is None:
            return f"unknown symbol {symbol!r}; this run has {self.symbols}"
        if type in (LIMIT, STOP_LIMIT) and not _positive(limit):
            return f"invalid price: a {type} order needs a positive limit, got {limit!r}"
        if type in (STOP, STOP_LIMIT) and not _positive(stop):
            return f"invalid price: a {type} order needs a positive stop, got {stop!r}"
        if tif == GTD and (expire_ts is None or not isinstance(expire_ts, int)
                           or expire_ts <= now):
            return f"invalid expiry: a gtd order needs an int expire_ts after {now}, got " \
                f"{expire_ts!r}"
        if reduce_only:
            pos = self.portfolio.pos[s]
            if pos == 0.0 or (pos > 0.0) == (qty > 0.0):
                return f"reduce-only violation: position {pos:g}, order {qty:g} would not reduce it"
        return ""

    def _reject(self, oid: int, symbol: str, reason: str) -> None:
        self._logs.append({"ts": self._tick.ts, "level": "warning", "msg": "order rejected",
                           "order_id": oid, "symbol": symbol, "reason": reason})
        if self._has_on_order:
            self.strategy.on_order(OrderEvent(oid, self._tick.ts, symbol, REJECTED, reason))

    def bracket(self, symbol: str, qty: float, entry: float | None, take_profit: float,
                stop_loss: float, tif: str) -> tuple[int, int, int]:
        """An entry with a take-profit limit and a stop-loss stop for what it fills."""
        eid = self._submit(symbol, qty, MARKET if entry is None else LIMIT, entry, None, tif)
        if eid not in self._open:  # rejected: so are its children
            tp, sl = self._next_id, self._next_id + 1
            self._next_id += 2
            for cid in (tp, sl):
                self._reject(cid, symbol, f"bracket entry {eid} was rejected")
            return eid, tp, sl
        tp = self._submit(symbol, -qty, LIMIT, take_profit, None, GTC, parent=eid)
        sl = self._submit(symbol, -qty, STOP, None, stop_loss, GTC, parent=eid)
        if tp not in self._open or sl not in self._open:  # a child's price was invalid
            for oid in (eid, tp, sl):
                if oid in self._open:
                    self._close(self._open[oid], CANCELLED, "bracket child rejected")
            return eid, tp, sl
        for cid in (tp, sl):
            self._open[cid].qty = 0.0  # sized by the entry's fills (_sync_bracket)
        self._brackets[eid] = [tp, sl, 0.0, 0.0, 0.0]
        return eid, tp, sl

    def cancel(self, order_id: int) -> bool:
        """Cancel an open order: at once, or after the order latency with ``cancel_latency``
        (it can still fill meanwhile)."""
        o = self._open.get(order_id)
        if o is None or o.cancel_at is not None:
            return False
        if self.config.cancel_latency:
            o.cancel_at = self._tick.ts + self.config.latency_ns
            self._amends += 1
        else:
            self._close(o, CANCELLED, "cancelled by the strategy")
        return True

    def modify(self, order_id: int, qty: float | None, limit: float | None,
               stop: float | None) -> bool:
        """Cancel-replace: the new version reaches the venue after the order latency (and
        loses its place in the queue); without ``cancel_latency`` the old one is off at once."""
        o = self._open.get(order_id)
        if o is None or o.cancel_at is not None:
            return False
        if qty is not None and o.parent:
            raise StrategyError(f"order {order_id} is a bracket child: its quantity follows "
                                "its entry's fills (modify the entry, or its prices)")
        if qty is not None and (not isinstance(qty, (int, float)) or not math.isfinite(qty)
                                or qty == 0 or (qty > 0) != (o.qty > 0)):
            raise StrategyError(f"modify qty must be a finite non-zero number on the order's "
                                f"side ({o.qty:g}), got {qty!r}")
        for name, px in (("limit", limit), ("stop", stop)):
            if px is not None and not _positive(px):
                raise StrategyError(f"modify {name} must be a positive price, got {px!r}")
        at = self._tick.ts + self.config.latency_ns
        # Fields not given keep the order's values as they are when the change applies (a
        # bracket child's quantity follows its entry meanwhile).
        o.change = (at, None if qty is None else float(qty),
                    None if limit is None else float(limit), None if stop is None else float(stop))
        o.suspended = not self.config.cancel_latency
        self._amends += 1
        return True

    def orders(self) -> list[OrderView]:
        """The open orders, by id."""
        return [OrderView(o.id, self.symbols[o.sym], o.type, o.tif, o.qty, o.filled,
                          o.remaining, o.limit, o.stop, o.expire_ts, o.oco, o.reduce_only,
                          o.parent, o.active,
                          PARTIALLY_FILLED if o.filled else ACCEPTED if o.seen else "submitted")
                for o in sorted(self._open.values(), key=lambda o: o.id)]

    def position(self, symbol: str) -> float:
        """Filled position of ``symbol``."""
        s = self._index.get(symbol)
        if s is None:
            raise StrategyError(f"unknown symbol {symbol!r}; this run has {self.symbols}")
        return self.portfolio.pos[s]

    def cash(self) -> float:
        """Current cash."""
        return self.portfolio.cash

    def equity(self) -> float:
        """Cash plus positions marked at each symbol's last trade."""
        return self.portfolio.equity()

    def log(self, msg: str, fields: dict[str, Any]) -> None:
        """Append a log record stamped with simulated time."""
        rec: dict[str, Any] = {"ts": self._tick.ts, "level": "info", "msg": str(msg)}
        for k, v in fields.items():
            rec[k] = v.item() if isinstance(v, np.generic) else v
        try:  # fail at the call, not after the whole run when the result is written
            json.dumps(rec, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise StrategyError(f"log({msg!r}) fields must be JSON values (no NaN/inf): {e}"
                                ) from None
        self._logs.append(rec)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Call ``on_start`` (skipped on a restored engine: it ran before the checkpoint)."""
        if self._started:
            return
        self._started = True
        self._guard(self.strategy.on_start, "on_start")

    def feed(self, chunk: pa.RecordBatch, limit: int | None = None) -> int:
        """Process the first ``limit`` rows of a merged chunk (all by default); returns the count."""
        n = chunk.num_rows if limit is None else min(limit, chunk.num_rows)
        if n <= 0:
            return 0
        if self.kinds != ("trades",):  # an event stream: trades and/or quotes (kind column)
            return self._feed_event_chunk(chunk, n)
        if len(self.symbols) == 1:
            counts = np.array([n])
        else:
            counts = np.bincount(chunk.column(1).to_numpy()[:n], minlength=len(self.symbols))
        if self.vectorized:
            self._vector.feed(chunk, n, counts)
        else:
            self._feed_ticks(chunk, n)
        for s, c in enumerate(counts.tolist()):
            self.consumed[s] += c
        self.ticks_done += n
        return n

    def _feed_event_chunk(self, chunk: pa.RecordBatch, n: int) -> int:
        """``feed`` for an event stream (``kind`` column: quotes and trades interleaved)."""
        sym = chunk.column(1).to_numpy()[:n]
        is_trade = chunk.column(2).to_numpy()[:n] == TRADE
        m = len(self.symbols)
        trades = np.bincount(sym[is_trade], minlength=m)
        quotes = np.bincount(sym[~is_trade], minlength=m)
        if self.vectorized:
            self._vector.feed(chunk, n, np.bincount(sym, minlength=m))
        else:
            self._feed_events(chunk, n)
        for s in range(m):
            self.consumed[s] += int(trades[s])
            self.consumed_quotes[s] += int(quotes[s])
        self.ticks_done += n
        return n

    def finish(self) -> EngineResult:
        """Close the last day, call ``on_stop`` and return the result tables."""
        if self._day is not None:
            self._close_day()
            self._day = None
        self._guard(self.strategy.on_stop, "on_stop")
        return EngineResult(self._trades.table(self.symbols), self._equity.table(), self._logs,
                            self.ticks_done, self.exposure_days,
                            len(self._open) + self._vector.open_orders())

    def offsets(self) -> dict[str, int]:
        """Stream position: rows consumed per stream (what a resumed stream skips): a
        symbol's trades under its name, its quotes under ``quotes/SYM``."""
        out = dict(zip(self.symbols, self.consumed)) if "trades" in self.kinds else {}
        if "quotes" in self.kinds:
            out.update((f"quotes/{sym}", c) for sym, c in zip(self.symbols,
                                                               self.consumed_quotes))
        return out

    def _guard(self, fn: Callable[[], None], where: str) -> None:
        """Run a strategy callback; its own exceptions become a StrategyError naming ``where``."""
        try:
            fn()
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(f"{type(e).__name__} in {where}: {e}") from e

    # ------------------------------------------------------------------ days
    def _roll_day(self, t: int) -> None:
        """First tick of a new (UTC) day: close the previous one, expire DAY orders."""
        if self._day is not None:
            self._close_day()
        day = t // DAY_NS
        self._day = day
        self._next_day_ns = (day + 1) * DAY_NS
        self._day_exposed = any(q != 0.0 for q in self.portfolio.pos)
        for o in list(self._open.values()):
            if o.tif == DAY:
                if o.day == -1:  # submitted in on_start: lives through the first session
                    o.day = day
                elif o.day < day:
                    self._close(o, EXPIRED, "day order: its day ended")

    def _close_day(self) -> None:
        """Record the current day's equity row; count it as exposed if it held any position."""
        assert self._day is not None
        self._equity.close_day(self._day, self.portfolio)
        if self._day_exposed:
            self.exposure_days += 1

    # ------------------------------------------------------------------ fills
    def _record(self, oids: Sequence[int], submits: Sequence[int], syms: Sequence[int],
                ts: Sequence[int], qtys: Sequence[float], prices: Sequence[float],
                liqs: Sequence[int]) -> list[float]:
        """Apply fills, in order, to the portfolio and the trade list; returns their fees.

        Both paths come through here (the per-tick path one fill at a time), so trades and
        equity are identical bit for bit whichever path produced the same orders.
        """
        fees = list(map(self.config.commission.fee, qtys, prices))
        self._trades.add(self.portfolio, oids, submits, syms, ts, qtys, prices, fees, liqs)
        self._day_exposed = True
        return fees

    def _fill(self, oid: int, submit_ts: int, s: int, t: int, qty: float, price: float,
              liq: int = 0) -> None:
        """Apply one fill, then show it to the strategy's ``on_fill``."""
        (fee,) = self._record((oid,), (submit_ts,), (s,), (t,), (qty,), (price,), (liq,))
        if self._has_on_fill:
            self.strategy.on_fill(Fill(oid, t, self.symbols[s], qty, price, fee, LIQUIDITY[liq]))

    def _notify(self, o: Order, status: str, reason: str = "", qty: float = 0.0,
                price: float = 0.0) -> None:
        if self._has_on_order:
            self.strategy.on_order(OrderEvent(o.id, self._tick.ts, self.symbols[o.sym], status,
                                              reason, o.filled, o.remaining, qty, price))

    def _close(self, o: Order, status: str, reason: str = "") -> None:
        """Take an order off the book (filled, cancelled, expired) and say so (a fill's own
        events are sent by :meth:`_take`)."""
        if self._open.pop(o.id, None) is None:
            return
        self._pending[o.sym].remove(o)
        if status != FILLED:
            self._notify(o, status, reason)
        link = self._brackets.get(o.id)
        if link is None:
            return
        if o.filled == 0.0:  # an entry that never filled takes its children with it
            del self._brackets[o.id]
            for cid in map(int, link[:2]):
                if cid in self._open:
                    self._close(self._open[cid], CANCELLED, f"bracket entry {o.id} {status}")
        else:  # the entry is done: its children now cover exactly what it filled
            self._sync_bracket(o.id, self._tick.ts)

    def _amend(self, s: int, t: int) -> set[int]:
        """Apply the cancels and modifies of symbol ``s`` that have reached the venue by ``t``,
        before the book is tried (a replaced order queues behind the others on this very
        event); the ids whose replacement applied now (they are tried as new arrivals)."""
        replaced: set[int] = set()
        book = self._pending[s]
        for o in tuple(book):
            if o.cancel_at is not None and t >= o.cancel_at:
                self._close(o, CANCELLED, "cancelled by the strategy")
            elif o.change is not None and t >= o.change[0]:
                at, qty, limit, stop = o.change
                o.change, o.suspended = None, False
                o.qty = o.qty if qty is None else qty
                o.limit = o.limit if limit is None else limit
                o.stop = o.stop if stop is None else stop
                o.eligible_ts = at
                book.remove(o)
                book.append(o)
                if o.active and abs(o.qty) <= abs(o.filled) and not o.parent:
                    self._close(o, CANCELLED, f"modified to {o.qty:g}, at or below its filled "
                                f"{o.filled:g}")
                    continue
                replaced.add(o.id)
                if o.seen:  # (one not yet at the venue just arrives in its new form)
                    self._notify(o, MODIFIED)
        self._amends = sum(1 for o in self._open.values()
                           if o.cancel_at is not None or o.change is not None)
        return replaced

    def _live(self, o: Order, t: int, arrive: bool = True) -> int:
        """Whether ``o`` can be tried on the event at ``t`` and how (expiring a GTD order,
        accepting one on its arrival at the venue). ``arrive=False``: this event cannot be the
        order's arrival (a trade under the quote model, where orders arrive on quotes): an
        order not yet accepted is skipped."""
        if o.id not in self._open or o.suspended or not o.active or t < o.eligible_ts:
            return _SKIP
        if o.expire_ts is not None and t >= o.expire_ts:
            self._close(o, EXPIRED, f"gtd: expired at {o.expire_ts}")
            return _SKIP
        if not o.seen:
            if not arrive:
                return _SKIP
            o.seen = True
            if self._has_on_order:
                self._notify(o, ACCEPTED)
            return _ARRIVED
        return _RESTING

    def _take(self, o: Order, s: int, t: int, avail: float, px: float, liq: str) -> float:
        """Fill as much of ``o`` as ``avail`` allows (FOK: all or none; reduce-only: never past
        flat); returns the quantity filled (unsigned).

        Order of effects: the fill is applied to the portfolio, a completed order leaves the
        book, ``on_order`` hears partially_filled/filled, ``on_fill`` gets the fill, then the
        order's OCO group and bracket react. A strategy call from those callbacks sees the
        order as it now is (a filled order can no longer be cancelled).
        """
        rem = abs(o.qty - o.filled)
        amount = min(rem, avail)
        if o.reduce_only:
            pos = self.portfolio.pos[s]
            closable = abs(pos) if pos != 0.0 and (pos > 0.0) != (o.qty > 0.0) else 0.0
            if closable == 0.0:
                self._close(o, CANCELLED, "reduce-only: the position is already closed")
                return 0.0
            amount = min(amount, closable)
        if o.tif == FOK and amount < rem:
            self._close(o, CANCELLED, f"fok: only {amount:g} of {rem:g} available")
            return 0.0
        if amount <= 0.0:
            return 0.0
        if amount == rem:  # the exact remainder, whatever rounding the parts had
            qty, o.filled = o.qty - o.filled, o.qty
        else:
            qty = amount if o.qty > 0.0 else -amount
            o.filled += qty
        done = o.filled == o.qty  # (a part can round the sum onto the total)
        eid = o.parent or o.id
        link = self._brackets.get(eid)
        if link is not None:  # [take-profit id, stop-loss id, entry, tp, sl filled]
            link[2 if not o.parent else 3 if o.id == link[0] else 4] = o.filled
        # A bracket child that caught up with a still working entry stays on the book with
        # nothing left: the entry's next fill gives it more.
        closes = done and not (o.parent and o.parent in self._open)
        (fee,) = self._record((o.id,), (o.submit_ts,), (s,), (t,), (qty,), (px,),
                              (_LIQ_CODE[liq],))
        if closes:
            self._close(o, FILLED)
        if self._has_on_order:
            self._notify(o, FILLED if closes else PARTIALLY_FILLED, "", qty, px)
        if self._has_on_fill:
            self.strategy.on_fill(Fill(o.id, t, self.symbols[s], qty, px, fee, liq))
        if o.oco is not None:
            for other in tuple(self._open.values()):
                if other.oco == o.oco and other is not o:
                    self._close(other, CANCELLED, f"oco: order {o.id} of group {o.oco!r} filled")
        if eid in self._brackets:
            self._sync_bracket(eid, t)
        if o.reduce_only and o.id in self._open and self.portfolio.pos[s] == 0.0:
            self._close(o, CANCELLED, "reduce-only: the position is closed")
        return amount

    def _sync_bracket(self, eid: int, t: int) -> None:
        """Size a bracket's children to what its entry filled less what the other child
        filled, and activate them at the entry's first fill (tried from the next event on).
        Once the entry is done, a child with nothing left leaves the book: filled if it filled
        its part, cancelled if the other child closed the position."""
        link = self._brackets[eid]
        ids, entry_filled, done = (int(link[0]), int(link[1])), link[2], link[3:]
        entry_open = eid in self._open
        for i, cid in enumerate(ids):
            k = self._open.get(cid)
            if k is None:
                continue
            k.qty = -entry_filled - done[1 - i]
            if not k.active and entry_filled != 0.0:
                k.active, k.eligible_ts = True, max(k.eligible_ts, t)
                self._fresh.add(cid)
            if not entry_open and abs(k.qty) <= abs(k.filled):
                if k.filled != 0.0 and k.filled == k.qty:
                    self._close(k, FILLED)
                    self._notify(k, FILLED)
                else:
                    self._close(k, CANCELLED, "bracket: the other child closed the position")
        if not entry_open and not any(c in self._open for c in ids):
            self._brackets.pop(eid, None)

    def _match(self, s: int, t: int, p: float, q: float, fence: int | None = None) -> None:
        """Try every open order of symbol ``s`` (in queue order) against trade (t, p, q).

        Trade model: markets and triggered stops fill at the (slipped) trade price, limits at
        their limit when the trade reaches it. Quote model: only a resting limit fills here,
        when the trade prints through it. ``fence``: orders from this id on were submitted
        while this event was being processed (a day roll's callbacks): not tried on it.
        """
        part = self.config.max_participation
        quote_model = self._quote_model
        left = q * part if part is not None else q if quote_model else math.inf
        fresh = self._fresh
        if fresh:
            fresh.clear()
        if self._amends:  # (orders its callbacks send wait for a later event)
            fence = self._next_id if fence is None else fence
            self._amend(s, t)
        for o in tuple(self._pending[s]):
            if t < o.eligible_ts or (fence is not None and o.id >= fence) or o.id in fresh:
                continue
            how = self._live(o, t, not quote_model)
            if how == _SKIP:
                continue
            buy = o.qty > 0.0
            if o.type in (STOP, STOP_LIMIT) and not self._trigger(
                    o, (p >= o.stop) if buy else (p <= o.stop)):  # type: ignore[operator]
                pass
            elif o.type == LIMIT:
                lim: float = o.limit  # type: ignore[assignment]
                if (((p < lim) if buy else (p > lim)) if quote_model
                        else ((p <= lim) if buy else (p >= lim))) and left > 0.0:
                    left -= self._take(o, s, t, left, lim, MAKER)
            elif not quote_model and left > 0.0:  # a market order or a triggered stop
                left -= self._take(o, s, t, left, slipped(
                    p, 1.0 if buy else -1.0, self.config.slippage_bps), TAKER)
            if not quote_model and o.tif in (IOC, FOK) and o.id in self._open:
                self._close(o, CANCELLED, f"{o.tif}: not filled in full on its first eligible "
                            "event")

    def _match_quote(self, s: int, t: int, bid: float, ask: float, bid_size: float,
                     ask_size: float, fence: int | None = None) -> None:
        """Quote model: try every open order of ``s`` against the quote: markets and triggered
        stops take the touch (slipped) up to its size, limits fill when the touch reaches
        them: at the touch when they are new to the book on this event (arrived, replaced by
        a modify, or a stop-limit just triggered: takers), at the limit once resting
        (makers)."""
        part = self.config.max_participation
        left = [bid_size * part if part is not None else bid_size,
                ask_size * part if part is not None else ask_size]
        fresh = self._fresh
        if fresh:
            fresh.clear()
        replaced: set[int] = set()
        if self._amends:  # (orders its callbacks send wait for a later event)
            fence = self._next_id if fence is None else fence
            replaced = self._amend(s, t)
        for o in tuple(self._pending[s]):
            if t < o.eligible_ts or (fence is not None and o.id >= fence) or o.id in fresh:
                continue
            how = self._live(o, t)
            if how == _SKIP:
                continue
            buy = o.qty > 0.0
            side = 1 if buy else 0
            touch = ask if buy else bid
            new = how == _ARRIVED or o.id in replaced
            if o.type in (STOP, STOP_LIMIT) and self._trigger(
                    o, (ask >= o.stop) if buy else (bid <= o.stop)):  # type: ignore[operator]
                new = True  # triggered now: it reaches the book as a new order
            if o.type in (STOP, STOP_LIMIT) or left[side] <= 0.0:
                pass
            elif o.type == MARKET:
                left[side] -= self._take(o, s, t, left[side], slipped(
                    touch, 1.0 if buy else -1.0, self.config.slippage_bps), TAKER)
            elif (touch <= o.limit) if buy else (touch >= o.limit):  # type: ignore[operator]
                px, liq = (touch, TAKER) if new else (o.limit, MAKER)
                left[side] -= self._take(o, s, t, left[side], px, liq)  # type: ignore[arg-type]
            if o.tif in (IOC, FOK) and o.id in self._open:
                self._close(o, CANCELLED, f"{o.tif}: not filled in full on its first eligible "
                            "event")

    @staticmethod
    def _trigger(o: Order, hit: bool) -> bool:
        """A stop (stop-limit) whose trigger is ``hit`` becomes a market (limit) order and is
        tried on this same event; whether it did."""
        if hit:
            o.type = MARKET if o.type == STOP else LIMIT
        return hit

    # ------------------------------------------------------------------ per-tick path
    def _feed_ticks(self, chunk: pa.RecordBatch, n: int) -> None:
        """The per-tick hot loop (measured: keep it as it is, see docs/benchmarks.md).

        Rows come as Python lists (``tolist`` once per chunk beats indexing arrays per tick) and
        the reused ``Tick`` is updated in place; declared quote columns are set by a wrapper of
        ``on_tick`` (:func:`_with_extras`), so there is one loop for every strategy.
        """
        names = chunk.schema.names
        ts_l = chunk.column(0).to_numpy()[:n].tolist()
        sym_l = chunk.column(1).to_numpy()[:n].tolist()
        px_l = chunk.column(names.index("price")).to_numpy()[:n].tolist()
        sz_l = chunk.column(names.index("size")).to_numpy()[:n].tolist()
        extras = [(c, chunk.column(names.index(c)).slice(0, n).to_pylist()) for c in self._extras]
        tick = self._tick
        on_tick: Callable[[Tick], None] = self.strategy.on_tick
        if extras:
            on_tick = _with_extras(on_tick, extras)
        pending = self._pending
        last = self.portfolio.last
        symbols = self.symbols
        next_day = self._next_day_ns
        try:
            for t, s, p, q in zip(ts_l, sym_l, px_l, sz_l):
                if t >= next_day:  # a new day: the clock first, then expiries (callbacks)
                    tick.ts = t
                    fence = self._next_id  # orders from the roll's callbacks wait an event
                    self._roll_day(t)
                    next_day = self._next_day_ns
                    last[s] = p
                    if pending[s]:
                        self._match(s, t, p, q, fence)
                else:
                    last[s] = p
                    tick.ts = t
                    if pending[s]:
                        self._match(s, t, p, q)
                tick.symbol = symbols[s]
                tick.price = p
                tick.size = q
                on_tick(tick)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(
                f"{type(e).__name__} in strategy at ts={tick.ts} symbol={tick.symbol}: {e}"
            ) from e

    def _feed_events(self, chunk: pa.RecordBatch, n: int) -> None:
        """The per-event loop of a run with quotes: each row is a trade (``on_tick``) or a
        quote (``on_quote``), in the stream's total order; the mark of a symbol is its latest
        event's price (a trade's price, a quote's mid)."""
        names = chunk.schema.names

        def col(name: str) -> list[Any]:
            return chunk.column(names.index(name)).to_numpy(zero_copy_only=False)[:n].tolist()

        ts_l, sym_l, kind_l = col("ts"), col("sym"), col("kind")
        px_l, sz_l = col("price"), col("size")
        qb, qa, qbs, qas = col("q_bid"), col("q_ask"), col("q_bid_size"), col("q_ask_size")
        extras = [(c, chunk.column(names.index(c)).slice(0, n).to_pylist()) for c in self._extras]
        tick, quote = self._tick, self._quote
        on_tick = self.strategy.on_tick if "trades" in self._wants else None
        on_quote = self.strategy.on_quote if "quotes" in self._wants else None
        pending, last, symbols = self._pending, self.portfolio.last, self.symbols
        quote_model = self._quote_model
        next_day = self._next_day_ns
        where, i = "strategy", 0
        try:
            for i, (t, s, k) in enumerate(zip(ts_l, sym_l, kind_l)):
                tick.ts = t
                fence = None
                if t >= next_day:  # orders from the roll's callbacks wait an event
                    fence = self._next_id
                    self._roll_day(t)
                    next_day = self._next_day_ns
                if k == TRADE:
                    p = px_l[i]
                    last[s] = p
                    if pending[s]:
                        self._match(s, t, p, sz_l[i], fence)
                    if on_tick is not None:
                        tick.symbol, tick.price, tick.size = symbols[s], p, sz_l[i]
                        for name, values in extras:
                            setattr(tick, name, values[i])
                        where = "on_tick"
                        on_tick(tick)
                else:
                    b, a, bs, az = qb[i], qa[i], qbs[i], qas[i]
                    last[s] = (b + a) * 0.5
                    if quote_model and pending[s]:
                        self._match_quote(s, t, b, a, bs, az, fence)
                    if on_quote is not None:
                        quote.ts, quote.symbol, quote.bid, quote.ask = t, symbols[s], b, a
                        quote.bid_size, quote.ask_size = bs, az
                        where = "on_quote"
                        on_quote(quote)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(f"{type(e).__name__} in {where} at ts={tick.ts} "
                                f"symbol={symbols[sym_l[min(i, n - 1)]]}: {e}") from e

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> bytes:
        """Serialize the complete state (with a version and a sha256) to bytes.

        The keys and their order are part of the checkpoint format (``checkpoint.py``): a
        resumed run must continue bit for bit, and old checkpoints must still read.
        """
        return ckpt.encode({
            "engine_version": ENGINE_VERSION,
            "symbols": self.symbols,
            "config": self.config.model_dump(mode="json"),
            "strategy_class": ckpt.strategy_class(self.strategy),
            "strategy_state": ckpt.strategy_state(self.strategy),
            "rng_state": self.strategy.rng.bit_generator.state,
            "portfolio": self.portfolio,
            "pending": self._pending,
            "next_id": self._next_id,
            "day": self._day,
            "next_day_ns": self._next_day_ns,
            "day_exposed": self._day_exposed,
            "exposure_days": self.exposure_days,
            "ticks_done": self.ticks_done,
            "consumed": self.consumed,
            "trades": self._trades.columns,
            "equity": self._equity.columns,
            "logs": self._logs,
            "targets": self._vector.targets,
            "carried": self._vector.carried,
            "tick_ts": self._tick.ts,
            "started": self._started,
            "consumed_quotes": self.consumed_quotes,
            "brackets": self._brackets,
            "books": self._vector.books,
        })

    @classmethod
    def restore(cls, data: bytes, strategy: Strategy) -> Engine:
        """Rebuild an engine from :meth:`checkpoint` bytes around a freshly loaded strategy."""
        state = ckpt.decode(data, ENGINE_VERSION, strategy)
        eng = cls(strategy, state["symbols"], RunConfig.model_validate(state["config"]))
        ckpt.restore_strategy(strategy, state)
        eng.portfolio = state["portfolio"]
        eng._pending = state["pending"]
        # By id, as the run built it (lifecycle callbacks iterate it in that order).
        eng._open = {o.id: o for o in sorted((o for book in eng._pending for o in book),
                                             key=lambda o: o.id)}
        eng._amends = sum(1 for o in eng._open.values()
                          if o.cancel_at is not None or o.change is not None)
        eng._next_id = state["next_id"]
        eng._day = state["day"]
        eng._next_day_ns = state["next_day_ns"]
        eng._day_exposed = state["day_exposed"]
        eng._trades.columns = state["trades"]
        eng._equity.columns = state["equity"]
        eng._logs = state["logs"]
        eng._vector.targets = state["targets"]
        eng._vector.carried = state["carried"]
        eng._started = state["started"]
        eng.exposure_days = state["exposure_days"]
        eng.ticks_done = state["ticks_done"]
        eng.consumed = state["consumed"]
        eng._tick.ts = state["tick_ts"]
        eng.consumed_quotes = state["consumed_quotes"]
        eng._brackets = state["brackets"]
        eng._vector.books = state["books"]
        return eng


def _with_extras(on_tick: Callable[[Tick], None],
                 extras: list[tuple[str, list[Any]]]) -> Callable[[Tick], None]:
    """``on_tick`` that first sets the row's declared quote fields (``bid``, ``ask``, ...).

    Called once per row, in row order, so a running row number indexes the columns; this keeps
    the per-tick loop a single loop for every strategy.
    """
    k = -1

    def call(tick: Tick) -> None:
        nonlocal k
        k += 1
        for name, col in extras:
            setattr(tick, name, col[k])
        on_tick(tick)

    return call


def _positive(px: Any) -> bool:
    """A usable price: a finite number above zero."""
    return isinstance(px, (int, float)) and math.isfinite(px) and px > 0
