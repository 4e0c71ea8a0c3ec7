"""Replay committed workflow histories against the current workflow code.

The histories under tests/histories were recorded from real runs (success, strategy failure,
SIGKILLed and SIGTERMed workers, cancel, sweep; and jobs of the job API) with
TICKREPLAY_RECORD_HISTORIES=1. A change to
the workflows that is not deterministic against them (a new activity, a reordered step, a timer)
fails here instead of breaking running jobs in production; guard such changes with
``workflow.patched``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tickreplay.workflows.backtest import BacktestWorkflow, SweepWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))


def test_histories_cover_the_important_paths() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"backtest_succeeded", "backtest_strategy_failed", "backtest_sigterm",
            "backtest_cancelled", "sweep"} <= names
    assert any(n.startswith("backtest_killed") for n in names)
    # Jobs of the job API (tracked: admission, status writes, search attributes).
    assert {"api_backtest_succeeded", "api_backtest_cancelled", "api_sweep",
            "api_sweep_cancelled"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_deterministically(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[BacktestWorkflow, SweepWorkflow])
    await replayer.replay_workflow(history)
