"""gRPC job API (``tickreplay.v1.JobService``, protos/tickreplay/v1/jobs.proto) over
:class:`tickreplay.api.service.JobService`.

Why a second transport that is only an adapter: clients that stream progress (``WatchJob``)
or generate typed stubs want gRPC, but what a submission means (validation, idempotency, who
sees which job) must not depend on the transport. So this module only converts messages to
the REST request model (:class:`tickreplay.api.models.JobRequest`, so a field is validated
by the same code and named the same in the error) and the service's job dicts back to
messages; every decision is the service's.

Semantics, as REST's:

- Every ``JobService`` RPC needs the metadata ``authorization: Bearer <token>``
  (``UNAUTHENTICATED`` otherwise). Health and reflection need none: load balancers and
  ``grpcurl`` must reach them without a user.
- Another user's job is ``NOT_FOUND``, exactly like a job that does not exist; an admin sees all.
- Refusals (:class:`tickreplay.errors.RequestError`) map by their HTTP status:
  422 (and any other 4xx) -> ``INVALID_ARGUMENT``, 404 -> ``NOT_FOUND``,
  409 -> ``ALREADY_EXISTS`` (an idempotency key or job id reused with another body) except for
  ``CancelJob``, where 409 means the job has already finished -> ``FAILED_PRECONDITION``
  (nothing exists twice there: the job's state forbids the operation), 413 ->
  ``RESOURCE_EXHAUSTED``, 503 -> ``UNAVAILABLE``; an invalid request message (pydantic
  ``ValidationError`` of the ``JobRequest`` built from it) -> ``INVALID_ARGUMENT`` whose message
  names the field. Anything else is ``INTERNAL`` (and logged). The error's stable ``code`` (the
  REST body's ``code``) travels as the trailing metadata ``tickreplay-code``.

Why server reflection and the standard health service: ``grpcurl``/``grpc_cli`` work without
the .proto at hand, and orchestrators (Kubernetes gRPC probes, Envoy) probe
``grpc.health.v1.Health`` rather than a service-specific RPC; it says SERVING for ``""`` and
``tickreplay.v1.JobService`` and NOT_SERVING during a graceful stop (:func:`serve_grpc`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from tickreplay import GRPC_FORK_SAFE as FORK_SAFE  # see tickreplay/__init__.py
from tickreplay.api.models import JobRequest
from tickreplay.api.service import JobService
from tickreplay.db.store import UserInfo
from tickreplay.errors import InvalidRequest, RequestError, StackError
from tickreplay.v1 import jobs_pb2 as pb
from tickreplay.v1 import jobs_pb2_grpc as pb_grpc

log = logging.getLogger("tickreplay.api.grpc")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["JobService"].full_name
CODE_METADATA = "tickreplay-code"
_T = TypeVar("_T")

# HTTP status of a RequestError -> gRPC status (409 of CancelJob: see the module docstring).
_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# SubmitBacktestRequest fields that are `optional` in the proto: unset -> the REST default.
_OPTIONAL = ("latency_ms", "slippage_bps", "commission", "initial_cash", "seed", "mode",
             "job_id", "checkpoint_every_s", "stall_timeout_s", "deadline_s", "strategy_image",
             "fill_model", "max_participation")
# Required string fields: "" (proto3's unset) is left out so the error says "Field required".
_REQUIRED = ("strategy", "start_date", "end_date")
_MAX_SAFE_INT = 2**53


def status_code(e: RequestError, *, conflict: grpc.StatusCode = grpc.StatusCode.ALREADY_EXISTS
                ) -> grpc.StatusCode:
    """The gRPC status of a refusal; ``conflict`` is what a 409 means for this RPC."""
    if e.http == 409:
        return conflict
    if e.http in _BY_HTTP:
        return _BY_HTTP[e.http]
    return grpc.StatusCode.INVALID_ARGUMENT if e.http < 500 else grpc.StatusCode.UNAVAILABLE


def describe(e: ValidationError) -> str:
    """A pydantic error as one line naming each field (``start_date: Input should be ...``)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(f"{loc}:") else msg)
    return "; ".join(parts)


# ----------------------------------------------------------------------------- conversion
def _integral(value: Any) -> Any:
    """Struct numbers are doubles: give integral ones back as ints (as JSON would), so a gRPC
    body and the equal REST body are the same body (idempotency digest) and validate alike."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct_to_dict(s: Struct) -> dict[str, Any]:
    return dict(_integral(json_format.MessageToDict(s)))


def _fill_struct(target: Struct, value: dict[str, Any]) -> None:
    """Copy a JSON-like dict into ``target`` (set even when empty: presence means "known")."""
    target.SetInParent()
    target.update(json.loads(json.dumps(value, default=str)))


def job_request(msg: pb.SubmitBacktestRequest) -> tuple[JobRequest, str | None]:
    """The REST request model of a submission, and its idempotency key.

    Raises:
        ValidationError: a field is invalid (its ``loc`` names it).
        InvalidRequest: the idempotency key is empty or too long.
    """
    body: dict[str, Any] = {"symbols": list(msg.symbols), "params": struct_to_dict(msg.params),
                            "allow_missing": msg.allow_missing,
                            "cancel_latency": msg.cancel_latency}
    if msg.events:
        body["events"] = list(msg.events)
    body.update({name: getattr(msg, name) for name in _REQUIRED if getattr(msg, name)})
    body.update({name: getattr(msg, name) for name in _OPTIONAL if msg.HasField(name)})
    key = msg.idempotency_key if msg.HasField("idempotency_key") else None
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidRequest("idempotency_key: 1 to 200 characters")
    return JobRequest.model_validate(body), key


def _timestamp(value: dt.datetime | str | None) -> dt.datetime | None:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value


def job_message(job: dict[str, Any]) -> pb.Job:
    """A job dict of :class:`JobService` as the ``Job`` message (naive times are UTC)."""
    progress = job.get("progress") or {}
    msg = pb.Job(
        job_id=job["job_id"], user=job.get("user") or "", status=job["status"],
        stage=job.get("stage") or "", ticks_done=int(progress.get("ticks_done") or 0),
        ticks_total=int(progress.get("ticks_total") or 0),
        strategy_digest=job.get("strategy_digest") or "",
        image_digest=job.get("image_digest") or "",
        data_fingerprint=job.get("data_fingerprint") or "", symbols=list(job.get("symbols") or ()),
        start_date=str(job.get("start_date") or ""), end_date=str(job.get("end_date") or ""),
        result_hash=job.get("result_hash") or "", results_path=job.get("results_path") or "",
        error=job.get("error") or "")
    _fill_struct(msg.params, job.get("params") or {})
    _fill_struct(msg.spec, job.get("spec") or {})
    if job.get("metrics") is not None:
        _fill_struct(msg.metrics, job["metrics"])
    for name, value in (("sim_time", progress.get("sim_time")),
                        ("submitted_at", job.get("submitted_at")),
                        ("started_at", job.get("started_at")),
                        ("finished_at", job.get("finished_at"))):
        when = _timestamp(value)
        if when is not None:
            getattr(msg, name).FromDatetime(when)
    for name in ("idempotency_key", "sweep_id"):
        if job.get(name) is not None:
            setattr(msg, name, job[name])
    return msg


# -------------------------------------------------------------------------------- servicer
def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of the ``authorization: Bearer <token>`` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class JobApi(pb_grpc.JobServiceServicer):
    """``tickreplay.v1.JobService``: each RPC authenticates, calls the service, converts."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    async def _user(self, context: grpc.aio.ServicerContext) -> UserInfo:
        token = bearer_token(context)
        user = await asyncio.to_thread(self.service.store.authenticate, token) if token else None
        if user is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a valid bearer token is required (metadata authorization: "
                                "Bearer <token>)")
        assert user is not None
        return user

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext, e: Exception,
                      conflict: grpc.StatusCode) -> NoReturn:
        if isinstance(e, RequestError):
            code, details, name = status_code(e, conflict=conflict), str(e), e.code
        elif isinstance(e, ValidationError):
            code, details, name = grpc.StatusCode.INVALID_ARGUMENT, describe(e), InvalidRequest.code
        else:
            log.exception("gRPC request failed")
            code, details = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
            name = "Internal"
        await context.abort(code, details, trailing_metadata=((CODE_METADATA, name),))
        raise AssertionError("unreachable: abort raises")

    async def _unary(self, context: grpc.aio.ServicerContext,
                     call: Callable[[UserInfo], Awaitable[_T]],
                     conflict: grpc.StatusCode = grpc.StatusCode.ALREADY_EXISTS) -> _T:
        user = await self._user(context)
        try:
            return await call(user)
        except Exception as e:  # noqa: BLE001 - every failure becomes a status (_refuse)
            await self._refuse(context, e, conflict)

    async def SubmitBacktest(self, request: pb.SubmitBacktestRequest,
                             context: grpc.aio.ServicerContext) -> pb.SubmitBacktestResponse:
        async def call(user: UserInfo) -> pb.SubmitBacktestResponse:
            req, key = job_request(request)
            job, created = await self.service.submit(user, req, key)
            return pb.SubmitBacktestResponse(job_id=job["job_id"], status=job["status"],
                                             created=created)

        return await self._unary(context, call)

    async def GetJob(self, request: pb.GetJobRequest,
                     context: grpc.aio.ServicerContext) -> pb.Job:
        async def call(user: UserInfo) -> pb.Job:
            return job_message(await self.service.get(user, request.job_id))

        return await self._unary(context, call)

    async def ListJobs(self, request: pb.ListJobsRequest,
                       context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        async def call(user: UserInfo) -> pb.ListJobsResponse:
            jobs, cursor = await self.service.list(
                user, request.status if request.HasField("status") else None,
                request.limit if request.HasField("limit") else 50, request.cursor or None)
            out = pb.ListJobsResponse(jobs=[job_message(j) for j in jobs])
            if cursor is not None:
                out.next_cursor = cursor
            return out

        return await self._unary(context, call)

    async def CancelJob(self, request: pb.CancelJobRequest,
                        context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        async def call(user: UserInfo) -> pb.CancelJobResponse:
            out = await self.service.cancel(user, request.job_id)
            return pb.CancelJobResponse(job_id=out["job_id"], status=out["status"])

        return await self._unary(context, call, grpc.StatusCode.FAILED_PRECONDITION)

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Job]:
        user = await self._user(context)
        try:
            async for job in self.service.watch(user, request.job_id):
                yield job_message(job)
        except Exception as e:  # noqa: BLE001 - every failure becomes a status (_refuse)
            await self._refuse(context, e, grpc.StatusCode.ALREADY_EXISTS)


# ---------------------------------------------------------------------------------- server
class _Health(health.aio.HealthServicer):
    """grpcio-health-checking's servicer, SERVING for ``""`` and the job API from the start.

    Why preset rather than ``await set()`` after start: :func:`create_server` is synchronous
    (callers start the server themselves), and a probe must never see SERVICE_UNKNOWN for a
    server that answers. The base class presets ``""`` the same way.
    """

    def __init__(self) -> None:
        super().__init__()
        self._server_status[SERVICE_NAME] = health_pb2.HealthCheckResponse.SERVING


def _build(service: JobService, host: str, port: int) -> tuple[grpc.aio.Server, _Health]:
    if not FORK_SAFE:
        log.warning("grpc was imported before GRPC_ENABLE_FORK_SUPPORT=false was set: strategy "
                    "inspections (forked children) may die of SIGSEGV during RPCs; set it in "
                    "the environment of this process (grpc/grpc#43055)")
    # so_reuseport off: otherwise a second server on a taken port binds too and the two split
    # the traffic silently; a port in use must be an error.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_JobServiceServicer_to_server(JobApi(service), server)
    checks = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        raise StackError("grpc", f"cannot listen on {address}: {e}") from None
    return server, checks


def create_server(service: JobService, host: str, port: int) -> grpc.aio.Server:
    """The gRPC server of the job API bound to ``host:port``, not started.

    Call it in the event loop that will run it (``grpc.aio`` binds to the running loop), and
    share ``service`` with the REST app only within that loop (its Temporal client is made in
    the loop that first uses it). Then ``await server.start()`` and, at the end,
    ``await server.stop(grace)``. Health says SERVING for ``""`` and ``tickreplay.v1.JobService``.

    Raises:
        StackError: ``host:port`` cannot be bound (in use, bad address).
    """
    return _build(service, host, port)[0]


async def serve_grpc(service: JobService, host: str, port: int, *,
                     stop: asyncio.Event | None = None, grace: float = 5.0,
                     started: asyncio.Event | None = None) -> None:
    """Serve the gRPC job API until ``stop`` is set (forever without one), then stop gracefully.

    On stop, health turns NOT_SERVING first (so probes drain traffic), then in-flight RPCs get
    ``grace`` seconds. ``started`` is set once the server listens.

    Raises:
        StackError: ``host:port`` cannot be bound.
    """
    server, checks = _build(service, host, port)
    await server.start()
    if started is not None:
        started.set()
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await checks.enter_graceful_shutdown()
        await server.stop(grace)
