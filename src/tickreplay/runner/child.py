"""The runner: one backtest in its own process, driven by ``run_backtest`` over pipes.

Why a child process: the engine is CPU-bound Python; in the worker process it would starve the
event loop that heartbeats and polls Temporal (the GIL). A child also gives a hard kill switch
(cancel, stall) and contains crashes and memory blow-ups to one job.

Protocol: the parent writes one JSON line (the job) to stdin and keeps stdin open; writing
``stop`` asks for a final checkpoint and exit; EOF means the parent died, and the child exits
at once. The child writes JSON lines to stdout: ``progress``, ``checkpoint`` (only after the
checkpoint object is durably stored), and finally ``done`` or ``error``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_STOPPED = 0, 3, 4


class ResultBuildError(Exception):
    """The finished run's results could not be built or written: deterministic, not retried."""


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this process when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class _Out:
    """Line-buffered JSON messages to the parent, safe from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, msg_type: str, /, **fields: Any) -> None:
        line = json.dumps({"type": msg_type, **fields}, default=str)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def _watch_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
    os._exit(EXIT_STOPPED if stop.is_set() else 137)  # parent gone: nothing left to report to


def _classify(e: BaseException) -> tuple[str, bool]:
    """(error type, retryable) of a failure, by what caused it."""
    from tickreplay.data.errors import DataError
    from tickreplay.engine.core import CheckpointError
    from tickreplay.spec import SpecError
    from tickreplay.strategy.api import StrategyError
    from tickreplay.workflows import types as t

    if isinstance(e, StrategyError | MemoryError | RecursionError):
        return t.STRATEGY_ERROR, False
    if isinstance(e, SpecError):
        return t.SPEC_ERROR, False
    if isinstance(e, DataError):
        return t.DATA_ERROR, False
    if isinstance(e, CheckpointError):
        return t.CHECKPOINT_ERROR, False
    if isinstance(e, ResultBuildError):
        return t.RESULT_ERROR, False
    return "RunnerError", True


def run(job: dict[str, Any], out: _Out, stop: threading.Event) -> int:
    """Execute one job description; returns the exit code."""
    from tickreplay.backtest import (
        StopRequested,
        inputs_of,
        simulate,
        to_resultset,
        validated_params,
    )
    from tickreplay.data.cache import PartitionCache
    from tickreplay.data.catalog import DataPlan
    from tickreplay.data.store import open_store
    from tickreplay.results import write_results
    from tickreplay.settings import Settings
    from tickreplay.spec import BacktestSpec
    from tickreplay.strategy.loader import StrategyBundle

    settings = Settings.load()
    artifacts = open_store(f"s3://{settings.artifacts_bucket}", settings)
    job_id = job["job_id"]
    bundle = StrategyBundle.from_bytes(artifacts.get_bytes(job["strategy_key"]))
    if bundle.digest != job["strategy_digest"]:
        raise RuntimeError(f"strategy bundle digest {bundle.digest} != {job['strategy_digest']}")
    plan = DataPlan.from_dict(json.loads(artifacts.get_bytes(job["plan_key"])))
    spec = BacktestSpec.model_validate(job["spec"])
    params = validated_params(bundle, spec.params)
    data = open_store(plan.url, settings)
    cache = PartitionCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
    resume = job.get("resume") or {}
    blob = artifacts.get_bytes(resume["checkpoint_key"]) if resume.get("checkpoint_key") else None

    def on_checkpoint(data_bytes: bytes, ticks: int) -> None:
        key = (f"checkpoints/{job_id}/{ticks:013d}-"
               f"{hashlib.sha256(data_bytes).hexdigest()[:16]}.ckpt")
        artifacts.put_bytes(key, data_bytes)  # durable before anyone is told about it
        out.send("checkpoint", key=key, ticks_done=ticks)

    def on_progress(p: Any) -> None:
        out.send("progress", ticks_done=p.ticks_done, ticks_total=p.ticks_total, sim_ts=p.sim_ts)

    if blob is not None:
        from tickreplay.engine.core import CheckpointError, Engine
        from tickreplay.strategy.loader import load_strategy

        try:  # a checkpoint from another engine version or damaged in storage: start over
            Engine.restore(blob, load_strategy(bundle, params)[0])
        except CheckpointError as e:
            out.send("warning", message=f"checkpoint {resume['checkpoint_key']} unusable ({e}); "
                                        "starting from the first tick")
            blob, resume = None, {}
    out.send("started", resumed_from=resume.get("ticks_done", 0), pid=os.getpid())
    try:
        result = simulate(bundle, params, plan, spec.config, lambda p: cache.fetch(data, p),
                          ticks_total=int(job.get("ticks_total", 0)), checkpoint=blob,
                          on_progress=on_progress, on_checkpoint=on_checkpoint,
                          checkpoint_every_s=float(job["checkpoint_every_s"]),
                          should_stop=stop.is_set)
    except StopRequested as e:
        out.send("stopped", message=str(e))
        return EXIT_STOPPED
    with tempfile.TemporaryDirectory(prefix="tickreplay-result-") as tmp:
        try:
            rs = to_resultset(result, inputs_of(bundle, spec, plan, params), spec.config,
                              {"host": os.uname().nodename,
                               "resumed_from_ticks": resume.get("ticks_done", 0)})
            manifest = write_results(rs, Path(tmp))
        except (TypeError, ValueError) as e:
            raise ResultBuildError(f"cannot write the results: {e}") from e
        prefix = f"staging/{job_id}/{manifest['result_hash']}/{os.urandom(6).hex()}"
        for f in sorted(Path(tmp).iterdir()):
            if f.name != "manifest.json":
                artifacts.put_file(f"{prefix}/{f.name}", f)
        artifacts.put_file(f"{prefix}/manifest.json", Path(tmp) / "manifest.json")
    out.send("done", staging_prefix=prefix, result_hash=manifest["result_hash"],
             metrics=rs.metrics, ticks=result.ticks, resumed_from_ticks=resume.get("ticks_done", 0))
    return EXIT_OK


def preload() -> None:
    """Import everything a run needs BEFORE the job arrives.

    Workers keep one runner process spawned ahead of need; with the imports (pyarrow, pandas,
    boto3: ~0.6 s) already done, a job starts in milliseconds.
    """
    import boto3  # noqa: F401

    import tickreplay.backtest
    import tickreplay.data.cache
    import tickreplay.results
    import tickreplay.spec  # noqa: F401


def main() -> None:
    """Read the job from stdin, run it, report on stdout; exit code says how it ended."""
    preload()
    line = sys.stdin.readline()
    if not line:  # the worker shut down before giving this spare runner a job
        os._exit(0)
    job = json.loads(line)
    mem_mb = int(job.get("memory_mb") or 0)
    if mem_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb * 1024 * 1024, mem_mb * 1024 * 1024))
    out = _Out()
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    try:
        code = run(job, out, stop)
    except BaseException as e:  # noqa: BLE001 - report all; the parent classifies
        kind, retryable = _classify(e)
        out.send("error", kind=kind, retryable=retryable, message=f"{type(e).__name__}: {e}",
                 traceback="".join(traceback.format_exception(e)))
        code = EXIT_ERROR
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
