"""Ingest a user's CSV or Parquet file of ticks into the catalog, validated.

A user's data problem must be visible at ingest, with the row and column that break it, never
later as a strange fill: so nothing is silently repaired. Rows are not re-sorted (unsorted input
is an error), nulls are not dropped, and bad prices are not clipped.

L1 quotes (:func:`ingest_quotes`) follow the same rules and add their own: a crossed quote
(bid above ask) is rejected naming its row, since a fill model trusting it would fill at
impossible prices; a locked quote (bid equal to ask) is real market data and is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tickreplay.data.catalog import Partition
from tickreplay.data.objectstore import ObjectStore
from tickreplay.data.partitions import write_partition
from tickreplay.data.schema import TICK_FIELDS, quote_schema, schema_for, validate_symbol
from tickreplay.errors import IngestError

TsUnit = Literal["ns", "us", "ms", "s", "auto"]

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_NS_PER_DAY = 86_400 * 1_000_000_000
# "auto" reads integer epochs by magnitude: below 1e11 they are seconds (until the year 5138),
# below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
_AUTO_LIMITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_OFFSET_RE = r"(?:Z|[+-]\d\d:?\d\d)$"
# Text epochs with a fraction: 31 integer digits cover ns epochs, 9 decimals cover ns of seconds.
_EPOCH_DECIMAL = pa.decimal256(40, 9)


def ingest(
    source: Path | str,
    symbol: str,
    store: ObjectStore,
    *,
    ts_col: str = "ts",
    price_col: str = "price",
    size_col: str = "size",
    columns: Mapping[str, str] | None = None,
    ts_unit: TsUnit = "auto",
    tz: str = "UTC",
) -> list[Partition]:
    """Validate a CSV or Parquet file of one symbol's ticks and write it as catalog partitions.

    Rows are split by the UTC calendar date of their timestamp (one partition per date,
    replacing any existing partition of that date). UTC rather than the exchange's date so that
    the split never depends on a venue's calendar; for US equities a session never crosses UTC
    midnight. Row numbers in errors are 1-based data rows: the first row after a CSV header is
    row 1.

    Args:
        source: ``.csv``, ``.csv.gz`` or ``.parquet`` file, any column names.
        symbol: The symbol the rows belong to.
        store: Catalog to write to.
        ts_col: Source column of the timestamps: integer or fractional epochs, datetime strings
            or Parquet timestamps.
        price_col: Source column of the trade price (must be > 0).
        size_col: Source column of the trade size (must be >= 0).
        columns: Optional extra columns as ``{catalog name: source name}``, e.g.
            ``{"bid": "BidPx"}``; catalog names are those of the tick schema.
        ts_unit: Unit of numeric epochs; ``auto`` infers it from their magnitude.
        tz: Time zone of naive datetime strings/timestamps (epochs are always UTC).

    Returns:
        The partitions written, in date order.

    Raises:
        IngestError: Unreadable file, missing column, null, non-positive price, negative size,
            or timestamps going backwards within a partition.
    """
    source = Path(source)
    validate_symbol(symbol)
    extra = dict(columns or {})
    unknown = [c for c in extra if c not in TICK_FIELDS or c in ("ts", "price", "size")]
    if unknown:
        raise IngestError(f"extra column target(s) {unknown} are not optional tick columns")
    wanted = {"ts": ts_col, "price": price_col, "size": size_col, **extra}
    table = _read_columns(source, ts_col, wanted)
    where = source.name
    for dst in ("ts", "price", "size"):
        _reject_nulls(table.column(wanted[dst]), where, wanted[dst])
    ts = _timestamps_ns(table.column(ts_col), ts_unit, tz, where, ts_col)
    price = _as_float(table.column(price_col), where, price_col)
    _reject_rows(~(np.isfinite(price) & (price > 0)), price, where, price_col, "price must be > 0")
    size = _as_float(table.column(size_col), where, size_col)
    _reject_rows(~(np.isfinite(size) & (size >= 0)), size, where, size_col, "size must be >= 0")
    arrays: dict[str, pa.Array] = {
        "ts": pa.array(ts),
        "price": pa.array(price),
        "size": pa.array(size),
    }
    for dst, src in extra.items():
        arrays[dst] = _extra_column(table.column(src), TICK_FIELDS[dst], where, src)
    out = pa.Table.from_arrays(list(arrays.values()), schema=schema_for(list(arrays)))
    return _write_partitions(out, ts, symbol, store, where, ts_col)


def ingest_quotes(
    source: Path | str,
    symbol: str,
    store: ObjectStore,
    *,
    ts_col: str = "ts",
    bid_col: str = "bid",
    ask_col: str = "ask",
    bid_size_col: str | None = None,
    ask_size_col: str | None = None,
    ts_unit: TsUnit = "auto",
    tz: str = "UTC",
) -> list[Partition]:
    """Validate a CSV or Parquet file of one symbol's L1 quotes and write quote partitions.

    Split by UTC date like :func:`ingest` (one ``quotes/symbol=SYM/date=D`` partition per
    date, replacing an existing one), with the same timestamp rules and 1-based row numbers.

    Args:
        source: ``.csv``, ``.csv.gz`` or ``.parquet`` file, any column names.
        symbol: The symbol the rows belong to.
        store: Catalog to write to.
        ts_col: Source column of the timestamps (as in :func:`ingest`).
        bid_col: Source column of the bid price (finite, > 0, not null).
        ask_col: Source column of the ask price (finite, > 0, not null, >= bid).
        bid_size_col: Optional source column of the bid size (>= 0; null = unlimited). Without
            it the partition's ``bid_size`` is all null: every quote has unlimited size.
        ask_size_col: The same for the ask size.
        ts_unit: Unit of numeric epochs; ``auto`` infers it from their magnitude.
        tz: Time zone of naive datetime strings/timestamps (epochs are always UTC).

    Returns:
        The quote partitions written, in date order.

    Raises:
        IngestError: Unreadable file, missing column, null or non-positive price, crossed
            quote, negative or non-finite size, or timestamps going backwards within a date.
    """
    source = Path(source)
    validate_symbol(symbol)
    wanted = {"ts": ts_col, "bid": bid_col, "ask": ask_col}
    if bid_size_col is not None:
        wanted["bid_size"] = bid_size_col
    if ask_size_col is not None:
        wanted["ask_size"] = ask_size_col
    table = _read_columns(source, ts_col, wanted)
    where = source.name
    for dst in ("ts", "bid", "ask"):
        _reject_nulls(table.column(wanted[dst]), where, wanted[dst])
    ts = _timestamps_ns(table.column(ts_col), ts_unit, tz, where, ts_col)
    bid = _as_float(table.column(bid_col), where, bid_col)
    _reject_rows(~(np.isfinite(bid) & (bid > 0)), bid, where, bid_col, "bid must be > 0")
    ask = _as_float(table.column(ask_col), where, ask_col)
    _reject_rows(~(np.isfinite(ask) & (ask > 0)), ask, where, ask_col, "ask must be > 0")
    crossed = np.flatnonzero(bid > ask)
    if crossed.size:
        i = int(crossed[0])
        raise _fail_at(i, where, bid_col, f"crossed quote: bid {bid[i].item()!r} is above "
                                          f"ask {ask[i].item()!r} (column {ask_col!r})")
    arrays: dict[str, pa.Array] = {"ts": pa.array(ts), "bid": pa.array(bid), "ask": pa.array(ask)}
    for dst in ("bid_size", "ask_size"):
        src = wanted.get(dst)
        if src is None:
            arrays[dst] = pa.nulls(table.num_rows, pa.float64())
            continue
        col = table.column(src)
        values = _as_float(col, where, src)
        null = col.is_null().to_numpy(zero_copy_only=False)
        bad = ~null & ~(np.isfinite(values) & (values >= 0))
        _reject_rows(bad, values, where, src, f"{dst.replace('_', ' ')} must be >= 0")
        arrays[dst] = pa.array(values, mask=null)
    out = pa.Table.from_arrays(list(arrays.values()), schema=quote_schema(list(arrays)))
    return _write_partitions(out, ts, symbol, store, where, ts_col, kind="quotes")


def _read_columns(source: Path, ts_col: str, wanted: dict[str, str]) -> pa.Table:
    """The source file as a table that has every ``wanted`` column and at least one row, or
    an IngestError naming what is missing (trades and quotes ingest alike)."""
    table = _read(source, ts_col)
    missing = [
        f"{src!r} (for {dst})" for dst, src in wanted.items() if src not in table.column_names
    ]
    if missing:
        raise IngestError(
            f"{source.name}: column(s) {', '.join(missing)} not found; "
            f"available columns: {table.column_names}"
        )
    if table.num_rows == 0:
        raise IngestError(f"{source.name}: no data rows")
    return table


def _read(source: Path, ts_col: str) -> pa.Table:
    name = source.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz")):
            # ts is read as text so that integer epochs, ISO strings and local times all go
            # through one parser with explicit unit and time zone rules, never pyarrow's guess.
            opts = pacsv.ConvertOptions(
                column_types={ts_col: pa.string()}, strings_can_be_null=True
            )
            return pacsv.read_csv(source, convert_options=opts)
        if name.endswith((".parquet", ".pq")):
            return pq.read_table(source)
    except FileNotFoundError as e:
        raise IngestError(f"{source}: file not found") from e
    except (pa.ArrowException, OSError) as e:
        raise IngestError(f"{source.name}: cannot read: {e}") from e
    raise IngestError(f"{source.name}: unsupported file type (use .csv, .csv.gz or .parquet)")


def _fail_at(index: int, where: str, column: str, problem: str) -> IngestError:
    return IngestError(f"{where}: row {index + 1}, column {column!r}: {problem}")


def _reject_nulls(col: pa.ChunkedArray, where: str, name: str) -> None:
    if col.null_count:
        first = int(pc.index(pc.is_null(col), True).as_py())
        raise _fail_at(first, where, name, "missing value (null)")


def _reject_rows(bad: np.ndarray, values: np.ndarray, where: str, name: str, rule: str) -> None:
    hits = np.flatnonzero(bad)
    if hits.size:
        raise _fail_at(int(hits[0]), where, name, f"{rule}, got {values[hits[0]].item()!r}")


def _as_float(col: pa.ChunkedArray, where: str, name: str) -> np.ndarray:
    """A numeric or numeric-text column as float64; text that is not a number names its row."""
    if (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_decimal(col.type)
    ):
        return col.cast(pa.float64()).to_numpy()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        numbers = pd.to_numeric(pd.Series(col.to_numpy(zero_copy_only=False)), errors="coerce")
        bad = np.flatnonzero(
            numbers.isna().to_numpy() & ~col.is_null().to_numpy(zero_copy_only=False)
        )
        if bad.size:
            raise _fail_at(int(bad[0]), where, name, f"not a number: {col[int(bad[0])].as_py()!r}")
        return numbers.to_numpy(dtype=np.float64)
    raise IngestError(f"{where}: column {name!r} has type {col.type}, expected numbers")


def _timestamps_ns(
    col: pa.ChunkedArray, unit: TsUnit, tz: str, where: str, name: str
) -> np.ndarray:
    """int64 ns since the epoch, UTC, from any supported timestamp representation."""
    if unit not in ("auto", *_NS_PER_UNIT):
        raise IngestError(f"ts_unit must be one of ns, us, ms, s, auto; got {unit!r}")
    if pa.types.is_timestamp(col.type):
        series = col.to_pandas()
        if col.type.tz is None:
            series = _localize(series, tz, where, name)
        return _utc_ns(series)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return _epoch_ns(col.cast(pa.int64()).to_numpy(), unit, where, name)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            return _decimal_epoch_ns(col.cast(_EPOCH_DECIMAL), unit, where, name)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _parse_datetime_strings(col, tz, where, name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return _epoch_ns(col.to_numpy(), unit, where, name)
    raise IngestError(f"{where}: column {name!r} has type {col.type}, expected timestamps")


def _resolve_unit(magnitude: float, unit: TsUnit) -> str:
    if unit != "auto":
        return unit
    return next((u for limit, u in _AUTO_LIMITS if magnitude < limit), "ns")


def _decimal_epoch_ns(values: pa.ChunkedArray, unit: TsUnit, where: str, name: str) -> np.ndarray:
    """Fractional epochs in text, scaled exactly (float64 loses up to 256 ns at today's epochs)."""
    unit = _resolve_unit(float(pc.max(pc.abs(values)).as_py()), unit)
    factor = pa.scalar(Decimal(_NS_PER_UNIT[unit]), pa.decimal256(10, 0))
    scaled = pc.round(pc.multiply(values, factor), ndigits=0, round_mode="half_to_even")
    try:
        return scaled.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid as e:
        raise IngestError(
            f"{where}: column {name!r}: timestamps out of range for unit {unit}"
        ) from e


def _epoch_ns(values: np.ndarray, unit: TsUnit, where: str, name: str) -> np.ndarray:
    unit = _resolve_unit(float(np.max(np.abs(values))), unit)
    factor = _NS_PER_UNIT[unit]
    if values.dtype.kind == "f":
        _reject_rows(~np.isfinite(values), values, where, name, "timestamp must be finite")
        scaled = np.rint(values * factor)
        _reject_rows(np.abs(scaled) >= 2**63, values, where, name, f"out of range for unit {unit}")
        return scaled.astype(np.int64)
    values = values.astype(np.int64)
    limit = np.iinfo(np.int64).max // factor
    _reject_rows(np.abs(values) > limit, values, where, name, f"out of range for unit {unit}")
    return values * factor


def _parse_datetime_strings(col: pa.ChunkedArray, tz: str, where: str, name: str) -> np.ndarray:
    strings = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    has_offset = pc.match_substring_regex(col, _OFFSET_RE).to_numpy(zero_copy_only=False)
    mixed = np.flatnonzero(has_offset != has_offset[0])
    if mixed.size:
        raise _fail_at(int(mixed[0]), where, name, "mixes timestamps with and without a UTC offset")
    aware = bool(has_offset[0])
    parsed = None
    # pandas infers one format from the first string; ISO8601 also accepts varying precision.
    for fmt in (None, "ISO8601"):
        try:
            parsed = pd.to_datetime(strings, utc=aware, format=fmt)
            break
        except (ValueError, TypeError):
            continue
    if parsed is None:
        coerced = pd.to_datetime(strings, utc=aware, errors="coerce")
        first = int(np.flatnonzero(coerced.isna().to_numpy())[0])
        raise _fail_at(first, where, name, f"cannot parse {strings.iloc[first]!r} as a timestamp")
    if not aware:
        parsed = _localize(parsed, tz, where, name)
    return _utc_ns(parsed)


def _localize(series: pd.Series, tz: str, where: str, name: str) -> pd.Series:
    try:
        return series.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise")
    except Exception as e:  # pandas raises several types for bad zones and DST gaps/overlaps
        raise IngestError(
            f"{where}: column {name!r}: cannot interpret local times in {tz}: {e}"
        ) from e


def _utc_ns(series: pd.Series) -> np.ndarray:
    # pandas 3 parses at microsecond resolution by default: widen to ns before taking integers.
    utc = series.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("ns")
    return utc.to_numpy().view(np.int64)


def _extra_column(col: pa.ChunkedArray, target: pa.DataType, where: str, name: str) -> pa.Array:
    if pa.types.is_floating(target):
        return pa.array(
            _as_float(col, where, name), mask=col.is_null().to_numpy(zero_copy_only=False)
        )
    try:
        return col.cast(target).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise IngestError(f"{where}: column {name!r} cannot be read as {target}: {e}") from e


def _write_partitions(
    table: pa.Table,
    ts: np.ndarray,
    symbol: str,
    store: ObjectStore,
    where: str,
    ts_col: str,
    kind: str = "trades",
) -> list[Partition]:
    """Split ``table`` by the UTC date of ``ts`` and write one partition per date.

    The whole input is checked for backwards timestamps before the first write, so a bad file
    leaves the catalog untouched instead of half-ingested.
    """
    days = ts // _NS_PER_DAY
    # A stable sort by day keeps each day's rows in file order, so the monotonic check below
    # sees exactly what the partition will hold.
    order = np.argsort(days, kind="stable")
    ts_sorted, days_sorted = ts[order], days[order]
    backwards = (days_sorted[1:] == days_sorted[:-1]) & (ts_sorted[1:] < ts_sorted[:-1])
    if backwards.any():
        first = int(np.min(order[1:][backwards]))
        raise _fail_at(
            first,
            where,
            ts_col,
            "timestamp is earlier than the previous row of the same "
            "UTC date (input must be sorted by time; it is not re-sorted on purpose)",
        )
    starts = np.flatnonzero(np.r_[True, days_sorted[1:] != days_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return [
        write_partition(
            store,
            symbol,
            np.datetime64(int(days_sorted[lo]), "D").astype(object),
            table.take(pa.array(order[lo:hi])),
            kind,
        )
        for lo, hi in zip(starts, ends, strict=True)
    ]
