"""The user-facing Strategy API: the contract every strategy file is written against.

A strategy is a class with a nested pydantic ``Params`` model and callbacks. The engine binds
itself to the instance before ``on_start``; everything the strategy may do to the outside world
goes through that binding (``order``, ``cancel``, ``position``, ``cash``, ``equity``, ``log``,
``rng``), which is what makes a run reproducible and checkpointable: no wall clock, no I/O.

The binding is typed as :class:`StrategyContext`, a Protocol defined here, and this package
imports nothing from ``tickreplay.engine`` (not even for type checking): the API is the stable
contract and the engine is one implementation of it, so the engine can be restructured without
touching what strategy authors see, and the import-linter contract "strategy-api-not-engine"
keeps it that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from tickreplay.errors import StrategyError

if TYPE_CHECKING:
    import pyarrow as pa


class StrategyContext(Protocol):
    """What a running strategy can ask of its engine (``tickreplay.engine.core.Engine`` is one).

    ``Strategy``'s action methods are thin wrappers over these; arguments arrive as the user
    passed them and the context validates them (an invalid order raises ``StrategyError``).
    """

    def order(self, symbol: str, qty: float, type: str, limit: float | None,
              stop: float | None, tif: str, expire_ts: int | None = None,
              oco: str | None = None, reduce_only: bool = False) -> int:
        """Queue an order; returns its id (a rejected order has one too)."""
        ...

    def bracket(self, symbol: str, qty: float, entry: float | None, take_profit: float,
                stop_loss: float, tif: str) -> tuple[int, int, int]:
        """An entry and its take-profit and stop-loss children; their ids."""
        ...

    def cancel(self, order_id: int) -> bool:
        """Cancel an open order; False when it is no longer open."""
        ...

    def modify(self, order_id: int, qty: float | None, limit: float | None,
               stop: float | None) -> bool:
        """Cancel-replace an open order's quantity and prices; False when it is not open."""
        ...

    def orders(self) -> list[Any]:
        """The open orders, by id."""
        ...

    def position(self, symbol: str) -> float:
        """Filled position of ``symbol``."""
        ...

    def cash(self) -> float:
        """Current cash."""
        ...

    def equity(self) -> float:
        """Cash plus positions marked at each symbol's last trade."""
        ...

    def log(self, msg: str, fields: dict[str, Any]) -> None:
        """Append a log record stamped with simulated time."""
        ...


class FillRecord(Protocol):
    """An execution as ``on_fill`` sees it: read-only fields.

    A Protocol, not the engine's class itself: the concrete record (``engine.orders.Fill``, a
    frozen dataclass) stays where it is because strategies may keep fills in their state, which
    pickles the class's module path into checkpoints, whose bytes must not change; and this
    package must not import the engine.
    """

    @property
    def order_id(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def symbol(self) -> str: ...
    @property
    def qty(self) -> float: ...
    @property
    def price(self) -> float: ...
    @property
    def fee(self) -> float: ...
    @property
    def liquidity(self) -> str: ...


class OrderEventRecord(Protocol):
    """A change in an order's life, as ``on_order`` sees it (``engine.orders.OrderEvent``)."""

    @property
    def order_id(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def symbol(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def filled(self) -> float: ...
    @property
    def remaining(self) -> float: ...


class Quote:
    """One L1 quote event as ``on_quote`` sees it (reused, like :class:`Tick`).

    ``bid_size``/``ask_size`` are ``inf`` when the data has no sizes (unlimited).
    """

    __slots__ = ("ask", "ask_size", "bid", "bid_size", "symbol", "ts")

    def __init__(self) -> None:
        self.ts: int = 0
        self.symbol: str = ""
        self.bid: float = 0.0
        self.ask: float = 0.0
        self.bid_size: float = 0.0
        self.ask_size: float = 0.0

    def __repr__(self) -> str:
        return (f"Quote(ts={self.ts}, symbol={self.symbol!r}, bid={self.bid}, ask={self.ask}, "
                f"bid_size={self.bid_size}, ask_size={self.ask_size})")


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
    # The event kinds the strategy reads: "trades" (on_tick) and/or "quotes" (on_quote).
    events: ClassVar[tuple[str, ...]] = ("trades",)

    params: Any
    rng: np.random.Generator
    _context: StrategyContext | None  # set by the engine; not part of a checkpoint

    def __init__(self, params: BaseModel | dict[str, Any] | None = None) -> None:
        self.params = self.parse_params(params)
        self.rng = np.random.default_rng(0)
        self._context = None

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

    def on_quote(self, quote: Quote) -> None:
        """Called for every L1 quote when ``events`` includes "quotes"."""

    def on_fill(self, fill: FillRecord) -> None:
        """Called after each fill (a partial fill too) has been applied to the portfolio."""

    def on_order(self, event: OrderEventRecord) -> None:
        """Called on each change of an order's life: accepted, rejected (with a reason),
        partially_filled, filled, cancelled, expired, modified."""

    def on_stop(self) -> None:
        """Called once after the last tick."""

    # ---- actions (provided by the engine, through the StrategyContext) ----
    def _bound(self) -> StrategyContext:
        """The engine's context; a strategy used outside a run fails with a clear message."""
        if self._context is None:
            raise StrategyError("the strategy is not attached to an engine")
        return self._context

    def order(self, symbol: str, qty: float, type: str = "market", limit: float | None = None,
              stop: float | None = None, tif: str = "gtc", *, expire_ts: int | None = None,
              oco: str | None = None, reduce_only: bool = False) -> int:
        """Submit an order (qty signed: + buy, - sell); returns its id.

        ``type``: market, limit, stop, stop_limit; ``tif``: gtc, ioc, day, fok, gtd (with
        ``expire_ts``, ns UTC). Orders sharing an ``oco`` group cancel each other on the first
        fill; ``reduce_only`` orders never increase or flip the position.
        """
        return self._bound().order(symbol, qty, type, limit, stop, tif, expire_ts, oco,
                                   reduce_only)

    def bracket(self, symbol: str, qty: float, *, entry: float | None = None,
                take_profit: float, stop_loss: float, tif: str = "gtc") -> tuple[int, int, int]:
        """An entry (limit at ``entry``, or market) with a take-profit limit and a stop-loss
        stop for the filled quantity, active once the entry fills and cancelling each other;
        returns ``(entry id, take-profit id, stop-loss id)``."""
        return self._bound().bracket(symbol, qty, entry, take_profit, stop_loss, tif)

    def cancel(self, order_id: int) -> bool:
        """Cancel an open order; False if it already filled, expired or never existed."""
        return self._bound().cancel(order_id)

    def modify(self, order_id: int, *, qty: float | None = None, limit: float | None = None,
               stop: float | None = None) -> bool:
        """Cancel-replace an open order (new total qty, limit or stop), with the latency of a
        new order; False if it is no longer open."""
        return self._bound().modify(order_id, qty, limit, stop)

    def orders(self) -> list[Any]:
        """The open orders (``OrderView``: id, symbol, qty, filled, remaining, status...)."""
        return self._bound().orders()

    def position(self, symbol: str) -> float:
        """Current (filled) position in ``symbol``."""
        return self._bound().position(symbol)

    @property
    def cash(self) -> float:
        """Current cash."""
        return self._bound().cash()

    @property
    def equity(self) -> float:
        """Cash plus positions marked at each symbol's last trade."""
        return self._bound().equity()

    def log(self, msg: str, **fields: Any) -> None:
        """A structured log record stamped with simulated time (part of the result)."""
        self._bound().log(msg, fields)
