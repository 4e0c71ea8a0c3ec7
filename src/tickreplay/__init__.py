"""tickreplay: reproducible tick-level backtests on Parquet + S3, orchestrated by Temporal.

Public names: :class:`Strategy` (subclass it), :data:`__version__`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# gRPC's fork handlers make a child forked with a preexec_fn (a worker's runner spawns, the
# API's strategy inspection) die of SIGSEGV when the fork meets an RPC in flight
# (grpc/grpc#43055). Every child of ours execs at once, so the handlers buy nothing. They are
# read once, when grpc is first imported (temporalio imports it), so this is set as early as
# any process of ours can: on importing the package. GRPC_FORK_SAFE says whether it was in time.
GRPC_FORK_SAFE = ("grpc" not in sys.modules
                  or os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").lower() in ("0", "false"))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if TYPE_CHECKING:
    from tickreplay.strategy.api import Strategy

__all__ = ["Strategy", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that workflow modules (re-imported inside Temporal's sandbox) can import the
    # package without dragging numpy/pyarrow along.
    if name == "Strategy":
        from tickreplay.strategy.api import Strategy

        return Strategy
    raise AttributeError(name)
