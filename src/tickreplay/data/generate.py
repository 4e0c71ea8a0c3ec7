"""Deterministic synthetic tick data: the demo's and the test suite's market.

Same arguments give byte-identical Parquet files, on any run and any machine with the same
pyarrow: the data fingerprint, and therefore every result hash computed over it, depends on
that. Each symbol has its own random stream (seeded from ``seed`` and the symbol's crc32) and
consumes it day by day, so adding a symbol or extending the date range never changes the data
another symbol or an earlier day already had.

L1 quote partitions (``quote_partitions=True``) are drawn from a separate random stream per
symbol-day, seeded from (seed, symbol, date, "quotes"), and only *read* the day's trades (the
mid follows their price path): the trade files are byte-identical with or without quotes.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Iterator
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from tickreplay.data.catalog import Partition
from tickreplay.data.objectstore import ObjectStore
from tickreplay.data.partitions import write_partition
from tickreplay.data.schema import quote_schema, schema_for, validate_symbol

NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN = dt.time(9, 30)
SESSION_CLOSE = dt.time(16, 0)

# A daily volatility of 1.75 % sits in the 1.5-2 % range typical of large US equities.
DAILY_VOL = 0.0175
# Lognormal trade sizes with a median of ~100 shares and a heavy right tail, like real prints.
SIZE_LOG_MEAN = np.log(100.0)
SIZE_LOG_SIGMA = 1.0
# Half-spreads in cents drawn from 1..MAX_HALF_SPREAD_CENTS: a tight but not constant book.
MAX_HALF_SPREAD_CENTS = 3
LOTS_LOG_MEAN = np.log(5.0)

# Quote partitions: L1 updates are several times as frequent as prints in liquid equities.
QUOTES_PER_TRADE = 3
# The quoted spread is about this many basis points of the price at normal volatility (at
# least one cent), and scales with the recent realised volatility of the trades.
BASE_SPREAD_BPS = 1.5
# Recent volatility: an exponentially weighted mean of squared trade log returns over about
# this many trades, so a burst of large moves widens the book for a while after it.
VOL_SPAN_TRADES = 50
_QUOTES_SALT = zlib.crc32(b"quotes")


def trading_days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Weekdays in ``[start, end]`` (no exchange holiday calendar: the data is synthetic)."""
    day = start
    while day <= end:
        if day.weekday() < 5:
            yield day
        day += dt.timedelta(days=1)


def session_bounds_ns(day: dt.date) -> tuple[int, int]:
    """UTC ns of the 09:30 open and 16:00 close in New York on ``day`` (DST-correct)."""
    open_ = dt.datetime.combine(day, SESSION_OPEN, tzinfo=NEW_YORK)
    close = dt.datetime.combine(day, SESSION_CLOSE, tzinfo=NEW_YORK)
    return _epoch_ns(open_), _epoch_ns(close)


def _epoch_ns(t: dt.datetime) -> int:
    # Integer arithmetic: going through float seconds would lose nanoseconds.
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _symbol_rng(seed: int, symbol: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(symbol.encode())])


def _quote_rng(seed: int, symbol: str, day: dt.date) -> np.random.Generator:
    # Per symbol-day (not per symbol) so a day's quotes never depend on which earlier days were
    # generated, and never consume the trades' stream.
    return np.random.default_rng([seed, zlib.crc32(symbol.encode()), day.toordinal(), _QUOTES_SALT])


def _recent_vol(log_price: np.ndarray) -> np.ndarray:
    """Per trade, the EWMA of squared log returns up to and including it, as a std dev."""
    r2 = np.square(np.diff(log_price, prepend=log_price[:1]))
    alpha = 2.0 / (VOL_SPAN_TRADES + 1.0)
    # A plain loop-free EWMA would need scipy; this recursion is over one day's trades only.
    out = np.empty_like(r2)
    acc = float(np.mean(r2)) if r2.size else 0.0  # warm start at the day's average
    for i, x in enumerate(r2.tolist()):
        acc = (1.0 - alpha) * acc + alpha * x
        out[i] = acc
    return np.sqrt(out)


def _quote_table(rng: np.random.Generator, day: dt.date, trades: pa.Table, n: int) -> pa.Table:
    """``n`` L1 quotes over the session whose mid follows the day's trade prices.

    The mid at a quote is the trade price path interpolated at its time; the spread is
    ``BASE_SPREAD_BPS`` of the price scaled by the trades' recent volatility relative to the
    day's, with some noise; bid and ask are on the trades' cent grid, never crossed or locked.
    """
    open_ns, close_ns = session_bounds_ns(day)
    ts = np.sort(rng.integers(open_ns, close_ns, size=n, dtype=np.int64))
    trade_ts = trades.column("ts").to_numpy()
    trade_px = trades.column("price").to_numpy()
    # Offsets from the open fit a float64 exactly (a session is < 2**53 ns).
    mid = np.interp((ts - open_ns).astype(np.float64), (trade_ts - open_ns).astype(np.float64),
                    trade_px)
    vol = _recent_vol(np.log(trade_px))
    last = np.clip(np.searchsorted(trade_ts, ts, side="right") - 1, 0, trade_ts.size - 1)
    typical = float(np.mean(vol)) or 1.0
    ratio = vol[last] / typical
    noise = rng.lognormal(0.0, 0.25, n)
    half_cents = np.maximum(mid * 100.0 * BASE_SPREAD_BPS / 1e4 * ratio * noise / 2.0, 0.5)
    bid_cents = np.maximum(np.floor(mid * 100.0 - half_cents + 1e-9), 1.0)
    ask_cents = np.maximum(np.ceil(mid * 100.0 + half_cents - 1e-9), bid_cents + 1.0)
    # Displayed sizes come in round lots of 100 shares, at least one lot.
    bid_size = np.maximum(np.rint(rng.lognormal(LOTS_LOG_MEAN, 0.8, n)), 1.0) * 100.0
    ask_size = np.maximum(np.rint(rng.lognormal(LOTS_LOG_MEAN, 0.8, n)), 1.0) * 100.0
    arrays = [ts, bid_cents / 100.0, ask_cents / 100.0, bid_size, ask_size]
    return pa.Table.from_arrays([pa.array(a) for a in arrays], schema=quote_schema())


def _day_table(
    rng: np.random.Generator, day: dt.date, log_price: float, n: int, quotes: bool
) -> tuple[pa.Table, float]:
    """One symbol-day of ticks and the walk's log price at the close (carried to the next day)."""
    open_ns, close_ns = session_bounds_ns(day)
    ts = np.sort(rng.integers(open_ns, close_ns, size=n, dtype=np.int64))
    # Per-tick volatility such that n steps add up to DAILY_VOL; the walk runs in log space so
    # prices stay positive and moves scale with the price level.
    steps = rng.standard_normal(n) * (DAILY_VOL / np.sqrt(n))
    log_path = log_price + np.cumsum(steps)
    cents = np.maximum(np.rint(np.exp(log_path) * 100.0), 1.0)
    price = cents / 100.0
    size = np.maximum(np.rint(rng.lognormal(SIZE_LOG_MEAN, SIZE_LOG_SIGMA, n)), 1.0)
    columns: dict[str, np.ndarray] = {"ts": ts, "price": price, "size": size}
    if quotes:
        below = rng.integers(0, MAX_HALF_SPREAD_CENTS + 1, n)
        above = rng.integers(1, MAX_HALF_SPREAD_CENTS + 1, n)
        bid_cents = np.maximum(cents - below, 1.0)
        # The ask is at least one cent above the bid even where the bid was clamped at 1 cent.
        ask_cents = np.maximum(cents + above, bid_cents + 1.0)
        columns["bid"] = bid_cents / 100.0
        columns["ask"] = ask_cents / 100.0
        # Displayed sizes come in round lots of 100 shares, at least one lot.
        columns["bid_size"] = np.maximum(np.rint(rng.lognormal(LOTS_LOG_MEAN, 0.8, n)), 1.0) * 100.0
        columns["ask_size"] = np.maximum(np.rint(rng.lognormal(LOTS_LOG_MEAN, 0.8, n)), 1.0) * 100.0
    table = pa.Table.from_arrays(list(columns.values()), schema=schema_for(list(columns)))
    return table, float(log_path[-1])


def generate(
    store: ObjectStore,
    symbols: Iterable[str],
    start: dt.date | str,
    end: dt.date | str,
    *,
    ticks_per_day: int,
    seed: int,
    quotes: bool = False,
    quote_partitions: bool = False,
) -> list[Partition]:
    """Write synthetic trades (and optionally quotes) for every symbol and weekday in the range.

    Args:
        store: Where the catalog lives; partitions go to ``ticks/symbol=SYM/date=D/data.parquet``.
        symbols: Ticker names; each gets an independent random stream.
        start: First calendar day (inclusive).
        end: Last calendar day (inclusive).
        ticks_per_day: Trades per symbol per session, spread uniformly over 09:30-16:00 NY time.
        seed: Master seed; with the symbol it fully determines the symbol's data.
        quotes: Also write ``bid``/``ask``/``bid_size``/``ask_size`` columns on each trade row
            (the older, inline form; it changes the trade files).
        quote_partitions: Also write an L1 quote partition per symbol-day
            (``quotes/symbol=SYM/date=D/...``), ``QUOTES_PER_TRADE`` quotes per trade, from
            their own random stream: the trade files stay exactly as without it.

    Returns:
        The partitions written, in (symbol, date, kind) order, with each file's size and sha256.
    """
    if ticks_per_day < 1:
        raise ValueError(f"ticks_per_day must be >= 1, got {ticks_per_day}")
    first = dt.date.fromisoformat(start) if isinstance(start, str) else start
    last = dt.date.fromisoformat(end) if isinstance(end, str) else end
    if last < first:
        raise ValueError(f"end {last} is before start {first}")
    written: list[Partition] = []
    for symbol in sorted({validate_symbol(s) for s in symbols}):
        rng = _symbol_rng(seed, symbol)
        # The first draw fixes the starting level (20..500) so symbols trade at distinct prices.
        log_price = float(np.log(rng.uniform(20.0, 500.0)))
        for day in trading_days(first, last):
            table, log_price = _day_table(rng, day, log_price, ticks_per_day, quotes)
            if quote_partitions:
                q = _quote_table(_quote_rng(seed, symbol, day), day, table,
                                 QUOTES_PER_TRADE * ticks_per_day)
                written.append(write_partition(store, symbol, day, q, kind="quotes"))
            written.append(write_partition(store, symbol, day, table))
    return written
