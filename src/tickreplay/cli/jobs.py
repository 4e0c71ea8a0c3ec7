"""``tickreplay submit / status / results / logs / cancel / sweep / jobs``: durable jobs.

Two paths, chosen by configuration: with a job API configured (``settings.api_url`` and
``api_token``: TICKREPLAY_API_URL / TICKREPLAY_API_TOKEN, which ``tickreplay up`` writes into
``stack.env``) every command goes through the Python SDK (:mod:`tickreplay.client`), so the
API's users, limits, idempotency and bookkeeping apply; without one they talk to Temporal and
the object store directly, as before the API existed. Flags and output are the same on both
paths; ``jobs`` (listing the caller's jobs) exists only through the API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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
)
from tickreplay.workflows.types import JobOptions

# The stall timeout of a job that does not choose one (JobOptions' default, and the API's).
DEFAULT_STALL_TIMEOUT = JobOptions.stall_timeout_s


def _stack_settings() -> Any:
    """Settings of the stack the job commands talk to; fails if there is none to talk to.

    Why: without a running stack's ``stack.env`` (written by ``tickreplay up``, removed by
    ``down``) the built-in default address 127.0.0.1:7233 could be ANOTHER stack's Temporal,
    and jobs would silently go there. An address is used only when it was configured: the
    stack.env of TICKREPLAY_HOME, or TICKREPLAY_TEMPORAL_ADDRESS in the environment.
    """
    settings = load_settings()
    if ("TICKREPLAY_TEMPORAL_ADDRESS" not in os.environ
            and not (settings.home / "stack.env").is_file()):
        raise fail(f"no stack is running in {settings.home} (start one with `tickreplay up`, "
                    "point TICKREPLAY_HOME at its state dir, or set TICKREPLAY_TEMPORAL_ADDRESS"
                    " and TICKREPLAY_S3_ENDPOINT)", 1)
    return settings


def _api_client() -> Any:
    """The SDK client of the configured job API, or None when there is none (then the job
    commands go straight to Temporal)."""
    settings = load_settings()
    if not settings.api_url:
        return None
    if not settings.api_token:
        raise fail(f"a job API is configured ({settings.api_url}) but no token: set "
                    "TICKREPLAY_API_TOKEN (`tickreplay users add NAME` prints one)", 1)
    from tickreplay.client import Client

    try:
        return Client.from_settings(settings)
    except ValueError as e:
        raise fail(f"TICKREPLAY_API_URL: {e}") from None


@contextmanager
def _api_errors() -> Iterator[None]:
    """Turn the SDK's ApiError into the one-line CLI error: exit 2 for input the API refused
    as invalid (400, 413, 422), 1 for everything else (unknown job, conflict, API down)."""
    from tickreplay.client import ApiError

    try:
        yield
    except ApiError as e:
        hint = {0: "; is the API running?",
                401: " (check TICKREPLAY_API_TOKEN)"}.get(e.status, "")
        raise fail(f"{e.message}{hint}", 2 if e.status in (400, 413, 422) else 1) from None


def _api_only_defaults(data: str | None) -> None:
    """Refuse ``--data`` the API cannot honour rather than silently run something else.

    The API reads market data from the stack's own catalog (``s3://<data bucket>``); a job
    submitted with another would not be the job asked for.
    """
    settings = load_settings()
    if data is not None and data.rstrip("/") != f"s3://{settings.data_bucket}":
        raise fail(f"--data {data}: the job API ({settings.api_url}) runs on its own catalog "
                    f"s3://{settings.data_bucket}; omit --data, or unset TICKREPLAY_API_URL "
                    "to submit straight to Temporal")


def _execution(latency_ms: float, slippage_bps: float, commission: str, initial_cash: float,
               seed: int, mode: str, allow_missing: bool, stall_timeout: float
               ) -> dict[str, Any]:
    """The simulation flags as the API's body fields (validated by ``build_config`` first)."""
    return {"latency_ms": latency_ms, "slippage_bps": slippage_bps, "commission": commission,
            "initial_cash": initial_cash, "seed": seed, "mode": mode,
            "allow_missing": allow_missing, "stall_timeout_s": stall_timeout}


def _api_status(job: Any) -> dict[str, Any]:
    """An SDK job as the status dict of the direct path (same keys, ``results_url`` = the
    API's ``results_path``, ``sim_ts`` in ns), plus the API's own record fields."""
    p = job.progress
    return {"job_id": job.job_id, "status": job.status, "stage": job.stage,
            "ticks_done": p.ticks_done, "ticks_total": p.ticks_total,
            "sim_ts": round(p.sim_time.timestamp() * 1e9) if p.sim_time else 0,
            "sim_time": p.sim_time.isoformat() if p.sim_time else None,
            "result_hash": job.result_hash, "results_url": job.results_path,
            "error": job.error, "metrics": job.metrics, "user": job.user,
            **{k: job.raw.get(k) for k in ("submitted_at", "started_at", "finished_at")}}


def _spec(strategy: str, data: str | None, symbols: str, start: dt.datetime, end: dt.datetime,
          param: list[str] | None, config: Any) -> Any:
    from tickreplay.spec import BacktestSpec, SpecError, parse_params

    settings = load_settings()
    try:
        return BacktestSpec.parse({
            "strategy": strategy, "data_url": data or f"s3://{settings.data_bucket}",
            "symbols": symbols, "start": start.date(), "end": end.date(),
            "params": parse_params(param or []), "config": config})
    except SpecError as e:
        raise fail(str(e)) from None


def _prepare(spec: Any, job_id: str | None, checkpoint_every: float,
             stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Any:
    from tickreplay.jobs.operations import prepare
    from tickreplay.strategy.api import StrategyError
    from tickreplay.workflows.types import JobOptions

    try:
        return prepare(spec, job_id, JobOptions(checkpoint_every_s=checkpoint_every,
                                                stall_timeout_s=stall_timeout))
    except (StrategyError, ValueError) as e:
        raise fail(str(e)) from None


def _prepare_image(spec: Any, image: str, job_id: str | None, checkpoint_every: float,
                   stall_timeout: float) -> Any:
    from tickreplay.errors import TickreplayError
    from tickreplay.jobs.operations import prepare_image
    from tickreplay.workflows.types import JobOptions

    try:
        return prepare_image(spec, image, job_id, JobOptions(
            checkpoint_every_s=checkpoint_every, stall_timeout_s=stall_timeout))
    except (TickreplayError, ValueError) as e:
        raise fail(str(e)) from None


async def _client() -> Any:
    from tickreplay.jobs.operations import connect

    settings = _stack_settings()
    try:
        return await asyncio.wait_for(connect(settings), 15)
    except Exception as e:  # noqa: BLE001 - any connection failure means the same to the user
        raise fail(f"cannot reach Temporal at {settings.temporal_address} ({e}); "
                    "is the stack up? (`tickreplay up`)") from None


async def _wait(client: Any, job_id: str, show_progress: bool) -> dict[str, Any]:
    """Poll the job's status query until it ends, with a progress bar if asked."""
    from tickreplay.jobs.operations import status

    bar = progress_bar()
    bar.disable = not show_progress
    task = bar.add_task(job_id, total=None, rate="", simdate="", count="")
    with bar:
        while True:
            st = await status(client, job_id)
            _show_progress(bar, task, st)
            if st["status"] not in ("RUNNING", "PENDING"):
                return st
            await asyncio.sleep(0.5)


def _show_progress(bar: Any, task: Any, st: dict[str, Any]) -> None:
    """Move the progress bar to a status dict's ticks, stage and simulated day."""
    if st.get("ticks_total"):
        day = (dt.datetime.fromtimestamp(st["sim_ts"] / 1e9, tz=dt.UTC).date().isoformat()
               if st.get("sim_ts") else "")
        done = st.get("ticks_done", 0)
        bar.update(task, total=st["ticks_total"], completed=done, simdate=day,
                   rate=st.get("stage") or "", count=f"{done:,}/{st['ticks_total']:,} ticks")


def _wait_api(job: Any, show_progress: bool) -> dict[str, Any]:
    """Poll the job through the API until it ends, with the same progress bar."""
    bar = progress_bar()
    bar.disable = not show_progress
    task = bar.add_task(job.job_id, total=None, rate="", simdate="", count="")
    with bar:
        job.wait(poll=0.5, on_progress=lambda j: _show_progress(bar, task, _api_status(j)))
    return _api_status(job)


def _print_status(st: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2, sort_keys=True, default=str) + "\n")
        return
    table = Table(title=f"job {st['job_id']}")
    table.add_column("field")
    table.add_column("value")
    for k in ("status", "stage", "ticks_done", "ticks_total", "placements", "result_hash",
              "results_url", "error"):
        if st.get(k) not in (None, ""):
            table.add_row(k, str(st[k]))
        if k == "ticks_total" and st.get("sim_ts"):
            table.add_row("simulated time", dt.datetime.fromtimestamp(
                st["sim_ts"] / 1e9, tz=dt.UTC).isoformat(timespec="seconds"))
    console.print(table)
    if st.get("metrics"):
        print_metrics(st["metrics"])


async def _describe(client: Any, job_id: str) -> Any:
    """The job's workflow description; a one-line error if Temporal does not know the id."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        return await client.get_workflow_handle(job_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise fail(f"no such job {job_id!r}", 1) from None
        raise fail(f"cannot describe job {job_id!r}: {e}", 1) from None


def _error_line(kind: str, message: str) -> str:
    """``Kind: message``, without repeating the kind the runner already put in the message."""
    return message if message.startswith(f"{kind}:") else f"{kind}: {message}"


def _run(coro: Any) -> None:
    """Run a command's coroutine, then leave without interpreter finalization.

    Tearing down the Temporal client's native runtime during finalization can abort a
    short-lived process after it has done its work (seen: PyGILState_Release fatal error, exit
    -6); output is flushed first, so nothing is lost.
    """
    code = 0
    try:
        asyncio.run(coro)
    except typer.Exit as e:
        code = e.exit_code
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command("submit")
def submit(
    strategy: Annotated[str | None, typer.Argument(
        help="Strategy file.py[:Class] or module:Class (or --image)")] = None,
    *,
    symbols: o.Symbols,
    start: o.Start,
    end: o.End,
    data: o.StackData = None,
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
    job_id: Annotated[str | None, typer.Option(help="Idempotency key: same id, same job")] = None,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds of work between checkpoints")] = 30.0,
    stall_timeout: o.StallTimeout = DEFAULT_STALL_TIMEOUT,
    allow_missing: o.AllowMissing = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait with a progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    image: Annotated[str | None, typer.Option(
        "--image", help="A strategy image (host/repo:tag or @sha256:...) instead of a file: "
                        "its digest is pinned at the job's first step; runs on the podman "
                        "backend")] = None,
) -> None:
    """Submit a durable backtest; prints its job id at once (``--wait`` to follow it).

    The same ``--job-id`` with the same inputs returns the existing job; with different
    inputs it is refused.
    """
    if (strategy is None) == (image is None):
        raise fail("give a strategy file or --image REF (one of them)")
    config = build_config(latency_ms, slippage_bps, commission, initial_cash, seed, mode,
                          fill_model, max_participation, cancel_latency)
    api = _api_client()
    if api is not None:
        _api_only_defaults(data)
        spec = _spec(strategy or str(image), data, symbols, start, end, param, config)
        execution = _execution(latency_ms, slippage_bps, commission, initial_cash, seed, mode,
                               allow_missing, stall_timeout)
        execution.update(fill_model=fill_model, max_participation=max_participation,
                         cancel_latency=cancel_latency)
        if job_id is not None:
            execution["job_id"] = job_id
        if image is not None:
            execution["strategy_image"] = image
        with api, _api_errors():
            _submit_api(api, spec, execution, checkpoint_every, wait, as_json)
        return

    from tickreplay.jobs.operations import JobConflictError
    from tickreplay.jobs.operations import submit as do_submit

    spec = _spec(strategy or str(image), data, symbols, start, end, param, config)
    job = (_prepare(spec, job_id, checkpoint_every, stall_timeout) if image is None
           else _prepare_image(spec, image, job_id, checkpoint_every, stall_timeout))
    settings = _stack_settings()
    check_symbols(spec.data_url, list(spec.symbols), spec.start, spec.end, allow_missing,
                  spec.kinds())

    async def go() -> None:
        client = await _client()
        try:
            await do_submit(client, settings, job)
        except JobConflictError as e:
            raise fail(str(e), 1) from None
        if not _submitted(job.job_id, wait, as_json):
            return
        _finished(await _wait(client, job.job_id, show_progress=not as_json), as_json)

    _run(go())


def _submit_api(api: Any, spec: Any, execution: dict[str, Any], checkpoint_every: float,
                wait: bool, as_json: bool) -> None:
    """``submit`` through the API: upload the strategy file, submit, print, maybe wait."""
    from tickreplay.strategy.api import StrategyError

    try:
        digest = (None if execution.get("strategy_image")
                  else api.upload_strategy(spec.strategy))
    except StrategyError as e:  # the file is missing or unreadable here, before any request
        raise fail(str(e)) from None
    job = api.submit(digest, list(spec.symbols), spec.start, spec.end, spec.params,
                     checkpoint_every_s=checkpoint_every, **execution)
    if _submitted(job.job_id, wait, as_json):
        _finished(_wait_api(job, show_progress=not as_json), as_json)


def _submitted(job_id: str, wait: bool, as_json: bool) -> bool:
    """Print the new job's id (without ``--wait``: the whole output); whether to wait on."""
    if not wait:
        if as_json:
            sys.stdout.write(json.dumps({"job_id": job_id}) + "\n")
        else:
            console.print(job_id)
        return False
    if not as_json:
        err.print(f"submitted {job_id}")
    return True


def _finished(st: dict[str, Any], as_json: bool) -> None:
    """Print the final status; exit 1 unless the job SUCCEEDED."""
    _print_status(st, as_json)
    if st["status"] != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("status")
def status_cmd(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Status and progress of a job (ticks done / total, simulated date, metrics at the end)."""
    api = _api_client()
    if api is not None:
        with api, _api_errors():
            _print_status(_api_status(api.job(job_id)), as_json)
        return

    from tickreplay.jobs.operations import status

    async def go() -> None:
        client = await _client()
        await _describe(client, job_id)
        try:
            st = await status(client, job_id)
        except Exception as e:  # noqa: BLE001
            raise fail(f"cannot read the status of {job_id!r}: {e}", 1) from None
        _print_status(st, as_json)

    _run(go())


@app.command("results")
def results_cmd(job_id: str, out: Annotated[Path, typer.Option(help="Directory")]) -> None:
    """Download a job's published, verified result files."""
    from tickreplay.integrity import IntegrityError
    from tickreplay.results import ResultsError

    api = _api_client()
    try:
        if api is not None:
            with api, _api_errors():
                manifest = _results_api(api, job_id, out)
        else:
            from tickreplay.jobs.operations import download_results

            manifest = download_results(_stack_settings(), job_id, out)
    except (FileNotFoundError, ValueError, ResultsError, IntegrityError) as e:
        raise fail(str(e)) from None
    console.print(f"results:     {out.resolve()}")
    console.print(f"result hash: [bold]{manifest['result_hash']}[/]")


def _results_api(api: Any, job_id: str, out: Path) -> dict[str, Any]:
    """Download through the API: every file checked against the manifest's sha256; where this
    machine holds the platform's signing key (an operator's, next to the stack), the staged
    copy must also pass ``verify_results(key=...)`` (signature, exact file list, recomputed
    hash) before anything lands in ``out``, as on the direct path."""
    from tickreplay.integrity import IntegrityError

    try:
        key: bytes | None = load_settings().platform_key()
    except IntegrityError as e:
        key = None
        err.print(f"note: {e}; files checked against the manifest, its signature not",
                  highlight=False, markup=False)
    return dict(api.download(job_id, out, key=key))


@app.command("logs")
def logs_cmd(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A job's events, its error with traceback, and the strategy's log records."""
    api = _api_client()
    if api is not None:
        with api, _api_errors():
            logs = api.logs(job_id)  # an unknown id: 404, one line
            if not (logs["events"] or logs["error"] or logs["strategy_logs"]):
                status = api.job(job_id).status
                if as_json:
                    sys.stdout.write(json.dumps(logs, indent=2, default=str) + "\n")
                err.print(f"job {job_id} ({status}) has no events yet", highlight=False,
                          markup=False)
                return
        _print_logs(logs, as_json)
        return

    from tickreplay.jobs.operations import job_logs

    settings = _stack_settings()
    try:
        logs = job_logs(settings, job_id)
    except Exception as e:  # noqa: BLE001 - storage failures of any kind: one line
        raise fail(f"cannot read the logs of {job_id!r}: {type(e).__name__}: {e}", 1) from None
    if not (logs["events"] or logs["error"] or logs["strategy_logs"]):
        # Nothing stored: an unknown id (exit 1), or a job that has not started yet. Either
        # way _run ends the process here.
        async def known() -> None:
            desc = await _describe(await _client(), job_id)
            status = desc.status.name if desc.status is not None else "UNKNOWN"
            if as_json:
                sys.stdout.write(json.dumps(logs, indent=2, default=str) + "\n")
            err.print(f"job {job_id} ({status}) has no events yet", highlight=False,
                      markup=False)

        _run(known())
    _print_logs(logs, as_json)


def _print_logs(logs: dict[str, Any], as_json: bool) -> None:
    """Events (time, kind, fields), then the strategy's records; the error on stderr.

    Through the API the document also holds ``db_events`` (the metadata database's status
    moves): shown with ``--json``, left out of the text, which stays the direct path's.
    """
    if as_json:
        sys.stdout.write(json.dumps(logs, indent=2, default=str) + "\n")
        return
    for ev in logs["events"]:
        when = dt.datetime.fromtimestamp(ev.pop("ts"), tz=dt.UTC).strftime("%H:%M:%S")
        kind = ev.pop("kind")
        console.print(f"{when} [bold]{kind}[/] " + " ".join(f"{k}={v}" for k, v in ev.items()),
                      highlight=False)
    for rec in logs["strategy_logs"]:
        console.print(json.dumps(rec, default=str), highlight=False, markup=False)
    if logs["error"]:
        e = logs["error"]
        err.print(_error_line(e["kind"], e["message"]), highlight=False, markup=False)
        if e.get("traceback"):
            err.print(e["traceback"], markup=False, highlight=False)


@app.command("cancel")
def cancel_cmd(job_id: str) -> None:
    """Cancel a job: its runner process is stopped and the job ends CANCELLED."""
    api = _api_client()
    if api is not None:
        with api, _api_errors():  # a finished job: 409 "has already finished", one line
            if job_id.startswith("sweep-"):
                api.cancel_sweep(job_id)
            else:
                api.cancel(job_id)
        console.print(f"cancel requested for {job_id}")
        return

    from temporalio.client import WorkflowExecutionStatus

    from tickreplay.jobs.operations import status_name

    async def go() -> None:
        client = await _client()
        desc = await _describe(client, job_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise fail(f"job {job_id} has already finished ({status_name(desc.status)}); "
                        "nothing to cancel", 1)
        await client.get_workflow_handle(job_id).cancel()
        console.print(f"cancel requested for {job_id}")

    _run(go())


@app.command("sweep")
def sweep_cmd(
    strategy: o.StrategyArg,
    symbols: o.Symbols,
    start: o.Start,
    end: o.End,
    grid: Annotated[list[str], typer.Option(help="name=v1,v2,... (repeatable)")],
    data: o.StackData = None,
    param: o.FixedParams = None,
    metric: Annotated[str, typer.Option(help="Metric to rank by")] = "sharpe",
    minimize: Annotated[bool, typer.Option(help="Rank ascending")] = False,
    max_concurrent: Annotated[int, typer.Option(min=1)] = 4,
    latency_ms: o.LatencyMs = 0.0,
    slippage_bps: o.SlippageBps = 0.0,
    commission: o.Commission = "none",
    initial_cash: o.InitialCash = 1_000_000.0,
    seed: o.Seed = 0,
    mode: o.Mode = "auto",
    fill_model: o.FillModel = "trade",
    max_participation: o.MaxParticipation = None,
    cancel_latency: o.CancelLatency = False,
    stall_timeout: o.StallTimeout = DEFAULT_STALL_TIMEOUT,
    allow_missing: o.AllowMissing = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run a parameter grid as child backtests and print them ranked by a metric."""
    axes: dict[str, list[str]] = {}
    for g in grid:
        name, sep, values = g.partition("=")
        if not sep or not values:
            raise fail(f"--grid expects name=v1,v2,..., got {g!r}")
        axes[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    config = build_config(latency_ms, slippage_bps, commission, initial_cash, seed, mode,
                          fill_model, max_participation, cancel_latency)
    api = _api_client()
    if api is not None:
        _api_only_defaults(data)
        spec = _spec(strategy, data, symbols, start, end, param, config)
        execution = _execution(latency_ms, slippage_bps, commission, initial_cash, seed, mode,
                               allow_missing, stall_timeout)
        execution.update(fill_model=fill_model, max_participation=max_participation,
                         cancel_latency=cancel_latency)
        with api, _api_errors():
            _sweep_api(api, spec, axes, execution, max_concurrent, metric, minimize, as_json)
        return

    from tickreplay.jobs.operations import new_job_id, submit_sweep
    from tickreplay.workflows.types import SweepInput, grid_points

    spec = _spec(strategy, data, symbols, start, end, param, config)
    base = _prepare(spec, None, 30.0, stall_timeout)
    _stack_settings()  # no stack: fail now, before listing the catalog
    check_symbols(spec.data_url, list(spec.symbols), spec.start, spec.end, allow_missing,
                  spec.kinds())
    from tickreplay.strategy.loader import bundle_from_spec, load_strategy

    bundle = bundle_from_spec(strategy)
    typed: dict[str, list[Any]] = {k: [] for k in axes}
    for k, values in axes.items():
        for v in values:  # validate every grid value against Params before starting anything
            try:
                params = load_strategy(bundle, {**base.spec["params"], k: v})[0].params
            except Exception as e:  # noqa: BLE001
                raise fail(str(e)) from None
            typed[k].append(getattr(params, k))
    sweep = SweepInput(new_job_id("sweep"), base, typed, max_concurrent, metric, not minimize)

    async def go() -> None:
        client = await _client()
        handle = await submit_sweep(client, load_settings(), sweep)
        err.print(f"sweep {sweep.sweep_id}: {len(grid_points(typed))} backtests, "
                  f"at most {max_concurrent} at a time")
        result = await handle.result()
        _print_sweep(sweep.sweep_id, metric, list(typed), result.rows, as_json)

    _run(go())


def _sweep_api(api: Any, spec: Any, axes: dict[str, list[str]], execution: dict[str, Any],
               max_concurrent: int, metric: str, minimize: bool, as_json: bool) -> None:
    """``sweep`` through the API: upload, submit the grid (every value is checked against the
    strategy's Params on the server: 422 naming it), wait, print the ranked rows."""
    from tickreplay.strategy.api import StrategyError

    try:
        digest = api.upload_strategy(spec.strategy)
    except StrategyError as e:
        raise fail(str(e)) from None
    sweep = api.sweep(digest, list(spec.symbols), spec.start, spec.end, axes, spec.params,
                      max_concurrent=max_concurrent, metric=metric, minimize=minimize,
                      **execution)
    err.print(f"sweep {sweep.sweep_id}: {len(sweep.jobs)} backtests, "
              f"at most {max_concurrent} at a time")
    sweep.wait(poll=1.0)
    if sweep.status != "SUCCEEDED":
        raise fail(f"sweep {sweep.sweep_id} ended {sweep.status}", 1)
    _print_sweep(sweep.sweep_id, metric, list(axes), sweep.rows, as_json)


def _print_sweep(sweep_id: str, metric: str, keys: list[str], rows: list[dict[str, Any]],
                 as_json: bool) -> None:
    """The ranked rows as JSON, or as a table: rank, the grid's params, metric, status, job."""
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(title=f"sweep {sweep_id} ranked by {metric}")
    for col in ("rank", *keys, metric, "status", "job_id"):
        table.add_column(col)
    for row in rows:
        value = row.get("value")
        table.add_row(str(row["rank"]), *(str(row["params"][k]) for k in keys),
                      f"{value:.6g}" if isinstance(value, float) else str(value),
                      row["status"], row["job_id"])
    console.print(table)


@app.command("jobs")
def jobs_cmd(
    status: Annotated[str | None, typer.Option(
        help="Only jobs in this status: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Your jobs (an admin's: everyone's), oldest first, through the job API."""
    api = _api_client()
    if api is None:
        raise fail("`tickreplay jobs` lists jobs through the job API, and none is configured: "
                    "set TICKREPLAY_API_URL and TICKREPLAY_API_TOKEN (`tickreplay up` writes "
                    "them into the stack's stack.env)", 1)
    with api, _api_errors():
        jobs = list(api.jobs(status.upper() if status else None, limit=limit))
    if as_json:
        sys.stdout.write(json.dumps([j.raw for j in jobs], indent=2, default=str) + "\n")
        return
    table = Table(title=f"{len(jobs)} jobs" + (f" {status.upper()}" if status else ""))
    # The id is what the other commands take: never cut, whatever the terminal's width.
    # The id is what the other commands take: never cut, whatever the terminal's width; the
    # symbols give way first (every field is in --json).
    table.add_column("job_id", no_wrap=True, min_width=max((len(j.job_id) for j in jobs),
                                                          default=6))
    for col in ("status", "submitted", "result_hash"):
        table.add_column(col, no_wrap=True)
    table.add_column("symbols", overflow="fold")
    for j in jobs:
        submitted = j.submitted_at.strftime("%Y-%m-%d %H:%M") if j.submitted_at else ""
        table.add_row(j.job_id, j.status, submitted, j.result_hash[:12], ",".join(j.symbols))
    console.print(table)


@app.command("gc")
def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete checkpoints and staged results of finished jobs; running jobs and results stay."""
    from tickreplay.data.objectstore import S3Store
    from tickreplay.jobs.gc import collect

    settings = _stack_settings()

    async def go() -> None:
        client = await _client()
        artifacts = S3Store(settings.artifacts_bucket, settings=settings)
        try:
            report = await collect(artifacts, client, dry_run=dry_run)
        except Exception as e:  # noqa: BLE001 - storage failures of any kind: one line
            raise fail(f"gc failed: {type(e).__name__}: {e}", 1) from None
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
            return
        verb = "would remove" if dry_run else "removed"
        for job, stats in sorted(report.cleaned.items()):
            console.print(f"{verb} {stats.objects} objects ({stats.bytes / 1e6:.1f} MB) of "
                          f"{job}", highlight=False)
        for job, why in sorted(report.skipped.items()):
            err.print(f"skipped {job}: {why}", highlight=False, markup=False)
        total = report.total
        console.print(f"{verb} {total.objects} objects ({total.bytes / 1e6:.1f} MB) of "
                      f"{len(report.cleaned)} finished jobs; kept {len(report.running)} "
                      "running", highlight=False)

    _run(go())
