"""Result files, manifest and result hash: canonical, verifiable, written and published last."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickreplay.data.objectstore import LocalStore
from tickreplay.results import (
    ResultConflictError,
    ResultsError,
    ResultSet,
    load_results,
    publish_results,
    read_manifest,
    result_hash,
    verify_results,
    write_results,
)

FILES = {"trades.parquet", "trades.csv", "equity.parquet", "metrics.json", "logs.jsonl"}

# Pinned: the hash of make_result() must not move across machines, Python, NumPy or pyarrow
# versions. If a change to the canonical serialisation is intended, bump HASH_DOMAIN's version.
GOLDEN_HASH = "ac0f303db4c0f7b0de52793d067822f98ebe6379708768e3aac00282ccdda9a7"


def make_result(**changes: object) -> ResultSet:
    trades = pa.table(
        {
            "ts": pa.array(
                [1_704_205_800_000_000_000, 1_704_205_860_000_000_000, 1_704_292_200_000_000_000],
                pa.int64(),
            ),
            "symbol": ["AAPL", "AAPL", "MSFT"],
            "qty": [100.0, -100.0, -50.0],
            "price": [185.25, 186.5, 370.125],
            "fee": [1.0, 1.0, 1.0],
            "realized_pnl": [0.0, 125.0, 0.0],
            "is_close": [False, True, False],
        }
    )
    equity = pa.table(
        {
            "date": ["2024-01-02", "2024-01-03"],
            "equity": [100_123.0, 100_098.5],
            "cash": [100_123.0, 118_629.25],
        }
    )
    rs = ResultSet(
        trades=trades,
        equity=equity,
        # Literal, not compute(): the golden hash pins the serialisation, not NumPy's rounding.
        metrics={
            "num_days": 2,
            "total_return": 0.000985,
            "sharpe": None,
            "max_drawdown": -0.00024469,
            "num_trades": 3,
            "fees": 3.0,
            "calmar": None,
        },
        logs=[
            {"ts": 1_704_205_800_000_000_000, "level": "info", "msg": "enter", "sma": 185.1},
            {"ts": 1_704_205_860_000_000_000, "level": "info", "msg": "exit", "reason": "cross"},
        ],
        inputs={
            "strategy_digest": "ab" * 32,
            "data_fingerprint": "cd" * 32,
            "params": {"fast": 10, "slow": 30, "qty": 100.0},
            "engine_version": "0.1.0",
            "config": {"latency_ns": 1_000_000, "slippage_bps": 0.5},
        },
        run_info={"host": "node-a", "wall_s": 1.25, "ticks_per_s": 1.9e6},
    )
    for name, value in changes.items():
        setattr(rs, name, value)
    return rs


def with_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, array)


# ---- the hash -------------------------------------------------------------------------------


def test_same_result_same_hash_and_golden_value():
    a, b = make_result(), make_result()
    assert a is not b and result_hash(a) == result_hash(b)
    assert result_hash(a) == GOLDEN_HASH


def test_one_ulp_in_one_trade_price_changes_the_hash():
    rs = make_result()
    prices = rs.trades.column("price").to_numpy().copy()
    prices[1] = np.nextafter(prices[1], np.inf)
    bumped = make_result(trades=with_column(rs.trades, "price", pa.array(prices)))
    assert result_hash(bumped) != result_hash(rs)


def test_run_info_and_dict_order_do_not_change_the_hash():
    rs = make_result()
    other = make_result(run_info={"host": "node-b", "wall_s": 99.0})
    reordered = make_result(
        inputs=dict(reversed(list(rs.inputs.items()))),
        metrics=dict(reversed(list(rs.metrics.items()))),
        logs=[dict(reversed(list(r.items()))) for r in rs.logs],
    )
    assert result_hash(other) == result_hash(reordered) == result_hash(rs)


def test_numpy_scalars_hash_like_python_numbers():
    rs = make_result()
    metrics = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in rs.metrics.items()}
    assert result_hash(make_result(metrics=metrics)) == result_hash(rs)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda t: t.select(["symbol", "ts", "qty", "price", "fee", "realized_pnl", "is_close"]),
            id="column order",
        ),
        pytest.param(
            lambda t: with_column(t, "ts", t.column("ts").cast(pa.timestamp("ns"))),
            id="int64 to timestamp",
        ),
        pytest.param(
            lambda t: with_column(t, "symbol", t.column("symbol").cast(pa.large_string())),
            id="large_string",
        ),
        pytest.param(
            lambda t: with_column(t, "qty", t.column("qty").cast(pa.float32())), id="float32"
        ),
        pytest.param(
            lambda t: t.rename_columns([*t.column_names[:-1], "closing"]), id="column name"
        ),
        pytest.param(lambda t: t.slice(0, 2), id="row dropped"),
        pytest.param(
            lambda t: with_column(t, "symbol", pa.array(["AAPL", None, "MSFT"])), id="null"
        ),
        pytest.param(
            lambda t: with_column(t, "symbol", pa.array(["AAP", "LAAPL", "MSFT"])),
            id="string boundary",
        ),
    ],
)
def test_table_changes_change_the_hash(change):
    rs = make_result()
    assert result_hash(make_result(trades=change(rs.trades))) != result_hash(rs)


def test_null_differs_from_zero():
    rs = make_result()
    zero = make_result(trades=with_column(rs.trades, "fee", pa.array([1.0, 0.0, 1.0])))
    null = make_result(trades=with_column(rs.trades, "fee", pa.array([1.0, None, 1.0])))
    assert result_hash(zero) != result_hash(null)


@pytest.mark.parametrize(
    "field, value",
    [
        ("metrics", {"sharpe": 1.0}),
        ("inputs", {"params": {"fast": 10}}),
        ("logs", [{"ts": 1, "level": "info", "msg": "x"}]),
        ("logs", "swap"),
        ("equity", "drop cash"),
    ],
)
def test_other_sections_are_hashed(field, value):
    rs = make_result()
    if value == "swap":
        value = list(reversed(rs.logs))
    elif value == "drop cash":
        value = rs.equity.drop_columns(["cash"])
    assert result_hash(make_result(**{field: value})) != result_hash(rs)


def test_sections_do_not_run_together():
    # The same log text moved from one record into its neighbour must not hash the same.
    a = make_result(logs=[{"msg": "ab"}, {"msg": "c"}])
    b = make_result(logs=[{"msg": "a"}, {"msg": "bc"}])
    assert result_hash(a) != result_hash(b)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 3), max_size=4))
def test_chunking_does_not_change_the_hash(cuts):
    rs = make_result()
    pieces, start = [], 0
    for n in cuts:
        pieces.append(rs.trades.slice(start, n))
        start += n
    pieces.append(rs.trades.slice(start))
    rechunked = pa.concat_tables(pieces)
    assert result_hash(make_result(trades=rechunked)) == result_hash(rs)


def test_nan_and_non_json_values_are_refused_with_their_path():
    with pytest.raises(ValueError, match=r"\$\.sharpe is nan"):
        result_hash(make_result(metrics={"sharpe": float("nan")}))
    with pytest.raises(TypeError, match=r"\$\.params\.when is a \w*Path"):
        result_hash(make_result(inputs={"params": {"when": Path("/x")}}))
    with pytest.raises(TypeError, match="trades.bad: Arrow type list<item: int64>"):
        result_hash(make_result(trades=pa.table({"bad": [[1], [2]]})))


# ---- files ----------------------------------------------------------------------------------


def test_written_files_verify_and_read_back_to_the_same_hash(tmp_path):
    rs = make_result()
    manifest = write_results(rs, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES | {"manifest.json"}
    assert set(manifest["files"]) == FILES
    assert manifest["result_hash"] == result_hash(rs)
    assert manifest["manifest_version"] == 1
    assert manifest["inputs"] == rs.inputs and manifest["run_info"] == rs.run_info
    assert read_manifest(tmp_path / "out") == manifest == verify_results(tmp_path / "out")
    assert result_hash(load_results(tmp_path / "out")) == result_hash(rs)
    assert (
        pq.read_metadata(tmp_path / "out" / "trades.parquet").row_group(0).column(0).compression
        == "ZSTD"
    )
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == rs.metrics


def test_corrupted_file_fails_verification(tmp_path):
    write_results(make_result(), tmp_path)
    path = tmp_path / "trades.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ResultsError, match="trades.parquet: sha256"):
        verify_results(tmp_path)


def test_missing_file_and_missing_manifest_fail(tmp_path):
    write_results(make_result(), tmp_path)
    (tmp_path / "logs.jsonl").unlink()
    with pytest.raises(ResultsError, match="logs.jsonl: missing"):
        verify_results(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ResultsError, match="no manifest.json: not a complete result"):
        verify_results(tmp_path)


def test_file_edited_together_with_its_manifest_entry_is_caught_by_the_hash(tmp_path):
    write_results(make_result(), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    metrics["sharpe"] = 9.99
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    from tickreplay.data.objectstore import sha256_file

    manifest["files"]["metrics.json"] = {
        "sha256": sha256_file(tmp_path / "metrics.json"),
        "size": (tmp_path / "metrics.json").stat().st_size,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    verify_results(tmp_path, recompute_hash=False)  # the per-file check alone is fooled
    with pytest.raises(ResultsError, match="files hash to"):
        verify_results(tmp_path)


def test_failure_while_writing_leaves_no_manifest(tmp_path):
    out = tmp_path / "out"
    write_results(make_result(), out)
    (out / "logs.jsonl").unlink()
    (out / "logs.jsonl").mkdir()  # a real obstacle: the rename onto it fails
    with pytest.raises(OSError):
        write_results(make_result(metrics={"sharpe": 2.0}), out)
    assert not (out / "manifest.json").exists()  # the old manifest went first
    assert (out / "metrics.json").exists()  # files before the failure were written
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ResultsError, match="no manifest.json"):
        verify_results(out)


def test_unhashable_result_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_results(make_result(metrics={"x": float("inf")}), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_rewriting_the_same_result_gives_the_same_manifest_hash(tmp_path):
    a = write_results(make_result(), tmp_path / "a")
    b = write_results(make_result(run_info={"host": "elsewhere"}), tmp_path / "b")
    assert a["result_hash"] == b["result_hash"]
    assert a["files"] == b["files"]  # same pyarrow here, so even the bytes agree


# ---- publish --------------------------------------------------------------------------------


def test_publish_then_download_verifies(tmp_path):
    write_results(make_result(), tmp_path / "out")
    store = LocalStore(tmp_path / "bucket")
    manifest = publish_results(tmp_path / "out", store, "results/job-1")
    keys = {o.key for o in store.list("results/job-1/")}
    assert keys == {f"results/job-1/{n}" for n in FILES | {"manifest.json"}}
    local = tmp_path / "downloaded"
    local.mkdir()
    for key in keys:
        store.download(key, local / key.rsplit("/", 1)[1])
    assert verify_results(local)["result_hash"] == manifest["result_hash"]


def test_publish_is_idempotent(tmp_path):
    write_results(make_result(), tmp_path / "out")
    store = LocalStore(tmp_path / "bucket")
    first = publish_results(tmp_path / "out", store, "results/job-1")
    again = publish_results(tmp_path / "out", store, "/results/job-1/")
    assert again == first


def test_publish_retry_after_partial_upload_succeeds(tmp_path):
    write_results(make_result(), tmp_path / "out")
    store = LocalStore(tmp_path / "bucket")
    store.put_file("results/job-1/trades.parquet", tmp_path / "out" / "trades.parquet")
    manifest = publish_results(tmp_path / "out", store, "results/job-1")
    assert json.loads(store.get_bytes("results/job-1/manifest.json")) == manifest


def test_publishing_a_different_result_conflicts_and_changes_nothing(tmp_path):
    write_results(make_result(), tmp_path / "a")
    write_results(make_result(metrics={"sharpe": 2.0}), tmp_path / "b")
    store = LocalStore(tmp_path / "bucket")
    publish_results(tmp_path / "a", store, "results/job-1")
    before = {o.key: store.get_bytes(o.key) for o in store.list("results/")}
    with pytest.raises(ResultConflictError, match="already holds result"):
        publish_results(tmp_path / "b", store, "results/job-1")
    assert {o.key: store.get_bytes(o.key) for o in store.list("results/")} == before


def test_foreign_files_without_a_manifest_conflict(tmp_path):
    write_results(make_result(), tmp_path / "a")
    write_results(make_result(metrics={"sharpe": 2.0}), tmp_path / "b")
    store = LocalStore(tmp_path / "bucket")
    store.put_file("results/job-1/metrics.json", tmp_path / "b" / "metrics.json")
    with pytest.raises(ResultConflictError, match="unfinished publish"):
        publish_results(tmp_path / "a", store, "results/job-1")
    assert store.head("results/job-1/manifest.json") is None


def test_publish_refuses_a_corrupt_directory(tmp_path):
    write_results(make_result(), tmp_path / "out")
    (tmp_path / "out" / "trades.csv").write_text("tampered\n")
    store = LocalStore(tmp_path / "bucket")
    with pytest.raises(ResultsError, match="trades.csv"):
        publish_results(tmp_path / "out", store, "results/job-1")
    assert store.list() == []


def test_result_set_is_not_mutated_by_writing(tmp_path):
    rs = make_result()
    snapshot = copy.deepcopy((rs.metrics, rs.logs, rs.inputs, rs.run_info))
    write_results(rs, tmp_path)
    assert (rs.metrics, rs.logs, rs.inputs, rs.run_info) == snapshot
