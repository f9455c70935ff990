"""The deployment files are valid: Kubernetes manifests against the Kubernetes schemas, the rest as YAML/INI."""

from __future__ import annotations

import configparser
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid_against_the_schemas(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_every_worker_kind_has_a_deployment_with_probes() -> None:
    deployments = {doc["metadata"]["name"]: doc for path in MANIFESTS for doc in documents(path)
                   if doc["kind"] == "Deployment"}
    assert set(deployments) == {"arledger-ingest", "arledger-relay", "arledger-project"}
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] == ["run", deployment["metadata"]["name"].removeprefix("arledger-")]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert deployments["arledger-relay"]["spec"]["replicas"] == 1  # one writer of the global chain


def test_compose_file_and_systemd_unit_parse() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"kafka", "postgres", "ingest", "relay", "project"} <= set(compose["services"])
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string((DEPLOY / "systemd" / "arledger@.service").read_text())
    assert unit["Service"]["ExecStart"].split()[1:3] == ["run", "%i"]
