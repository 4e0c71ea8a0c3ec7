"""The engine is pure: no module under tickreplay/engine imports anything that does I/O or reads a clock."""

from __future__ import annotations

import ast
from pathlib import Path

import tickreplay.engine

FORBIDDEN = {"os", "io", "socket", "time", "pathlib", "subprocess", "threading", "asyncio",
             "boto3", "botocore", "duckdb", "random", "datetime.datetime", "urllib", "shutil",
             "tempfile", "requests", "tickreplay.data", "tickreplay.activities"}


def test_engine_modules_import_nothing_that_touches_disk_network_or_clock() -> None:
    root = Path(tickreplay.engine.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
