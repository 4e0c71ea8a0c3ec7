"""Python SDK of the tickreplay job API: :class:`Client` (blocking) and :class:`AsyncClient`.

Upload a strategy, submit a backtest, follow it, and read its results as Arrow tables::

    from tickreplay.client import Client

    with Client("http://127.0.0.1:8000", token) as api:
        job = api.submit("examples/sma_cross.py", ["AAPL", "MSFT"], "2024-01-02", "2024-03-29",
                         {"fast": 20, "slow": 200}, latency_ms=1,
                         commission="per_share=0.005,min=1")
        job.wait(on_progress=lambda j: print(j.status, j.progress.ticks_done))
        trades = job.trades().to_pandas()         # pyarrow.Table -> pandas.DataFrame
        manifest = job.download("results/")       # every file checked against its sha256
        for old in api.jobs(status="SUCCEEDED"):  # all pages, oldest first
            print(old.job_id, old.result_hash)

The same with asyncio (every method is a coroutine, ``jobs`` an async iterator)::

    from tickreplay.client import AsyncClient

    async with AsyncClient(url, token) as api:
        job = await api.submit("examples/sma_cross.py", "AAPL", "2024-01-02", "2024-01-31")
        await job.wait()
        equity = await job.equity()
        async for j in api.jobs(limit=20):
            ...

Every refusal of the API (and an API that cannot be reached) raises :class:`ApiError`, whose
message is the server's own (a 422 names the field: ``symbols: no data for ZZZ ...``).

Why each operation is written once, as a generator: an operation (submit = upload + post,
wait = poll + pause, download = fetch + verify + write) yields the steps it needs, an HTTP
request or a pause, and receives their answers (the "sans-I/O" pattern). :class:`Client` and
:class:`AsyncClient` differ only in the few lines that carry those steps out, blocking or
awaiting, so the two cannot drift apart in what they send, how they page, wait or verify.

This module sits in the same layer as ``tickreplay.api`` and never imports it: the SDK talks
to the API over HTTP only, so it works against any deployment of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from tickreplay import __version__
from tickreplay.errors import RequestError, ResultsError
from tickreplay.settings import Settings

__all__ = ["TERMINAL", "ApiError", "AsyncClient", "AsyncJob", "AsyncSweep", "Client", "Job",
           "JobInfo", "Progress", "Sweep", "SweepInfo"]

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
"""Statuses a job (or sweep) never leaves."""

DEFAULT_TIMEOUT = 60.0
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MANIFEST = "manifest.json"
# The error code of a refusal that carries none (FastAPI's own 401 and 422, a proxy's 502).
_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
          409: "Conflict", 413: "TooLarge", 422: "InvalidRequest", 429: "TooManyRequests",
          502: "Unavailable", 503: "Unavailable", 504: "Unavailable"}
_RETRYABLE = frozenset({0, 429, 502, 503, 504})

T = TypeVar("T")


class ApiError(RequestError):
    """A request the job API refused, or an API that could not be reached.

    Attributes:
        status: The HTTP status (401, 404, 409, 413, 422, 503, ...); 0 when no answer came
            (connection refused, timeout).
        code: The server's error code (``NotFound``, ``Conflict``, ``InvalidRequest``, ...),
            or one derived from the status when the answer carried none (``Unauthorized``).
        message: The server's detail; for a 422 of FastAPI's validation, every ``loc: msg``
            joined by ``; ``, so it names the field.
        retryable: Whether the same request may succeed later (503, no answer).

    A :class:`tickreplay.errors.RequestError` (so ``except TickreplayError`` catches it too);
    ``code`` and ``http`` are set per instance, from the answer: the class itself defines no
    code of its own, since the codes are the server's (``errors.py`` owns them all).

    Example::

        try:
            api.job("bt-nope")
        except ApiError as e:
            assert e.status == 404 and e.code == "NotFound"
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Instance values shadowing RequestError's class defaults: what this answer said.
        self.code = code  # type: ignore[misc]
        self.http = status  # type: ignore[misc]
        self.retryable = status in _RETRYABLE  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (multiprocessing, a worker pool) with the three arguments __init__ takes.
        return ApiError, (self.status, self.code, self.message)


# --------------------------------------------------------------------------- the records
def _when(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _day(value: Any) -> dt.date | None:
    return dt.date.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass
class Progress:
    """How far a running job is: ticks simulated of the total, and the simulated time."""

    ticks_done: int = 0
    ticks_total: int = 0
    sim_time: dt.datetime | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> Progress:
        doc = doc or {}
        return cls(int(doc.get("ticks_done") or 0), int(doc.get("ticks_total") or 0),
                   _when(doc.get("sim_time")))

    @property
    def fraction(self) -> float | None:
        """Done / total, or None while the total is not known yet."""
        return self.ticks_done / self.ticks_total if self.ticks_total else None


@dataclass
class JobInfo:
    """A job as the API shows it (``GET /v1/jobs/{id}``). Fields the answer lacks keep their
    defaults (a just-submitted job has only ``job_id`` and ``status`` until refreshed);
    ``raw`` is the answer's JSON exactly as served. ``metrics`` is the result's summary as
    the job record carries it (None until it SUCCEEDED); the handles' ``fetch_metrics()``
    reads ``metrics.json`` itself."""

    job_id: str
    status: str
    stage: str | None = None
    progress: Progress = field(default_factory=Progress)
    metrics: dict[str, Any] | None = None
    result_hash: str = ""
    results_path: str = ""
    error: str = ""
    user: str | None = None
    strategy_digest: str = ""
    data_fingerprint: str = ""
    symbols: list[str] = field(default_factory=list)
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    params: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    submitted_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    idempotency_key: str | None = None
    sweep_id: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        """True once the job has ended (SUCCEEDED, FAILED or CANCELLED)."""
        return self.status in TERMINAL

    def _update(self, doc: Mapping[str, Any]) -> None:
        """Take the fields of an answer; unknown ones (a newer server's) stay in ``raw`` only."""
        self.raw = dict(doc)
        for f in fields(JobInfo):
            if f.name == "raw" or f.name not in doc:
                continue
            value = doc[f.name]
            if f.name == "progress":
                value = Progress.from_json(value)
            elif f.name in ("start_date", "end_date"):
                value = _day(value)
            elif f.name in ("submitted_at", "started_at", "finished_at"):
                value = _when(value)
            elif value is None and f.name in ("result_hash", "results_path", "error"):
                value = ""
            setattr(self, f.name, value)


@dataclass
class SweepInfo:
    """A sweep as the API shows it: its points (``jobs``) and, once done, the ranked ``rows``
    (``rank, job_id, params, status, value, metrics, result_hash``, best first)."""

    sweep_id: str
    status: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    submitted_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def _update(self, doc: Mapping[str, Any]) -> None:
        self.raw = dict(doc)
        self.status = str(doc.get("status", self.status))
        jobs = doc.get("jobs") or []
        self.jobs = [j if isinstance(j, dict) else {"job_id": j} for j in jobs]
        self.rows = list((doc.get("result") or {}).get("rows") or [])
        self.spec = dict(doc.get("spec") or {})
        self.submitted_at = _when(doc.get("submitted_at"))
        self.finished_at = _when(doc.get("finished_at"))


# --------------------------------------------------------------- operations (sans-I/O)
@dataclass(frozen=True)
class _Request:
    """One HTTP request an operation needs; answered with the JSON (or, ``raw``, the bytes)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] | None = None
    raw: bool = False


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Op: TypeAlias = Generator[_Request | _Sleep, Any, T]


def _job_path(job_id: str, *rest: str) -> str:
    return "/".join(("/v1/jobs", quote(job_id, safe=""), *rest))


def _symbols(symbols: str | Sequence[str]) -> list[str]:
    items = symbols.split(",") if isinstance(symbols, str) else list(symbols)
    return [s.strip() for s in items if s.strip()]


def _iso_day(value: str | dt.date) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _upload(path_or_spec: str) -> _Op[str]:
    """Read ``file.py[:Class]`` (or ``module:Class``) and upload it; its digest."""
    from tickreplay.strategy.loader import bundle_from_spec

    bundle = bundle_from_spec(path_or_spec)
    doc = yield _Request("POST", "/v1/strategies", json={
        "files": bundle.files, "entry": bundle.entry, "class": bundle.class_name})
    return str(doc["digest"])


def _digest(strategy: str) -> _Op[str]:
    """A digest as given, anything else (a path, ``file.py:Class``) uploaded first."""
    if _DIGEST.fullmatch(strategy):
        return strategy
    return (yield from _upload(strategy))


def _body(digest: str, symbols: str | Sequence[str], start: str | dt.date, end: str | dt.date,
          params: Mapping[str, Any] | None, execution: Mapping[str, Any]) -> dict[str, Any]:
    return {"strategy": digest, "symbols": _symbols(symbols), "start_date": _iso_day(start),
            "end_date": _iso_day(end), "params": dict(params or {}), **execution}


def _submit(strategy: str | None, symbols: str | Sequence[str], start: str | dt.date,
            end: str | dt.date, params: Mapping[str, Any] | None, idempotency_key: str | None,
            execution: Mapping[str, Any]) -> _Op[dict[str, Any]]:
    if strategy is None:  # a strategy image (``strategy_image=`` in execution)
        body = _body("", symbols, start, end, params, execution)
        del body["strategy"]
    else:
        body = _body((yield from _digest(strategy)), symbols, start, end, params, execution)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
    return (yield _Request("POST", "/v1/jobs", json=body, headers=headers))


def _submit_sweep(strategy: str, symbols: str | Sequence[str], start: str | dt.date,
           end: str | dt.date, grid: Mapping[str, Sequence[Any]],
           params: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> _Op[dict[str, Any]]:
    body = _body((yield from _digest(strategy)), symbols, start, end, params, extra)
    body["grid"] = {k: list(v) for k, v in grid.items()}
    return (yield _Request("POST", "/v1/sweeps", json=body))


def _get(path: str) -> _Op[dict[str, Any]]:
    return (yield _Request("GET", path))


def _poll(path: str, seen: Callable[[dict[str, Any]], None], poll: float,
          timeout: float | None) -> _Op[None]:
    """GET ``path`` every ``poll`` seconds, handing each answer to ``seen``, until its status
    is terminal; TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        doc = yield _Request("GET", path)
        seen(doc)
        if doc.get("status") in TERMINAL:
            return
        if deadline is not None and time.monotonic() + poll > deadline:
            raise TimeoutError(f"{path.rsplit('/', 1)[-1]} is still {doc.get('status')} "
                               f"after {timeout} s")
        yield _Sleep(poll)


def _bytes(job_id: str, name: str, params: dict[str, str] | None = None) -> _Op[bytes]:
    return (yield _Request("GET", _job_path(job_id, name), params=params, raw=True))


def _table(job_id: str, name: str) -> _Op[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader((yield from _bytes(job_id, name))))


def _result_file(job_id: str, name: str) -> _Op[bytes]:
    """The bytes of one result file the manifest lists (``GET /v1/jobs/{id}/files/{name}``)."""
    return (yield from _bytes(job_id, "files/" + quote(name, safe="")))


def _download(job_id: str, out_dir: str | os.PathLike[str], key: bytes | None
              ) -> _Op[dict[str, Any]]:
    """Fetch the manifest and every file it lists, check each against its sha256 (and size),
    and only then move them into ``out_dir``, ``manifest.json`` last.

    Why a staging directory and the manifest last: nothing lands in ``out_dir`` unless all of
    it verified, and a crash while moving leaves no manifest describing a partial result
    (the rule of ``results.write_results``). With ``key`` (the platform's signing key) the
    staged copy must also pass :func:`tickreplay.results.verify_results`: the signature, the
    exact file list and the recomputed result hash.
    """
    raw_manifest = yield from _bytes(job_id, "manifest")
    try:
        manifest = json.loads(raw_manifest)
        files: dict[str, Any] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise ResultsError(f"job {job_id}: the manifest is not a result manifest ({e})") from None
    for name in files:
        if name in ("", ".", "..", _MANIFEST) or "/" in name or "\\" in name:
            raise ResultsError(f"job {job_id}: the manifest lists a bad file name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=out))
    try:
        problems = []
        for name, expected in sorted(files.items()):
            data = yield from _result_file(job_id, name)
            want = expected.get("sha256") if isinstance(expected, dict) else expected
            size = expected.get("size") if isinstance(expected, dict) else None
            got = hashlib.sha256(data).hexdigest()
            if got != want or (size is not None and size != len(data)):
                problems.append(f"{name}: sha256 {got[:12]}… size {len(data)}, manifest says "
                                f"{str(want)[:12]}… size {size}")
            (staging / name).write_bytes(data)
        if problems:
            raise ResultsError(f"job {job_id}: the downloaded files do not match the "
                               "manifest: " + "; ".join(problems))
        (staging / _MANIFEST).write_bytes(raw_manifest)
        if key is not None:
            from tickreplay.results import verify_results

            verify_results(staging, key=key)
        (out / _MANIFEST).unlink(missing_ok=True)
        for name in sorted(files):
            os.replace(staging / name, out / name)
        os.replace(staging / _MANIFEST, out / _MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dict(manifest)


class _Pager:
    """The paging of ``GET /v1/jobs`` (cursor after cursor, at most ``limit`` jobs), written
    once for both clients' iterators."""

    def __init__(self, status: str | None, limit: int | None, page_size: int) -> None:
        if page_size < 1 or (limit is not None and limit < 0):
            raise ValueError("page_size must be >= 1 and limit >= 0")
        self.status, self.left, self.page_size = status, limit, page_size
        self.cursor: str | None = None
        self.finished = limit == 0

    def request(self) -> _Request | None:
        if self.finished:
            return None
        size = self.page_size if self.left is None else min(self.page_size, self.left)
        params: dict[str, Any] = {"limit": min(size, 500)}
        if self.status is not None:
            params["status"] = self.status
        if self.cursor is not None:
            params["cursor"] = self.cursor
        return _Request("GET", "/v1/jobs", params=params)

    def take(self, page: Mapping[str, Any]) -> list[dict[str, Any]]:
        jobs = list(page.get("jobs") or [])
        if self.left is not None:
            jobs = jobs[:self.left]
            self.left -= len(jobs)
        self.cursor = page.get("next_cursor")
        self.finished = not self.cursor or self.left == 0 or not jobs
        return jobs


# ------------------------------------------------------------------------------ transport
def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": f"tickreplay-sdk/{__version__}",
            "Accept": "application/json"}


def _base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the API URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _error(response: httpx.Response) -> ApiError:
    """The ApiError of a refusal, with the server's detail as its message."""
    status = response.status_code
    try:
        doc = response.json()
    except ValueError:
        doc = None
    code = _CODES.get(status, "HttpError")
    if isinstance(doc, dict) and "detail" in doc:
        detail = doc["detail"]
        code = str(doc.get("code") or code)
        if isinstance(detail, list):  # FastAPI's validation errors: [{loc, msg, ...}]
            message = "; ".join(_loc_msg(item) for item in detail)
        else:
            message = detail if isinstance(detail, str) else json.dumps(detail)
    else:
        text = " ".join(response.text.split())
        message = text[:300] or response.reason_phrase or f"HTTP {status}"
    return ApiError(status, code, message or f"HTTP {status}")


def _loc_msg(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = [str(p) for p in item.get("loc") or []]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    msg = str(item.get("msg", ""))
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def _answer(response: httpx.Response, raw: bool) -> Any:
    if response.status_code >= 400:
        raise _error(response)
    if raw:
        return response.content
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ApiError(response.status_code, "BadResponse",
                       f"{response.request.url}: the answer is not JSON") from None


def _unreachable(url: str, e: Exception) -> ApiError:
    return ApiError(0, "Unavailable", f"cannot reach the job API at {url}: "
                                      f"{type(e).__name__}: {e}")


def _settings_args(settings: Settings) -> tuple[str, str]:
    if not settings.api_url or not settings.api_token:
        raise ValueError("no job API configured: set TICKREPLAY_API_URL and "
                         "TICKREPLAY_API_TOKEN (`tickreplay up` writes them into stack.env)")
    return settings.api_url, settings.api_token


# ------------------------------------------------------------------------ blocking client
@dataclass(repr=False)
class Job(JobInfo):
    """A job of a :class:`Client`: its fields, plus methods that fetch its results.

    Example::

        job = api.submit("examples/sma_cross.py", "AAPL", "2024-01-02", "2024-01-31")
        job.wait(timeout=600)
        if job.status == "SUCCEEDED":
            df = job.trades().to_pandas()
    """

    _client: Client = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Job(job_id={self.job_id!r}, status={self.status!r}, stage={self.stage!r})"

    def refresh(self) -> Job:
        """Read the job again (status, stage, progress, metrics, ...); returns itself."""
        self._update(self._client._run(_get(_job_path(self.job_id))))
        return self

    def wait(self, poll: float = 0.5, timeout: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Refresh every ``poll`` seconds until the job has ended; returns itself.

        ``on_progress(job)`` is called after each refresh (e.g. to draw a progress bar).
        Raises TimeoutError after ``timeout`` seconds; the job keeps running.
        """
        def seen(doc: dict[str, Any]) -> None:
            self._update(doc)
            if on_progress is not None:
                on_progress(self)

        self._client._run(_poll(_job_path(self.job_id), seen, poll, timeout))
        return self

    def cancel(self) -> str:
        """Ask the job to stop (ApiError 409 once it has finished)."""
        return self._client.cancel(self.job_id)

    def trades(self) -> Any:
        """The trade list as a ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame)."""
        return self._client._run(_table(self.job_id, "trades"))

    def trades_df(self) -> Any:
        """The trade list as a ``pandas.DataFrame``."""
        return self.trades().to_pandas()

    def trades_csv(self) -> bytes:
        """The trade list as the CSV the worker wrote (bytes)."""
        return self._client._run(_bytes(self.job_id, "trades", {"format": "csv"}))

    def equity(self) -> Any:
        """The daily equity curve as a ``pyarrow.Table``."""
        return self._client._run(_table(self.job_id, "equity"))

    def fetch_metrics(self) -> dict[str, Any]:
        """``metrics.json`` of the verified result, fetched (the ``metrics`` field is the
        same summary as the job record carries it, filled by ``refresh()``/``wait()``)."""
        return self._client.metrics(self.job_id)

    def manifest(self) -> dict[str, Any]:
        """``manifest.json``: inputs, each file's sha256 and size, result_hash, signature."""
        return dict(self._client._run(_get(_job_path(self.job_id, "manifest"))))

    def logs(self) -> dict[str, Any]:
        """``events``, ``error`` (kind, message, traceback), ``strategy_logs``, ``db_events``."""
        return dict(self._client._run(_get(_job_path(self.job_id, "logs"))))

    def download(self, out_dir: str | os.PathLike[str], *, key: bytes | None = None
                 ) -> dict[str, Any]:
        """Write the result files into ``out_dir``, each checked against the manifest's
        sha256, and return the manifest. See :meth:`Client.download`."""
        return self._client.download(self.job_id, out_dir, key=key)


@dataclass(repr=False)
class Sweep(SweepInfo):
    """A sweep of a :class:`Client`; ``wait()`` until its ranked ``rows`` are there."""

    _client: Client = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sweep(sweep_id={self.sweep_id!r}, status={self.status!r})"

    def refresh(self) -> Sweep:
        self._update(self._client._run(_get(f"/v1/sweeps/{quote(self.sweep_id, safe='')}")))
        return self

    def wait(self, poll: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[Sweep], None] | None = None) -> Sweep:
        """Refresh until the sweep has ended; returns itself (TimeoutError after ``timeout``)."""
        def seen(doc: dict[str, Any]) -> None:
            self._update(doc)
            if on_progress is not None:
                on_progress(self)

        self._client._run(_poll(f"/v1/sweeps/{quote(self.sweep_id, safe='')}", seen, poll,
                                timeout))
        return self


class Client:
    """Blocking client of the job API.

    Args:
        url: The API's base URL, e.g. ``http://127.0.0.1:8000``.
        token: A bearer token (``tickreplay users add NAME`` prints one).
        timeout: Seconds an HTTP request may take (connect, and between bytes of an answer).
        transport: An ``httpx`` transport instead of the network (tests, proxies).

    Example::

        with Client.from_settings(Settings.load()) as api:   # TICKREPLAY_API_URL / _TOKEN
            job = api.submit(digest, ["AAPL"], "2024-01-02", "2024-01-31", {"fast": 5},
                             idempotency_key="nightly-2024-01")
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = _base_url(url)
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout,
                                  transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> Client:
        """A client of ``settings.api_url`` with ``settings.api_token`` (ValueError if unset)."""
        return cls(*_settings_args(settings), **kw)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --------------------------------------------------------------------- the driver
    def _step(self, step: _Request | _Sleep) -> Any:
        if isinstance(step, _Sleep):
            time.sleep(step.seconds)
            return None
        try:
            response = self._http.request(step.method, step.path, params=step.params,
                                          json=step.json, headers=step.headers)
        except httpx.HTTPError as e:
            raise _unreachable(self.url, e) from None
        return _answer(response, step.raw)

    def _run(self, op: _Op[T]) -> T:
        """Carry out an operation's steps; a step's error is raised inside the operation, so
        its ``finally`` (a staging directory's removal) runs before it propagates."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply, error = None, None
                try:
                    reply = self._step(step)
                except Exception as e:  # noqa: BLE001 - handed to the operation, re-raised there
                    error = e
        finally:
            op.close()

    def _job(self, doc: Mapping[str, Any]) -> Job:
        job = Job(str(doc["job_id"]), str(doc["status"]), _client=self)
        job._update(doc)
        return job

    def _sweep_of(self, doc: Mapping[str, Any]) -> Sweep:
        sweep = Sweep(str(doc["sweep_id"]), str(doc.get("status", "PENDING")), _client=self)
        sweep._update(doc)
        return sweep

    # ------------------------------------------------------------------ the operations
    def upload_strategy(self, path_or_spec: str) -> str:
        """Upload ``file.py[:Class]`` (or ``module:Class``); returns the digest jobs name.

        The server loads it in its sandbox first: a strategy that does not load is a 422.
        """
        return self._run(_upload(path_or_spec))

    def submit(self, strategy: str | None, symbols: str | Sequence[str], start: str | dt.date,
               end: str | dt.date, params: Mapping[str, Any] | None = None, *,
               idempotency_key: str | None = None, **execution: Any) -> Job:
        """Submit a backtest; returns at once with the job (``PENDING``; ``wait()`` on it).

        Args:
            strategy: A digest from :meth:`upload_strategy`, or a path / ``file.py:Class``
                (uploaded first); None with ``strategy_image="host/repo:tag"`` (a strategy
                image, resolved to its digest by the job's first step).
            symbols: ``["AAPL", "MSFT"]`` or ``"AAPL,MSFT"``.
            start, end: First and last day, ``"2024-01-02"`` or a date.
            params: The strategy's parameters (validated against its Params on the server).
            idempotency_key: The same key with the same body returns the same job (409 with
                another body).
            execution: Other body fields: ``latency_ms``, ``slippage_bps``, ``commission``
                (``"per_share=0.005,min=1"``), ``initial_cash``, ``seed``, ``mode``,
                ``checkpoint_every_s``, ``allow_missing``, ``job_id``.
        """
        doc = self._run(_submit(strategy, symbols, start, end, params, idempotency_key,
                                execution))
        return self._job(doc)

    def job(self, job_id: str) -> Job:
        """The job (ApiError 404 if there is none the caller may see)."""
        return self._job(self._run(_get(_job_path(job_id))))

    def jobs(self, status: str | None = None, *, limit: int | None = None,
             page_size: int = 100) -> Iterator[Job]:
        """The caller's jobs (an admin's: everyone's), oldest first, page after page.

        ``limit`` caps how many are yielded (None: all); ``page_size`` is the jobs per request.
        """
        pager = _Pager(status, limit, page_size)
        while (request := pager.request()) is not None:
            for doc in pager.take(self._run(_get_step(request))):
                yield self._job(doc)

    def cancel(self, job_id: str) -> str:
        """Ask a job to stop (it ends CANCELLED); ApiError 409 once it has finished."""
        doc = self._run(_post(_job_path(job_id, "cancel")))
        return str(doc.get("status", "CANCELLING"))

    def wait(self, job_id: str, poll: float = 0.5, timeout: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """:meth:`Job.wait` of the job ``job_id``."""
        return self.job(job_id).wait(poll, timeout, on_progress)

    def trades(self, job_id: str) -> Any:
        """The trades of a SUCCEEDED job as a ``pyarrow.Table`` (409 before)."""
        return self._run(_table(job_id, "trades"))

    def equity(self, job_id: str) -> Any:
        """The daily equity curve of a SUCCEEDED job as a ``pyarrow.Table``."""
        return self._run(_table(job_id, "equity"))

    def metrics(self, job_id: str) -> dict[str, Any]:
        return dict(self._run(_get(_job_path(job_id, "metrics"))))

    def manifest(self, job_id: str) -> dict[str, Any]:
        return dict(self._run(_get(_job_path(job_id, "manifest"))))

    def logs(self, job_id: str) -> dict[str, Any]:
        """Events, the error with its traceback, the strategy's log records, DB events."""
        return dict(self._run(_get(_job_path(job_id, "logs"))))

    def download(self, job_id: str, out_dir: str | os.PathLike[str], *,
                 key: bytes | None = None) -> dict[str, Any]:
        """Download a SUCCEEDED job's result files into ``out_dir``; returns the manifest.

        Every file the manifest lists is fetched and checked against its sha256 and size;
        on any mismatch :class:`tickreplay.errors.ResultsError` is raised and nothing is
        written to ``out_dir``. With ``key`` (the platform's signing key, which only the
        platform's operators hold) the manifest's signature and the recomputed result hash
        are checked as well, exactly as ``tickreplay results`` does.
        """
        return self._run(_download(job_id, out_dir, key))

    def sweep(self, strategy: str, symbols: str | Sequence[str], start: str | dt.date,
              end: str | dt.date, grid: Mapping[str, Sequence[Any]],
              params: Mapping[str, Any] | None = None, *, max_concurrent: int = 4,
              metric: str = "sharpe", minimize: bool = False, **execution: Any) -> Sweep:
        """Run every combination of ``grid`` ({name: [values]}) as a job; ``wait()`` on the
        returned sweep for its ``rows`` ranked by ``metric``. ``execution`` as in
        :meth:`submit`."""
        extra = {"max_concurrent": max_concurrent, "metric": metric, "minimize": minimize,
                 **execution}
        doc = self._run(_submit_sweep(strategy, symbols, start, end, grid, params, extra))
        return self._sweep_of({**doc, "status": "PENDING"})

    def sweep_status(self, sweep_id: str) -> Sweep:
        """The sweep: its points' status and, at the end, the ranked rows."""
        return self._sweep_of(self._run(_get(f"/v1/sweeps/{quote(sweep_id, safe='')}")))

    def cancel_sweep(self, sweep_id: str) -> str:
        """Stop a sweep: running points are cancelled, points not started end CANCELLED."""
        doc = self._run(_post(f"/v1/sweeps/{quote(sweep_id, safe='')}/cancel"))
        return str(doc.get("status", "CANCELLING"))


def _get_step(request: _Request) -> _Op[dict[str, Any]]:
    return (yield request)


def _post(path: str) -> _Op[dict[str, Any]]:
    return (yield _Request("POST", path))


# --------------------------------------------------------------------------- async client
@dataclass(repr=False)
class AsyncJob(JobInfo):
    """A job of an :class:`AsyncClient`: the same as :class:`Job`, every method a coroutine.

    Example::

        job = await api.submit("examples/sma_cross.py", "AAPL", "2024-01-02", "2024-01-31")
        await job.wait()
        table = await job.trades()
    """

    _client: AsyncClient = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AsyncJob(job_id={self.job_id!r}, status={self.status!r}, stage={self.stage!r})"

    async def refresh(self) -> AsyncJob:
        self._update(await self._client._run(_get(_job_path(self.job_id))))
        return self

    async def wait(self, poll: float = 0.5, timeout: float | None = None,
                   on_progress: Callable[[AsyncJob], None] | None = None) -> AsyncJob:
        """As :meth:`Job.wait`; ``on_progress`` is a plain function, called after each poll."""
        def seen(doc: dict[str, Any]) -> None:
            self._update(doc)
            if on_progress is not None:
                on_progress(self)

        await self._client._run(_poll(_job_path(self.job_id), seen, poll, timeout))
        return self

    async def cancel(self) -> str:
        return await self._client.cancel(self.job_id)

    async def trades(self) -> Any:
        return await self._client._run(_table(self.job_id, "trades"))

    async def trades_df(self) -> Any:
        return (await self.trades()).to_pandas()

    async def trades_csv(self) -> bytes:
        return await self._client._run(_bytes(self.job_id, "trades", {"format": "csv"}))

    async def equity(self) -> Any:
        return await self._client._run(_table(self.job_id, "equity"))

    async def fetch_metrics(self) -> dict[str, Any]:
        return await self._client.metrics(self.job_id)

    async def manifest(self) -> dict[str, Any]:
        return dict(await self._client._run(_get(_job_path(self.job_id, "manifest"))))

    async def logs(self) -> dict[str, Any]:
        return dict(await self._client._run(_get(_job_path(self.job_id, "logs"))))

    async def download(self, out_dir: str | os.PathLike[str], *, key: bytes | None = None
                       ) -> dict[str, Any]:
        return await self._client.download(self.job_id, out_dir, key=key)


@dataclass(repr=False)
class AsyncSweep(SweepInfo):
    """A sweep of an :class:`AsyncClient`."""

    _client: AsyncClient = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AsyncSweep(sweep_id={self.sweep_id!r}, status={self.status!r})"

    async def refresh(self) -> AsyncSweep:
        self._update(await self._client._run(
            _get(f"/v1/sweeps/{quote(self.sweep_id, safe='')}")))
        return self

    async def wait(self, poll: float = 1.0, timeout: float | None = None,
                   on_progress: Callable[[AsyncSweep], None] | None = None) -> AsyncSweep:
        def seen(doc: dict[str, Any]) -> None:
            self._update(doc)
            if on_progress is not None:
                on_progress(self)

        await self._client._run(_poll(f"/v1/sweeps/{quote(self.sweep_id, safe='')}", seen,
                                      poll, timeout))
        return self


class AsyncClient:
    """The job API for asyncio: the methods of :class:`Client`, each a coroutine (``jobs``
    an async iterator), over one ``httpx.AsyncClient``.

    Example::

        async with AsyncClient(url, token) as api:
            jobs = [await api.submit(digest, "AAPL", "2024-01-02", "2024-01-31", {"fast": f})
                    for f in (5, 10, 20)]
            done = await asyncio.gather(*(j.wait() for j in jobs))
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = _base_url(url)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token),
                                       timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> AsyncClient:
        return cls(*_settings_args(settings), **kw)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _step(self, step: _Request | _Sleep) -> Any:
        if isinstance(step, _Sleep):
            await asyncio.sleep(step.seconds)
            return None
        try:
            response = await self._http.request(step.method, step.path, params=step.params,
                                                json=step.json, headers=step.headers)
        except httpx.HTTPError as e:
            raise _unreachable(self.url, e) from None
        return _answer(response, step.raw)

    async def _run(self, op: _Op[T]) -> T:
        """As :meth:`Client._run`, awaiting each step."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply, error = None, None
                try:
                    reply = await self._step(step)
                except Exception as e:  # noqa: BLE001 - handed to the operation, re-raised there
                    error = e
        finally:
            op.close()

    def _job(self, doc: Mapping[str, Any]) -> AsyncJob:
        job = AsyncJob(str(doc["job_id"]), str(doc["status"]), _client=self)
        job._update(doc)
        return job

    def _sweep_of(self, doc: Mapping[str, Any]) -> AsyncSweep:
        sweep = AsyncSweep(str(doc["sweep_id"]), str(doc.get("status", "PENDING")), _client=self)
        sweep._update(doc)
        return sweep

    async def upload_strategy(self, path_or_spec: str) -> str:
        """See :meth:`Client.upload_strategy`."""
        return await self._run(_upload(path_or_spec))

    async def submit(self, strategy: str | None, symbols: str | Sequence[str],
                     start: str | dt.date,
                     end: str | dt.date, params: Mapping[str, Any] | None = None, *,
                     idempotency_key: str | None = None, **execution: Any) -> AsyncJob:
        """See :meth:`Client.submit`."""
        doc = await self._run(_submit(strategy, symbols, start, end, params, idempotency_key,
                                      execution))
        return self._job(doc)

    async def job(self, job_id: str) -> AsyncJob:
        return self._job(await self._run(_get(_job_path(job_id))))

    async def jobs(self, status: str | None = None, *, limit: int | None = None,
                   page_size: int = 100) -> AsyncIterator[AsyncJob]:
        """See :meth:`Client.jobs`; iterate with ``async for``."""
        pager = _Pager(status, limit, page_size)
        while (request := pager.request()) is not None:
            for doc in pager.take(await self._run(_get_step(request))):
                yield self._job(doc)

    async def cancel(self, job_id: str) -> str:
        doc = await self._run(_post(_job_path(job_id, "cancel")))
        return str(doc.get("status", "CANCELLING"))

    async def wait(self, job_id: str, poll: float = 0.5, timeout: float | None = None,
                   on_progress: Callable[[AsyncJob], None] | None = None) -> AsyncJob:
        return await (await self.job(job_id)).wait(poll, timeout, on_progress)

    async def trades(self, job_id: str) -> Any:
        return await self._run(_table(job_id, "trades"))

    async def equity(self, job_id: str) -> Any:
        return await self._run(_table(job_id, "equity"))

    async def metrics(self, job_id: str) -> dict[str, Any]:
        return dict(await self._run(_get(_job_path(job_id, "metrics"))))

    async def manifest(self, job_id: str) -> dict[str, Any]:
        return dict(await self._run(_get(_job_path(job_id, "manifest"))))

    async def logs(self, job_id: str) -> dict[str, Any]:
        return dict(await self._run(_get(_job_path(job_id, "logs"))))

    async def download(self, job_id: str, out_dir: str | os.PathLike[str], *,
                       key: bytes | None = None) -> dict[str, Any]:
        """See :meth:`Client.download`."""
        return await self._run(_download(job_id, out_dir, key))

    async def sweep(self, strategy: str, symbols: str | Sequence[str], start: str | dt.date,
                    end: str | dt.date, grid: Mapping[str, Sequence[Any]],
                    params: Mapping[str, Any] | None = None, *, max_concurrent: int = 4,
                    metric: str = "sharpe", minimize: bool = False,
                    **execution: Any) -> AsyncSweep:
        """See :meth:`Client.sweep`."""
        extra = {"max_concurrent": max_concurrent, "metric": metric, "minimize": minimize,
                 **execution}
        doc = await self._run(_submit_sweep(strategy, symbols, start, end, grid, params, extra))
        return self._sweep_of({**doc, "status": "PENDING"})

    async def sweep_status(self, sweep_id: str) -> AsyncSweep:
        return self._sweep_of(await self._run(_get(f"/v1/sweeps/{quote(sweep_id, safe='')}")))

    async def cancel_sweep(self, sweep_id: str) -> str:
        doc = await self._run(_post(f"/v1/sweeps/{quote(sweep_id, safe='')}/cancel"))
        return str(doc.get("status", "CANCELLING"))
