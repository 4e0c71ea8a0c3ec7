"""Quote-driven breakout with brackets: reads L1 quotes (``events``), enters when the mid breaks
out of its recent range with a tight enough spread, and protects each entry with a bracket
(take-profit limit + stop-loss stop, cancelling each other). Run it with the quote fill model:

    tickreplay data generate --out ./data --symbols AAPL --start 2024-01-02 --end 2024-01-05 \\
        --ticks-per-day 20000 --seed 1 --quotes
    tickreplay run examples/quote_bracket.py --data ./data --symbols AAPL --start 2024-01-02 \\
        --end 2024-01-05 --fill-model quote --max-participation 0.5 --out ./results
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field

from tickreplay import Strategy


class QuoteBracket(Strategy):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        window: int = Field(200, ge=2, description="quotes in the breakout range")
        max_spread_bps: float = Field(5.0, gt=0, description="enter only under this spread")
        qty: float = Field(100.0, gt=0)
        take_bps: float = Field(20.0, gt=0, description="take-profit distance from the entry")
        stop_bps: float = Field(10.0, gt=0, description="stop-loss distance from the entry")

    events = ("quotes",)

    def on_start(self) -> None:
        self.mids: dict[str, deque[float]] = {}
        self.live: dict[str, int] = {}  # symbol -> the bracket entry in flight

    def on_quote(self, quote) -> None:
        mid = (quote.bid + quote.ask) * 0.5
        seen = self.mids.setdefault(quote.symbol, deque(maxlen=self.params.window))
        full = len(seen) == seen.maxlen
        hi, lo = (max(seen), min(seen)) if full else (0.0, 0.0)
        seen.append(mid)
        if not full or quote.symbol in self.live or self.position(quote.symbol) != 0:
            return
        if (quote.ask - quote.bid) / mid * 1e4 > self.params.max_spread_bps:
            return
        p = self.params
        if mid > hi:  # breakout up: buy, take profit above, stop below
            side, ref = 1.0, quote.ask
        elif mid < lo:
            side, ref = -1.0, quote.bid
        else:
            return
        entry, _, _ = self.bracket(quote.symbol, side * p.qty,
                                   take_profit=ref * (1 + side * p.take_bps / 1e4),
                                   stop_loss=ref * (1 - side * p.stop_bps / 1e4))
        self.live[quote.symbol] = entry

    def on_order(self, event) -> None:
        # A child that filled or was cancelled ends the trade; a rejected entry does too.
        if event.status in ("filled", "cancelled", "rejected") and \
                self.live.get(event.symbol) is not None and self.position(event.symbol) == 0 \
                and not any(o.symbol == event.symbol for o in self.orders()):
            del self.live[event.symbol]
