"""Structured logs: one JSON object per line, with the job id wherever there is one.

Why JSON: an operator follows a job's whole story across the API and the workers by
``job_id``, and log shippers parse it without a pattern per message. The job id comes from the
record's own ``job_id`` (the API's request log) or from the context Temporal's loggers attach
(``temporal_activity`` / ``temporal_workflow``: the workflow id is the job id).
"""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "job_id"?, ...request fields}`` per record."""

    FIELDS = ("job_id", "user", "method", "path", "status", "ms")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        for key in self.FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        for ctx in ("temporal_activity", "temporal_workflow"):
            info = getattr(record, ctx, None)
            if isinstance(info, dict) and "workflow_id" in info:
                out.setdefault("job_id", info["workflow_id"])
                if "activity_type" in info:
                    out["activity"] = info["activity_type"]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's included) through one JSON handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # the API logs requests itself
