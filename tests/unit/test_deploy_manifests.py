"""``deploy/``: both overlays render with ``kubectl kustomize`` and every rendered object is valid
against the ``kubernetes`` client's models (a misspelt field is dropped by the model, so the
round trip would differ). Skipped, saying so, where kubectl is not installed."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubekit import roundtrip

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODELS = {"Namespace": "V1Namespace", "ConfigMap": "V1ConfigMap", "Secret": "V1Secret",
          "ServiceAccount": "V1ServiceAccount", "Role": "V1Role", "RoleBinding": "V1RoleBinding",
          "Deployment": "V1Deployment", "Service": "V1Service", "DaemonSet": "V1DaemonSet",
          "PodDisruptionBudget": "V1PodDisruptionBudget", "NetworkPolicy": "V1NetworkPolicy"}


def render(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (apt-get install -y kubectl)")
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _without_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


@pytest.mark.parametrize("overlay", ["production", "local-kind"])
def test_every_rendered_object_validates_against_the_client_models(overlay: str) -> None:
    objects = render(overlay)
    counts = Counter(o["kind"] for o in objects)
    print(f"{overlay}: {len(objects)} objects: {dict(sorted(counts.items()))}")
    assert counts == {"Namespace": 1, "ConfigMap": 1, "Secret": 2, "ServiceAccount": 3,
                      "Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1,
                      "DaemonSet": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1}
    for obj in objects:
        assert roundtrip(obj, MODELS[obj["kind"]]) == _without_status(obj), obj["metadata"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "tickreplay"
    for obj in objects:  # resource requests on every container
        if obj["kind"] in ("Deployment", "DaemonSet"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


def test_the_runner_role_reaches_jobs_pods_and_logs_in_its_namespace_only() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("production")}
    role = objects[("Role", "tickreplay-runner-jobs")]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
                     ("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"}}
    assert not [o for o in objects.values() if o["kind"] in ("ClusterRole",
                                                              "ClusterRoleBinding")]
    deny = objects[("NetworkPolicy", "tickreplay-runner-deny-all")]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny  # nothing allowed either way
    worker = objects[("DaemonSet", "tickreplay-worker")]["spec"]["template"]["spec"]
    assert worker["nodeSelector"] == {"tickreplay.io/pool": "spot"}
    assert worker["terminationGracePeriodSeconds"] >= 100  # covers shutdown_grace_s


@pytest.mark.parametrize("overlay", ["production", "local-kind"])
def test_the_worker_names_its_node_directory_as_the_node_sees_it(overlay: str) -> None:
    """Runner Jobs mount the worker's directories by hostPath: the node path the worker is
    told (TICKREPLAY_KUBE_NODE_HOME) must be the hostPath mounted at its TICKREPLAY_HOME, and
    its runner Jobs must go to its own namespace (the Role reaches no other)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    pod = objects[("DaemonSet", "tickreplay-worker")]["spec"]["template"]["spec"]
    (worker,) = [c for c in pod["containers"] if c["name"] == "worker"]
    env = {e["name"]: e for e in worker["env"]}
    home = env["TICKREPLAY_HOME"]["value"]
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == home]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert env["TICKREPLAY_KUBE_NODE_HOME"]["value"] == volume["hostPath"]["path"]
    assert env["TICKREPLAY_KUBE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.namespace"
    config = objects[("ConfigMap", "tickreplay-config")]["data"]
    assert config["TICKREPLAY_CACHE_DIR"].startswith(home + "/")  # the cache is on the SSD
