"""What the job API does, whatever the transport: REST (:mod:`api.rest`) and gRPC
(:mod:`api.grpc_server`) are thin adapters over :class:`JobService`.

Flow of a submission: validate the body (pydantic) -> look up the Idempotency-Key -> load the
strategy bundle by digest -> validate params in a sandboxed child (user code never runs in the
API process) -> check the catalog has data for every symbol -> record the job PENDING in the
metadata database -> start its workflow (id = job id, search attributes user/status/strategy).
From there the workflow's activities own the job's status in the database: admission under
the per-user and global limits makes it RUNNING, the end SUCCEEDED / FAILED / CANCELLED.

Errors are :class:`tickreplay.errors.RequestError` subclasses carrying their HTTP status; every
message names the field or object it is about.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import logging
import shutil
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tickreplay.api.models import JobRequest, StrategyBundleIn, SweepRequest
from tickreplay.db.models import PENDING, RUNNING, TERMINAL
from tickreplay.db.store import MetaStore, UserInfo
from tickreplay.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    StoreError,
    TickreplayError,
    TooLarge,
    Unavailable,
)
from tickreplay.jobs.operations import new_job_id
from tickreplay.settings import Settings

log = logging.getLogger("tickreplay.api")

MAX_BUNDLE_BYTES = 1_000_000
MAX_SWEEP_POINTS = 1000
# Result files a job exposes, by the name in the URL.
ARTIFACTS = {"trades": "trades.parquet", "trades.csv": "trades.csv", "equity": "equity.parquet",
             "metrics": "metrics.json", "manifest": "manifest.json"}


def encode_cursor(job: dict[str, Any]) -> str:
    """An opaque cursor for the page after ``job``."""
    raw = json.dumps([job["submitted_at"].isoformat(), job["job_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        when, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return dt.datetime.fromisoformat(when), str(job_id)
    except (ValueError, TypeError) as e:
        raise InvalidRequest(f"cursor: not a cursor of this API ({e})") from None


def request_digest(body: dict[str, Any]) -> str:
    """sha256 of a request body's canonical JSON (what "the same body" means)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_body(existing: dict[str, Any], digest: str) -> dict[str, Any]:
    """The job an Idempotency-Key named, if the body is the same; else a Conflict."""
    if existing["request_sha256"] != digest:
        raise Conflict(f"Idempotency-Key: already used for job {existing['job_id']} with a "
                       "different body")
    return existing


class _Lru(OrderedDict[str, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class JobService:
    """The job API's operations for an authenticated user."""

    def __init__(self, store: MetaStore, settings: Settings, temporal: Any = None) -> None:
        self.store = store
        self.settings = settings
        self._temporal = temporal
        self._connect_lock = asyncio.Lock()
        self._bundles = _Lru(256)  # digest -> bundle dict (immutable: content-addressed)
        self._checked = _Lru(4096)  # (digest, params) -> validated params
        self._downloads: dict[str, asyncio.Lock] = {}
        from tickreplay.runner.inspect import InspectorPool
        from tickreplay.runner.pool import sandbox_mode

        self.inspectors = InspectorPool(settings)  # warm sandboxed children per strategy
        # Strategy code never runs unconfined in the API process's name: without bubblewrap
        # params are not checked here (the runner still validates them, failing the job).
        try:
            self.sandboxed = sandbox_mode(settings) == "bwrap"
        except RuntimeError:
            self.sandboxed = False
        if not self.sandboxed:
            log.warning("no bubblewrap sandbox: the API will not load strategies to check "
                        "params; bad params fail the job instead of a 422")

    def close(self) -> None:
        """Stop the inspector children."""
        self.inspectors.close()

    # ------------------------------------------------------------------------ backends
    async def temporal(self) -> Any:
        """The Temporal client, connected on first use (the API starts before Temporal may)."""
        if self._temporal is None:
            async with self._connect_lock:
                if self._temporal is None:
                    from temporalio.client import Client

                    try:
                        self._temporal = await asyncio.wait_for(Client.connect(
                            self.settings.temporal_address,
                            **self.settings.temporal_options()), 10)
                    except Exception as e:  # noqa: BLE001 - any failure: not reachable
                        raise Unavailable(f"Temporal at {self.settings.temporal_address} is "
                                          f"not reachable: {e}") from None
        return self._temporal

    def _artifacts(self) -> Any:
        from tickreplay.data.objectstore import S3Store

        return S3Store(self.settings.artifacts_bucket, settings=self.settings)

    async def ready(self) -> dict[str, str]:
        """``ok`` or the error, for each of the database, Temporal and the object store."""
        from sqlalchemy import text

        out: dict[str, str] = {}

        def db() -> None:
            with self.store.engine.connect() as conn:
                conn.execute(text("select 1"))

        async def temporal() -> None:
            client = await self.temporal()
            await asyncio.wait_for(client.service_client.check_health(), 5)

        def s3() -> None:
            self._artifacts().client.head_bucket(Bucket=self.settings.artifacts_bucket)

        checks = {"db": asyncio.to_thread(db), "temporal": temporal(), "s3": asyncio.to_thread(s3)}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check, 8)
                out[name] = "ok"
            except Exception as e:  # noqa: BLE001 - any failure means not ready
                log.warning("readiness: %s: %s: %s", name, type(e).__name__, e)
                out[name] = f"unavailable ({type(e).__name__})"  # details in the log only
        return out

    # ---------------------------------------------------------------------- strategies
    async def upload_strategy(self, user: UserInfo, body: StrategyBundleIn) -> dict[str, Any]:
        """Store a bundle content-addressed (after loading it in the sandbox) -> its digest."""
        from tickreplay.strategy.loader import StrategyBundle, bundle_digest

        if sum(len(t.encode()) for t in body.files.values()) > MAX_BUNDLE_BYTES:
            raise TooLarge(f"files: the bundle is over {MAX_BUNDLE_BYTES} bytes")
        bundle = StrategyBundle(body.files, body.entry, body.class_name, bundle_digest(body.files))
        raw = bundle.to_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        as_dict = {"files": bundle.files, "entry": bundle.entry, "class": bundle.class_name}
        info: dict[str, Any] = {}
        if self.sandboxed:
            try:
                info = await asyncio.to_thread(self.inspectors.describe, digest, as_dict)
            except TickreplayError as e:
                raise InvalidRequest(f"strategy: {e}") from None
        store = self._artifacts()

        def put() -> None:
            from tickreplay.data.objectstore import ObjectExistsError

            try:
                store.put_bytes(f"strategies/{digest}.json", raw, if_none_match=True)
            except ObjectExistsError:
                pass  # same address, same bytes

        await self._s3(put, "store the strategy")
        self._bundles.put(digest, as_dict)
        return {"digest": digest, "source_digest": bundle.digest, "entry": bundle.entry,
                "class": info.get("class") or bundle.class_name,
                "params_schema": info.get("schema", {})}

    async def _bundle(self, digest: str) -> dict[str, Any]:
        if digest in self._bundles:
            return dict(self._bundles[digest])
        store = self._artifacts()
        key = f"strategies/{digest}.json"

        def get() -> bytes | None:
            return store.get_bytes(key) if store.head(key) is not None else None

        raw = await self._s3(get, "read the strategy")
        if raw is None or hashlib.sha256(raw).hexdigest() != digest:
            raise InvalidRequest(f"strategy: no strategy with digest {digest} "
                                 "(upload it with POST /v1/strategies)")
        bundle = json.loads(raw)
        self._bundles.put(digest, bundle)
        return dict(bundle)

    async def _params(self, digest: str, bundle: dict[str, Any],
                      params: dict[str, Any]) -> dict[str, Any]:
        """``params`` validated against the strategy's Params, with defaults filled in."""
        key = digest + json.dumps(params, sort_keys=True, default=str)
        if key not in self._checked:
            (result,) = await self._check(digest, bundle, [params])
            if isinstance(result, str):
                raise InvalidRequest(f"params: {result}")
            self._checked.put(key, result)
        return dict(self._checked[key])

    async def _check(self, digest: str, bundle: dict[str, Any], params: list[dict[str, Any]]
                     ) -> list[dict[str, Any] | str]:
        if not self.sandboxed:
            return list(params)
        try:
            return await asyncio.to_thread(self.inspectors.check, digest, bundle, params)
        except TickreplayError as e:  # the strategy itself does not load (or hangs)
            raise InvalidRequest(f"strategy: {e}") from None

    async def _s3(self, fn: Any, what: str) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except TickreplayError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore raises many types; all mean this
            raise Unavailable(f"object store: could not {what}: {type(e).__name__}: {e}"
                              ) from None

    # ---------------------------------------------------------------------- submission
    async def _spec(self, req: JobRequest, bundle: dict[str, Any], params: dict[str, Any]
                    ) -> dict[str, Any]:
        """The validated BacktestSpec (JSON form) of a request, after the catalog check."""
        from tickreplay.data.catalog import missing_symbols
        from tickreplay.data.objectstore import open_store
        from tickreplay.engine.config import RunConfig
        from tickreplay.spec import BacktestSpec

        data_url = f"s3://{self.settings.data_bucket}"
        entry = (req.strategy_image if not bundle else  # (an image job has no bundle here)
                 bundle["entry"] + (f":{bundle['class']}" if bundle.get("class") else ""))
        try:
            config = RunConfig(initial_cash=req.initial_cash,
                               latency_ns=round(req.latency_ms * 1_000_000),
                               slippage_bps=req.slippage_bps, commission=req.commission,
                               seed=req.seed, mode=req.mode, fill_model=req.fill_model,
                               max_participation=req.max_participation,
                               cancel_latency=req.cancel_latency)
            spec = BacktestSpec.parse({"strategy": entry, "data_url": data_url,
                                       "symbols": req.symbols, "start": req.start_date,
                                       "end": req.end_date, "params": params, "config": config,
                                       "events": req.events})
        except (TickreplayError, ValueError) as e:
            raise InvalidRequest(str(e).replace("field 'start'", "field 'start_date'")
                                 .replace("field 'end'", "field 'end_date'")) from None
        store = open_store(data_url, self.settings)
        missing = await self._s3(lambda: missing_symbols(store, list(spec.symbols), spec.start,
                                                          spec.end, events=spec.kinds()),
                                 "list the catalog")
        span = f"between {spec.start} and {spec.end}"
        if missing and (len(missing) == len(spec.symbols) or not req.allow_missing):
            raise InvalidRequest(f"symbols: no data for {','.join(missing)} {span}")
        if missing:
            spec = spec.model_copy(update={"symbols": tuple(s for s in spec.symbols
                                                            if s not in missing)})
        return spec.model_dump(mode="json")

    async def submit(self, user: UserInfo, req: JobRequest, idempotency_key: str | None
                     ) -> tuple[dict[str, Any], bool]:
        """Record and start a backtest; ``(job, created)``.

        The same Idempotency-Key (or job id) with the same body returns the job already made;
        with another body it is a :class:`Conflict`.
        """
        digest = request_digest(req.model_dump(mode="json"))
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise InvalidRequest("Idempotency-Key: 1 to 200 characters")
            existing = await asyncio.to_thread(self.store.by_idempotency_key, user,
                                               idempotency_key)
            if existing is not None:
                return _same_body(existing, digest), False
        if req.strategy is not None:
            bundle = await self._bundle(req.strategy)
            params = await self._params(req.strategy, bundle, req.params)
        else:  # an image: its code runs only in its pod, which validates the params
            bundle, params = {}, dict(req.params)
        spec = await self._spec(req, bundle, params)
        job_id = req.job_id or new_job_id()
        try:
            created = await asyncio.to_thread(
                self.store.create_job, user, job_id, spec, req.strategy or "",
                idempotency_key=idempotency_key, request_sha256=digest)
        except StoreError:  # the same key won a race a moment ago
            existing = await asyncio.to_thread(self.store.by_idempotency_key, user,
                                               idempotency_key or "")
            if existing is None:
                raise
            return _same_body(existing, digest), False
        if not created:
            theirs = await asyncio.to_thread(self.store.job_record, job_id)
            if theirs is None or theirs["user"] != user.name:
                raise Conflict(f"job_id: {job_id!r} is taken")
            if theirs["request_sha256"] != digest:
                raise Conflict(f"job_id: job {job_id} exists with a different body")
            theirs.pop("request_sha256")
            return theirs, False
        await self._start(user, job_id, spec, bundle, req)
        job = await asyncio.to_thread(self.store.job, job_id, user)
        assert job is not None
        return job, True

    def _job_input(self, user: UserInfo, job_id: str, spec: dict[str, Any],
                   bundle: dict[str, Any], req: JobRequest) -> Any:
        from tickreplay.workflows.types import JobInput, JobOptions

        options = JobOptions(checkpoint_every_s=req.checkpoint_every_s,
                             stall_timeout_s=req.stall_timeout_s, deadline_s=req.deadline_s)
        return JobInput(job_id, spec, bundle, options, tracked=True, user=user.name,
                        strategy_digest=req.strategy or "",
                        strategy_image=req.strategy_image or "")

    async def _start(self, user: UserInfo, job_id: str, spec: dict[str, Any],
                     bundle: dict[str, Any], req: JobRequest) -> None:
        """Start the job's workflow; if Temporal refuses, the PENDING row is removed again
        (the caller gets 503 and may retry: nothing half-made stays behind)."""
        from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
        from temporalio.exceptions import WorkflowAlreadyStartedError

        from tickreplay.jobs.operations import INPUT_DIGEST_MEMO, input_digest
        from tickreplay.workflows.search import job_attributes
        from tickreplay.workflows.types import JobResult

        job = self._job_input(user, job_id, spec, bundle, req)
        try:
            client = await self.temporal()
            # FAIL, not USE_EXISTING: the row is new, so a workflow already under this id is
            # someone else's (a job started straight on Temporal) and must not be adopted.
            await client.start_workflow(
                "BacktestWorkflow", job, id=job_id, task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                memo={INPUT_DIGEST_MEMO: input_digest(job)}, result_type=JobResult,
                search_attributes=job_attributes(user.name, PENDING,
                                                 req.strategy or req.strategy_image or ""))
        except Exception as e:
            await asyncio.to_thread(self.store.delete_unstarted_job, job_id)
            if isinstance(e, TickreplayError):
                raise
            if isinstance(e, WorkflowAlreadyStartedError):
                raise Conflict(f"job_id: {job_id!r} is taken") from None
            raise Unavailable(f"could not start the job's workflow: {e}") from None

    # ------------------------------------------------------------------------- reading
    async def _visible_job(self, user: UserInfo, job_id: str) -> dict[str, Any]:
        """The job's row if ``user`` may see it; NotFound alike for a missing or foreign one."""
        job = await asyncio.to_thread(self.store.job, job_id, user)
        if job is None:
            raise NotFound(f"job_id: no job {job_id!r}")
        return job

    async def _visible_sweep(self, user: UserInfo, sweep_id: str) -> dict[str, Any]:
        sw = await asyncio.to_thread(self.store.sweep, sweep_id, user)
        if sw is None:
            raise NotFound(f"sweep_id: no sweep {sweep_id!r}")
        return sw

    async def get(self, user: UserInfo, job_id: str, *, live: bool = True) -> dict[str, Any]:
        """The job, with live progress from its workflow while it is pending or running."""
        job = await self._visible_job(user, job_id)
        job["progress"] = {}
        job["links"] = {name: f"/v1/jobs/{job_id}/{name}" for name in
                        ("trades", "equity", "metrics", "logs", "manifest")}
        if live and job["status"] in (PENDING, RUNNING):
            try:
                from tickreplay.jobs.operations import status

                st = await asyncio.wait_for(status(await self.temporal(), job_id), 5)
            except Exception:  # noqa: BLE001 - progress is best effort; the row stands
                st = {}
            job["stage"] = st.get("stage")
            job["placements"] = st.get("placements")
            sim_ts = st.get("sim_ts") or 0
            job["progress"] = {
                "ticks_done": st.get("ticks_done", 0), "ticks_total": st.get("ticks_total", 0),
                "sim_time": dt.datetime.fromtimestamp(sim_ts / 1e9, tz=dt.UTC).isoformat()
                if sim_ts else None}
        elif job["status"] == "SUCCEEDED":
            ticks = (job.get("metrics") or {}).get("ticks")
            job["progress"] = {"ticks_done": ticks, "ticks_total": ticks}
        return job

    async def list(self, user: UserInfo, status: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        from tickreplay.db.models import STATUSES

        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status: must be one of {', '.join(STATUSES)}")
        if not 1 <= limit <= 500:
            raise InvalidRequest("limit: must be between 1 and 500")
        after = decode_cursor(cursor) if cursor else None
        jobs = await asyncio.to_thread(self.store.jobs, user, status=status, limit=limit,
                                       after=after)
        for j in jobs:
            j["progress"], j["links"] = {}, {}
        return jobs, encode_cursor(jobs[-1]) if len(jobs) == limit else None

    async def cancel(self, user: UserInfo, job_id: str) -> dict[str, Any]:
        """Ask the job's workflow to cancel (its runner is stopped; it ends CANCELLED)."""
        job = await self._visible_job(user, job_id)
        if job["status"] in TERMINAL:
            raise Conflict(f"job {job_id} has already finished ({job['status']})")
        await self._request_cancel(job_id, lambda: self.store.set_status(
            job_id, "CANCELLED", error="cancelled before its workflow started"))
        return {"job_id": job_id, "status": "CANCELLING"}

    async def _request_cancel(self, workflow_id: str, never_started: Any) -> None:
        """Ask Temporal to cancel ``workflow_id``; if it has no workflow (a sweep point not
        started yet), ``never_started()`` records the end in the database instead."""
        from temporalio.service import RPCError, RPCStatusCode

        try:
            await (await self.temporal()).get_workflow_handle(workflow_id).cancel()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise Unavailable(f"could not cancel {workflow_id}: {e}") from None
            await asyncio.to_thread(never_started)

    async def artifact(self, user: UserInfo, job_id: str, name: str) -> Path:
        """A verified local copy of one result file of a SUCCEEDED job, by its URL name."""
        if name not in ARTIFACTS:
            raise NotFound(f"no result file {name!r}; one of {', '.join(ARTIFACTS)}")
        return await self.result_file(user, job_id, ARTIFACTS[name])

    async def result_file(self, user: UserInfo, job_id: str, filename: str) -> Path:
        """A verified local copy of ``filename``: ``manifest.json`` or a file it lists."""
        job = await self._visible_job(user, job_id)
        if job["status"] != "SUCCEEDED":
            raise Conflict(f"job {job_id} is {job['status']}: results exist once it SUCCEEDED")
        local = self.settings.home / "api-results" / job_id
        lock = self._downloads.setdefault(job_id, asyncio.Lock())
        async with lock:
            if not (local / "manifest.json").is_file():
                await self._s3(lambda: self._download(job_id, local), "read the results")
        listed = json.loads((local / "manifest.json").read_text()).get("files", {})
        if filename != "manifest.json" and filename not in listed:
            raise NotFound(f"job {job_id} has no result file {filename!r}; its files: "
                           f"{', '.join(sorted(listed))}")
        return local / filename

    def _download(self, job_id: str, local: Path) -> None:
        """Download and verify (signature, file list, hashes) into ``local``, atomically."""
        from tickreplay.jobs.operations import download_results

        tmp = local.with_name(f".{job_id}-{uuid.uuid4().hex[:8]}")
        try:
            download_results(self.settings, job_id, tmp)
            tmp.rename(local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def logs(self, user: UserInfo, job_id: str) -> dict[str, Any]:
        """Events, the error with its traceback, and the strategy's log records."""
        from tickreplay.jobs.operations import job_logs

        await self._visible_job(user, job_id)  # 404 unless the caller may see it
        logs = await self._s3(lambda: job_logs(self.settings, job_id), "read the logs")
        logs["db_events"] = await asyncio.to_thread(self.store.events, job_id)
        return dict(logs)

    async def watch(self, user: UserInfo, job_id: str, interval: float = 0.5
                    ) -> AsyncIterator[dict[str, Any]]:
        """The job each time its status or progress changes, until it has ended."""
        last: Any = None
        while True:
            job = await self.get(user, job_id)
            seen = (job["status"], job.get("stage"), json.dumps(job["progress"], default=str))
            if seen != last:
                last = seen
                yield job
            if job["status"] in TERMINAL:
                return
            await asyncio.sleep(interval)

    # -------------------------------------------------------------------------- sweeps
    async def submit_sweep(self, user: UserInfo, req: SweepRequest) -> dict[str, Any]:
        """Record every grid point as a PENDING job and start the SweepWorkflow."""
        from tickreplay.workflows.types import grid_points, sweep_job_id

        keys = sorted(req.grid)
        if any(not req.grid[k] for k in keys):
            raise InvalidRequest("grid: every axis needs at least one value")
        points = grid_points(req.grid)
        if len(points) > MAX_SWEEP_POINTS:
            raise TooLarge(f"grid: {len(points)} points; at most {MAX_SWEEP_POINTS}")
        if req.strategy is None:
            raise InvalidRequest("strategy_image: a sweep needs an uploaded strategy (its "
                                 "grid is checked against the strategy's Params)")
        bundle = await self._bundle(req.strategy)
        base_params = await self._params(req.strategy, bundle, req.params)
        checked = await self._check(req.strategy, bundle, [{**base_params, **p} for p in points])
        for point, result in zip(points, checked):
            if isinstance(result, str):
                raise InvalidRequest(f"grid: {point}: {result}")
        spec = await self._spec(req, bundle, base_params)
        typed = {k: [] for k in keys}  # type: dict[str, list[Any]]
        for result in checked:
            assert isinstance(result, dict)
            for k in keys:
                if result[k] not in typed[k]:
                    typed[k].append(result[k])
        sweep_id = new_job_id("sweep")
        # The rows the workflow will start: the same ids over the same order of the grid.
        jobs = [(sweep_job_id(sweep_id, i), {**spec, "params": {**base_params, **p}})
                for i, p in enumerate(grid_points(typed))]
        await asyncio.to_thread(self.store.create_sweep, user, sweep_id,
                                req.model_dump(mode="json"), jobs, req.strategy)
        await self._start_sweep(user, sweep_id, spec, bundle, req, typed, [j for j, _ in jobs])
        return {"sweep_id": sweep_id, "jobs": [j for j, _ in jobs]}

    async def _start_sweep(self, user: UserInfo, sweep_id: str, spec: dict[str, Any],
                           bundle: dict[str, Any], req: SweepRequest,
                           grid: dict[str, list[Any]], job_ids: list[str]) -> None:
        from temporalio.common import WorkflowIDConflictPolicy

        from tickreplay.workflows.search import job_attributes
        from tickreplay.workflows.types import SweepInput, SweepResult

        sweep = SweepInput(sweep_id, self._job_input(user, sweep_id, spec, bundle, req), grid,
                           req.max_concurrent, req.metric, not req.minimize)
        client = await self.temporal()
        try:
            await client.start_workflow(
                "SweepWorkflow", sweep, id=sweep_id, task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                result_type=SweepResult,
                search_attributes=job_attributes(user.name, PENDING, req.strategy))
        except Exception as e:  # noqa: BLE001 - the rows say what was asked; mark them failed
            for job_id in job_ids:
                await asyncio.to_thread(self.store.set_status, job_id, "FAILED",
                                        error=f"the sweep could not start: {e}")
            await asyncio.to_thread(self.store.finish_sweep, sweep_id, "FAILED", {})
            raise Unavailable(f"could not start the sweep's workflow: {e}") from None

    async def cancel_sweep(self, user: UserInfo, sweep_id: str) -> dict[str, Any]:
        """Cancel a sweep's workflow: its running points are cancelled, the rest end with it."""
        sw = await self._visible_sweep(user, sweep_id)
        if sw["status"] in TERMINAL:
            raise Conflict(f"sweep {sweep_id} has already finished ({sw['status']})")
        await self._request_cancel(sweep_id, lambda: self.store.finish_sweep(
            sweep_id, "CANCELLED", {}))
        return {"sweep_id": sweep_id, "status": "CANCELLING"}

    async def sweep(self, user: UserInfo, sweep_id: str) -> dict[str, Any]:
        sw = await self._visible_sweep(user, sweep_id)
        if sw["status"] not in TERMINAL and any(j["status"] != PENDING for j in sw["jobs"]):
            sw["status"] = RUNNING
        return sw

