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
        price = batch.column("price").to_numpy()
        n, m = len(price), len(tail)
        x = np.empty(m + n, dtype=np.int64)
        x[:m] = tail
        x[m:] = np.rint(price * SCALE)
        cs = np.zeros(m + n + 1, dtype=np.int64)  # cs[e] = sum of x[:e]
        np.cumsum(x, out=cs[1:])
        first = max(0, slow - 1 - seen)  # first row with a full slow window
        target = np.empty(n)
        target[:first] = target0
        if first < n:
            end = cs[m + first + 1:]  # window ends, one per valid row
            fast_sum = end - cs[m + first + 1 - fast:m + n + 1 - fast]
            slow_sum = end - cs[m + first + 1 - slow:m + n + 1 - slow]
            sign = np.sign(fast_sum * slow - slow_sum * fast)
            valid = target[first:]
            np.multiply(sign, qty, out=valid)
            if not sign.all():  # equal means: keep the previous target (forward fill)
                prev = target0 if first == 0 else target[first - 1]
                src = np.maximum.accumulate(np.where(sign != 0, np.arange(len(sign)), -1))
                valid[:] = np.where(src >= 0, valid[np.maximum(src, 0)], prev)
        self.state[symbol] = (x[-(slow - 1):].copy(), seen + n, float(target[-1]))
        return target
