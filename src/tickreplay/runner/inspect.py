"""Load a strategy in a sandboxed child and check parameters against its ``Params``.

Why a child process: the job API must answer 422 for bad parameters before a workflow starts,
which means running the strategy's module code and its pydantic ``Params``. That code is
hostile; the API process holds database and Temporal access. So the API never imports it: a
sandboxed child (the same bubblewrap confinement as a runner: no network, no credentials, the
state dir hidden, CPU-time and memory limits) does.

Why a long-lived child per strategy (:class:`InspectorPool`): starting Python and loading a
strategy costs ~0.2 s of CPU; a sweep or a burst of submissions checks hundreds of parameter
sets of the same strategy, which one warm child answers in about a millisecond each. A child
that dies, hangs past its deadline or answers garbage is killed, and the next check starts a
fresh one. Its answers travel on a private file descriptor and whatever the strategy prints
goes to stderr, so prints cannot be taken for answers; code that writes to the descriptor
itself only misleads the check of its own params, which the runner validates again.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from tickreplay.errors import StrategyError, StrategyTimeout
from tickreplay.runner.pool import runner_env, sandboxed
from tickreplay.settings import Settings

TIMEOUT_S = 30.0
CPU_S = 120
MEMORY_BYTES = 2 * 1024**3
MAX_LIVE = 16


class Inspector:
    """One sandboxed child holding one strategy's loaded class."""

    def __init__(self, settings: Settings, bundle: dict[str, Any]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="inspect-"))
        answers_r, answers_w = os.pipe()
        argv = sandboxed(settings, self.workdir, [sys.executable, "-m", "tickreplay.runner.inspect",
                                                  "--fd", str(answers_w)])
        # No preexec_fn: forking with one from a process serving gRPC can crash the child
        # (grpc/grpc#43055); the child sets its own limits before loading any strategy code.
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=runner_env(self.workdir), cwd=self.workdir, pass_fds=(answers_w,),
            start_new_session=True)
        os.close(answers_w)
        self.answers: IO[bytes] = os.fdopen(answers_r, "rb")
        self.lock = threading.Lock()
        assert self.proc.stderr is not None
        self._stderr = bytearray()
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        self.info = self._ask({"bundle": bundle})

    def _drain(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(4096):
            self._stderr += chunk
            del self._stderr[:-4000]

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request line, read one answer line within ``TIMEOUT_S``."""
        assert self.proc.stdin is not None
        result: list[bytes] = []
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: reported below
        reader = threading.Thread(target=lambda: result.append(self.answers.readline()),
                                  daemon=True)
        reader.start()
        reader.join(TIMEOUT_S)
        if reader.is_alive():
            self.close()
            raise StrategyTimeout(f"the strategy did not answer within {TIMEOUT_S:.0f} s")
        line = result[0] if result else b""
        try:
            answer = json.loads(line)
        except ValueError:
            self.close()
            tail = self._stderr.decode(errors="replace").strip()[-2000:]
            raise StrategyError(f"the strategy could not be loaded (exit code "
                                f"{self.proc.poll()}): {tail or 'no output'}") from None
        if "error" in answer:
            raise StrategyError(str(answer["error"]))
        return dict(answer)

    def check(self, params: list[dict[str, Any]]) -> list[dict[str, Any] | str]:
        """Each params set validated (a dict, defaults filled in) or its error (a str)."""
        with self.lock:
            results = self._ask({"params": params})["results"]
        return [r["params"] if "params" in r else str(r["error"]) for r in results]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.answers.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class InspectorPool:
    """Warm inspectors by strategy digest, at most ``MAX_LIVE`` (least recently used go)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._live: OrderedDict[str, Inspector] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, digest: str, bundle: dict[str, Any]) -> Inspector:
        with self._lock:
            found = self._live.get(digest)
            if found is not None and found.alive():
                self._live.move_to_end(digest)
                return found
        inspector = Inspector(self.settings, bundle)  # outside the lock: takes ~0.2 s
        with self._lock:
            old = self._live.pop(digest, None)
            self._live[digest] = inspector
            evicted = [self._live.popitem(last=False)[1] for _ in
                       range(max(0, len(self._live) - MAX_LIVE))]
        for gone in [x for x in (old, *evicted) if x is not None]:
            gone.close()
        return inspector

    def describe(self, digest: str, bundle: dict[str, Any]) -> dict[str, Any]:
        """``{"schema": Params JSON schema, "class": name}``; StrategyError if it won't load."""
        return self._get(digest, bundle).info

    def check(self, digest: str, bundle: dict[str, Any], params: list[dict[str, Any]]
              ) -> list[dict[str, Any] | str]:
        """See :meth:`Inspector.check`; a dead child is replaced once."""
        inspector = self._get(digest, bundle)
        try:
            return inspector.check(params)
        except StrategyError:
            if inspector.alive():
                raise
        return self._get(digest, bundle).check(params)

    def close(self) -> None:
        with self._lock:
            live, self._live = list(self._live.values()), OrderedDict()
        for inspector in live:
            inspector.close()


def _serve(answers: IO[str]) -> None:
    """Child side: the first request loads the bundle, each further one checks params."""
    from tickreplay.strategy.api import StrategyError as UserError
    from tickreplay.strategy.loader import StrategyBundle, bundle_digest, load_class

    def reply(doc: dict[str, Any]) -> None:
        answers.write(json.dumps(doc, default=str) + "\n")
        answers.flush()

    cls: Any = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if cls is None:
                files = req["bundle"]["files"]
                cls = load_class(StrategyBundle(files, req["bundle"]["entry"],
                                                req["bundle"].get("class"), bundle_digest(files)))
                reply({"schema": cls.Params.model_json_schema(), "class": cls.__name__})
                continue
            results: list[dict[str, Any]] = []
            for params in req["params"]:
                try:
                    results.append({"params": cls(params).params.model_dump(mode="json")})
                except UserError as e:
                    results.append({"error": str(e)})
                except Exception as e:  # noqa: BLE001 - the strategy's constructor failed
                    results.append({"error": f"{cls.__name__}() failed: {type(e).__name__}: {e}"})
            reply({"results": results})
        except Exception as e:  # noqa: BLE001 - every failure is the strategy's, reported as such
            reply({"error": str(e) or type(e).__name__})


def main() -> None:
    """Child entry point: limits first, stdout to stderr (prints can't forge answers), serve."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    fd = ap.parse_args().fd
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    answers = os.fdopen(fd, "w")
    os.dup2(2, 1)  # the strategy's prints go to stderr
    sys.stdout = sys.stderr
    _serve(answers)


if __name__ == "__main__":
    main()
