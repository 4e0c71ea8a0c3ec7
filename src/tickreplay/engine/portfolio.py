"""Cash, positions, average cost and realized PnL, in a fixed, documented operation order.

Money is float64. Every update happens in one place (``apply_fills``) with a fixed order of
operations, so the per-tick and vectorised paths, and a resumed run, give identical bits.
"""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence


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

    def apply_fills(
        self, syms: Sequence[int], qtys: Sequence[float], prices: Sequence[float],
        fees: Sequence[float], realized_out: MutableSequence[float],
        closes_out: MutableSequence[bool], pos_out: MutableSequence[float],
        cash_out: MutableSequence[float],
    ) -> None:
        """Apply fills in order; the only place money and positions change.

        Per fill: cash += -(qty * price) - fee. Average cost: adding to a position re-weights
        it; reducing realizes (price - avg) x closed quantity x side; crossing through zero
        realizes the whole old position and opens the rest at ``price``. A run of fills at once
        keeps the state in locals (the vectorised path applies thousands per chunk); one fill
        at a time goes through the same loop, so both paths give identical bits.

        Per fill, appends to the ``*_out`` lists (the trade record's columns): the realized PnL
        (gross of fees) of its closing part, whether it reduced an open position, and the
        position and cash after it.
        """
        cash, total_fees = self.cash, self.fees
        pos, avg, realized_by = self.pos, self.avg, self.realized
        for s, qty, price, fee in zip(syms, qtys, prices, fees):
            cash += -(qty * price) - fee
            total_fees += fee
            q = pos[s]
            new = q + qty
            if q == 0.0 or (q > 0.0) == (qty > 0.0):
                avg[s] = (q * avg[s] + qty * price) / new
                realized = 0.0
                closes_out.append(False)
            else:
                closed = min(abs(qty), abs(q))
                realized = (price - avg[s]) * closed if q > 0.0 else (avg[s] - price) * closed
                if new == 0.0:
                    avg[s] = 0.0
                elif (new > 0.0) != (q > 0.0):
                    avg[s] = price
                closes_out.append(True)
            pos[s] = new
            realized_by[s] += realized
            realized_out.append(realized)
            pos_out.append(new)
            cash_out.append(cash)
        self.cash, self.fees = cash, total_fees

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
        """Slot name -> value (``__slots__`` classes have no ``__dict__`` to pickle)."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
