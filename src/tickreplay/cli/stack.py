"""``tickreplay up / down / ps``: the embedded stack from the command line.

Registered on the ``tickreplay`` app at import, like every command group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tickreplay.cli.app import app, console, err
from tickreplay.settings import Settings

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State dir of the stack [default: TICKREPLAY_HOME or ~/.tickreplay]"),
]


def _state_dir(value: Path | None) -> Path:
    return value if value is not None else Settings.load().home


@app.command("up")
def up_command(
    state_dir: StateDir = None,
    temporal_port: Annotated[int | None, typer.Option(
        help="Temporal gRPC port [default: the running one, else 7233]")] = None,
    ui_port: Annotated[int | None, typer.Option(
        help="Temporal Web UI port [default: the running one, else 8233]")] = None,
    s3_port: Annotated[int | None, typer.Option(
        help="SeaweedFS S3 port [default: the running one, else 8333]")] = None,
    api_port: Annotated[int | None, typer.Option(
        help="Job API REST port [default: the running one, else 8000]")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        help="Job API gRPC port [default: the running one, else 50051]")] = None,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Run the job API")] = True,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes to run")] = 1,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for health")] = 90.0,
) -> None:
    """Start the Temporal dev server, SeaweedFS, the job API and workers; return when all
    are healthy. Migrates the metadata database and writes the API URL and the local user's
    token into stack.env, so the job commands go through the API."""
    from tickreplay.stack.control import StackError, up

    try:
        info = up(_state_dir(state_dir), temporal_port=temporal_port, ui_port=ui_port,
                  s3_port=s3_port, api_port=api_port, grpc_port=grpc_port, workers=workers,
                  api=api, timeout=timeout)
    except StackError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    if info.started:
        console.print(f"started: {', '.join(info.started)}")
    else:
        console.print("already up")
    for warning in info.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"Temporal UI: {info.ui_url}")
    console.print(f"Temporal:    {info.temporal_address}")
    console.print(f"S3 endpoint: {info.s3_endpoint}")
    if info.api_url:
        console.print(f"job API:     {info.api_url}  (gRPC {info.grpc_address})")
    console.print(f"state:       {info.state_dir}  (settings in {info.state_dir / 'stack.env'})")
    if Path(info.state_dir).resolve() != Settings.load().home.resolve():
        # other commands find the stack through TICKREPLAY_HOME (default ~/.tickreplay)
        console.print(f"for other commands: export TICKREPLAY_HOME={info.state_dir}")


@app.command("down")
def down_command(
    state_dir: StateDir = None,
    worker_grace: Annotated[float, typer.Option(
        min=0, help="Seconds workers get to checkpoint before SIGKILL")] = 60.0,
    service_grace: Annotated[float, typer.Option(
        min=0, help="Seconds Temporal and SeaweedFS get to stop cleanly (SeaweedFS needs ~15 s "
                    "to flush; 0 for throwaway data)")] = 30.0,
) -> None:
    """Stop exactly the processes `tickreplay up` started (per their PID files); data stays."""
    from tickreplay.stack.control import StackError, down

    try:
        stopped = down(_state_dir(state_dir), worker_grace=worker_grace,
                       service_grace=service_grace)
    except StackError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command("ps")
def ps_command(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON")] = False,
) -> None:
    """Show the stack's processes: pid, alive, endpoint, log file."""
    from tickreplay.stack.control import status

    info = status(_state_dir(state_dir))
    if as_json:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
        return
    if not info.parts:
        console.print(f"nothing recorded in {info.state_dir}; start it with `tickreplay up`")
        return
    table = Table(title=f"stack in {info.state_dir}")
    for column in ("part", "pid", "state", "endpoint", "log"):
        table.add_column(column)
    for part in info.parts:
        table.add_row(part.name, str(part.pid),
                      "[green]running[/]" if part.alive else "[red]gone[/]",
                      part.endpoint or "", str(part.log or ""))
    console.print(table)
    if info.ui_url:
        console.print(f"Temporal UI: {info.ui_url}")

