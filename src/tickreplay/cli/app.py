"""What every command group shares: the Typer app, the consoles, one-line errors, settings,
the catalog check of ``--symbols``, the progress bar and the metrics table.

The command groups (``data``, ``run``, ``jobs``, ``stack``) register themselves on ``app`` when
``tickreplay.cli`` imports them; nothing here imports a command group.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reproducible tick-level backtests on Parquet + S3.")
console = Console(soft_wrap=True)  # a path or id printed is never broken across lines
err = Console(stderr=True, soft_wrap=True)


def fail(msg: str, code: int = 2) -> typer.Exit:
    """Print ``error: <msg>`` as one line on stderr and return the Exit to raise.

    The message is escaped: error texts quote user input and paths, and a ``[/x]`` in them
    must print as it is, not be parsed as rich markup (which raises MarkupError).
    """
    from rich.markup import escape

    one_line = " ".join(str(msg).split("\n")).strip()
    err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, markup=True)
    return typer.Exit(code)


def split_symbols(value: str) -> list[str]:
    return [s for s in (x.strip() for x in value.split(",")) if s]


def load_settings() -> Any:
    from tickreplay.settings import Settings

    return Settings.load()


def missing_symbols(store: Any, symbols: list[str], start: dt.date, end: dt.date,
                    events: tuple[str, ...] = ("trades",)) -> list[str]:
    """The symbols without a partition of ``events`` in ``[start, end]`` (see
    :func:`data.catalog.missing_symbols`)."""
    from tickreplay.data.catalog import missing_symbols as missing

    return missing(store, symbols, start, end, events=events)


def check_symbols(data_url: str, symbols: list[str], start: dt.date, end: dt.date,
                  allow_missing: bool, events: tuple[str, ...] = ("trades",)) -> None:
    """Fail naming the requested symbols the catalog has no data for (unless allowed).

    Without this a typo such as ``AAPL,ZZZZ`` silently ran AAPL only.
    """
    from tickreplay.data.objectstore import open_store

    try:
        store = open_store(data_url, load_settings())
        missing = missing_symbols(store, symbols, start, end, events=events)
        quoted = [] if not missing or "quotes" in events else sorted(
            set(missing) - set(missing_symbols(store, missing, start, end, events=("quotes",))))
    except Exception as e:  # noqa: BLE001 - any storage failure: report it on one line
        raise fail(f"cannot list the catalog {data_url}: {type(e).__name__}: {e}", 1) from None
    if not missing:
        return
    span = f"between {start.isoformat()} and {end.isoformat()}"
    hint = (f" ({','.join(quoted)}: quotes only there; a run over quotes needs "
            "--fill-model quote)") if quoted else ""
    if len(missing) == len(set(symbols)):
        raise fail(f"no partitions in {data_url} for symbols {','.join(missing)} {span}{hint}",
                   1)
    if allow_missing:
        err.print(f"warning: no data for {','.join(missing)} {span}; running without them",
                  highlight=False, markup=False)
        return
    raise fail(f"no partitions in {data_url} for symbol(s) {','.join(missing)} {span} "
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


def open_catalog(url: str) -> Any:
    from tickreplay.data.objectstore import S3Store, open_store

    store = open_store(url, load_settings())
    if isinstance(store, S3Store):
        store.ensure_bucket()
    return store


def build_config(latency_ms: float, slippage_bps: float, commission: str, initial_cash: float,
                 seed: int, mode: str, fill_model: str = "trade",
                 max_participation: float | None = None, cancel_latency: bool = False) -> Any:
    """RunConfig from CLI flags, with errors that name the flag."""
    from pydantic import ValidationError

    from tickreplay.engine.config import Commission, RunConfig
    from tickreplay.spec import format_validation_error

    try:
        comm = Commission.parse(commission)
        return RunConfig(initial_cash=initial_cash, latency_ns=round(latency_ms * 1_000_000),
                         slippage_bps=slippage_bps, commission=comm, seed=seed, mode=mode,  # type: ignore[arg-type]
                         fill_model=fill_model, max_participation=max_participation,  # type: ignore[arg-type]
                         cancel_latency=cancel_latency)
    except ValidationError as e:
        raise fail(format_validation_error(e, "invalid run settings")) from None
    except ValueError as e:
        raise fail(str(e)) from None


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
