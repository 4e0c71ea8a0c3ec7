"""plan_data, list_partitions and the fingerprint over a LocalStore of real Parquet files."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickreplay.data.catalog import (
    DataPlan,
    Partition,
    fingerprint,
    list_partitions,
    missing_symbols,
    plan_data,
)
from tickreplay.data.errors import EmptyPlanError
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore, ObjectInfo
from tickreplay.data.schema import (
    PARQUET_WRITE_OPTIONS,
    partition_key,
    quote_partition_key,
    quote_schema,
    schema_for,
)

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


# Fingerprints computed with the code as it was before quote partitions existed: a trades-only
# plan must keep them exactly, or every stored result hash would silently change.
FIXTURE_FINGERPRINT = "dec0c13300e5498fcf3c467e58d24d4238811fb0757db5b19f1e47bebbfadf67"
GENERATED_FINGERPRINT = "e4a38d9549b2879f5110ed59f85862fd97387167e1481baa7bbd8d4a5cda0f14"


def _quote_bytes(seed: int) -> bytes:
    table = pa.table(
        {"ts": [seed * 10, seed * 10 + 1], "bid": [99.5, 99.6], "ask": [100.0, 100.1],
         "bid_size": [100.0, None], "ask_size": [200.0, None]},
        schema=quote_schema(),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def quoted(store: LocalStore) -> LocalStore:
    """The trades fixture plus quotes for AAPL (all days) and EURUSD (FX: quotes, no trades)."""
    for j, day in enumerate(DAYS):
        store.put_bytes(quote_partition_key("AAPL", day), _quote_bytes(j))
        store.put_bytes(quote_partition_key("EURUSD", day), _quote_bytes(50 + j))
    store.put_bytes("quotes/symbol=AAPL/notes.txt", b"not a partition")
    return store


def test_trades_only_fingerprints_are_unchanged_by_quote_support(
    store: LocalStore, tmp_path: Path
) -> None:
    plan = plan_data(store, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    assert plan.fingerprint == FIXTURE_FINGERPRINT
    gen = LocalStore(tmp_path / "gen")
    generate(gen, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04", ticks_per_day=300, seed=2)
    assert plan_data(gen, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04").fingerprint == (
        GENERATED_FINGERPRINT
    )


def test_quotes_in_the_catalog_do_not_touch_a_trades_plan(quoted: LocalStore) -> None:
    plan = plan_data(quoted, ["AAPL", "MSFT"], "2024-01-02", "2024-01-04")
    assert plan.fingerprint == FIXTURE_FINGERPRINT
    assert {p.kind for p in plan.partitions} == {"trades"}
    assert all("kind" not in d for d in plan.to_dict()["partitions"])


def test_old_plan_dicts_without_kind_still_load(store: LocalStore) -> None:
    plan = plan_data(store, ["AAPL"], "2024-01-02", "2024-01-04")
    old = plan.to_dict()
    old["partitions"] = [
        {k: v for k, v in d.items() if k in ("symbol", "date", "key", "size", "sha256")}
        for d in old["partitions"]
    ]
    assert DataPlan.from_dict(old) == plan
    assert all(p.kind == "trades" for p in DataPlan.from_dict(old).partitions)


def test_plan_of_trades_and_quotes(quoted: LocalStore) -> None:
    plan = plan_data(quoted, ["MSFT", "AAPL"], "2024-01-03", "2024-01-04",
                     events=("trades", "quotes"))
    assert [(p.symbol, p.date, p.kind) for p in plan.partitions] == [
        ("AAPL", "2024-01-03", "quotes"), ("AAPL", "2024-01-03", "trades"),
        ("AAPL", "2024-01-04", "quotes"), ("AAPL", "2024-01-04", "trades"),
        ("MSFT", "2024-01-03", "trades"), ("MSFT", "2024-01-04", "trades"),
    ]
    for p in plan.for_symbol("AAPL", "quotes"):
        data = (quoted.root / p.key).read_bytes()
        assert p.key == quote_partition_key("AAPL", p.date)
        assert (p.size, p.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert [p.kind for p in plan.for_symbol("AAPL")] == ["trades", "trades"]
    assert plan.for_symbol("MSFT", "quotes") == ()
    assert plan.kinds() == ("trades", "quotes")
    assert DataPlan.from_dict(plan.to_dict()) == plan
    # Quotes are part of the fingerprint, independently of the order partitions are given in.
    trades_only = plan_data(quoted, ["MSFT", "AAPL"], "2024-01-03", "2024-01-04")
    assert plan.fingerprint != trades_only.fingerprint
    assert fingerprint(list(reversed(plan.partitions))) == plan.fingerprint
    # The same request gives the same plan; events are a set (order and repeats do not matter).
    again = plan_data(quoted, ["AAPL", "MSFT"], "2024-01-03", "2024-01-04",
                      events=["quotes", "trades", "quotes"])
    assert again == plan


def test_quotes_only_plan_for_fx_without_trades(quoted: LocalStore) -> None:
    plan = plan_data(quoted, ["EURUSD"], "2024-01-02", "2024-01-04", events=("quotes",))
    assert [(p.symbol, p.kind) for p in plan.partitions] == [("EURUSD", "quotes")] * 3
    assert plan.kinds() == ("quotes",)
    with pytest.raises(EmptyPlanError, match="quotes"):
        plan_data(quoted, ["MSFT"], "2024-01-02", "2024-01-04", events=("quotes",))
    with pytest.raises(EmptyPlanError):
        plan_data(quoted, ["EURUSD"], "2024-01-02", "2024-01-04")


def test_missing_symbols_by_event_kind(quoted: LocalStore) -> None:
    d = dt.date.fromisoformat
    syms = ["AAPL", "MSFT", "EURUSD", "ZZZ"]
    assert missing_symbols(quoted, syms, d(DAYS[0]), d(DAYS[-1])) == ["EURUSD", "ZZZ"]
    assert missing_symbols(quoted, syms, d(DAYS[0]), d(DAYS[-1]), events=("quotes",)) == [
        "MSFT", "ZZZ"]
    assert missing_symbols(quoted, syms, d(DAYS[0]), d(DAYS[-1]),
                           events=("trades", "quotes")) == ["ZZZ"]
    assert missing_symbols(quoted, ["AAPL"], d("2023-01-02"), d("2023-01-03"),
                           events=("quotes",)) == ["AAPL"]


@pytest.mark.parametrize("events", [(), ("bids",), "quotes"])
def test_bad_event_kinds_are_refused(store: LocalStore, events: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        plan_data(store, ["AAPL"], "2024-01-02", "2024-01-04", events=events)  # type: ignore[arg-type]


def test_list_partitions_shows_both_kinds(quoted: LocalStore) -> None:
    parts = list_partitions(quoted)
    assert [(p.symbol, p.date, p.kind) for p in parts] == (
        [x for d in DAYS for x in (("AAPL", d, "quotes"), ("AAPL", d, "trades"))]
        + [("EURUSD", d, "quotes") for d in DAYS]
        + [("MSFT", d, "trades") for d in DAYS]
    )
    assert all(isinstance(p, Partition) and p.size > 0 for p in parts)
