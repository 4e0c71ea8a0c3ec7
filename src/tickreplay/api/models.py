"""Request and response bodies of the job API (REST; the gRPC messages mirror them).

Why pydantic models with ``extra="forbid"``: a misspelt field (``symbol`` for ``symbols``) must
be a 422 naming it, not silently ignored; and the OpenAPI document is generated from these.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tickreplay.engine.config import Commission

DIGEST = r"^[0-9a-f]{64}$"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
MAX_SYMBOLS = 500


class StrategyBundleIn(BaseModel):
    """A strategy's sources: relative path -> text, the entry file, and optionally the class."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    files: dict[str, str] = Field(min_length=1, max_length=64)
    entry: str = Field(min_length=1, max_length=200)
    class_name: str | None = Field(None, alias="class", max_length=200)

    @model_validator(mode="after")
    def _entry_is_a_file(self) -> StrategyBundleIn:
        for name in self.files:
            if name.startswith(("/", ".")) or ".." in name.split("/") or "\\" in name:
                raise ValueError(f"files: bad file name {name!r}")
        if self.entry not in self.files:
            raise ValueError(f"entry: {self.entry!r} is not one of the files")
        return self


class StrategyOut(BaseModel):
    digest: str = Field(description="What `strategy` of a job names: sha256 of the bundle")
    source_digest: str = Field(description="sha256 of the source files alone")
    entry: str
    class_name: str | None = Field(None, alias="class")
    params_schema: dict[str, Any] = Field(description="JSON schema of the strategy's Params")


class ExecutionSettings(BaseModel):
    """How the simulation fills and charges (part of the result's inputs)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0, le=3_600_000)
    slippage_bps: float = Field(0.0, ge=0, le=10_000)
    commission: Commission | str = Field(
        "none", description="{per_share, bps, minimum} or 'per_share=0.005,min=1' / 'bps=1'")
    initial_cash: float = Field(1_000_000.0, gt=0, le=1e15)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    mode: Literal["auto", "tick", "vector"] = "auto"
    fill_model: Literal["trade", "quote"] = Field(
        "trade", description="trade: against trade prints, in full; quote: market orders at "
                             "the L1 touch up to its size (needs quote data)")
    max_participation: float | None = Field(
        None, gt=0, le=1, description="Fraction of each trade's or quote's size an order may "
                                      "take (none: no cap)")
    cancel_latency: bool = Field(False, description="Cancels and modifies take the latency")
    events: list[Literal["trades", "quotes"]] | None = Field(
        None, min_length=1, description="Data kinds to plan (default: trades, and quotes "
                                        "under the quote fill model)")

    @field_validator("commission")
    @classmethod
    def _commission(cls, v: Commission | str) -> Commission:
        return Commission.parse(v) if isinstance(v, str) else v


class JobRequest(ExecutionSettings):
    """Body of ``POST /v1/jobs``."""

    strategy: str | None = Field(None, pattern=DIGEST,
                                 description="A digest from POST /v1/strategies")
    strategy_image: str | None = Field(
        None, min_length=3, max_length=400,
        description="Or a strategy image, e.g. registry:5000/repo/strategy:v1.2 or "
                    "...@sha256:<digest>: resolved to its digest by the job's first step "
                    "(the digest then runs on every attempt); needs the podman backend")
    symbols: list[str] = Field(min_length=1, max_length=MAX_SYMBOLS)
    start_date: dt.date
    end_date: dt.date
    params: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = Field(None, pattern=JOB_ID, description="Choose the job id yourself")
    checkpoint_every_s: float = Field(30.0, ge=0.1, le=86_400)
    stall_timeout_s: float = Field(600.0, ge=1, le=7 * 86_400,
                                   description="Fail a run whose strategy stops making progress")
    deadline_s: float = Field(86_400.0, ge=1, le=6 * 86_400,
                              description="Wall-clock budget of a run attempt (a timeout)")
    allow_missing: bool = Field(False, description="Run without symbols that have no data")

    @model_validator(mode="after")
    def _dates(self) -> JobRequest:
        if self.end_date < self.start_date:
            raise ValueError(f"end_date: {self.end_date} is before start_date {self.start_date}")
        if (self.strategy is None) == (self.strategy_image is None):
            raise ValueError("strategy: give a strategy digest or a strategy_image, one of them")
        if self.strategy_image is not None:
            from tickreplay.errors import ImageError
            from tickreplay.runner.registry import ImageRef

            try:
                ImageRef.parse(self.strategy_image)
            except ImageError as e:
                raise ValueError(f"strategy_image: {e}") from None
        return self


class SweepRequest(JobRequest):
    """Body of ``POST /v1/sweeps``: a job whose ``grid`` params take every combination."""

    grid: dict[str, list[Any]] = Field(min_length=1)
    max_concurrent: int = Field(4, ge=1, le=200)
    metric: str = Field("sharpe", min_length=1, max_length=64)
    minimize: bool = False


class Accepted(BaseModel):
    job_id: str
    status: str


class SweepAccepted(BaseModel):
    sweep_id: str
    jobs: list[str]


class JobOut(BaseModel):
    """A job as its owner (or an admin) sees it."""

    job_id: str
    user: str | None = None
    status: str
    stage: str | None = None
    placements: int | None = Field(None, description="Nodes the run was placed on so far")
    progress: dict[str, Any] = Field(default_factory=dict,
                                     description="ticks_done, ticks_total, sim_time")
    strategy_digest: str
    image_digest: str = ""
    data_fingerprint: str = ""
    symbols: list[str]
    start_date: dt.date
    end_date: dt.date
    params: dict[str, Any]
    spec: dict[str, Any]
    submitted_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    results_path: str = ""
    result_hash: str = ""
    metrics: dict[str, Any] | None = None
    error: str = ""
    idempotency_key: str | None = None
    sweep_id: str | None = None
    links: dict[str, str] = Field(default_factory=dict)


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class SweepOut(BaseModel):
    sweep_id: str
    status: str
    spec: dict[str, Any]
    submitted_at: dt.datetime
    finished_at: dt.datetime | None = None
    result: dict[str, Any] | None = None
    jobs: list[dict[str, Any]]
