"""The API's request log: one JSON line per request (method, path, status, ms, job id).

The formatter is :mod:`tickreplay.logjson`'s, shared with the workers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("tickreplay.api")
_JOB_PATH = re.compile(r"^/v1/(?:jobs|sweeps)/([^/]+)")


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
