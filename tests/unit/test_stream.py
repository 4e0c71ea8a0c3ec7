"""Streaming reader and k-way merge: order, resume, projection, integrity, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickreplay.data.catalog import DataPlan, Partition, fingerprint
from tickreplay.data.errors import CorruptDataError, DataError
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore, sha256_file
from tickreplay.data.schema import PARQUET_WRITE_OPTIONS, partition_key, schema_for
from tickreplay.data.stream import open_partition, open_tick_stream

DATES = ("2024-01-02", "2024-01-03", "2024-01-04")


def write_partition(
    root: Path, symbol: str, date: str, columns: dict[str, list], *, row_group_size: int = 262_144
) -> Partition:
    """Write one partition with the catalog's options (small row groups exercise skipping)."""
    table = pa.Table.from_pydict(columns, schema=schema_for(list(columns)))
    key = partition_key(symbol, date)
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **{**PARQUET_WRITE_OPTIONS, "row_group_size": row_group_size})
    return Partition(symbol, date, key, path.stat().st_size, sha256_file(path))


def make_plan(root: Path, symbols: list[str], partitions: list[Partition]) -> DataPlan:
    parts = tuple(sorted(partitions, key=lambda p: (p.symbol, p.date)))
    return DataPlan(str(root), tuple(symbols), DATES[0], DATES[-1], parts, fingerprint(parts))


def read_all(plan: DataPlan, root: Path, columns: list[str], **kw: object) -> pd.DataFrame:
    batches = list(open_tick_stream(plan, columns, lambda p: root / p.key, **kw))
    if not batches:
        return pd.DataFrame({c: [] for c in ["ts", "sym", *columns]})
    return pa.Table.from_batches(batches).to_pandas()


# One symbol's data: sorted timestamps from a tiny range (so ties across symbols are common),
# cut into up to three partitions.
symbol_data = (
    st.lists(st.integers(0, 6), max_size=30)
    .map(sorted)
    .flatmap(
        lambda ts: st.tuples(
            st.just(ts), st.lists(st.integers(0, len(ts)), min_size=2, max_size=2).map(sorted)
        )
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(symbol_data, min_size=3, max_size=3),
    batch_size=st.integers(1, 8),
    row_group_size=st.integers(1, 10),
    cut=st.floats(0, 1),
)
def test_merge_matches_reference_sort_and_resumes_as_suffix(
    data: list[tuple[list[int], list[int]]], batch_size: int, row_group_size: int, cut: float
) -> None:
    symbols = ["AAA", "BBB", "CCC"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        partitions = []
        for sym_index, (symbol, (ts, (a, b))) in enumerate(zip(symbols, data, strict=True)):
            # price encodes (symbol, row) so the output identifies every row unambiguously
            prices = [1000.0 * (sym_index + 1) + row for row in range(len(ts))]
            sizes = [float(row % 7) for row in range(len(ts))]
            for date, lo, hi in zip(DATES, (0, a, b), (a, b, len(ts)), strict=True):
                if hi > lo:
                    cols = {"ts": ts[lo:hi], "price": prices[lo:hi], "size": sizes[lo:hi]}
                    partitions.append(
                        write_partition(root, symbol, date, cols, row_group_size=row_group_size)
                    )
            rows += [(t, sym_index, row, prices[row], sizes[row]) for row, t in enumerate(ts)]
        plan = make_plan(root, symbols, partitions)
        got = read_all(plan, root, ["price", "size"], batch_size=batch_size)

        ref = pd.DataFrame(rows, columns=["ts", "sym", "row", "price", "size"])
        ref = ref.sort_values(["ts", "sym", "row"], kind="stable").reset_index(drop=True)
        assert got.columns.tolist() == ["ts", "sym", "price", "size"]
        assert got["ts"].tolist() == ref["ts"].tolist()
        assert got["sym"].tolist() == ref["sym"].tolist()
        assert got["price"].tolist() == ref["price"].tolist()
        assert got["size"].tolist() == ref["size"].tolist()

        k = int(cut * len(ref))
        consumed = ref["sym"].iloc[:k].value_counts().to_dict()
        offsets = {symbols[i]: int(n) for i, n in consumed.items()}
        resumed = read_all(plan, root, ["price", "size"], batch_size=batch_size, offsets=offsets)
        assert resumed["price"].tolist() == ref["price"].iloc[k:].tolist()
        assert resumed["sym"].tolist() == ref["sym"].iloc[k:].tolist()


def test_single_symbol_resume_skips_partitions_and_row_groups(tmp_path: Path) -> None:
    parts = []
    for day, date in enumerate(DATES):
        ts = list(range(day * 100, day * 100 + 50))
        parts.append(
            write_partition(
                tmp_path,
                "AAA",
                date,
                {"ts": ts, "price": [float(t) for t in ts], "size": [1.0] * 50},
                row_group_size=8,
            )
        )
    plan = make_plan(tmp_path, ["AAA"], parts)
    full = read_all(plan, tmp_path, ["price"], batch_size=16)
    assert len(full) == 150
    assert (full["sym"] == 0).all()
    for offset in (0, 1, 8, 49, 50, 67, 149, 150):
        resumed = read_all(plan, tmp_path, ["price"], batch_size=16, offsets={"AAA": offset})
        assert resumed["price"].tolist() == full["price"].iloc[offset:].tolist()
    with pytest.raises(DataError, match="past the end"):
        read_all(plan, tmp_path, ["price"], offsets={"AAA": 151})


def test_batches_are_large_not_tiny(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    parts = generate(store, ["AAA", "BBB"], DATES[0], DATES[0], ticks_per_day=50_000, seed=3)
    plan = make_plan(tmp_path, ["AAA", "BBB"], parts)
    sizes = [
        b.num_rows
        for b in open_tick_stream(plan, ["price"], lambda p: tmp_path / p.key, batch_size=8192)
    ]
    assert sum(sizes) == 100_000
    assert len(sizes) <= 100_000 // 8192 + 2


def flip_bit_in_column(path: Path, column: str) -> None:
    """Flip one bit in the middle of a column chunk's pages (row group 0)."""
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.to_arrow_schema().names.index(column)
    chunk = meta.row_group(0).column(index)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    middle = start + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[middle] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture()
def one_day(tmp_path: Path) -> tuple[DataPlan, Path]:
    parts = generate(
        LocalStore(tmp_path), ["AAA"], DATES[0], DATES[0], ticks_per_day=20_000, seed=5
    )
    return make_plan(tmp_path, ["AAA"], parts), tmp_path


def test_flipped_bit_in_price_page_raises_corrupt_data_naming_partition(
    one_day: tuple[DataPlan, Path],
) -> None:
    plan, root = one_day
    key = plan.partitions[0].key
    flip_bit_in_column(root / key, "price")
    with pytest.raises(CorruptDataError, match=f"corrupt partition {key}"):
        read_all(plan, root, ["price"])


def test_only_requested_columns_are_read(one_day: tuple[DataPlan, Path]) -> None:
    plan, root = one_day
    key = plan.partitions[0].key
    expected = pq.read_table(root / key, columns=["ts", "price"])
    # A damaged size column proves projection: reading price only must not touch its pages.
    flip_bit_in_column(root / key, "size")
    got = read_all(plan, root, ["price"])
    assert got.columns.tolist() == ["ts", "sym", "price"]
    assert got["price"].tolist() == expected.column("price").to_pylist()
    assert got["ts"].tolist() == expected.column("ts").to_pylist()
    with pytest.raises(CorruptDataError):
        read_all(plan, root, ["price", "size"])


def test_truncated_file_raises_corrupt_data(one_day: tuple[DataPlan, Path]) -> None:
    plan, root = one_day
    path = root / plan.partitions[0].key
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match=plan.partitions[0].key):
        open_partition(path, plan.partitions[0].key)
    with pytest.raises(CorruptDataError):
        read_all(plan, root, ["price"])


def test_missing_column_names_partition_and_column(one_day: tuple[DataPlan, Path]) -> None:
    plan, root = one_day
    with pytest.raises(DataError, match=r"partition .*AAA.* has no column 'bid'") as info:
        read_all(plan, root, ["price", "bid"])
    assert not isinstance(info.value, CorruptDataError)


def test_timestamps_going_back_across_partitions_name_the_partition(tmp_path: Path) -> None:
    p1 = write_partition(
        tmp_path, "AAA", DATES[0], {"ts": [5, 6], "price": [1.0, 1.0], "size": [1.0, 1.0]}
    )
    p2 = write_partition(
        tmp_path, "AAA", DATES[1], {"ts": [4, 7], "price": [1.0, 1.0], "size": [1.0, 1.0]}
    )
    plan = make_plan(tmp_path, ["AAA"], [p1, p2])
    with pytest.raises(DataError, match=f"partition {p2.key}: timestamps go backwards"):
        read_all(plan, tmp_path, ["price"])


_MEMORY_PROBE = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from tickreplay.data.catalog import DataPlan
from tickreplay.data.stream import open_tick_stream
plan = DataPlan.from_dict(json.loads(sys.argv[1]))
root = Path(sys.argv[2])

def stream(offsets):
    rows = 0
    for batch in open_tick_stream(plan, ["price", "size"], lambda p: root / p.key,
                                  batch_size=65_536, offsets=offsets):
        rows += batch.num_rows
    return rows

# Warm up on the last row of each symbol so lazy imports are not counted, then measure on a
# pool nothing has used yet.
stream({s: int(sys.argv[3]) - 1 for s in plan.symbols})
pa.set_memory_pool(pa.system_memory_pool())
tracemalloc.start()
rows = stream(None)
print(json.dumps({"rows": rows, "arrow_peak": pa.system_memory_pool().max_memory(),
                  "numpy_peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.parametrize("symbols", [["AAA"], ["AAA", "BBB"]])
def test_memory_is_bounded_by_batches_not_data(tmp_path: Path, symbols: list[str]) -> None:
    rows_per_symbol = 2_000_000
    parts = generate(
        LocalStore(tmp_path), symbols, DATES[0], DATES[0], ticks_per_day=rows_per_symbol, seed=9
    )
    plan = make_plan(tmp_path, symbols, parts)
    # A fresh process gives a clean Arrow pool peak; tracemalloc sees the merge's NumPy arrays.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE,
            json.dumps(plan.to_dict()),
            str(tmp_path),
            str(rows_per_symbol),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = json.loads(out.stdout)
    rows = rows_per_symbol * len(symbols)
    decoded = rows * 3 * 8  # ts, price, size as 8-byte values
    assert probe["rows"] == rows
    assert probe["arrow_peak"] + probe["numpy_peak"] < decoded / 3, probe
