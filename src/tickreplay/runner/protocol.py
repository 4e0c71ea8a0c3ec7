"""The worker <-> runner protocol: one job down, typed messages up, JSON lines on a socketpair.

Why typed: the runner is hostile territory (it executes user code), and its messages were read
by key in several places, so a missing or mistyped field surfaced as a ``KeyError`` deep in the
activity. Every line is now validated into one of the models below by :func:`decode`; a line
that is not a valid message is dropped (and counted by the caller), never half-trusted.

The job itself (:class:`RunnerJob`) is everything the runner may read: local paths only (the
data, the checkpoint), no credentials, no key. The child, the pool and the activity import
these models; the workflow never sees them (its contract is in ``workflows/types.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# The one line the worker sends after the job: "finish with a final checkpoint, then exit".
STOP = "stop"


class _Message(BaseModel):
    # NaN metrics (e.g. a Sharpe of a flat curve) must arrive as NaN, not as null.
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")


class RunnerJob(_Message):
    """One run, as the runner receives it (the first line on its channel)."""

    job_id: str
    workdir: str
    spec: dict[str, Any]
    bundle: str  # the bundle's canonical JSON; "" for an image job (its strategy is inside)
    strategy_digest: str
    strategy_image: str = ""  # host/repo@sha256:... the runner is a pod of
    plan: dict[str, Any]
    paths: dict[str, str]
    ticks_total: int = 0
    checkpoint_every_s: float
    checkpoint_file: str | None = None
    resumed_from: int = 0
    memory_mb: int = 0  # RLIMIT_AS (0: none)
    file_mb: int = 0  # RLIMIT_FSIZE (0: none)
    open_files: int = 0  # RLIMIT_NOFILE (0: the inherited one)


class Started(_Message):
    """The run began (after restoring ``resumed_from`` ticks from the checkpoint, if any)."""

    type: Literal["started"] = "started"
    resumed_from: int
    pid: int


class Progress(_Message):
    """Where the run is, sent every second whatever the strategy does (a stall detector)."""

    type: Literal["progress"] = "progress"
    tick: int = 0
    ticks_done: int = 0
    sim_ts: int = 0
    symbol: str | None = None
    phase: str | None = None


class Checkpoint(_Message):
    """A checkpoint file ``ckpt-<ticks>.bin`` is complete in the runner's work dir."""

    type: Literal["checkpoint"] = "checkpoint"
    path: str
    ticks_done: int


class Warning(_Message):
    """Something the job's events should show (e.g. a checkpoint that could not be restored)."""

    type: Literal["warning"] = "warning"
    message: str


class Stopped(_Message):
    """The run stopped on request (worker shutdown) after its final checkpoint."""

    type: Literal["stopped"] = "stopped"
    message: str = ""


class Done(_Message):
    """The result directory is written; the worker verifies it before believing any of this."""

    type: Literal["done"] = "done"
    result_dir: str
    result_hash: str
    metrics: dict[str, Any]
    ticks: int
    resumed_from_ticks: int


class Failed(_Message):
    """The run failed; ``kind`` is an error code of :mod:`tickreplay.errors`."""

    type: Literal["error"] = "error"
    kind: str
    retryable: bool = False
    message: str
    traceback: str = ""


Message = Annotated[Started | Progress | Checkpoint | Warning | Stopped | Done | Failed,
                    Field(discriminator="type")]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def encode(msg: _Message) -> bytes:
    """One JSON line."""
    return msg.model_dump_json().encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """The message on ``line``, or None if it is not a valid message."""
    try:
        return _MESSAGE.validate_json(line)
    except ValidationError:
        return None
