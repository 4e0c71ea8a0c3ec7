"""Activities that keep a tracked job's row in the metadata database in step with its workflow.

Why activities and not the API: only the workflow knows when a job really starts and ends, and
activities are retried until they land, so a worker killed mid-write, or a database outage,
delays the write but never loses it. Every write is idempotent (a retried write of the same
status changes nothing), which makes at-least-once delivery safe.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from tickreplay.db.models import PENDING
from tickreplay.errors import StoreError
from tickreplay.settings import Settings
from tickreplay.workflows import types as t

# How often a waiting job asks again for a slot.
ADMIT_POLL = timedelta(seconds=1)


class JobRecordActivities:
    """Admission and status writes for one worker; the database engine is opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None
        self._lock = threading.Lock()  # activities run in a thread pool: one engine

    def store(self) -> Any:
        from tickreplay.db.store import MetaStore, open_engine

        with self._lock:
            if self._store is None:
                self._store = MetaStore(open_engine(self.settings.resolved_db_dsn()))
            return self._store

    @activity.defn(name="admit_job")
    def admit_job(self, inp: t.AdmitInput) -> str:
        """RUNNING once a slot is free (the status it then has); while the user is at their
        limit, a benign retryable failure that Temporal repeats every ``ADMIT_POLL``."""
        try:
            status = self.store().admit(inp.job_id, per_user=self.settings.max_running_per_user,
                                        global_cap=self.settings.max_running_jobs)
        except StoreError as e:  # no such job: the row is written before the workflow starts
            raise ApplicationError(str(e), type=e.code, non_retryable=True) from None
        if status == PENDING:
            raise ApplicationError("waiting for a free slot", type="WaitingForSlot",
                                   next_retry_delay=ADMIT_POLL,
                                   category=ApplicationErrorCategory.BENIGN)
        return str(status)

    @activity.defn(name="record_job")
    def record_job(self, inp: t.RecordInput) -> bool:
        """Write the job's status and result fields; True if the row changed.

        A transition the row's life does not allow (it is already terminal) is logged, not
        raised: the first terminal status written stands, and the workflow must still close.
        """
        fields: dict[str, Any] = {"error": inp.error[:4000]}
        if inp.image_digest:
            fields["image_digest"] = inp.image_digest
        if inp.status == "SUCCEEDED":
            fields.update(result_hash=inp.result_hash, results_path=inp.results_path,
                          data_fingerprint=inp.data_fingerprint, metrics=inp.metrics)
        try:
            changed = bool(self.store().set_status(inp.job_id, inp.status, **fields))
        except StoreError as e:
            activity.logger.warning("job %s: status %s not recorded: %s", inp.job_id,
                                    inp.status, e)
            return False
        if changed:
            self.store().add_event(inp.job_id, inp.status.lower(), error=inp.error[:500])
        return changed

    @activity.defn(name="record_sweep")
    def record_sweep(self, inp: t.SweepRecordInput) -> None:
        """Store a finished sweep's ranked table."""
        try:
            self.store().finish_sweep(inp.sweep_id, inp.status, {"rows": inp.rows})
        except StoreError as e:
            activity.logger.warning("sweep %s not recorded: %s", inp.sweep_id, e)
