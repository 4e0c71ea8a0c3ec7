"""The gRPC job API over real gRPC against the embedded stack (issue 13): a real grpc.aio server
(:func:`tickreplay.api.grpc_server.create_server`, as ``tickreplay api`` wires it) on a free
port, real Temporal dev server, real SeaweedFS, a real worker running the backtests, a real
SQLite metadata database, and the REST app beside it (uvicorn) to compare answers with.

Submit + WatchJob streaming to SUCCEEDED (same result hash as REST), GetJob, ListJobs pages,
CancelJob, idempotency (also across REST and gRPC), UNAUTHENTICATED, NOT_FOUND across users,
the INVALID_ARGUMENT cases, the health service, server reflection and serve_grpc's lifecycle.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from apikit import END, START, SYMBOLS, ApiStack, in_process_worker, serve_api, stack_settings
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tickreplay import GRPC_FORK_SAFE as _FORK_SAFE  # see tickreplay/__init__.py
from tickreplay.api.grpc_server import CODE_METADATA, create_server, serve_grpc, struct_to_dict
from tickreplay.api.service import JobService
from tickreplay.errors import StackError
from tickreplay.settings import Settings
from tickreplay.stack.ports import free_port
from tickreplay.v1 import jobs_pb2 as pb
from tickreplay.v1 import jobs_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
Code = grpc.StatusCode


@contextmanager
def grpc_server_thread(service: JobService) -> Iterator[int]:
    """``create_server`` started in a thread with its own event loop (the REST app's service
    lives in uvicorn's loop, so this one gets a JobService of its own); yields the port."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    errors: list[BaseException] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            server = create_server(service, "127.0.0.1", port)
            await server.start()
        except BaseException as e:
            errors.append(e)
            raise
        finally:
            ready.set()
        await stop.wait()
        await server.stop(5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30) and not errors, f"the gRPC server did not start: {errors}"
    try:
        yield port
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def api(s3_server: Settings, temporal_address: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    assert _FORK_SAFE, ("grpc was imported before GRPC_ENABLE_FORK_SUPPORT=false was set: "
                        "children forked here would crash; import tickreplay first")
    settings = stack_settings(s3_server, temporal_address, tmp_path_factory.mktemp("apigrpc"))
    with serve_api(settings, users=("alice", "bob", "carol")) as stack, \
            in_process_worker(settings):
        stack.digests["sma"] = stack.upload("sma_cross.py")
        yield stack


@pytest.fixture(scope="module")
def port(api: ApiStack) -> Iterator[int]:
    with grpc_server_thread(JobService(api.store, api.settings)) as p:
        yield p


@pytest.fixture(scope="module")
def channel(port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(channel)


def auth(api: ApiStack, who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api.tokens[who]}"),)


def request(digest: str, **over: Any) -> pb.SubmitBacktestRequest:
    """The gRPC twin of :meth:`ApiStack.body` (same values, same defaults)."""
    params = Struct()
    params.update(over.pop("params", {"fast": 10, "slow": 80}))
    fields: dict[str, Any] = {"strategy": digest, "symbols": SYMBOLS, "start_date": START,
                              "end_date": END, "params": params, "latency_ms": 1,
                              "slippage_bps": 1.0, "commission": "per_share=0.005,min=1",
                              "checkpoint_every_s": 1, **over}
    return pb.SubmitBacktestRequest(**fields)


def watch(stub: pb_grpc.JobServiceStub, api: ApiStack, job_id: str, who: str = "alice",
          timeout: float = 180) -> list[pb.Job]:
    """Every message of WatchJob until the stream ends (it must end with a terminal job)."""
    jobs = list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=auth(api, who),
                              timeout=timeout))
    assert jobs and jobs[-1].status in TERMINAL, jobs
    return jobs


def refused(call: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    """The error of an RPC that must fail (a streaming one is read to its end)."""
    with pytest.raises(grpc.RpcError) as info:
        out = call(*args, **kw)
        if not hasattr(out, "DESCRIPTOR"):  # a stream: the error comes while reading
            list(out)
    return info.value


def trailing_code(e: grpc.RpcError) -> str | None:
    return dict(e.trailing_metadata() or ()).get(CODE_METADATA)


@pytest.fixture(scope="module")
def succeeded(api: ApiStack, stub: pb_grpc.JobServiceStub) -> tuple[str, list[pb.Job]]:
    """A job submitted over gRPC and watched to its end: (job id, every streamed message)."""
    r = stub.SubmitBacktest(request(api.digests["sma"]), metadata=auth(api, "alice"))
    assert r.created and r.status == "PENDING" and r.job_id.startswith("bt-")
    return r.job_id, watch(stub, api, r.job_id)


def test_submit_and_watch_stream_progress_until_succeeded(
        api: ApiStack, succeeded: tuple[str, list[pb.Job]]) -> None:
    job_id, stream = succeeded
    assert len(stream) >= 2 and all(j.job_id == job_id for j in stream)
    assert stream[0].status in ("PENDING", "RUNNING")
    statuses = [j.status for j in stream]
    order = ["PENDING", "RUNNING", "SUCCEEDED"]
    assert statuses == sorted(statuses, key=order.index), statuses  # never goes back
    # Consecutive messages differ (status, stage or progress): a stream of changes, not polls.
    seen = [(j.status, j.stage, j.ticks_done, j.ticks_total, j.sim_time.ToNanoseconds())
            for j in stream]
    assert all(a != b for a, b in itertools.pairwise(seen)), seen
    assert all(j.stage for j in stream[:-1]), seen  # queued, run_backtest, publish_results...
    assert all(a.ticks_done <= b.ticks_done for a, b in itertools.pairwise(stream)), seen
    last = stream[-1]
    assert last.status == "SUCCEEDED" and len(last.result_hash) == 64
    assert last.metrics["ticks"] > 0 and last.ticks_done == last.ticks_total == last.metrics["ticks"]
    rest = api.http("GET", f"/v1/jobs/{job_id}").json()
    assert rest["status"] == "SUCCEEDED" and rest["result_hash"] == last.result_hash


def test_get_job_mirrors_the_rest_job(api: ApiStack, stub: pb_grpc.JobServiceStub,
                                      succeeded: tuple[str, list[pb.Job]]) -> None:
    job_id, _ = succeeded
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=auth(api, "alice"))
    rest = api.http("GET", f"/v1/jobs/{job_id}").json()
    assert job.job_id == job_id and job.user == "alice" and job.status == "SUCCEEDED"
    assert job.strategy_digest == rest["strategy_digest"] == api.digests["sma"]
    assert job.data_fingerprint == rest["data_fingerprint"] and len(job.data_fingerprint) == 64
    assert list(job.symbols) == rest["symbols"] == SYMBOLS
    assert (job.start_date, job.end_date) == (START, END)
    assert dict(job.params) == rest["params"] and job.params["fast"] == 10
    assert job.result_hash == rest["result_hash"] and job.results_path == rest["results_path"]
    assert struct_to_dict(job.metrics) == rest["metrics"] and job.metrics["ticks"] > 0
    assert struct_to_dict(job.spec) == rest["spec"] and job.error == ""
    for name in ("submitted_at", "started_at", "finished_at"):
        assert job.HasField(name), name
    assert job.submitted_at.ToDatetime() <= job.started_at.ToDatetime() \
        <= job.finished_at.ToDatetime()
    assert not job.HasField("idempotency_key") and not job.HasField("sweep_id")


def test_list_jobs_pages_like_rest(api: ApiStack, stub: pb_grpc.JobServiceStub) -> None:
    """carol's jobs, two a page: the pages concatenated are REST's full list, in order."""
    md = auth(api, "carol")
    ids = [stub.SubmitBacktest(request(api.digests["sma"], params={"fast": 4 + i, "slow": 40}),
                               metadata=md).job_id for i in range(3)]
    pages: list[str] = []
    cursor: str | None = None
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(limit=2, **({"cursor": cursor} if cursor else {})),
                             metadata=md)
        assert len(page.jobs) <= 2
        pages += [j.job_id for j in page.jobs]
        if not page.HasField("next_cursor"):
            break
        cursor = page.next_cursor
    rest = [j["job_id"] for j in api.http("GET", "/v1/jobs", "carol",
                                          params={"limit": 500}).json()["jobs"]]
    assert pages == rest and set(ids) <= set(pages)
    everything = stub.ListJobs(pb.ListJobsRequest(), metadata=md)  # unset limit: 50
    assert [j.job_id for j in everything.jobs] == rest and not everything.HasField("next_cursor")
    for job_id in ids:  # end them quickly: the module's worker stops after the tests
        try:
            stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=md)
        except grpc.RpcError as e:  # it was quicker and has already finished
            assert e.code() == Code.FAILED_PRECONDITION, e
    ended = {job_id: watch(stub, api, job_id, "carol")[-1].status for job_id in ids}
    assert set(ended.values()) <= set(TERMINAL)
    done = stub.ListJobs(pb.ListJobsRequest(status="CANCELLED"), metadata=md).jobs
    assert all(j.status == "CANCELLED" for j in done)
    assert {j for j, s in ended.items() if s == "CANCELLED"} == {j.job_id for j in done}


def test_list_jobs_refuses_bad_queries(api: ApiStack, stub: pb_grpc.JobServiceStub) -> None:
    md = auth(api, "alice")
    for req, field in ((pb.ListJobsRequest(status="DONE"), "status"),
                       (pb.ListJobsRequest(limit=0), "limit"),
                       (pb.ListJobsRequest(limit=501), "limit"),
                       (pb.ListJobsRequest(cursor="garbage"), "cursor")):
        e = refused(stub.ListJobs, req, metadata=md)
        assert e.code() == Code.INVALID_ARGUMENT and field in e.details(), (req, e.details())
        assert trailing_code(e) == "InvalidRequest"


def test_cancel_a_running_job(api: ApiStack, stub: pb_grpc.JobServiceStub) -> None:
    md = auth(api, "bob")
    job_id = stub.SubmitBacktest(request(api.digests["sma"], params={"fast": 3, "slow": 30}),
                                 metadata=md).job_id
    r = stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=md)
    assert (r.job_id, r.status) == (job_id, "CANCELLING")
    last = watch(stub, api, job_id, "bob")[-1]
    assert last.status == "CANCELLED" and last.HasField("finished_at")
    assert api.http("GET", f"/v1/jobs/{job_id}", "bob").json()["status"] == "CANCELLED"
    # Cancelling a finished job: nothing exists twice, its state forbids it.
    e = refused(stub.CancelJob, pb.CancelJobRequest(job_id=job_id), metadata=md)
    assert e.code() == Code.FAILED_PRECONDITION and "already finished" in e.details()
    assert trailing_code(e) == "Conflict"


def test_idempotency_same_body_same_job_other_body_already_exists(
        api: ApiStack, stub: pb_grpc.JobServiceStub) -> None:
    md = auth(api, "alice")
    key = f"k-{time.time_ns()}"
    req = request(api.digests["sma"], params={"fast": 7, "slow": 60}, idempotency_key=key)
    first = stub.SubmitBacktest(req, metadata=md)
    second = stub.SubmitBacktest(req, metadata=md)
    assert first.created and not second.created and first.job_id == second.job_id
    other = request(api.digests["sma"], params={"fast": 7, "slow": 60}, idempotency_key=key,
                    seed=9)
    e = refused(stub.SubmitBacktest, other, metadata=md)
    assert e.code() == Code.ALREADY_EXISTS and "Idempotency-Key" in e.details()
    assert trailing_code(e) == "Conflict"
    # Keys are per user: bob's same key is his own, new job.
    bobs = stub.SubmitBacktest(req, metadata=auth(api, "bob"))
    assert bobs.created and bobs.job_id != first.job_id

    # The same body over REST and gRPC is the same body: a REST key reused over gRPC with the
    # equal message returns the REST job (numbers through Struct, defaults, commission).
    rest_key = f"r-{time.time_ns()}"
    rest = api.http("POST", "/v1/jobs", json=api.body(api.digests["sma"]),
                    headers={"Idempotency-Key": rest_key})
    assert rest.status_code == 202, rest.text
    twin = stub.SubmitBacktest(request(api.digests["sma"], idempotency_key=rest_key), metadata=md)
    assert not twin.created and twin.job_id == rest.json()["job_id"]

    # A chosen job id behaves like a key.
    chosen = f"mine-{time.time_ns()}"
    a = stub.SubmitBacktest(request(api.digests["sma"], job_id=chosen), metadata=md)
    b = stub.SubmitBacktest(request(api.digests["sma"], job_id=chosen), metadata=md)
    assert a.job_id == b.job_id == chosen and a.created and not b.created
    e = refused(stub.SubmitBacktest, request(api.digests["sma"], job_id=chosen, seed=3),
                metadata=md)
    assert e.code() == Code.ALREADY_EXISTS and chosen in e.details()
    e = refused(stub.SubmitBacktest, request(api.digests["sma"], job_id=chosen),
                metadata=auth(api, "bob"))
    assert e.code() == Code.ALREADY_EXISTS and "taken" in e.details()
    for job_id, who in ((first.job_id, "alice"), (bobs.job_id, "bob"), (twin.job_id, "alice"),
                        (chosen, "alice")):
        assert watch(stub, api, job_id, who)[-1].status == "SUCCEEDED"


def test_every_rpc_needs_a_valid_bearer_token(api: ApiStack, stub: pb_grpc.JobServiceStub,
                                              succeeded: tuple[str, list[pb.Job]]) -> None:
    job_id, _ = succeeded
    calls = ((stub.SubmitBacktest, request(api.digests["sma"])),
             (stub.GetJob, pb.GetJobRequest(job_id=job_id)),
             (stub.ListJobs, pb.ListJobsRequest()),
             (stub.CancelJob, pb.CancelJobRequest(job_id=job_id)),
             (stub.WatchJob, pb.WatchJobRequest(job_id=job_id)))
    before = api.store.counts()
    for call, req in calls:
        for md in ((), (("authorization", "Bearer trk_forged"),),
                   (("authorization", f"Basic {api.tokens['alice']}"),),
                   (("authorization", api.tokens["alice"]),)):
            e = refused(call, req, metadata=md)
            assert e.code() == Code.UNAUTHENTICATED and "bearer token" in e.details(), (call, md)
    assert api.store.counts() == before
    # The scheme is case-insensitive, as in REST.
    md = (("authorization", f"bearer {api.tokens['alice']}"),)
    assert stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md).job_id == job_id


def test_another_users_job_is_not_found(api: ApiStack, stub: pb_grpc.JobServiceStub,
                                        succeeded: tuple[str, list[pb.Job]]) -> None:
    job_id, _ = succeeded
    bob = auth(api, "bob")
    for call, req in ((stub.GetJob, pb.GetJobRequest(job_id=job_id)),
                      (stub.CancelJob, pb.CancelJobRequest(job_id=job_id)),
                      (stub.WatchJob, pb.WatchJobRequest(job_id=job_id))):
        e = refused(call, req, metadata=bob)
        assert e.code() == Code.NOT_FOUND and job_id in e.details()
        assert trailing_code(e) == "NotFound"
    # ... exactly like a job that does not exist.
    e = refused(stub.GetJob, pb.GetJobRequest(job_id="nope"), metadata=bob)
    assert e.code() == Code.NOT_FOUND
    listed = stub.ListJobs(pb.ListJobsRequest(limit=500), metadata=bob).jobs
    assert job_id not in {j.job_id for j in listed}
    # The admin sees it.
    assert stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=auth(api, "root")).user == "alice"


@pytest.mark.parametrize("change, field", [
    ({"symbols": []}, "symbols"),
    ({"symbols": ["ZZZ"]}, "symbols"),  # unknown symbol: no data
    ({"symbols": ["AAA", "ZZZ"]}, "symbols"),
    ({"start_date": "2023-01-02", "end_date": "2023-01-31"}, "symbols"),  # no data in range
    ({"start_date": "not-a-date"}, "start_date"),
    ({"start_date": "2024-02-30"}, "start_date"),
    ({"start_date": ""}, "start_date"),  # unset
    ({"end_date": "2024-03-01"}, "end_date"),  # before start_date
    ({"strategy": "0" * 64}, "strategy"),
    ({"strategy": "abc"}, "strategy"),
    ({"params": {"fast": "x"}}, "params"),
    ({"params": {"nope": 1}}, "params"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"initial_cash": 0}, "initial_cash"),
    ({"seed": -1}, "seed"),
    ({"commission": "per_share=x"}, "commission"),
    ({"mode": "fast"}, "mode"),
    ({"checkpoint_every_s": 0}, "checkpoint_every_s"),
    ({"job_id": "../escape"}, "job_id"),
    ({"idempotency_key": ""}, "idempotency_key"),
])
def test_invalid_submissions_are_invalid_argument_naming_the_field(
        api: ApiStack, stub: pb_grpc.JobServiceStub, change: dict[str, Any], field: str) -> None:
    before = api.store.counts()
    e = refused(stub.SubmitBacktest, request(api.digests["sma"], **change),
                metadata=auth(api, "alice"))
    assert e.code() == Code.INVALID_ARGUMENT, e
    assert field in e.details(), e.details()
    assert trailing_code(e) == "InvalidRequest"
    assert api.store.counts() == before  # nothing recorded, no workflow started


def test_health_says_serving_without_a_token(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tickreplay.v1.JobService"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service
    e = refused(health.Check, health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert e.code() == Code.NOT_FOUND


def test_reflection_lists_and_describes_the_job_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services=""),
           reflection_pb2.ServerReflectionRequest(
               file_containing_symbol="tickreplay.v1.JobService")]
    listed, described = list(stub.ServerReflectionInfo(iter(ask), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"tickreplay.v1.JobService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in
             described.file_descriptor_response.file_descriptor_proto]
    jobs = next(f for f in files if f.name == "tickreplay/v1/jobs.proto")
    assert [m.name for m in jobs.service[0].method] == [
        "SubmitBacktest", "GetJob", "ListJobs", "CancelJob", "WatchJob"]


def test_serve_grpc_serves_until_stopped_and_a_taken_port_is_an_error(
        api: ApiStack, port: int) -> None:
    async def main() -> None:
        service = JobService(api.store, api.settings)
        with pytest.raises(StackError, match="cannot listen"):  # no silent SO_REUSEPORT split
            create_server(service, "127.0.0.1", port)
        stop, started = asyncio.Event(), asyncio.Event()
        own = free_port()
        task = asyncio.create_task(serve_grpc(service, "127.0.0.1", own, stop=stop,
                                              started=started))
        await asyncio.wait_for(started.wait(), 20)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{own}") as ch:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="tickreplay.v1.JobService"), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
            page = await pb_grpc.JobServiceStub(ch).ListJobs(
                pb.ListJobsRequest(limit=1), metadata=auth(api, "alice"), timeout=10)
            assert len(page.jobs) <= 1
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(main())
