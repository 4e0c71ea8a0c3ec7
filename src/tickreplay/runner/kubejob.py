"""The Kubernetes runner backend's pure half: the ``batch/v1`` Job of one run attempt, and what a
Job and its Pod's status mean for the attempt.

No client, no I/O: the manifest is built from :func:`tickreplay.runner.podspec.runner_pod` (the
spec ``podman kube play`` runs on one machine, so both backends confine strategy code the same
way) and the mapping reads plain dicts, so both are tested without a cluster.

Why one Job per attempt, ``backoffLimit: 0``: Temporal owns retries (it resumes from the last
checkpoint, on another node if need be); a Job controller retrying by itself would start over
from the first tick behind Temporal's back. Why pinned to the worker's node: the worker warmed
that node's cache and staged the job's partitions there (hostPath), and it listens on the
channel socket in the runner's output directory on that node.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from tickreplay.runner.podspec import runner_pod

LABEL_JOB = "tickreplay.io/job"
LABEL_USER = "tickreplay.io/user"
LABEL_ATTEMPT = "tickreplay.io/attempt"
LABEL_WORKER = "tickreplay.io/worker"  # the node/worker that created it: orphans are found by it
HOSTNAME = "kubernetes.io/hostname"
# Spot/preemptible pools: our own taint and label, plus the clouds' own taints.
SPOT_LABEL = "tickreplay.io/pool"
SPOT_TOLERATIONS = [
    {"key": "tickreplay.io/spot", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
     "effect": "NoSchedule"},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
     "effect": "NoSchedule"},
    {"key": "eks.amazonaws.com/capacityType", "operator": "Equal", "value": "SPOT",
     "effect": "NoSchedule"},
]
# Exit codes of tickreplay-runner (runner/child.py): 3 the strategy failed (its error is on the
# channel and in /out), 4 stopped after a final checkpoint (SIGTERM: a drain or spot reclaim).
EXIT_ERROR, EXIT_STOPPED = 3, 4
# Pod conditions/reasons that mean the node went away or evicted it: not the job's fault.
_DISRUPTED = {"DisruptionTarget"}
_NODE_GONE_REASONS = {"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown",
                      "Preempting", "UnexpectedAdmissionError"}


def label_value(value: str) -> str:
    """A Kubernetes label value (<= 63 of ``[A-Za-z0-9._-]``, alphanumeric ends); a hash
    suffix keeps long or odd values distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip("._-")
    if clean == value and len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{clean[:50].strip('._-')}-{digest}".strip("-")


def job_name(job_id: str, attempt: int) -> str:
    """``tr-<hash of the job id>-a<attempt>``: a DNS-1123 name, unique per attempt."""
    return f"tr-{hashlib.sha256(job_id.encode()).hexdigest()[:20]}-a{attempt}"


def runner_job(job_id: str, user: str, attempt: int, image: str, *, node: str, worker: str,
               out_dir: str, inputs_dir: str, cpus: float = 4.0, memory_mb: int = 6144,
               deadline_s: float = 86_400.0, namespace: str = "tickreplay",
               spot: bool = True, ttl_s: int = 3600) -> dict[str, Any]:
    """The ``batch/v1`` Job of one run attempt of ``job_id`` on ``node``.

    ``image`` is pinned by digest; ``cpus``/``memory_mb`` are the job's requests and limits
    (4 CPU by default, as in the seed); ``deadline_s`` becomes ``activeDeadlineSeconds``.
    """
    labels = {LABEL_JOB: label_value(job_id), LABEL_USER: label_value(user or "-"),
              LABEL_ATTEMPT: str(attempt), LABEL_WORKER: label_value(worker),
              "app.kubernetes.io/name": "tickreplay-runner",
              "app.kubernetes.io/managed-by": "tickreplay-worker"}
    name = job_name(job_id, attempt)
    pod = runner_pod(name, image, out_dir=out_dir, inputs_dir=inputs_dir, cpus=cpus,
                     memory_mb=memory_mb, labels=labels)
    spec = pod["spec"]
    spec["affinity"] = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [node]}]}]},
        **({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": SPOT_LABEL, "operator": "In", "values": ["spot"]}]}}]} if spot else {}),
    }}
    if spot:
        spec["tolerations"] = [dict(t) for t in SPOT_TOLERATIONS]
    spec["terminationGracePeriodSeconds"] = 30  # SIGTERM -> final checkpoint -> exit 4
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"tickreplay.io/job-id": job_id}},
        "spec": {
            "backoffLimit": 0,  # Temporal owns retries
            "activeDeadlineSeconds": max(1, int(deadline_s)),
            "ttlSecondsAfterFinished": ttl_s,
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


@dataclass(frozen=True)
class Outcome:
    """What a Job (and its Pod) says about the attempt.

    ``state``: ``running``, ``succeeded``, ``failed`` (the strategy's own error: not retried),
    ``oom``, ``deadline`` (not retried), ``stopped`` (SIGTERM, after a final checkpoint),
    ``lost`` (evicted, node shut down or gone, preempted: retried from the last checkpoint).
    """

    state: str
    exit_code: int | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def retryable(self) -> bool:
        return self.state in ("stopped", "lost")


def outcome(job: dict[str, Any], pod: dict[str, Any] | None) -> Outcome:
    """Map a Job's and its Pod's status (API dicts, camelCase) to the attempt's outcome."""
    jstatus = job.get("status") or {}
    conditions = {c.get("type"): c for c in jstatus.get("conditions") or []
                  if c.get("status") == "True"}
    terminated, pod_reason = _terminated(pod)
    if "Failed" in conditions and conditions["Failed"].get("reason") == "DeadlineExceeded":
        return Outcome("deadline", reason="activeDeadlineSeconds exceeded")
    if pod is not None and _disrupted(pod, pod_reason):
        return Outcome("lost", reason=pod_reason or _disruption_reason(pod))
    if terminated is not None:
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return Outcome("oom", code, "OOMKilled")
        if code == 0:
            return Outcome("succeeded", 0)
        if code == EXIT_STOPPED:
            return Outcome("stopped", code, "SIGTERM: stopped after a final checkpoint")
        if code is not None:
            return Outcome("failed", code, terminated.get("reason") or "Error")
    if "Complete" in conditions:
        return Outcome("succeeded", 0)
    if "Failed" in conditions:  # failed with no pod left to say why: the node took it
        return Outcome("lost", reason=conditions["Failed"].get("reason") or "Failed")
    return Outcome("running")


def _terminated(pod: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if pod is None:
        return None, ""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == "runner":
            return (cs.get("state") or {}).get("terminated"), status.get("reason") or ""
    return None, status.get("reason") or ""


def _disrupted(pod: dict[str, Any], reason: str) -> bool:
    status = pod.get("status") or {}
    if reason in _NODE_GONE_REASONS:
        return True
    return any(c.get("type") in _DISRUPTED and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _disruption_reason(pod: dict[str, Any]) -> str:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") in _DISRUPTED:
            return f"{c.get('reason', 'DisruptionTarget')}: {c.get('message', '')}".strip(": ")
    return "disrupted"


def traceback_in(log: str) -> str:
    """The last Python traceback in a pod's log (from its ``Traceback`` line to the end), or
    ''. Why from the log: a runner that dies without a word on the channel (``os._exit``, a
    crash in an extension) leaves its last words only there."""
    at = log.rfind("Traceback (most recent call last):")
    return log[at:].strip() if at >= 0 else ""

