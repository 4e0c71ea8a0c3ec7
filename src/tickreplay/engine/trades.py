"""The run's record: the trade table (one row per fill) and the daily equity curve.

Both paths append here through ``Engine._record`` and ``Engine._close_day`` only, so a run's
tables do not depend on which path (or which chunking, or a resume) produced the same fills.
"""

from __future__ import annotations

import datetime as dt
import math
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tickreplay.engine.portfolio import Portfolio

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
    ("liquidity", pa.string()),  # "taker", "maker", or "" where the fill model cannot tell
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
_NUMPY_OF: dict[str, type[np.generic]] = {"q": np.int64, "i": np.int32, "d": np.float64,
                                          "b": np.bool_, "B": np.uint8}
# Stored as codes, like symbols: an index into these names (orders.LIQUIDITY).
_CODED = {"symbol": "i", "liquidity": "B"}
LIQUIDITY_NAMES = ("", "taker", "maker")


def day_str(day: int) -> str:
    """ISO date of a day number (days since the epoch, UTC)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


class TradeLog:
    """The trade record, one typed array per column.

    Typed arrays, not lists of Python objects: 8 bytes a value instead of ~32, so a run with
    millions of fills keeps its trade record (and checkpoints) compact. ``columns`` is what a
    checkpoint stores, as is.
    """

    __slots__ = ("columns",)

    def __init__(self) -> None:
        self.columns: dict[str, array[Any]] = {name: array(_CODED.get(name, _ARRAY_CODE[t]))
                                               for name, t in TRADE_COLUMNS}

    def add(self, portfolio: Portfolio, oids: Sequence[int], submits: Sequence[int],
            syms: Sequence[int], ts: Sequence[int], qtys: Sequence[float],
            prices: Sequence[float], fees: Sequence[float], liqs: Sequence[int]) -> None:
        """Apply fills, in order, to ``portfolio`` and append one row per fill (``liqs``:
        liquidity codes, indices into ``LIQUIDITY_NAMES``)."""
        tr = self.columns
        portfolio.apply_fills(syms, qtys, prices, fees, tr["realized_pnl"], tr["is_close"],
                              tr["position"], tr["cash"])
        tr["order_id"].extend(oids)
        tr["submit_ts"].extend(submits)
        tr["ts"].extend(ts)
        tr["symbol"].extend(syms)
        tr["qty"].extend(qtys)
        tr["price"].extend(prices)
        tr["fee"].extend(fees)
        tr["liquidity"].extend(liqs)

    def table(self, symbols: Sequence[str]) -> pa.Table:
        """The trade table, symbol codes turned back into names."""
        return pa.table({name: self._column(name, t, symbols) for name, t in TRADE_COLUMNS})

    def _column(self, name: str, type: pa.DataType, symbols: Sequence[str]) -> pa.Array:
        """One column as Arrow, viewing the typed array's buffer (no per-value conversion)."""
        values: np.ndarray = np.frombuffer(self.columns[name],
                                           dtype=_NUMPY_OF[self.columns[name].typecode])
        if name in _CODED:  # stored as codes
            names = symbols if name == "symbol" else LIQUIDITY_NAMES
            return pa.DictionaryArray.from_arrays(
                pa.array(values if name == "symbol" else values.astype(np.int8)),
                pa.array(names, pa.string())).cast(type)
        return pa.array(values, type=type)


class EquityCurve:
    """One row per closed day; ``columns`` (lists) is what a checkpoint stores, as is."""

    __slots__ = ("columns",)

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name, _ in EQUITY_COLUMNS}

    def close_day(self, day: int, pf: Portfolio) -> None:
        """Record ``day``'s row from the portfolio as it stands (marks = last trades)."""
        mv = pf.market_value()
        e = self.columns
        e["date"].append(day_str(day))
        e["equity"].append(pf.cash + mv)
        e["cash"].append(pf.cash)
        e["market_value"].append(mv)
        e["realized_pnl"].append(math.fsum(pf.realized))
        e["unrealized_pnl"].append(pf.unrealized())
        e["fees"].append(pf.fees)

    def table(self) -> pa.Table:
        """The daily equity table."""
        return pa.table({name: pa.array(self.columns[name], type=t)
                         for name, t in EQUITY_COLUMNS})
