"""DuckDB queries over a local catalog."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tickreplay.data.errors import DataError
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore
from tickreplay.data.query import query
from tickreplay.settings import Settings


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    store = LocalStore(root)
    generate(store, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04", ticks_per_day=300, seed=2)
    generate(store, ["SPY"], "2024-01-02", "2024-01-03", ticks_per_day=200, seed=2, quotes=True)
    return root


def test_hive_columns_and_counts(catalog: Path) -> None:
    out = query(
        str(catalog),
        "SELECT symbol, date, count(*) AS n FROM ticks GROUP BY ALL ORDER BY ALL",
        Settings(),
    ).to_pylist()
    assert out[0] == {"symbol": "AAPL", "date": dt.date(2024, 1, 2), "n": 300}
    assert [(r["symbol"], r["n"]) for r in out] == [("AAPL", 300)] * 3 + [("MSFT", 300)] * 3 + [
        ("SPY", 200)
    ] * 2


def test_values_match_the_files_and_quote_columns_are_null_where_absent(catalog: Path) -> None:
    key = "ticks/symbol=MSFT/date=2024-01-03/data.parquet"
    prices = pq.read_table(catalog / key, columns=["price"]).column("price")
    got = query(
        f"file://{catalog}",
        "SELECT sum(price) AS s, max(price) AS hi, count(ask) AS asks FROM ticks "
        "WHERE symbol = 'MSFT' AND date = DATE '2024-01-03'",
    ).to_pylist()[0]
    assert got["hi"] == pc.max(prices).as_py()
    assert got["s"] == pytest.approx(pc.sum(prices).as_py(), rel=1e-12)
    assert got["asks"] == 0
    spy = query(
        str(catalog), "SELECT count(*) AS n, count(ask) AS asks FROM ticks WHERE symbol = 'SPY'"
    )
    assert spy.to_pylist() == [{"n": 400, "asks": 400}]


def test_missing_catalog_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tick catalog"):
        query(str(tmp_path), "SELECT 1 FROM ticks")


def test_unsupported_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported storage URL"):
        query("ftp://host/x", "SELECT 1")
