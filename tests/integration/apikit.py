"""The embedded stack behind the job API tests: real Temporal, real SeaweedFS, a real worker, a
real SQLite (or PostgreSQL) metadata database, and the REST app served by uvicorn on a free port.

Used by the REST, gRPC, SDK and fuzz tests; each test module gets its own queue, buckets,
database and users, so modules never see each other's jobs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from wfkit import EXAMPLES, isolated_settings

from tickreplay.db.migrate import upgrade
from tickreplay.db.store import MetaStore, open_engine
from tickreplay.settings import Settings
from tickreplay.stack.ports import free_port
from tickreplay.strategy.loader import bundle_from_spec

SYMBOLS = ["AAA", "BBB"]
START, END = "2024-03-04", "2024-03-08"


@dataclass
class ApiStack:
    """What a test needs: the API's URL, tokens by user name, the store and the settings."""

    url: str
    settings: Settings
    store: MetaStore
    tokens: dict[str, str]
    app: Any = None
    digests: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    def http(self, method: str, path: str, who: str | None = "alice",
             **kw: Any) -> httpx.Response:
        headers = {**self.headers(who), **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def upload(self, strategy: str = "sma_cross.py", who: str = "alice") -> str:
        """Upload an example (or a test strategy path) and return its digest."""
        path = strategy if "/" in strategy else str(EXAMPLES / strategy)
        b = bundle_from_spec(path)
        r = self.http("POST", "/v1/strategies", who,
                      json={"files": b.files, "entry": b.entry, "class": b.class_name})
        assert r.status_code == 201, r.text
        return str(r.json()["digest"])

    def body(self, digest: str, **over: Any) -> dict[str, Any]:
        return {"strategy": digest, "symbols": SYMBOLS, "start_date": START, "end_date": END,
                "params": {"fast": 10, "slow": 80}, "latency_ms": 1, "slippage_bps": 1.0,
                "commission": "per_share=0.005,min=1", "checkpoint_every_s": 1, **over}

    def wait(self, job_id: str, who: str = "alice", timeout: float = 180) -> dict[str, Any]:
        """Poll GET /v1/jobs/{id} until the job has ended."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.http("GET", f"/v1/jobs/{job_id}", who).json()
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return dict(job)
            assert time.monotonic() < deadline, f"{job_id} still {job['status']}"
            time.sleep(0.3)


def stack_settings(s3_server: Settings, temporal_address: str, tmp: Path, *,
                   ticks_per_day: int = 3000, **over: Any) -> Settings:
    """Isolated settings with sample data and a SQLite metadata database of their own."""
    s = isolated_settings(s3_server, temporal_address, tmp / "cache", SYMBOLS, START, END,
                          ticks_per_day, seed=5)
    return s.model_copy(update={"home": tmp / "home", "db_dsn": f"sqlite:///{tmp / 'meta.db'}",
                                **over})


@contextmanager
def serve_api(settings: Settings, users: tuple[str, ...] = ("alice", "bob"),
              admins: tuple[str, ...] = ("root",)) -> Iterator[ApiStack]:
    """Migrate the database, add users, serve the REST app on a free port (uvicorn thread)."""
    from tickreplay.api.rest import create_app

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings.resolved_db_dsn())
    upgrade(engine)
    store = MetaStore(engine)
    tokens = {u: store.add_user(u) for u in users}
    tokens.update({u: store.add_user(u, admin=True) for u in admins})
    app = create_app(store, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield ApiStack(f"http://127.0.0.1:{server.config.port}", settings, store, tokens, app)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


@contextmanager
def in_process_worker(settings: Settings) -> Iterator[None]:
    """A worker (both queues) in a thread with its own event loop, stopped afterwards."""
    from tickreplay.workers.main import run_worker

    loop = asyncio.new_event_loop()
    stop: asyncio.Event | None = None
    ready = threading.Event()

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        started = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop, ready=started))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "worker did not start"
    try:
        yield
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(90)
