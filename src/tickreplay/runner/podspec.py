"""The runner's Pod spec: one pure function for every container backend.

``podman kube play`` runs it on one machine; the Kubernetes backend puts the same spec into a
Job's pod template. One function means one place that says how strategy code is confined, so
the two backends cannot drift apart: no network (no service account token, no host network;
podman adds ``--network none``, Kubernetes a deny-all NetworkPolicy), a read-only root, every
capability dropped, no privilege escalation, the image's non-root user, CPU and memory limits,
the job's partitions read-only at ``/inputs`` and one writable directory at ``/out``.

Paths are fixed inside the pod (``/out``, ``/inputs``) whatever the node's layout: the runner
is told where its files are in those terms (see ``PodRunner.visible``).
"""

from __future__ import annotations

from typing import Any

OUT = "/out"  # the one writable directory: channel socket, checkpoints, result
INPUTS = "/inputs"  # the job's partitions, read-only
CHANNEL = f"{OUT}/chan.sock"  # the runner connects here (the worker listens on the host side)
RUNNER_UID = 10001  # the runner image's user (runner_image/Containerfile)


def runner_pod(name: str, image: str, *, out_dir: str, inputs_dir: str, cpus: float,
               memory_mb: int, labels: dict[str, str] | None = None,
               args: list[str] | None = None) -> dict[str, Any]:
    """A ``v1`` Pod running ``image`` (pin it by digest) as the confined runner.

    ``out_dir`` and ``inputs_dir`` are directories on the node (hostPath: the node-local cache
    is where the worker staged this job's partitions). ``args`` go to the image's entry point
    (``tickreplay-runner``); the default connects to the channel socket in ``/out``.
    """
    limits = {"cpu": _cpu(cpus), "memory": f"{memory_mb}Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "tickreplay-runner",
                                              **(labels or {})}},
        "spec": {
            "restartPolicy": "Never",  # Temporal owns retries
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,  # no other services' addresses in its environment
            "hostNetwork": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                "runAsGroup": RUNNER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "runner",
                "image": image,
                "imagePullPolicy": "IfNotPresent",  # a digest never changes: pull once
                "args": args if args is not None else ["--socket", CHANNEL],
                "env": [{"name": "HOME", "value": OUT}, {"name": "TMPDIR", "value": OUT},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "workingDir": OUT,
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"requests": dict(limits), "limits": limits},
                "volumeMounts": [{"name": "out", "mountPath": OUT},
                                 {"name": "inputs", "mountPath": INPUTS, "readOnly": True}],
            }],
            "volumes": [
                {"name": "out", "hostPath": {"path": out_dir, "type": "Directory"}},
                {"name": "inputs", "hostPath": {"path": inputs_dir, "type": "Directory"}},
            ],
        },
    }


def _cpu(cpus: float) -> str:
    """Kubernetes CPU quantity: whole cores as ``"4"``, fractions in millicores (``"1500m"``)."""
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"
