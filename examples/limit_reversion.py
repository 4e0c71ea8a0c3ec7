"""Mean reversion with limit orders: buy a dip below the EMA, exit with a take-profit limit or a stop.

Shows the order API beyond market orders: a resting DAY limit entry, then an OCO pair (limit
take-profit + stop-loss) managed in ``on_fill``, with ``cancel`` and structured ``log``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tickreplay import Strategy


class LimitReversion(Strategy):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        span: int = Field(200, ge=2, description="EMA span in ticks")
        band_bps: float = Field(20.0, gt=0, description="entry this far below the EMA")
        take_bps: float = Field(30.0, gt=0, description="take profit above the entry")
        stop_bps: float = Field(60.0, gt=0, description="stop loss below the entry")
        qty: float = Field(100.0, gt=0)

    columns = ("price", "size")

    def on_start(self) -> None:
        self.alpha = 2.0 / (self.params.span + 1.0)
        self.ema: dict[str, float] = {}
        self.entry: dict[str, int] = {}  # symbol -> open entry order id
        self.exits: dict[str, tuple[int, int]] = {}  # symbol -> (take-profit id, stop id)
        self.seen: dict[str, int] = {}
        self.day = -1

    def on_tick(self, tick) -> None:
        sym, p = tick.symbol, tick.price
        day = tick.ts // 86_400_000_000_000
        if day != self.day:  # DAY entries expired at the session end
            self.day = day
            self.entry.clear()
        ema = self.ema.get(sym, p)
        ema += self.alpha * (p - ema)
        self.ema[sym] = ema
        self.seen[sym] = n = self.seen.get(sym, 0) + 1
        if n < self.params.span or sym in self.entry or sym in self.exits:
            return
        if self.position(sym) == 0:
            limit = round(ema * (1 - self.params.band_bps / 1e4), 2)
            self.entry[sym] = self.order(sym, self.params.qty, type="limit", limit=limit, tif="day")

    def on_fill(self, fill) -> None:
        sym = fill.symbol
        if self.entry.get(sym) == fill.order_id:
            del self.entry[sym]
            take = round(fill.price * (1 + self.params.take_bps / 1e4), 2)
            stop = round(fill.price * (1 - self.params.stop_bps / 1e4), 2)
            tp = self.order(sym, -fill.qty, type="limit", limit=take)
            sl = self.order(sym, -fill.qty, type="stop", stop=stop)
            self.exits[sym] = (tp, sl)
            self.log("entered", symbol=sym, price=fill.price, take=take, stop=stop)
        elif sym in self.exits and fill.order_id in self.exits[sym]:
            tp, sl = self.exits.pop(sym)
            self.cancel(sl if fill.order_id == tp else tp)
            self.log("exited", symbol=sym, price=fill.price,
                     reason="take" if fill.order_id == tp else "stop")

    def on_stop(self) -> None:
        self.log("done", open_positions={s: self.position(s) for s in sorted(self.ema)})
