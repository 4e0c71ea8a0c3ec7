"""The runner: one backtest in its own process, driven by ``run_backtest`` over a private channel.

Why a child process: the engine is CPU-bound Python; in the worker process it would starve the
event loop that heartbeats and polls Temporal (the GIL). A child also gives a hard kill switch
(cancel, stall) and contains crashes and memory blow-ups to one job.

Why no I/O to the object store here: this process runs the user's strategy code, so it holds
neither storage credentials nor the platform's signing key. The worker fetches the strategy,
the plan and the partitions (into the node cache) and verifies any checkpoint before the run;
the runner reads local files only and writes checkpoints and the result into its own work
directory, and the worker seals, uploads and heartbeats them.

Protocol: a socket inherited as ``--fd N``, or in a pod one it connects to (``--socket PATH``),
never stdout: the strategy's prints go to stdout and stderr, which the worker keeps,
size-bounded, as the job's runner output. The worker sends one JSON line (the job), later
possibly ``stop`` (final checkpoint, then exit; SIGTERM means the same); EOF means the worker
died and the runner exits at once. The runner sends JSON lines: ``started``,
``progress`` (about every second, from a thread, with the tick the strategy is really at),
``checkpoint`` (a file in the work directory), ``warning``, ``stopped``, and finally ``done``
or ``error``.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from tickreplay.errors import OutOfMemory, ResultsError, RunnerError, classify
from tickreplay.osutil import atomic_write
from tickreplay.runner.protocol import (
    STOP,
    Checkpoint,
    Done,
    Failed,
    Message,
    RunnerJob,
    Started,
    Stopped,
    Warning,
    encode,
)

EXIT_OK, EXIT_ERROR, EXIT_STOPPED = 0, 3, 4
PROGRESS_EVERY_S = 1.0


class ResultBuildError(ResultsError):
    """The finished run's results could not be built or written: deterministic, not retried."""


class Channel:
    """JSON lines over the inherited socket, safe to send from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._reader = self.sock.makefile("rb")

    def send(self, msg: Message) -> None:
        line = encode(msg)
        with self._lock:
            self.sock.sendall(line)

    def readline(self) -> bytes:
        return self._reader.readline()


def _watch(chan: Channel, stop: threading.Event) -> None:
    """Turn ``stop`` lines into the stop flag; EOF means the worker is gone: exit now."""
    while True:
        line = chan.readline()
        if not line:
            os._exit(EXIT_STOPPED if stop.is_set() else 137)
        if line.strip() == STOP.encode():
            stop.set()


def _report_progress(chan: Channel, probe: Any, done: threading.Event) -> None:
    """Every second, where the run is; independent of how slow the strategy is per tick."""
    while not done.wait(PROGRESS_EVERY_S):
        try:
            chan.send(probe.position())
        except OSError:
            return


def run(job: RunnerJob, chan: Channel, stop: threading.Event) -> int:
    """Execute one job description (local files only); returns the exit code."""
    from tickreplay.data.catalog import DataPlan
    from tickreplay.results import write_results
    from tickreplay.runner.driver import (
        RunProbe,
        StopRequested,
        inputs_of,
        simulate,
        to_resultset,
        validated_params,
    )
    from tickreplay.spec import BacktestSpec
    from tickreplay.strategy.loader import StrategyBundle

    workdir = Path(job.workdir)
    bundle = _image_strategy() if job.strategy_image else \
        StrategyBundle.from_bytes(job.bundle.encode())
    if not job.strategy_image and bundle.digest != job.strategy_digest:
        raise RuntimeError(f"strategy bundle digest {bundle.digest} != {job.strategy_digest}")
    plan = DataPlan.from_dict(job.plan)
    spec = BacktestSpec.model_validate(job.spec)
    params = validated_params(bundle, spec.params)
    paths = {k: Path(v) for k, v in job.paths.items()}
    resumed_from = job.resumed_from
    blob = Path(job.checkpoint_file).read_bytes() if job.checkpoint_file else None

    def on_checkpoint(data: bytes, ticks: int) -> None:
        path = workdir / f"ckpt-{ticks:013d}.bin"
        atomic_write(path, data, fsync=False)  # the worker uploads it at once: no need
        chan.send(Checkpoint(path=str(path), ticks_done=ticks))

    if blob is not None:
        from tickreplay.engine.core import Engine
        from tickreplay.errors import CheckpointError
        from tickreplay.strategy.loader import load_strategy

        try:  # a checkpoint from another engine version: start over
            Engine.restore(blob, load_strategy(bundle, params)[0])
        except CheckpointError as e:
            chan.send(Warning(message=f"checkpoint unusable ({e}); starting from the first tick"))
            blob, resumed_from = None, 0
    chan.send(Started(resumed_from=resumed_from, pid=os.getpid()))
    probe = RunProbe()
    finished = threading.Event()
    threading.Thread(target=_report_progress, args=(chan, probe, finished), daemon=True).start()
    try:
        result = simulate(bundle, params, plan, spec.config, lambda p: paths[p.key],
                          ticks_total=job.ticks_total, checkpoint=blob,
                          on_checkpoint=on_checkpoint,
                          checkpoint_every_s=job.checkpoint_every_s,
                          should_stop=stop.is_set, probe=probe)
    except StopRequested as e:
        finished.set()
        chan.send(Stopped(message=str(e)))
        return EXIT_STOPPED
    probe.phase = "writing results"
    out = workdir / "result"
    try:
        # An image job's result names the image's digest (what ran), not its source files'.
        rs = to_resultset(result, inputs_of(bundle, spec, plan, params,
                                            digest=job.strategy_digest), spec.config,
                          {"host": os.uname().nodename, "resumed_from_ticks": resumed_from})
        manifest = write_results(rs, out)
    except (TypeError, ValueError) as e:
        raise ResultBuildError(f"cannot write the results: {e}") from e
    finished.set()
    chan.send(Done(result_dir=str(out), result_hash=manifest["result_hash"], metrics=rs.metrics,
                   ticks=result.ticks, resumed_from_ticks=resumed_from))
    return EXIT_OK


def _image_strategy() -> Any:
    """The strategy a strategy image carries: ``TICKREPLAY_STRATEGY`` (``file.py[:Class]`` or
    ``module:Class``), set by ``tickreplay image build``."""
    from tickreplay.errors import SpecError
    from tickreplay.strategy.loader import bundle_from_spec

    target = os.environ.get("TICKREPLAY_STRATEGY", "")
    if not target:
        raise SpecError("field 'strategy_image': the image sets no TICKREPLAY_STRATEGY (build "
                        "it with `tickreplay image build`, or set ENV TICKREPLAY_STRATEGY)")
    return bundle_from_spec(target)


def preload() -> None:
    """Import everything a run needs BEFORE the job arrives.

    Workers keep one runner process spawned ahead of need; with the imports (pyarrow, pandas:
    ~0.5 s) already done, a job starts in milliseconds.
    """
    import tickreplay.results
    import tickreplay.runner.driver
    import tickreplay.spec  # noqa: F401


def _limit(job: RunnerJob) -> None:
    """The job's rlimits, set before any strategy code runs: address space, size of any file
    written, open files. (Processes are capped by the runner's pids cgroup: RLIMIT_NPROC does
    not bind root.) A strategy cannot raise them again: hard limits only go down."""
    mb = 1024 * 1024
    for which, value in ((resource.RLIMIT_AS, job.memory_mb * mb),
                         (resource.RLIMIT_FSIZE, job.file_mb * mb),
                         (resource.RLIMIT_NOFILE, job.open_files)):
        if value > 0:
            resource.setrlimit(which, (value, value))


def main() -> None:
    """Read the job from the channel, run it, report on the channel; exit code says how it ended."""
    ap = argparse.ArgumentParser()
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited socket (process and sandbox)")
    where.add_argument("--socket", help="a Unix socket to connect to (a pod's /out/chan.sock)")
    args = ap.parse_args()
    # SIGTERM before a job: nothing to save. (As a container's PID 1, Python would ignore it.)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(EXIT_STOPPED))
    if args.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
    else:
        sock = socket.socket(fileno=args.fd)
    chan = Channel(sock)
    preload()
    line = chan.readline()
    if not line:  # the worker shut down before giving this spare runner a job
        os._exit(0)
    job = RunnerJob.model_validate_json(line)
    _limit(job)
    stop = threading.Event()
    # SIGTERM during the run (a node drain, a spot reclaim, `podman kill -s TERM`): the same as
    # the worker's ``stop``: a final checkpoint, then exit.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch, args=(chan, stop), daemon=True).start()
    try:
        code = run(job, chan, stop)
    except BaseException as e:  # noqa: BLE001 - report all; the parent classifies
        kind, retryable = classify(e)
        # Our own errors are named by ``kind``; only a foreign exception needs its type name.
        msg = f"{type(e).__name__}: {e}" if kind == RunnerError.code else str(e)
        if _out_of_memory(e):
            kind, msg = OutOfMemory.code, (f"out of memory: the strategy went over the "
                                           f"{job.memory_mb} MB memory cap ({msg})")
        try:
            chan.send(Failed(kind=kind, retryable=retryable, message=msg,
                             traceback="".join(traceback.format_exception(e))))
        except OSError:
            pass
        code = EXIT_ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _out_of_memory(e: BaseException) -> bool:
    """A MemoryError, or one the engine wrapped as the strategy's error."""
    while e is not None:
        if isinstance(e, MemoryError):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


if __name__ == "__main__":
    main()
