"""The simulation loop: pure, deterministic, checkpointable. No I/O, no clock, no threads.

The engine consumes merged tick chunks (``pa.RecordBatch`` with ``ts`` int64, ``sym`` int32 =
index into the sorted symbol list, then ``price``, ``size`` and any declared extra columns) in
(ts, symbol, row) order, and drives one strategy through either path:

* per-tick: ``on_tick`` for every row; orders through ``Strategy.order``;
* vectorised: ``on_batch`` for each symbol's rows of a chunk returns target positions; the engine
  sends market orders for the differences, under the same fill rules, and applies every fill
  through the same code as the per-tick path, in the same (ts, symbol, row, order id) order.

Fill rules are documented in ``docs/semantics.md``; this module is their single implementation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import pickle
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tickreplay.engine.config import RunConfig
from tickreplay.engine.orders import (
    DAY,
    IOC,
    LIMIT,
    MARKET,
    ORDER_TYPES,
    STOP,
    TIFS,
    Fill,
    Order,
)
from tickreplay.engine.portfolio import Portfolio
from tickreplay.errors import CheckpointError
from tickreplay.strategy.api import Strategy, StrategyError, Tick

ENGINE_VERSION = "1.0"
DAY_NS = 86_400 * 1_000_000_000
_CKPT_MAGIC = b"TRCKPT"
_CKPT_VERSION = 2  # 2: the trade record is stored as typed arrays
_EXTRA_COLUMNS = ("bid", "ask", "bid_size", "ask_size", "exchange", "conditions")

TRADE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("order_id", pa.int64()),
    ("submit_ts", pa.int64()),
    ("ts", pa.int64()),
    ("symbol", pa.string()),
    ("qty", pa.float64()),
    ("price", pa.float64()),
    ("fee", pa.float64()),
    ("realized_pnl", pa.float64()),
    ("is_close", pa.bool_()),
    ("position", pa.float64()),
    ("cash", pa.float64()),
)
EQUITY_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("date", pa.string()),
    ("equity", pa.float64()),
    ("cash", pa.float64()),
    ("market_value", pa.float64()),
    ("realized_pnl", pa.float64()),
    ("unrealized_pnl", pa.float64()),
    ("fees", pa.float64()),
)


# How each trade column is stored while the run goes on (symbols as their int32 codes).
_ARRAY_CODE: dict[pa.DataType, str] = {pa.int64(): "q", pa.float64(): "d", pa.bool_(): "b",
                                       pa.string(): "i"}
_NUMPY_OF = {"q": np.int64, "i": np.int32, "d": np.float64, "b": np.bool_}


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


def _day_str(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


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
        # Typed arrays, not lists of Python objects: 8 bytes a value instead of ~32, so a run
        # with millions of fills keeps its trade record (and checkpoints) compact.
        self._trades: dict[str, array[Any]] = {name: array(_ARRAY_CODE[t])
                                               for name, t in TRADE_COLUMNS}
        self._equity: dict[str, list[Any]] = {name: [] for name, _ in EQUITY_COLUMNS}
        self._logs: list[dict[str, Any]] = []
        self._targets = [0.0] * n
        self._carried: list[list[tuple[int, float, int, int]]] = [[] for _ in range(n)]
        self._tick = Tick()
        self._slip = config.slippage_bps / 10_000.0
        self._started = False
        self._extras = tuple(c for c in strategy.columns if c in _EXTRA_COLUMNS)
        self._has_on_fill = type(strategy).on_fill is not Strategy.on_fill
        strategy._engine = self
        strategy.rng = np.random.default_rng(config.seed)

    # ------------------------------------------------------------------ strategy services
    def submit_order(self, symbol: str, qty: float, type: str, limit: float | None,
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

    def cancel_order(self, order_id: int) -> bool:
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
            self._feed_vector(chunk, n, counts)
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
        trades = pa.table({name: self._trade_column(name, t) for name, t in TRADE_COLUMNS})
        equity = pa.table({name: pa.array(self._equity[name], type=t) for name, t in EQUITY_COLUMNS})
        return EngineResult(trades, equity, self._logs, self.ticks_done, self.exposure_days,
                            len(self._open))

    def _trade_column(self, name: str, type: pa.DataType) -> pa.Array:
        values = np.frombuffer(self._trades[name], dtype=_NUMPY_OF[self._trades[name].typecode])
        if name == "symbol":  # stored as symbol codes
            return pa.DictionaryArray.from_arrays(pa.array(values), pa.array(self.symbols,
                                                                              pa.string())).cast(type)
        return pa.array(values, type=type)

    def offsets(self) -> dict[str, int]:
        """Stream position: rows consumed per symbol (what a resumed stream skips)."""
        return dict(zip(self.symbols, self.consumed))

    def _guard(self, fn: Any, where: str) -> None:
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
                    self.cancel_order(o.id)

    def _close_day(self) -> None:
        pf = self.portfolio
        mv = pf.market_value()
        e = self._equity
        e["date"].append(_day_str(self._day))  # type: ignore[arg-type]
        e["equity"].append(pf.cash + mv)
        e["cash"].append(pf.cash)
        e["market_value"].append(mv)
        e["realized_pnl"].append(math.fsum(pf.realized))
        e["unrealized_pnl"].append(pf.unrealized())
        e["fees"].append(pf.fees)
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
        tr = self._trades
        self.portfolio.apply_fills(syms, qtys, prices, fees, tr["realized_pnl"], tr["is_close"],
                                   tr["position"], tr["cash"])
        tr["order_id"].extend(oids)
        tr["submit_ts"].extend(submits)
        tr["ts"].extend(ts)
        tr["symbol"].extend(syms)
        tr["qty"].extend(qtys)
        tr["price"].extend(prices)
        tr["fee"].extend(fees)
        self._day_exposed = True
        return fees

    def _fill(self, oid: int, submit_ts: int, s: int, t: int, qty: float, price: float) -> None:
        """Apply one fill, then show it to the strategy's ``on_fill``."""
        (fee,) = self._record((oid,), (submit_ts,), (s,), (t,), (qty,), (price,))
        if self._has_on_fill:
            self.strategy.on_fill(Fill(oid, t, self.symbols[s], qty, price, fee))

    def _match(self, s: int, t: int, p: float) -> None:
        """Try every open order of symbol ``s`` (in submission order) against trade (t, p)."""
        slip = self._slip
        for o in tuple(self._pending[s]):
            if t < o.eligible_ts or o.id not in self._open:
                continue
            buy = o.qty > 0.0
            px: float | None = None
            if o.type == MARKET:
                px = p * (1.0 + slip) if buy else p * (1.0 - slip)
            elif o.type == LIMIT:
                if (p <= o.limit) if buy else (p >= o.limit):  # type: ignore[operator]
                    px = o.limit
            elif (p >= o.stop) if buy else (p <= o.stop):  # type: ignore[operator]
                px = p * (1.0 + slip) if buy else p * (1.0 - slip)
            if px is not None:
                self.cancel_order(o.id)
                self._fill(o.id, o.submit_ts, s, t, o.qty, px)
            elif o.tif == IOC:
                self.cancel_order(o.id)

    # ------------------------------------------------------------------ per-tick path
    def _feed_ticks(self, chunk: pa.RecordBatch, n: int) -> None:
        names = chunk.schema.names
        ts_l = chunk.column(0).to_numpy()[:n].tolist()
        sym_l = chunk.column(1).to_numpy()[:n].tolist()
        px_l = chunk.column(names.index("price")).to_numpy()[:n].tolist()
        sz_l = chunk.column(names.index("size")).to_numpy()[:n].tolist()
        extras = [(c, chunk.column(names.index(c)).slice(0, n).to_pylist()) for c in self._extras]
        tick = self._tick
        on_tick = self.strategy.on_tick
        pending = self._pending
        last = self.portfolio.last
        symbols = self.symbols
        next_day = self._next_day_ns
        try:
            if extras:
                for k in range(n):
                    t = ts_l[k]
                    s = sym_l[k]
                    p = px_l[k]
                    if t >= next_day:
                        self._roll_day(t)
                        next_day = self._next_day_ns
                    last[s] = p
                    tick.ts = t
                    if pending[s]:
                        self._match(s, t, p)
                    tick.symbol = symbols[s]
                    tick.price = p
                    tick.size = sz_l[k]
                    for name, col in extras:
                        setattr(tick, name, col[k])
                    on_tick(tick)
            else:
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

    # ------------------------------------------------------------------ vectorised path
    def _feed_vector(self, chunk: pa.RecordBatch, n: int, counts: np.ndarray) -> None:
        names = chunk.schema.names
        ts = chunk.column(0).to_numpy()[:n]
        sym = chunk.column(1).to_numpy()[:n]
        price = chunk.column(names.index("price")).to_numpy()[:n]
        view = chunk.slice(0, n).select([c for c in names if c != "sym"])
        lat = self.config.latency_ns

        sub_idx: dict[int, np.ndarray | None] = {}
        new_orders: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # gpos, local, qty, s
        for s in np.flatnonzero(counts).tolist():
            idx = None if counts[s] == n else np.flatnonzero(sym == s)
            sub_idx[s] = idx
            batch = view if idx is None else view.take(pa.array(idx))
            batch = batch.append_column(
                "symbol", pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(batch.num_rows, dtype=np.int32)), pa.array([self.symbols[s]])
                ),
            ).replace_schema_metadata({"symbol": self.symbols[s]})
            target = self._call_on_batch(batch, s)
            # Rows whose target differs from the row before (the running target before row 0).
            # Compare, then subtract only there: np.diff(prepend=) made two batch-sized
            # temporaries, whose fresh pages cost more than the subtraction itself.
            rows = np.flatnonzero(target[1:] != target[:-1]) + 1
            if target[0] != self._targets[s]:
                rows = np.concatenate(([0], rows))
            if len(rows):
                before = target[rows - 1]
                if rows[0] == 0:
                    before[0] = self._targets[s]
                gpos = rows if idx is None else idx[rows]
                new_orders.append((gpos, rows, target[rows] - before, s))
            self._targets[s] = float(target[-1])

        # Fills due in this chunk, one array each: global row, order id, symbol, qty, submit ts.
        parts: list[tuple[np.ndarray, ...]] = []
        for s, idx in sub_idx.items():  # orders carried from earlier chunks have smaller ids
            if not self._carried[s]:
                continue
            ts_s = ts if idx is None else ts[idx]
            due, keep = [], []
            for c_oid, c_qty, eligible, c_sub in self._carried[s]:
                j = int(np.searchsorted(ts_s, eligible, side="left"))
                if j < len(ts_s):
                    due.append((j if idx is None else int(idx[j]), c_oid, s, c_qty, c_sub))
                else:
                    keep.append((c_oid, c_qty, eligible, c_sub))
            self._carried[s] = keep
            if due:
                cols = list(zip(*due))
                parts.append((np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64),
                              np.array(cols[2], dtype=np.int64),
                              np.array(cols[3], dtype=np.float64),
                              np.array(cols[4], dtype=np.int64)))
        if new_orders:
            # Order ids in global submission order, exactly as the per-tick path numbers them.
            all_gpos = np.concatenate([o[0] for o in new_orders])
            order_of = np.argsort(all_gpos, kind="stable")
            ids = np.empty(len(all_gpos), dtype=np.int64)
            ids[order_of] = np.arange(self._next_id, self._next_id + len(all_gpos))
            self._next_id += len(all_gpos)
            start = 0
            for gpos, rows, qty, s in new_orders:
                k = len(rows)
                oids = ids[start:start + k]
                start += k
                idx = sub_idx[s]
                ts_s = ts if idx is None else ts[idx]
                submit = ts_s[rows]
                j = np.maximum(np.searchsorted(ts_s, submit + lat, side="left"), rows + 1)
                ok = j < len(ts_s)
                fj = j[ok]
                parts.append((fj if idx is None else idx[fj], oids[ok],
                              np.full(len(fj), s, dtype=np.int64), qty[ok], submit[ok]))
                for oid, q, sub_t in zip(oids[~ok].tolist(), qty[~ok].tolist(),
                                         submit[~ok].tolist()):
                    self._carried[s].append((oid, q, sub_t + lat, sub_t))

        # Day boundaries inside the chunk (first row of each new day): ts is sorted, so binary
        # search from day to day.
        bounds: list[int] = []
        first_day, last_day = int(ts[0]) // DAY_NS, int(ts[-1]) // DAY_NS
        if self._day is None or first_day != self._day:
            bounds.append(0)
        for day in range(first_day + 1, last_day + 1):
            b = int(np.searchsorted(ts, day * DAY_NS, side="left"))
            if b < n and (not bounds or b != bounds[-1]):
                bounds.append(b)
        # Fills in (fill row, order id) order; each day's close falls between the fills before
        # its first row and those at or after it.
        fills: list[list[Any]] = [[] for _ in range(7)]
        cuts = [0] * len(bounds)
        if parts:
            at, oid_f, sym_f, qty_f, sub_f = (np.concatenate(col) for col in zip(*parts))
            order = np.lexsort((oid_f, at))
            at, qty_f = at[order], qty_f[order]
            mark = price[at]
            px = np.where(qty_f > 0.0, mark * (1.0 + self._slip), mark * (1.0 - self._slip))
            fills = [oid_f[order].tolist(), sub_f[order].tolist(), sym_f[order].tolist(),
                     ts[at].tolist(), qty_f.tolist(), px.tolist(), mark.tolist()]
            cuts = np.searchsorted(at, bounds, side="left").tolist()
        done = 0
        for b, cut in zip(bounds, cuts):
            if cut > done:
                self._vector_fills(fills, done, cut)
                done = cut
            self._vector_roll(b, ts, price, sub_idx)
        if done < len(fills[0]):
            self._vector_fills(fills, done, len(fills[0]))
        pf = self.portfolio
        for s, idx in sub_idx.items():
            pf.last[s] = float(price[-1] if idx is None else price[idx[-1]])
        self._tick.ts = int(ts[-1])

    def _vector_fills(self, fills: list[list[Any]], lo: int, hi: int) -> None:
        """Apply fills ``lo:hi`` (oid, submit ts, sym, ts, qty, price, trade price) in order.

        Without an ``on_fill`` nothing can observe the state between two fills, so the run goes
        through the portfolio at once; with one, each fill is made at its own tick: the symbol's
        mark and the clock move to it first, exactly as on the per-tick path.
        """
        oids, subs, syms, ts, qtys, pxs, marks = (col[lo:hi] for col in fills)
        try:
            if not self._has_on_fill:
                self._record(oids, subs, syms, ts, qtys, pxs)
                return
            last = self.portfolio.last
            for oid, sub, s, t, qty, px, mark in zip(oids, subs, syms, ts, qtys, pxs, marks):
                last[s] = mark
                self._tick.ts = t
                self._fill(oid, sub, s, t, qty, px)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(f"{type(e).__name__} in on_fill: {e}") from e

    def _vector_roll(self, b: int, ts: np.ndarray, price: np.ndarray,
                     sub_idx: dict[int, np.ndarray | None]) -> None:
        """Close the day that ends before row ``b``: set marks as of row b-1, then roll."""
        if b > 0:
            for s, idx in sub_idx.items():
                if idx is None:
                    self.portfolio.last[s] = float(price[b - 1])
                else:
                    k = int(np.searchsorted(idx, b, side="left")) - 1
                    if k >= 0:
                        self.portfolio.last[s] = float(price[idx[k]])
        self._roll_day(int(ts[b]))

    def _call_on_batch(self, batch: pa.RecordBatch, s: int) -> np.ndarray:
        try:
            out = self.strategy.on_batch(batch)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(
                f"{type(e).__name__} in on_batch ({self.symbols[s]}, {batch.num_rows} rows): {e}"
            ) from e
        target = np.asarray(out, dtype=np.float64)
        if target.shape != (batch.num_rows,):
            raise StrategyError(
                f"on_batch must return one target per row: expected shape ({batch.num_rows},), "
                f"got {target.shape}"
            )
        if not np.isfinite(target).all():
            raise StrategyError("on_batch returned a non-finite target (NaN or inf)")
        return target

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> bytes:
        """Serialize the complete state (with a version and a sha256) to bytes."""
        strategy_state = {k: v for k, v in self.strategy.__dict__.items()
                          if k not in ("_engine", "rng")}
        state = {
            "engine_version": ENGINE_VERSION,
            "symbols": self.symbols,
            "config": self.config.model_dump(mode="json"),
            "strategy_class": f"{type(self.strategy).__module__}.{type(self.strategy).__qualname__}",
            "strategy_state": strategy_state,
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
            "trades": self._trades,
            "equity": self._equity,
            "logs": self._logs,
            "targets": self._targets,
            "carried": self._carried,
            "tick_ts": self._tick.ts,
            "started": self._started,
        }
        try:
            payload = pickle.dumps(state, protocol=5)
        except Exception as e:
            raise CheckpointError(f"strategy state cannot be checkpointed: {e}") from e
        digest = hashlib.sha256(payload).digest()
        return _CKPT_MAGIC + struct.pack(">H", _CKPT_VERSION) + digest + payload

    @classmethod
    def restore(cls, data: bytes, strategy: Strategy) -> Engine:
        """Rebuild an engine from :meth:`checkpoint` bytes around a freshly loaded strategy."""
        head = len(_CKPT_MAGIC)
        if data[:head] != _CKPT_MAGIC:
            raise CheckpointError("not a tickreplay checkpoint")
        (version,) = struct.unpack(">H", data[head:head + 2])
        if version != _CKPT_VERSION:
            raise CheckpointError(f"checkpoint version {version}, this engine reads {_CKPT_VERSION}")
        digest, payload = data[head + 2:head + 34], data[head + 34:]
        if hashlib.sha256(payload).digest() != digest:
            raise CheckpointError("checkpoint checksum mismatch (corrupt or truncated)")
        state = pickle.loads(payload)
        if state["engine_version"] != ENGINE_VERSION:
            raise CheckpointError(
                f"checkpoint from engine {state['engine_version']}, this is {ENGINE_VERSION}"
            )
        want = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
        if state["strategy_class"] != want:
            raise CheckpointError(f"checkpoint is for {state['strategy_class']}, not {want}")
        eng = cls(strategy, state["symbols"], RunConfig.model_validate(state["config"]))
        strategy.__dict__.update(state["strategy_state"])
        strategy.rng.bit_generator.state = state["rng_state"]
        eng.portfolio = state["portfolio"]
        eng._pending = state["pending"]
        eng._open = {o.id: o for book in eng._pending for o in book}
        for attr in ("next_id", "day", "next_day_ns", "day_exposed", "trades", "equity", "logs",
                     "targets", "carried", "started"):
            setattr(eng, "_" + attr, state[attr])
        eng.exposure_days = state["exposure_days"]
        eng.ticks_done = state["ticks_done"]
        eng.consumed = state["consumed"]
        eng._tick.ts = state["tick_ts"]
        return eng
