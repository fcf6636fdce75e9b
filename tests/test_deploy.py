"""What the deployment files say, checked without running them.

The image itself is built and run for real in test_container.py (user, files, volume,
health check, signals, read-only root, arbitrary uid, compose); what is left here is what
a running image cannot show: the Dockerfile's and the build script's lint, the default base
a plain `docker build` uses, and the Kubernetes manifests against the service's settings.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from droq_registry.folder import read_source
from droq_registry.nodefile import Schema
from droq_registry.settings import Settings
from support.files import ROOT

BIN = Path(sys.executable).parent


def test_hadolint_passes_without_warnings() -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_build_script_passes_shellcheck() -> None:
    result = subprocess.run([str(BIN / "shellcheck"), str(ROOT / "deploy" / "build-image.sh")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tag"], "--tag needs a value"),
        (["--tag", "--base", "x"], "--tag needs a value"),
        (["--tag="], "--tag needs a value"),
        (["--base"], "--base needs a value"),
        (["--apt-sources"], "--apt-sources needs a value"),
        (["--bogus"], "unknown argument --bogus"),
    ],
)
def test_build_script_refuses_an_option_without_its_value_in_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(["bash", str(ROOT / "deploy" / "build-image.sh"), *args],
                            capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"build-image.sh: {message} (see --help)\n")


def test_plain_docker_build_uses_the_slim_python_image_for_both_stages() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE) == ["python:3.11-slim"]
    assert re.findall(r"^FROM (.*)$", text, re.MULTILINE) == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def _containers(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    documents = list(yaml.safe_load_all(path.read_text()))
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    configmaps = [d for d in documents if d["kind"] == "ConfigMap"]
    assert len(deployments) == 1 and len(configmaps) == 1
    return deployments, configmaps, {d["kind"]: d for d in documents}


def _registry(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "registry")


@pytest.mark.parametrize("manifest", ["sidecar.yaml", "replicas.yaml"])
def test_kubernetes_manifests_agree_with_the_service_defaults(manifest: str, tmp_path: Path) -> None:
    deployments, configmaps, by_kind = _containers(ROOT / "deploy" / "k8s" / manifest)
    pod = deployments[0]["spec"]["template"]["spec"]
    registry = _registry(pod)
    env = {e["name"]: e["value"] for e in registry["env"]}
    settings = Settings.from_env(env)  # every value is one the service accepts
    assert settings.port == Settings().port == registry["ports"][0]["containerPort"]
    assert registry["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert registry["livenessProbe"]["httpGet"]["path"] == "/health"
    port_names = {p["name"]: p["containerPort"] for p in registry["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert port_names[registry[probe]["httpGet"]["port"]] == settings.port
    mounts = {m["mountPath"]: m for m in registry["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    nodes_mount = mounts[str(settings.assets_dir)]
    assert nodes_mount["readOnly"] is True
    assert volumes[nodes_mount["name"]]["configMap"]["name"] == configmaps[0]["metadata"]["name"]
    db_mount = mounts[str(settings.db_path.parent)]
    assert "emptyDir" in volumes[db_mount["name"]]
    assert registry["securityContext"]["runAsNonRoot"] is True
    # The ConfigMap's node files are valid node files.
    schema = Schema.load(Settings().schema_path)
    for name, content in configmaps[0]["data"].items():
        (tmp_path / name).write_text(content)
        outcome, _ = read_source(tmp_path, name, schema)
        assert type(outcome).__name__ == "Parsed", (name, outcome)
    if manifest == "sidecar.yaml":
        assert len(pod["containers"]) == 2, "the registry next to an example consumer"
        consumer = next(c for c in pod["containers"] if c["name"] != "registry")
        assert f"127.0.0.1:{settings.port}" in " ".join(consumer["args"])
    else:
        assert deployments[0]["spec"]["replicas"] > 1
        service = by_kind["Service"]
        assert service["spec"]["selector"] == deployments[0]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["ports"][0]["port"] == settings.port
