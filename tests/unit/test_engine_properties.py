"""Properties of the engine that must hold for any data and any order flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from enginekit import independent_equity, random_stream, run, split
from hypothesis import given, settings
from hypothesis import strategies as st

from tickreplay import Strategy
from tickreplay.engine.config import Commission, RunConfig
from tickreplay.engine.core import Engine
from tickreplay.errors import CheckpointError
from tickreplay.strategy.api import StrategyError
from tickreplay.strategy.loader import load_strategy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class RandomTrader(Strategy):
    """Random orders of every type from the seeded rng; records submit/fill event numbers."""

    columns = ("price", "size")

    def on_start(self) -> None:
        self.k = 0
        self.submitted: dict[int, tuple[int, int]] = {}  # order id -> (event no, ts)
        self.filled: list[tuple[int, int, int]] = []  # (order id, event no, ts)
        self.syms: list[str] = []

    def on_tick(self, tick) -> None:
        self.k += 1
        if tick.symbol not in self.syms:
            self.syms.append(tick.symbol)
        r = self.rng.random()
        if r < 0.08:
            sym = self.syms[int(self.rng.integers(len(self.syms)))]
            qty = float(self.rng.integers(1, 20)) * (1 if self.rng.random() < 0.5 else -1)
            kind = ("market", "limit", "stop")[int(self.rng.integers(3))]
            tif = ("gtc", "ioc", "day")[int(self.rng.integers(3))]
            off = float(self.rng.normal(0, 0.002)) * tick.price
            oid = self.order(sym, qty, type=kind, limit=tick.price + off, stop=tick.price - off,
                             tif=tif)
            self.submitted[oid] = (self.k, tick.ts)
        elif r < 0.09 and self.submitted:
            self.cancel(max(self.submitted))

    def on_fill(self, fill) -> None:
        # fills are matched before on_tick of the same event, so this event is number k + 1
        self.filled.append((fill.order_id, self.k + 1, fill.ts))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_sym=st.integers(1, 3), latency=st.integers(0, 10**9),
       chunk_size=st.integers(1, 700))
def test_equity_is_cash_plus_marked_positions_and_no_fill_precedes_its_order(
        seed: int, n_sym: int, latency: int, chunk_size: int) -> None:
    symbols = ("A", "B", "C")[:n_sym]
    stream = random_stream(600, n_sym, seed)
    s = RandomTrader()
    cfg = RunConfig(latency_ns=latency, slippage_bps=3, seed=seed,
                    commission=Commission(per_share=0.005, minimum=0.5))
    r = run(s, symbols, split(stream, chunk_size), cfg)
    expected = independent_equity(stream, r, symbols, cfg.initial_cash)
    assert r.equity["equity"].to_pylist() == pytest.approx(expected, rel=0, abs=1e-6)
    for oid, k_fill, t_fill in s.filled:
        k_sub, t_sub = s.submitted[oid]
        assert k_fill > k_sub  # a later event, never the submitting tick
        assert t_fill >= t_sub + latency


def _final_state(r) -> tuple:
    return (r.trades, r.equity, r.logs, r.ticks, r.exposure_days)


@pytest.mark.parametrize("spec", ["sma_cross.py", "sma_cross_vectorized.py", "limit_reversion.py"])
def test_resume_from_a_checkpoint_at_five_random_ticks_is_identical(spec: str) -> None:
    symbols = ("A", "B")
    stream = random_stream(6000, 2, seed=7, days=4)
    params = {"span": 50} if spec.startswith("limit") else {"fast": 5, "slow": 30}
    cfg = RunConfig(latency_ns=10**6, slippage_bps=1, commission=Commission(bps=1))
    full = run(load_strategy(str(EXAMPLES / spec), params)[0], symbols, split(stream, 1000), cfg)
    assert full.trades.num_rows > 10
    for k in np.random.default_rng(3).integers(1, stream.num_rows - 1, 5).tolist():
        eng = Engine(load_strategy(str(EXAMPLES / spec), params)[0], symbols, cfg)
        eng.start()
        done = 0
        for b in split(stream, 1000):
            done += eng.feed(b, limit=k - done)
            if done == k:
                break
        blob = eng.checkpoint()
        assert eng.offsets() == {
            name: int((stream["sym"].to_numpy()[:k] == i).sum()) for i, name in enumerate(symbols)
        }
        resumed = Engine.restore(blob, load_strategy(str(EXAMPLES / spec), params)[0])
        resumed.start()  # no-op: on_start already ran before the checkpoint
        for b in split(stream.slice(k), 777):
            resumed.feed(b)
        again = resumed.finish()
        assert again.trades.equals(full.trades), f"trades differ after resume at tick {k}"
        assert again.equity.equals(full.equity)
        assert again.logs == full.logs and again.ticks == full.ticks


@pytest.mark.parametrize("chunk_size", [97, 1000, 50_000])
def test_per_tick_and_vectorised_sma_make_identical_trades(chunk_size: int) -> None:
    stream = random_stream(40_000, 3, seed=11, days=3)
    cfg = RunConfig(latency_ns=5 * 10**6, slippage_bps=2,
                    commission=Commission(per_share=0.005, minimum=1))
    params = {"fast": 8, "slow": 40, "qty": 10}
    tick = run(load_strategy(str(EXAMPLES / "sma_cross.py"), params)[0], ("A", "B", "C"),
               split(stream, 1000), cfg)
    vec = run(load_strategy(str(EXAMPLES / "sma_cross_vectorized.py"), params)[0],
              ("A", "B", "C"), split(stream, chunk_size), cfg)
    assert tick.trades.num_rows > 100
    assert vec.trades.equals(tick.trades)
    assert vec.equity.equals(tick.equity)


def test_checkpoint_detects_corruption_and_version() -> None:
    eng = Engine(load_strategy(str(EXAMPLES / "sma_cross.py"))[0], ("A",), RunConfig())
    eng.start()
    blob = bytearray(eng.checkpoint())
    blob[-5] ^= 0x01
    with pytest.raises(CheckpointError, match="checksum"):
        Engine.restore(bytes(blob), load_strategy(str(EXAMPLES / "sma_cross.py"))[0])
    with pytest.raises(CheckpointError, match="not a tickreplay checkpoint"):
        Engine.restore(b"garbage", load_strategy(str(EXAMPLES / "sma_cross.py"))[0])


def test_strategy_exception_names_the_tick_and_keeps_the_traceback() -> None:
    class Boom(Strategy):
        def on_tick(self, tick) -> None:
            if tick.price > 100.5:
                raise ZeroDivisionError("bad math")

    stream = random_stream(2000, 1, seed=1)
    with pytest.raises(StrategyError, match=r"ZeroDivisionError in strategy at ts=\d+ symbol=A") as e:
        run(Boom(), ("A",), [stream])
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_on_batch_must_return_one_finite_target_per_row() -> None:
    class Short(Strategy):
        def on_batch(self, batch):
            return np.zeros(batch.num_rows - 1)

    class Nan(Strategy):
        def on_batch(self, batch):
            return np.full(batch.num_rows, np.nan)

    stream = random_stream(100, 1, seed=1)
    with pytest.raises(StrategyError, match="one target per row"):
        run(Short(), ("A",), [stream])
    with pytest.raises(StrategyError, match="non-finite"):
        run(Nan(), ("A",), [stream])


def test_bad_params_name_the_field() -> None:
    with pytest.raises(StrategyError, match="param 'fast'"):
        load_strategy(str(EXAMPLES / "sma_cross.py"), {"fast": "ten"})
    with pytest.raises(StrategyError, match="fast must be smaller than slow"):
        load_strategy(str(EXAMPLES / "sma_cross.py"), {"fast": 50, "slow": 10})
    with pytest.raises(StrategyError, match="param 'nope'"):
        load_strategy(str(EXAMPLES / "sma_cross.py"), {"nope": 1})


def test_strategy_file_that_fails_to_import_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nraise RuntimeError('cannot start')\n")
    with pytest.raises(StrategyError, match="bad.py failed to import: RuntimeError: cannot start"):
        load_strategy(str(bad))
    none = tmp_path / "none.py"
    none.write_text("x = 1\n")
    with pytest.raises(StrategyError, match="exactly one Strategy subclass"):
        load_strategy(str(none))


def test_checkpoint_of_another_format_version_is_refused() -> None:
    import struct

    eng = Engine(load_strategy(str(EXAMPLES / "sma_cross.py"))[0], ("A",), RunConfig())
    eng.start()
    blob = bytearray(eng.checkpoint())
    blob[6:8] = struct.pack(">H", 1)  # what an older engine wrote
    with pytest.raises(CheckpointError, match="checkpoint version 1"):
        Engine.restore(bytes(blob), load_strategy(str(EXAMPLES / "sma_cross.py"))[0])


def test_unknown_params_are_rejected_even_by_a_lenient_params_model() -> None:
    from pydantic import BaseModel

    class Lenient(Strategy):
        class Params(BaseModel):  # no extra="forbid"
            level: float = 1.0

    with pytest.raises(StrategyError, match=r"param 'levle': unknown \(known: level\)"):
        Lenient({"levle": 5})
    assert Lenient({"level": "2.5"}).params.level == 2.5


def test_log_fields_must_be_json_values_and_fail_at_the_call() -> None:
    class Logger(Strategy):
        def on_tick(self, tick) -> None:
            self.log("ok", n=np.int64(3), x=1.5)
            self.log("bad", v=float("nan"))

    with pytest.raises(StrategyError, match="log\\('bad'\\) fields must be JSON values"):
        run(Logger(), ("A",), [random_stream(10, 1, seed=1)])


def test_an_older_engines_open_orders_are_refused_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose open orders have fewer fields (engine 1.0 wrote ten) fails the
    restore with a CheckpointError, not a bare ValueError from unpickling."""
    from tickreplay.engine.orders import Order

    eng = Engine(load_strategy(str(EXAMPLES / "sma_cross.py"))[0], ("A",), RunConfig())
    eng.start()
    eng.feed(random_stream(3, 1, seed=1))
    eng._pending[0].append(Order(99, 0, 1.0, "limit", 1.0, None, "gtc", 0, 0, -1))
    real = Order.__getstate__
    monkeypatch.setattr(Order, "__getstate__", lambda self: real(self)[:10])
    blob = eng.checkpoint()
    monkeypatch.setattr(Order, "__getstate__", real)
    with pytest.raises(CheckpointError, match="cannot be read by engine 2.0"):
        Engine.restore(blob, load_strategy(str(EXAMPLES / "sma_cross.py"))[0])
