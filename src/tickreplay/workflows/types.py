"""Inputs and outputs of workflows and activities: plain dataclasses, importable in the sandbox.

One dataclass in, one out, per activity, so fields can be added without breaking running
workflows (new fields get defaults). Only object keys and small dicts travel through Temporal;
data, checkpoints and results live in the object store (payloads are capped at 2 MB).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from typing import Any

from tickreplay.errors import non_retryable_codes

# Error codes the workflows match on are the ``code`` of the classes in tickreplay.errors; the
# non-retryable list of every retry policy is derived from those classes, never kept by hand.
NON_RETRYABLE = non_retryable_codes()


@dataclass
class JobOptions:
    """Operational knobs of one job (not part of the result hash)."""

    checkpoint_every_s: float = 30.0
    # A killed worker is noticed within this (runs heartbeat every second): recovery < 20 s.
    heartbeat_timeout_s: float = 10.0
    schedule_to_start_s: float = 60.0
    max_run_s: float = 7 * 24 * 3600.0
    stall_timeout_s: float = 600.0
    # Wall-clock budget of one run attempt: a strategy still working after it is stopped and
    # the job fails as a timeout (not retried), before Temporal's own start-to-close would.
    deadline_s: float = 24 * 3600.0
    max_placements: int = 50
    # Failures of a run that are neither a lost node nor the job's own fault (storage gone
    # for longer than the in-activity outage budget, a runner crash) are retried with
    # capped backoff for this long without progress before the job fails.
    retry_budget_s: float = 2 * 3600.0
    # While only unhealthy nodes answer (read-only or full cache), how long to look for a
    # healthy one before the job fails naming each node and its reason.
    find_node_s: float = 90.0


@dataclass
class JobInput:
    """A submitted backtest: the validated spec (JSON form) and the strategy's sources."""

    job_id: str
    spec: dict[str, Any]
    bundle: dict[str, Any]
    options: JobOptions = field(default_factory=JobOptions)
    # Submitted through the job API: a row in the metadata database whose status the
    # workflow's activities keep (admission under the per-user limit first). Jobs started
    # straight on Temporal (no API configured) are not tracked and start at once.
    tracked: bool = False
    user: str = ""
    strategy_digest: str = ""  # the API's bundle digest (a search attribute of tracked jobs)
    # A strategy image (``host/repo:tag`` or ``@sha256:``) instead of a bundle: resolved to its
    # digest by resolve_strategy; runs on the podman (or Kubernetes) runner backend.
    strategy_image: str = ""


@dataclass
class AdmitInput:
    job_id: str


@dataclass
class RecordInput:
    """A job's status as the workflow has it, for the metadata database."""

    job_id: str
    status: str
    error: str = ""
    result_hash: str = ""
    results_path: str = ""
    data_fingerprint: str = ""
    metrics: dict[str, Any] | None = None
    image_digest: str = ""  # a strategy image job: the pinned reference that ran


@dataclass
class SweepRecordInput:
    sweep_id: str
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResolveInput:
    job_id: str
    bundle: dict[str, Any]
    image: str = ""  # a strategy image reference (then ``bundle`` is empty)


@dataclass
class StrategyRef:
    digest: str  # the bundle's sha256, or the image manifest's ``sha256:...``
    key: str  # the bundle object ("" for an image)
    image: str = ""  # ``host/repo@sha256:...``: what every attempt runs


@dataclass
class PlanInput:
    job_id: str
    spec: dict[str, Any]


@dataclass
class PlanRef:
    key: str
    fingerprint: str
    partitions: int


@dataclass
class WarmInput:
    job_id: str
    plan_key: str
    avoid_nodes: list[str] = field(default_factory=list)  # found unhealthy for this job


@dataclass
class WarmResult:
    task_queue: str
    node: str
    ticks_total: int


@dataclass
class RunInput:
    job_id: str
    spec: dict[str, Any]
    strategy: StrategyRef
    plan: PlanRef
    ticks_total: int
    options: JobOptions
    resume: RunHeartbeat | None = None  # where to resume (from a lost attempt's heartbeat)
    user: str = ""  # who submitted it (a label of its runner Job on Kubernetes)
    # The how-manieth placement of this run (RUN_RETRY allows one attempt per placement, so
    # the activity's own attempt is always 1): names and labels each runner Job uniquely.
    placement: int = 1


@dataclass
class TickAt:
    """The tick a run was last seen at (reported when a strategy stalls)."""

    tick: int = 0
    ts: int = 0
    symbol: str | None = None
    phase: str | None = None


@dataclass
class RunHeartbeat:
    """The details of every ``run_backtest`` heartbeat (and of its retryable failures).

    Read by the next attempt (resume from ``checkpoint_key``), by the workflow (re-placement
    from the lost attempt's last heartbeat) and by ``tickreplay status`` (fresher progress than
    the workflow's). ``checkpoint_key`` is only ever set to a checkpoint already stored.
    """

    checkpoint_key: str | None = None
    ticks_done: int = 0  # ticks covered by checkpoint_key
    progress: int = 0  # ticks processed by the running attempt
    ticks_total: int = 0
    sim_ts: int = 0
    node: str = ""
    at: TickAt | None = None

    @classmethod
    def resume_point(cls, details: Any, current: RunHeartbeat | None) -> RunHeartbeat | None:
        """Where to resume: the heartbeat in ``details`` if it names a stored checkpoint, else
        ``current`` (a heartbeat from before the first checkpoint must not reset the resume)."""
        beat = cls.from_details(details)
        return beat if beat is not None and beat.checkpoint_key else current

    @classmethod
    def from_details(cls, details: Any) -> RunHeartbeat | None:
        """The heartbeat in a list of Temporal details (decoded untyped, as a dict), if any.

        Unknown keys are ignored and missing ones take their defaults, so details written by
        an older worker (or without ``at``) still read.
        """
        first = (list(details or []) or [None])[0]
        if isinstance(first, cls):
            return first
        if not isinstance(first, dict):
            return None
        known = {f.name for f in fields(cls)} - {"at"}
        hb = cls(**{k: v for k, v in first.items() if k in known})
        if isinstance(first.get("at"), dict):
            hb.at = TickAt(**{k: v for k, v in first["at"].items()
                              if k in {f.name for f in fields(TickAt)}})
        return hb


@dataclass
class RunOutput:
    staging_prefix: str
    result_hash: str
    metrics: dict[str, Any]
    ticks: int
    resumed_from_ticks: int


@dataclass
class PublishInput:
    job_id: str
    staging_prefix: str
    result_hash: str


@dataclass
class PublishOutput:
    results_url: str
    result_hash: str


@dataclass
class Progress:
    ticks_done: int = 0
    ticks_total: int = 0
    sim_ts: int = 0


@dataclass
class JobResult:
    job_id: str
    status: str
    result_hash: str
    results_url: str
    metrics: dict[str, Any]
    strategy_digest: str = ""
    data_fingerprint: str = ""
    placements: int = 1


@dataclass
class SweepInput:
    """A grid of parameters run as child backtests, at most ``max_concurrent`` at a time."""

    sweep_id: str
    base: JobInput
    grid: dict[str, list[Any]]
    max_concurrent: int = 4
    metric: str = "sharpe"
    maximize: bool = True


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a sweep's grid, in the one order the workflow numbers them."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep_job_id(sweep_id: str, i: int) -> str:
    """The job id of a sweep's ``i``-th grid point (the API records it before the workflow
    starts it, so both must name it alike)."""
    return f"{sweep_id}-p{i:03d}"


@dataclass
class SweepResult:
    sweep_id: str
    metric: str
    rows: list[dict[str, Any]]
