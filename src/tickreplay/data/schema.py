"""The tick schema and the catalog layout: the one place that says what a partition looks like.

Layout: ``ticks/symbol=SYM/date=YYYY-MM-DD/data.parquet``. Columns: ``ts`` (int64 ns since the
Unix epoch, UTC), ``price`` (float64), ``size`` (float64, fractional for crypto and FX), and
optionally ``bid``, ``ask``, ``bid_size``, ``ask_size`` (float64), ``exchange``, ``conditions``
(string). Files are zstd-compressed and carry page checksums so a flipped bit fails the read.

L1 quotes are a dataset of their own beside the trades, not columns of the trade rows, because
quotes update several times per trade and on their own clock:
``quotes/symbol=SYM/date=YYYY-MM-DD/data.parquet`` with ``ts`` (int64 ns UTC, non-decreasing),
``bid``, ``ask`` (float64) and ``bid_size``, ``ask_size`` (float64, nullable: a quote without a
size has unlimited size), written with the same Parquet options as the trades.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

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

# The kinds of event the catalog holds, and the top-level folder of each. Trades keep the
# historical ``ticks/`` folder so every existing catalog, key and fingerprint stays valid.
EVENT_KINDS: tuple[str, ...] = ("trades", "quotes")
KIND_PREFIX: dict[str, str] = {"trades": "ticks", "quotes": "quotes"}

QUOTE_REQUIRED_COLUMNS: tuple[str, ...] = ("ts", "bid", "ask")

QUOTE_FIELDS: dict[str, pa.DataType] = {
    "ts": pa.int64(),
    "bid": pa.float64(),
    "ask": pa.float64(),
    "bid_size": pa.float64(),
    "ask_size": pa.float64(),
}

_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._\-]{1,32}$")
_KEY_RE = re.compile(r"^ticks/symbol=(?P<symbol>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/data\.parquet$")
_ANY_KEY_RE = re.compile(
    r"^(?P<prefix>ticks|quotes)/symbol=(?P<symbol>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})"
    r"/data\.parquet$"
)
_KIND_OF_PREFIX = {prefix: kind for kind, prefix in KIND_PREFIX.items()}


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


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`EVENT_KINDS` (a typo must not plan nothing)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; use one of {', '.join(EVENT_KINDS)}")
    return kind


def validate_events(events: Iterable[str]) -> tuple[str, ...]:
    """The requested event kinds, de-duplicated in :data:`EVENT_KINDS` order; none is an error.

    A string is refused rather than iterated: ``events="quotes"`` would otherwise read as the
    characters of the word.
    """
    if isinstance(events, str):
        raise TypeError(f"events must be a sequence of kinds, not the string {events!r}")
    wanted = {validate_kind(k) for k in events}
    if not wanted:
        raise ValueError(f"no event kinds given; use some of {', '.join(EVENT_KINDS)}")
    return tuple(k for k in EVENT_KINDS if k in wanted)


def quote_partition_key(symbol: str, date: dt.date | str) -> str:
    """Object key of one symbol-day partition of L1 quotes."""
    return kind_partition_key("quotes", symbol, date)


def kind_partition_key(kind: str, symbol: str, date: dt.date | str) -> str:
    """Object key of one symbol-day partition of ``kind`` (``trades`` gives :func:`partition_key`)."""
    trades_key = partition_key(symbol, date)
    if validate_kind(kind) == "trades":
        return trades_key
    return f"{KIND_PREFIX[kind]}/{trades_key.split('/', 1)[1]}"


def parse_event_partition_key(key: str) -> tuple[str, str, str] | None:
    """``(kind, symbol, 'YYYY-MM-DD')`` for a trades or quotes key, or ``None`` for other keys."""
    m = _ANY_KEY_RE.match(key)
    return (_KIND_OF_PREFIX[m["prefix"]], m["symbol"], m["date"]) if m else None


def quote_schema(columns: Iterable[str] = tuple(QUOTE_FIELDS)) -> pa.Schema:
    """Arrow schema of quote columns: ``ts``/``bid``/``ask`` required, sizes nullable."""
    cols = list(columns)
    unknown = [c for c in cols if c not in QUOTE_FIELDS]
    if unknown:
        raise ValueError(f"unknown quote column(s) {unknown}; known: {list(QUOTE_FIELDS)}")
    return pa.schema(
        [pa.field(c, QUOTE_FIELDS[c], nullable=c not in QUOTE_REQUIRED_COLUMNS) for c in cols]
    )


def schema_for(columns: list[str] | tuple[str, ...]) -> pa.Schema:
    """Arrow schema of the given tick columns (unknown names are an error)."""
    unknown = [c for c in columns if c not in TICK_FIELDS]
    if unknown:
        raise ValueError(f"unknown tick column(s) {unknown}; known: {sorted(TICK_FIELDS)}")
    return pa.schema([pa.field(c, TICK_FIELDS[c], nullable=c not in REQUIRED_COLUMNS) for c in columns])
