"""S3Store and the SeaweedFS service against a real server (started by the session fixture)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from tickreplay.data.objectstore import ObjectExistsError, S3Store, open_store
from tickreplay.data.schema import PARQUET_WRITE_OPTIONS
from tickreplay.settings import Settings
from tickreplay.stack.seaweedfs import SeaweedFS

pytestmark = pytest.mark.integration


def _store(url: str, settings: Settings) -> S3Store:
    store = open_store(url, settings)
    assert isinstance(store, S3Store)
    return store


def test_put_get_head_list_delete(s3_server: Settings, s3_bucket: str, tmp_path: Path) -> None:
    store = _store(s3_bucket, s3_server)
    store.put_bytes("ticks/symbol=AAPL/date=2024-01-02/data.parquet", b"one")
    src = tmp_path / "two.bin"
    src.write_bytes(b"two" * 1000)
    store.put_file("ticks/symbol=MSFT/date=2024-01-02/data.parquet", src)
    store.put_bytes("other/readme.txt", b"x")

    assert store.get_bytes("ticks/symbol=AAPL/date=2024-01-02/data.parquet") == b"one"
    head = store.head("ticks/symbol=MSFT/date=2024-01-02/data.parquet")
    assert head is not None
    assert head.size == 3000
    assert head.sha256 == hashlib.sha256(b"two" * 1000).hexdigest()
    assert store.head("ticks/missing") is None

    assert [o.key for o in store.list("ticks/")] == [
        "ticks/symbol=AAPL/date=2024-01-02/data.parquet",
        "ticks/symbol=MSFT/date=2024-01-02/data.parquet",
    ]
    dest = tmp_path / "down.bin"
    store.download("ticks/symbol=MSFT/date=2024-01-02/data.parquet", dest)
    assert dest.read_bytes() == b"two" * 1000

    store.delete("other/readme.txt")
    assert store.head("other/readme.txt") is None
    with pytest.raises(FileNotFoundError, match="other/readme.txt"):
        store.get_bytes("other/readme.txt")
    with pytest.raises(FileNotFoundError, match="other/readme.txt"):
        store.download("other/readme.txt", tmp_path / "gone")


def test_conditional_put_refuses_existing_key(s3_server: Settings, s3_bucket: str) -> None:
    store = _store(s3_bucket, s3_server)
    store.put_bytes("results/job1/manifest.json", b"first", if_none_match=True)
    with pytest.raises(ObjectExistsError, match="manifest.json"):
        store.put_bytes("results/job1/manifest.json", b"second", if_none_match=True)
    assert store.get_bytes("results/job1/manifest.json") == b"first"


def test_prefix_store_keys_are_relative(s3_server: Settings, s3_bucket: str) -> None:
    store = _store(f"{s3_bucket}/team-a", s3_server)
    store.put_bytes("ticks/k.bin", b"z")
    assert [o.key for o in store.list()] == ["ticks/k.bin"]
    whole = _store(s3_bucket, s3_server)
    assert [o.key for o in whole.list()] == ["team-a/ticks/k.bin"]


def test_missing_bucket_lists_empty(s3_server: Settings) -> None:
    assert _store("s3://no-such-bucket-here", s3_server).list() == []


def test_wrong_secret_is_rejected(s3_server: Settings, s3_bucket: str) -> None:
    bad = s3_server.model_copy(update={"s3_secret_key": "not-the-secret"})
    with pytest.raises(ClientError) as info:
        _store(s3_bucket, bad).put_bytes("k", b"v")
    assert info.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")


def test_pyarrow_reads_parquet_from_the_server(s3_server: Settings, s3_bucket: str) -> None:
    """The reader side may use pyarrow's own S3 client; it must work with the same settings."""
    table = pa.table({"ts": pa.array([1, 2, 3], pa.int64()), "price": [1.5, 2.5, 3.5]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE_OPTIONS)
    _store(s3_bucket, s3_server).put_bytes("t/data.parquet", sink.getvalue().to_pybytes())

    fs = pafs.S3FileSystem(
        access_key=s3_server.s3_access_key,
        secret_key=s3_server.s3_secret_key,
        endpoint_override=s3_server.s3_endpoint,
        region=s3_server.s3_region,
        allow_bucket_creation=False,
    )
    bucket = s3_bucket.removeprefix("s3://")
    got = pq.read_table(f"{bucket}/t/data.parquet", filesystem=fs, page_checksum_verification=True)
    assert got.equals(table)


def test_taken_s3_port_fails_fast_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port}"):
            SeaweedFS.start(tmp_path, s3_port=port, access_key="a", secret_key="b", timeout=10)


def test_start_and_stop_a_second_server(tmp_path: Path) -> None:
    """Independent of the session fixture: start, serve, stop reaps the process."""
    server = SeaweedFS.start(tmp_path / "s", access_key="key1", secret_key="secret1",
                             die_with_parent=True)
    try:
        client = boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id="key1",
            aws_secret_access_key="secret1", region_name="us-east-1",
        )
        client.create_bucket(Bucket="probe")
        client.put_object(Bucket="probe", Key="k", Body=b"v")
        assert client.get_object(Bucket="probe", Key="k")["Body"].read() == b"v"
    finally:
        server.stop(grace=0)
    assert server.process.returncode is not None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        s.bind(("127.0.0.1", server.ports["s3.port"]))  # nothing listens there any more
