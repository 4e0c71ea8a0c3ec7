"""Streaming tick reader: verified Parquet partitions in, merged Arrow record batches out.

Every backtest reads its data through :func:`open_tick_stream`. It never holds more than about
two batches per symbol, so memory is bounded by ``batch_size x symbols`` whatever the date
range. Events of all symbols come out in one total order, ``(ts, symbol index, row)``, where the
row is the position in the symbol's own stream: ties between symbols never depend on dict order,
file system listing order or thread timing, which the engine's bit-for-bit reproducibility needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tickreplay.data.catalog import DataPlan, Partition
from tickreplay.data.errors import CorruptDataError, DataError
from tickreplay.data.schema import REQUIRED_COLUMNS, TICK_FIELDS, schema_for

# Columns every output batch carries whatever the strategy asks for; naming them is harmless.
_IMPLICIT = frozenset({"ts", "sym", "symbol"})

Resolver = Callable[[Partition], Path]

_READ_BUFFER = 1 << 20


def open_partition(path: Path, key: str | None = None) -> pq.ParquetFile:
    """Open one partition with page checksum verification.

    Args:
        path: Local file (in the cache or a local store).
        key: Catalog key used in error messages (defaults to the path).

    Raises:
        DataError: The file does not exist.
        CorruptDataError: The footer or metadata cannot be read (truncated or damaged file).
    """
    name = key or str(path)
    try:
        # pre_buffer pays off on high-latency filesystems only; on the local files read here it
        # holds whole row groups' compressed bytes, as does the default unbuffered column
        # reader: a 1 MiB read buffer keeps memory per symbol near one page per column.
        return pq.ParquetFile(
            path, page_checksum_verification=True, pre_buffer=False, buffer_size=_READ_BUFFER
        )
    except FileNotFoundError as e:
        raise DataError(f"partition {name} not found at {path}") from e
    except (pa.ArrowException, OSError) as e:
        raise CorruptDataError(f"corrupt partition {name}: {e}") from e


def check_partition(path: Path, key: str) -> int:
    """Open a partition, check the required columns and their types; return its row count.

    Run on every partition before a simulation starts, so a damaged file (0 bytes, a damaged
    footer, a wrong schema) fails the job at once, naming the partition and what is wrong,
    instead of surfacing mid-run as an anonymous Arrow error that looks worth retrying.

    Raises:
        CorruptDataError: Unreadable file, or a required column missing or of the wrong type.
    """
    if Path(path).stat().st_size == 0:
        raise CorruptDataError(f"corrupt partition {key}: the file is empty (0 bytes)")
    pf = open_partition(path, key)
    schema = pf.schema_arrow
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            raise CorruptDataError(f"partition {key} has a wrong schema: no column {name!r} "
                                   f"(it has {schema.names})")
        typ = schema.field(name).type
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ)
        if typ != TICK_FIELDS[name] and not (name != "ts" and numeric):
            raise CorruptDataError(f"partition {key} has a wrong schema: column {name!r} is "
                                   f"{schema.field(name).type}, expected {TICK_FIELDS[name]}")
    return int(pf.metadata.num_rows)


def output_schema(columns: Sequence[str]) -> pa.Schema:
    """Schema of the merged batches: ``ts``, ``sym`` (index into the plan's symbols), columns."""
    fields = [
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("sym", pa.int32(), nullable=False),
    ]
    return pa.schema(fields + list(schema_for(list(columns))))


def _data_columns(columns: Sequence[str]) -> list[str]:
    cols = [c for c in dict.fromkeys(columns) if c not in _IMPLICIT]
    unknown = [c for c in cols if c not in TICK_FIELDS]
    if unknown:
        raise DataError(f"unknown tick column(s) {unknown}; known: {sorted(TICK_FIELDS)}")
    return cols


def _check_schema(pf: pq.ParquetFile, key: str, read_schema: pa.Schema) -> bool:
    """Raise if a requested column is missing or ``ts`` is not int64; True if a cast is needed."""
    file_schema = pf.schema_arrow
    for field in read_schema:
        if field.name not in file_schema.names:
            raise DataError(
                f"partition {key} has no column {field.name!r}; it has {file_schema.names}"
            )
    ts_type = file_schema.field("ts").type
    if ts_type != pa.int64():
        raise DataError(f"partition {key}: column 'ts' is {ts_type}, expected int64 ns UTC")
    return any(file_schema.field(f.name).type != f.type for f in read_schema)


def _iter_verified(
    pf: pq.ParquetFile, key: str, row_groups: list[int], names: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """``iter_batches`` whose read errors (checksum, decompression, truncation) are corruption."""
    # One decoding thread: a run is the engine on one core and this reader (in the prefetch
    # thread) on the other. Arrow's column thread pool made reading ~15% faster alone but cost
    # ~20% more CPU, taken from the engine on a 2-core machine.
    it = pf.iter_batches(
        batch_size=batch_size, row_groups=row_groups, columns=names, use_threads=False
    )
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise CorruptDataError(f"corrupt partition {key}: {e}") from e
        yield batch


def symbol_batches(
    partitions: Sequence[Partition],
    columns: Sequence[str],
    resolve: Resolver,
    *,
    batch_size: int = 65_536,
    offset: int = 0,
) -> Iterator[pa.RecordBatch]:
    """One symbol's stream: its partitions in date order, projected to ``ts`` + ``columns``.

    Args:
        partitions: The symbol's partitions (sorted here by date).
        columns: Tick columns to read besides ``ts``.
        resolve: Maps a partition to a local, already verified file.
        batch_size: Maximum rows per batch.
        offset: Rows of this stream already consumed; whole partitions and row groups before it
            are skipped from Parquet metadata alone, without reading their pages.

    Raises:
        DataError: Missing column, offset past the end, or timestamps going backwards.
        CorruptDataError: A partition fails to read or fails its checksums.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    read_schema = schema_for(["ts", *_data_columns(columns)])
    names = read_schema.names
    skip = offset
    last_ts: int | None = None
    for part in sorted(partitions, key=lambda p: p.date):
        with open_partition(resolve(part), part.key) as pf:
            meta = pf.metadata
            if skip >= meta.num_rows:
                skip -= meta.num_rows
                continue
            needs_cast = _check_schema(pf, part.key, read_schema)
            first_group = 0
            while skip >= meta.row_group(first_group).num_rows:
                skip -= meta.row_group(first_group).num_rows
                first_group += 1
            groups = list(range(first_group, meta.num_row_groups))
            for batch in _iter_verified(pf, part.key, groups, names, batch_size):
                if skip:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    batch, skip = batch.slice(skip), 0
                if batch.num_rows == 0:
                    continue
                batch = batch.select(names)
                if needs_cast:
                    batch = batch.cast(read_schema)
                last_ts = _check_order(batch.column(0), last_ts, part.key)
                yield batch
    if skip:
        raise DataError(
            f"resume offset {offset} is past the end of the stream ({offset - skip} rows)"
        )


def _check_order(ts_col: pa.Array, last_ts: int | None, key: str) -> int:
    """Timestamps must never go backwards within a symbol, or the merge order would be wrong."""
    if ts_col.null_count:
        raise DataError(f"partition {key}: column 'ts' has nulls")
    ts = ts_col.to_numpy()
    if last_ts is not None and ts[0] < last_ts:
        raise DataError(
            f"partition {key}: timestamps go backwards ({ts[0]} after {last_ts}); "
            "a symbol's stream must be non-decreasing across partitions"
        )
    if ts.size > 1 and bool(np.any(ts[1:] < ts[:-1])):
        raise DataError(f"partition {key}: timestamps are not non-decreasing within the file")
    return int(ts[-1])


class _Pending:
    """A symbol's rows read but not yet emitted: an Arrow table and its ts as NumPy."""

    __slots__ = ("exhausted", "source", "table", "ts")

    def __init__(self, source: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
        self.source = source
        self.table = schema.empty_table()
        self.ts = np.empty(0, dtype=np.int64)
        self.exhausted = False

    def pull(self) -> None:
        """Append the next batch of the source, or mark the source exhausted."""
        batch = next(self.source, None)
        if batch is None:
            self.exhausted = True
            return
        self.table = pa.concat_tables([self.table, pa.Table.from_batches([batch])])
        self.ts = np.concatenate([self.ts, batch.column(0).to_numpy()])

    def take_prefix(self, n: int) -> pa.Table:
        """Remove and return the first ``n`` pending rows (zero-copy slices)."""
        head = self.table.slice(0, n)
        self.table = self.table.slice(n)
        self.ts = self.ts[n:]
        return head


def open_tick_stream(
    plan: DataPlan,
    columns: Sequence[str],
    resolve: Resolver,
    *,
    batch_size: int = 65_536,
    offsets: Mapping[str, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Merged record batches of all the plan's symbols, in ``(ts, symbol index, row)`` order.

    Args:
        plan: Symbols and partitions to read; ``sym`` is the index into ``plan.symbols``
            (which ``plan_data`` keeps sorted, so the tie order is alphabetical).
        columns: Tick columns to read besides ``ts`` (``ts``/``sym``/``symbol`` are implicit).
        resolve: Maps a partition to a local, already verified file (cache or local store).
        batch_size: Rows per Parquet read; bounds memory at about two batches per symbol.
        offsets: Rows already consumed per symbol (for resuming from a checkpoint); the result
            is exactly the remainder of the uninterrupted stream.

    Yields:
        Batches with columns ``ts`` (int64), ``sym`` (int32), then ``columns`` in their order.

    Raises:
        DataError: Missing column, bad offset, non-monotonic timestamps.
        CorruptDataError: A partition fails to read or fails its checksums.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cols = _data_columns(columns)
    offsets = dict(offsets or {})
    stray = set(offsets) - set(plan.symbols)
    if stray:
        raise ValueError(f"offsets for symbols not in the plan: {sorted(stray)}")
    schema = output_schema(cols)
    sources = [
        symbol_batches(
            plan.for_symbol(sym), cols, resolve, batch_size=batch_size, offset=offsets.get(sym, 0)
        )
        for sym in plan.symbols
    ]
    if len(sources) == 1:
        return _single(sources[0], schema, batch_size)
    return _merge(sources, schema, batch_size)


def _single(
    source: Iterator[pa.RecordBatch], schema: pa.Schema, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """One symbol needs no merge: add the constant ``sym`` column and pass batches through."""
    zeros = pa.array(np.zeros(batch_size, dtype=np.int32))
    for batch in source:
        arrays = [batch.column(0), zeros.slice(0, batch.num_rows), *batch.columns[1:]]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _merge(
    sources: list[Iterator[pa.RecordBatch]], schema: pa.Schema, batch_size: int
) -> Iterator[pa.RecordBatch]:
    """k-way merge by cutoff: emit every pending row that no unread row can precede.

    Each non-exhausted symbol's unread rows have ``ts >=`` the last ts it has pending, so rows
    with ``ts`` below the smallest such last ts are final and can be sorted and emitted; the
    symbols that set that cutoff read their next batch. Exhausted symbols do not constrain it.
    Each buffer holds under two batches except during a run of one timestamp longer than a
    batch, whose rows cannot be ordered against other symbols until the run ends.
    """
    read_schema = pa.schema([f for f in schema if f.name != "sym"])
    pending = [_Pending(src, read_schema) for src in sources]
    while True:
        # Topping every buffer up to a full batch makes each round emit about a batch or more
        # from the symbol that sets the cutoff, instead of alternating large and tiny batches.
        for p in pending:
            while not p.exhausted and p.ts.size < batch_size:
                p.pull()
        active = [p for p in pending if not p.exhausted]
        if not active:
            counts = [p.ts.size for p in pending]
            if sum(counts):
                yield _emit(pending, counts, schema)
            return
        cutoff = min(p.ts[-1] for p in active)
        counts = [int(np.searchsorted(p.ts, cutoff, side="left")) for p in pending]
        if sum(counts):
            yield _emit(pending, counts, schema)
        for p in active:
            if p.ts[-1] == cutoff:
                p.pull()


def _emit(pending: list[_Pending], counts: list[int], schema: pa.Schema) -> pa.RecordBatch:
    """Take ``counts[i]`` rows from each symbol and interleave them in (ts, sym, row) order."""
    contributors = [i for i, c in enumerate(counts) if c]
    heads = {i: pending[i].take_prefix(counts[i]) for i in contributors}
    if len(contributors) == 1:
        (i,) = contributors
        head = heads[i].combine_chunks()
        sym = pa.array(np.full(head.num_rows, i, dtype=np.int32))
        arrays = [head.column(0).chunk(0), sym, *(c.chunk(0) for c in head.columns[1:])]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    table = pa.concat_tables([heads[i] for i in contributors])
    ts = table.column(0).to_numpy()
    # A stable sort of ts over the symbols concatenated in index order keeps (sym, row) order
    # among equal timestamps, which is exactly the documented total order.
    order = np.argsort(ts, kind="stable")
    sym = np.repeat(np.array(contributors, dtype=np.int32), [counts[i] for i in contributors])
    rest = table.drop_columns(["ts"]).take(pa.array(order)).combine_chunks()
    arrays = [pa.array(ts[order]), pa.array(sym[order]), *(c.chunk(0) for c in rest.columns)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
