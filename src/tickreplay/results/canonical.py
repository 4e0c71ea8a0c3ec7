"""The result hash: sha256 over a canonical serialisation of what a backtest produced.

Why not hash the files: Parquet bytes depend on the pyarrow version (footer, created_by,
page layout), CSV float formatting on the writer, JSON on dict order. The result hash must be
the same for the same inputs on any machine, so it is taken over values, in a byte layout
defined here and nowhere else:

- a domain tag ``tickreplay-result-v1``, then sections ``inputs``, ``trades``, ``equity``,
  ``metrics``, ``logs`` in that order, each introduced by its name;
- every variable-length item is prefixed by its length as a little-endian uint64, so no two
  different contents can run together into the same bytes;
- a table is: column count, row count, then per column its name, its Arrow type string
  (``str(pa.DataType)``, so int64 vs int32 or string vs large_string differ), its null count,
  the validity bits (LSB-first, only if there are nulls), and the values with nulls replaced
  by zero/empty: numbers (and dates/timestamps, as their integer storage) as the little-endian
  bytes of the NumPy array, booleans one byte each, strings/binaries as length-prefixed bytes
  (UTF-8 for strings); dictionary columns are hashed decoded;
- a dict (inputs, metrics, each log record) is ``json.dumps(sort_keys=True,
  separators=(",", ":"), allow_nan=False)``. Floats are written by Python's ``float.__repr__``
  (what ``json`` uses): the shortest string that round-trips to the same double, so no two
  doubles share a text and the text is the same on every platform. NumPy scalars become
  Python ones first; NaN and infinity are refused, since strict JSON cannot carry them.

``run_info`` (host, wall times, throughput) is never part of the hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tickreplay.results.model import ResultSet

HASH_DOMAIN = b"tickreplay-result-v1"


class _Feed:
    """A sha256 fed with framed items (length- or count-prefixed, never bare)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def count(self, n: int) -> None:
        self.h.update(struct.pack("<Q", n))

    def blob(self, data: bytes) -> None:
        self.count(len(data))
        self.h.update(data)

    def text(self, s: str) -> None:
        self.blob(s.encode("utf-8"))


def canonical_json(obj: Any) -> bytes:
    """The one JSON text of a dict/list: sorted keys, no spaces, float repr, no NaN.

    Raises:
        ValueError: NaN or infinity somewhere in ``obj`` (named by path).
        TypeError: A value JSON cannot represent, or a non-string dict key.
    """
    return json.dumps(
        _plain(obj, "$"), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def _plain(obj: Any, path: str) -> Any:
    """Python builtins only, so the JSON text cannot depend on how a value was typed."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{path} is {obj}: NaN and infinity cannot be part of a result")
        return obj
    if isinstance(obj, np.generic):
        return _plain(obj.item(), path)
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{path} has non-string key {bad[0]!r}; result dicts need string keys")
        return {k: _plain(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"{path} is a {type(obj).__name__}, which a result cannot hold (JSON types only)"
    )


def result_hash(rs: ResultSet) -> str:
    """Hex sha256 of the canonical serialisation of ``rs`` (everything except ``run_info``)."""
    feed = _Feed()
    feed.blob(HASH_DOMAIN)
    feed.text("inputs")
    feed.blob(canonical_json(rs.inputs))
    feed.text("trades")
    _feed_table(feed, rs.trades, "trades")
    feed.text("equity")
    _feed_table(feed, rs.equity, "equity")
    feed.text("metrics")
    feed.blob(canonical_json(rs.metrics))
    feed.text("logs")
    feed.count(len(rs.logs))
    for record in rs.logs:
        feed.blob(canonical_json(record))
    return feed.h.hexdigest()


def _feed_table(feed: _Feed, table: pa.Table, what: str) -> None:
    feed.count(table.num_columns)
    feed.count(table.num_rows)
    for name, column in zip(table.column_names, table.columns, strict=True):
        feed.text(name)
        feed.text(str(column.type))
        try:
            _feed_column(feed, column.combine_chunks())
        except TypeError as e:
            raise TypeError(f"{what}.{name}: {e}") from None


def _feed_column(feed: _Feed, arr: pa.Array) -> None:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_temporal(t):
        arr = arr.view(pa.int32() if t.bit_width == 32 else pa.int64())  # the integer storage
        t = arr.type
    feed.count(arr.null_count)
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        feed.blob(np.packbits(valid, bitorder="little").tobytes())

    if pa.types.is_boolean(t):
        values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(np.uint8)
        feed.blob(values.tobytes())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        values = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False)
        feed.blob(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        feed.count(len(arr))
        for s in pc.fill_null(arr, "").to_pylist():
            feed.text(s)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        feed.count(len(arr))
        for b in pc.fill_null(arr, b"").to_pylist():
            feed.blob(b)
    else:
        raise TypeError(
            f"Arrow type {t} is not supported in result tables (use numbers, strings, timestamps)"
        )
