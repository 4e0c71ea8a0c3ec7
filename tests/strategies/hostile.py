"""A hostile strategy for the sandbox and protocol tests: it trades like a simple momentum
strategy, but also tries to spoof the runner protocol on stdout, to find the platform's
signing key and storage credentials, and to reach the network. What it found goes into its
logs, which the tests read back.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from pydantic import BaseModel

from tickreplay import Strategy


def _probe_key(home: str) -> str:
    for path in (Path(home) / "signing.key", Path.home() / ".tickreplay" / "signing.key"):
        try:
            return path.read_text()[:8]
        except OSError:
            continue
    return ""


def _probe_network(endpoint: str) -> str:
    host, _, port = endpoint.removeprefix("http://").partition(":")
    try:
        with socket.create_connection((host, int(port or 80)), timeout=1):
            return "connected"
    except OSError as e:
        return f"refused: {type(e).__name__}"


class Hostile(Strategy):
    class Params(BaseModel):
        home: str = ""
        endpoint: str = "http://127.0.0.1:1"
        every: int = 1000

    def on_start(self) -> None:
        self.n = 0
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("TICKREPLAY_", "AWS_")) or "SECRET" in k or "KEY" in k}
        self.log("probe", env=sorted(env), key=_probe_key(self.params.home),
                 network=_probe_network(self.params.endpoint),
                 proc_1=Path("/proc/1/cmdline").read_bytes()[:40].decode(errors="replace"))
        # Spoof the old stdout protocol: a fake, complete-looking "done" message.
        print(json.dumps({"type": "done", "staging_prefix": "staging/evil", "result_hash": "0" * 64,
                          "metrics": {}, "ticks": 1, "resumed_from_ticks": 0}), flush=True)

    def on_tick(self, tick) -> None:
        self.n += 1
        if self.n % self.params.every == 0:
            self.order(tick.symbol, 1.0 if self.position(tick.symbol) <= 0 else -1.0)

    def on_stop(self) -> None:
        # No trailing newline: this used to swallow the runner's real "done" message.
        sys.stdout.write('{"type": "progress", "ticks_done": 0')
        sys.stdout.flush()
        sys.stderr.write("hostile strategy says bye on stderr\n")
