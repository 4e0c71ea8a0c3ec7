"""What the activities of one worker node share: its settings, cache, signing key, event log,
object-store access with outage retry, and heartbeats while blocking work runs.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import copy
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity

from tickreplay.settings import Settings
from tickreplay.workflows import types as t

T = TypeVar("T")
HEARTBEAT_EVERY_S = 1.0


@contextmanager
def pulse(details: Callable[[], Any] | None = None) -> Iterator[None]:
    """Heartbeat about every second from a side thread while a SYNC activity works.

    Why: a download or upload of one big object can take longer than the heartbeat timeout;
    heartbeating only between steps made a lost worker invisible for minutes.
    """
    ctx = contextvars.copy_context()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_EVERY_S):
            try:
                ctx.run(activity.heartbeat, *([details()] if details else []))
            except Exception:  # noqa: BLE001 - a heartbeat hiccup must not kill the activity
                activity.logger.debug("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, daemon=True, name="tickreplay-pulse")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def read_regular(path: Path) -> bytes:
    """Bytes of a regular file, refusing symlinks (the runner must not point us elsewhere)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


class NodeContext:
    """What every activity of one worker node shares: settings, cache, key, events, storage."""

    def __init__(self, settings: Settings, node_queue: str, node: str) -> None:
        from tickreplay.data.cache import PartitionCache

        self.settings = settings
        self.node_queue = node_queue
        self.node = node
        self.cache = PartitionCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
        self.key = settings.platform_key(create=True)
        self.pool: Any = None  # RunnerPool, created on first use inside the event loop
        # Events are best effort and must never block a heartbeating event loop (an S3
        # outage would otherwise stall it): one background thread writes them in order.
        self._events = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="events")

    # ------------------------------------------------------------------ helpers
    def _artifacts(self) -> Any:
        from tickreplay.data.objectstore import open_store

        return open_store(f"s3://{self.settings.artifacts_bucket}", self.settings)

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        from tickreplay.data.retry import with_outage_retry

        return with_outage_retry(fn, what, self.settings.outage_budget_s)

    def _event(self, job_id: str, kind: str, /, **fields: Any) -> None:
        """Append an operational event to the job's log (one small object per event)."""
        rec = {"ts": time.time(), "kind": kind, "node": self.node, **fields}
        self._put_later(f"jobs/{job_id}/events/{time.time_ns():020d}-{kind}.json",
                        json.dumps(rec, default=str).encode(), f"event {kind} of {job_id}")

    def _put_later(self, key: str, data: bytes, what: str) -> None:
        """Write ``data`` to the artifacts store from the events thread, in order, best effort.

        A failure is logged, never raised: job logs must not fail (or block) the job.
        """
        def write() -> None:
            try:
                self._artifacts().put_bytes(key, data)
            except Exception:  # noqa: BLE001 - a log hiccup must never fail the job
                activity.logger.warning("could not write the %s", what)

        self._events.submit(write)

    def flush_events(self, timeout: float = 30.0) -> None:
        """Wait until every queued event is written (or failed)."""
        self._events.submit(lambda: None).result(timeout)

    @staticmethod
    def _beat(state: t.RunHeartbeat) -> None:
        """Heartbeat a snapshot of ``state`` (the SDK sends details later, batched)."""
        activity.heartbeat(copy.deepcopy(state))

    def _fetch_data(self, plan: Any) -> dict[str, Path]:
        """The plan's partitions as files of this node's cache (downloaded and checked if new)."""
        from tickreplay.data.objectstore import open_store
        from tickreplay.runner.driver import fetch_plan

        store = open_store(plan.url, self.settings)
        return self._retry(lambda: fetch_plan(plan, store, self.cache), "fetch data")

    def _load_plan(self, key: str) -> Any:
        from tickreplay.data.catalog import DataPlan

        return DataPlan.from_dict(json.loads(self._retry(lambda: self._artifacts().get_bytes(key),
                                                         "read plan")))
