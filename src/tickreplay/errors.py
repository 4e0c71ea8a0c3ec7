"""One error hierarchy for the whole project: every failure tickreplay names is a ``TickreplayError``.

Why one base with a ``code`` and ``retryable``: a failure crosses three boundaries (the runner
child -> the worker over a socket, the activity -> the workflow through Temporal, the workflow ->
``tickreplay status``) and at each one only a string survives. ``code`` is that string, stable
across releases (it is recorded in workflow histories and scripted against by users);
``retryable`` says whether the same inputs could succeed on another attempt. The activities turn
any ``TickreplayError`` into an ``ApplicationError`` in one place
(:func:`tickreplay.activities.errors.to_application_error`), and the workflows' list of
non-retryable types is :func:`non_retryable_codes`, derived from these classes.

This module imports nothing: the workflow sandbox, the runner child and the engine all import it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TickreplayError(Exception):
    """Base of every error the project raises on purpose."""

    code: ClassVar[str] = "TickreplayError"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message)
        # Travels with the error to the workflow (ApplicationError details): keep it small.
        self.details = details


# ------------------------------------------------------------------------------ job inputs
class SpecError(TickreplayError, ValueError):
    """An invalid backtest spec; the message names the field."""

    code = "SpecError"


class StrategyError(TickreplayError):
    """A strategy's own code failed (bad params, exception in a callback, bad on_batch output).

    Never retried: the same inputs fail the same way.
    """

    code = "StrategyError"


class OutOfMemory(TickreplayError):
    """The strategy's runner went over its memory cap and was stopped (not retried: the same
    inputs need the same memory)."""

    code = "OutOfMemory"


class StrategyTimeout(TickreplayError):
    """The strategy made no progress for the stall timeout (an endless loop, a blocking call)."""

    code = "StrategyTimeout"


# ------------------------------------------------------------------------------------ data
class DataError(TickreplayError):
    """The data cannot serve this request (missing partition or column, bad input): not retryable."""

    code = "CorruptData"


class CorruptDataError(DataError):
    """Bytes on disk or in the store fail an integrity check (checksum, sha256, unreadable file)."""


class EmptyPlanError(DataError, ValueError):
    """A plan matched no partition at all: wrong URL, symbols or dates (a ValueError for callers
    that validate user input generically)."""

    code = "EmptyPlan"


class IngestError(DataError):
    """An input file of ``data ingest`` has a bad row or column; the message names it."""


class ObjectExistsError(TickreplayError):
    """A create-only write found the key already there (another writer won)."""

    code = "ObjectExists"


# ------------------------------------------------------------------- checkpoints, results
class CheckpointError(TickreplayError):
    """A checkpoint could not be written or read back (corrupt, wrong version, unpicklable)."""

    code = "CheckpointError"


class IntegrityError(TickreplayError):
    """Bytes are not authentic (no or a wrong signature) or belong to another run."""

    # Not "IntegrityError": error types share one namespace with foreign exception class names
    # (the SDK names an escaped exception by its class), and a database driver's
    # IntegrityError must not become non-retryable by accident.
    code = "NotAuthentic"


class ResultsError(TickreplayError):
    """A result directory is missing its manifest, is incomplete, or does not match it."""

    code = "ResultError"


class ResultConflictError(ResultsError):
    """The destination already holds a different result (another result hash)."""

    code = "ResultConflict"


# ------------------------------------------------------------------------- orchestration
class RunnerError(TickreplayError):
    """The runner failed for a reason that is not the job's inputs (worth another attempt)."""

    code = "RunnerError"
    retryable = True


class RunnerDied(RunnerError):
    """The runner process exited without a result or an error (killed, crashed)."""

    code = "RunnerDied"


class AvoidNode(TickreplayError):
    """This node was already found unhealthy for the job: let Temporal retry it elsewhere."""

    code = "AvoidNode"
    retryable = True


class WorkerShutdown(TickreplayError):
    """The worker is stopping; the run resumes elsewhere from its final checkpoint."""

    code = "WorkerShutdown"
    retryable = True


class NodeUnhealthy(TickreplayError):
    """This node cannot run the job (cache read-only or full); the workflow places it elsewhere.

    Not retryable on this node, which is the point: the workflow, not Temporal, picks the next.
    """

    code = "NodeUnhealthy"


class NoNodeCanRun(TickreplayError):
    """Every node tried within the placement budget was unhealthy."""

    code = "NoNodeCanRun"


class PlacementsExhausted(TickreplayError):
    """The run was placed ``max_placements`` times (lost nodes, handovers) without finishing."""

    code = "PlacementsExhausted"


class JobConflictError(TickreplayError):
    """A job id is already taken by a job with a different spec, strategy or options."""

    code = "JobConflict"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id} already exists ({status}) with a different spec, strategy or "
            "options; submit under another --job-id, or omit it for a fresh one")
        self.job_id = job_id
        self.status = status


class StoreError(TickreplayError):
    """A request the metadata store refuses (unknown user, illegal status change, ...)."""

    code = "StoreError"


# ------------------------------------------------------------------- strategy images (OCI)
class ImageError(TickreplayError):
    """A strategy image reference that cannot be resolved as given (bad reference, no such
    tag or digest, no manifest for linux/amd64, refused credentials): not retried."""

    code = "ImageError"


class ImageNotFound(ImageError):
    """The registry has no such repository, tag or digest."""

    code = "ImageNotFound"


class RegistryAuthError(ImageError):
    """The registry refused the credentials (or asked for ones we do not have)."""

    code = "RegistryAuth"


class RegistryUnavailable(TickreplayError):
    """The registry did not answer (down, timeout, 5xx): retried, the tag may resolve later."""

    code = "RegistryUnavailable"
    retryable = True


# ----------------------------------------------------------------------------- the job API
class RequestError(TickreplayError):
    """A request the job API refuses; ``http`` is its HTTP status (the gRPC server maps it to
    the matching gRPC code). The message names the field or the object."""

    code = "BadRequest"
    http: ClassVar[int] = 400


class InvalidRequest(RequestError):
    """A body or argument that cannot be run (invalid field, unknown symbol, no data)."""

    code = "InvalidRequest"
    http = 422


class NotFound(RequestError):
    """No such job, sweep or strategy for this caller (another user's answers the same)."""

    code = "NotFound"
    http = 404


class Conflict(RequestError):
    """The same Idempotency-Key or job id with another body; cancelling a finished job."""

    code = "Conflict"
    http = 409


class TooLarge(RequestError):
    """A request over a platform limit (bundle size, sweep points)."""

    code = "TooLarge"
    http = 413


class Unavailable(RequestError):
    """A backing service (Temporal, the object store) did not answer; try again."""

    code = "Unavailable"
    retryable = True
    http = 503


class StackError(TickreplayError, RuntimeError):
    """A part of the stack could not be started; ``part`` names it (or ``stack`` for the whole)."""

    code = "StackError"

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part


def _subclasses(cls: type[TickreplayError]) -> list[type[TickreplayError]]:
    out: list[type[TickreplayError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def non_retryable_codes() -> list[str]:
    """The ``code`` of every non-retryable error class, for ``RetryPolicy.non_retryable_error_types``."""
    return sorted({c.code for c in _subclasses(TickreplayError) if not c.retryable})


def by_code(code: str) -> type[TickreplayError]:
    """The class of an error code reported across a boundary; unknown codes are a RunnerError.

    Why look the class up rather than trust the reporter's ``retryable``: the runner runs user
    code, so it may claim anything; what a code means is decided here.
    """
    for cls in _subclasses(TickreplayError):
        if cls.code == code and "code" in vars(cls):
            return cls
    return RunnerError


def classify(e: BaseException) -> tuple[str, bool]:
    """``(code, retryable)`` of any exception as it must travel across a process boundary.

    A ``MemoryError`` or ``RecursionError`` in a runner is the strategy's doing (the sandbox
    caps memory; the engine does not recurse), so it fails the job like a strategy error.
    """
    if isinstance(e, TickreplayError):
        return e.code, e.retryable
    if isinstance(e, MemoryError | RecursionError):
        return StrategyError.code, StrategyError.retryable
    return RunnerError.code, RunnerError.retryable
