"""plan_data, list_partitions and the fingerprint over a LocalStore of real Parquet files."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickreplay.data.catalog import DataPlan, list_partitions, plan_data
from tickreplay.data.errors import EmptyPlanError
from tickreplay.data.objectstore import LocalStore, ObjectInfo
from tickreplay.data.schema import PARQUET_WRITE_OPTIONS, partition_key, schema_for

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04"]


def _parquet_bytes(seed: int) -> bytes:
    table = pa.table(
        {"ts": [seed * 10, seed * 10 + 1], "price": [100.0 + seed, 100.5 + seed], "size": [1.0, 2.0]},
        schema=schema_for(["ts", "price", "size"]),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "catalog")
    for i, sym in enumerate(["MSFT", "AAPL"]):
        for j, day in enumerate(DAYS):
            store.put_bytes(partition_key(sym, day), _parquet_bytes(10 * i + j))
    store.put_bytes("ticks/symbol=AAPL/README.txt", b"not a partition")
    return store


def test_plan_has_every_partition_sorted_with_true_hashes(store: LocalStore) -> None:
    plan = plan_data(store, ["MSFT", "AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    assert plan.symbols == ("AAPL", "MSFT")
    assert [(p.symbol, p.date) for p in plan.partitions] == [
        ("AAPL", d) for d in DAYS
    ] + [("MSFT", d) for d in DAYS]
    for p in plan.partitions:
        data = (store.root / p.key).read_bytes()
        assert p.key == partition_key(p.symbol, p.date)
        assert p.size == len(data)
        assert p.sha256 == hashlib.sha256(data).hexdigest()
    assert plan.url == store.url
    assert (plan.start, plan.end) == ("2024-01-02", "2024-01-04")
    assert DataPlan.from_dict(plan.to_dict()) == plan


def test_dates_are_inclusive_and_accept_date_objects(store: LocalStore) -> None:
    plan = plan_data(store, ["AAPL"], dt.date(2024, 1, 3), dt.date(2024, 1, 3))
    assert [p.date for p in plan.partitions] == ["2024-01-03"]
    plan = plan_data(store, ["AAPL"], "2024-01-03", "2024-12-31")
    assert [p.date for p in plan.partitions] == ["2024-01-03", "2024-01-04"]


def test_symbol_without_data_is_planned_as_is(store: LocalStore) -> None:
    plan = plan_data(store, ["ZZZ", "AAPL"], "2024-01-02", "2024-01-02")
    assert plan.symbols == ("AAPL", "ZZZ")
    assert [p.symbol for p in plan.partitions] == ["AAPL"]
    assert plan.for_symbol("ZZZ") == ()


def test_empty_plan_names_url_symbols_and_dates(store: LocalStore) -> None:
    with pytest.raises(EmptyPlanError) as info:
        plan_data(store, ["AAPL", "ZZZ"], "2023-01-01", "2023-12-31")
    msg = str(info.value)
    for part in (store.url, "AAPL,ZZZ", "2023-01-01", "2023-12-31"):
        assert part in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("symbols", "start", "end", "match"),
    [
        (["AAPL"], "2024-01-04", "2024-01-02", "after end"),
        (["AAPL"], "2024-13-01", "2024-12-31", "invalid date"),
        (["AA/PL"], "2024-01-02", "2024-01-02", "invalid symbol"),
        ([], "2024-01-02", "2024-01-02", "no symbols"),
    ],
)
def test_bad_arguments(store: LocalStore, symbols: list[str], start: str, end: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_data(store, symbols, start, end)


def test_fingerprint_changes_when_one_byte_changes(store: LocalStore) -> None:
    before = plan_data(store, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    again = plan_data(store, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    assert again.fingerprint == before.fingerprint

    path = store.root / partition_key("MSFT", "2024-01-03")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different
    path.write_bytes(bytes(data))
    after = plan_data(store, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    assert after.fingerprint != before.fingerprint
    changed = [a.key for a, b in zip(after.partitions, before.partitions, strict=True) if a != b]
    assert changed == [partition_key("MSFT", "2024-01-03")]


def test_sha256_from_metadata_is_used_without_reading(store: LocalStore) -> None:
    """When the store reports a sha256 (S3 metadata), planning trusts it instead of hashing."""

    class MetadataStore(LocalStore):
        def head(self, key: str) -> ObjectInfo | None:
            info = super().head(key)
            return info and ObjectInfo(info.key, info.size, "f" * 64)

        def local_path(self, key: str) -> Path | None:
            raise AssertionError("planning read the bytes although metadata had the sha256")

    plan = plan_data(MetadataStore(store.root), ["AAPL"], "2024-01-02", "2024-01-04")
    assert {p.sha256 for p in plan.partitions} == {"f" * 64}


def test_list_partitions_lists_without_hashing(store: LocalStore) -> None:
    parts = list_partitions(store)
    assert [(p.symbol, p.date) for p in parts] == [("AAPL", d) for d in DAYS] + [
        ("MSFT", d) for d in DAYS
    ]
    assert all(p.sha256 == "" and p.size > 0 for p in parts)
    assert list_partitions(LocalStore(store.root / "nowhere")) == []
