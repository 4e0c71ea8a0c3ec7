"""Errors of the data layer, split by whether retrying can help."""

from __future__ import annotations


class DataError(Exception):
    """The data cannot serve this request (missing partition or column, bad input): not retryable."""


class CorruptDataError(DataError):
    """Bytes on disk or in the store fail an integrity check (checksum, sha256, unreadable file)."""


class EmptyPlanError(DataError, ValueError):
    """A plan matched no partition at all: wrong URL, symbols or dates (a ValueError for callers
    that validate user input generically)."""
