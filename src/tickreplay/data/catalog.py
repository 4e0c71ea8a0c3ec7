"""Catalog model: partitions, data plans and the data fingerprint.

A ``DataPlan`` is the immutable answer to "which bytes does this backtest read": every
partition's key, size and sha256, plus a fingerprint over them. Two runs with the same
fingerprint read the same bytes, which is half of the reproducibility contract (the strategy
digest is the other half).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any


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
