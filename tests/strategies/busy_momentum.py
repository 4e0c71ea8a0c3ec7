"""A deliberately slow per-tick strategy (deterministic busy work per tick) for durability tests.

It gives SIGTERM and cancel tests a job that runs for seconds on a small data set, without any
wall-clock dependence: its results depend only on the ticks.
"""

from __future__ import annotations

from pydantic import BaseModel

from tickreplay import Strategy


class BusyMomentum(Strategy):
    class Params(BaseModel):
        work: int = 60
        every: int = 500
        qty: float = 10.0

    def on_start(self) -> None:
        self.n = 0
        self.prev: dict[str, float] = {}
        self.target: dict[str, float] = {}

    def on_tick(self, tick) -> None:
        self.n += 1
        acc = 0
        for i in range(self.params.work):
            acc += i
        prev = self.prev.get(tick.symbol, tick.price)
        self.prev[tick.symbol] = tick.price
        if self.n % self.params.every == 0 and acc >= 0:
            want = self.params.qty if tick.price >= prev else -self.params.qty
            have = self.target.get(tick.symbol, 0.0)
            if want != have:
                self.order(tick.symbol, want - have)
                self.target[tick.symbol] = want
