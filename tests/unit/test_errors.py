"""The error hierarchy (issue 12): one module, stable unique codes, one mapping to Temporal."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from temporalio.exceptions import ApplicationError

import tickreplay
from tickreplay import errors
from tickreplay.activities.errors import reported_error, reports_errors

# The types the workflows refused to retry before issue 12 (recorded in histories): still so.
OLD_NON_RETRYABLE = {"StrategyError", "SpecError", "CorruptData", "EmptyPlan", "CheckpointError",
                     "StrategyTimeout", "ResultConflict", "ResultError"}


def _all_error_classes() -> list[type[errors.TickreplayError]]:
    for mod in pkgutil.walk_packages(tickreplay.__path__, "tickreplay."):
        if ".migrations" not in mod.name and not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    return errors._subclasses(errors.TickreplayError)


def test_every_coded_error_lives_in_errors_py_with_a_unique_code() -> None:
    """So the derived lists do not depend on which modules happen to be imported."""
    coded = [c for c in _all_error_classes() if "code" in vars(c)]
    assert {c.__module__ for c in coded} == {"tickreplay.errors"}
    codes = [c.code for c in coded]
    assert len(codes) == len(set(codes))


def test_the_derived_non_retryable_list_keeps_the_old_one() -> None:
    derived = set(errors.non_retryable_codes())
    assert OLD_NON_RETRYABLE <= derived
    assert not {"WorkerShutdown", "RunnerError", "RunnerDied", "AvoidNode"} & derived


def test_classify_and_by_code() -> None:
    assert errors.classify(errors.CorruptDataError("x")) == ("CorruptData", False)
    assert errors.classify(MemoryError()) == ("StrategyError", False)
    assert errors.classify(KeyError("k")) == ("RunnerError", True)
    assert errors.by_code("EmptyPlan") is errors.EmptyPlanError
    assert errors.by_code("no such code") is errors.RunnerError


async def test_activities_map_project_errors_in_one_place() -> None:
    @reports_errors
    async def fails() -> None:
        raise errors.NodeUnhealthy("node a: cache full", details={"node": "a"})

    with pytest.raises(ApplicationError) as info:
        await fails()
    assert (info.value.type, info.value.non_retryable) == ("NodeUnhealthy", True)
    assert info.value.details == ({"node": "a"},)

    @reports_errors
    def hands_over() -> None:
        raise errors.WorkerShutdown("bye")

    with pytest.raises(ApplicationError) as info:
        hands_over()
    assert (info.value.type, info.value.non_retryable) == ("WorkerShutdown", False)
    # What a runner reports is judged by its code, not by the runner's own claim.
    claimed = reported_error("StrategyError", "boom")
    assert claimed.non_retryable and claimed.type == "StrategyError"
    assert reported_error("Whatever", "x").type == "RunnerError"
