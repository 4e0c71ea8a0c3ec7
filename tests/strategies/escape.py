"""Hostile strategies for the sandbox tests: each ``attack`` tries one way out in on_start and
raises with what it got, so the job fails with that message (the tests read it). In a working
sandbox every attack is refused; the messages say how.
"""

from __future__ import annotations

import os
import socket
import time

from pydantic import BaseModel

from tickreplay import Strategy


def _connect(target: str) -> str:
    host, _, port = target.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=2):
        return "connected"


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes"


def _write(path: str) -> str:
    with open(path, "w") as f:
        f.write("x")
    return "written"


def _fork_bomb() -> str:
    children = 0
    try:
        while True:
            if os.fork() == 0:  # each child holds its pid for a while, then leaves quietly
                time.sleep(60)
                os._exit(0)
            children += 1
            if children > 100_000:
                return "no limit"
    except OSError as e:
        raise RuntimeError(f"fork stopped after {children} processes: {e}") from None


def _allocate(gb: str) -> str:
    block = bytearray(int(gb) * 1024**3)
    return f"allocated {len(block)}"


def _system(command: str) -> str:
    return f"os.system returned {os.system(command)}"


ATTACKS = {"connect": _connect, "read": _read, "write": _write, "fork": lambda _: _fork_bomb(),
           "allocate": _allocate, "system": _system}


class Escape(Strategy):
    class Params(BaseModel):
        attack: str
        target: str = ""

    def on_start(self) -> None:
        outcome = ATTACKS[self.params.attack](self.params.target)
        raise RuntimeError(f"attack {self.params.attack} {self.params.target}: {outcome}")

    def on_tick(self, tick) -> None:
        pass
