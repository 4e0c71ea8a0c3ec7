"""Performance metrics of a backtest: the numbers quants compare across LEAN, pyfolio, quantstats.

Everything is computed from a daily equity curve (one mark per trading day, at that day's last
trade) and, optionally, the list of fills. Conventions are spelled out in ``docs/metrics.md``;
the short version: simple daily returns, Sharpe = mean/std(ddof=1) x sqrt(P), Sortino with the
quantstats downside deviation, max drawdown as a negative fraction.

Why degenerate cases give ``None`` rather than NaN or an exception: the result lands in
``metrics.json`` and in the result hash, which must be strict JSON (NaN is not JSON) and must
not fail a finished backtest because a strategy never traded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

Metric = float | int | None

# A daily standard deviation at or below this is float noise, not risk: a curve compounding at
# a constant rate produces returns that differ only in the last bits (std ~1e-17), and dividing
# by that would report a Sharpe ratio of 1e15.
ZERO_STD = 1e-12

TRADE_COLUMNS: tuple[str, ...] = ("qty", "price", "fee", "realized_pnl", "is_close")


def compute(
    daily_equity: Any,
    trades: Any = None,
    *,
    initial_equity: float | None = None,
    rf: float = 0.0,
    periods_per_year: int = 252,
    exposure_days: int | None = None,
) -> dict[str, Metric]:
    """All metrics of one backtest, as a flat JSON-safe dict (``None`` where undefined).

    Args:
        daily_equity: One equity value per trading day: a pandas Series indexed by date, a
            sequence or 1-D array of floats, or a pyarrow Table / pandas DataFrame with columns
            ``date`` and ``equity``. Dates, when present, must be strictly increasing; they turn
            the drawdown duration into calendar days.
        trades: Fills with columns ``qty`` (signed), ``price``, ``fee``, ``realized_pnl`` and
            ``is_close`` (a pyarrow Table or anything ``pandas.DataFrame`` accepts). ``None``
            means "not known", so the trade metrics are ``None`` rather than zero.
        initial_equity: Equity before the first day (the engine passes its initial cash), so the
            first day's PnL is a return too.
        rf: Annual risk-free rate, subtracted per period as ``rf / periods_per_year``.
        periods_per_year: Periods per year used to annualise (252 trading days).
        exposure_days: Days on which a position was held at some time; gives ``exposure``.

    Returns:
        Keys in a fixed order: num_days, final_equity, total_return, cagr, annual_volatility,
        sharpe, sortino, max_drawdown, max_drawdown_duration_days, calmar, num_trades,
        num_closed, win_rate, profit_factor, avg_win, avg_loss, fees, turnover, exposure.

    Raises:
        ValueError: The input itself is wrong (non-finite equity, unsorted dates, missing trade
            columns, nulls), as opposed to merely too short to say anything.
        TypeError: ``daily_equity`` is none of the accepted types.
    """
    if periods_per_year <= 0:
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year}")
    values, days = _equity_curve(daily_equity)
    curve, times = values, days
    if initial_equity is not None:
        if not math.isfinite(initial_equity):
            raise ValueError(f"initial_equity must be finite, got {initial_equity}")
        curve = np.concatenate(([float(initial_equity)], values))
        # The starting cash carries the first day's date: it is the equity at that day's open.
        times = None if days is None else np.concatenate((days[:1], days))
    if times is None:
        times = np.arange(len(curve), dtype=np.int64)

    out: dict[str, Any] = {
        "num_days": len(values),
        "final_equity": float(values[-1]) if len(values) else None,
    }
    out.update(_return_metrics(curve, rf, periods_per_year))
    out.update(_drawdown_metrics(curve, times))
    cagr, mdd = out["cagr"], out["max_drawdown"]
    out["calmar"] = cagr / abs(mdd) if cagr is not None and mdd is not None and mdd < 0 else None
    out.update(_trade_metrics(trades, values))
    out["exposure"] = (
        exposure_days / len(values) if exposure_days is not None and len(values) else None
    )
    return {k: _json_safe(v) for k, v in out.items()}


def _equity_curve(daily_equity: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Equity values as float64 and, if the input carries dates, days since the epoch."""
    if isinstance(daily_equity, pa.Table):
        daily_equity = daily_equity.to_pandas()
    if isinstance(daily_equity, pd.DataFrame):
        missing = [c for c in ("date", "equity") if c not in daily_equity.columns]
        if missing:
            raise ValueError(
                f"daily equity table lacks column(s) {missing}; needs 'date' and 'equity'"
            )
        daily_equity = pd.Series(
            daily_equity["equity"].to_numpy(), index=daily_equity["date"].to_numpy()
        )

    days: np.ndarray | None = None
    if isinstance(daily_equity, pd.Series):
        values = daily_equity.to_numpy(dtype=np.float64)
        days = _index_days(daily_equity.index)
    elif isinstance(daily_equity, (np.ndarray, Sequence)) and not isinstance(daily_equity, str):
        values = np.asarray(daily_equity, dtype=np.float64)
    else:
        raise TypeError(f"unsupported daily equity type {type(daily_equity).__name__}")

    if values.ndim != 1:
        raise ValueError(f"daily equity must be one-dimensional, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(
            f"daily equity has a non-finite value {values[bad[0]]} at position {bad[0]}"
        )
    if days is not None and len(days) > 1:
        back = np.flatnonzero(np.diff(days) <= 0)
        if len(back):
            day = np.datetime64(int(days[back[0] + 1]), "D")
            raise ValueError(
                f"daily equity dates must be strictly increasing; {day} does not follow its predecessor"
            )
    return values, days


def _index_days(index: pd.Index) -> np.ndarray | None:
    """Days since 1970-01-01 for a date-like index; ``None`` for a positional one."""
    if pd.api.types.is_integer_dtype(index.dtype) or len(index) == 0:
        return None
    stamps = pd.DatetimeIndex(pd.to_datetime(index))
    if stamps.tz is not None:
        stamps = stamps.tz_localize(None)  # calendar days as seen where the index was written
    return stamps.to_numpy().astype("datetime64[D]").astype(np.int64)


def _return_metrics(curve: np.ndarray, rf: float, periods: int) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(
        ("total_return", "cagr", "annual_volatility", "sharpe", "sortino")
    )
    if len(curve) < 2 or curve[0] <= 0:
        return out
    total = float(curve[-1] / curve[0] - 1.0)
    out["total_return"] = total
    growth = 1.0 + total
    if growth == 0.0:
        out["cagr"] = -1.0
    elif growth > 0.0:
        try:
            out["cagr"] = growth ** (periods / (len(curve) - 1)) - 1.0
        except OverflowError:
            out["cagr"] = None  # a short, explosive curve annualises beyond float range

    if len(curve) < 3 or np.any(curve[:-1] <= 0):
        return out  # fewer than 2 returns, or a return on non-positive equity: no risk figures
    r = curve[1:] / curve[:-1] - 1.0
    ann = math.sqrt(periods)
    std_r = float(np.std(r, ddof=1))
    out["annual_volatility"] = std_r * ann if std_r > ZERO_STD else 0.0
    x = r - rf / periods
    std_x = float(np.std(x, ddof=1))
    if std_x > ZERO_STD:
        out["sharpe"] = float(np.mean(x)) / std_x * ann
    downside = math.sqrt(float(np.mean(np.minimum(x, 0.0) ** 2)))
    if downside > ZERO_STD:
        out["sortino"] = float(np.mean(x)) / downside * ann
    return out


def _drawdown_metrics(curve: np.ndarray, times: np.ndarray) -> dict[str, float | int | None]:
    if len(curve) == 0 or curve[0] <= 0:
        return {"max_drawdown": None, "max_drawdown_duration_days": None}
    depth = float(np.min(curve / np.maximum.accumulate(curve) - 1.0))
    # One pass: a stretch runs from the last value at the running peak to the first value that
    # regains it; a stretch still open at the end counts up to the last mark.
    longest, peak, underwater = 0, 0, False
    for i in range(1, len(curve)):
        if curve[i] >= curve[peak]:
            if underwater:
                longest = max(longest, int(times[i] - times[peak]))
            peak, underwater = i, False
        else:
            underwater = True
    if underwater:
        longest = max(longest, int(times[-1] - times[peak]))
    return {"max_drawdown": depth, "max_drawdown_duration_days": longest}


def _trade_metrics(trades: Any, values: np.ndarray) -> dict[str, float | int | None]:
    keys = (
        "num_trades",
        "num_closed",
        "win_rate",
        "profit_factor",
        "avg_win",
        "avg_loss",
        "fees",
        "turnover",
    )
    if trades is None:
        return dict.fromkeys(keys)
    cols = _trade_columns(trades)
    pnl = cols["realized_pnl"][cols["is_close"]]
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    gross_loss = -float(losses.sum())
    mean_equity = float(values.mean()) if len(values) else 0.0
    traded = float(np.abs(cols["qty"] * cols["price"]).sum())
    return {
        "num_trades": len(cols["qty"]),
        "num_closed": len(pnl),
        "win_rate": len(wins) / len(pnl) if len(pnl) else None,
        "profit_factor": float(wins.sum()) / gross_loss if gross_loss > 0 else None,
        "avg_win": float(wins.mean()) if len(wins) else None,
        "avg_loss": float(losses.mean()) if len(losses) else None,
        "fees": float(cols["fee"].sum()),
        "turnover": traded / mean_equity if mean_equity > 0 else None,
    }


def _trade_columns(trades: Any) -> dict[str, np.ndarray]:
    """The trade columns metrics need, as NumPy arrays, with a clear error for bad input."""
    if isinstance(trades, pa.Table):
        missing = [c for c in TRADE_COLUMNS if c not in trades.column_names]
        frame = None if missing else trades.select(list(TRADE_COLUMNS)).to_pandas()
    else:
        frame = pd.DataFrame(trades)
        missing = [c for c in TRADE_COLUMNS if c not in frame.columns]
    if missing or frame is None:
        raise ValueError(f"trades lack column(s) {missing}; need {list(TRADE_COLUMNS)}")
    out: dict[str, np.ndarray] = {}
    for name in TRADE_COLUMNS:
        column = frame[name]
        if column.isna().any():
            raise ValueError(
                f"trades column {name!r} has a null at row {int(np.argmax(column.isna().to_numpy()))}"
            )
        out[name] = column.to_numpy(dtype=bool if name == "is_close" else np.float64)
    return out


def _json_safe(value: Any) -> Metric:
    """Plain Python numbers only; NaN/inf become ``None`` (strict JSON has neither)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    f = float(value)
    return f if math.isfinite(f) else None
