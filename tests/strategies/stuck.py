"""Strategies for the progress/stall tests: one loops forever at a given tick, one is slow
(milliseconds per tick, busy work, no clock) but always making progress.
"""

from __future__ import annotations

from pydantic import BaseModel

from tickreplay import Strategy


class StuckAt(Strategy):
    """Loops forever when it reaches tick ``at`` (a bug a user might ship)."""

    class Params(BaseModel):
        at: int = 5000

    def on_start(self) -> None:
        self.n = 0

    def on_tick(self, tick) -> None:
        self.n += 1
        while self.n == self.params.at:
            pass


class Slow(Strategy):
    """About ``work`` iterations of busy work per tick: far slower than 65,536 ticks a stall
    timeout, yet always moving."""

    class Params(BaseModel):
        work: int = 20_000

    def on_start(self) -> None:
        self.n = 0

    def on_tick(self, tick) -> None:
        self.n += 1
        acc = 0
        for i in range(self.params.work):
            acc += i
        if self.n % 50 == 0 and acc >= 0:
            self.order(tick.symbol, 1.0 if self.position(tick.symbol) <= 0 else -1.0)
