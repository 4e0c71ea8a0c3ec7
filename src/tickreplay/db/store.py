"""The metadata store: users and their tokens, jobs and their status, job events.

Every method is one short transaction. Status changes are checked against the job's life
(PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; PENDING may also end directly) and are
idempotent: an activity retried after a worker kill writes the same transition again and
nothing changes; a terminal status is never left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from tickreplay.db.models import (
    PENDING,
    RUNNING,
    STATUSES,
    TERMINAL,
    ApiToken,
    Job,
    JobEvent,
    Sweep,
    User,
)
from tickreplay.errors import StoreError

__all__ = ["MetaStore", "StoreError", "UserInfo", "hash_token", "open_engine"]

_NEXT = {PENDING: {RUNNING, *TERMINAL}, RUNNING: set(TERMINAL)}


def open_engine(dsn: str, schema: str | None = None) -> Engine:
    """An engine for ``dsn``; on PostgreSQL ``schema`` becomes the search path (tests use it).

    SQLite gets foreign keys on and a busy timeout: the API and several workers share the file.
    """
    if dsn.startswith("sqlite"):
        engine = create_engine(dsn, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    args = {"options": f"-csearch_path={schema}"} if schema else {}
    return create_engine(dsn, connect_args=args, pool_pre_ping=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    is_admin: bool


class MetaStore:
    """Users, tokens, jobs and events over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    # -------------------------------------------------------------------- users and tokens
    def add_user(self, name: str, *, admin: bool = False) -> str:
        """Create ``name`` and return its first token (shown once; only its hash is kept)."""
        with self._tx() as s:
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise StoreError(f"user {name!r} already exists")
            user = User(name=name, is_admin=admin, created_at=_now())
            s.add(user)
            s.flush()
            return self._issue(s, user.id)

    def new_token(self, name: str) -> str:
        """Another token for an existing, active user."""
        with self._tx() as s:
            return self._issue(s, self._user(s, name).id)

    @staticmethod
    def _issue(s: Session, user_id: int) -> str:
        token = "trk_" + secrets.token_urlsafe(32)
        s.add(ApiToken(user_id=user_id, token_sha256=hash_token(token), created_at=_now()))
        return token

    @staticmethod
    def _user(s: Session, name: str) -> User:
        user = s.scalar(select(User).where(User.name == name, User.revoked_at.is_(None)))
        if user is None:
            raise StoreError(f"no active user {name!r}")
        return user

    def revoke_user(self, name: str) -> None:
        """The user and every token of theirs stop working at once; their jobs stay."""
        with self._tx() as s:
            user = self._user(s, name)
            user.revoked_at = _now()
            for tok in s.scalars(select(ApiToken).where(ApiToken.user_id == user.id,
                                                        ApiToken.revoked_at.is_(None))):
                tok.revoked_at = user.revoked_at

    def users(self) -> list[dict[str, Any]]:
        with self._tx() as s:
            return [{"name": u.name, "admin": u.is_admin, "created_at": u.created_at,
                     "revoked": u.revoked_at is not None}
                    for u in s.scalars(select(User).order_by(User.name))]

    def authenticate(self, token: str) -> UserInfo | None:
        """The active user a bearer token belongs to, or None."""
        with self._tx() as s:
            row = s.execute(
                select(User).join(ApiToken, ApiToken.user_id == User.id).where(
                    ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None),
                    User.revoked_at.is_(None))).scalar_one_or_none()
            return None if row is None else UserInfo(row.id, row.name, row.is_admin)

    # ------------------------------------------------------------------------------ jobs
    def create_job(self, user: UserInfo, job_id: str, spec: dict[str, Any],
                   strategy_digest: str, data_fingerprint: str = "", *,
                   idempotency_key: str | None = None, request_sha256: str = "",
                   sweep_id: str | None = None) -> bool:
        """Record a submitted job as PENDING; False if ``job_id`` already exists.

        Raises:
            StoreError: ``idempotency_key`` is already used by another job of this user
                (a concurrent submission won: look it up with :meth:`by_idempotency_key`).
        """
        from sqlalchemy.exc import IntegrityError as DbIntegrityError

        try:
            with self._tx() as s:
                if s.get(Job, job_id) is not None:
                    return False
                s.add(self._new_job(user, job_id, spec, strategy_digest, data_fingerprint,
                                    idempotency_key, request_sha256, sweep_id))
                return True
        except DbIntegrityError:
            with self._tx() as s:
                if s.get(Job, job_id) is not None:
                    return False  # the same id was inserted concurrently
            raise StoreError(f"idempotency key {idempotency_key!r} is taken") from None

    @staticmethod
    def _new_job(user: UserInfo, job_id: str, spec: dict[str, Any], strategy_digest: str,
                 data_fingerprint: str, idempotency_key: str | None, request_sha256: str,
                 sweep_id: str | None) -> Job:
        return Job(job_id=job_id, user_id=user.id, status=PENDING,
                   strategy_digest=strategy_digest, data_fingerprint=data_fingerprint,
                   spec=spec, params=dict(spec.get("params") or {}),
                   symbols=list(spec["symbols"]),
                   start_date=dt.date.fromisoformat(str(spec["start"])),
                   end_date=dt.date.fromisoformat(str(spec["end"])), submitted_at=_now(),
                   idempotency_key=idempotency_key, request_sha256=request_sha256,
                   sweep_id=sweep_id)

    def by_idempotency_key(self, user: UserInfo, key: str) -> dict[str, Any] | None:
        """The job this user submitted under ``key`` (with its ``request_sha256``), if any."""
        with self._tx() as s:
            job = s.scalar(select(Job).where(Job.user_id == user.id,
                                             Job.idempotency_key == key))
            return None if job is None else {**_as_dict(job, user.name),
                                             "request_sha256": job.request_sha256}

    def admit(self, job_id: str, *, per_user: int, global_cap: int) -> str:
        """Move a PENDING job to RUNNING if a slot is free; the job's status afterwards.

        A job is admitted when its user has fewer RUNNING jobs than their limit (the user's
        own ``max_running``, else ``per_user``), the platform fewer than ``global_cap``, and no
        earlier-submitted PENDING job of the same user waits for a slot (so a user's waiting
        jobs start in submission order; a row whose workflow has not asked yet, such as a
        sweep's later points, holds no one up). The check and the move are one transaction
        that holds the database's write lock (SQLite: the first statement writes; PostgreSQL:
        an advisory lock), so two workers admitting at once can never overshoot a limit.
        """
        with self._tx() as s:
            if s.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                s.execute(text("select pg_advisory_xact_lock(7411)"))
            job = self._locked(s, job_id)
            if job.status != PENDING:
                return job.status
            if job.queued_at is None:  # the job's workflow asks for the first time
                job.queued_at = _now()
                s.flush()
            limit = s.scalar(select(User.max_running).where(User.id == job.user_id))
            mine = s.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == job.user_id, Job.status == RUNNING)) or 0
            total = s.scalar(select(func.count()).select_from(Job).where(
                Job.status == RUNNING)) or 0
            # Earlier submissions go first, but only those whose workflow is waiting (has
            # asked): a sweep's later points (not yet started by the sweep) or a row whose
            # workflow is gone must not block the user's other jobs.
            earlier = s.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == job.user_id, Job.status == PENDING, Job.queued_at.is_not(None),
                tuple_(Job.submitted_at, Job.job_id) < tuple_(job.submitted_at, job.job_id))) or 0
            if mine >= (limit if limit is not None else per_user) or total >= global_cap \
                    or earlier:
                return PENDING
            job.status = RUNNING
            job.started_at = _now()
            return RUNNING

    @staticmethod
    def _locked(s: Session, job_id: str) -> Job:
        """The job's row, locked for this transaction before it is read.

        Why: a status move reads the row, checks the transition and writes; two movers (an
        admission and a cancel's record, say) must not both read the old status. PostgreSQL:
        ``SELECT ... FOR UPDATE``. SQLite (pysqlite starts a transaction only at the first
        write): a no-op UPDATE first, which takes the database's write lock.

        Raises:
            StoreError: No such job.
        """
        if s.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            s.execute(update(Job).where(Job.job_id == job_id).values(status=Job.status))
        job = s.get(Job, job_id, with_for_update=True, populate_existing=True)
        if job is None:
            raise StoreError(f"no job {job_id!r}")
        return job

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by ``(user name, status)`` (for metrics and the load report)."""
        with self._tx() as s:
            rows = s.execute(select(User.name, Job.status, func.count()).join(
                User, User.id == Job.user_id).group_by(User.name, Job.status))
            return {(name, status): n for name, status, n in rows}

    def set_status(self, job_id: str, status: str, **fields: Any) -> bool:
        """Move a job to ``status`` (and set result fields); False if it already was there.

        Raises:
            StoreError: unknown job, unknown status, or a transition its life does not allow.
        """
        if status not in STATUSES:
            raise StoreError(f"unknown status {status!r}")
        allowed = {"data_fingerprint", "results_path", "result_hash", "metrics", "error",
                   "image_digest"}
        if set(fields) - allowed:
            raise StoreError(f"cannot set {sorted(set(fields) - allowed)} on a job")
        with self._tx() as s:
            job = self._locked(s, job_id)
            if job.status == status:
                return False
            if status not in _NEXT.get(job.status, set()):
                raise StoreError(f"job {job_id} is {job.status}; it cannot become {status}")
            job.status = status
            if status == RUNNING:
                job.started_at = _now()
            if status in TERMINAL:
                job.finished_at = _now()
            for k, v in fields.items():
                setattr(job, k, v)
            return True

    def job(self, job_id: str, viewer: UserInfo) -> dict[str, Any] | None:
        """The job as a dict, or None if it does not exist or ``viewer`` may not see it."""
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None or not (viewer.is_admin or job.user_id == viewer.id):
                return None
            return _as_dict(job, _user_name(s, job))

    def jobs(self, viewer: UserInfo, *, status: str | None = None, limit: int = 50,
             after: tuple[dt.datetime, str] | None = None) -> list[dict[str, Any]]:
        """The viewer's jobs (an admin's: everyone's), oldest first, ``limit`` after a cursor.

        The cursor is ``(submitted_at, job_id)`` of the last job of the previous page: stable
        under concurrent submissions, unlike an offset.
        """
        q = select(Job, User.name).join(User, User.id == Job.user_id).order_by(
            Job.submitted_at, Job.job_id).limit(limit)
        if not viewer.is_admin:
            q = q.where(Job.user_id == viewer.id)
        if status is not None:
            q = q.where(Job.status == status)
        if after is not None:
            q = q.where(tuple_(Job.submitted_at, Job.job_id) > tuple_(*after))
        with self._tx() as s:
            return [_as_dict(j, name) for j, name in s.execute(q)]

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        """The job as the platform sees it (no viewer check, with ``request_sha256``)."""
        with self._tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            return {**_as_dict(job, _user_name(s, job)),
                    "request_sha256": job.request_sha256}

    def delete_unstarted_job(self, job_id: str) -> None:
        """Remove a PENDING job whose workflow could not be started (nothing ran for it)."""
        with self._tx() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is not None and job.status == PENDING:
                s.query(JobEvent).filter(JobEvent.job_id == job_id).delete()
                s.delete(job)

    # ---------------------------------------------------------------------------- sweeps
    def create_sweep(self, user: UserInfo, sweep_id: str, spec: dict[str, Any],
                     points: list[tuple[str, dict[str, Any]]], strategy_digest: str) -> None:
        """Record a sweep and each of its points as a PENDING job (one transaction)."""
        with self._tx() as s:
            s.add(Sweep(sweep_id=sweep_id, user_id=user.id, status=PENDING, spec=spec,
                        submitted_at=_now()))
            for job_id, job_spec in points:
                s.add(self._new_job(user, job_id, job_spec, strategy_digest, "", None, "",
                                    sweep_id))

    def sweep(self, sweep_id: str, viewer: UserInfo) -> dict[str, Any] | None:
        """The sweep with its jobs, or None if it does not exist or is not the viewer's."""
        with self._tx() as s:
            sw = s.get(Sweep, sweep_id)
            if sw is None or not (viewer.is_admin or sw.user_id == viewer.id):
                return None
            jobs = [{"job_id": j.job_id, "status": j.status, "params": j.params,
                     "result_hash": j.result_hash, "metrics": j.metrics, "error": j.error}
                    for j in s.scalars(select(Job).where(Job.sweep_id == sweep_id)
                                       .order_by(Job.job_id))]
            return {"sweep_id": sw.sweep_id, "status": sw.status, "spec": sw.spec,
                    "submitted_at": sw.submitted_at, "finished_at": sw.finished_at,
                    "result": sw.result, "jobs": jobs}

    def finish_sweep(self, sweep_id: str, status: str, result: dict[str, Any]) -> None:
        """Record a sweep's end (idempotent: a terminal sweep keeps its first result)."""
        with self._tx() as s:
            sw = s.get(Sweep, sweep_id, with_for_update=True)
            if sw is None:
                raise StoreError(f"no sweep {sweep_id!r}")
            if sw.status in TERMINAL:
                return
            sw.status, sw.result, sw.finished_at = status, result, _now()
            # Points whose workflow never started (a cancelled sweep) end with it; the started
            # ones are cancelled through Temporal and record their own end.
            for job in s.scalars(select(Job).where(Job.sweep_id == sweep_id,
                                                   Job.status == PENDING,
                                                   Job.queued_at.is_(None))):
                job.status, job.finished_at = "CANCELLED", _now()
                job.error = f"the sweep ended ({status}) before this point started"

    def add_event(self, job_id: str, kind: str, **data: Any) -> None:
        with self._tx() as s:
            s.add(JobEvent(job_id=job_id, ts=_now(), kind=kind, data=data))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with self._tx() as s:
            return [{"ts": e.ts, "kind": e.kind, **e.data} for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


_PRIVATE = {"user_id", "request_sha256"}


def _user_name(s: Session, job: Job) -> str | None:
    return s.scalar(select(User.name).where(User.id == job.user_id))


def _as_dict(job: Job, user: str | None) -> dict[str, Any]:
    out = {c.key: getattr(job, c.key) for c in Job.__table__.columns if c.key not in _PRIVATE}
    out["user"] = user
    return out
