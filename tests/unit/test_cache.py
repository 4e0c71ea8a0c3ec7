"""PartitionCache: hits and misses, integrity, LRU eviction, and two processes racing a fetch."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import re
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import Partition
from tickreplay.data.errors import CorruptDataError
from tickreplay.data.objectstore import LocalStore
from tickreplay.data.schema import partition_key


def _put(store: LocalStore, symbol: str, date: str, data: bytes) -> Partition:
    key = partition_key(symbol, date)
    store.put_bytes(key, data)
    return Partition(symbol, date, key, len(data), hashlib.sha256(data).hexdigest())


class CountingStore(LocalStore):
    """A LocalStore that counts downloads, to tell a hit from a miss by what the store saw."""

    downloads = 0

    def download(self, key: str, dest: Path) -> None:
        self.downloads += 1
        super().download(key, dest)


def _leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "catalog")


def test_miss_then_hit(store: CountingStore, tmp_path: Path) -> None:
    part = _put(store, "AAPL", "2024-01-02", b"a" * 100)
    cache = PartitionCache(tmp_path / "cache", max_bytes=10_000)

    first = cache.fetch(store, part)
    second = cache.fetch(store, part)

    assert first == second == tmp_path / "cache" / "objects" / part.sha256[:2] / f"{part.sha256}.parquet"
    assert first.read_bytes() == b"a" * 100
    assert store.downloads == 1
    assert cache.stats() == {"hits": 1, "misses": 1, "bytes": 100}


def test_corrupted_cached_file_is_fetched_again(
    store: CountingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    part = _put(store, "AAPL", "2024-01-02", b"price data" * 10)
    cache = PartitionCache(tmp_path / "cache", max_bytes=10_000)
    path = cache.fetch(store, part)
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="tickreplay.data.cache"):
        again = cache.fetch(store, part)

    assert again.read_bytes() == b"price data" * 10
    assert store.downloads == 2
    assert part.key in caplog.text


def test_source_bytes_not_matching_the_plan_raise_naming_the_key(
    store: CountingStore, tmp_path: Path
) -> None:
    part = _put(store, "MSFT", "2024-01-03", b"original")
    store.put_bytes(part.key, b"tampered")  # the object changed after planning
    cache = PartitionCache(tmp_path / "cache", max_bytes=10_000)

    with pytest.raises(CorruptDataError, match=re.escape(part.key)):
        cache.fetch(store, part)

    assert not cache.path_for(part.sha256).exists()
    assert _leftovers(tmp_path / "cache") == []
    assert cache.stats()["bytes"] == 0


def test_missing_object_raises_and_leaves_nothing(store: CountingStore, tmp_path: Path) -> None:
    part = Partition("AAPL", "2024-01-02", partition_key("AAPL", "2024-01-02"), 1, "0" * 64)
    cache = PartitionCache(tmp_path / "cache", max_bytes=10_000)
    with pytest.raises(FileNotFoundError, match=re.escape(part.key)):
        cache.fetch(store, part)
    assert _leftovers(tmp_path / "cache") == []


def test_partition_without_sha256_is_refused(store: CountingStore, tmp_path: Path) -> None:
    part = _put(store, "AAPL", "2024-01-02", b"x")
    cache = PartitionCache(tmp_path / "cache", max_bytes=10_000)
    with pytest.raises(ValueError, match="sha256"):
        cache.fetch(store, Partition(part.symbol, part.date, part.key, part.size, ""))


def test_lru_evicts_least_recently_used_first(store: CountingStore, tmp_path: Path) -> None:
    a = _put(store, "AAA", "2024-01-02", b"a" * 400)
    b = _put(store, "BBB", "2024-01-02", b"b" * 400)
    c = _put(store, "CCC", "2024-01-02", b"c" * 400)
    cache = PartitionCache(tmp_path / "cache", max_bytes=1000)  # room for two

    cache.fetch(store, a)
    cache.fetch(store, b)
    cache.fetch(store, a)  # a is now more recently used than b
    cache.fetch(store, c)

    assert cache.path_for(a.sha256).exists()
    assert not cache.path_for(b.sha256).exists()
    assert cache.path_for(c.sha256).exists()
    assert not cache.path_for(b.sha256).with_suffix(".lock").exists()

    cache.fetch(store, b)  # an evicted object comes back on demand, pushing out the LRU (a)
    assert not cache.path_for(a.sha256).exists()
    assert cache.path_for(c.sha256).exists()
    assert store.downloads == 4


def test_object_larger_than_the_cap_is_kept_while_in_use(store: CountingStore, tmp_path: Path) -> None:
    small = _put(store, "AAA", "2024-01-02", b"s" * 10)
    big = _put(store, "BBB", "2024-01-02", b"B" * 500)
    cache = PartitionCache(tmp_path / "cache", max_bytes=100)
    cache.fetch(store, small)
    path = cache.fetch(store, big)
    assert path.read_bytes() == b"B" * 500
    assert not cache.path_for(small.sha256).exists()


class GatedStore(LocalStore):
    """Announces a download, then holds it until the test releases it: a controllable race."""

    def __init__(self, root: Path, started: Event, release: Event) -> None:
        super().__init__(root)
        self.started = started
        self.release = release

    def download(self, key: str, dest: Path) -> None:
        self.started.set()
        if not self.release.wait(120):
            raise TimeoutError("test never released the download")
        super().download(key, dest)


def _fetch_in_child(
    cache_root: str, store_root: str, part: Partition, started: Event, release: Event, out: str
) -> None:
    cache = PartitionCache(Path(cache_root), max_bytes=10_000)
    path = cache.fetch(GatedStore(Path(store_root), started, release), part)
    Path(out).write_text(json.dumps({"path": str(path), "stats": cache.stats()}))


def _flock_waiters(inode: int) -> int:
    """Processes blocked in flock() on this inode, per the kernel's lock table."""
    pattern = re.compile(rf"->\s+FLOCK\s.*:{inode}\s")
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if pattern.search(line))


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_two_processes_fetching_at_once_download_once(tmp_path: Path) -> None:
    data = b"shared partition " * 1000
    part = _put(LocalStore(tmp_path / "catalog"), "AAPL", "2024-01-02", data)
    cache_root = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [
        ctx.Process(
            target=_fetch_in_child,
            args=(str(cache_root), str(tmp_path / "catalog"), part, started, release, str(o)),
        )
        for o in outs
    ]
    for p in procs:
        p.start()
    try:
        # One process is inside the download holding the object's lock; wait until the other is
        # provably blocked on that lock (the kernel lists it as a waiter), then let it finish.
        _wait_for(started.is_set, "a download to start")
        lock = PartitionCache(cache_root, 1).path_for(part.sha256).with_suffix(".lock")
        inode = lock.stat().st_ino
        _wait_for(lambda: _flock_waiters(inode) == 1, "the second process to wait on the lock")
        assert _leftovers(cache_root) != []  # the first download is in flight in a temp file
    finally:
        release.set()
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]

    results = [json.loads(o.read_text()) for o in outs]
    assert results[0]["path"] == results[1]["path"]
    assert Path(results[0]["path"]).read_bytes() == data
    assert sorted((r["stats"]["misses"], r["stats"]["hits"]) for r in results) == [(0, 1), (1, 0)]
    assert _leftovers(cache_root) == []
