"""Prometheus metrics of the job API: jobs by status, submit latency, run durations, requests.

Why jobs by status and run durations are read from the metadata database at scrape time: the
workers, not the API, see jobs start and end, and the database is where they agree. One
registry per app, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import select

from tickreplay.db.models import STATUSES, TERMINAL, Job
from tickreplay.db.store import MetaStore

RUN_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf"))


class _JobsCollector(Collector):
    def __init__(self, store: MetaStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        by_status = GaugeMetricFamily("tickreplay_jobs", "Jobs by status", labels=["status"])
        counts = self.store.counts()
        for status in STATUSES:
            by_status.add_metric([status], sum(n for (_, s), n in counts.items() if s == status))
        yield by_status
        running = GaugeMetricFamily("tickreplay_user_running_jobs", "RUNNING jobs per user",
                                    labels=["user"])
        for (user, status), n in sorted(counts.items()):
            if status == "RUNNING":
                running.add_metric([user], n)
        yield running
        yield self._durations()

    def _durations(self) -> HistogramMetricFamily:
        """Run time (started -> finished) of the last 10,000 finished jobs."""
        q = (select(Job.started_at, Job.finished_at).where(Job.status.in_(TERMINAL),
                                                           Job.started_at.is_not(None))
             .order_by(Job.finished_at.desc()).limit(10_000))
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(q))
        seconds = [(_aware(b) - _aware(a)).total_seconds() for a, b in rows if a and b]
        buckets = [(str(le), sum(1 for s in seconds if s <= le)) for le in RUN_BUCKETS]
        hist = HistogramMetricFamily("tickreplay_job_run_seconds",
                                     "Run duration of recently finished jobs")
        hist.add_metric([], [(le if le != "inf" else "+Inf", n) for le, n in buckets],
                        sum(seconds))
        return hist


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class ApiMetrics:
    """The API's registry and the series it updates itself."""

    def __init__(self, store: MetaStore) -> None:
        self.registry = CollectorRegistry()
        self.submit_seconds = Histogram("tickreplay_submit_seconds", "POST /v1/jobs latency",
                                        registry=self.registry)
        self.submissions = Counter("tickreplay_submissions", "Accepted submissions",
                                   ["created"], registry=self.registry)
        self.requests = Counter("tickreplay_http_requests", "HTTP requests",
                                ["method", "status"], registry=self.registry)
        self.registry.register(_JobsCollector(store))

    def submitted(self, seconds: float, created: bool) -> None:
        self.submit_seconds.observe(seconds)
        self.submissions.labels(created=str(created).lower()).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
