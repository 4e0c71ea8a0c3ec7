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
    DAY,
    DAY_NS,
    IOC,
    LIMIT,
    MARKET,
    ORDER_TYPES,
    STOP,
    TIFS,
    Fill,
    Order,
    slipped,
)
from tickreplay.engine.portfolio import Portfolio
from tickreplay.engine.trades import EquityCurve, TradeLog
from tickreplay.engine.vector import VectorPath
from tickreplay.strategy.api import Strategy, StrategyError, Tick

# The version of these semantics: part of every result's hashed inputs and checked by restore, so
# a rule change must bump it (results and checkpoints of another version are not comparable).
ENGINE_VERSION = "1.0"
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
        self._vector = VectorPath(self)
        strategy._context = self
        strategy.rng = np.random.default_rng(config.seed)

    # ------------------------------------------------------------------ strategy services
    # The StrategyContext protocol (tickreplay.strategy.api): what Strategy.order, .cancel,
    # .position, .cash, .equity and .log call.
    def order(self, symbol: str, qty: float, type: str, limit: float | None,
              stop: float | None, tif: str) -> int:
        """Validate and queue an order; it can fill from the next eligible tick of its symbol."""
        if self.vectorized:
            raise StrategyError("order() is not available in the vectorised path: return targets")
        s = self._index.get(symbol)
        if s is None:
            raise StrategyError(f"order for {symbol!r}, which is not in this run {self.symbols}")
        if not isinstance(qty, (int, float)) or not math.isfinite(qty) or qty == 0:
            raise StrategyError(f"order qty must be a finite non-zero number, got {qty!r}")
        type, tif = str(type).lower(), str(tif).lower()
        if type not in ORDER_TYPES:
            raise StrategyError(f"order type must be one of {ORDER_TYPES}, got {type!r}")
        if tif not in TIFS:
            raise StrategyError(f"order tif must be one of {TIFS}, got {tif!r}")
        if type == LIMIT and (limit is None or not limit > 0):
            raise StrategyError(f"limit order needs a positive limit price, got {limit!r}")
        if type == STOP and (stop is None or not stop > 0):
            raise StrategyError(f"stop order needs a positive stop price, got {stop!r}")
        oid = self._next_id
        self._next_id += 1
        now = self._tick.ts
        o = Order(oid, s, float(qty), type, None if limit is None else float(limit),
                  None if stop is None else float(stop), tif, now,
                  now + self.config.latency_ns, self._day if self._day is not None else -1)
        self._pending[s].append(o)
        self._open[oid] = o
        return oid

    def cancel(self, order_id: int) -> bool:
        """Remove an open order at once (cancels have no latency)."""
        o = self._open.pop(order_id, None)
        if o is None:
            return False
        self._pending[o.sym].remove(o)
        return True

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

    def finish(self) -> EngineResult:
        """Close the last day, call ``on_stop`` and return the result tables."""
        if self._day is not None:
            self._close_day()
            self._day = None
        self._guard(self.strategy.on_stop, "on_stop")
        return EngineResult(self._trades.table(self.symbols), self._equity.table(), self._logs,
                            self.ticks_done, self.exposure_days, len(self._open))

    def offsets(self) -> dict[str, int]:
        """Stream position: rows consumed per symbol (what a resumed stream skips)."""
        return dict(zip(self.symbols, self.consumed))

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
                    self.cancel(o.id)

    def _close_day(self) -> None:
        """Record the current day's equity row; count it as exposed if it held any position."""
        assert self._day is not None
        self._equity.close_day(self._day, self.portfolio)
        if self._day_exposed:
            self.exposure_days += 1

    # ------------------------------------------------------------------ fills
    def _record(self, oids: Sequence[int], submits: Sequence[int], syms: Sequence[int],
                ts: Sequence[int], qtys: Sequence[float], prices: Sequence[float]) -> list[float]:
        """Apply fills, in order, to the portfolio and the trade list; returns their fees.

        Both paths come through here (the per-tick path one fill at a time), so trades and
        equity are identical bit for bit whichever path produced the same orders.
        """
        fees = list(map(self.config.commission.fee, qtys, prices))
        self._trades.add(self.portfolio, oids, submits, syms, ts, qtys, prices, fees)
        self._day_exposed = True
        return fees

    def _fill(self, oid: int, submit_ts: int, s: int, t: int, qty: float, price: float) -> None:
        """Apply one fill, then show it to the strategy's ``on_fill``."""
        (fee,) = self._record((oid,), (submit_ts,), (s,), (t,), (qty,), (price,))
        if self._has_on_fill:
            self.strategy.on_fill(Fill(oid, t, self.symbols[s], qty, price, fee))

    def _match(self, s: int, t: int, p: float) -> None:
        """Try every open order of symbol ``s`` (in submission order) against trade (t, p)."""
        for o in tuple(self._pending[s]):
            if t < o.eligible_ts or o.id not in self._open:
                continue
            buy = o.qty > 0.0
            px: float | None = None
            if o.type == LIMIT:
                if (p <= o.limit) if buy else (p >= o.limit):  # type: ignore[operator]
                    px = o.limit
            elif o.type == MARKET or (  # a triggered stop fills as a market order on that trade
                    (p >= o.stop) if buy else (p <= o.stop)):  # type: ignore[operator]
                px = slipped(p, 1.0 if buy else -1.0, self.config.slippage_bps)
            if px is not None:
                self.cancel(o.id)
                self._fill(o.id, o.submit_ts, s, t, o.qty, px)
            elif o.tif == IOC:
                self.cancel(o.id)

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
                if t >= next_day:
                    self._roll_day(t)
                    next_day = self._next_day_ns
                last[s] = p
                tick.ts = t
                if pending[s]:
                    self._match(s, t, p)
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
        })

    @classmethod
    def restore(cls, data: bytes, strategy: Strategy) -> Engine:
        """Rebuild an engine from :meth:`checkpoint` bytes around a freshly loaded strategy."""
        state = ckpt.decode(data, ENGINE_VERSION, strategy)
        eng = cls(strategy, state["symbols"], RunConfig.model_validate(state["config"]))
        ckpt.restore_strategy(strategy, state)
        eng.portfolio = state["portfolio"]
        eng._pending = state["pending"]
        eng._open = {o.id: o for book in eng._pending for o in book}
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
