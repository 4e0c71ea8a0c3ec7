"""Result files of a backtest, their manifest and the machine-independent result hash."""

from __future__ import annotations

from tickreplay.results.canonical import canonical_json, result_hash
from tickreplay.results.files import (
    MANIFEST_VERSION,
    ResultConflictError,
    ResultsError,
    load_results,
    publish_results,
    read_manifest,
    sign_results,
    verify_results,
    write_results,
)
from tickreplay.results.model import ResultSet

__all__ = [
    "MANIFEST_VERSION",
    "ResultConflictError",
    "ResultSet",
    "ResultsError",
    "canonical_json",
    "load_results",
    "publish_results",
    "read_manifest",
    "result_hash",
    "sign_results",
    "verify_results",
    "write_results",
]
