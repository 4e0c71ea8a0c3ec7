"""ORM mapping of the metadata database (the schema itself is made by the migrations).

Why JSON columns for spec, params, symbols and metrics: they are read whole, by the API and the
CLI, never queried inside; a column per field would need a migration per new setting.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Job states; transitions are checked in store.py (PENDING -> RUNNING -> one terminal state).
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # RUNNING jobs this user may have at once; None: the platform's default.
    max_running: Mapped[int | None] = mapped_column(Integer)


class ApiToken(Base):
    """A bearer token of a user; only its sha256 is stored (a database leak leaks no token)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_user_submitted", "user_id", "submitted_at", "job_id"),
                      Index("ix_jobs_status", "status"),
                      Index("ux_jobs_user_idempotency", "user_id", "idempotency_key", unique=True),
                      Index("ix_jobs_sweep", "sweep_id"))

    job_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16))
    strategy_digest: Mapped[str] = mapped_column(String(64))
    image_digest: Mapped[str] = mapped_column(String(200), default="")
    data_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    symbols: Mapped[list[str]] = mapped_column(JSON)
    start_date: Mapped[dt.date] = mapped_column(Date)
    end_date: Mapped[dt.date] = mapped_column(Date)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    results_path: Mapped[str] = mapped_column(Text, default="")
    result_hash: Mapped[str] = mapped_column(String(64), default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")
    # Idempotency-Key of the submission and sha256 of its body: same key, same body -> same job.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    sweep_id: Mapped[str | None] = mapped_column(String(200))
    # When its workflow first asked for a slot: the order of admission within a user.
    queued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Sweep(Base):
    """A parameter grid submitted as one request; its points are jobs with this ``sweep_id``."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_user", "user_id", "submitted_at"),)

    sweep_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
