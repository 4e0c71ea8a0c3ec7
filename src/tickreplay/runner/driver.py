"""Running one backtest: the I/O shell around the pure engine.

plan -> fetch partitions into the node-local cache (sha256-verified) -> stream merged batches ->
engine -> ResultSet. The same function serves ``tickreplay run`` and the Temporal activity's
child process; the latter adds checkpoint/stop hooks.
"""

from __future__ import annotations

import platform
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tickreplay
from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import DataPlan, Partition, plan_data
from tickreplay.data.errors import DataError
from tickreplay.data.objectstore import ObjectStore, open_store
from tickreplay.data.stream import check_partition, open_event_stream, open_tick_stream
from tickreplay.engine.config import RunConfig
from tickreplay.engine.core import ENGINE_VERSION, Engine, EngineResult, data_kinds
from tickreplay.results import ResultSet
from tickreplay.results.metrics import compute
from tickreplay.runner import protocol
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.strategy.loader import StrategyBundle, bundle_from_spec, load_strategy

T = TypeVar("T")
TICK_BATCH = 65_536
VECTOR_BATCH = 262_144


@dataclass
class Progress:
    """Where a run is: ticks done of the total, and the simulated time reached."""

    ticks_done: int
    ticks_total: int
    sim_ts: int
    elapsed_s: float


class RunProbe:
    """Where a running simulation is, readable from another thread (for time-based progress).

    ``simulate`` records the engine and, per chunk, its timestamps and how many ticks came
    before it; ``position()`` then finds the tick being processed from the engine's current
    tick timestamp, so a strategy stuck in ``on_tick`` is reported at the tick where it really
    is, not at the start of its chunk. Nothing is added to the per-tick loop.
    """

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.chunk_ts: Any = None
        self.chunk_base = 0
        self.phase = "starting"

    def position(self) -> protocol.Progress:
        """``ticks_done, tick, sim_ts, symbol, phase`` as of now.

        ``tick`` is the 1-based number of the tick being processed (the first of its
        timestamp, if several ticks share it); ``ticks_done`` counts the ticks before it.
        """
        import numpy as np

        eng, ts, base = self.engine, self.chunk_ts, self.chunk_base
        if eng is None:
            return protocol.Progress(phase=self.phase)
        now = int(eng._tick.ts or 0)
        done = eng.ticks_done
        if ts is not None and self.phase == "running" and len(ts):
            done = base + int(np.searchsorted(ts, now, side="left"))
        return protocol.Progress(ticks_done=done, tick=done + 1 if self.phase == "running" else done,
                                 sim_ts=now, symbol=eng._tick.symbol, phase=self.phase)


class StopRequested(Exception):
    """The caller asked the run to stop (worker shutdown); a final checkpoint was handed over."""


def fetch_plan(plan: DataPlan, store: ObjectStore, cache: PartitionCache,
               on_fetched: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Bring every partition of the plan into the cache; returns key -> verified local path.

    A plan larger than the cache cap is refused up front: fetching it would evict its own
    first partitions before they are read.
    """
    need = sum(p.size for p in plan.partitions)
    if need > cache.max_bytes:
        raise DataError(f"the data plan needs {need / 1e9:.2f} GB but the node cache is capped "
                        f"at {cache.max_bytes / 1e9:.2f} GB (TICKREPLAY_CACHE_MAX_BYTES)")
    paths = {}
    for i, p in enumerate(plan.partitions):
        paths[p.key] = cache.fetch(store, p)
        if on_fetched is not None:
            on_fetched(i + 1)
    return paths


def count_ticks(paths: dict[str, Path]) -> int:
    """Total rows of the plan, from Parquet footers only; every partition is checked on the way.

    Raises:
        CorruptDataError: A partition is empty, damaged or has a wrong schema (named).
    """
    return sum(check_partition(path, key) for key, path in paths.items())


def prefetch(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """Produce ``items`` from a background thread, ``depth`` ahead of the consumer.

    Parquet decoding releases the GIL, so reading batch k+1 overlaps simulating batch k on a
    second core. Order is preserved and errors are re-raised in the consumer at the point
    where the failing item would have been.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(("error", e))

    thread = threading.Thread(target=work, name="tickreplay-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        # Never leave the reader inside pyarrow when the caller is done (or failed): a process
        # exiting with that thread mid-read aborts ("terminate called without an active
        # exception") after the real error was printed.
        thread.join(timeout=10)


def simulate(
    bundle: StrategyBundle,
    params: dict[str, Any],
    plan: DataPlan,
    config: RunConfig,
    resolve: Callable[[Partition], Path],
    *,
    ticks_total: int = 0,
    checkpoint: bytes | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_checkpoint: Callable[[bytes, int], None] | None = None,
    checkpoint_every_s: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
    stats: dict[str, float] | None = None,
    probe: RunProbe | None = None,
) -> EngineResult:
    """Drive the engine over the plan's merged stream, from the start or from a checkpoint.

    ``on_checkpoint(blob, ticks_done)`` is called every ``checkpoint_every_s`` seconds of work,
    and once more before raising :class:`StopRequested` when ``should_stop()`` turns true.
    ``stats`` (if given) receives ``checkpoints`` and ``checkpoint_s``: the count and the wall
    time spent serialising and storing them.
    """
    strategy, _ = load_strategy(bundle, params)
    engine = (Engine.restore(checkpoint, strategy) if checkpoint
              else Engine(strategy, plan.symbols, config))
    if probe is not None:
        probe.engine = engine
        probe.phase = "on_start"
    engine.start()
    # The per-tick path always fills tick.price and tick.size; the vectorised path reads only
    # what the strategy declares (plus price, which fills need).
    base = ["price"] if engine.vectorized else ["price", "size"]
    columns = [*base, *(c for c in strategy.columns if c not in (*base, "ts", "symbol"))]
    batch = VECTOR_BATCH if engine.vectorized else TICK_BATCH
    if engine.kinds == ("trades",):
        events = open_tick_stream(plan, columns, resolve, batch_size=batch,
                                  offsets=engine.offsets())
    else:
        _check_kinds(plan, engine.kinds)
        events = open_event_stream(plan, columns, resolve, batch_size=batch,
                                   offsets=engine.offsets(), events=engine.kinds)
    stream = prefetch(events)
    counters = stats if stats is not None else {}
    counters.setdefault("checkpoints", 0)
    counters.setdefault("checkpoint_s", 0.0)

    def take_checkpoint() -> None:
        started = time.perf_counter()
        on_checkpoint(engine.checkpoint(), engine.ticks_done)  # type: ignore[misc]
        counters["checkpoints"] += 1
        counters["checkpoint_s"] += time.perf_counter() - started

    try:
        return _drive(engine, stream, probe, on_progress, on_checkpoint, should_stop,
                      take_checkpoint, ticks_total, checkpoint_every_s)
    finally:
        stream.close()  # stops and joins the prefetch thread at once, also on errors


def _check_kinds(plan: DataPlan, kinds: tuple[str, ...]) -> None:
    """Refuse a run whose plan lacks a kind of data the run reads: under the quote model a
    plan without quotes would fill nothing and look like a quiet strategy."""
    have = {p.kind for p in plan.partitions}
    missing = [k for k in kinds if k not in have]
    if missing:
        raise DataError(
            f"the run reads {' and '.join(kinds)} but its data plan has no {' or '.join(missing)} "
            f"partitions ({plan.url}, {','.join(plan.symbols)}, {plan.start}..{plan.end}): "
            "add them (tickreplay data generate --quotes, data ingest --kind quotes) or set the "
            "spec's events")


def _drive(engine: Engine, stream: Iterator[Any], probe: RunProbe | None,
           on_progress: Callable[[Progress], None] | None,
           on_checkpoint: Callable[[bytes, int], None] | None,
           should_stop: Callable[[], bool] | None, take_checkpoint: Callable[[], None],
           ticks_total: int, checkpoint_every_s: float) -> EngineResult:
    """The feed loop of :func:`simulate`: chunks in, progress/checkpoint/stop hooks between."""
    t0 = last_ckpt = time.monotonic()
    for chunk in stream:
        if probe is not None:
            probe.chunk_base, probe.chunk_ts = engine.ticks_done, chunk.column(0).to_numpy()
            probe.phase = "running"
        engine.feed(chunk)
        now = time.monotonic()
        if on_progress is not None:
            on_progress(Progress(engine.ticks_done, ticks_total, int(chunk.column(0)[-1].as_py()),
                                 now - t0))
        if should_stop is not None and should_stop():
            if on_checkpoint is not None:
                take_checkpoint()
            raise StopRequested(f"stopped after {engine.ticks_done} ticks")
        if on_checkpoint is not None and now - last_ckpt >= checkpoint_every_s:
            take_checkpoint()
            last_ckpt = time.monotonic()
    if probe is not None:
        probe.phase = "on_stop"
    return engine.finish()


def inputs_of(bundle: StrategyBundle, spec: BacktestSpec, plan: DataPlan,
              params: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    """What the result is a function of (hashed): never paths, hosts or times. ``digest``
    names the strategy when it is not the bundle's own (a strategy image's manifest)."""
    return {
        "strategy_digest": digest or bundle.digest,
        "strategy_entry": bundle.entry,
        "strategy_class": bundle.class_name,
        "data_fingerprint": plan.fingerprint,
        "symbols": list(plan.symbols),
        "start": spec.start.isoformat(),
        "end": spec.end.isoformat(),
        "params": params,
        "config": spec.config.model_dump(mode="json"),
        "engine_version": ENGINE_VERSION,
        "tickreplay_version": tickreplay.__version__,
    }


def to_resultset(result: EngineResult, inputs: dict[str, Any], config: RunConfig,
                 run_info: dict[str, Any]) -> ResultSet:
    """Engine output + metrics + inputs, ready to be written and hashed."""
    metrics = compute(result.equity, result.trades, initial_equity=config.initial_cash,
                      exposure_days=result.exposure_days)
    metrics["ticks"] = result.ticks
    metrics["open_orders_at_end"] = result.open_orders
    return ResultSet(trades=result.trades, equity=result.equity, metrics=metrics,
                     logs=result.logs, inputs=inputs, run_info=run_info)


def validated_params(bundle: StrategyBundle, params: dict[str, Any]) -> dict[str, Any]:
    """The strategy's Params, validated and with defaults filled in (JSON form)."""
    strategy, _ = load_strategy(bundle, params)
    return strategy.params.model_dump(mode="json")


def run_local(spec: BacktestSpec, settings: Settings, *,
              on_progress: Callable[[Progress], None] | None = None) -> ResultSet:
    """``tickreplay run``: plan, cache, simulate in this process, return the ResultSet."""
    started = time.time()
    bundle = bundle_from_spec(spec.strategy)
    strategy, _ = load_strategy(bundle, spec.params)
    params = strategy.params.model_dump(mode="json")
    store = open_store(spec.data_url, settings)
    kinds = spec.kinds() if spec.events is not None else \
        data_kinds(strategy.events, spec.config.fill_model)
    plan = plan_data(store, spec.symbols, spec.start, spec.end, events=kinds)
    cache = PartitionCache(settings.resolved_cache_dir(), settings.cache_max_bytes)
    paths = fetch_plan(plan, store, cache)
    total = count_ticks(paths)
    t0 = time.perf_counter()
    result = simulate(bundle, params, plan, spec.config, lambda p: paths[p.key],
                      ticks_total=total, on_progress=on_progress)
    elapsed = time.perf_counter() - t0
    run_info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "started_at": started,
        "sim_seconds": round(elapsed, 3),
        "ticks_per_s": round(result.ticks / elapsed) if elapsed > 0 else None,
        "data_url": spec.data_url,
        "strategy": spec.strategy,
    }
    return to_resultset(result, inputs_of(bundle, spec, plan, params), spec.config, run_info)
