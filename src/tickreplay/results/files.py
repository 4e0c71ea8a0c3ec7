"""Result directories: write, read back, verify and publish, with ``manifest.json`` as the commit.

A result directory holds ``trades.parquet``, ``trades.csv``, ``equity.parquet``,
``metrics.json``, ``logs.jsonl`` and ``manifest.json``. Every file is written to a temp name
and renamed; the manifest is written last and carries each file's sha256 and size plus the
result hash. So a crash at any point leaves either no manifest (no result) or a complete,
verifiable one. Publishing keeps the same rule on an object store, where writes are atomic
per key but never across keys: the manifest goes up last, with a conditional put.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tickreplay.data.objectstore import ObjectExistsError, ObjectStore, sha256_file
from tickreplay.data.schema import PARQUET_WRITE_OPTIONS
from tickreplay.errors import ResultConflictError, ResultsError
from tickreplay.integrity import IntegrityError, check_manifest_signature, sign_manifest
from tickreplay.osutil import atomic_write
from tickreplay.results.canonical import canonical_json, result_hash
from tickreplay.results.model import ResultSet

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
RESULT_FILES: tuple[str, ...] = (
    "trades.parquet",
    "trades.csv",
    "equity.parquet",
    "metrics.json",
    "logs.jsonl",
)


def write_results(rs: ResultSet, out_dir: Path) -> dict[str, Any]:
    """Write ``rs`` as a result directory and return its manifest.

    Any manifest already in ``out_dir`` is removed first, so rewriting a directory never
    leaves an old manifest describing new, half-written files.

    Args:
        rs: The result to write.
        out_dir: Directory to write into (created if needed).

    Returns:
        The manifest dict, exactly as written to ``manifest.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    digest = result_hash(rs)  # first: an unhashable result fails before any file exists

    writers: dict[str, Callable[[Path], None]] = {
        "trades.parquet": lambda p: pq.write_table(rs.trades, p, **PARQUET_WRITE_OPTIONS),
        "trades.csv": lambda p: pacsv.write_csv(rs.trades, p),
        "equity.parquet": lambda p: pq.write_table(rs.equity, p, **PARQUET_WRITE_OPTIONS),
        "metrics.json": lambda p: p.write_bytes(_pretty_json(rs.metrics)),
        "logs.jsonl": lambda p: p.write_bytes(b"".join(canonical_json(r) + b"\n" for r in rs.logs)),
    }
    files: dict[str, dict[str, Any]] = {}
    for name in RESULT_FILES:
        path = out_dir / name
        atomic_write(path, writers[name])
        files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "result_hash": digest,
        "inputs": rs.inputs,
        "files": files,
        "run_info": rs.run_info,
    }
    atomic_write(out_dir / MANIFEST, lambda p: p.write_bytes(_pretty_json(manifest)))
    _fsync_dir(out_dir)
    return json.loads(_pretty_json(manifest))


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of a result directory.

    Raises:
        ResultsError: No manifest (the run did not finish, or this is not a result directory),
            an unreadable one, or a manifest version this code does not know.
    """
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ResultsError(f"{out_dir} has no {MANIFEST}: not a complete result") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ResultsError(
            f"{path} has manifest_version {manifest.get('manifest_version')!r}; "
            f"this tickreplay reads version {MANIFEST_VERSION}"
        )
    return manifest


def load_results(out_dir: Path) -> ResultSet:
    """Read a result directory back into a :class:`ResultSet` (Parquet checksums verified)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    logs_text = (out_dir / "logs.jsonl").read_text(encoding="utf-8")
    return ResultSet(
        trades=pq.read_table(out_dir / "trades.parquet", page_checksum_verification=True),
        equity=pq.read_table(out_dir / "equity.parquet", page_checksum_verification=True),
        metrics=json.loads((out_dir / "metrics.json").read_bytes()),
        logs=[json.loads(line) for line in logs_text.splitlines()],
        inputs=manifest["inputs"],
        run_info=manifest.get("run_info", {}),
    )


def verify_results(out_dir: Path, *, recompute_hash: bool = True,
                   key: bytes | None = None) -> dict[str, Any]:
    """Check a result directory against its manifest and return the manifest.

    The directory must hold exactly the manifest and the files it lists: an extra file (say
    one a strategy dropped into another job's result prefix) makes the result unverifiable.

    Args:
        out_dir: The result directory.
        recompute_hash: Also read the files back and recompute the result hash, which catches a
            manifest edited to match tampered files, not just bit rot.
        key: The platform's signing key. When given, the manifest must carry a valid signature
            made with it ("verified" then means "produced by this platform").

    Raises:
        ResultsError: Missing manifest, missing or unlisted file, a bad or missing signature,
            or any size/sha256/result-hash mismatch (all mismatching files are named).
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if key is not None:
        try:
            check_manifest_signature(manifest, key)
        except IntegrityError as e:
            raise ResultsError(f"{out_dir}: {e}") from None
    listed = set(manifest["files"]) | {MANIFEST}
    problems = [f"{p.name}: not listed in the manifest" for p in sorted(out_dir.iterdir())
                if p.name not in listed]
    for name, expected in sorted(manifest["files"].items()):
        path = out_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        size, digest = path.stat().st_size, sha256_file(path)
        if size != expected["size"] or digest != expected["sha256"]:
            problems.append(
                f"{name}: sha256 {digest[:12]}… size {size}, manifest says "
                f"{expected['sha256'][:12]}… size {expected['size']}"
            )
    if problems:
        raise ResultsError(f"{out_dir} does not match its manifest: " + "; ".join(problems))
    if recompute_hash:
        try:
            actual = result_hash(load_results(out_dir))
        except (OSError, ValueError, TypeError, pa.ArrowException) as e:
            raise ResultsError(f"{out_dir}: cannot recompute the result hash: {e}") from e
        if actual != manifest["result_hash"]:
            raise ResultsError(
                f"{out_dir}: files hash to {actual}, manifest says {manifest['result_hash']}"
            )
    return manifest


def sign_results(out_dir: Path, key: bytes) -> dict[str, Any]:
    """Sign the manifest of a verified result directory in place; returns the signed manifest."""
    out_dir = Path(out_dir)
    signed = sign_manifest(verify_results(out_dir), key)
    atomic_write(out_dir / MANIFEST, lambda p: p.write_bytes(_pretty_json(signed)))
    return signed


def publish_results(out_dir: Path, store: ObjectStore, prefix: str,
                    key: bytes | None = None) -> dict[str, Any]:
    """Upload a verified result directory under ``prefix``; the manifest goes last.

    Safe to repeat and safe against a second publisher: no object under the prefix is ever
    overwritten. Every upload is a conditional put; a file that already exists is accepted
    only if its bytes are ours (a retry after a partial publish), and the manifest decides the
    rest: an existing manifest with our result hash means the result is already published.

    Args:
        out_dir: A result directory written by :func:`write_results`.
        store: Destination object store.
        prefix: Key prefix of the result (``results/{job_id}``).
        key: If given, the manifest must be signed with it (checked before any upload).

    Returns:
        The manifest now at ``prefix/manifest.json``.

    Raises:
        ResultsError: The local directory does not verify.
        ResultConflictError: The prefix holds a different result, or files that are not ours.
    """
    out_dir = Path(out_dir)
    manifest = verify_results(out_dir, key=key)
    base = prefix.strip("/")
    key = (lambda name: f"{base}/{name}") if base else (lambda name: name)

    existing = _remote_manifest(store, key(MANIFEST))
    if existing is not None:
        return _same_result(existing, manifest, store.url, base)

    for name, meta in sorted(manifest["files"].items()):
        try:
            store.put_file(key(name), out_dir / name, if_none_match=True)
        except ObjectExistsError:
            if _remote_sha256(store, key(name)) == meta["sha256"]:
                continue
            committed = _remote_manifest(store, key(MANIFEST))
            if committed is not None:
                return _same_result(committed, manifest, store.url, base)
            raise ResultConflictError(
                f"{store.url}/{key(name)} exists with other content and no manifest: an "
                f"unfinished publish of another result; remove {base or 'the prefix'} or use another"
            ) from None

    try:
        store.put_bytes(key(MANIFEST), (out_dir / MANIFEST).read_bytes(), if_none_match=True)
    except ObjectExistsError:
        committed = _remote_manifest(store, key(MANIFEST))
        if committed is None:
            raise ResultsError(
                f"{store.url}/{key(MANIFEST)} exists but cannot be read back"
            ) from None
        return _same_result(committed, manifest, store.url, base)
    return manifest


def _same_result(
    existing: dict[str, Any], ours: dict[str, Any], url: str, prefix: str
) -> dict[str, Any]:
    if existing.get("result_hash") != ours["result_hash"]:
        raise ResultConflictError(
            f"{url}/{prefix} already holds result {existing.get('result_hash')}, "
            f"not {ours['result_hash']}"
        )
    return existing


def _remote_manifest(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except FileNotFoundError:
        return None


def _remote_sha256(store: ObjectStore, key: str) -> str:
    info = store.head(key)
    if info is not None and info.sha256:
        return info.sha256
    return hashlib.sha256(store.get_bytes(key)).hexdigest()


def _pretty_json(obj: Any) -> bytes:
    """Human-readable but still canonical: sorted keys, strict floats, trailing newline.

    Goes through :func:`canonical_json` first so NumPy scalars and NaN get the same treatment
    here as in the hash.
    """
    return json.dumps(json.loads(canonical_json(obj)), sort_keys=True, indent=2).encode() + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
