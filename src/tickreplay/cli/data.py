"""``tickreplay data generate / ingest / ls / query``: the tick catalog."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tickreplay.cli.app import (
    app,
    console,
    fail,
    load_settings,
    open_catalog,
    split_symbols,
)

data_app = typer.Typer(no_args_is_help=True, help="Generate, ingest, list and query tick data.")
app.add_typer(data_app, name="data")


@data_app.command("generate")
def data_generate(
    out: Annotated[str, typer.Option(help="Catalog URL: a directory, s3://bucket or s3://bucket/prefix")],
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols, e.g. AAPL,MSFT")],
    start: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="First day")],
    end: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day")],
    ticks_per_day: Annotated[int, typer.Option(min=1, help="Trades per symbol per day")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same bytes")] = 0,
    quotes: Annotated[bool, typer.Option(
        help="Also write L1 quote partitions (quotes/...), about 3 quotes per trade; the trade "
             "files stay byte-identical")] = False,
    inline_quotes: Annotated[bool, typer.Option(
        help="Write bid/ask/bid_size/ask_size columns on the trade rows (older form; changes "
             "the trade files)")] = False,
) -> None:
    """Write deterministic synthetic trades (and with --quotes L1 quotes) as a Parquet catalog."""
    from tickreplay.data.generate import generate

    try:
        parts = generate(open_catalog(out), split_symbols(symbols), start.date(), end.date(),
                         ticks_per_day=ticks_per_day, seed=seed, quotes=inline_quotes,
                         quote_partitions=quotes)
    except ValueError as e:
        raise fail(str(e)) from None
    total = sum(p.size for p in parts)
    console.print(f"wrote {len(parts)} partitions ({total / 1e6:.1f} MB) to {out}")


@data_app.command("ingest")
def data_ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or Parquet file")],
    symbol: Annotated[str, typer.Option(help="Symbol of every row")],
    out: Annotated[str, typer.Option(help="Catalog URL")],
    ts_col: Annotated[str, typer.Option(help="Timestamp column")] = "ts",
    price_col: Annotated[str, typer.Option(help="Price column")] = "price",
    size_col: Annotated[str, typer.Option(help="Size column")] = "size",
    ts_unit: Annotated[str, typer.Option(help="ns|us|ms|s|auto for integer timestamps")] = "auto",
    tz: Annotated[str, typer.Option(help="Time zone of naive datetime strings")] = "UTC",
    column: Annotated[list[str] | None, typer.Option(
        help="Extra column mapping SOURCE=TARGET, e.g. bid_px=bid (repeatable)")] = None,
    kind: Annotated[str, typer.Option(help="trades or quotes (L1 bid/ask)")] = "trades",
    bid_col: Annotated[str | None, typer.Option(
        help="Bid price column (--kind quotes; default bid)")] = None,
    ask_col: Annotated[str | None, typer.Option(
        help="Ask price column (--kind quotes; default ask)")] = None,
    bid_size_col: Annotated[str | None, typer.Option(
        help="Bid size column (--kind quotes; without it sizes are unlimited)")] = None,
    ask_size_col: Annotated[str | None, typer.Option(
        help="Ask size column (--kind quotes; without it sizes are unlimited)")] = None,
) -> None:
    """Validate a file of one symbol's trades (or with --kind quotes, L1 quotes) into the catalog."""
    from tickreplay.data.errors import DataError
    from tickreplay.data.ingest import ingest, ingest_quotes

    quote_flags = {"--bid-col": bid_col, "--ask-col": ask_col, "--bid-size-col": bid_size_col,
                   "--ask-size-col": ask_size_col}
    if kind == "quotes":
        if column:
            raise fail("--column applies to trades only (quotes have a fixed set of columns)")
        try:
            parts = ingest_quotes(file, symbol, open_catalog(out), ts_col=ts_col,
                                  bid_col=bid_col or "bid", ask_col=ask_col or "ask",
                                  bid_size_col=bid_size_col, ask_size_col=ask_size_col,
                                  ts_unit=ts_unit, tz=tz)  # type: ignore[arg-type]
        except (DataError, ValueError) as e:
            raise fail(str(e)) from None
        console.print(f"ingested {file} as {symbol} quotes: {len(parts)} partitions")
        return
    if kind != "trades":
        raise fail(f"--kind must be trades or quotes, got {kind!r}")
    given = [flag for flag, value in quote_flags.items() if value is not None]
    if given:
        raise fail(f"{', '.join(given)} only apply with --kind quotes")
    mapping = {}
    for m in column or []:
        src, sep, dst = m.partition("=")
        if not sep:
            raise fail(f"--column expects SOURCE=TARGET, got {m!r}")
        mapping[dst.strip()] = src.strip()  # ingest() maps catalog name -> source column
    try:
        parts = ingest(file, symbol, open_catalog(out), ts_col=ts_col, price_col=price_col,
                       size_col=size_col, columns=mapping or None, ts_unit=ts_unit,  # type: ignore[arg-type]
                       tz=tz)
    except (DataError, ValueError) as e:
        raise fail(str(e)) from None
    console.print(f"ingested {file} as {symbol}: {len(parts)} partitions")


@data_app.command("ls")
def data_ls(url: Annotated[str, typer.Argument(help="Catalog URL")],
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the catalog: symbols, kinds (trades, quotes), days and sizes."""
    from tickreplay.data.catalog import list_partitions

    parts = list_partitions(open_catalog(url))
    if as_json:
        console.print_json(json.dumps(
            [{"symbol": p.symbol, "date": p.date, "kind": p.kind, "key": p.key, "size": p.size}
             for p in parts]))
        return
    by_sym: dict[tuple[str, str], list[Any]] = {}
    for p in parts:
        by_sym.setdefault((p.symbol, p.kind), []).append(p)
    table = Table(title=f"{url}: {len(parts)} partitions")
    for col in ("symbol", "kind", "days", "first", "last", "MB"):
        table.add_column(col, justify="right" if col in ("days", "MB") else "left")
    for (sym, kind), ps in sorted(by_sym.items()):
        table.add_row(sym, kind, str(len(ps)), ps[0].date, ps[-1].date,
                      f"{sum(p.size for p in ps) / 1e6:.1f}")
    console.print(table)


@data_app.command("query")
def data_query(url: Annotated[str, typer.Argument(help="Catalog URL")],
               sql: Annotated[str, typer.Argument(help="SQL over the view `ticks`")],
               limit: Annotated[int, typer.Option(help="Rows to print")] = 50) -> None:
    """Run DuckDB SQL over the catalog (view `ticks` with columns symbol, date, ts, price, ...)."""
    from tickreplay.data.query import query

    try:
        result = query(url, sql, load_settings())
    except Exception as e:  # noqa: BLE001 - DuckDB raises many types; all are user errors
        raise fail(f"query failed: {e}") from None
    table = Table(show_lines=False)
    for name in result.column_names:
        table.add_column(name)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    if result.num_rows > limit:
        console.print(f"... {result.num_rows - limit} more rows")


