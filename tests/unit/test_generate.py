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
