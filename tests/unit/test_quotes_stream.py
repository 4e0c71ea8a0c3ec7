"""The merged trades + L1 quotes event stream: order, schema, resume, checks."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickreplay.data.catalog import DataPlan, Partition, fingerprint, plan_data
from tickreplay.data.errors import CorruptDataError, DataError
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore, sha256_file
from tickreplay.data.schema import (
    PARQUET_WRITE_OPTIONS,
    kind_partition_key,
    quote_schema,
    schema_for,
)
from tickreplay.data.stream import (
    check_partition,
    count_rows,
    event_offset_key,
    event_schema,
    open_event_stream,
    open_tick_stream,
    stream_row_counts,
)

DATES = ("2024-01-02", "2024-01-03", "2024-01-04")
INF = math.inf


def put(root: Path, kind: str, symbol: str, date: str, cols: dict[str, list[Any]],
        *, row_group_size: int = 262_144) -> Partition:
    """Write one trades or quotes partition with the catalog's options."""
    schema = schema_for(list(cols)) if kind == "trades" else quote_schema(list(cols))
    key = kind_partition_key(kind, symbol, date)
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), path,
                   **{**PARQUET_WRITE_OPTIONS, "row_group_size": row_group_size})
    return Partition(symbol, date, key, path.stat().st_size, sha256_file(path), kind)


def make_plan(root: Path, symbols: list[str], parts: list[Partition]) -> DataPlan:
    ordered = tuple(sorted(parts, key=lambda p: (p.symbol, p.date, p.kind)))
    return DataPlan(str(root), tuple(symbols), DATES[0], DATES[-1], ordered, fingerprint(ordered))


def read(plan: DataPlan, root: Path, columns: list[str] | None = None, **kw: Any) -> pa.Table:
    schema = event_schema(columns or [])
    batches = list(open_event_stream(plan, columns or [], lambda p: root / p.key, **kw))
    for b in batches:
        assert b.schema == schema
    return pa.Table.from_batches(batches, schema=schema)


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schema and values, NaN equal to NaN (``Table.equals`` says NaN != NaN)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for x, y in zip(a.columns, b.columns, strict=True):
        if pa.types.is_floating(x.type):
            if not np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True):
                return False
        elif x.to_pylist() != y.to_pylist():
            return False
    return True


def rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """(ts, sym, kind, price, q_bid) per row; NaN shown as None for comparison."""
    d = table.to_pydict()

    def v(x: float) -> float | None:
        return None if isinstance(x, float) and math.isnan(x) else x

    return [(d["ts"][i], d["sym"][i], d["kind"][i], v(d["price"][i]), v(d["q_bid"][i]))
            for i in range(table.num_rows)]


@pytest.fixture
def three(tmp_path: Path) -> tuple[DataPlan, Path]:
    """Three symbols with equal timestamps across symbols and kinds (hand-checked below)."""
    parts = [
        put(tmp_path, "trades", "AAA", DATES[0], {"ts": [1, 2, 2], "price": [10.0, 11.0, 12.0],
                                                  "size": [1.0, 2.0, 3.0],
                                                  "exchange": ["P", "Q", None]}),
        put(tmp_path, "quotes", "AAA", DATES[0], {"ts": [2, 2], "bid": [9.0, 9.5],
                                                  "ask": [10.0, 10.5]}),
        put(tmp_path, "quotes", "BBB", DATES[0], {"ts": [1, 2], "bid": [20.0, 21.0],
                                                  "ask": [20.5, 21.5], "bid_size": [100.0, None],
                                                  "ask_size": [None, 300.0]}),
        put(tmp_path, "trades", "BBB", DATES[0], {"ts": [2], "price": [21.2], "size": [5.0],
                                                  "exchange": ["X"]}),
        put(tmp_path, "trades", "CCC", DATES[0], {"ts": [1], "price": [30.0], "size": [7.0],
                                                  "exchange": ["Z"]}),
        put(tmp_path, "quotes", "CCC", DATES[0], {"ts": [0, 1], "bid": [29.0, 29.9],
                                                  "ask": [30.1, 30.1], "bid_size": [1.0, 2.0],
                                                  "ask_size": [3.0, 4.0]}),
    ]
    return make_plan(tmp_path, ["AAA", "BBB", "CCC"], parts), tmp_path


# The documented order, by hand: ts, then symbol (AAA < BBB < CCC), then quotes before trades,
# then row within the symbol's stream of that kind.
EXPECTED = [
    (0, 2, 0, None, 29.0),   # CCC quote
    (1, 0, 1, 10.0, None),   # AAA trade row 0
    (1, 1, 0, None, 20.0),   # BBB quote row 0
    (1, 2, 0, None, 29.9),   # CCC quote row 1 before ...
    (1, 2, 1, 30.0, None),   # ... CCC's trade at the same ts
    (2, 0, 0, None, 9.0),    # AAA quotes rows 0, 1 before AAA trades at ts 2
    (2, 0, 0, None, 9.5),
    (2, 0, 1, 11.0, None),
    (2, 0, 1, 12.0, None),
    (2, 1, 0, None, 21.0),   # BBB quote, then BBB trade
    (2, 1, 1, 21.2, None),
]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_three_symbol_merge_follows_the_documented_order(
    three: tuple[DataPlan, Path], batch_size: int
) -> None:
    plan, root = three
    got = read(plan, root, batch_size=batch_size)
    assert rows(got) == EXPECTED


def test_wide_schema_nan_null_and_unlimited_sizes(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    got = read(plan, root, ["price", "size", "exchange", "kind", "q_bid"])
    assert got.schema.names == ["ts", "sym", "kind", "price", "size", "exchange",
                                "q_bid", "q_ask", "q_bid_size", "q_ask_size"]
    assert [f.type for f in got.schema] == [pa.int64(), pa.int32(), pa.int8(), pa.float64(),
                                            pa.float64(), pa.string()] + [pa.float64()] * 4
    d = got.to_pydict()
    # BBB: quote (sizes 100 / null -> inf), quote (null -> inf / 300), trade on exchange X.
    bbb = [i for i in range(got.num_rows) if d["sym"][i] == 1]
    assert [d["q_bid_size"][i] for i in bbb][:2] == [100.0, INF]
    assert [d["q_ask_size"][i] for i in bbb][:2] == [INF, 300.0]
    assert [d["exchange"][i] for i in bbb] == [None, None, "X"]
    # AAA's quote file has no size columns at all: unlimited size.
    aaa_quotes = [i for i in range(got.num_rows) if d["sym"][i] == 0 and d["kind"][i] == 0]
    assert {d["q_bid_size"][i] for i in aaa_quotes} == {INF}
    for i in range(got.num_rows):
        if d["kind"][i] == 1:
            assert all(math.isnan(d[c][i]) for c in ("q_bid", "q_ask", "q_bid_size", "q_ask_size"))
            assert d["price"][i] > 0 and d["size"][i] > 0
        else:
            assert math.isnan(d["price"][i]) and math.isnan(d["size"][i])
            assert d["q_bid"][i] <= d["q_ask"][i]
    assert got.column("q_bid").null_count == 0 and got.column("price").null_count == 0


def test_events_select_one_kind_in_the_same_schema(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    quotes = read(plan, root, events=("quotes",))
    assert rows(quotes) == [r for r in EXPECTED if r[2] == 0]
    trades = read(plan, root, ["exchange"], events=("trades",))
    assert trades.schema == event_schema(["exchange"])
    assert rows(trades) == [r for r in EXPECTED if r[2] == 1]
    # The trades of the event stream are exactly the tick stream's rows, in its order.
    ticks = pa.Table.from_batches(list(open_tick_stream(plan, ["price", "size"],
                                                        lambda p: root / p.key)))
    for c in ("ts", "sym", "price", "size"):
        assert trades.column(c).to_pylist() == ticks.column(c).to_pylist()


def test_quotes_only_plan_for_fx(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i, day in enumerate(DATES):
        put(tmp_path, "quotes", "EURUSD", day, {"ts": [10 * i, 10 * i + 5], "bid": [1.1, 1.2],
                                                "ask": [1.1, 1.21], "bid_size": [1e6, 2e6],
                                                "ask_size": [1e6, None]})
    plan = plan_data(store, ["EURUSD"], DATES[0], DATES[-1], events=("quotes",))
    got = read(plan, tmp_path, events=("quotes",))
    assert got.column("ts").to_pylist() == [0, 5, 10, 15, 20, 25]
    assert set(got.column("kind").to_pylist()) == {0}
    assert got.column("q_ask_size").to_pylist()[:2] == [1e6, INF]
    both = read(plan, tmp_path)  # asking for trades too finds none: the same rows
    assert same(both, got)
    resumed = read(plan, tmp_path, offsets={"quotes/EURUSD": 4}, events=("quotes",))
    assert same(resumed, got.slice(4))


def test_offset_keys_and_their_validation(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    assert event_offset_key("AAA", "trades") == "AAA"
    assert event_offset_key("AAA", "quotes") == "quotes/AAA"
    with pytest.raises(ValueError, match="not in the plan"):
        read(plan, root, offsets={"quotes/ZZZ": 1})
    with pytest.raises(ValueError, match="does not read"):
        read(plan, root, offsets={"quotes/AAA": 1}, events=("trades",))
    read(plan, root, offsets={"quotes/AAA": 0}, events=("trades",))  # zero is harmless
    with pytest.raises(DataError, match="past the end"):
        read(plan, root, offsets={"quotes/AAA": 3})
    with pytest.raises(ValueError, match="event kind"):
        read(plan, root, events=("bids",))


def test_stream_row_counts_give_resume_offsets(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    full = read(plan, root)
    for k in range(full.num_rows + 1):
        prefix = full.slice(0, k).combine_chunks().to_batches()
        offsets: dict[str, int] = {}
        for b in prefix:
            for key, n in stream_row_counts(b, plan.symbols).items():
                offsets[key] = offsets.get(key, 0) + n
        assert sum(offsets.values()) == k
        for bs in (1, 4):
            assert rows(read(plan, root, offsets=offsets, batch_size=bs)) == EXPECTED[k:]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPlan, Path]:
    root = tmp_path_factory.mktemp("gen")
    store = LocalStore(root)
    generate(store, ["AAA", "BBB", "CCC"], DATES[0], DATES[-1], ticks_per_day=2_000, seed=9,
             quote_partitions=True)
    # Coarse timestamps make ties across symbols and kinds common.
    for p in list((root / "ticks").rglob("*.parquet")) + list((root / "quotes").rglob("*.parquet")):
        t = pq.read_table(p)
        coarse = pa.array((t.column("ts").to_numpy() // 10**9) * 10**9)
        pq.write_table(t.set_column(0, t.schema.field(0), coarse), p,
                       **{**PARQUET_WRITE_OPTIONS, "row_group_size": 1_000})
    plan = plan_data(store, ["AAA", "BBB", "CCC"], DATES[0], DATES[-1],
                     events=("trades", "quotes"))
    return plan, root


def test_generated_stream_matches_a_reference_sort(generated: tuple[DataPlan, Path]) -> None:
    plan, root = generated
    got = read(plan, root, batch_size=777).to_pandas()
    frames = []
    for i, sym in enumerate(plan.symbols):
        for kind, kname in ((0, "quotes"), (1, "trades")):
            t = pa.concat_tables([pq.read_table(root / p.key)
                                  for p in plan.for_symbol(sym, kname)]).to_pandas()
            t["sym"], t["kind"], t["row"] = i, kind, np.arange(len(t))
            frames.append(t)
    ref = pd.concat(frames).sort_values(["ts", "sym", "kind", "row"], kind="stable")
    assert len(got) == len(ref) == 3 * 3 * 2_000 * 4
    assert (got["ts"].to_numpy() == ref["ts"].to_numpy()).all()
    assert (got["sym"].to_numpy() == ref["sym"].to_numpy()).all()
    assert (got["kind"].to_numpy() == ref["kind"].to_numpy()).all()
    assert np.array_equal(got["price"].to_numpy(), ref["price"].to_numpy(), equal_nan=True)
    assert np.array_equal(got["q_bid"].to_numpy(), ref["bid"].to_numpy(), equal_nan=True)
    assert (got["ts"].diff().dropna() >= 0).all()


def test_resume_at_random_cut_points_is_exactly_the_remainder(
    generated: tuple[DataPlan, Path]
) -> None:
    plan, root = generated
    full = read(plan, root, batch_size=4_096)
    sym = full.column("sym").to_numpy()
    kind = full.column("kind").to_numpy()
    rng = random.Random(4)
    cuts = [0, 1, full.num_rows - 1, full.num_rows, *rng.sample(range(full.num_rows), 6)]
    for k in cuts:
        offsets = {}
        for i, name in enumerate(plan.symbols):
            for kv, kname in ((0, "quotes"), (1, "trades")):
                n = int(np.count_nonzero((sym[:k] == i) & (kind[:k] == kv)))
                if n:
                    offsets[event_offset_key(name, kname)] = n
        rest = read(plan, root, batch_size=rng.choice([500, 4_096, 65_536]), offsets=offsets)
        assert same(rest, full.slice(k)), k


# Random small data: three symbols, both kinds, timestamps from a tiny range.
stream_data = st.lists(st.integers(0, 5), max_size=12).map(sorted)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(stream_data, min_size=6, max_size=6), batch_size=st.integers(1, 6),
       cut=st.floats(0, 1))
def test_random_merges_match_the_reference_and_resume(
    data: list[list[int]], batch_size: int, cut: float
) -> None:
    symbols = ["AAA", "BBB", "CCC"]
    ref_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = []
        for j, ts in enumerate(data):
            i, kind = divmod(j, 2)
            if not ts:
                continue
            tag = [1000.0 * (j + 1) + r for r in range(len(ts))]  # identifies (stream, row)
            if kind == 1:
                cols = {"ts": ts, "price": tag, "size": [1.0] * len(ts)}
            else:
                cols = {"ts": ts, "bid": tag, "ask": [t + 0.5 for t in tag]}
            parts.append(put(root, "trades" if kind else "quotes", symbols[i], DATES[0], cols,
                             row_group_size=3))
            ref_rows += [(t, i, kind, r, tag[r]) for r, t in enumerate(ts)]
        plan = make_plan(root, symbols, parts)
        got = read(plan, root, batch_size=batch_size)
        ref = sorted(ref_rows)
        assert got.column("ts").to_pylist() == [r[0] for r in ref]
        assert got.column("sym").to_pylist() == [r[1] for r in ref]
        assert got.column("kind").to_pylist() == [r[2] for r in ref]
        tags = np.where(got.column("kind").to_numpy() == 1, got.column("price").to_numpy(),
                        got.column("q_bid").to_numpy())
        assert tags.tolist() == [r[4] for r in ref]
        k = int(cut * len(ref))
        offsets: dict[str, int] = {}
        for _, i, kind, _, _ in ref[:k]:
            key = event_offset_key(symbols[i], "trades" if kind else "quotes")
            offsets[key] = offsets.get(key, 0) + 1
        rest = read(plan, root, batch_size=batch_size, offsets=offsets)
        assert same(rest, got.slice(k))


def test_check_partition_and_count_rows_for_quotes(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    paths = {p.key: root / p.key for p in plan.partitions}
    assert count_rows(paths) == 3 + 2 + 2 + 1 + 1 + 2
    quote_key = kind_partition_key("quotes", "AAA", DATES[0])
    assert check_partition(root / quote_key, quote_key) == 2
    # A trades file where quotes are expected names the partition and the column.
    trade_key = kind_partition_key("trades", "CCC", DATES[0])
    with pytest.raises(CorruptDataError, match=r"partition quotes/symbol=X.*no column 'bid'"):
        check_partition(root / trade_key, "quotes/symbol=X/date=2024-01-02/data.parquet")
    with pytest.raises(CorruptDataError, match="no column 'bid'"):
        check_partition(root / trade_key, "anything", kind="quotes")
    bad = root / "bad.parquet"
    pq.write_table(pa.table({"ts": [1], "bid": ["x"], "ask": [1.0]}), bad)
    with pytest.raises(CorruptDataError, match="column 'bid' is string"):
        check_partition(bad, quote_key)
    pq.write_table(pa.table({"ts": [1], "bid": [1.0], "ask": [1.0], "bid_size": ["x"]}), bad)
    with pytest.raises(CorruptDataError, match="column 'bid_size' is string"):
        check_partition(bad, quote_key)
    (root / "empty.parquet").write_bytes(b"")
    with pytest.raises(CorruptDataError, match=f"corrupt partition {quote_key}"):
        check_partition(root / "empty.parquet", quote_key)


def test_corrupt_quote_file_names_its_partition(three: tuple[DataPlan, Path]) -> None:
    plan, root = three
    quote_key = kind_partition_key("quotes", "BBB", DATES[0])
    path = root / quote_key
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorruptDataError, match=quote_key):
        read(plan, root)
    # The trades-only streams never open quote files.
    read(plan, root, events=("trades",))
    list(open_tick_stream(plan, ["price"], lambda p: root / p.key))


def test_quotes_going_backwards_name_the_partition(tmp_path: Path) -> None:
    parts = [put(tmp_path, "quotes", "AAA", DATES[0], {"ts": [5, 3], "bid": [1.0, 1.0],
                                                        "ask": [2.0, 2.0]})]
    plan = make_plan(tmp_path, ["AAA"], parts)
    with pytest.raises(DataError, match="quotes/symbol=AAA/date=2024-01-02"):
        read(plan, tmp_path)
