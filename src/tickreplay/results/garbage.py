"""Garbage of finished jobs: their checkpoints and staged results in the artifacts bucket.

Why: a job's checkpoints (``checkpoints/{job_id}/``) and staged result attempts
(``staging/{job_id}/``) are only needed while it runs; once its result is published (or it has
failed for good) they are dead weight (30 test jobs left 2.3 GB behind). Two ways they go:

* :func:`clean_job` — called by the ``publish_results`` activity right after a successful
  publish, for that one job.
* :func:`tickreplay.jobs.gc.collect` — ``tickreplay gc``: every job id found under those prefixes whose workflow
  Temporal reports closed (or does not know) is cleaned; a running job is never touched, and a
  job whose state cannot be read is skipped, not guessed.

Only the artifacts store is ever passed in, and only the two prefixes above are deleted:
published results (the results bucket) and a job's events and error (``jobs/{job_id}/``,
which ``tickreplay logs`` reads) stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickreplay.data.objectstore import ObjectStore

GARBAGE_PREFIXES = ("checkpoints/", "staging/")


@dataclass(frozen=True)
class CleanStats:
    """What was (or, in a dry run, would be) removed: object count and bytes."""

    objects: int = 0
    bytes: int = 0

    def __add__(self, other: CleanStats) -> CleanStats:
        return CleanStats(self.objects + other.objects, self.bytes + other.bytes)


@dataclass
class GcReport:
    """The outcome of :func:`collect`, per job id."""

    cleaned: dict[str, CleanStats] = field(default_factory=dict)  # job id -> what went
    running: list[str] = field(default_factory=list)  # kept: the workflow still runs
    skipped: dict[str, str] = field(default_factory=dict)  # kept: job id -> why its state is unknown
    dry_run: bool = False

    @property
    def total(self) -> CleanStats:
        """Objects and bytes over every cleaned job."""
        return sum(self.cleaned.values(), CleanStats())

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view for ``tickreplay gc --json``."""
        return {
            "dry_run": self.dry_run,
            "objects": self.total.objects,
            "bytes": self.total.bytes,
            "cleaned": {j: {"objects": s.objects, "bytes": s.bytes}
                        for j, s in sorted(self.cleaned.items())},
            "running": sorted(self.running),
            "skipped": dict(sorted(self.skipped.items())),
        }


def _check_job_id(job_id: str) -> None:
    # An empty id or one with "/" would widen the prefix to other jobs' objects.
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise ValueError(f"invalid job id {job_id!r}")


def job_garbage(artifacts: ObjectStore, job_id: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every checkpoint and staging object of ``job_id``."""
    _check_job_id(job_id)
    return [(o.key, o.size) for prefix in GARBAGE_PREFIXES
            for o in artifacts.list(f"{prefix}{job_id}/")]


def clean_job(artifacts: ObjectStore, job_id: str) -> CleanStats:
    """Delete every object under ``checkpoints/{job_id}/`` and ``staging/{job_id}/``.

    Safe to repeat (activities run at least once): a second call finds nothing and returns
    zeros. Never call it for a job that still runs: its next resume needs the checkpoint.

    Args:
        artifacts: The artifacts store (never the results bucket).
        job_id: The job whose garbage goes.

    Returns:
        How many objects and bytes were deleted.
    """
    stats = CleanStats()
    for key, size in job_garbage(artifacts, job_id):
        artifacts.delete(key)
        stats += CleanStats(1, size)
    return stats


def garbage_job_ids(artifacts: ObjectStore) -> list[str]:
    """Every job id that has objects under ``checkpoints/`` or ``staging/``."""
    ids: set[str] = set()
    for prefix in GARBAGE_PREFIXES:
        for o in artifacts.list(prefix):
            job_id = o.key[len(prefix):].split("/", 1)[0]
            if job_id:
                ids.add(job_id)
    return sorted(ids)
