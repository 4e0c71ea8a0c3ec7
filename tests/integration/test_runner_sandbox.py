"""The runner as the worker drives it, on each backend: a real process, real bubblewrap, a real
podman Pod of the runner image; its private protocol channel, its bounded output, and what user
code inside it can (not) reach.

No Temporal here: the test plays the worker's side (``RunnerPool`` + the job message), so each
case takes a second or two. The Temporal-level behaviour is in test_integrity.py and
test_backends_temporal.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import plan_data
from tickreplay.data.generate import generate
from tickreplay.data.objectstore import LocalStore
from tickreplay.results import load_results, result_hash
from tickreplay.runner.backends import RunnerPool
from tickreplay.runner.driver import fetch_plan, run_local
from tickreplay.runner.pool import sandbox_mode
from tickreplay.runner.protocol import RunnerJob
from tickreplay.settings import Settings
from tickreplay.spec import BacktestSpec
from tickreplay.strategy.loader import bundle_from_spec, load_strategy

STRATEGIES = Path(__file__).resolve().parents[1] / "strategies"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("runner")
    store = LocalStore(base / "data")
    generate(store, ["AAA", "BBB"], "2024-03-04", "2024-03-05", ticks_per_day=20_000, seed=3)
    # Enough ticks for several batches of 65,536 (a stop is seen between batches).
    generate(store, ["LONG"], "2024-03-04", "2024-03-05", ticks_per_day=100_000, seed=4)
    settings = Settings(home=base / "home", cache_dir=base / "cache")
    settings.platform_key(create=True)  # the key file the sandbox must hide
    return {"base": base, "store": store, "settings": settings}


@pytest.fixture
def listener() -> Iterator[str]:
    """A real TCP server on the host: reachable from the worker, not from a sandboxed runner."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def _spec(world: dict[str, Any], strategy: str, params: dict[str, Any],
          symbols: str = "AAA,BBB") -> BacktestSpec:
    return BacktestSpec.parse({"strategy": strategy, "data_url": str(world["base"] / "data"),
                               "symbols": symbols, "start": "2024-03-04", "end": "2024-03-05",
                               "params": params})


def _job(world: dict[str, Any], spec: BacktestSpec, runner: Any,
         checkpoint: Path | None = None, resumed_from: int = 0) -> RunnerJob:
    """What the worker's run_backtest sends: local paths only (the job's partitions staged for
    this runner), no credentials."""
    bundle = bundle_from_spec(spec.strategy)
    params = load_strategy(bundle, spec.params)[0].params.model_dump(mode="json")
    plan = plan_data(world["store"], spec.symbols, spec.start, spec.end)
    cache = PartitionCache(world["settings"].resolved_cache_dir(), 10**10)
    paths = fetch_plan(plan, world["store"], cache)
    return RunnerJob(job_id="t", spec={**spec.model_dump(mode="json"), "params": params},
                     bundle=bundle.to_bytes().decode(), strategy_digest=bundle.digest,
                     plan=plan.to_dict(), paths=runner.stage_inputs(paths),
                     ticks_total=0, checkpoint_every_s=3600,
                     checkpoint_file=runner.visible(checkpoint) if checkpoint else None,
                     resumed_from=resumed_from, workdir=runner.visible(runner.workdir),
                     memory_mb=2048, file_mb=64, open_files=256)


def _on(world: dict[str, Any], backend: str) -> Settings:
    """The world's settings on ``backend`` (podman: the checkout's runner image)."""
    update: dict[str, Any] = {"runner_backend": backend}
    if backend == "podman":
        update["runner_image"] = world["image"]
    return world["settings"].model_copy(update=update)


async def _drive(world: dict[str, Any], spec: BacktestSpec, until: Any = None,
                 timeout: float = 60, backend: str = "sandbox", then: Any = None,
                 checkpoint: bytes | None = None, resumed_from: int = 0,
                 ) -> tuple[list[dict[str, Any]], Any]:
    """Run one job on a fresh runner; collect every protocol message until the channel closes
    (or ``until(messages)`` is true: then ``then(runner)`` is called if given, and the
    runner killed if not). ``checkpoint`` resumes the run from those bytes."""
    pool = RunnerPool(_on(world, backend), world["base"] / "runs")
    runner = await pool.acquire()
    msgs: list[dict[str, Any]] = []
    try:
        ckpt = None
        if checkpoint is not None:
            ckpt = runner.workdir / "resume.ckpt"
            ckpt.write_bytes(checkpoint)
        await runner.send(_job(world, spec, runner, ckpt, resumed_from))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(runner.messages.get(), 1.0)
            except TimeoutError:
                continue
            if msg is None:
                break
            msgs.append(msg.model_dump())  # typed on the wire; dicts here for brevity
            if msg.type == "checkpoint":  # read before the runner's dir goes
                msgs[-1]["blob"] = (runner.workdir / Path(msg.path).name).read_bytes()
            if until is not None and until(msgs):
                if then is None:
                    break
                then(runner)
                until = None
        results = None
        done = [m for m in msgs if m["type"] == "done"]
        if done:
            results = load_results(runner.workdir / "result")
        code = await runner.wait() if until is None else None
        return msgs, (results, {**runner.output(), "code": code})
    finally:
        await runner.close()
        await pool.close()


def test_bubblewrap_is_the_sandbox_here(world: dict[str, Any]) -> None:
    assert sandbox_mode(world["settings"]) == "bwrap"  # `make setup` installs it


async def test_user_code_cannot_spoof_the_protocol_or_reach_keys_credentials_or_network(
        world: dict[str, Any], listener: str) -> None:
    """Before: the strategy's fake "done" line on stdout was taken for the runner's, and its
    unterminated print in on_stop swallowed the real one (RunnerDied ... code 0)."""
    spec = _spec(world, f"{STRATEGIES / 'hostile.py'}:Hostile",
                 {"home": str(world["settings"].home), "endpoint": listener})
    msgs, (results, output) = await _drive(world, spec)
    done = [m for m in msgs if m["type"] == "done"]
    assert len(done) == 1 and done[0]["result_hash"] != "0" * 64
    # Its trades are what the engine made of its orders (its probe log differs outside the
    # sandbox, where it does find the key: so compare trades and equity, not the hash).
    local = run_local(spec, world["settings"])
    assert results.trades.num_rows > 10
    assert results.trades.equals(local.trades) and results.equity.equals(local.equity)
    assert done[0]["result_hash"] == result_hash(results)
    assert not [m for m in msgs if m.get("staging_prefix") == "staging/evil"]
    # The strategy's prints are its output, kept for the job's logs, not protocol.
    assert '"staging_prefix": "staging/evil"' in output["stdout"]
    assert output["stdout"].endswith('{"type": "progress", "ticks_done": 0')
    assert "hostile strategy says bye" in output["stderr"]
    (probe,) = [r for r in results.logs if r["msg"] == "probe"]
    assert probe["env"] == []  # no TICKREPLAY_*, AWS_* or *KEY*/*SECRET* variables
    assert probe["key"] == ""  # <home>/signing.key is not mounted
    assert probe["network"].startswith("refused")  # no network namespace route to the host
    assert "tickreplay.workers" not in probe["proc_1"]  # its own pid namespace


async def test_progress_comes_every_second_and_names_the_tick_of_a_stuck_strategy(
        world: dict[str, Any]) -> None:
    """Before: progress came every 65,536 ticks, so a loop at tick 5000 was reported at tick 0."""
    spec = _spec(world, f"{STRATEGIES / 'stuck.py'}:StuckAt", {"at": 5000})

    def stuck_seen(msgs: list[dict[str, Any]]) -> bool:
        prog = [m for m in msgs if m["type"] == "progress"]
        return len(prog) >= 3 and prog[-1]["tick"] == prog[-3]["tick"] == 5000

    msgs, _ = await _drive(world, spec, until=stuck_seen, timeout=30)
    prog = [m for m in msgs if m["type"] == "progress"]
    assert stuck_seen(msgs), prog[-3:]
    assert prog[-1]["phase"] == "running" and prog[-1]["symbol"] in ("AAA", "BBB")
    assert prog[-1]["ticks_done"] == 4999 and prog[-1]["sim_ts"] > 0


async def test_a_slow_strategy_reports_moving_progress_every_second(world: dict[str, Any]) -> None:
    spec = _spec(world, f"{STRATEGIES / 'stuck.py'}:Slow", {"work": 20_000})

    def three(msgs: list[dict[str, Any]]) -> bool:
        return len([m for m in msgs if m["type"] == "progress"]) >= 3

    msgs, _ = await _drive(world, spec, until=three, timeout=30)
    ticks = [m["tick"] for m in msgs if m["type"] == "progress"]
    assert len(ticks) >= 3 and ticks[-1] > ticks[-3] > 0, ticks
    assert ticks[-1] < 65_536  # the old per-chunk progress would not have reported anything yet


def test_checkpoint_and_result_files_are_opened_without_following_symlinks(
        tmp_path: Path) -> None:
    """A runner could leave a symlink to the key file where the worker reads its output."""
    from tickreplay.activities.node import read_regular as _read_regular

    secret = tmp_path / "signing.key"
    secret.write_text("00" * 32)
    link = tmp_path / "ckpt-0000000001000.bin"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        _read_regular(link)
    assert json.loads(json.dumps({"ok": True}))  # the module imported without Temporal running


@pytest.fixture
def another_job(world: dict[str, Any]) -> Iterator[Path]:
    """Another job's output directory on the same node, with a result file in it."""
    other = world["base"] / "home" / "runs" / "node" / "run-other"
    other.mkdir(parents=True, exist_ok=True)
    (other / "trades.csv").write_text("secret trades\n")
    yield other / "trades.csv"


def _attack(world: dict[str, Any], attack: str, target: str = "", backend: str = "sandbox"
            ) -> str:
    """Run one Escape attack and return the job's failure message (it must fail)."""
    spec = _spec(world, f"{STRATEGIES / 'escape.py'}:Escape", {"attack": attack,
                                                                "target": target})
    msgs, (_, output) = asyncio.run(_drive(world, spec, backend=backend))
    failed = [m for m in msgs if m["type"] == "error"]
    assert failed and not [m for m in msgs if m["type"] == "done"], (msgs, output)
    return str(failed[0]["message"])


@pytest.fixture(params=["sandbox", "podman"])
def backend(request: pytest.FixtureRequest, world: dict[str, Any]) -> str:
    """Each confining backend; podman runs the checkout's runner image (built if stale)."""
    if request.param == "podman":
        world["image"] = request.getfixturevalue("runner_image")
    return str(request.param)


# What each attack gets; "a|b": either (a pod's root is the image, so a host path that the
# sandbox shows read-only does not exist there at all).
ATTACKS = [
    ("connect", "LISTENER", "Connection refused"),  # a socket to a port on the host
    ("connect", "S3", "Connection refused"),  # the object store the worker uses
    ("read", "/etc/shadow", "Permission denied"),  # the host's private files: a dead stand-in
    ("read", "OTHER_JOB", "No such file"),  # another job's output directory
    ("read", "STACK_ENV", "No such file"),  # the stack's S3 credentials file
    ("read", "SIGNING_KEY", "No such file"),  # the platform key
    ("read", "WORKER_ENV", "No such file"),  # the worker's environment: another pid namespace
    ("read", "OTHER_PARTITION", "No such file"),  # a partition of the cache it was not given
    ("write", "/etc/tickreplay-was-here", "Read-only file system"),
    ("write", "/tmp/x", "Read-only file system"),
    ("write", "HOME_FILE", "Read-only file system|No such file"),
    ("fork", "", "fork stopped after"),
    ("allocate", "20", "out of memory"),
    ("system", "id > /dev/null 2>&1", "os.system returned 32512"),  # no shell to run
]


@pytest.mark.parametrize("attack, target, refused", ATTACKS)
def test_hostile_strategies_fail_only_their_own_job(
        world: dict[str, Any], listener: str, another_job: Path, attack: str, target: str,
        refused: str, backend: str) -> None:
    """Each attack fails its job with a message saying how it was refused; the next job on
    the same node still runs (the sandbox or pod is per runner, the worker unharmed)."""
    settings = world["settings"]
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "stack.env").write_text("TICKREPLAY_S3_SECRET_KEY=top-secret\n")
    cache = settings.resolved_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    unrelated = cache / "another-jobs-partition.parquet"  # in the node cache, not this job's
    unrelated.write_bytes(b"PAR1")
    target = {"LISTENER": listener, "S3": "http://127.0.0.1:8333",
              "OTHER_JOB": str(another_job), "STACK_ENV": str(settings.home / "stack.env"),
              "SIGNING_KEY": str(settings.home / "signing.key"),
              "OTHER_PARTITION": str(unrelated),
              "HOME_FILE": str(settings.home / "planted"),
              "WORKER_ENV": f"/proc/{os.getpid()}/environ"}.get(target, target)
    message = _attack(world, attack, target, backend)
    print(f"{backend} {attack} {target}: {message}")  # the figures of the closing note (-s)
    assert any(r in message for r in refused.split("|")), message
    if attack == "allocate":
        assert "2048 MB" in message  # the cap it hit, named
    if backend == "podman" and attack not in ("fork", "allocate"):
        return  # a fresh pod per job: only the attacks on the node's resources are re-checked
    # The node is unharmed: a normal job right after runs to the end.
    msgs, _ = asyncio.run(_drive(world, _spec(world, str(STRATEGIES.parent.parent / "examples"
                                                         / "sma_cross.py"),
                                               {"fast": 5, "slow": 20}), backend=backend))
    assert [m for m in msgs if m["type"] == "done"]


SMA = str(STRATEGIES.parent.parent / "examples" / "sma_cross.py")


def test_the_same_job_gives_the_same_result_hash_on_every_backend(
        world: dict[str, Any], runner_image: str) -> None:
    """process, sandbox and podman (the runner image, Debian's Python) agree bit for bit, and
    with ``tickreplay run`` in this process."""
    world["image"] = runner_image
    spec = _spec(world, SMA, {"fast": 5, "slow": 20})
    hashes = {}
    for backend in ("process", "sandbox", "podman"):
        msgs, (results, _) = asyncio.run(_drive(world, spec, backend=backend))
        (done,) = [m for m in msgs if m["type"] == "done"]
        assert done["result_hash"] == result_hash(results)
        hashes[backend] = done["result_hash"]
    print(f"result hash per backend: {hashes}")
    assert len(set(hashes.values())) == 1, hashes
    assert set(hashes.values()) == {result_hash(run_local(spec, world["settings"]))}


@pytest.mark.parametrize("where", ["sandbox", "podman"])
def test_sigterm_writes_a_final_checkpoint_that_resumes_to_the_same_hash(
        world: dict[str, Any], where: str, request: pytest.FixtureRequest) -> None:
    """A drain or spot reclaim SIGTERMs the runner (the pod's init, the sandbox's Python): it
    checkpoints at the next batch, says ``stopped`` and exits 4; a new runner resumes from
    that checkpoint to the uninterrupted run's hash."""
    if where == "podman":
        world["image"] = request.getfixturevalue("runner_image")
    spec = _spec(world, f"{STRATEGIES / 'stuck.py'}:Slow", {"work": 300}, symbols="LONG")
    whole, (results, _) = asyncio.run(_drive(world, spec, backend=where))
    expected = next(m for m in whole if m["type"] == "done")["result_hash"]

    def running(msgs: list[dict[str, Any]]) -> bool:  # the run has begun (job in hand)
        return any(m["type"] == "started" for m in msgs)

    msgs, (_, out) = asyncio.run(_drive(world, spec, until=running, backend=where,
                                        then=lambda runner: runner.terminate()))
    kinds = [m["type"] for m in msgs]
    assert "done" not in kinds and kinds[-2:] == ["checkpoint", "stopped"], kinds
    assert out["code"] == 4, out  # EXIT_STOPPED
    ckpt = msgs[-2]
    assert 0 < ckpt["ticks_done"] < results.metrics["ticks"]
    resumed, _ = asyncio.run(_drive(world, spec, backend=where, checkpoint=ckpt["blob"],
                                    resumed_from=ckpt["ticks_done"]))
    (done,) = [m for m in resumed if m["type"] == "done"]
    assert done["resumed_from_ticks"] == ckpt["ticks_done"]
    assert done["result_hash"] == expected


@pytest.mark.parametrize("where", ["sandbox", "podman"])
def test_an_oom_kill_by_the_memory_cap_is_told_apart_from_any_other_death(
        world: dict[str, Any], where: str, request: pytest.FixtureRequest) -> None:
    """Memory that address-space accounting does not stop (here: no RLIMIT_AS at all) is
    stopped by the runner's memory cgroup (the pod's memory limit), and the worker can tell
    that kill from a crash: ``run_backtest`` then fails the job as OutOfMemory."""
    if where == "podman":
        world["image"] = request.getfixturevalue("runner_image")
    settings = _on(world, where).model_copy(update={"run_memory_mb": 300})
    spec = _spec(world, f"{STRATEGIES / 'escape.py'}:Escape", {"attack": "allocate",
                                                                "target": "2"})

    async def go() -> tuple[list[Any], int, bool]:
        pool = RunnerPool(settings, world["base"] / "runs")
        runner = await pool.acquire()
        try:
            job = _job(world, spec, runner).model_copy(update={"memory_mb": 0})
            await runner.send(job)
            msgs = []
            while (msg := await asyncio.wait_for(runner.messages.get(), 60)) is not None:
                msgs.append(msg)
            return msgs, await runner.wait(), runner.oom_killed()
        finally:
            await runner.close()
            await pool.close()

    msgs, code, oom = asyncio.run(go())
    assert not [m for m in msgs if m.type in ("done", "error")], msgs  # killed, no last word
    assert code != 0 and oom, (code, oom)
