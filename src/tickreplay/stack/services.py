"""Former home of the server launchers, kept as re-exports for importers not yet moved.

The code lives in :mod:`tickreplay.stack.seaweedfs`, :mod:`tickreplay.stack.temporal`,
:mod:`tickreplay.stack.ports` and :mod:`tickreplay.stack.process`; new code imports from
there. Why this file still exists: ``tests/integration/test_integrity.py`` and
``tests/integration/test_s3_store.py`` import ``SeaweedFS`` from here and are edited by
others; once they import ``tickreplay.stack.seaweedfs``, delete this module.
"""

from __future__ import annotations

from tickreplay.stack.ports import free_port, port_is_free
from tickreplay.stack.process import log_tail
from tickreplay.stack.seaweedfs import SeaweedFS, find_weed
from tickreplay.stack.temporal import TEMPORAL_DEV_DYNAMIC_CONFIG, TemporalDevServer, find_temporal

__all__ = ["TEMPORAL_DEV_DYNAMIC_CONFIG", "SeaweedFS", "TemporalDevServer", "find_temporal",
           "find_weed", "free_port", "log_tail", "port_is_free"]
