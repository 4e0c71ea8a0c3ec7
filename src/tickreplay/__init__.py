"""tickreplay: reproducible tick-level backtests on Parquet + S3, orchestrated by Temporal.

Public names: :class:`Strategy` (subclass it), :data:`__version__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tickreplay.strategy.api import Strategy

__all__ = ["Strategy", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that workflow modules (re-imported inside Temporal's sandbox) can import the
    # package without dragging numpy/pyarrow along.
    if name == "Strategy":
        from tickreplay.strategy.api import Strategy

        return Strategy
    raise AttributeError(name)
