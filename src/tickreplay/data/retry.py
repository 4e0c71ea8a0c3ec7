"""Waiting out object-store outages: retry transient failures by TIME, with capped backoff.

Why time and not a count: an outage burns a retry count in seconds (25 attempts over ~3.5 min
failed a job for good 3 s before S3 came back), while what a user wants is "wait as long as an
outage reasonably lasts, then give up with the real error".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable",
                    "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}


def is_transient(e: BaseException) -> bool:
    """Whether retrying the same request later can succeed (connection/5xx), not a real answer."""
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return isinstance(e, ConnectionError | TimeoutError)
    if isinstance(e, EndpointConnectionError | ConnectionClosedError | ConnectTimeoutError
                  | ReadTimeoutError | ConnectionError | TimeoutError):
        return True
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return str(err.get("Code")) in _TRANSIENT_CODES or status.startswith("5")
    # urllib3/botocore wrap socket errors in a few more types; their names say enough.
    return type(e).__name__ in ("ProtocolError", "NewConnectionError", "HTTPClientError")


def with_outage_retry(fn: Callable[[], T], what: str, budget_s: float,
                      on_wait: Callable[[str], None] | None = None,
                      max_backoff_s: float = 15.0) -> T:
    """``fn()``, retried on transient errors with backoff 0.5 s .. ``max_backoff_s`` until
    ``budget_s`` has passed since the first failure; then the last error is raised.

    ``on_wait(message)`` is called before each wait (to heartbeat, or to log).
    """
    first_failure: float | None = None
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            now = time.monotonic()
            first_failure = first_failure if first_failure is not None else now
            waited = now - first_failure
            if waited >= budget_s:
                raise
            msg = f"{what}: object store unreachable for {waited:.0f} s ({type(e).__name__}); retrying"
            log.warning(msg)
            if on_wait is not None:
                on_wait(msg)
            time.sleep(min(delay, max(0.0, budget_s - waited)))
            delay = min(delay * 2, max_backoff_s)
