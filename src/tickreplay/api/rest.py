"""REST API over the metadata database: authentication, health, and reading one's own jobs.

Every ``/v1`` endpoint needs ``Authorization: Bearer <token>`` (401 otherwise). A user sees only
their own jobs: another user's job answers 404, exactly like a job that does not exist, so ids
cannot be probed. An admin sees all. Job submission, cancel and results (issue 13) are next.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from tickreplay.db.models import STATUSES
from tickreplay.db.store import MetaStore, UserInfo


def encode_cursor(job: dict[str, Any]) -> str:
    """An opaque cursor for the page after ``job``."""
    raw = json.dumps([job["submitted_at"].isoformat(), job["job_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        when, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return dt.datetime.fromisoformat(when), str(job_id)
    except (ValueError, TypeError) as e:
        raise HTTPException(422, f"cursor: not a cursor of this API ({e})") from None


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.date | dt.datetime) else v)
            for k, v in job.items()}


def current_user(request: Request,
                 authorization: Annotated[str | None, Header()] = None) -> UserInfo:
    """The user of the request's bearer token; 401 without a valid one."""
    scheme, _, token = (authorization or "").partition(" ")
    store: MetaStore = request.app.state.store
    found = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


Viewer = Annotated[UserInfo, Depends(current_user)]


def create_app(store: MetaStore) -> FastAPI:
    """The REST app bound to one metadata store."""
    app = FastAPI(title="tickreplay", version="1",
                  description="Reproducible tick-level backtests: the job API.")
    app.state.store = store

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: the metadata database answers."""
        try:
            with store.engine.connect() as conn:
                conn.execute(text("select 1"))
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "unavailable", "db": str(e)[:200]}, 503)
        return JSONResponse({"status": "ok", "db": "ok"})

    @app.get("/v1/jobs")
    def list_jobs(viewer: Viewer,
                  status: Annotated[str | None, Query(description="Only jobs in this status")] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
                  ) -> dict[str, Any]:
        """The caller's jobs (an admin's: everyone's), oldest first, one page at a time."""
        if status is not None and status not in STATUSES:
            raise HTTPException(422, f"status: must be one of {', '.join(STATUSES)}")
        jobs = store.jobs(viewer, status=status, limit=limit,
                          after=decode_cursor(cursor) if cursor else None)
        return {"jobs": [_public(j) for j in jobs],
                "next_cursor": encode_cursor(jobs[-1]) if len(jobs) == limit else None}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str, viewer: Viewer) -> dict[str, Any]:
        """One job; 404 if it does not exist or belongs to someone else."""
        job = store.job(job_id, viewer)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return _public(job)

    return app
