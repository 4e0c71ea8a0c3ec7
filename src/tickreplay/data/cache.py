"""Node-local partition cache: content-addressed, verified on every use, size-capped LRU.

Why content-addressed (by the plan's sha256) rather than by key: a key can be rewritten with
new bytes, a hash cannot, so a cache hit is the plan's bytes or nothing. Every use re-hashes
the file because a flipped bit in a Parquet data page reads back as a wrong price with no
error; the hash is the check that catches it.

Concurrency: jobs on one node share the cache. A per-object ``flock`` serialises fetches of the
same object across processes and threads (the second waits and then hits), downloads go to a
temp file that is renamed into place, and eviction only removes objects it can lock, so it
never deletes a file while another fetch is verifying or writing it. An object returned by
:meth:`PartitionCache.fetch` can still be evicted later by another process if the cap is
smaller than the node's concurrent working set; size the cap above that.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tickreplay.data.catalog import Partition
from tickreplay.data.errors import CorruptDataError
from tickreplay.data.objectstore import ObjectStore, sha256_file
from tickreplay.osutil import atomic_write

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class PartitionCache:
    """Cache of partition files under ``root``, evicting least recently used beyond ``max_bytes``.

    Layout: ``root/objects/ab/<sha256>.parquet`` with a ``.lock`` file beside each object.
    """

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._hits = 0
        self._misses = 0
        self._bytes = 0
        self._last_touch_ns = 0

    def path_for(self, sha256: str) -> Path:
        """Where the object with this sha256 lives (whether or not it is cached)."""
        if not _SHA256_RE.match(sha256):
            raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
        return self.root / "objects" / sha256[:2] / f"{sha256}.parquet"

    def fetch(self, store: ObjectStore, partition: Partition) -> Path:
        """Local path of the partition's verified bytes, downloading them on a miss.

        Raises:
            CorruptDataError: The downloaded bytes do not hash to ``partition.sha256``.
            FileNotFoundError: The store no longer has the key.
        """
        dest = self.path_for(partition.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(dest, blocking=True):
            if dest.exists():
                if sha256_file(dest) == partition.sha256:
                    self._hits += 1
                    self._touch(dest)
                    return dest
                log.warning("cached %s for %s failed its sha256 check; fetching it again",
                            dest, partition.key)
                dest.unlink()
            self._misses += 1
            self._download(store, partition, dest)
            self._touch(dest)
        self._evict(keep=dest)
        return dest

    def health_problem(self, need_bytes: int = 0) -> str | None:
        """Why this cache cannot serve a plan of ``need_bytes`` now, or ``None`` if it can.

        A node whose cache is read-only or full must say so before it takes a run, so the run
        goes to another node instead of failing there mid-download.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".health-", dir=self.root)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as e:
            return f"cache dir {self.root} is not writable ({e.strerror or e})"
        free = shutil.disk_usage(self.root).free
        if need_bytes > free:
            return (f"cache dir {self.root} has {free / 1e6:.1f} MB free, the plan needs "
                    f"{need_bytes / 1e6:.1f} MB more")
        return None

    def missing_bytes(self, partitions: Iterable[Partition]) -> int:
        """Bytes of ``partitions`` not in the cache yet (what a fetch would download)."""
        return sum(p.size for p in partitions if not self.path_for(p.sha256).exists())

    def stats(self) -> dict[str, int]:
        """This process's hits, misses and bytes downloaded (for logs and tests)."""
        return {"hits": self._hits, "misses": self._misses, "bytes": self._bytes}

    def _download(self, store: ObjectStore, partition: Partition, dest: Path) -> None:
        def fetch_verified(tmp: Path) -> None:
            store.download(partition.key, tmp)
            actual = sha256_file(tmp)
            if actual != partition.sha256:
                raise CorruptDataError(
                    f"partition {partition.key} from {store.url}: sha256 {actual} does not match "
                    f"the plan's {partition.sha256} (the object changed or was corrupted)"
                )
            self._bytes += tmp.stat().st_size

        atomic_write(dest, fetch_verified, fsync=False)

    def _touch(self, path: Path) -> None:
        # Explicit, strictly increasing nanosecond stamps: the filesystem's own mtime clock is
        # coarse (jiffies), so back-to-back uses could otherwise tie and make LRU order arbitrary.
        now = max(time.time_ns(), self._last_touch_ns + 1)
        self._last_touch_ns = now
        os.utime(path, ns=(now, now))

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in (self.root / "objects").glob("??/*.parquet"):
            if path.name.startswith(".tmp-"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # evicted by another process meanwhile
            entries.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with self._locked(path, blocking=False) as got:
                if not got:
                    continue  # in use by a fetch right now: not least recently used after all
                path.unlink(missing_ok=True)
                total -= size
                log.info("evicted %s (%d bytes) from the partition cache", path.name, size)

    @contextmanager
    def _locked(self, path: Path, *, blocking: bool) -> Iterator[bool]:
        """Hold the object's lock file; yields False if ``blocking`` is off and it is taken.

        The lock file is removed by whoever deletes the object, so after locking we check the
        file we hold is still the one at the path (the classic flock-and-unlink race) and retry
        if not.
        """
        lock_path = path.with_suffix(".lock")
        while True:
            with open(lock_path, "ab") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    current = os.stat(lock_path).st_ino
                except FileNotFoundError:
                    current = None
                if current != os.fstat(f.fileno()).st_ino:
                    continue
                try:
                    yield True
                finally:
                    if not path.exists():
                        lock_path.unlink(missing_ok=True)
                return
