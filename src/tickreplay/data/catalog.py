"""Catalog model: partitions, data plans and the data fingerprint.

A ``DataPlan`` is the immutable answer to "which bytes does this backtest read": every
partition's key, size and sha256, plus a fingerprint over them. Two runs with the same
fingerprint read the same bytes, which is half of the reproducibility contract (the strategy
digest is the other half).

Partitions are of two kinds, ``trades`` (``ticks/...``) and L1 ``quotes`` (``quotes/...``). A
plan of trades only is exactly what it was before quotes existed: same partitions, same dict
form (``kind`` is left out for trades), same fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tickreplay.data.errors import EmptyPlanError
from tickreplay.data.objectstore import ObjectInfo, ObjectStore, sha256_file
from tickreplay.data.schema import (
    KIND_PREFIX,
    parse_event_partition_key,
    parse_partition_key,
    validate_events,
    validate_kind,
    validate_symbol,
)

# HEAD requests are latency-bound; a few in flight make planning thousands of S3 partitions
# take seconds instead of minutes, without hammering a small server.
_HEAD_THREADS = 8


@dataclass(frozen=True, slots=True)
class Partition:
    """One symbol-day Parquet file of the catalog: trades (``kind="trades"``) or L1 quotes.

    ``kind`` is the last field, with a default, so positional construction and plan dicts
    written before quotes existed still give the same trade partitions.
    """

    symbol: str
    date: str  # YYYY-MM-DD
    key: str
    size: int
    sha256: str
    kind: str = "trades"


@dataclass(frozen=True, slots=True)
class DataPlan:
    """Partitions of one backtest, sorted by (symbol, date, kind), and their fingerprint."""

    url: str
    symbols: tuple[str, ...]
    start: str
    end: str
    partitions: tuple[Partition, ...]
    fingerprint: str

    def for_symbol(self, symbol: str, kind: str = "trades") -> tuple[Partition, ...]:
        """This symbol's partitions of one kind (trades by default), in date order."""
        validate_kind(kind)
        return tuple(p for p in self.partitions if p.symbol == symbol and p.kind == kind)

    def kinds(self) -> tuple[str, ...]:
        """The event kinds the plan has partitions of, in ``EVENT_KINDS`` order."""
        present = {p.kind for p in self.partitions}
        return tuple(k for k in KIND_PREFIX if k in present)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (activities pass plans as plain dicts).

        A trade partition's dict has no ``kind`` entry, so a trades-only plan serialises to
        the very bytes it did before quotes existed (the plan JSON is stored as an artifact).
        """
        d = asdict(self)
        d["symbols"] = list(self.symbols)
        d["partitions"] = [_partition_dict(p) for p in self.partitions]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            url=d["url"],
            symbols=tuple(d["symbols"]),
            start=d["start"],
            end=d["end"],
            partitions=tuple(Partition(**p) for p in d["partitions"]),
            fingerprint=d["fingerprint"],
        )


def _partition_dict(p: Partition) -> dict[str, Any]:
    d = asdict(p)
    if p.kind == "trades":
        del d["kind"]
    return d


def _order(p: Partition) -> tuple[str, str, str]:
    # "quotes" < "trades": a day's quotes come before its trades, and trades-only lists keep
    # exactly the (symbol, date) order they always had.
    return (p.symbol, p.date, p.kind)


def fingerprint(partitions: tuple[Partition, ...] | list[Partition]) -> str:
    """sha256 over (key, size, sha256) of every partition, in (symbol, date, kind) order.

    The URL of the catalog is deliberately not part of it: the same bytes copied to another
    bucket are the same data. The kind is in the key (``ticks/`` or ``quotes/``), so a line per
    partition names it; for trades only the value is the one computed before quotes existed.
    """
    h = hashlib.sha256()
    for p in sorted(partitions, key=_order):
        h.update(f"{p.key}\t{p.size}\t{p.sha256}\n".encode())
    return h.hexdigest()


def list_partitions(store: ObjectStore) -> list[Partition]:
    """Every partition of the catalog, trades and quotes, sorted by (symbol, date, kind).

    One listing per kind. ``sha256`` is whatever the listing knows, often ``""``: listing is
    for humans (``tickreplay data ls``) and must not download the catalog. Plans use
    :func:`plan_data`.
    """
    parts = []
    for prefix in KIND_PREFIX.values():
        for info in store.list(f"{prefix}/"):
            parsed = parse_event_partition_key(info.key)
            if parsed:
                kind, sym, day = parsed
                parts.append(Partition(sym, day, info.key, info.size, info.sha256 or "", kind))
    return sorted(parts, key=_order)


def _listed(store: ObjectStore, kind: str, symbol: str, lo: str, hi: str
            ) -> list[tuple[str, ObjectInfo]]:
    """(date, listing) of ``symbol``'s partitions of ``kind`` dated within ``[lo, hi]``."""
    found = []
    for info in store.list(f"{KIND_PREFIX[kind]}/symbol={symbol}/"):
        parsed = parse_event_partition_key(info.key)
        if parsed and parsed[0] == kind and parsed[1] == symbol and lo <= parsed[2] <= hi:
            found.append((parsed[2], info))
    return found


def plan_data(
    store: ObjectStore,
    symbols: Iterable[str],
    start: dt.date | str,
    end: dt.date | str,
    events: Iterable[str] = ("trades",),
) -> DataPlan:
    """The partitions of ``symbols`` dated within ``[start, end]`` (inclusive), with sha256s.

    The sha256 comes from the object's metadata when the writer recorded it, otherwise it is
    computed from the bytes (local files, or objects uploaded by foreign tools), because a
    fingerprint must name content, not just sizes. Symbols without data in range are planned
    as they are (a backtest may legitimately span a listing date).

    Args:
        events: The kinds to plan, ``"trades"`` and/or ``"quotes"``. Quotes only is valid
            (FX has no trade data); trades only, the default, plans exactly what it always did.

    Raises:
        ValueError: No symbols, an invalid symbol, date or event kind, or ``start > end``.
        EmptyPlanError: Nothing at all matched, of any requested kind.
    """
    kinds = validate_events(events)
    syms = sorted({validate_symbol(s) for s in symbols})
    if not syms:
        raise ValueError("no symbols given")
    first, last = _as_date(start), _as_date(end)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    lo, hi = first.isoformat(), last.isoformat()

    found: list[tuple[str, str, ObjectInfo, str]] = []
    for sym in syms:
        for kind in kinds:
            found.extend((sym, day, info, kind) for day, info in _listed(store, kind, sym, lo, hi))
    if not found:
        what = "" if kinds == ("trades",) else f" ({' or '.join(kinds)})"
        raise EmptyPlanError(
            f"no partitions{what} in {store.url} for symbols {','.join(syms)} "
            f"between {lo} and {hi}"
        )
    with ThreadPoolExecutor(max_workers=_HEAD_THREADS) as pool:
        parts = list(pool.map(lambda f: _resolve(store, *f), found))
    parts.sort(key=_order)
    return DataPlan(store.url, tuple(syms), lo, hi, tuple(parts), fingerprint(parts))


def missing_symbols(store: ObjectStore, symbols: list[str], start: dt.date, end: dt.date,
                    events: Iterable[str] = ("trades",)) -> list[str]:
    """The symbols that have no partition of any kind in ``events`` within ``[start, end]``.

    Why a listing per symbol rather than ``plan_data``: planning hashes every partition, and a
    typo in a symbol should be reported at once (CLI, job API), before any data is read. A
    symbol with quotes but no trades is not missing from a run over quotes (FX).
    """
    kinds = validate_events(events)
    lo, hi = start.isoformat(), end.isoformat()
    missing = []
    for sym in dict.fromkeys(symbols):
        if kinds == ("trades",):
            # Exactly the historical check (one listing, the trades key parser).
            keys = (parse_partition_key(o.key) for o in store.list(f"ticks/symbol={sym}/"))
            if not any(k and k[0] == sym and lo <= k[1] <= hi for k in keys):
                missing.append(sym)
        elif not any(_listed(store, kind, sym, lo, hi) for kind in kinds):
            missing.append(sym)
    return missing


def _as_date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise TypeError(f"expected a date, got the datetime {value!r}")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid date {value!r}: use YYYY-MM-DD") from None


def _resolve(store: ObjectStore, symbol: str, date: str, listed: ObjectInfo, kind: str
             ) -> Partition:
    """The partition with its size and sha256, as HEAD reports them or hashed from the bytes."""
    info = store.head(listed.key)
    if info is None:
        raise FileNotFoundError(f"{store.url}/{listed.key} was listed but is gone")
    sha = info.sha256 or _hash_object(store, listed.key)
    return Partition(symbol, date, listed.key, info.size, sha, kind)


def _hash_object(store: ObjectStore, key: str) -> str:
    local = store.local_path(key)
    if local is not None:
        return sha256_file(local)
    with tempfile.TemporaryDirectory(prefix="tickreplay-hash-") as tmp:
        dest = Path(tmp) / "object"
        store.download(key, dest)
        return sha256_file(dest)
