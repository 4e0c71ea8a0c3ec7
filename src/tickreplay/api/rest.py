"""REST API (FastAPI) over :class:`tickreplay.api.service.JobService`.

Every ``/v1`` endpoint needs ``Authorization: Bearer <token>`` (401 otherwise). A user sees only
their own jobs: another user's job answers 404, exactly like a job that does not exist, so ids
cannot be probed. An admin sees all. Refusals are JSON ``{"detail": message, "code": code}``
with the status of the :class:`tickreplay.errors.RequestError` raised; every 422 (FastAPI's
validation and ours: unknown symbol, bad params) has FastAPI's shape, ``detail`` a list of
``{loc, msg, type}`` whose ``loc`` names the field.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from tickreplay.api import metrics as m
from tickreplay.api.logs import request_logger
from tickreplay.api.models import (
    Accepted,
    JobOut,
    JobPage,
    JobRequest,
    StrategyBundleIn,
    StrategyOut,
    SweepAccepted,
    SweepOut,
    SweepRequest,
)
from tickreplay.api.service import JobService
from tickreplay.db.store import MetaStore, UserInfo
from tickreplay.errors import InvalidRequest, RequestError
from tickreplay.settings import Settings

_AUTH = {401: {"description": "No valid bearer token"}}
_POST = {400: {"description": "The body is not JSON"}, **_AUTH}
_NOT_FOUND = {404: {"description": "No such object for this caller"}, **_AUTH}


def current_user(request: Request,
                 authorization: Annotated[str | None, Header()] = None) -> UserInfo:
    """The user of the request's bearer token; 401 without a valid one."""
    scheme, _, token = (authorization or "").partition(" ")
    store: MetaStore = request.app.state.service.store
    found = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise HTTPException(401, "a valid bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


Viewer = Annotated[UserInfo, Depends(current_user)]


def create_app(store: MetaStore, settings: Settings | None = None,
               temporal: Any = None) -> FastAPI:
    """The REST app bound to one metadata store (and the stack of ``settings``)."""
    service = JobService(store, settings or Settings(), temporal)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="tickreplay", version="1", lifespan=lifespan,
                  description="Reproducible tick-level backtests: the job API.")
    app.state.service = service
    app.state.store = store
    metrics = m.ApiMetrics(store)
    app.middleware("http")(request_logger(metrics))

    @app.exception_handler(RequestError)
    async def refused(_: Request, e: RequestError) -> JSONResponse:
        if isinstance(e, InvalidRequest):  # the shape of FastAPI's own 422: one schema for all
            field, _, msg = str(e).partition(": ")
            return JSONResponse({"detail": [{"loc": [field], "msg": msg or field,
                                             "type": "value_error"}], "code": e.code}, 422)
        return JSONResponse({"detail": str(e), "code": e.code}, e.http)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "A backing service is down"}})
    async def readyz() -> JSONResponse:
        """Readiness: the metadata database, Temporal and the object store answer."""
        checks = await service.ready()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", **checks},
                            200 if ok else 503)

    @app.get("/metrics", response_class=Response,
             responses={403: {"description": "Not an admin"}, **_AUTH})
    def prometheus(viewer: Viewer) -> Response:
        """Prometheus metrics (an admin's token): jobs by status, RUNNING per user, submit
        latency, run durations, requests."""
        if not viewer.is_admin:
            raise HTTPException(403, "metrics are for admins")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/strategies", status_code=201, response_model=StrategyOut,
              response_model_by_alias=True, responses={413: {"description": "Too large"},
                                                       422: {"description": "Does not load"},
                                                       **_POST})
    async def upload_strategy(body: StrategyBundleIn, viewer: Viewer) -> dict[str, Any]:
        """Upload a strategy bundle (it is loaded in the sandbox first); returns its digest."""
        return await service.upload_strategy(viewer, body)

    @app.post("/v1/jobs", status_code=202, response_model=Accepted,
              responses={409: {"description": "Idempotency-Key or job_id reused with another "
                                              "body"}, 422: {"description": "Invalid"},
                         503: {"description": "Temporal or S3 down"}, **_POST})
    async def submit(body: JobRequest, viewer: Viewer,
                     idempotency_key: Annotated[str | None, Header(
                         max_length=200, description="Same key and body: the same job")] = None,
                     ) -> dict[str, Any]:
        """Submit a backtest; answers at once with its job id (it starts when a slot frees)."""
        started = time.monotonic()
        job, created = await service.submit(viewer, body, idempotency_key)
        metrics.submitted(time.monotonic() - started, created)
        return {"job_id": job["job_id"], "status": job["status"]}

    @app.get("/v1/jobs", response_model=JobPage, responses=_AUTH)
    async def list_jobs(viewer: Viewer,
                        status: Annotated[str | None, Query(description="Only this status")] = None,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        cursor: Annotated[str | None, Query(
                            description="next_cursor of the previous page")] = None,
                        ) -> dict[str, Any]:
        """The caller's jobs (an admin's: everyone's), oldest first, one page at a time."""
        jobs, next_cursor = await service.list(viewer, status, limit, cursor)
        return {"jobs": jobs, "next_cursor": next_cursor}

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=_NOT_FOUND)
    async def get_job(job_id: str, viewer: Viewer) -> dict[str, Any]:
        """One job: status, stage, progress and simulated time, metrics, result links."""
        return await service.get(viewer, job_id)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=Accepted,
              responses={409: {"description": "Already finished"}, **_NOT_FOUND})
    async def cancel(job_id: str, viewer: Viewer) -> dict[str, Any]:
        """Cancel a job: its runner is stopped and it ends CANCELLED."""
        return await service.cancel(viewer, job_id)

    @app.get("/v1/jobs/{job_id}/logs", responses=_NOT_FOUND)
    async def logs(job_id: str, viewer: Viewer) -> dict[str, Any]:
        """Events, the error with its traceback, and the strategy's log records."""
        return await service.logs(viewer, job_id)

    @app.get("/v1/jobs/{job_id}/metrics", responses={409: {"description": "Not succeeded"},
                                                     **_NOT_FOUND})
    async def job_metrics(job_id: str, viewer: Viewer) -> FileResponse:
        """metrics.json of the verified result."""
        return FileResponse(await service.artifact(viewer, job_id, "metrics"),
                            media_type="application/json")

    @app.get("/v1/jobs/{job_id}/manifest", responses={409: {"description": "Not succeeded"},
                                                      **_NOT_FOUND})
    async def manifest(job_id: str, viewer: Viewer) -> FileResponse:
        """manifest.json: inputs, per-file sha256, result_hash, signature."""
        return FileResponse(await service.artifact(viewer, job_id, "manifest"),
                            media_type="application/json")

    @app.get("/v1/jobs/{job_id}/trades", responses={409: {"description": "Not succeeded"},
                                                    **_NOT_FOUND})
    async def trades(job_id: str, viewer: Viewer,
                     format: Annotated[str, Query(pattern="^(parquet|csv)$")] = "parquet",
                     ) -> FileResponse:
        """The trade list, Parquet (default) or CSV, streamed from the verified result."""
        name = "trades" if format == "parquet" else "trades.csv"
        media = "application/vnd.apache.parquet" if format == "parquet" else "text/csv"
        return FileResponse(await service.artifact(viewer, job_id, name), media_type=media)

    @app.get("/v1/jobs/{job_id}/equity", responses={409: {"description": "Not succeeded"},
                                                    **_NOT_FOUND})
    async def equity(job_id: str, viewer: Viewer) -> FileResponse:
        """The daily equity curve (Parquet), streamed from the verified result."""
        return FileResponse(await service.artifact(viewer, job_id, "equity"),
                            media_type="application/vnd.apache.parquet")

    @app.get("/v1/jobs/{job_id}/files/{name}", responses={409: {"description": "Not succeeded"},
                                                          **_NOT_FOUND})
    async def result_file(job_id: str, name: str, viewer: Viewer) -> FileResponse:
        """Any file of the verified result by its name in the manifest (or manifest.json)."""
        return FileResponse(await service.result_file(viewer, job_id, name),
                            media_type="application/octet-stream")

    @app.post("/v1/sweeps", status_code=202, response_model=SweepAccepted,
              responses={413: {"description": "Too many points"},
                         422: {"description": "Invalid"}, **_POST})
    async def submit_sweep(body: SweepRequest, viewer: Viewer) -> dict[str, Any]:
        """Run a parameter grid: every point is a job of the caller's (limits apply)."""
        return await service.submit_sweep(viewer, body)

    @app.get("/v1/sweeps/{sweep_id}", response_model=SweepOut, responses=_NOT_FOUND)
    async def get_sweep(sweep_id: str, viewer: Viewer) -> dict[str, Any]:
        """A sweep: its points' status and, at the end, the ranked table."""
        return await service.sweep(viewer, sweep_id)

    @app.post("/v1/sweeps/{sweep_id}/cancel", status_code=202,
              responses={409: {"description": "Already finished"}, **_NOT_FOUND})
    async def cancel_sweep(sweep_id: str, viewer: Viewer) -> dict[str, Any]:
        """Cancel a sweep: running points are cancelled, points not started end CANCELLED."""
        return await service.cancel_sweep(viewer, sweep_id)

    return app
