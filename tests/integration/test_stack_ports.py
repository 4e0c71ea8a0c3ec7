"""``tickreplay down`` then ``up`` comes back on the same ports (issue 11, item 11).

docs/stack.md promises it; before, ``down`` deleted the PID files that held the ports and the
next ``up`` fell back to the defaults (7233/8233/8333), colliding with any other stack there.
The defaults are held by this test while the stack restarts, as another stack would hold them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tickreplay.stack import control as stack
from tickreplay.stack.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "stack"
    try:
        yield path
    finally:
        stack.down(path, worker_grace=5, service_grace=0)


def _hold_default_ports(held: ExitStack) -> None:
    """Listen on the default ports, as another stack would (ports someone else has are skipped)."""
    for port in stack.DEFAULT_PORTS.values():
        sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            continue


def test_down_then_up_reuses_the_last_ports(state_dir: Path) -> None:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    temporal, ui, s3 = sorted(ports)
    first = stack.up(state_dir, temporal_port=temporal, ui_port=ui, s3_port=s3, workers=0,
                     api=False)
    assert first.temporal_address == f"127.0.0.1:{temporal}"
    stack.down(state_dir, worker_grace=5, service_grace=0)
    assert json.loads((state_dir / "ports.json").read_text()) == {
        "temporal": temporal, "ui": ui, "s3": s3, "api": 8000, "grpc": 50051}
    assert not (state_dir / "stack.env").exists()  # clients must not use a stopped stack
    with ExitStack() as held:
        _hold_default_ports(held)
        again = stack.up(state_dir, workers=0, api=False)
    assert again.temporal_address == f"127.0.0.1:{temporal}"
    assert again.ui_url == f"http://127.0.0.1:{ui}"
    assert again.s3_endpoint == f"http://127.0.0.1:{s3}"
    env = (state_dir / "stack.env").read_text()
    assert f"TICKREPLAY_TEMPORAL_ADDRESS=127.0.0.1:{temporal}" in env


def test_an_explicit_port_after_down_wins_and_is_remembered(state_dir: Path) -> None:
    (state_dir).mkdir(parents=True)
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    temporal, ui, s3, other = sorted(ports)
    (state_dir / "ports.json").write_text(json.dumps({"temporal": temporal, "ui": ui, "s3": s3}))
    info = stack.up(state_dir, temporal_port=other, workers=0, api=False)
    assert info.temporal_address == f"127.0.0.1:{other}"
    assert info.s3_endpoint == f"http://127.0.0.1:{s3}"
    assert json.loads((state_dir / "ports.json").read_text())["temporal"] == other
