"""Properties of the engine with quotes, partial fills and every order type, for any data and
any order flow (hypothesis): no fill before its order is eligible, never more than the order's
quantity or the event's available size, the equity identity at every daily mark, and a
checkpoint taken at a random event (with partially filled orders open) resumes to the
identical result."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from enginekit import independent_equity, random_events, run, split
from hypothesis import given, settings
from hypothesis import strategies as st

from tickreplay import Strategy
from tickreplay.engine.config import Commission, RunConfig
from tickreplay.engine.core import Engine

TYPES = ("market", "limit", "stop", "stop_limit")
TIFS = ("gtc", "ioc", "day", "fok", "gtd")


class QuoteTrader(Strategy):
    """Random orders of every type and instruction from the seeded rng, on trades and quotes;
    records what it submitted and every fill with the event it came on."""

    events = ("trades", "quotes")

    def on_start(self) -> None:
        self.k = 0  # events seen
        self.submitted: dict[int, tuple[int, int, float]] = {}  # id -> (event, ts, max |qty|)
        self.fills: list[tuple[int, int, int, float]] = []  # (id, event, ts, qty)
        self.syms: list[str] = []
        self.sides: dict[int, float] = {}
        self.children: set[int] = set()

    def _act(self, ts: int, symbol: str, price: float) -> None:
        self.k += 1
        if symbol not in self.syms:
            self.syms.append(symbol)
        r = self.rng.random()
        sym = self.syms[int(self.rng.integers(len(self.syms)))]
        qty = float(self.rng.integers(1, 40)) * (1 if self.rng.random() < 0.5 else -1)
        off = float(self.rng.normal(0, 0.002)) * price
        if r < 0.06:
            kind = TYPES[int(self.rng.integers(len(TYPES)))]
            tif = TIFS[int(self.rng.integers(len(TIFS)))]
            oid = self.order(sym, qty, type=kind, limit=price + off, stop=price - off, tif=tif,
                             expire_ts=ts + int(self.rng.integers(1, 10**10)),
                             oco=("g1", "g2", None)[int(self.rng.integers(3))],
                             reduce_only=bool(self.rng.random() < 0.1))
            self.submitted[oid] = (self.k, ts, abs(qty))
            self.sides[oid] = qty
        elif r < 0.07:
            ids = self.bracket(sym, qty, entry=None if self.rng.random() < 0.5 else price,
                               take_profit=price * (1.004 if qty > 0 else 0.996),
                               stop_loss=price * (0.996 if qty > 0 else 1.004))
            for oid in ids:
                self.submitted[oid] = (self.k, ts, abs(qty))
                self.sides[oid] = qty
            self.children.update(ids[1:])
        elif r < 0.08 and self.submitted:
            oid = max(self.submitted)
            grow = self.rng.random() < 0.5 and oid not in self.children
            if self.modify(oid, qty=math.copysign(self.submitted[oid][2] + 5, self.sides[oid])
                           if grow else None, limit=price + off if not grow else None):
                k, t, q = self.submitted[oid]
                self.submitted[oid] = (k, t, q + 5 if grow else q)
        elif r < 0.09 and self.submitted:
            self.cancel(int(self.rng.choice(list(self.submitted))))

    def on_tick(self, tick) -> None:
        self._act(tick.ts, tick.symbol, tick.price)

    def on_quote(self, quote) -> None:
        self._act(quote.ts, quote.symbol, (quote.bid + quote.ask) * 0.5)

    def on_fill(self, fill) -> None:
        # fills are matched before the strategy sees the event: it is number k + 1
        self.fills.append((fill.order_id, self.k + 1, fill.ts, fill.qty))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_sym=st.integers(1, 3), latency=st.integers(0, 10**9),
       chunk_size=st.integers(1, 500), quote_model=st.booleans(),
       part=st.sampled_from([None, 0.1, 0.5, 1.0]), cancel_latency=st.booleans())
def test_no_early_fill_no_overfill_and_the_equity_identity(
        seed: int, n_sym: int, latency: int, chunk_size: int, quote_model: bool,
        part: float | None, cancel_latency: bool) -> None:
    symbols = ("A", "B", "C")[:n_sym]
    stream = random_events(800, n_sym, seed)
    s = QuoteTrader()
    cfg = RunConfig(latency_ns=latency, slippage_bps=3, seed=seed,
                    fill_model="quote" if quote_model else "trade", max_participation=part,
                    cancel_latency=cancel_latency,
                    commission=Commission(per_share=0.005, minimum=0.5))
    r = run(s, symbols, split(stream, chunk_size), cfg)
    kind = stream["kind"].to_numpy()
    mark = np.where(kind == 1, stream["price"].to_numpy(),  # marks: trade price or quote mid
                    (stream["q_bid"].to_numpy() + stream["q_ask"].to_numpy()) * 0.5)
    expected = independent_equity(stream, r, symbols, cfg.initial_cash, mark)
    assert r.equity["equity"].to_pylist() == pytest.approx(expected, rel=0, abs=1e-6)
    # No fill before eligibility: a later event than the submitting one, after the latency.
    for oid, k_fill, t_fill, _ in s.fills:
        k_sub, t_sub, _ = s.submitted[oid]
        assert k_fill > k_sub and t_fill >= t_sub + latency
    # Never more than the order's quantity (the largest it was ever given).
    per_order: dict[int, float] = defaultdict(float)
    for oid, _, _, qty in s.fills:
        per_order[oid] += abs(qty)
    for oid, total in per_order.items():
        assert total <= s.submitted[oid][2] + 1e-9
    # Never more than the event's available size: per event and side (one pool per trade
    # under the trade model).
    size = stream["size"].to_numpy()
    asks, bids = stream["q_ask_size"].to_numpy(), stream["q_bid_size"].to_numpy()
    taken: dict[tuple[int, int], float] = defaultdict(float)
    for _, k_fill, _, qty in s.fills:
        row = k_fill - 1
        side = 0 if kind[row] == 1 and not quote_model else (1 if qty > 0 else -1)
        taken[(row, side)] += abs(qty)
    for (row, side), total in taken.items():
        if kind[row] == 1:
            avail = size[row] * part if part is not None else (size[row] if quote_model
                                                               else math.inf)
        else:
            shown = asks[row] if side > 0 else bids[row]
            avail = shown * part if part is not None else shown
        assert total <= avail + 1e-9, (row, side, total, avail)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resume_at_a_random_event_with_partial_orders_open_is_identical(seed: int) -> None:
    """Quote model, a participation cap (so orders fill in parts over many events): a
    checkpoint at a random event where a partially filled order is open resumes to the very
    same trades, equity and logs."""
    symbols = ("A", "B")
    stream = random_events(4_000, 2, seed=seed, days=3)
    cfg = RunConfig(fill_model="quote", max_participation=0.2, latency_ns=10**6,
                    slippage_bps=1, commission=Commission(bps=1), seed=seed)
    full = run(QuoteTrader(), symbols, split(stream, 700), cfg)
    assert full.trades.num_rows > 20
    rng = np.random.default_rng(seed)
    cuts = 0
    for k in rng.permutation(np.arange(50, stream.num_rows - 50)).tolist():
        eng = Engine(QuoteTrader(), symbols, cfg)
        eng.start()
        done = 0
        for b in split(stream, 700):
            done += eng.feed(b, limit=k - done)
            if done == k:
                break
        if not any(o.filled != 0.0 for o in eng._open.values()):
            continue  # not an interesting place to cut
        resumed = Engine.restore(eng.checkpoint(), QuoteTrader())
        resumed.start()
        for b in split(stream.slice(k), 333):
            resumed.feed(b)
        again = resumed.finish()
        assert again.trades.equals(full.trades), f"trades differ after resume at event {k}"
        assert again.equity.equals(full.equity) and again.logs == full.logs
        cuts += 1
        if cuts == 3:
            break
    assert cuts == 3, "no event with a partially filled order open"
