"""``tickreplay gc``: clean the artifacts of every job Temporal reports closed.

The store side (what a job's garbage is, how it is deleted) is :mod:`tickreplay.results.garbage`;
this module only adds the question only Temporal can answer: has the job ended?
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tickreplay.results.garbage import CleanStats, GcReport, clean_job, garbage_job_ids, job_garbage

if TYPE_CHECKING:
    from temporalio.client import Client

    from tickreplay.data.objectstore import ObjectStore


async def is_closed(client: Client, job_id: str) -> bool:
    """True if the job's workflow has ended (any way) or Temporal does not know the id.

    Raises:
        temporalio.service.RPCError: Temporal could not say (other than "not found").
    """
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    try:
        desc = await client.get_workflow_handle(job_id).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return desc.status not in (WorkflowExecutionStatus.RUNNING,
                               WorkflowExecutionStatus.CONTINUED_AS_NEW, None)


async def collect(artifacts: ObjectStore, client: Client, *, dry_run: bool = False) -> GcReport:
    """Clean the checkpoints and staging objects of every closed job (``tickreplay gc``).

    Args:
        artifacts: The artifacts store.
        client: A Temporal client of the namespace the jobs ran in; it decides what is closed.
        dry_run: Only report what would be removed.

    Returns:
        Per job: what was removed, which jobs still run, which were skipped and why.
    """
    from temporalio.service import RPCError

    report = GcReport(dry_run=dry_run)
    for job_id in garbage_job_ids(artifacts):
        try:
            closed = await is_closed(client, job_id)
        except RPCError as e:
            report.skipped[job_id] = f"Temporal could not describe it: {e}"
            continue
        if not closed:
            report.running.append(job_id)
            continue
        if dry_run:
            report.cleaned[job_id] = sum((CleanStats(1, size) for _, size in
                                          job_garbage(artifacts, job_id)), CleanStats())
        else:
            report.cleaned[job_id] = clean_job(artifacts, job_id)
    return report
