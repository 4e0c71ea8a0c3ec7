"""The in-memory result of one backtest, before it becomes files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class ResultSet:
    """Everything a backtest produced, split into what is hashed and what is not.

    Attributes:
        trades: One row per fill (ts, symbol, qty, price, fee, realized_pnl, is_close, ...).
        equity: One row per trading day: ``date`` (YYYY-MM-DD string), ``equity``, ``cash``, ...
        metrics: Output of :func:`tickreplay.results.metrics.compute`.
        logs: Strategy log records in emission order: ``ts`` (simulated ns), ``level``, ``msg``
            and the user's fields. Deterministic, so they are part of the hash.
        inputs: What the result is a function of: strategy digest, data fingerprint, params,
            engine version, run config.
        run_info: How this particular execution went (host, wall times, ticks/s). Never
            hashed: two machines running the same inputs must agree on the result hash.
    """

    trades: pa.Table
    equity: pa.Table
    metrics: dict[str, Any]
    logs: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
