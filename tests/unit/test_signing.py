"""Sealed checkpoints, signed manifests, exact result directories, outage retries, cache health."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tickreplay.data.cache import PartitionCache
from tickreplay.data.retry import is_transient, with_outage_retry
from tickreplay.integrity import (
    IntegrityError,
    check_manifest_signature,
    key_id,
    load_or_create_key,
    open_checkpoint,
    seal_checkpoint,
    sign_manifest,
)
from tickreplay.results import ResultsError, sign_results, verify_results

KEY = bytes(range(32))
IDENTITY = {"job_id": "bt-1", "strategy_digest": "s" * 64, "data_fingerprint": "d" * 64,
            "spec": {"params": {"fast": 10}, "config": {"seed": 1}}, "engine_version": "3"}


def test_a_sealed_checkpoint_opens_only_for_its_own_run_and_key() -> None:
    sealed = seal_checkpoint(b"engine state", IDENTITY, 1234, KEY)
    assert open_checkpoint(sealed, IDENTITY, KEY) == (b"engine state", 1234)
    other = {**IDENTITY, "spec": {"params": {"fast": 20}, "config": {"seed": 1}}}
    with pytest.raises(IntegrityError, match="another run .*differs in spec"):
        open_checkpoint(sealed, other, KEY)
    with pytest.raises(IntegrityError, match="signature"):
        open_checkpoint(sealed, IDENTITY, bytes(32))
    with pytest.raises(IntegrityError, match="signature"):  # one flipped bit in the state
        open_checkpoint(sealed[:-1] + bytes([sealed[-1] ^ 1]), IDENTITY, KEY)
    with pytest.raises(IntegrityError, match="not a sealed"):
        open_checkpoint(b"TRCKPT" + b"\0" * 64, IDENTITY, KEY)


def test_a_checkpoint_sealed_by_someone_without_the_key_is_refused() -> None:
    forged = seal_checkpoint(b"state", IDENTITY, 10, os.urandom(32))
    with pytest.raises(IntegrityError, match="signature"):
        open_checkpoint(forged, IDENTITY, KEY)


def test_manifest_signature_covers_every_field() -> None:
    signed = sign_manifest({"result_hash": "h", "files": {"a": {"sha256": "x", "size": 1}}}, KEY)
    check_manifest_signature(signed, KEY)
    assert signed["signature"]["key_id"] == key_id(KEY)
    with pytest.raises(IntegrityError, match="altered"):
        check_manifest_signature({**signed, "result_hash": "other"}, KEY)
    with pytest.raises(IntegrityError, match="not signed"):
        check_manifest_signature({k: v for k, v in signed.items() if k != "signature"}, KEY)
    with pytest.raises(IntegrityError, match="signed with key"):
        check_manifest_signature(signed, bytes(32))


def test_the_key_file_is_created_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "home" / "signing.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def result_dir(tmp_path: Path) -> Path:
    """A real result directory written by the local engine path."""
    from tickreplay.data.generate import generate
    from tickreplay.data.objectstore import LocalStore
    from tickreplay.results import write_results
    from tickreplay.runner.driver import run_local
    from tickreplay.settings import Settings
    from tickreplay.spec import BacktestSpec

    generate(LocalStore(tmp_path / "data"), ["AAA"], "2024-03-04", "2024-03-04",
             ticks_per_day=3000, seed=1)
    examples = Path(__file__).resolve().parents[2] / "examples"
    spec = BacktestSpec.parse({"strategy": str(examples / "sma_cross.py"),
                               "data_url": str(tmp_path / "data"), "symbols": "AAA",
                               "start": "2024-03-04", "end": "2024-03-04"})
    rs = run_local(spec, Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache"))
    write_results(rs, tmp_path / "out")
    return tmp_path / "out"


def test_a_file_the_manifest_does_not_list_makes_a_result_unverifiable(result_dir: Path) -> None:
    verify_results(result_dir)
    (result_dir / "PWNED.txt").write_text("pwned")
    with pytest.raises(ResultsError, match="PWNED.txt: not listed in the manifest"):
        verify_results(result_dir)


def test_verified_with_a_key_means_signed_with_it(result_dir: Path) -> None:
    with pytest.raises(ResultsError, match="not signed"):
        verify_results(result_dir, key=KEY)
    signed = sign_results(result_dir, KEY)
    assert verify_results(result_dir, key=KEY)["signature"] == signed["signature"]
    with pytest.raises(ResultsError, match="signed with key"):
        verify_results(result_dir, key=bytes(32))
    manifest = json.loads((result_dir / "manifest.json").read_text())
    manifest["inputs"]["params"] = {"fast": 1}  # an edited manifest, signature kept
    (result_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match="altered"):
        verify_results(result_dir, key=KEY)


def test_outages_are_waited_out_by_time_and_real_errors_are_not_retried() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise down
        return "ok"

    waits: list[str] = []
    assert with_outage_retry(flaky, "get", budget_s=30, on_wait=waits.append,
                             max_backoff_s=0.01) == "ok"
    assert len(calls) == 4 and len(waits) == 3 and "unreachable" in waits[0]
    with pytest.raises(EndpointConnectionError):
        with_outage_retry(lambda: (_ for _ in ()).throw(down), "get", budget_s=0.05,
                          max_backoff_s=0.01)
    denied = ClientError({"Error": {"Code": "AccessDenied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert not is_transient(denied) and not is_transient(FileNotFoundError("x"))
    assert is_transient(ClientError({"Error": {"Code": "SlowDown"},
                                     "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"))


def test_a_cache_that_cannot_be_written_or_is_too_small_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "not writable" in PartitionCache(blocker / "cache", 10**9).health_problem()
    ok = PartitionCache(tmp_path / "cache", 10**9)
    assert ok.health_problem(0) is None
    assert "MB free" in ok.health_problem(10**18)
