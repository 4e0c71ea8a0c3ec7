"""Object storage: one small interface over a local directory and an S3-compatible bucket.

Why our own thin layer rather than fsspec: we need exactly put/get/list/conditional-put with a
sha256 carried as object metadata (so a plan can fingerprint S3 data without downloading it),
and the same semantics against a directory for laptop use and tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from tickreplay.errors import ObjectExistsError
from tickreplay.osutil import atomic_write
from tickreplay.settings import Settings

SHA256_META = "sha256"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object: key relative to the store root, size in bytes, sha256 if known."""

    key: str
    size: int
    sha256: str | None


class ObjectStore(Protocol):
    """What the data layer, activities and results need from a store."""

    url: str

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, dest: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> None: ...
    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None: ...
    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class LocalStore:
    """A directory used as a bucket. Writes are temp file + rename, so readers never see halves."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"key {key!r} escapes the store root")
        return p

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root
        if not base.exists():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, full.stat().st_size, None))
        return sorted(out, key=lambda o: o.key)

    def head(self, key: str) -> ObjectInfo | None:
        p = self._path(key)
        return ObjectInfo(key, p.stat().st_size, None) if p.is_file() else None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}/{key} not found") from None

    def download(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.url}/{key} not found")
        with open(src, "rb") as fi, open(dest, "wb") as fo:
            while chunk := fi.read(_CHUNK):
                fo.write(chunk)

    def _atomic_write(self, key: str, content: bytes | Callable[[Path], object],
                      if_none_match: bool) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(dest, content, exclusive=if_none_match)
        except FileExistsError:
            raise ObjectExistsError(key) from None

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        self._atomic_write(key, data, if_none_match)

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None:
        self._atomic_write(key, lambda tmp: shutil.copyfile(path, tmp), if_none_match)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.is_file() else None


class S3Store:
    """A bucket (optionally a prefix in it) on any S3-compatible server, through boto3.

    Every put records the object's sha256 as user metadata (``x-amz-meta-sha256``) so planning
    a backtest can fingerprint the data with HEAD/LIST requests instead of downloads.
    """

    def __init__(self, bucket: str, prefix: str = "", *, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = boto3.client(
            "s3",
            endpoint_url=self.settings.s3_endpoint,
            aws_access_key_id=self.settings.s3_access_key,
            aws_secret_access_key=self.settings.s3_secret_key,
            region_name=self.settings.s3_region,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
        )

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        from botocore.exceptions import ClientError

        out: list[ObjectInfo] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]), None))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise
        return sorted(out, key=lambda o: o.key)

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, int(r["ContentLength"]), r.get("Metadata", {}).get(SHA256_META))

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"{self.url}/{key} not found") from None
            raise

    def download(self, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._k(key), str(dest))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise FileNotFoundError(f"{self.url}/{key} not found") from None
            raise

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        from botocore.exceptions import ClientError

        extra: dict[str, object] = {"Metadata": {SHA256_META: hashlib.sha256(data).hexdigest()}}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **extra)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if if_none_match and code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise ObjectExistsError(key) from None
            raise

    def put_file(self, key: str, path: Path, *, if_none_match: bool = False) -> None:
        if if_none_match or Path(path).stat().st_size < 64 * 1024 * 1024:
            self.put_bytes(key, Path(path).read_bytes(), if_none_match=if_none_match)
            return
        self.client.upload_file(
            str(path), self.bucket, self._k(key),
            ExtraArgs={"Metadata": {SHA256_META: sha256_file(Path(path))}},
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def local_path(self, key: str) -> Path | None:
        return None


def open_store(url: str | Path, settings: Settings | None = None) -> ObjectStore:
    """A store for ``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory path.

    ``settings`` (endpoint, credentials) are required for ``s3://``: there is no process-wide
    fallback, so a store never silently talks to a server its caller did not configure.
    """
    s = str(url)
    parsed = urlparse(s)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"bad S3 URL {s!r}: expected s3://bucket[/prefix]")
        if settings is None:
            raise ValueError(f"{s}: an s3:// store needs Settings (endpoint and credentials)")
        return S3Store(parsed.netloc, parsed.path, settings=settings)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported storage URL {s!r}: use a directory or s3://bucket")
    return LocalStore(s)
