"""Cash, positions, average cost and realized PnL, in a fixed, documented operation order.

Money is float64. Every update happens in one place (``apply_fill``) with a fixed order of
operations, so the per-tick and vectorised paths, and a resumed run, give identical bits.
"""

from __future__ import annotations


class Portfolio:
    """Positions indexed by symbol code (index into the run's sorted symbol list)."""

    __slots__ = ("avg", "cash", "fees", "last", "pos", "realized")

    def __init__(self, n_symbols: int, cash: float) -> None:
        self.cash = cash
        self.pos = [0.0] * n_symbols
        self.avg = [0.0] * n_symbols
        self.realized = [0.0] * n_symbols
        self.last = [0.0] * n_symbols  # mark: the symbol's last trade price so far
        self.fees = 0.0

    def apply_fill(self, s: int, qty: float, price: float, fee: float) -> float:
        """Apply one fill; returns the realized PnL (gross of fees) of its closing part.

        cash += -(qty * price) - fee. Average cost: adding to a position re-weights it; reducing
        realizes (price - avg) x closed quantity x side; crossing through zero realizes the whole
        old position and opens the rest at ``price``.
        """
        self.cash += -(qty * price) - fee
        self.fees += fee
        q = self.pos[s]
        realized = 0.0
        new = q + qty
        if q == 0.0 or (q > 0.0) == (qty > 0.0):
            self.avg[s] = (q * self.avg[s] + qty * price) / new
        else:
            closed = min(abs(qty), abs(q))
            realized = (price - self.avg[s]) * closed if q > 0.0 else (self.avg[s] - price) * closed
            if new == 0.0:
                self.avg[s] = 0.0
            elif (new > 0.0) != (q > 0.0):
                self.avg[s] = price
        self.pos[s] = new
        self.realized[s] += realized
        return realized

    def market_value(self) -> float:
        """Sum of position x mark, in symbol order."""
        mv = 0.0
        for q, p in zip(self.pos, self.last):
            mv += q * p
        return mv

    def equity(self) -> float:
        """cash + market value."""
        return self.cash + self.market_value()

    def unrealized(self) -> float:
        """Sum of position x (mark - average cost)."""
        u = 0.0
        for q, p, a in zip(self.pos, self.last, self.avg):
            u += q * (p - a)
        return u

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
