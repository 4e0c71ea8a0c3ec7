"""Ports: picking free ones for throwaway servers, and the stack's own, which stay put.

Why the stack's ports are sticky: every client configured for a stack (``stack.env``, a shell
with ``TICKREPLAY_TEMPORAL_ADDRESS`` exported, the Web UI bookmark) names its ports, so a part
that died, or a whole stack brought ``down`` and ``up`` again, must come back on the same ones.
Why the check happens before anything is spawned: an error that names the port beats a log
line of a half-started server.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

from tickreplay.errors import StackError

DEFAULT_PORTS: dict[str, int] = {"temporal": 7233, "ui": 8233, "s3": 8333, "api": 8000,
                                 "grpc": 50051}
# Which part listens on each port key, and what the port is called in its error messages.
PORT_OWNER: dict[str, tuple[str, str]] = {
    "temporal": ("temporal", "gRPC"), "ui": ("temporal", "Web UI"), "s3": ("seaweedfs", "S3"),
    "api": ("api", "REST API"), "grpc": ("api", "gRPC API"),
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with others is possible)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (a server needing several listeners).

    All sockets are held open together so the OS hands out ``n`` distinct ports.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now: checked before spawning so errors name the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the Go servers do: connections of a just-stopped server linger in TIME_WAIT for a
        # minute and would otherwise make its port look taken; a listener still makes bind fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def choose_ports(state_dir: Path, running: dict[str, int], previous: dict[str, int],
                 requested: dict[str, int | None]) -> dict[str, int]:
    """The stack's ports, per key: the one asked for, else the running one, else the last one.

    Args:
        state_dir: Only for the error message.
        running: Ports of the parts still running; a part that died comes back on its old
            port, since the parts still running were given that one.
        previous: Ports of the last ``up`` (``ports.json``) and of parts found dead.
        requested: The caller's choice per key; ``None`` for no preference.

    Raises:
        StackError: A running part is asked to move, or two keys would share a port.
    """
    ports: dict[str, int] = {}
    for key, want in requested.items():
        have = running.get(key)
        if have is not None and want is not None and want != have:
            part, role = PORT_OWNER[key]
            raise StackError(part, f"already running from {state_dir} with {role} port {have}; "
                                   f"run `tickreplay down` first to move it to {want}")
        ports[key] = next(p for p in (want, have, previous.get(key), DEFAULT_PORTS[key])
                          if p is not None)
    if len(set(ports.values())) < len(ports):
        raise StackError("stack", f"ports must differ: {ports}")
    return ports


def check_ports_free(ports: dict[str, int], missing: list[str]) -> None:
    """Raise if a port of a part about to start is taken.

    Checked before anything starts, so a taken S3 port does not leave Temporal half-started.
    """
    for key, port in ports.items():
        part, role = PORT_OWNER[key]
        if part in missing and not port_is_free(port):
            raise StackError(part, f"{role} port {port} on 127.0.0.1 is already in use "
                                   f"(choose another with --{key}-port)")
