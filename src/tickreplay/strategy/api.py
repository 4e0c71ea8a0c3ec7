"""The user-facing Strategy API: the contract every strategy file is written against.

A strategy is a class with a nested pydantic ``Params`` model and callbacks. The engine binds
itself to the instance before ``on_start``; everything the strategy may do to the outside world
goes through that binding (``order``, ``cancel``, ``position``, ``cash``, ``equity``, ``log``,
``rng``), which is what makes a run reproducible and checkpointable: no wall clock, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from tickreplay.errors import StrategyError

if TYPE_CHECKING:
    import pyarrow as pa

    from tickreplay.engine.core import Engine
    from tickreplay.engine.orders import Fill


class Tick:
    """One trade event as the strategy sees it.

    The engine reuses ONE Tick object for the whole run (allocating 10 M objects costs seconds
    and gigabytes); copy the fields you want to keep. Quote fields are set only when the
    strategy declares them in ``columns``.
    """

    __slots__ = (
        "ask",
        "ask_size",
        "bid",
        "bid_size",
        "conditions",
        "exchange",
        "price",
        "size",
        "symbol",
        "ts",
    )

    def __init__(self) -> None:
        self.ts: int = 0
        self.symbol: str = ""
        self.price: float = 0.0
        self.size: float = 0.0
        self.bid: float | None = None
        self.ask: float | None = None
        self.bid_size: float | None = None
        self.ask_size: float | None = None
        self.exchange: str | None = None
        self.conditions: str | None = None

    def __repr__(self) -> str:
        return f"Tick(ts={self.ts}, symbol={self.symbol!r}, price={self.price}, size={self.size})"


class Strategy:
    """Base class of every strategy.

    Subclass it, declare ``Params`` (a pydantic model) and ``columns`` (the tick columns read,
    beyond the always-present ``ts`` and ``symbol``), and implement ``on_tick`` (per-tick path) or
    ``on_batch`` (vectorised path: return the target position after each row).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    columns: ClassVar[tuple[str, ...]] = ("price", "size")

    params: Any
    rng: np.random.Generator
    _engine: Engine | None

    def __init__(self, params: BaseModel | dict[str, Any] | None = None) -> None:
        self.params = self.parse_params(params)
        self.rng = np.random.default_rng(0)
        self._engine = None

    @classmethod
    def parse_params(cls, params: BaseModel | dict[str, Any] | None) -> Any:
        """Validate parameters against ``Params``; a bad value names the field."""
        if isinstance(params, cls.Params):
            return params
        raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
        unknown = sorted(set(raw) - set(cls.Params.model_fields))
        if unknown:  # even when the user's Params model would silently ignore extras
            known = ", ".join(sorted(cls.Params.model_fields)) or "none"
            raise StrategyError(f"invalid params for {cls.__name__}: "
                                + "; ".join(f"param {k!r}: unknown (known: {known})"
                                            for k in unknown))
        try:
            return cls.Params.model_validate(raw)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"]) or "<params>"
                lines.append(f"param {field!r}: {err['msg']} (got {err.get('input')!r})")
            raise StrategyError(f"invalid params for {cls.__name__}: " + "; ".join(lines)) from None

    @classmethod
    def is_vectorized(cls) -> bool:
        """True when the class implements ``on_batch`` (the vectorised fast path)."""
        return cls.on_batch is not Strategy.on_batch

    # ---- callbacks (override) ----
    def on_start(self) -> None:
        """Called once before the first tick."""

    def on_tick(self, tick: Tick) -> None:
        """Called for every trade, in (ts, symbol, row) order."""

    def on_batch(self, batch: pa.RecordBatch) -> np.ndarray:  # pragma: no cover - marker only
        """Vectorised path: one symbol's rows; return the target position after each row."""
        raise NotImplementedError

    def on_fill(self, fill: Fill) -> None:
        """Called after each fill has been applied to the portfolio."""

    def on_stop(self) -> None:
        """Called once after the last tick."""

    # ---- actions (provided by the engine) ----
    def _bound(self) -> Engine:
        if self._engine is None:
            raise StrategyError("the strategy is not attached to an engine")
        return self._engine

    def order(self, symbol: str, qty: float, type: str = "market", limit: float | None = None,
              stop: float | None = None, tif: str = "gtc") -> int:
        """Submit an order (qty signed: + buy, - sell); returns its id."""
        return self._bound().submit_order(symbol, qty, type, limit, stop, tif)

    def cancel(self, order_id: int) -> bool:
        """Cancel an open order; False if it already filled, expired or never existed."""
        return self._bound().cancel_order(order_id)

    def position(self, symbol: str) -> float:
        """Current (filled) position in ``symbol``."""
        return self._bound().position(symbol)

    @property
    def cash(self) -> float:
        """Current cash."""
        return self._bound().portfolio.cash

    @property
    def equity(self) -> float:
        """Cash plus positions marked at each symbol's last trade."""
        return self._bound().portfolio.equity()

    def log(self, msg: str, **fields: Any) -> None:
        """A structured log record stamped with simulated time (part of the result)."""
        self._bound().log(msg, fields)
