"""Orders and fills. The fill rules themselves are in ``core.py`` and ``docs/semantics.md``."""

from __future__ import annotations

from dataclasses import dataclass

MARKET, LIMIT, STOP = "market", "limit", "stop"
GTC, IOC, DAY = "gtc", "ioc", "day"
ORDER_TYPES = (MARKET, LIMIT, STOP)
TIFS = (GTC, IOC, DAY)


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
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"Order(id={self.id}, qty={self.qty}, type={self.type}, tif={self.tif})"


@dataclass(frozen=True, slots=True)
class Fill:
    """An execution as the strategy's ``on_fill`` sees it."""

    order_id: int
    ts: int
    symbol: str
    qty: float
    price: float
    fee: float
