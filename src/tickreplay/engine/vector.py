"""The vectorised path: ``on_batch`` targets become market orders, filled under the same rules.

For each symbol's rows of a merged chunk, ``on_batch`` returns the target position after each
row; every row whose target differs from the row before submits a market GTC order for the
difference. Fills are found with binary searches over the chunk instead of a Python loop per
tick, then applied through the engine's own ``_record``/``_fill`` in (fill row, order id) order,
with each day's close between the fills before its first row and those at or after it: exactly
the order, ids, prices and bits the per-tick path produces for the same orders
(``docs/semantics.md``, "Vectorised path").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from tickreplay.engine.config import RunConfig
from tickreplay.engine.orders import DAY_NS, LIQUIDITY, TAKER, slipped
from tickreplay.engine.portfolio import Portfolio
from tickreplay.strategy.api import Strategy, StrategyError, Tick

TAKER_CODE = LIQUIDITY.index(TAKER)
TRADE_KIND = 1  # the event stream's ``kind`` of a trade (core.TRADE; quotes are 0)  # every vectorised fill is a market order's
# An order carried to a later chunk (no eligible row of its symbol yet):
# (order id, qty, eligible ts, submit ts).
Carried = tuple[int, float, int, int]
# Symbol code -> its rows in the chunk (None when every row is that symbol's).
SymbolRows = dict[int, np.ndarray | None]
# New orders of one symbol: global rows, rows in the symbol's batch, quantities, symbol code.
NewOrders = tuple[np.ndarray, np.ndarray, np.ndarray, int]
# Fills due in a chunk, one array each: global row, order id, symbol, qty, submit ts.
Due = tuple[np.ndarray, ...]


class VectorHost(Protocol):
    """The members of ``core.Engine`` the vectorised path drives.

    A Protocol rather than an import of ``Engine``: ``core`` imports this module, and the
    engine's modules import each other one way only.
    """

    symbols: tuple[str, ...]
    kinds: tuple[str, ...]
    config: RunConfig
    strategy: Strategy
    portfolio: Portfolio
    _next_id: int
    _day: int | None
    _tick: Tick
    _has_on_fill: bool

    def _roll_day(self, t: int) -> None: ...

    def _record(self, oids: Sequence[int], submits: Sequence[int], syms: Sequence[int],
                ts: Sequence[int], qtys: Sequence[float], prices: Sequence[float],
                liqs: Sequence[int]) -> list[float]: ...

    def _fill(self, oid: int, submit_ts: int, s: int, t: int, qty: float,
              price: float, liq: int = 0) -> None: ...


class VectorPath:
    """The vectorised path's state (running targets, carried orders) and algorithm.

    ``targets`` and ``carried`` are part of a checkpoint; the engine saves and restores them.
    """

    __slots__ = ("books", "carried", "eng", "sized", "targets")

    def __init__(self, eng: VectorHost) -> None:
        n = len(eng.symbols)
        self.eng = eng
        self.targets = [0.0] * n
        self.carried: list[list[Carried]] = [[] for _ in range(n)]
        # The sized path's open orders per symbol, in id order:
        # [order id, qty, filled, eligible ts, submit ts, row it was submitted at (-1: earlier)].
        self.books: list[list[list[Any]]] = [[] for _ in range(n)]
        cfg = eng.config
        self.sized = (cfg.fill_model == "quote" or cfg.max_participation is not None
                      or eng.kinds != ("trades",))

    def open_orders(self) -> int:
        """Orders submitted from targets and not (fully) filled yet."""
        return sum(map(len, self.carried)) + sum(map(len, self.books))

    def feed(self, chunk: pa.RecordBatch, n: int, counts: np.ndarray) -> None:
        """Process the first ``n`` rows of a merged chunk (``counts``: rows per symbol)."""
        if self.sized:
            self._feed_sized(chunk, n)
            return
        names = chunk.schema.names
        ts = chunk.column(0).to_numpy()[:n]
        sym = chunk.column(1).to_numpy()[:n]
        price = chunk.column(names.index("price")).to_numpy()[:n]
        sub_idx, new_orders = self._orders_from_targets(chunk, n, sym, counts)
        parts = self._carried_due(ts, sub_idx)  # orders carried from earlier chunks: smaller ids
        if new_orders:
            parts += self._place(ts, sub_idx, new_orders)
        self._fill_and_roll(ts, price, sub_idx, parts)

    def _orders_from_targets(self, chunk: pa.RecordBatch, n: int, sym: np.ndarray,
                             counts: np.ndarray, rows_of: SymbolRows | None = None
                             ) -> tuple[SymbolRows, list[NewOrders]]:
        """Call ``on_batch`` per symbol; the rows whose target changes become orders.

        Returns each symbol's row indices in the chunk (None: all rows are that symbol's) and,
        per symbol with orders: their global rows, local rows, quantities and the symbol.
        ``rows_of`` (the sized path) gives the rows each symbol's ``on_batch`` sees instead.
        """
        eng = self.eng
        view = chunk.slice(0, n).select([c for c in chunk.schema.names if c != "sym"])
        sub_idx: SymbolRows = {}
        new_orders: list[NewOrders] = []
        symbols = np.flatnonzero(counts).tolist() if rows_of is None else list(rows_of)
        for s in symbols:
            idx = (None if counts[s] == n else np.flatnonzero(sym == s)) if rows_of is None \
                else rows_of[s]
            sub_idx[s] = idx
            batch = view if idx is None else view.take(pa.array(idx))
            batch = batch.append_column(
                "symbol", pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(batch.num_rows, dtype=np.int32)), pa.array([eng.symbols[s]])
                ),
            ).replace_schema_metadata({"symbol": eng.symbols[s]})
            target = self._call_on_batch(batch, s)
            # Rows whose target differs from the row before (the running target before row 0).
            # Compare, then subtract only there: np.diff(prepend=) made two batch-sized
            # temporaries, whose fresh pages cost more than the subtraction itself.
            rows = np.flatnonzero(target[1:] != target[:-1]) + 1
            if target[0] != self.targets[s]:
                rows = np.concatenate(([0], rows))
            if len(rows):
                before = target[rows - 1]
                if rows[0] == 0:
                    before[0] = self.targets[s]
                gpos = rows if idx is None else idx[rows]
                new_orders.append((gpos, rows, target[rows] - before, s))
            self.targets[s] = float(target[-1])
        return sub_idx, new_orders

    def _feed_sized(self, chunk: pa.RecordBatch, n: int) -> None:
        """The vectorised path with sizes: the quote fill model, a participation cap, or an
        event stream. Market orders from the targets fill event by event like the per-tick
        path's: each order (in id order) takes what is left of each fillable event's size
        (quote model: the touch's, trade model: the trade's, times the cap), in the same
        float operations, so the trades are identical bit for bit."""
        eng = self.eng
        cfg = eng.config
        names = chunk.schema.names

        def col(name: str) -> np.ndarray:
            return chunk.column(names.index(name)).to_numpy(zero_copy_only=False)[:n]

        ts, sym, price = col("ts"), col("sym"), col("price")
        kind = col("kind") if "kind" in names else None
        quote_model = cfg.fill_model == "quote"
        if kind is None:
            mark, want, fillable = price, np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        else:
            is_trade = kind == TRADE_KIND
            mark = np.where(is_trade, price, (col("q_bid") + col("q_ask")) * 0.5)
            want = np.zeros(n, dtype=bool)
            for kind_name, flag in (("trades", is_trade), ("quotes", ~is_trade)):
                if kind_name in eng.strategy.events:
                    want |= flag
            fillable = ~is_trade if quote_model else is_trade
        m = len(eng.symbols)
        present = np.flatnonzero(np.bincount(sym, minlength=m)).tolist()
        rows_all = {s: np.flatnonzero(sym == s) for s in present}
        rows_want: SymbolRows = {s: r[want[r]] for s, r in rows_all.items() if want[r].any()}
        _, new_orders = self._orders_from_targets(chunk, n, sym, np.zeros(m), rows_want)
        if new_orders:
            all_gpos = np.concatenate([o[0] for o in new_orders])
            ids = np.empty(len(all_gpos), dtype=np.int64)
            ids[np.argsort(all_gpos, kind="stable")] = np.arange(
                eng._next_id, eng._next_id + len(all_gpos))
            eng._next_id += len(all_gpos)
            start = 0
            for gpos, _rows, qty, s in new_orders:
                k = len(gpos)
                for oid, g, q in zip(ids[start:start + k].tolist(), gpos.tolist(), qty.tolist()):
                    t = int(ts[g])
                    self.books[s].append([oid, q, 0.0, t + cfg.latency_ns, t, g])
                start += k
            for s in {o[3] for o in new_orders}:
                self.books[s].sort(key=lambda o: o[0])
        if quote_model:
            caps = (col("q_bid_size"), col("q_ask_size"))  # sell, buy
            touch = (col("q_bid"), col("q_ask"))
        else:
            size = col("size")
            caps = (size, size)
            touch = (price, price)
        fills: list[tuple[int, int, int, int, float, float, float]] = []
        for s in present:
            if self.books[s]:
                self._fill_book(s, rows_all[s][fillable[rows_all[s]]], ts, caps, touch, mark,
                                fills)
        fills.sort(key=lambda f: (f[0], f[1]))
        at = np.array([f[0] for f in fills], dtype=np.int64)
        cols: list[list[Any]] = [[f[1] for f in fills], [f[6] for f in fills], [f[2] for f in fills],
                [f[3] for f in fills], [f[4] for f in fills], [f[5] for f in fills],
                [float(mark[r]) for r in at.tolist()]]
        self._apply_and_roll(ts, mark, {s: (None if len(r) == n else r)
                                        for s, r in rows_all.items()}, at, cols)

    def _fill_book(self, s: int, rows: np.ndarray, ts: np.ndarray,
                   caps: tuple[np.ndarray, np.ndarray], touch: tuple[np.ndarray, np.ndarray],
                   mark: np.ndarray, fills: list[Any]) -> None:
        """Fill symbol ``s``'s open orders on its fillable ``rows`` of the chunk, in id order;
        appends (row, order id, symbol, ts, qty, price, submit ts) to ``fills``."""
        cfg = self.eng.config
        part = cfg.max_participation
        inf_cap = part is None and cfg.fill_model != "quote"
        row_ts = ts[rows]
        cap = [c[rows] * part if part is not None else c[rows] for c in caps]
        left = [[math.inf] * len(rows)] * 2 if inf_cap else [c.tolist() for c in cap]
        if cfg.fill_model != "quote":
            left[0] = left[1]  # buys and sells share a trade's size
        px_at = [t[rows] for t in touch]
        slip = cfg.slippage_bps
        keep = []
        for o in self.books[s]:
            oid, qty, filled, eligible, submit, row = o
            buy = qty > 0.0
            side = 1 if buy else 0
            j = max(int(np.searchsorted(row_ts, eligible, side="left")),
                    int(np.searchsorted(rows, row, side="right")))
            done = False
            room = left[side]
            while j < len(rows):
                av = room[j]
                if av > 0.0:
                    rem = abs(qty - filled)
                    amount = min(rem, av)
                    if amount == rem:  # as Engine._take, operation for operation
                        q, filled = qty - filled, qty
                    else:
                        q = amount if buy else -amount
                        filled += q
                    done = filled == qty
                    room[j] = av - amount
                    px = slipped(float(px_at[side][j]), 1.0 if buy else -1.0, slip)
                    fills.append((int(rows[j]), oid, s, int(row_ts[j]), q, px, submit))
                    if done:
                        break
                j += 1
            if not done:
                keep.append([oid, qty, filled, eligible, submit, -1])
        self.books[s] = keep

    def _carried_due(self, ts: np.ndarray, sub_idx: SymbolRows) -> list[Due]:
        """Carried orders that reach an eligible row of their symbol in this chunk."""
        parts: list[Due] = []
        for s, idx in sub_idx.items():
            if not self.carried[s]:
                continue
            ts_s = ts if idx is None else ts[idx]
            due, keep = [], []
            for c_oid, c_qty, eligible, c_sub in self.carried[s]:
                j = int(np.searchsorted(ts_s, eligible, side="left"))
                if j < len(ts_s):
                    due.append((j if idx is None else int(idx[j]), c_oid, s, c_qty, c_sub))
                else:
                    keep.append((c_oid, c_qty, eligible, c_sub))
            self.carried[s] = keep
            if due:
                cols = list(zip(*due))
                parts.append((np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64),
                              np.array(cols[2], dtype=np.int64),
                              np.array(cols[3], dtype=np.float64),
                              np.array(cols[4], dtype=np.int64)))
        return parts

    def _place(self, ts: np.ndarray, sub_idx: SymbolRows,
               new_orders: list[NewOrders]) -> list[Due]:
        """Number the new orders and find their fill rows; carry those with none in this chunk.

        A market order fills on the first row of its symbol at or after submit + latency and
        never on its own row, as on the per-tick path.
        """
        eng = self.eng
        lat = eng.config.latency_ns
        parts: list[Due] = []
        # Order ids in global submission order, exactly as the per-tick path numbers them.
        all_gpos = np.concatenate([o[0] for o in new_orders])
        order_of = np.argsort(all_gpos, kind="stable")
        ids = np.empty(len(all_gpos), dtype=np.int64)
        ids[order_of] = np.arange(eng._next_id, eng._next_id + len(all_gpos))
        eng._next_id += len(all_gpos)
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
                self.carried[s].append((oid, q, sub_t + lat, sub_t))
        return parts

    def _fill_and_roll(self, ts: np.ndarray, price: np.ndarray, sub_idx: SymbolRows,
                       parts: list[Due]) -> None:
        """Apply the chunk's fills and day closes in event order, then leave the marks and the
        clock at the chunk's last row."""
        eng = self.eng
        bounds = self._day_bounds(ts)

        # Fills in (fill row, order id) order; each day's close falls between the fills before
        # its first row and those at or after it.
        fills: list[list[Any]] = [[] for _ in range(7)]
        at = np.empty(0, dtype=np.int64)
        if parts:
            at, oid_f, sym_f, qty_f, sub_f = (np.concatenate(col) for col in zip(*parts))
            order = np.lexsort((oid_f, at))
            at, qty_f = at[order], qty_f[order]
            mark = price[at]
            px = slipped(mark, np.where(qty_f > 0.0, 1.0, -1.0), eng.config.slippage_bps)
            fills = [oid_f[order].tolist(), sub_f[order].tolist(), sym_f[order].tolist(),
                     ts[at].tolist(), qty_f.tolist(), px.tolist(), mark.tolist()]
        self._apply_and_roll(ts, price, sub_idx, at, fills, bounds)

    def _apply_and_roll(self, ts: np.ndarray, mark: np.ndarray, sub_idx: SymbolRows,
                        at: np.ndarray, fills: list[list[Any]],
                        bounds: list[int] | None = None) -> None:
        """Apply fills (columns oid, submit ts, sym, ts, qty, price, mark; rows ``at``, in
        event order) and the chunk's day closes between them; leave marks and clock at the
        chunk's last row (``mark``: each row's mark; ``sub_idx``: each symbol's rows)."""
        eng = self.eng
        if bounds is None:
            bounds = self._day_bounds(ts)
        price = mark
        cuts = np.searchsorted(at, bounds, side="left").tolist() if len(at) else [0] * len(bounds)
        done = 0
        for b, cut in zip(bounds, cuts):
            if cut > done:
                self._apply_fills(fills, done, cut)
                done = cut
            self._roll(b, ts, price, sub_idx)
        if done < len(fills[0]):
            self._apply_fills(fills, done, len(fills[0]))
        pf = eng.portfolio
        for s, idx in sub_idx.items():
            pf.last[s] = float(price[-1] if idx is None else price[idx[-1]])
        eng._tick.ts = int(ts[-1])

    def _day_bounds(self, ts: np.ndarray) -> list[int]:
        """Day boundaries inside the chunk (first row of each new day): ts is sorted, so
        binary search from day to day."""
        eng = self.eng
        n = len(ts)
        bounds: list[int] = []
        first_day, last_day = int(ts[0]) // DAY_NS, int(ts[-1]) // DAY_NS
        if eng._day is None or first_day != eng._day:
            bounds.append(0)
        for day in range(first_day + 1, last_day + 1):
            b = int(np.searchsorted(ts, day * DAY_NS, side="left"))
            if b < n and (not bounds or b != bounds[-1]):
                bounds.append(b)
        return bounds

    def _apply_fills(self, fills: list[list[Any]], lo: int, hi: int) -> None:
        """Apply fills ``lo:hi`` (oid, submit ts, sym, ts, qty, price, trade price) in order.

        Without an ``on_fill`` nothing can observe the state between two fills, so the run goes
        through the portfolio at once; with one, each fill is made at its own tick: the symbol's
        mark and the clock move to it first, exactly as on the per-tick path.
        """
        eng = self.eng
        oids, subs, syms, ts, qtys, pxs, marks = (col[lo:hi] for col in fills)
        try:
            if not eng._has_on_fill:
                eng._record(oids, subs, syms, ts, qtys, pxs, [TAKER_CODE] * len(oids))
                return
            last = eng.portfolio.last
            for oid, sub, s, t, qty, px, mark in zip(oids, subs, syms, ts, qtys, pxs, marks):
                last[s] = mark
                eng._tick.ts = t
                eng._fill(oid, sub, s, t, qty, px, TAKER_CODE)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(f"{type(e).__name__} in on_fill: {e}") from e

    def _roll(self, b: int, ts: np.ndarray, price: np.ndarray,
              sub_idx: dict[int, np.ndarray | None]) -> None:
        """Close the day that ends before row ``b``: set marks as of row b-1, then roll."""
        eng = self.eng
        if b > 0:
            for s, idx in sub_idx.items():
                if idx is None:
                    eng.portfolio.last[s] = float(price[b - 1])
                else:
                    k = int(np.searchsorted(idx, b, side="left")) - 1
                    if k >= 0:
                        eng.portfolio.last[s] = float(price[idx[k]])
        eng._roll_day(int(ts[b]))

    def _call_on_batch(self, batch: pa.RecordBatch, s: int) -> np.ndarray:
        """``on_batch`` for symbol ``s``, its result checked: one finite target per row."""
        try:
            out = self.eng.strategy.on_batch(batch)
        except StrategyError:
            raise
        except Exception as e:
            raise StrategyError(
                f"{type(e).__name__} in on_batch ({self.eng.symbols[s]}, {batch.num_rows} rows): "
                f"{e}"
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
