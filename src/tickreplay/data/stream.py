"""Streaming tick reader: verified Parquet partitions in, merged Arrow record batches out.

Every backtest reads its data through :func:`open_tick_stream`. It never holds more than about
two batches per symbol, so memory is bounded by ``batch_size x symbols`` whatever the date
range. Events of all symbols come out in one total order, ``(ts, symbol index, row)``, where the
row is the position in the symbol's own stream: ties between symbols never depend on dict order,
file system listing order or thread timing, which the engine's bit-for-bit reproducibility needs.

:func:`open_event_stream` merges L1 quotes and trades through the same machinery: each
(symbol, kind) is one source, sources are numbered in (symbol index, quotes before trades)
order, and the merge's stable tie-break on the source number gives the total order
``(ts, symbol index, kind, row)``. Its batches have one wide schema for both kinds
(:func:`event_schema`), so a strategy or fill model reads one column layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tickreplay.data.catalog import DataPlan, Partition
from tickreplay.data.errors import CorruptDataError, DataError
from tickreplay.data.schema import (
    EVENT_KINDS,
    QUOTE_FIELDS,
    QUOTE_REQUIRED_COLUMNS,
    REQUIRED_COLUMNS,
    TICK_FIELDS,
    parse_event_partition_key,
    quote_schema,
    schema_for,
    validate_events,
    validate_kind,
)

# Columns every output batch carries whatever the strategy asks for; naming them is harmless.
_IMPLICIT = frozenset({"ts", "sym", "symbol"})

Resolver = Callable[[Partition], Path]

_READ_BUFFER = 1 << 20

# The event stream's ``kind`` values; quotes sort before trades at equal (ts, symbol).
KIND_QUOTE = 0
KIND_TRADE = 1
# Columns of the event stream that are always there; naming them in ``columns`` is harmless.
_EVENT_IMPLICIT = frozenset(
    {"ts", "sym", "symbol", "kind", "price", "size", "q_bid", "q_ask", "q_bid_size", "q_ask_size"}
)
_QUOTE_OUT = ("q_bid", "q_ask", "q_bid_size", "q_ask_size")
# A quote file may omit its sizes (unlimited size); these read as nulls, then +inf.
_QUOTE_OPTIONAL = frozenset({"bid_size", "ask_size"})


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


def check_partition(path: Path, key: str, kind: str | None = None) -> int:
    """Open a partition, check the required columns and their types; return its row count.

    Run on every partition before a simulation starts, so a damaged file (0 bytes, a damaged
    footer, a wrong schema) fails the job at once, naming the partition and what is wrong,
    instead of surfacing mid-run as an anonymous Arrow error that looks worth retrying.

    Args:
        path: The local file.
        key: Its catalog key, for messages; it also tells the kind when ``kind`` is None
            (``quotes/...`` keys are quotes, anything else is checked as trades).
        kind: ``"trades"`` (``ts``, ``price``, ``size``) or ``"quotes"`` (``ts``, ``bid``,
            ``ask``; ``bid_size``/``ask_size`` numeric if present).

    Raises:
        CorruptDataError: Unreadable file, or a required column missing or of the wrong type.
    """
    if kind is None:
        parsed = parse_event_partition_key(key)
        kind = parsed[0] if parsed else "trades"
    elif validate_kind(kind) == "trades":
        kind = "trades"
    required, fields = (
        (REQUIRED_COLUMNS, TICK_FIELDS) if kind == "trades" else (QUOTE_REQUIRED_COLUMNS, QUOTE_FIELDS)
    )
    if Path(path).stat().st_size == 0:
        raise CorruptDataError(f"corrupt partition {key}: the file is empty (0 bytes)")
    pf = open_partition(path, key)
    schema = pf.schema_arrow
    optional = [n for n in fields if n not in required and n in schema.names and kind != "trades"]
    for name in (*required, *optional):
        if name not in schema.names:
            raise CorruptDataError(f"partition {key} has a wrong schema: no column {name!r} "
                                   f"(it has {schema.names})")
        typ = schema.field(name).type
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ)
        if typ != fields[name] and not (name != "ts" and numeric):
            raise CorruptDataError(f"partition {key} has a wrong schema: column {name!r} is "
                                   f"{schema.field(name).type}, expected {fields[name]}")
    return int(pf.metadata.num_rows)


def count_rows(paths: Mapping[str, Path]) -> int:
    """Total rows of ``{key: local path}`` partitions, trades and quotes, from footers only.

    Every partition is checked on the way (:func:`check_partition`, kind from its key), so
    the total a progress bar divides by is also the proof that every file is readable.

    Raises:
        CorruptDataError: A partition is empty, damaged or has a wrong schema (named).
    """
    return sum(check_partition(path, key) for key, path in paths.items())


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
    yield from _partition_batches(partitions, read_schema, resolve, batch_size, offset)


def quote_batches(
    partitions: Sequence[Partition],
    resolve: Resolver,
    *,
    batch_size: int = 65_536,
    offset: int = 0,
) -> Iterator[pa.RecordBatch]:
    """One symbol's quote stream: ``ts``, ``bid``, ``ask``, ``bid_size``, ``ask_size``.

    Same reading rules as :func:`symbol_batches` (date order, offsets skipped from metadata,
    checksums, non-decreasing ``ts``). A file without size columns reads them as nulls.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    yield from _partition_batches(
        partitions, quote_schema(), resolve, batch_size, offset, _QUOTE_OPTIONAL
    )


def _partition_batches(
    partitions: Sequence[Partition],
    read_schema: pa.Schema,
    resolve: Resolver,
    batch_size: int,
    offset: int,
    optional: frozenset[str] = frozenset(),
) -> Iterator[pa.RecordBatch]:
    """Batches of ``read_schema`` from partitions in date order, the first ``offset`` rows skipped.

    ``optional`` columns may be absent from a file; they come out as nulls.
    """
    names = read_schema.names
    skip = offset
    last_ts: int | None = None
    for part in sorted(partitions, key=lambda p: p.date):
        with open_partition(resolve(part), part.key) as pf:
            meta = pf.metadata
            if skip >= meta.num_rows:
                skip -= meta.num_rows
                continue
            file_schema = read_schema
            absent = [n for n in names if n in optional and n not in pf.schema_arrow.names]
            if absent:
                file_schema = pa.schema([f for f in read_schema if f.name not in absent])
            file_names = file_schema.names
            needs_cast = _check_schema(pf, part.key, file_schema)
            first_group = 0
            while skip >= meta.row_group(first_group).num_rows:
                skip -= meta.row_group(first_group).num_rows
                first_group += 1
            groups = list(range(first_group, meta.num_row_groups))
            for batch in _iter_verified(pf, part.key, groups, file_names, batch_size):
                if skip:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    batch, skip = batch.slice(skip), 0
                if batch.num_rows == 0:
                    continue
                batch = batch.select(file_names)
                if needs_cast:
                    batch = batch.cast(file_schema)
                if absent:
                    batch = pa.RecordBatch.from_arrays(
                        [batch.column(f.name) if f.name not in absent
                         else pa.nulls(batch.num_rows, f.type) for f in read_schema],
                        schema=read_schema,
                    )
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
    sources: list[Iterator[pa.RecordBatch]],
    schema: pa.Schema,
    batch_size: int,
    labels: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """k-way merge by cutoff: emit every pending row that no unread row can precede.

    Each non-exhausted symbol's unread rows have ``ts >=`` the last ts it has pending, so rows
    with ``ts`` below the smallest such last ts are final and can be sorted and emitted; the
    symbols that set that cutoff read their next batch. Exhausted symbols do not constrain it.
    Each buffer holds under two batches except during a run of one timestamp longer than a
    batch, whose rows cannot be ordered against other symbols until the run ends.

    ``labels[i]`` is the ``sym`` value of source ``i`` (default: ``i``); ties between sources
    always break by source number, whatever their labels.
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
                yield _emit(pending, counts, schema, labels)
            return
        cutoff = min(p.ts[-1] for p in active)
        counts = [int(np.searchsorted(p.ts, cutoff, side="left")) for p in pending]
        if sum(counts):
            yield _emit(pending, counts, schema, labels)
        for p in active:
            if p.ts[-1] == cutoff:
                p.pull()


def _emit(
    pending: list[_Pending],
    counts: list[int],
    schema: pa.Schema,
    labels: Sequence[int] | None = None,
) -> pa.RecordBatch:
    """Take ``counts[i]`` rows from each source and interleave them in (ts, source, row) order."""
    contributors = [i for i, c in enumerate(counts) if c]
    heads = {i: pending[i].take_prefix(counts[i]) for i in contributors}
    if len(contributors) == 1:
        (i,) = contributors
        head = heads[i].combine_chunks()
        sym = pa.array(np.full(head.num_rows, i if labels is None else labels[i], dtype=np.int32))
        arrays = [head.column(0).chunk(0), sym, *(c.chunk(0) for c in head.columns[1:])]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    table = pa.concat_tables([heads[i] for i in contributors])
    ts = table.column(0).to_numpy()
    # A stable sort of ts over the symbols concatenated in index order keeps (sym, row) order
    # among equal timestamps, which is exactly the documented total order.
    order = np.argsort(ts, kind="stable")
    names = contributors if labels is None else [labels[i] for i in contributors]
    sym = np.repeat(np.array(names, dtype=np.int32), [counts[i] for i in contributors])
    rest = table.drop_columns(["ts"]).take(pa.array(order)).combine_chunks()
    arrays = [pa.array(ts[order]), pa.array(sym[order]), *(c.chunk(0) for c in rest.columns)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def event_offset_key(symbol: str, kind: str) -> str:
    """The ``offsets`` key of one stream: ``"SYM"`` for trades (as in :func:`open_tick_stream`),
    ``"quotes/SYM"`` for quotes, so a trades-only checkpoint's offsets read the same either way."""
    return symbol if validate_kind(kind) == "trades" else f"quotes/{symbol}"


def _event_columns(columns: Sequence[str]) -> list[str]:
    """The extra trade columns of the event stream: declared tick columns beyond the implicit."""
    cols = [c for c in dict.fromkeys(columns) if c not in _EVENT_IMPLICIT]
    unknown = [c for c in cols if c not in TICK_FIELDS]
    if unknown:
        raise DataError(f"unknown tick column(s) {unknown}; known: {sorted(TICK_FIELDS)}")
    return cols


def event_schema(columns: Sequence[str] = ()) -> pa.Schema:
    """Schema of :func:`open_event_stream` batches for the declared ``columns``.

    ``ts`` (int64), ``sym`` (int32, index into the plan's symbols), ``kind`` (int8:
    0 quote, 1 trade), ``price``, ``size`` (float64, NaN on quote rows), the extra trade
    columns among ``columns`` (null on quote rows), then ``q_bid``, ``q_ask``, ``q_bid_size``,
    ``q_ask_size`` (float64, NaN on trade rows; a quote without a size has +inf). NaN rather
    than null for the numeric columns keeps them plain float64 arrays for vectorised code.
    """
    extras = _event_columns(columns)
    fields = [
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("sym", pa.int32(), nullable=False),
        pa.field("kind", pa.int8(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        *(pa.field(c, TICK_FIELDS[c], nullable=True) for c in extras),
        *(pa.field(c, pa.float64(), nullable=False) for c in _QUOTE_OUT),
    ]
    return pa.schema(fields)


class _Widen:
    """Turns a trade or quote source's batches into the event schema (without ``sym``).

    Constant columns (``kind``, NaN fill, nulls of the other kind's columns) are built once at
    ``batch_size`` rows and sliced per batch, which costs no copy.
    """

    def __init__(self, schema: pa.Schema, extras: list[str], batch_size: int) -> None:
        self.schema = pa.schema([f for f in schema if f.name != "sym"])
        self.extras = extras
        self.nan = pa.array(np.full(batch_size, np.nan))
        self.kind = {
            k: pa.array(np.full(batch_size, k, dtype=np.int8)) for k in (KIND_QUOTE, KIND_TRADE)
        }
        self.nulls = [pa.nulls(batch_size, TICK_FIELDS[c]) for c in extras]

    def trades(self, source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``ts, price, size, extras`` -> the wide row layout, kind 1, NaN quote columns."""
        for b in source:
            n = b.num_rows
            nan = self.nan.slice(0, n)
            arrays = [b.column(0), self.kind[KIND_TRADE].slice(0, n), *b.columns[1:],
                      nan, nan, nan, nan]
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def quotes(self, source: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``ts, bid, ask, bid_size, ask_size`` -> the wide layout, kind 0, NaN price/size."""
        inf = pa.scalar(np.inf, pa.float64())
        for b in source:
            n = b.num_rows
            nan = self.nan.slice(0, n)
            sizes = [b.column(i) if b.column(i).null_count == 0 else pc.fill_null(b.column(i), inf)
                     for i in (3, 4)]
            arrays = [b.column(0), self.kind[KIND_QUOTE].slice(0, n), nan, nan,
                      *(a.slice(0, n) for a in self.nulls), b.column(1), b.column(2), *sizes]
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def open_event_stream(
    plan: DataPlan,
    columns: Sequence[str],
    resolve: Resolver,
    *,
    batch_size: int = 65_536,
    offsets: Mapping[str, int] | None = None,
    events: Sequence[str] = ("trades", "quotes"),
) -> Iterator[pa.RecordBatch]:
    """Merged trades and L1 quotes of all the plan's symbols, in one total order.

    The order is ``(ts, symbol index, kind, row)``: at equal timestamp and symbol a quote
    comes before a trade (the book a trade printed against is known before the print), and
    ``row`` is the position within that symbol's stream of that kind (partitions in date
    order, rows in file order). Each (symbol, kind) is one source of the same k-way merge as
    :func:`open_tick_stream`, numbered in exactly that order, so ties never depend on anything
    but the data.

    Args:
        plan: Symbols and partitions (of both kinds); ``sym`` indexes ``plan.symbols``.
        columns: Declared tick columns; those beyond ``price``/``size`` (and the implicit
            names of :func:`event_schema`) come out as extra trade columns, null on quotes.
        resolve: Maps a partition to a local, already verified file (cache or local store).
        batch_size: Rows per Parquet read; bounds memory at about two batches per stream.
        offsets: Rows already consumed per stream (see :func:`event_offset_key`: ``"SYM"``
            for trades, ``"quotes/SYM"`` for quotes); the result is exactly the remainder of
            the uninterrupted stream.
        events: ``("trades", "quotes")``, or one of them alone (same schema either way).

    Yields:
        Batches of :func:`event_schema` ``(columns)``.

    Raises:
        ValueError: Bad batch size, unknown event kind, or offsets for a stream not read.
        DataError: Missing column, bad offset, non-monotonic timestamps.
        CorruptDataError: A partition fails to read or fails its checksums.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kinds = validate_events(events)
    extras = _event_columns(columns)
    offsets = dict(offsets or {})
    known = {event_offset_key(sym, k): k for sym in plan.symbols for k in EVENT_KINDS}
    stray = sorted(k for k in offsets if k not in known)
    if stray:
        raise ValueError(f"offsets for streams not in the plan: {stray}")
    unread = sorted(k for k, v in offsets.items() if v and known[k] not in kinds)
    if unread:
        raise ValueError(f"offsets for streams this run does not read: {unread}")
    schema = event_schema(extras)
    widen = _Widen(schema, extras, batch_size)
    sources: list[Iterator[pa.RecordBatch]] = []
    labels: list[int] = []
    for i, sym in enumerate(plan.symbols):
        # Quotes first: the source number breaks ties, so this is "quotes before trades".
        if "quotes" in kinds:
            sources.append(widen.quotes(quote_batches(
                plan.for_symbol(sym, "quotes"), resolve, batch_size=batch_size,
                offset=offsets.get(event_offset_key(sym, "quotes"), 0))))
            labels.append(i)
        if "trades" in kinds:
            sources.append(widen.trades(symbol_batches(
                plan.for_symbol(sym), ["price", "size", *extras], resolve,
                batch_size=batch_size, offset=offsets.get(sym, 0))))
            labels.append(i)
    if len(sources) == 1:
        return _single(sources[0], schema, batch_size)
    return _merge(sources, schema, batch_size, labels)


def stream_row_counts(batch: pa.RecordBatch, symbols: Sequence[str]) -> dict[str, int]:
    """Rows of each stream in an event batch, by offset key (only streams with rows).

    What a consumer adds to its offsets after processing a whole batch; the sum over batches
    consumed is what :func:`open_event_stream` takes back as ``offsets`` to resume.
    """
    sym = batch.column("sym").to_numpy().astype(np.int64)
    kind = batch.column("kind").to_numpy().astype(np.int64)
    counts = np.bincount(sym * 2 + kind, minlength=2 * len(symbols))
    out = {}
    for i, name in enumerate(symbols):
        for k, kname in ((KIND_QUOTE, "quotes"), (KIND_TRADE, "trades")):
            if counts[2 * i + k]:
                out[event_offset_key(name, kname)] = int(counts[2 * i + k])
    return out
