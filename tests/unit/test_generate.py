"""Synthetic data: deterministic bytes and a realistic shape."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow.parquet as pq
import pytest

from tickreplay.data.generate import generate, session_bounds_ns
from tickreplay.data.objectstore import LocalStore

NY = ZoneInfo("America/New_York")


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    args = (["AAPL", "MSFT"], "2024-01-02", "2024-01-05")
    a = generate(LocalStore(tmp_path / "a"), *args, ticks_per_day=2_000, seed=7, quotes=True)
    b = generate(LocalStore(tmp_path / "b"), *args, ticks_per_day=2_000, seed=7, quotes=True)
    assert a == b
    for part in a:
        assert (tmp_path / "a" / part.key).read_bytes() == (tmp_path / "b" / part.key).read_bytes()


def test_returned_partitions_describe_the_written_bytes(tmp_path: Path) -> None:
    parts = generate(
        LocalStore(tmp_path), ["AAPL"], "2024-01-05", "2024-01-08", ticks_per_day=100, seed=1
    )
    # 2024-01-06/07 are a weekend: no partitions for them
    assert [p.date for p in parts] == ["2024-01-05", "2024-01-08"]
    for part in parts:
        data = (tmp_path / part.key).read_bytes()
        assert part.key == f"ticks/symbol=AAPL/date={part.date}/data.parquet"
        assert part.size == len(data)
        assert part.sha256 == hashlib.sha256(data).hexdigest()


def test_a_symbols_data_does_not_depend_on_the_other_symbols_or_the_seed_alone(
    tmp_path: Path,
) -> None:
    alone = generate(
        LocalStore(tmp_path / "a"), ["AAPL"], "2024-01-02", "2024-01-03", ticks_per_day=500, seed=3
    )
    both = generate(
        LocalStore(tmp_path / "b"),
        ["MSFT", "AAPL"],
        "2024-01-02",
        "2024-01-03",
        ticks_per_day=500,
        seed=3,
    )
    assert [p.sha256 for p in alone] == [p.sha256 for p in both if p.symbol == "AAPL"]
    other_seed = generate(
        LocalStore(tmp_path / "c"), ["AAPL"], "2024-01-02", "2024-01-03", ticks_per_day=500, seed=4
    )
    assert {p.sha256 for p in alone}.isdisjoint(p.sha256 for p in other_seed)


@pytest.fixture(scope="module")
def quarter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """Three months across the March DST switch, with quotes."""
    root = tmp_path_factory.mktemp("quarter")
    parts = generate(
        LocalStore(root),
        ["AAPL"],
        "2024-01-02",
        "2024-03-29",
        ticks_per_day=5_000,
        seed=11,
        quotes=True,
    )
    return root, parts


def test_ticks_fall_in_the_new_york_session_across_dst(quarter: tuple[Path, list]) -> None:
    root, parts = quarter
    for part in parts:
        ts = pq.read_table(root / part.key).column("ts").to_numpy()
        assert np.all(np.diff(ts) >= 0)
        first = dt.datetime.fromtimestamp(ts[0] / 1e9, tz=NY)
        last = dt.datetime.fromtimestamp(ts[-1] / 1e9, tz=NY)
        assert first.date().isoformat() == last.date().isoformat() == part.date
        assert dt.time(9, 30) <= first.time() and last.time() < dt.time(16, 0)
    # The session opens at 14:30 UTC in winter and 13:30 UTC after the March switch.
    assert (
        session_bounds_ns(dt.date(2024, 3, 8))[0] % 86_400_000_000_000
        == 14 * 3_600_000_000_000 + 30 * 60_000_000_000
    )
    assert (
        session_bounds_ns(dt.date(2024, 3, 11))[0] % 86_400_000_000_000
        == 13 * 3_600_000_000_000 + 30 * 60_000_000_000
    )


def test_prices_sizes_and_quotes_have_a_realistic_shape(quarter: tuple[Path, list]) -> None:
    root, parts = quarter
    closes, opens = [], []
    for part in parts:
        t = pq.read_table(root / part.key)
        price, size = t.column("price").to_numpy(), t.column("size").to_numpy()
        bid, ask = t.column("bid").to_numpy(), t.column("ask").to_numpy()
        assert np.all(price > 0)
        assert np.array_equal(price, np.rint(price * 100) / 100)  # whole cents
        assert np.all(size >= 1) and np.array_equal(size, np.rint(size))
        assert np.all(bid > 0) and np.all(bid < ask)
        assert np.all(np.rint((ask - bid) * 100) >= 1)
        assert np.all((bid <= price) & (price < ask))
        assert np.all(t.column("bid_size").to_numpy() >= 100)
        opens.append(price[0])
        closes.append(price[-1])
    daily = np.diff(np.log(closes))
    assert 0.010 < daily.std(ddof=1) < 0.027
    # The walk continues overnight: each open is near the previous close.
    assert np.all(np.abs(np.log(np.array(opens[1:]) / np.array(closes[:-1]))) < 0.01)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError, match="ticks_per_day"):
        generate(store, ["AAPL"], "2024-01-02", "2024-01-02", ticks_per_day=0, seed=1)
    with pytest.raises(ValueError, match="before start"):
        generate(store, ["AAPL"], "2024-01-05", "2024-01-02", ticks_per_day=10, seed=1)
    with pytest.raises(ValueError, match="invalid symbol"):
        generate(store, ["A/B"], "2024-01-02", "2024-01-02", ticks_per_day=10, seed=1)


# sha256 of trade files written by ``generate`` before quote partitions existed (seed 2, 300
# ticks per day): quote support must never change a trade byte.
PINNED_TRADES = {
    "ticks/symbol=AAPL/date=2024-01-02/data.parquet":
        "f77ae33120c8f05c45328361c8ce51e77a550e45d132e8cbba7b4487fba6cb6a",
    "ticks/symbol=AAPL/date=2024-01-03/data.parquet":
        "091b9222b09191396d4b59cdab913c0de238dff2c1b68ba99bac36f82ec002da",
    "ticks/symbol=MSFT/date=2024-01-02/data.parquet":
        "2dfcf7cd7ef0eb70a7e70225f20efa7062b232f32d2a416caaf078e3c60b5d5e",
    "ticks/symbol=MSFT/date=2024-01-03/data.parquet":
        "f4968df3441ed22d3e7e67f2094bb54a7be89dd3153b8310c6cc83cc5cd6477e",
}


def _files(root: Path, prefix: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted((root / prefix).rglob("*.parquet"))
    }


def test_trade_bytes_are_identical_with_and_without_quote_partitions(tmp_path: Path) -> None:
    args = (["AAPL", "MSFT"], "2024-01-02", "2024-01-03")
    plain = generate(LocalStore(tmp_path / "a"), *args, ticks_per_day=300, seed=2)
    both = generate(LocalStore(tmp_path / "b"), *args, ticks_per_day=300, seed=2,
                    quote_partitions=True)
    assert {p.key: p.sha256 for p in plain} == PINNED_TRADES
    assert [p for p in both if p.kind == "trades"] == plain
    assert _files(tmp_path / "a", "ticks") == _files(tmp_path / "b", "ticks")
    assert not (tmp_path / "a" / "quotes").exists()
    quotes = [p for p in both if p.kind == "quotes"]
    assert [(p.symbol, p.date) for p in quotes] == [(p.symbol, p.date) for p in plain]
    assert all(p.key.startswith(f"quotes/symbol={p.symbol}/date={p.date}/") for p in quotes)
    # Deterministic: the same arguments give the same quote bytes.
    again = generate(LocalStore(tmp_path / "c"), *args, ticks_per_day=300, seed=2,
                     quote_partitions=True)
    assert again == both
    assert _files(tmp_path / "b", "quotes") == _files(tmp_path / "c", "quotes")


def test_cli_generate_quotes_keeps_the_trade_bytes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tickreplay import cli

    common = ["data", "generate", "--symbols", "AAPL,MSFT", "--start", "2024-01-02",
              "--end", "2024-01-03", "--ticks-per-day", "300", "--seed", "2"]
    runner = CliRunner()
    for name, extra in (("plain", []), ("quotes", ["--quotes"])):
        result = runner.invoke(cli.app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert _files(tmp_path / "plain", "ticks") == _files(tmp_path / "quotes", "ticks")
    assert {k: hashlib.sha256(v).hexdigest()
            for k, v in _files(tmp_path / "quotes", "ticks").items()} == PINNED_TRADES
    assert len(_files(tmp_path / "quotes", "quotes")) == 4


@pytest.fixture(scope="module")
def quoted_month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("quoted")
    parts = generate(LocalStore(root), ["AAPL", "PENNY"], "2024-03-07", "2024-03-12",
                     ticks_per_day=4_000, seed=5, quote_partitions=True)
    return root, parts


def test_quotes_are_realistic_l1(quoted_month: tuple[Path, list]) -> None:
    root, parts = quoted_month
    quotes = {(p.symbol, p.date): p for p in parts if p.kind == "quotes"}
    trades = {(p.symbol, p.date): p for p in parts if p.kind == "trades"}
    assert quotes.keys() == trades.keys() and len(quotes) == 8  # 2 symbols x 4 weekdays
    for k, qp in quotes.items():
        q = pq.read_table(root / qp.key)
        t = pq.read_table(root / trades[k].key)
        assert q.schema.names == ["ts", "bid", "ask", "bid_size", "ask_size"]
        ts, bid, ask = (q.column(c).to_numpy() for c in ("ts", "bid", "ask"))
        assert q.num_rows == 3 * t.num_rows  # quotes outnumber trades
        assert np.all(np.diff(ts) >= 0)
        open_ns, close_ns = session_bounds_ns(dt.date.fromisoformat(qp.date))
        assert open_ns <= ts[0] and ts[-1] < close_ns  # the same session as the trades
        assert np.all(bid > 0) and np.all(bid < ask)  # never crossed, never locked
        assert np.array_equal(bid, np.rint(bid * 100) / 100)  # the trades' cent grid
        assert np.array_equal(ask, np.rint(ask * 100) / 100)
        for c in ("bid_size", "ask_size"):
            size = q.column(c).to_numpy()
            assert q.column(c).null_count == 0 and np.all(size >= 100)
            assert np.array_equal(size, np.rint(size / 100) * 100)  # round lots
        # The mid follows the trade path: near the last trade's price at every quote.
        tts, px = t.column("ts").to_numpy(), t.column("price").to_numpy()
        last = np.clip(np.searchsorted(tts, ts, side="right") - 1, 0, None)
        mid = (bid + ask) / 2
        assert np.max(np.abs(mid / px[last] - 1)) < 0.002


def test_spread_widens_with_recent_volatility(quoted_month: tuple[Path, list]) -> None:
    from tickreplay.data.generate import _recent_vol

    root, parts = quoted_month
    p = next(p for p in parts if p.kind == "quotes" and p.symbol == "AAPL")
    q = pq.read_table(root / p.key)
    t = pq.read_table(root / p.key.replace("quotes/", "ticks/", 1))
    tts, px = t.column("ts").to_numpy(), t.column("price").to_numpy()
    vol = _recent_vol(np.log(px))
    last = np.clip(np.searchsorted(tts, q.column("ts").to_numpy(), side="right") - 1, 0, None)
    spread = q.column("ask").to_numpy() - q.column("bid").to_numpy()
    calm, wild = np.quantile(vol[last], [0.25, 0.75])
    assert spread[vol[last] >= wild].mean() > 1.2 * spread[vol[last] <= calm].mean()
