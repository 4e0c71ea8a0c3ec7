"""Structured logs of the API: one JSON object per line, with the job id where there is one.

Why JSON: an operator greps a job's whole story across API and workers by ``job_id``, and log
shippers parse it without a pattern per message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("tickreplay.api")
_JOB_PATH = re.compile(r"^/v1/(?:jobs|sweeps)/([^/]+)")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` per record."""

    FIELDS = ("job_id", "user", "method", "path", "status", "ms")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        for key in self.FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's included) through one JSON handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # ours is below


def request_logger(metrics: Any) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                             Awaitable[Response]]:
    """HTTP middleware: count each request and log it as JSON (job id from the path)."""

    async def middleware(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        metrics.requests.labels(method=request.method, status=str(response.status_code)).inc()
        path = request.url.path
        extra: dict[str, Any] = {"method": request.method, "path": path,
                                 "status": response.status_code,
                                 "ms": round((time.monotonic() - started) * 1000, 1)}
        if (match := _JOB_PATH.match(path)) is not None:
            extra["job_id"] = match.group(1)
        log.info("%s %s %d", request.method, path, response.status_code, extra=extra)
        return response

    return middleware
