"""Strategies that fail: one raises (the runner reports it on its channel), one leaves the
process at once with ``os._exit`` after printing its traceback, so only the runner's output
(a pod's log) has it.
"""

from __future__ import annotations

import os
import sys
import traceback

from pydantic import BaseModel

from tickreplay import Strategy


class Raises(Strategy):
    class Params(BaseModel):
        at: int = 1000

    def on_start(self) -> None:
        self.n = 0

    def on_tick(self, tick) -> None:
        self.n += 1
        if self.n == self.params.at:
            raise ValueError(f"bad signal at tick {self.n}")


class Exits(Raises):
    def on_tick(self, tick) -> None:
        try:
            super().on_tick(tick)
        except ValueError:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)
