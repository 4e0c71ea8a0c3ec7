"""Orders, fills and the slippage rule shared by both paths.

The fill rules are documented in ``docs/semantics.md``; ``core.py`` matches orders tick by tick,
``vector.py`` computes the vectorised path's fills, and both price market fills with
:func:`slipped` below, the rule's only implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

MARKET, LIMIT, STOP, STOP_LIMIT = "market", "limit", "stop", "stop_limit"
GTC, IOC, DAY, FOK, GTD = "gtc", "ioc", "day", "fok", "gtd"
ORDER_TYPES = (MARKET, LIMIT, STOP, STOP_LIMIT)
TIFS = (GTC, IOC, DAY, FOK, GTD)
DAY_NS = 86_400 * 1_000_000_000  # a day is the UTC date of a tick: ts // DAY_NS
TAKER, MAKER = "taker", "maker"
LIQUIDITY = ("", TAKER, MAKER)  # the trade record stores the index: 0 = not known
# Lifecycle statuses reported to ``on_order`` (docs/semantics.md, "Order lifecycle").
ACCEPTED, REJECTED, PARTIALLY_FILLED, FILLED = "accepted", "rejected", "partially_filled", "filled"
CANCELLED, EXPIRED, MODIFIED = "cancelled", "expired", "modified"

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
    """An open order. ``eligible_ts`` = submit time + latency: the earliest event it may fill on.

    ``qty`` is the order's total signed quantity, ``filled`` what has filled of it so far
    (same sign). ``active`` is False for a bracket's children until their entry fills;
    ``change`` is a pending modify ``(effective ts, qty, limit, stop)``; ``cancel_at`` a
    pending cancel's effective ts (with ``cancel_latency``); ``seen`` is set once the order has
    been tried on an event (it reached the venue: accepted; a limit is resting from then on).
    """

    __slots__ = (
        "active",
        "cancel_at",
        "change",
        "day",
        "eligible_ts",
        "expire_ts",
        "filled",
        "id",
        "limit",
        "oco",
        "parent",
        "qty",
        "reduce_only",
        "seen",
        "stop",
        "submit_ts",
        "suspended",
        "sym",
        "tif",
        "type",
    )

    def __init__(self, id: int, sym: int, qty: float, type: str, limit: float | None,
                 stop: float | None, tif: str, submit_ts: int, eligible_ts: int, day: int,
                 expire_ts: int | None = None, oco: str | None = None,
                 reduce_only: bool = False, parent: int = 0, active: bool = True) -> None:
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
        self.filled = 0.0
        self.expire_ts = expire_ts
        self.oco = oco
        self.reduce_only = reduce_only
        self.parent = parent
        self.active = active
        self.change: tuple[int, float | None, float | None, float | None] | None = None
        self.cancel_at: int | None = None
        self.seen = False
        self.suspended = False  # modified without cancel latency: off the book until it applies

    @property
    def remaining(self) -> float:
        """Signed quantity still to fill."""
        return self.qty - self.filled

    def __getstate__(self) -> tuple:
        """A tuple in slot order: open orders go into every checkpoint, so keep them small
        (``__slots__`` classes have no ``__dict__`` to pickle anyway). Part of the checkpoint
        format: the slots' order must not change."""
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)

    def __repr__(self) -> str:
        return (f"Order(id={self.id}, qty={self.qty}, filled={self.filled}, type={self.type}, "
                f"tif={self.tif})")


@dataclass(frozen=True, slots=True)
class OrderView:
    """An open order as ``Strategy.orders()`` lists it (a snapshot: it does not change)."""

    order_id: int
    symbol: str
    type: str
    tif: str
    qty: float
    filled: float
    remaining: float
    limit: float | None
    stop: float | None
    expire_ts: int | None
    oco: str | None
    reduce_only: bool
    parent: int
    active: bool
    status: str  # "submitted" (not yet at the venue), "accepted" or "partially_filled"


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """A change in an order's life, as ``on_order`` sees it.

    ``status``: accepted, rejected, partially_filled, filled, cancelled, expired, modified.
    ``reason`` says why for rejected/cancelled/expired; ``fill_qty``/``fill_price`` are set on
    fills; ``filled``/``remaining`` are the order's totals after the event.
    """

    order_id: int
    ts: int
    symbol: str
    status: str
    reason: str = ""
    filled: float = 0.0
    remaining: float = 0.0
    fill_qty: float = 0.0
    fill_price: float = 0.0


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
    liquidity: str = ""  # "taker", "maker", or "" where the fill model cannot tell
