"""Project errors -> Temporal ``ApplicationError``, in one place.

Activities raise the project's own errors (:mod:`tickreplay.errors`); :func:`reports_errors`
turns any of them into an ``ApplicationError`` whose ``type`` is the error's stable ``code`` and
whose ``non_retryable`` is ``not retryable``. The workflows match on those codes, and their
retry policies' non-retryable list is derived from the same classes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from temporalio.exceptions import ApplicationError

from tickreplay.errors import TickreplayError, by_code

F = TypeVar("F", bound=Callable[..., Any])


def to_application_error(e: TickreplayError) -> ApplicationError:
    """The ApplicationError a workflow sees for ``e`` (details attached when it has some)."""
    details = () if e.details is None else (e.details,)
    return ApplicationError(str(e), *details, type=e.code, non_retryable=not e.retryable)


def reports_errors(fn: F) -> F:
    """Decorate an activity (sync or async) so a project error leaves it as an ApplicationError."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except TickreplayError as e:
                raise to_application_error(e) from None

        return cast(F, run_async)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TickreplayError as e:
            raise to_application_error(e) from None

    return cast(F, run)


def reported_error(code: str, message: str, details: Any = None) -> ApplicationError:
    """The ApplicationError for a failure the runner reported by ``code``.

    Whether it is retryable is decided by the code's class here, not by the report: the runner
    runs user code and may claim anything (an unknown code counts as a runner error).
    """
    cls = by_code(code)
    return ApplicationError(message, *(() if details is None else (details,)), type=cls.code,
                            non_retryable=not cls.retryable)
