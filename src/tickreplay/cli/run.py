"""``tickreplay run``: one backtest in this process, written to a result directory."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tickreplay.cli import options as o
from tickreplay.cli.app import (
    app,
    build_config,
    check_symbols,
    console,
    err,
    fail,
    load_settings,
    print_metrics,
    progress_bar,
    user_traceback,
)


@app.command("run")
def run(
    strategy: o.StrategyArg,
    data: Annotated[str, typer.Option(help="Catalog URL (directory or s3://bucket)")],
    symbols: o.Symbols,
    start: o.Start,
    end: o.End,
    out: Annotated[Path, typer.Option(help="Result directory")],
    param: o.Params = None,
    latency_ms: o.LatencyMs = 0.0,
    slippage_bps: o.SlippageBps = 0.0,
    commission: o.Commission = "none",
    initial_cash: o.InitialCash = 1_000_000.0,
    seed: o.Seed = 0,
    mode: o.Mode = "auto",
    fill_model: o.FillModel = "trade",
    max_participation: o.MaxParticipation = None,
    cancel_latency: o.CancelLatency = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar")] = False,
    allow_missing: o.AllowMissing = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="On a strategy error, also print its traceback")] = False,
) -> None:
    """Run a backtest locally, in this process, and write its result directory.

    Every failure ends with one line ``error: ...`` on stderr and a non-zero exit code.
    """
    from tickreplay.data.errors import DataError
    from tickreplay.results import write_results
    from tickreplay.runner.driver import run_local
    from tickreplay.spec import BacktestSpec, SpecError, parse_params
    from tickreplay.strategy.api import StrategyError

    config = build_config(latency_ms, slippage_bps, commission, initial_cash, seed, mode,
                          fill_model, max_participation, cancel_latency)
    try:
        spec = BacktestSpec.parse({"strategy": strategy, "data_url": data, "symbols": symbols,
                                   "start": start.date(), "end": end.date(),
                                   "params": parse_params(param or []), "config": config})
    except SpecError as e:
        raise fail(str(e)) from None
    check_symbols(data, list(spec.symbols), spec.start, spec.end, allow_missing,
                  spec.kinds())
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
            rs = run_local(spec, load_settings(), on_progress=on_progress)
        finally:
            if bar is not None:
                bar.stop()
        manifest = write_results(rs, out)
    except StrategyError as e:
        if verbose:
            err.print(user_traceback(e), highlight=False, markup=False)
        hint = "" if verbose else " (--verbose for its traceback)"
        raise fail(f"strategy failed: {e}{hint}", 1) from None
    except (DataError, ValueError, FileNotFoundError) as e:
        raise fail(str(e), 1) from None
    except Exception as e:  # noqa: BLE001 - a user-facing command ends in one line, never a trace
        if verbose:
            import traceback

            err.print("".join(traceback.format_exception(e)), highlight=False, markup=False)
        raise fail(f"{type(e).__name__}: {e}", 1) from None
    if as_json:
        sys.stdout.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return
    print_metrics(rs.metrics)
    console.print(f"results:     {out.resolve()}")
    console.print(f"result hash: [bold]{manifest['result_hash']}[/]")


