"""Orders, fills and the slippage rule shared by both paths.

The fill rules are documented in ``docs/semantics.md``; ``core.py`` matches orders tick by tick,
``vector.py`` computes the vectorised path's fills, and both price market fills with
:func:`slipped` below, the rule's only implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

MARKET, LIMIT, STOP = "market", "limit", "stop"
GTC, IOC, DAY = "gtc", "ioc", "day"
ORDER_TYPES = (MARKET, LIMIT, STOP)
TIFS = (GTC, IOC, DAY)
DAY_NS = 86_400 * 1_000_000_000  # a day is the UTC date of a tick: ts // DAY_NS

_Px = TypeVar("_Px", float, np.ndarray)


def slipped(mark: _Px, side: _Px, slippage_bps: float) -> _Px:
    """The price of a market fill (or a triggered stop): ``mark * (1 + side * slippage_bps / 1e4)``.

    ``side`` is +1.0 for a buy, -1.0 for a sell: the trade price moved against the taker. One
    function for both paths, fed floats per tick and arrays per vectorised chunk, so both run the
    same IEEE operations in the same order and give the same bits. ``1.0 + (-1.0 * s)`` is exactly
    ``1.0 - s`` (negation is exact), so sells price as they always did.
    """
    return mark * (1.0 + side * (slippage_bps / 10_000.0))


class Order:
    """An open order. ``eligible_ts`` = submit time + latency: the earliest tick it may fill on."""

    __slots__ = (
        "day",
        "eligible_ts",
        "id",
        "limit",
        "qty",
        "stop",
        "submit_ts",
        "sym",
        "tif",
        "type",
    )

    def __init__(self, id: int, sym: int, qty: float, type: str, limit: float | None,
                 stop: float | None, tif: str, submit_ts: int, eligible_ts: int, day: int) -> None:
        self.id = id
        self.sym = sym
        self.qty = qty
        self.type = type
        self.limit = limit
        self.stop = stop
        self.tif = tif
        self.submit_ts = submit_ts
        self.eligible_ts = eligible_ts
        self.day = day

    def __getstate__(self) -> tuple:
        """A tuple in slot order: open orders go into every checkpoint, so keep them small
        (``__slots__`` classes have no ``__dict__`` to pickle anyway). Part of the checkpoint
        format: the slots' order must not change."""
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"Order(id={self.id}, qty={self.qty}, type={self.type}, tif={self.tif})"


@dataclass(frozen=True, slots=True)
class Fill:
    """An execution as the strategy's ``on_fill`` sees it (it satisfies the API's ``FillRecord``).

    It stays here rather than in ``tickreplay.strategy.api``: strategies may keep fills in their
    state, so this class's path is pickled into checkpoints, whose bytes must not change.
    """

    order_id: int
    ts: int
    symbol: str
    qty: float
    price: float
    fee: float
