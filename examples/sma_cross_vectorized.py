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
# Rows per NumPy pass. A batch is processed in blocks this size so that every intermediate
# array fits the CPU cache and is recycled by the allocator: whole-batch temporaries (MBs each)
# cost a fresh page fault per 4 KiB and ran ~2.5x slower than the arithmetic itself.
BLOCK = 16_384


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
        tail, seen, prev = self.state.get(symbol, (np.empty(0, np.int64), 0, 0.0))
        price = batch.column("price").to_numpy()
        n, m = len(price), len(tail)
        target = np.empty(n)
        x = np.empty(slow - 1 + BLOCK, dtype=np.int64)  # window tail, then the block's prices
        x[:m] = tail
        cs = np.empty(len(x) + 1, dtype=np.int64)  # cs[e] = sum of x[:e]
        cs[0] = 0
        work = np.empty((2, BLOCK), dtype=np.int64)
        for a in range(0, n, BLOCK):
            k = min(BLOCK, n - a)
            out = target[a:a + k]
            px = np.multiply(price[a:a + k], SCALE, out=out)  # `out` is scratch until the end
            np.rint(px, out=x[m:m + k], casting="unsafe")
            np.cumsum(x[:m + k], out=cs[1:m + k + 1])
            first = min(max(0, slow - 1 - seen), k)  # first row with a full slow window
            out[:first] = prev
            if first < k:
                lo, hi = m + first + 1, m + k + 1  # window ends, one per valid row
                v = hi - lo
                d, t = work[0, :v], work[1, :v]
                # fast_sum * slow - slow_sum * fast, with fast_sum = cs[e] - cs[e - fast] and
                # slow_sum = cs[e] - cs[e - slow]: exact integers, so exact comparisons.
                np.subtract(cs[lo:hi], cs[lo - fast:hi - fast], out=d)
                d *= slow
                np.subtract(cs[lo:hi], cs[lo - slow:hi - slow], out=t)
                t *= fast
                d -= t
                valid = out[first:]
                np.sign(d, out=valid)
                valid *= qty
                if not d.all():  # equal means: keep the previous target (forward fill)
                    _forward_fill(valid, d, prev)
            prev = float(out[-1])
            seen += k
            keep = min(slow - 1, m + k)
            x[:keep] = x[m + k - keep:m + k]
            m = keep
        self.state[symbol] = (x[:m].copy(), seen, prev)
        return target


def _forward_fill(valid: np.ndarray, d: np.ndarray, prev: float) -> None:
    """Rows where ``d == 0`` take the target of the row before (``prev`` before the first).

    Works on the tie rows only (a few dozen per block on cent-priced data), run by run: each
    run of consecutive ties copies the row just before it, which is not a tie.
    """
    ties = np.flatnonzero(d == 0)
    starts = np.ones(len(ties), dtype=bool)
    starts[1:] = ties[1:] != ties[:-1] + 1
    src = ties[starts] - 1
    fill = valid[np.maximum(src, 0)]
    fill[src < 0] = prev
    valid[ties] = fill[np.cumsum(starts) - 1]
