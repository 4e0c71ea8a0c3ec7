"""SMA crossover, vectorised: the same decisions as ``sma_cross.py``, computed with NumPy.

``on_batch`` gets one symbol's rows and returns the target position after each row; the
engine trades to it with market orders under the same fill rules as the per-tick path.
Window sums are int64 cumulative sums of micro-dollar prices: exact, so decisions match the
per-tick example bit for bit whatever the batch boundaries are.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tickreplay import Strategy

SCALE = 1_000_000


class SmaCrossVectorized(Strategy):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fast: int = Field(20, ge=1, description="fast window, in ticks")
        slow: int = Field(100, ge=2, description="slow window, in ticks")
        qty: float = Field(100.0, gt=0, description="position size when in the market")

        @model_validator(mode="after")
        def _fast_below_slow(self) -> SmaCrossVectorized.Params:
            if self.fast >= self.slow:
                raise ValueError("fast must be smaller than slow")
            return self

    columns = ("price",)

    def on_start(self) -> None:
        # symbol -> (last slow-1 prices, ticks seen, current target)
        self.state: dict[str, tuple[np.ndarray, int, float]] = {}

    def on_batch(self, batch) -> np.ndarray:
        symbol = batch.schema.metadata[b"symbol"].decode()
        fast, slow, qty = self.params.fast, self.params.slow, self.params.qty
        tail, seen, target0 = self.state.get(symbol, (np.empty(0, np.int64), 0, 0.0))
        c = np.rint(batch.column("price").to_numpy() * SCALE).astype(np.int64)
        x = np.concatenate([tail, c])
        cs = np.zeros(len(x) + 1, dtype=np.int64)
        np.cumsum(x, out=cs[1:])
        k = np.arange(len(tail), len(x))  # position of each batch row in x
        valid = (seen + np.arange(1, len(c) + 1)) >= slow
        kv = k[valid] + 1
        d = (cs[kv] - cs[kv - fast]) * slow - (cs[kv] - cs[kv - slow]) * fast
        sig = np.full(len(c), np.nan)
        sig[valid] = np.where(d > 0, qty, np.where(d < 0, -qty, np.nan))
        has = ~np.isnan(sig)
        last = np.maximum.accumulate(np.where(has, np.arange(len(c)), -1))
        target = np.where(last >= 0, sig[np.maximum(last, 0)], target0)
        self.state[symbol] = (x[-(slow - 1):].copy(), seen + len(c), float(target[-1]))
        return target
