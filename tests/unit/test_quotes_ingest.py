"""Ingest of L1 quotes (library and ``data ingest --kind quotes``) and ``data ls`` by kind."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tickreplay.data.catalog import plan_data
from tickreplay.data.ingest import IngestError, ingest_quotes
from tickreplay.data.objectstore import LocalStore, sha256_file
from tickreplay.data.schema import quote_partition_key, quote_schema
from tickreplay.data.stream import check_partition, open_event_stream, open_partition

# 2024-01-02 14:30:00 UTC (09:30 in New York, EST) in ns
OPEN_JAN2 = 1_704_205_800 * 1_000_000_000


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_quotes_with_odd_names_sizes_and_ms_epochs_split_by_utc_date(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "q.csv", """
Time,BidPx,AskPx,BidQty,AskQty
1704239999000,187.14,187.16,300,
1704239999999,187.15,187.15,100,200
1704240000000,187.18,187.21,,500
""")
    store = LocalStore(tmp_path / "cat")
    parts = ingest_quotes(src, "AAPL", store, ts_col="Time", bid_col="BidPx", ask_col="AskPx",
                          bid_size_col="BidQty", ask_size_col="AskQty", ts_unit="ms")
    # 1704240000000 ms is 2024-01-03 00:00 UTC: the third row opens a new partition.
    assert [(p.date, p.kind) for p in parts] == [("2024-01-02", "quotes"), ("2024-01-03", "quotes")]
    assert [p.key for p in parts] == [quote_partition_key("AAPL", p.date) for p in parts]
    day1 = pq.read_table(store.root / parts[0].key)
    assert day1.schema == quote_schema()
    assert day1.column("ts").to_pylist() == [1704239999000 * 10**6, 1704239999999 * 10**6]
    assert day1.column("bid").to_pylist() == [187.14, 187.15]  # a locked quote is kept
    assert day1.column("ask_size").to_pylist() == [None, 200.0]  # null: unlimited
    assert pq.read_table(store.root / parts[1].key).column("bid_size").to_pylist() == [None]
    for part in parts:
        assert part.sha256 == sha256_file(store.root / part.key)
        open_partition(store.root / part.key).read()  # carries verifiable page checksums
        assert check_partition(store.root / part.key, part.key) >= 1
    # Planned and streamed as quotes; null sizes are unlimited (+inf) in the stream.
    plan = plan_data(store, ["AAPL"], "2024-01-02", "2024-01-03", events=("quotes",))
    got = pa.Table.from_batches(list(open_event_stream(plan, [], lambda p: store.root / p.key)))
    assert got.column("q_ask_size").to_pylist() == [float("inf"), 200.0, 500.0]
    assert got.column("q_bid_size").to_pylist() == [300.0, 100.0, float("inf")]


def test_quotes_without_size_columns_have_null_sizes(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "q.csv", "ts,bid,ask\n2024-01-02T14:30:00Z,1.1,1.2\n"
                                       "2024-01-02T14:30:00.5Z,1.1,1.3")
    store = LocalStore(tmp_path / "cat")
    (part,) = ingest_quotes(src, "EURUSD", store)
    t = pq.read_table(store.root / part.key)
    assert t.schema == quote_schema()
    assert t.column("ts").to_pylist() == [OPEN_JAN2, OPEN_JAN2 + 500_000_000]
    assert t.column("bid_size").null_count == t.column("ask_size").null_count == 2


def test_parquet_quotes_with_timestamp_type(tmp_path: Path) -> None:
    src = tmp_path / "q.parquet"
    pq.write_table(pa.table({
        "t": pa.array([OPEN_JAN2, OPEN_JAN2 + 1], pa.timestamp("ns", tz="UTC")),
        "b": pa.array([10, 11], pa.int32()), "a": pa.array([10.5, 11.5], pa.float32()),
    }), src)
    (part,) = ingest_quotes(src, "X", LocalStore(tmp_path / "cat"), ts_col="t", bid_col="b",
                            ask_col="a")
    t = pq.read_table(tmp_path / "cat" / part.key)
    assert t.column("bid").to_pylist() == [10.0, 11.0] and t.column("ts").to_pylist()[1] == (
        OPEN_JAN2 + 1)


GOOD = "ts,bid,ask,bs,as\n{t0},10,10.5,1,1\n{t1},10,10.5,1,1\n{t2},10,10.5,1,1"


def case(row2: str) -> str:
    """A three-row CSV whose second data row is replaced."""
    lines = GOOD.format(t0=OPEN_JAN2, t1=OPEN_JAN2 + 1, t2=OPEN_JAN2 + 2).splitlines()
    lines[2] = row2
    return "\n".join(lines)


T1 = OPEN_JAN2 + 1


@pytest.mark.parametrize(
    ("row2", "message"),
    [
        (f"{T1},10.6,10.5,1,1", r"row 2, column 'bid': crossed quote: bid 10.6 is above ask 10.5"),
        (f"{T1},,10.5,1,1", r"row 2, column 'bid': missing value"),
        (f"{T1},10,,1,1", r"row 2, column 'ask': missing value"),
        (",10,10.5,1,1", r"row 2, column 'ts': missing value"),
        (f"{T1},0,10.5,1,1", r"row 2, column 'bid': bid must be > 0, got 0.0"),
        (f"{T1},10,-1,1,1", r"row 2, column 'ask': ask must be > 0"),
        (f"{T1},10,inf,1,1", r"row 2, column 'ask': ask must be > 0, got inf"),
        (f"{T1},ten,10.5,1,1", r"row 2, column 'bid': not a number: 'ten'"),
        (f"{T1},10,10.5,-1,1", r"row 2, column 'bs': bid size must be >= 0, got -1.0"),
        (f"{T1},10,10.5,1,-0.5", r"row 2, column 'as': ask size must be >= 0"),
        (f"{T1},10,10.5,1,inf", r"row 2, column 'as': ask size must be >= 0, got inf"),
        (f"{OPEN_JAN2 + 5},10,10.5,1,1", r"row 3, column 'ts': timestamp is earlier"),
    ],
)
def test_quote_validation_errors_name_row_and_column(
    tmp_path: Path, row2: str, message: str
) -> None:
    src = write_csv(tmp_path / "q.csv", case(row2))
    with pytest.raises(IngestError, match=message):
        ingest_quotes(src, "X", LocalStore(tmp_path / "c"), bid_size_col="bs",
                      ask_size_col="as", ts_unit="ns")
    assert not (tmp_path / "c").exists()  # nothing written on a validation error


def test_missing_quote_columns_list_the_available_ones(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "q.csv", "ts,BidPx,AskPx\n1,2,3")
    with pytest.raises(IngestError, match=r"'bid' \(for bid\), 'ask' \(for ask\) not found"):
        ingest_quotes(src, "X", LocalStore(tmp_path / "c"))
    with pytest.raises(IngestError, match=r"'Qty' \(for bid_size\) not found"):
        ingest_quotes(src, "X", LocalStore(tmp_path / "c"), bid_col="BidPx", ask_col="AskPx",
                      bid_size_col="Qty")
    with pytest.raises(IngestError, match="no data rows"):
        ingest_quotes(write_csv(tmp_path / "e.csv", "ts,bid,ask"), "X", LocalStore(tmp_path))


def _cli(*args: str) -> tuple[int, str]:
    from tickreplay import cli

    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, result.output


def test_cli_ingest_quotes_and_ls_show_the_kind(tmp_path: Path) -> None:
    cat = str(tmp_path / "cat")
    trades = write_csv(tmp_path / "t.csv", f"time,px,qty\n{OPEN_JAN2},10.2,5")
    quotes = write_csv(tmp_path / "q.csv", f"time,b,a,bq\n{OPEN_JAN2},10.1,10.3,100")
    code, out = _cli("data", "ingest", str(trades), "--symbol", "XYZ", "--ts-col", "time",
                     "--price-col", "px", "--size-col", "qty", "--out", cat)
    assert code == 0, out
    code, out = _cli("data", "ingest", str(quotes), "--kind", "quotes", "--symbol", "XYZ",
                     "--ts-col", "time", "--bid-col", "b", "--ask-col", "a",
                     "--bid-size-col", "bq", "--out", cat)
    assert code == 0, out
    t = pq.read_table(tmp_path / "cat" / quote_partition_key("XYZ", "2024-01-02"))
    assert t.column("bid_size").to_pylist() == [100.0] and t.column("ask_size").null_count == 1
    code, out = _cli("data", "ls", cat, "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert [(p["symbol"], p["date"], p["kind"]) for p in listed] == [
        ("XYZ", "2024-01-02", "quotes"), ("XYZ", "2024-01-02", "trades")]
    code, out = _cli("data", "ls", cat)
    assert code == 0 and "quotes" in out and "trades" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "quotes", "--bid-col", "b", "--ask-col", "a", "--bid-size-col", "nope"],
     "'nope' (for bid_size) not found"),
    (["--kind", "quotes", "--column", "x=bid"], "--column applies to trades only"),
    (["--bid-col", "b"], "--bid-col only apply with --kind quotes"),
    (["--kind", "book"], "--kind must be trades or quotes"),
])
def test_cli_ingest_quote_flag_errors(tmp_path: Path, args: list[str], message: str) -> None:
    src = write_csv(tmp_path / "q.csv", f"ts,b,a\n{OPEN_JAN2},10.4,10.3")
    code, out = _cli("data", "ingest", str(src), "--symbol", "XYZ", "--out",
                     str(tmp_path / "cat"), *args)
    assert code != 0 and message in " ".join(out.split()), out
    code, out = _cli("data", "ingest", str(src), "--symbol", "XYZ", "--out",
                     str(tmp_path / "cat"), "--kind", "quotes", "--bid-col", "b", "--ask-col", "a")
    assert code != 0 and "crossed quote" in " ".join(out.split()) and "row 1" in out, out
