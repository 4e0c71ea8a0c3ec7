"""Catalog model: partitions, data plans and the data fingerprint.

A ``DataPlan`` is the immutable answer to "which bytes does this backtest read": every
partition's key, size and sha256, plus a fingerprint over them. Two runs with the same
fingerprint read the same bytes, which is half of the reproducibility contract (the strategy
digest is the other half).
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
from tickreplay.data.schema import parse_partition_key, validate_symbol

# HEAD requests are latency-bound; a few in flight make planning thousands of S3 partitions
# take seconds instead of minutes, without hammering a small server.
_HEAD_THREADS = 8


@dataclass(frozen=True, slots=True)
class Partition:
    """One symbol-day Parquet file of the catalog."""

    symbol: str
    date: str  # YYYY-MM-DD
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class DataPlan:
    """Partitions of one backtest, sorted by (symbol, date), and their fingerprint."""

    url: str
    symbols: tuple[str, ...]
    start: str
    end: str
    partitions: tuple[Partition, ...]
    fingerprint: str

    def for_symbol(self, symbol: str) -> tuple[Partition, ...]:
        """This symbol's partitions in date order."""
        return tuple(p for p in self.partitions if p.symbol == symbol)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (activities pass plans as plain dicts)."""
        d = asdict(self)
        d["symbols"] = list(self.symbols)
        d["partitions"] = [asdict(p) for p in self.partitions]
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


def fingerprint(partitions: tuple[Partition, ...] | list[Partition]) -> str:
    """sha256 over (key, size, sha256) of every partition, in (symbol, date) order.

    The URL of the catalog is deliberately not part of it: the same bytes copied to another
    bucket are the same data.
    """
    h = hashlib.sha256()
    for p in sorted(partitions, key=lambda p: (p.symbol, p.date)):
        h.update(f"{p.key}\t{p.size}\t{p.sha256}\n".encode())
    return h.hexdigest()


def list_partitions(store: ObjectStore) -> list[Partition]:
    """Every partition of the catalog, sorted by (symbol, date), from one listing.

    ``sha256`` is whatever the listing knows, often ``""``: listing is for humans
    (``tickreplay data ls``) and must not download the catalog. Plans use :func:`plan_data`.
    """
    parts = []
    for info in store.list("ticks/"):
        parsed = parse_partition_key(info.key)
        if parsed:
            parts.append(Partition(parsed[0], parsed[1], info.key, info.size, info.sha256 or ""))
    return sorted(parts, key=lambda p: (p.symbol, p.date))


def plan_data(
    store: ObjectStore, symbols: Iterable[str], start: dt.date | str, end: dt.date | str
) -> DataPlan:
    """The partitions of ``symbols`` dated within ``[start, end]`` (inclusive), with sha256s.

    The sha256 comes from the object's metadata when the writer recorded it, otherwise it is
    computed from the bytes (local files, or objects uploaded by foreign tools), because a
    fingerprint must name content, not just sizes. Symbols without data in range are planned
    as they are (a backtest may legitimately span a listing date).

    Raises:
        ValueError: No symbols, an invalid symbol or date, or ``start > end``.
        EmptyPlanError: Nothing at all matched.
    """
    syms = sorted({validate_symbol(s) for s in symbols})
    if not syms:
        raise ValueError("no symbols given")
    first, last = _as_date(start), _as_date(end)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    lo, hi = first.isoformat(), last.isoformat()

    found: list[tuple[str, str, ObjectInfo]] = []
    for sym in syms:
        for info in store.list(f"ticks/symbol={sym}/"):
            parsed = parse_partition_key(info.key)
            if parsed and parsed[0] == sym and lo <= parsed[1] <= hi:
                found.append((sym, parsed[1], info))
    if not found:
        raise EmptyPlanError(
            f"no partitions in {store.url} for symbols {','.join(syms)} between {lo} and {hi}"
        )
    with ThreadPoolExecutor(max_workers=_HEAD_THREADS) as pool:
        parts = list(pool.map(lambda f: _resolve(store, *f), found))
    parts.sort(key=lambda p: (p.symbol, p.date))
    return DataPlan(store.url, tuple(syms), lo, hi, tuple(parts), fingerprint(parts))


def missing_symbols(store: ObjectStore, symbols: list[str], start: dt.date, end: dt.date
                    ) -> list[str]:
    """The symbols that have no partition dated within ``[start, end]`` in the catalog.

    Why a listing per symbol rather than ``plan_data``: planning hashes every partition, and a
    typo in a symbol should be reported at once (CLI, job API), before any data is read.
    """
    from tickreplay.data.schema import parse_partition_key

    lo, hi = start.isoformat(), end.isoformat()
    missing = []
    for sym in dict.fromkeys(symbols):
        keys = (parse_partition_key(o.key) for o in store.list(f"ticks/symbol={sym}/"))
        if not any(k and k[0] == sym and lo <= k[1] <= hi for k in keys):
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


def _resolve(store: ObjectStore, symbol: str, date: str, listed: ObjectInfo) -> Partition:
    """The partition with its size and sha256, as HEAD reports them or hashed from the bytes."""
    info = store.head(listed.key)
    if info is None:
        raise FileNotFoundError(f"{store.url}/{listed.key} was listed but is gone")
    sha = info.sha256 or _hash_object(store, listed.key)
    return Partition(symbol, date, listed.key, info.size, sha)


def _hash_object(store: ObjectStore, key: str) -> str:
    local = store.local_path(key)
    if local is not None:
        return sha256_file(local)
    with tempfile.TemporaryDirectory(prefix="tickreplay-hash-") as tmp:
        dest = Path(tmp) / "object"
        store.download(key, dest)
        return sha256_file(dest)
