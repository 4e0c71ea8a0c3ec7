"""SMA crossover, per-tick: long ``qty`` when the fast mean is above the slow mean, short below.

Means are compared exactly, on integer micro-dollar sums (``fast_sum * slow`` vs
``slow_sum * fast``), so this file and ``sma_cross_vectorized.py`` take the same decisions
bit for bit: float running sums would drift apart from a vectorised cumsum on near-ties.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tickreplay import Strategy

SCALE = 1_000_000  # prices as integer micro-dollars


class _State:
    __slots__ = ("buf", "fast_sum", "n", "slow_sum", "target")

    def __init__(self, slow: int) -> None:
        self.buf = [0] * slow  # ring buffer of the last `slow` prices
        self.n = 0
        self.fast_sum = 0
        self.slow_sum = 0
        self.target = 0.0


class SmaCross(Strategy):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fast: int = Field(20, ge=1, description="fast window, in ticks")
        slow: int = Field(100, ge=2, description="slow window, in ticks")
        qty: float = Field(100.0, gt=0, description="position size when in the market")

        @model_validator(mode="after")
        def _fast_below_slow(self) -> SmaCross.Params:
            if self.fast >= self.slow:
                raise ValueError("fast must be smaller than slow")
            return self

    columns = ("price", "size")

    def on_start(self) -> None:
        self.state: dict[str, _State] = {}
        self.fast, self.slow, self.qty = self.params.fast, self.params.slow, self.params.qty

    def on_tick(self, tick) -> None:
        st = self.state.get(tick.symbol)
        if st is None:
            st = self.state[tick.symbol] = _State(self.slow)
        slow, fast = self.slow, self.fast
        c = round(tick.price * SCALE)
        i = st.n
        buf = st.buf
        if i >= slow:
            st.slow_sum -= buf[i % slow]
        if i >= fast:
            st.fast_sum -= buf[(i - fast) % slow]
        buf[i % slow] = c
        st.slow_sum += c
        st.fast_sum += c
        st.n = i + 1
        if st.n < slow:
            return
        d = st.fast_sum * slow - st.slow_sum * fast
        target = self.qty if d > 0 else -self.qty if d < 0 else st.target
        if target != st.target:
            self.order(tick.symbol, target - st.target)
            st.target = target
