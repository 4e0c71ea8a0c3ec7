"""Worker process: the shared queue (workflows + light activities) and this node's own queue.

``python -m tickreplay.workers.main`` runs until SIGTERM/SIGINT. On SIGTERM (a spot
interruption notice, ``tickreplay down``, a pod eviction) it stops polling and gives running
backtests ``shutdown_grace_s`` to write a final checkpoint and heartbeat it; they then fail
with a retryable ``WorkerShutdown`` and resume on another node.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import socket
import uuid
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from tickreplay.activities.backtest import BacktestActivities
from tickreplay.activities.jobs import JobRecordActivities
from tickreplay.settings import Settings
from tickreplay.workflows.backtest import BacktestWorkflow, SweepWorkflow

log = logging.getLogger("tickreplay.worker")


def node_name(settings: Settings) -> str:
    """A name per worker process: a restarted worker gets a new queue, never a dead one's."""
    return settings.node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


async def _clean_orphans(settings: Settings) -> None:
    """Kubernetes backend: delete the runner Jobs a dead predecessor on this node left (their
    attempts are Temporal's to retry, from their checkpoints)."""
    from tickreplay.runner.pool import backend_name

    if backend_name(settings) != "kubernetes":
        return
    from tickreplay.runner.kubernetes import clean_orphans

    try:
        gone = await asyncio.to_thread(clean_orphans, settings)
    except Exception:  # the API may be down: the Jobs' deadlines still end them
        log.warning("could not clean up orphaned runner Jobs", exc_info=True)
        return
    if gone:
        log.info("deleted %d orphaned runner Jobs: %s", len(gone), ", ".join(gone))


async def run_worker(settings: Settings, stop: asyncio.Event, *, client: Client | None = None,
                     ready: asyncio.Event | None = None) -> None:
    """Run both workers until ``stop`` is set, then shut down gracefully."""
    client = client or await Client.connect(settings.temporal_address,
                                            **settings.temporal_options())
    node = node_name(settings)
    node_queue = f"{settings.task_queue}-node-{node}"
    await _clean_orphans(settings)
    acts = BacktestActivities(settings, node_queue, node)
    records = JobRecordActivities(settings)
    grace = timedelta(seconds=settings.shutdown_grace_s)
    # Shared-queue activities are short (admission polls, status writes, planning) or wait on
    # storage (warm_cache): slots are cheap threads, and admission must not queue behind
    # long downloads.
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        shared = Worker(client, task_queue=settings.task_queue,
                        workflows=[BacktestWorkflow, SweepWorkflow],
                        activities=[acts.resolve_strategy, acts.plan_data, acts.warm_cache,
                                    acts.publish_results, records.admit_job, records.record_job,
                                    records.record_sweep],
                        activity_executor=pool, graceful_shutdown_timeout=grace,
                        max_concurrent_activities=32,
                        # Every activity's heartbeat timeout is 10 s: send within 2 s.
                        max_heartbeat_throttle_interval=timedelta(seconds=2),
                        default_heartbeat_throttle_interval=timedelta(seconds=2),
                        # A dead worker's sticky queue holds its workflows' next task until
                        # this expires (default 10 s), delaying every re-placement by as much.
                        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2))
        # Heartbeats carry checkpoint keys: send them within ~1 s rather than the default
        # 0.8 x heartbeat timeout, so a lost node resumes from its newest checkpoint.
        runner = Worker(client, task_queue=node_queue, activities=[acts.run_backtest],
                        max_concurrent_activities=settings.max_concurrent_runs,
                        graceful_shutdown_timeout=grace,
                        max_heartbeat_throttle_interval=timedelta(seconds=1),
                        default_heartbeat_throttle_interval=timedelta(seconds=1))
        async with shared, runner:
            log.info("worker %s polling %s and %s", node, settings.task_queue, node_queue)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("worker %s shutting down (grace %s)", node, grace)
        if acts.pool is not None:
            await acts.pool.close()
        acts.flush_events()


def main() -> None:
    """Entry point: settings from the environment (and ``<home>/stack.env``)."""
    from tickreplay import logjson

    logjson.configure()
    settings = Settings.load()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(go())


if __name__ == "__main__":
    main()
