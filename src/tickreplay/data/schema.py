"""The tick schema and the catalog layout: the one place that says what a partition looks like.

Layout: ``ticks/symbol=SYM/date=YYYY-MM-DD/data.parquet``. Columns: ``ts`` (int64 ns since the
Unix epoch, UTC), ``price`` (float64), ``size`` (float64, fractional for crypto and FX), and
optionally ``bid``, ``ask``, ``bid_size``, ``ask_size`` (float64), ``exchange``, ``conditions``
(string). Files are zstd-compressed and carry page checksums so a flipped bit fails the read.
"""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

REQUIRED_COLUMNS: tuple[str, ...] = ("ts", "price", "size")

TICK_FIELDS: dict[str, pa.DataType] = {
    "ts": pa.int64(),
    "price": pa.float64(),
    "size": pa.float64(),
    "bid": pa.float64(),
    "ask": pa.float64(),
    "bid_size": pa.float64(),
    "ask_size": pa.float64(),
    "exchange": pa.string(),
    "conditions": pa.string(),
}

PARQUET_WRITE_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "write_page_checksum": True,
    "row_group_size": 262_144,
    "write_statistics": True,
}

_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._\-]{1,32}$")
_KEY_RE = re.compile(r"^ticks/symbol=(?P<symbol>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/data\.parquet$")


def validate_symbol(symbol: str) -> str:
    """Return the symbol if it is safe to use in a key (no slashes, no '=', bounded length)."""
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: use 1-32 of A-Z a-z 0-9 . _ -")
    return symbol


def partition_key(symbol: str, date: dt.date | str) -> str:
    """Object key of one symbol-day partition."""
    day = date.isoformat() if isinstance(date, dt.date) else dt.date.fromisoformat(date).isoformat()
    return f"ticks/symbol={validate_symbol(symbol)}/date={day}/data.parquet"


def parse_partition_key(key: str) -> tuple[str, str] | None:
    """``(symbol, 'YYYY-MM-DD')`` for a catalog key, or ``None`` if the key is not a partition."""
    m = _KEY_RE.match(key)
    return (m["symbol"], m["date"]) if m else None


def schema_for(columns: list[str] | tuple[str, ...]) -> pa.Schema:
    """Arrow schema of the given tick columns (unknown names are an error)."""
    unknown = [c for c in columns if c not in TICK_FIELDS]
    if unknown:
        raise ValueError(f"unknown tick column(s) {unknown}; known: {sorted(TICK_FIELDS)}")
    return pa.schema([pa.field(c, TICK_FIELDS[c], nullable=c not in REQUIRED_COLUMNS) for c in columns])
