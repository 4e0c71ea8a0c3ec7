"""The ``tickreplay`` command: data tools, local runs, durable jobs and the embedded stack.

Importing this package registers every command group on ``app`` (one module per group:
``data``, ``run``, ``jobs``, ``image``, ``stack``); ``main`` is the console-script entry point.
"""

from __future__ import annotations

from tickreplay.cli import api, data, db, image, jobs, run, stack  # noqa: F401 - registers the commands
from tickreplay.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``tickreplay`` script."""
    app()
