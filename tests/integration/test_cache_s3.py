"""Planning and caching against a real S3 bucket (SeaweedFS from the session fixture)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tickreplay.data.cache import PartitionCache
from tickreplay.data.catalog import plan_data
from tickreplay.data.errors import CorruptDataError
from tickreplay.data.objectstore import S3Store, open_store
from tickreplay.data.schema import partition_key
from tickreplay.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def store(s3_server: Settings, s3_bucket: str) -> S3Store:
    store = open_store(s3_bucket, s3_server)
    assert isinstance(store, S3Store)
    return store


def test_plan_uses_metadata_and_hashes_foreign_uploads(store: S3Store) -> None:
    ours = partition_key("AAPL", "2024-01-02")
    foreign = partition_key("AAPL", "2024-01-03")
    store.put_bytes(ours, b"written by tickreplay")
    # Uploaded by another tool: no sha256 metadata, so planning must hash the bytes.
    store.client.put_object(Bucket=store.bucket, Key=foreign, Body=b"written by aws cli")
    head = store.head(foreign)
    assert head is not None and head.sha256 is None

    plan = plan_data(store, ["AAPL"], "2024-01-01", "2024-01-31")

    assert [(p.key, p.size, p.sha256) for p in plan.partitions] == [
        (ours, 21, hashlib.sha256(b"written by tickreplay").hexdigest()),
        (foreign, 18, hashlib.sha256(b"written by aws cli").hexdigest()),
    ]
    assert plan.url == store.url


def test_fetch_from_s3_misses_then_hits(store: S3Store, s3_server: Settings) -> None:
    data = b"parquet bytes " * 5000
    store.put_bytes(partition_key("MSFT", "2024-01-02"), data)
    plan = plan_data(store, ["MSFT"], "2024-01-02", "2024-01-02")
    cache = PartitionCache(s3_server.resolved_cache_dir() / "fetch", max_bytes=10**6)

    first = cache.fetch(store, plan.partitions[0])
    second = cache.fetch(store, plan.partitions[0])

    assert first == second
    assert first.read_bytes() == data
    assert cache.stats() == {"hits": 1, "misses": 1, "bytes": len(data)}


def test_object_rewritten_after_planning_is_refused(store: S3Store, tmp_path: Path) -> None:
    key = partition_key("MSFT", "2024-01-02")
    store.put_bytes(key, b"v1")
    plan = plan_data(store, ["MSFT"], "2024-01-02", "2024-01-02")
    store.put_bytes(key, b"v2")
    cache = PartitionCache(tmp_path / "cache", max_bytes=10**6)

    with pytest.raises(CorruptDataError, match=re.escape(key)):
        cache.fetch(store, plan.partitions[0])
    assert list((tmp_path / "cache").rglob("*.parquet")) == []
