"""The Kubernetes backend's Job of one run attempt and its status mapping (pure: no cluster).

Every manifest is also round-tripped through the ``kubernetes`` client's models: a misspelt or
misplaced field is dropped by the model, so the round trip would differ.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubekit import roundtrip

from tickreplay.runner.kubejob import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_USER,
    LABEL_WORKER,
    job_name,
    label_value,
    outcome,
    runner_job,
)

IMAGE = "registry.example:5000/strategies/sma@sha256:" + "ab" * 32


def _job(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"job_id": "bt-0123456789abcdef", "user": "alice", "attempt": 3,
                            "image": IMAGE, "node": "node-7", "worker": "node-7-w",
                            "out_dir": "/ssd/o", "inputs_dir": "/ssd/i", "deadline_s": 7200}
    args.update(kw)
    return runner_job(**args)


def test_the_job_carries_every_field_the_issue_names() -> None:
    job = _job()
    assert roundtrip(job, "V1Job") == job  # valid against the client's models, nothing lost
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"][LABEL_JOB] == "bt-0123456789abcdef"
    assert meta["labels"][LABEL_USER] == "alice" and meta["labels"][LABEL_ATTEMPT] == "3"
    assert meta["labels"][LABEL_WORKER] == "node-7-w"
    assert meta["name"] == job_name("bt-0123456789abcdef", 3) and len(meta["name"]) <= 63
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 7200
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == IMAGE
    assert c["resources"]["requests"] == c["resources"]["limits"] == {"cpu": "4",
                                                                      "memory": "6144Mi"}
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-7"]}]
    assert any(t["key"] == "tickreplay.io/spot" for t in pod["tolerations"])
    vols = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert vols == {"out": "/ssd/o", "inputs": "/ssd/i"}
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    assert mounts == {"/out": False, "/inputs": True}
    assert spec["template"]["metadata"]["labels"] == meta["labels"]


def test_without_spot_no_tolerations_and_fractional_cpus_in_millicores() -> None:
    job = _job(spot=False, cpus=1.5)
    pod = job["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["nodeAffinity"]
    assert pod["containers"][0]["resources"]["limits"]["cpu"] == "1500m"
    assert roundtrip(job, "V1Job") == job


def test_label_values_are_always_valid() -> None:
    assert label_value("bt-abc") == "bt-abc"
    odd = label_value("sweep/with spaces and a very long name " * 3)
    assert len(odd) <= 63 and odd[0].isalnum() and odd[-1].isalnum()
    assert label_value("a" * 70) != label_value("a" * 71)  # still distinct


def _pod(terminated: dict[str, Any] | None = None, reason: str = "",
         conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"running": {}}
    return {"status": {"reason": reason, "conditions": conditions or [],
                       "containerStatuses": [{"name": "runner", "state": state}]}}


def _jobstatus(cond: str | None = None, reason: str = "") -> dict[str, Any]:
    return {"status": {"conditions": [{"type": cond, "status": "True", "reason": reason}]
                       if cond else []}}


@pytest.mark.parametrize("job, pod, state, retryable", [
    (_jobstatus(), _pod(), "running", False),
    (_jobstatus("Complete"), _pod({"exitCode": 0, "reason": "Completed"}), "succeeded", False),
    (_jobstatus("Failed", "BackoffLimitExceeded"), _pod({"exitCode": 3, "reason": "Error"}),
     "failed", False),
    (_jobstatus("Failed", "BackoffLimitExceeded"), _pod({"exitCode": 137,
                                                         "reason": "OOMKilled"}), "oom", False),
    (_jobstatus("Failed", "DeadlineExceeded"), _pod({"exitCode": 137, "reason": "Error"}),
     "deadline", False),
    (_jobstatus("Failed", "BackoffLimitExceeded"), _pod({"exitCode": 4}), "stopped", True),
    (_jobstatus("Failed", "BackoffLimitExceeded"), _pod(None, "Evicted"), "lost", True),
    (_jobstatus("Failed", "PodFailurePolicy"), _pod({"exitCode": 143}, "", [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
         "message": "node shutdown"}]), "lost", True),
    (_jobstatus("Failed", "BackoffLimitExceeded"), _pod(None, "NodeLost"), "lost", True),
    (_jobstatus("Failed", "BackoffLimitExceeded"), None, "lost", True),  # pod gone with its node
])
def test_status_maps_to_the_attempts_outcome(job: dict[str, Any], pod: dict[str, Any] | None,
                                             state: str, retryable: bool) -> None:
    got = outcome(job, pod)
    assert (got.state, got.retryable) == (state, retryable), got
    assert got.finished == (state != "running")
