"""The ``tickreplay`` command: data tools, local runs, and (with the stack up) durable jobs."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reproducible tick-level backtests on Parquet + S3.")
data_app = typer.Typer(no_args_is_help=True, help="Generate, ingest, list and query tick data.")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    """Print ``error: <msg>`` as one line on stderr and return the Exit to raise.

    The message is escaped: error texts quote user input and paths, and a ``[/x]`` in them
    must print as it is, not be parsed as rich markup (which raises MarkupError).
    """
    from rich.markup import escape

    one_line = " ".join(str(msg).split("\n")).strip()
    err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, markup=True)
    return typer.Exit(code)


def _symbols(value: str) -> list[str]:
    return [s for s in (x.strip() for x in value.split(",")) if s]


def _settings() -> Any:
    from tickreplay.settings import Settings

    return Settings.load()


def missing_symbols(store: Any, symbols: list[str], start: dt.date, end: dt.date) -> list[str]:
    """The symbols that have no partition dated within ``[start, end]`` in the catalog.

    Why a listing per symbol rather than ``plan_data``: planning hashes every partition, and a
    typo in ``--symbols`` should be reported at once, before any data is read.
    """
    from tickreplay.data.schema import parse_partition_key

    lo, hi = start.isoformat(), end.isoformat()
    missing = []
    for sym in dict.fromkeys(symbols):
        keys = (parse_partition_key(o.key) for o in store.list(f"ticks/symbol={sym}/"))
        if not any(k and k[0] == sym and lo <= k[1] <= hi for k in keys):
            missing.append(sym)
    return missing


def check_symbols(data_url: str, symbols: list[str], start: dt.date, end: dt.date,
                  allow_missing: bool) -> None:
    """Fail naming the requested symbols the catalog has no data for (unless allowed).

    Without this a typo such as ``AAPL,ZZZZ`` silently ran AAPL only.
    """
    from tickreplay.data.store import open_store

    try:
        missing = missing_symbols(open_store(data_url, _settings()), symbols, start, end)
    except Exception as e:  # noqa: BLE001 - any storage failure: report it on one line
        raise _fail(f"cannot list the catalog {data_url}: {type(e).__name__}: {e}", 1) from None
    if not missing:
        return
    span = f"between {start.isoformat()} and {end.isoformat()}"
    if len(missing) == len(set(symbols)):
        raise _fail(f"no partitions in {data_url} for symbols {','.join(missing)} {span}", 1)
    if allow_missing:
        err.print(f"warning: no data for {','.join(missing)} {span}; running without them",
                  highlight=False, markup=False)
        return
    raise _fail(f"no partitions in {data_url} for symbol(s) {','.join(missing)} {span} "
                "(pass --allow-missing to run without them)", 1)


def user_traceback(e: BaseException) -> str:
    """The traceback of the strategy's own exception, without tickreplay's frames."""
    import traceback

    import tickreplay

    cause = e.__cause__ or e
    pkg = Path(tickreplay.__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(pkg)]
    return "".join(["Traceback (most recent call last):\n", *traceback.format_list(frames),
                    *traceback.format_exception_only(cause)])


def _store(url: str) -> Any:
    from tickreplay.data.store import S3Store, open_store

    store = open_store(url, _settings())
    if isinstance(store, S3Store):
        store.ensure_bucket()
    return store


# --------------------------------------------------------------------------------------- data
@data_app.command("generate")
def data_generate(
    out: Annotated[str, typer.Option(help="Catalog URL: a directory, s3://bucket or s3://bucket/prefix")],
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols, e.g. AAPL,MSFT")],
    start: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="First day")],
    end: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day")],
    ticks_per_day: Annotated[int, typer.Option(min=1, help="Trades per symbol per day")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same bytes")] = 0,
    quotes: Annotated[bool, typer.Option(help="Also write bid/ask columns")] = False,
) -> None:
    """Write deterministic synthetic trades as a partitioned Parquet catalog."""
    from tickreplay.data.generate import generate

    try:
        parts = generate(_store(out), _symbols(symbols), start.date(), end.date(),
                         ticks_per_day=ticks_per_day, seed=seed, quotes=quotes)
    except ValueError as e:
        raise _fail(str(e)) from None
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
) -> None:
    """Validate a file of one symbol's ticks and write it into the catalog."""
    from tickreplay.data.errors import DataError
    from tickreplay.data.ingest import ingest

    mapping = {}
    for m in column or []:
        src, sep, dst = m.partition("=")
        if not sep:
            raise _fail(f"--column expects SOURCE=TARGET, got {m!r}")
        mapping[dst.strip()] = src.strip()  # ingest() maps catalog name -> source column
    try:
        parts = ingest(file, symbol, _store(out), ts_col=ts_col, price_col=price_col,
                       size_col=size_col, columns=mapping or None, ts_unit=ts_unit,  # type: ignore[arg-type]
                       tz=tz)
    except (DataError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(f"ingested {file} as {symbol}: {len(parts)} partitions")


@data_app.command("ls")
def data_ls(url: Annotated[str, typer.Argument(help="Catalog URL")],
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the catalog: symbols, days and sizes."""
    from tickreplay.data.catalog import list_partitions

    parts = list_partitions(_store(url))
    if as_json:
        console.print_json(json.dumps(
            [{"symbol": p.symbol, "date": p.date, "key": p.key, "size": p.size} for p in parts]))
        return
    by_sym: dict[str, list[Any]] = {}
    for p in parts:
        by_sym.setdefault(p.symbol, []).append(p)
    table = Table(title=f"{url}: {len(parts)} partitions")
    for col in ("symbol", "days", "first", "last", "MB"):
        table.add_column(col, justify="right" if col in ("days", "MB") else "left")
    for sym, ps in by_sym.items():
        table.add_row(sym, str(len(ps)), ps[0].date, ps[-1].date,
                      f"{sum(p.size for p in ps) / 1e6:.1f}")
    console.print(table)


@data_app.command("query")
def data_query(url: Annotated[str, typer.Argument(help="Catalog URL")],
               sql: Annotated[str, typer.Argument(help="SQL over the view `ticks`")],
               limit: Annotated[int, typer.Option(help="Rows to print")] = 50) -> None:
    """Run DuckDB SQL over the catalog (view `ticks` with columns symbol, date, ts, price, ...)."""
    from tickreplay.data.query import query

    try:
        result = query(url, sql, _settings())
    except Exception as e:  # noqa: BLE001 - DuckDB raises many types; all are user errors
        raise _fail(f"query failed: {e}") from None
    table = Table(show_lines=False)
    for name in result.column_names:
        table.add_column(name)
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    if result.num_rows > limit:
        console.print(f"... {result.num_rows - limit} more rows")


# ---------------------------------------------------------------------------------------- run
def build_config(latency_ms: float, slippage_bps: float, commission: str, initial_cash: float,
                 seed: int, mode: str) -> Any:
    """RunConfig from CLI flags, with errors that name the flag."""
    from pydantic import ValidationError

    from tickreplay.engine.config import Commission, RunConfig
    from tickreplay.spec import format_validation_error

    try:
        comm = Commission.parse(commission)
        return RunConfig(initial_cash=initial_cash, latency_ns=round(latency_ms * 1_000_000),
                         slippage_bps=slippage_bps, commission=comm, seed=seed, mode=mode)  # type: ignore[arg-type]
    except ValidationError as e:
        raise _fail(format_validation_error(e, "invalid run settings")) from None
    except ValueError as e:
        raise _fail(str(e)) from None


def print_metrics(metrics: dict[str, Any], title: str = "metrics") -> None:
    """A two-column table of the metrics."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)


def progress_bar() -> Progress:
    """The rich progress bar used by ``run`` and ``submit --wait``."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    TextColumn("{task.fields[count]}"),
                    TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[simdate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)


@app.command("run")
def run(
    strategy: Annotated[str, typer.Argument(help="Strategy file.py[:Class] or module:Class")],
    data: Annotated[str, typer.Option(help="Catalog URL (directory or s3://bucket)")],
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols")],
    start: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"])],
    end: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"])],
    out: Annotated[Path, typer.Option(help="Result directory")],
    param: Annotated[list[str] | None, typer.Option(help="Strategy parameter k=v (repeatable)")] = None,
    latency_ms: Annotated[float, typer.Option(min=0)] = 0.0,
    slippage_bps: Annotated[float, typer.Option(min=0)] = 0.0,
    commission: Annotated[str, typer.Option(help="none | per_share=X[,min=Y] | bps=X[,min=Y]")] = "none",
    initial_cash: Annotated[float, typer.Option()] = 1_000_000.0,
    seed: Annotated[int, typer.Option(help="Seed of the strategy's rng")] = 0,
    mode: Annotated[str, typer.Option(help="auto | tick | vector")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
    allow_missing: Annotated[bool, typer.Option(
        help="Run even if some symbols have no data in the range")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="On a strategy error, also print its traceback")] = False,
) -> None:
    """Run a backtest locally, in this process, and write its result directory.

    Every failure ends with one line ``error: ...`` on stderr and a non-zero exit code.
    """
    from tickreplay.backtest import run_local
    from tickreplay.data.errors import DataError
    from tickreplay.results import write_results
    from tickreplay.spec import BacktestSpec, SpecError, parse_params
    from tickreplay.strategy.api import StrategyError

    config = build_config(latency_ms, slippage_bps, commission, initial_cash, seed, mode)
    try:
        spec = BacktestSpec.parse({"strategy": strategy, "data_url": data, "symbols": symbols,
                                   "start": start.date(), "end": end.date(),
                                   "params": parse_params(param or []), "config": config})
    except SpecError as e:
        raise _fail(str(e)) from None
    check_symbols(data, list(spec.symbols), spec.start, spec.end, allow_missing)
    bar = None if quiet or as_json else progress_bar()
    task = None

    def on_progress(p: Any) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            task = bar.add_task("backtest", total=p.ticks_total or None, rate="", simdate="",
                                count="")
        day = dt.datetime.fromtimestamp(p.sim_ts / 1e9, tz=dt.UTC).date().isoformat()
        rate = f"{p.ticks_done / p.elapsed_s / 1e6:.2f} M ticks/s" if p.elapsed_s > 0 else ""
        bar.update(task, completed=p.ticks_done, rate=rate, simdate=day,
                   count=f"{p.ticks_done:,}/{p.ticks_total:,} ticks")

    try:
        if bar is not None:
            bar.start()
        try:
            rs = run_local(spec, _settings(), on_progress=on_progress)
        finally:
            if bar is not None:
                bar.stop()
        manifest = write_results(rs, out)
    except StrategyError as e:
        if verbose:
            err.print(user_traceback(e), highlight=False, markup=False)
        hint = "" if verbose else " (--verbose for its traceback)"
        raise _fail(f"strategy failed: {e}{hint}", 1) from None
    except (DataError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e), 1) from None
    except Exception as e:  # noqa: BLE001 - a user-facing command ends in one line, never a trace
        if verbose:
            import traceback

            err.print("".join(traceback.format_exception(e)), highlight=False, markup=False)
        raise _fail(f"{type(e).__name__}: {e}", 1) from None
    if as_json:
        sys.stdout.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return
    print_metrics(rs.metrics)
    console.print(f"results:     {out.resolve()}")
    console.print(f"result hash: [bold]{manifest['result_hash']}[/]")


_registered = False


def _register_subcommands() -> None:
    """Add the job and stack commands once (tests and ``main`` may both ask)."""
    global _registered
    if _registered:
        return
    _registered = True
    from tickreplay import cli_jobs

    cli_jobs.register(app)
    try:
        from tickreplay import cli_stack
    except ImportError:  # pragma: no cover - stack commands not installed
        return
    cli_stack.register(app)


def main() -> None:
    """Entry point of the ``tickreplay`` script."""
    _register_subcommands()
    app()


if __name__ == "__main__":
    main()
