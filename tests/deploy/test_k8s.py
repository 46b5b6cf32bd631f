"""The Kubernetes manifests validate offline against the bundled schemas (strict: no unknown
fields) and keep their promises: one GPU per pod, probes on /readyz and /healthz, a termination
grace that covers preStop and the drain, the key from a Secret."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
# launcher/supervisor.py: vLLM's stop grace (15 s) and its log flush (5 s).
VLLM_STOP_S = 20


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VALIDATE), "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return document


def test_there_are_manifests() -> None:
    kinds = {load(path.name)["kind"] for path in MANIFESTS}
    assert {"Deployment", "Service", "Secret", "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates(manifest: Path) -> None:
    result = validate(manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_validator_rejects_a_mistake(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    broken.write_text(
        (K8S / "deployment.yaml").read_text().replace("containerPort:", "containerPorts:")
    )
    assert validate(broken).returncode != 0


def test_deployment_keeps_its_promises() -> None:
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # model download
    env = {item["name"]: item for item in container["env"]}
    key = env["VOXTRAL_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = load("secret.example.yaml")
    assert key["name"] == secret["metadata"]["name"]
    assert key["key"] in secret["stringData"]
    assert int(env["MAX_CONCURRENT_CONNECTIONS"]["value"]) <= int(env["VLLM_MAX_NUM_SEQS"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env["WS_DRAIN_TIMEOUT_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain + VLLM_STOP_S
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert env["VOXTRAL_MODEL_DIR"]["value"].startswith(mounts["models"] + "/")
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claims["models"] == load("pvc.yaml")["metadata"]["name"]


def test_service_reaches_the_pods() -> None:
    deployment = load("deployment.yaml")
    service = load("service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert service["spec"]["ports"][0]["targetPort"] in {port["name"] for port in ports}
