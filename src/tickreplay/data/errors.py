"""Errors of the data layer, split by whether retrying can help."""

from __future__ import annotations

from tickreplay.errors import CorruptDataError, DataError, EmptyPlanError

__all__ = ["CorruptDataError", "DataError", "EmptyPlanError"]
