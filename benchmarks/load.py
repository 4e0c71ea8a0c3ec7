"""``make load``: many jobs submitted at once through the REST API by several users.

Starts a whole embedded stack with ``tickreplay up`` (Temporal dev server, SeaweedFS, the job
API, one worker) in a throwaway state dir on free ports, adds USERS users, generates a small
data set, and submits JOBS backtests concurrently over HTTP (each user its share, all at once).
A sampler reads the metadata database every 0.1 s for the RUNNING jobs per user. At the end
every job must have SUCCEEDED; the table gives the submit latency (p50/p95/max), the total wall
time, and the most RUNNING jobs any user (and all users) had at once beside the limits.
Prints the table and writes ``bench-results/load.md``. The stack is stopped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

from tickreplay.data.generate import generate
from tickreplay.data.objectstore import S3Store
from tickreplay.db.store import MetaStore, open_engine
from tickreplay.settings import Settings
from tickreplay.stack import control
from tickreplay.stack.ports import free_ports
from tickreplay.strategy.loader import bundle_from_spec

SYMBOLS = ["AAA", "BBB"]
START, END = "2024-03-04", "2024-03-08"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _submit_all(url: str, tokens: dict[str, str], digest: str, jobs: int
                      ) -> tuple[list[str], list[float]]:
    """Every user's jobs at once; the latency of each POST /v1/jobs."""
    users = sorted(tokens)
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> str:
        user = users[i % len(users)]
        body = {"strategy": digest, "symbols": SYMBOLS, "start_date": START, "end_date": END,
                "params": {"fast": 5 + i % 17, "slow": 40 + i % 7}, "latency_ms": 1,
                "commission": "per_share=0.005,min=1"}
        started = time.perf_counter()
        r = await client.post(f"{url}/v1/jobs", json=body, headers={
            "Authorization": f"Bearer {tokens[user]}", "Idempotency-Key": f"load-{i}"})
        latencies.append(time.perf_counter() - started)
        r.raise_for_status()
        return str(r.json()["job_id"])

    limits = httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        ids = await asyncio.gather(*(one(client, i) for i in range(jobs)))
    return list(ids), latencies


class Sampler(threading.Thread):
    """The most RUNNING jobs per user, and in all, seen in the metadata database."""

    def __init__(self, store: MetaStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            running = {u: n for (u, s), n in self.store.counts().items() if s == "RUNNING"}
            for user, n in running.items():
                self.peak[user] = max(self.peak.get(user, 0), n)
            self.peak_total = max(self.peak_total, sum(running.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--per-user-limit", type=int, default=3)
    ap.add_argument("--global-limit", type=int, default=8)
    ap.add_argument("--ticks-per-day", type=int, default=2000)
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="tickreplay-load-"))
    os.environ["TICKREPLAY_MAX_RUNNING_PER_USER"] = str(args.per_user_limit)
    os.environ["TICKREPLAY_MAX_RUNNING_JOBS"] = str(args.global_limit)
    temporal, ui, s3, api, grpc = free_ports(5)
    print(f"starting the stack in {state} ...", flush=True)
    info = control.up(state, temporal_port=temporal, ui_port=ui, s3_port=s3, api_port=api,
                      grpc_port=grpc, workers=1, timeout=120)
    try:
        settings = Settings.load(home=state)
        settings = settings.model_copy(update={"home": state, "s3_endpoint": info.s3_endpoint})
        generate(S3Store(settings.data_bucket, settings=settings), SYMBOLS, START, END,
                 ticks_per_day=args.ticks_per_day, seed=11)
        engine = open_engine(settings.resolved_db_dsn())
        store = MetaStore(engine)
        tokens = {f"user{i}": store.add_user(f"user{i}") for i in range(1, args.users + 1)}
        b = bundle_from_spec(str(ROOT / "examples" / "sma_cross.py"))
        url = str(info.api_url)
        digest = httpx.post(f"{url}/v1/strategies", timeout=60,
                            json={"files": b.files, "entry": b.entry, "class": b.class_name},
                            headers={"Authorization": f"Bearer {tokens['user1']}"}
                            ).json()["digest"]
        sampler = Sampler(store)
        sampler.start()
        t0 = time.perf_counter()
        ids, latencies = asyncio.run(_submit_all(url, tokens, digest, args.jobs))
        submitted = time.perf_counter() - t0
        print(f"{len(ids)} jobs submitted in {submitted:.1f} s; waiting ...", flush=True)
        while True:
            statuses = {r["job_id"]: r["status"] for r in
                        (store.job_record(j) for j in ids) if r is not None}
            done = sum(s in ("SUCCEEDED", "FAILED", "CANCELLED") for s in statuses.values())
            if done == len(ids):
                break
            time.sleep(1.0)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        engine.dispose()
    finally:
        control.down(state, worker_grace=10, service_grace=0)
    ok = sum(s == "SUCCEEDED" for s in statuses.values())
    rows = [
        ("jobs submitted (concurrently)", f"{len(ids)}"),
        ("users", f"{args.users}"),
        ("SUCCEEDED", f"{ok} / {len(ids)}"),
        ("submit latency p50", f"{statistics.median(latencies) * 1000:.0f} ms"),
        ("submit latency p95", f"{_pct(latencies, 0.95) * 1000:.0f} ms"),
        ("submit latency max", f"{max(latencies) * 1000:.0f} ms"),
        ("all submitted after", f"{submitted:.1f} s"),
        ("total wall time (first submit to last job done)", f"{wall:.1f} s"),
        ("jobs per second", f"{len(ids) / wall:.2f}"),
        ("most RUNNING jobs of one user at once", f"{max(sampler.peak.values(), default=0)} "
         f"(limit {args.per_user_limit}; per user: "
         + ", ".join(f"{u} {n}" for u, n in sorted(sampler.peak.items())) + ")"),
        ("most RUNNING jobs in all at once", f"{sampler.peak_total} (limit {args.global_limit})"),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(["| measure | value |", "|---|---|"]
                      + [f"| {k} | {v} |" for k, v in rows])
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "load.md").write_text(
        f"# make load\n\n{args.jobs} backtests submitted at once through the REST API by "
        f"{args.users} users ({args.ticks_per_day} ticks/day, {len(SYMBOLS)} symbols, "
        f"{START}..{END}; one worker, {os.cpu_count()} cores).\n\n{table}\n")
    failed = max(sampler.peak.values(), default=0) > args.per_user_limit or ok != len(ids) \
        or sampler.peak_total > args.global_limit
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
