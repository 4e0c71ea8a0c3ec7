"""JSON log lines carry the job id: from the record itself (the API's request log) or from the
context Temporal's activity and workflow loggers attach (the workflow id is the job id)."""

from __future__ import annotations

import json
import logging

from tickreplay.logjson import JsonFormatter


def _line(**extra: object) -> dict:
    record = logging.LogRecord("tickreplay.x", logging.INFO, __file__, 1, "hello %s", ("you",),
                               None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_a_plain_record_is_one_json_object() -> None:
    out = _line()
    assert out["msg"] == "hello you" and out["level"] == "INFO" and out["logger"] == "tickreplay.x"
    assert "job_id" not in out


def test_the_job_id_comes_from_the_record_or_temporal_context() -> None:
    assert _line(job_id="bt-1", method="GET", status=200)["job_id"] == "bt-1"
    act = _line(temporal_activity={"workflow_id": "bt-2", "activity_type": "run_backtest"})
    assert act["job_id"] == "bt-2" and act["activity"] == "run_backtest"
    assert _line(temporal_workflow={"workflow_id": "bt-3"})["job_id"] == "bt-3"


def test_exceptions_are_kept_in_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["exc"]
