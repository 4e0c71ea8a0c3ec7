"""Checking manifests against the ``kubernetes`` client's models (no cluster needed)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient


def roundtrip(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """``obj`` through the client's ``kind`` model and back (unknown fields vanish)."""
    class Response:
        data = json.dumps(obj)

    api = ApiClient()
    return api.sanitize_for_serialization(api.deserialize(Response(), kind))
