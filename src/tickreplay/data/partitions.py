"""Writing one symbol-day partition: the only path from a tick table to bytes in the catalog.

Why one helper for ``data generate`` and ``data ingest``: the data fingerprint, and so every
result hash, is computed over the stored bytes and their sha256. Both writers must serialise
with the same options and describe what they stored the same way (the key of
:func:`~tickreplay.data.schema.partition_key`, the size and sha256 of exactly the bytes put), or
the same ticks would fingerprint differently depending on how they entered the catalog.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from tickreplay.data.catalog import Partition
from tickreplay.data.objectstore import ObjectStore
from tickreplay.data.schema import PARQUET_WRITE_OPTIONS, kind_partition_key


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a tick table with the catalog's write options (zstd, page checksums).

    In memory rather than to a file because the sha256 recorded in the ``Partition`` must be
    that of the bytes handed to the store, and the store decides how they reach disk or S3.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


def write_partition(
    store: ObjectStore, symbol: str, date: dt.date | str, table: pa.Table, kind: str = "trades"
) -> Partition:
    """Write ``table`` as the ``kind`` partition of ``symbol`` on ``date``, replacing any existing one.

    Args:
        store: The catalog.
        symbol: The symbol every row belongs to (validated by :func:`kind_partition_key`).
        date: The partition's day, a date or ``YYYY-MM-DD``.
        table: The symbol-day's rows, already in the tick (or quote) schema and in time order.
        kind: ``"trades"`` (``ticks/...``) or ``"quotes"`` (``quotes/...``); quotes go through
            the same serialisation so they fingerprint by the same rules.

    Returns:
        The partition record: key, size and sha256 of the bytes written.
    """
    day = date if isinstance(date, dt.date) else dt.date.fromisoformat(date)
    data = table_to_parquet_bytes(table)
    key = kind_partition_key(kind, symbol, day)
    store.put_bytes(key, data)
    sha = hashlib.sha256(data).hexdigest()
    return Partition(symbol, day.isoformat(), key, len(data), sha, kind)
