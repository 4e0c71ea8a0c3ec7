"""The engine is pure: no module under tickreplay/engine imports anything that does I/O or reads a
clock, and the Strategy API does not depend on the engine at all (it talks to it through the
``StrategyContext`` protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

import tickreplay.engine
import tickreplay.strategy

FORBIDDEN = {"os", "io", "socket", "time", "pathlib", "subprocess", "threading", "asyncio",
             "boto3", "botocore", "duckdb", "random", "datetime.datetime", "urllib", "shutil",
             "tempfile", "requests", "tickreplay.data", "tickreplay.activities"}
# Every engine module, so that a new or renamed module is a conscious change of this test.
ENGINE_MODULES = {"__init__.py", "checkpoint.py", "config.py", "core.py", "orders.py",
                  "portfolio.py", "trades.py", "vector.py"}


def _imports(path: Path) -> list[str]:
    """Every module (and ``module.name``) a file imports, TYPE_CHECKING blocks included."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _offenders(root: Path, forbidden: set[str]) -> list[str]:
    return [f"{path.name}: {name}" for path in sorted(root.glob("*.py")) for name in _imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_engine_modules_import_nothing_that_touches_disk_network_or_clock() -> None:
    root = Path(tickreplay.engine.__file__).parent
    assert {p.name for p in root.glob("*.py")} == ENGINE_MODULES
    assert _offenders(root, FORBIDDEN) == []


def test_strategy_api_does_not_import_the_engine_even_for_type_checking() -> None:
    root = Path(tickreplay.strategy.__file__).parent
    assert _offenders(root, {"tickreplay.engine"}) == []


def test_engine_modules_import_each_other_one_way_only() -> None:
    """No cycle inside the engine, not even through TYPE_CHECKING imports."""
    root = Path(tickreplay.engine.__file__).parent
    deps = {p.stem: {n.split(".")[2] for n in _imports(p)
                     if n.startswith("tickreplay.engine.") and n.count(".") >= 2}
            for p in root.glob("*.py")}
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert seen.get(m) != 1, f"import cycle: {' -> '.join(path + (m,))}"
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for d in sorted(deps.get(m, ())):
            visit(d, path + (m,))
        seen[m] = 2

    for m in sorted(deps):
        visit(m, ())
