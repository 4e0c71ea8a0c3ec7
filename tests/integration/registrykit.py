"""A real OCI registry for the tests: Debian's ``docker-registry`` on a free port, filesystem
storage in tmp, always stopped after (skipped, saying why, where it is not installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tickreplay.stack.ports import free_port

REGISTRY_BIN = shutil.which("docker-registry")


@contextmanager
def start_registry(base: Path, auth: dict[str, Any] | None = None) -> Iterator[str]:
    """A docker-registry on a free port; yields ``127.0.0.1:<port>``; always stopped after."""
    if REGISTRY_BIN is None:
        pytest.skip("docker-registry is not installed (`make system-deps`, or "
                    "`apt-get install -y docker-registry`)")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(base / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "tickreplay-test"},
    }
    if auth:
        config["auth"] = auth
    (base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log_path = base / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(base / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1)  # 200, or 401 with auth
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"docker-registry did not start (exit {proc.poll()}): "
                                f"{log_path.read_text()[-800:]}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
