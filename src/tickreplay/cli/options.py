"""Command-line options shared by ``run``, ``submit`` and ``sweep``, each defined once.

Why ``Annotated`` aliases: the three commands must accept the same simulation flags with the
same names, bounds and help; a flag added or changed here changes all of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

StrategyArg = Annotated[str, typer.Argument(help="Strategy file.py[:Class] or module:Class")]
Symbols = Annotated[str, typer.Option(help="Comma-separated symbols")]
Start = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="First day")]
End = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day")]
Params = Annotated[list[str] | None, typer.Option(
    "--param", help="Strategy parameter k=v (repeatable)")]
LatencyMs = Annotated[float, typer.Option(min=0, help="Order latency in milliseconds")]
SlippageBps = Annotated[float, typer.Option(min=0, help="Slippage in basis points")]
Commission = Annotated[str, typer.Option(help="none | per_share=X[,min=Y] | bps=X[,min=Y]")]
InitialCash = Annotated[float, typer.Option(help="Starting cash")]
Seed = Annotated[int, typer.Option(help="Seed of the strategy's rng")]
Mode = Annotated[str, typer.Option(help="auto | tick | vector")]
FillModel = Annotated[str, typer.Option(
    help="trade (fill against trade prints, in full) | quote (market orders at the L1 touch, "
         "up to its size; needs quote data)")]
MaxParticipation = Annotated[float | None, typer.Option(
    help="Fraction (0-1] of each trade's or quote's size an order may take (default: no cap)")]
CancelLatency = Annotated[bool, typer.Option(
    "--cancel-latency", help="Cancels and modifies take the order latency to arrive")]
StallTimeout = Annotated[float, typer.Option(
    min=1, help="Seconds without progress before the strategy is stopped as stuck")]
AllowMissing = Annotated[bool, typer.Option(
    help="Run even if some symbols have no data in the range")]
StackData = Annotated[str | None, typer.Option(
    "--data", help="Catalog URL (default s3://<data bucket>)")]
FixedParams = Annotated[list[str] | None, typer.Option(
    "--param", help="Fixed strategy parameter k=v beside the grid (repeatable)")]
