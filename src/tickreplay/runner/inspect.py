"""Load a strategy in a sandboxed child and check parameters against its ``Params``.

Why a child process: the job API must answer 422 for bad parameters before a workflow starts,
which means running the strategy's module code and its pydantic ``Params``. That code is
hostile; the API process holds database and Temporal access. So the API never imports it: a
sandboxed child (the same bubblewrap confinement as a runner: no network, no credentials, the
state dir hidden, CPU-time and memory limits, a wall-clock deadline) does, and answers on its
stdout behind a per-call nonce.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tickreplay.errors import StrategyError, StrategyTimeout
from tickreplay.runner.pool import runner_env, sandboxed
from tickreplay.settings import Settings

TIMEOUT_S = 30.0
CPU_S = 20
MEMORY_BYTES = 2 * 1024**3


def _limit_myself() -> None:
    """Child side, before any strategy code runs. Not a preexec_fn: forking with one from a
    process that serves gRPC can crash the child (grpc/grpc#43055)."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def inspect_strategy(settings: Settings, bundle: dict[str, Any],
                     params: dict[str, Any] | None) -> dict[str, Any]:
    """``{"params": validated params with defaults, "schema": Params JSON schema,
    "class": class name}`` of ``bundle``.

    Raises:
        StrategyError: The strategy does not load or ``params`` do not validate (the message
            is pydantic's, naming the field).
        StrategyTimeout: The module did not finish loading within ``TIMEOUT_S``.
    """
    answer = _ask(settings, bundle, [params or {}])
    (first,) = answer.pop("results")
    if "error" in first:
        raise StrategyError(first["error"])
    return {**answer, "params": first["params"]}


def validate_many(settings: Settings, bundle: dict[str, Any],
                  params: list[dict[str, Any]]) -> list[dict[str, Any] | str]:
    """Each of ``params`` validated (a dict) or its error message (a str), in one child."""
    return [r["params"] if "params" in r else str(r["error"])
            for r in _ask(settings, bundle, params)["results"]]


def _ask(settings: Settings, bundle: dict[str, Any], params: list[dict[str, Any]]
         ) -> dict[str, Any]:
    nonce = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="inspect-"))
    try:
        argv = sandboxed(settings, workdir, [sys.executable, "-m", "tickreplay.runner.inspect"])
        try:
            proc = subprocess.run(
                argv, check=False, input=json.dumps({"nonce": nonce, "bundle": bundle,
                                        "params": params}).encode(),
                capture_output=True, timeout=TIMEOUT_S, env=runner_env(workdir), cwd=workdir,
                start_new_session=True)
        except subprocess.TimeoutExpired:
            raise StrategyTimeout(f"the strategy did not load within {TIMEOUT_S:.0f} s") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for line in reversed(proc.stdout.decode(errors="replace").splitlines()):
        if line.startswith(nonce):
            answer = json.loads(line[len(nonce):])
            if "error" in answer:
                raise StrategyError(answer["error"])
            return dict(answer)
    tail = proc.stderr.decode(errors="replace")[-2000:]
    raise StrategyError(f"the strategy could not be loaded (exit code {proc.returncode}): "
                        f"{tail.strip() or 'no output'}")


def main() -> None:
    """Child side: read the request on stdin, answer one nonce-prefixed JSON line."""
    _limit_myself()
    req = json.loads(sys.stdin.buffer.read())
    nonce = req["nonce"]
    try:
        from tickreplay.strategy.api import StrategyError
        from tickreplay.strategy.loader import StrategyBundle, bundle_digest, load_strategy

        files = req["bundle"]["files"]
        bundle = StrategyBundle(files, req["bundle"]["entry"], req["bundle"].get("class"),
                                bundle_digest(files))
        results: list[dict[str, Any]] = []
        strategy = None
        for params in req["params"]:
            try:
                strategy, _ = load_strategy(bundle, params)
                results.append({"params": strategy.params.model_dump(mode="json")})
            except StrategyError as e:
                results.append({"error": str(e)})
        if strategy is None:
            strategy, _ = load_strategy(bundle, {})  # the class loads; report its own error
        answer: dict[str, Any] = {
            "results": results, "schema": type(strategy.params).model_json_schema(),
            "class": type(strategy).__name__}
    except Exception as e:  # noqa: BLE001 - every failure is the strategy's, reported as such
        answer = {"error": str(e) or type(e).__name__}
    sys.stdout.write("\n" + nonce + json.dumps(answer, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
