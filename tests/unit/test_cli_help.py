"""Every command and subcommand of ``tickreplay`` prints its ``--help`` (issue 11, item 12).

Why walk the tree rather than list commands: a new command must be covered without anyone
remembering to add it here (``data generate --help`` crashed on rich markup in its help text).
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tickreplay import cli


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(cli.app)
    paths: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return paths


PATHS = _command_paths()


def test_the_tree_has_every_known_command() -> None:
    names = {" ".join(p) for p in PATHS}
    for expected in ("run", "submit", "status", "results", "logs", "cancel", "sweep", "gc",
                     "up", "down", "ps", "data", "data generate", "data ingest", "data ls",
                     "data query"):
        assert expected in names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "tickreplay")
def test_help_of_every_command_renders(path: list[str]) -> None:
    result = CliRunner().invoke(cli.app, [*path, "--help"], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"tickreplay {' '.join(path)} --help raised {result.exception!r}")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
