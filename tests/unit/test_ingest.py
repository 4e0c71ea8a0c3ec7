"""Ingest: any column naming and timestamp format in, validated partitions out, precise errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tickreplay.data.errors import DataError
from tickreplay.data.ingest import IngestError, ingest
from tickreplay.data.objectstore import LocalStore, sha256_file
from tickreplay.data.stream import open_partition

# 2024-01-02 14:30:00 UTC (09:30 in New York, EST) in ns
OPEN_JAN2 = 1_704_205_800 * 1_000_000_000


def utc_ns(*fields: int) -> int:
    """ns since the epoch of a UTC wall time given as (year, month, day, hour, minute)."""
    return int(dt.datetime(*fields, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def read(store_root: Path, key: str) -> pa.Table:
    return pq.read_table(store_root / key)


def test_csv_with_odd_names_and_ms_epochs_split_by_utc_date(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "trades.csv",
        """
Time,Px,Qty,BidPx,Venue
1704239999000,187.15,100,187.14,XNAS
1704239999999,187.16,0.5,187.15,XNYS
1704240000000,187.20,200,187.19,XNAS
""",
    )
    store = LocalStore(tmp_path / "cat")
    parts = ingest(
        src,
        "AAPL",
        store,
        ts_col="Time",
        price_col="Px",
        size_col="Qty",
        columns={"bid": "BidPx", "exchange": "Venue"},
        ts_unit="ms",
    )
    # 1704240000000 ms is 2024-01-03 00:00 UTC: the third row opens a new partition.
    assert [p.date for p in parts] == ["2024-01-02", "2024-01-03"]
    day1 = read(store.root, parts[0].key)
    assert day1.column_names == ["ts", "price", "size", "bid", "exchange"]
    assert day1.column("ts").to_pylist() == [1704239999000 * 10**6, 1704239999999 * 10**6]
    assert day1.column("size").to_pylist() == [100.0, 0.5]
    assert day1.column("exchange").to_pylist() == ["XNAS", "XNYS"]
    assert read(store.root, parts[1].key).column("price").to_pylist() == [187.20]
    for part in parts:
        assert part.sha256 == sha256_file(store.root / part.key)
        open_partition(store.root / part.key).read()  # carries verifiable page checksums


def test_auto_unit_reads_epoch_seconds_with_fractions(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", "t,p,s\n1704205800.25,10,1\n1704205801,10.5,2")
    parts = ingest(src, "X", LocalStore(tmp_path / "c"), ts_col="t", price_col="p", size_col="s")
    ts = read(tmp_path / "c", parts[0].key).column("ts").to_pylist()
    assert ts == [OPEN_JAN2 + 250_000_000, OPEN_JAN2 + 1_000_000_000]


def test_naive_datetime_strings_are_read_in_the_given_zone_at_ns_precision(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "t.csv",
        "when,price,size\n2024-01-02 09:30:00.000000123,10,1\n2024-01-02 09:30:01,10,1",
    )
    parts = ingest(src, "X", LocalStore(tmp_path / "c"), ts_col="when", tz="America/New_York")
    ts = read(tmp_path / "c", parts[0].key).column("ts").to_pylist()
    assert ts == [OPEN_JAN2 + 123, OPEN_JAN2 + 1_000_000_000]


def test_strings_with_offsets_across_a_dst_switch(tmp_path: Path) -> None:
    rows = ["2024-03-08T09:30:00-05:00", "2024-03-11T09:30:00.5-04:00"]
    src = write_csv(tmp_path / "t.csv", "ts,price,size\n" + "\n".join(f"{r},10,1" for r in rows))
    parts = ingest(
        src, "X", LocalStore(tmp_path / "c"), tz="Asia/Tokyo"
    )  # tz ignored: offsets given
    got = [read(tmp_path / "c", p.key).column("ts")[0].as_py() for p in parts]
    assert got == [utc_ns(2024, 3, 8, 14, 30), utc_ns(2024, 3, 11, 13, 30) + 500_000_000]


def test_parquet_with_timestamp_type_and_odd_names(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    stamps = pa.array([OPEN_JAN2 // 1000, OPEN_JAN2 // 1000 + 1], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"Stamp": stamps, "LAST": [5, 6], "VOL": [1.0, 2.0]}), src)
    parts = ingest(
        src, "X", LocalStore(tmp_path / "c"), ts_col="Stamp", price_col="LAST", size_col="VOL"
    )
    t = read(tmp_path / "c", parts[0].key)
    assert t.column("ts").to_pylist() == [OPEN_JAN2, OPEN_JAN2 + 1000]
    assert t.column("price").type == pa.float64()
    assert t.column("price").to_pylist() == [5.0, 6.0]


GOOD = "ts,price,size\n{t0},10,1\n{t1},11,2\n{t2},12,3\n"


def case(row2: str) -> str:
    """A three-row CSV whose second data row is replaced."""
    lines = GOOD.format(t0=OPEN_JAN2, t1=OPEN_JAN2 + 1, t2=OPEN_JAN2 + 2).splitlines()
    lines[2] = row2
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("row2", "message"),
    [
        (",11,2", r"row 2, column 'ts': missing value"),
        (f"{OPEN_JAN2 + 1},,2", r"row 2, column 'price': missing value"),
        (f"{OPEN_JAN2 + 1},11,", r"row 2, column 'size': missing value"),
        (f"{OPEN_JAN2 + 1},0,2", r"row 2, column 'price': price must be > 0, got 0.0"),
        (f"{OPEN_JAN2 + 1},-3.5,2", r"row 2, column 'price': price must be > 0"),
        (f"{OPEN_JAN2 + 1},11,-1", r"row 2, column 'size': size must be >= 0"),
        (f"{OPEN_JAN2 + 1},eleven,2", r"row 2, column 'price': not a number: 'eleven'"),
        (
            f"{OPEN_JAN2 + 5},11,2",
            r"row 3, column 'ts': timestamp is earlier than the previous row",
        ),
    ],
)
def test_validation_errors_name_row_and_column(tmp_path: Path, row2: str, message: str) -> None:
    src = write_csv(tmp_path / "t.csv", case(row2))
    with pytest.raises(IngestError, match=message):
        ingest(src, "X", LocalStore(tmp_path / "c"), ts_unit="ns")
    assert not (tmp_path / "c" / "ticks").exists()  # nothing written on a validation error


def test_errors_use_the_source_column_names(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", "When,Px,Qty\n2024-01-02 09:30:00,10,1\nnot a time,10,1")
    with pytest.raises(
        IngestError, match=r"t.csv: row 2, column 'When': cannot parse 'not a time'"
    ):
        ingest(src, "X", LocalStore(tmp_path / "c"), ts_col="When", price_col="Px", size_col="Qty")


def test_missing_column_lists_the_available_ones(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "t.csv", "Time,Px,Qty\n1,2,3")
    with pytest.raises(
        IngestError, match=r"'Price' \(for price\) not found.*\['Time', 'Px', 'Qty'\]"
    ):
        ingest(
            src, "X", LocalStore(tmp_path / "c"), ts_col="Time", price_col="Price", size_col="Qty"
        )


def test_non_monotonic_rows_are_an_error_only_within_a_partition(tmp_path: Path) -> None:
    day = 86_400 * 10**9
    # The second day's rows come first in the file: each partition is still in order.
    text = f"ts,price,size\n{OPEN_JAN2 + day},1,1\n{OPEN_JAN2},1,1\n{OPEN_JAN2 + 1},1,1"
    parts = ingest(write_csv(tmp_path / "t.csv", text), "X", LocalStore(tmp_path / "c"))
    assert [p.date for p in parts] == ["2024-01-02", "2024-01-03"]
    text = f"ts,price,size\n{OPEN_JAN2 + 1},1,1\n{OPEN_JAN2 + day},1,1\n{OPEN_JAN2},1,1"
    with pytest.raises(IngestError, match=r"row 3, column 'ts'"):
        ingest(write_csv(tmp_path / "u.csv", text), "X", LocalStore(tmp_path / "d"))


def test_mixing_naive_and_offset_strings_is_an_error(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "t.csv", "ts,price,size\n2024-01-02T09:30:00Z,1,1\n2024-01-02T09:30:01,1,1"
    )
    with pytest.raises(IngestError, match=r"row 2, column 'ts': mixes timestamps"):
        ingest(src, "X", LocalStore(tmp_path / "c"))


def test_unsupported_inputs(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(IngestError, match="unsupported file type"):
        ingest(tmp_path / "t.json", "X", LocalStore(tmp_path / "c"))
    with pytest.raises(IngestError, match="file not found"):
        ingest(tmp_path / "absent.csv", "X", LocalStore(tmp_path / "c"))
    with pytest.raises(IngestError, match="no data rows"):
        ingest(write_csv(tmp_path / "e.csv", "ts,price,size"), "X", LocalStore(tmp_path / "c"))
    with pytest.raises(IngestError, match="not optional tick columns"):
        ingest(
            write_csv(tmp_path / "f.csv", "ts,price,size\n1,1,1"),
            "X",
            LocalStore(tmp_path / "c"),
            columns={"vwap": "ts"},
        )
    assert issubclass(IngestError, DataError)
