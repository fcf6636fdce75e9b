"""The container and the deployment examples, proven without a Docker engine.

The Dockerfile recipe test builds what the Dockerfile says, as far as a machine without
Docker can: the files its COPY lines name (and nothing else) go into an empty folder
standing for the image's root, its install steps run there in a fresh virtual
environment, and its CMD starts with its ENV. A file the image needs but the Dockerfile
forgets to copy makes the service fail there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ROOT, free_port, wait_until
from droq_registry.nodefile import Schema
from droq_registry.reconcile import read_source
from droq_registry.settings import Settings

HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    name: str | None
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def parse_env(rest: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(rest))


class Image:
    """A folder standing for the image's file system; absolute paths map into it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def rewrite(self, value: str) -> str:
        """Container paths in a value (`/opt/venv/bin:$PATH`) -> paths in the folder."""
        return re.sub(r"(?<![\w$])(/(?:opt|src|srv|data)\b[^\s:\"']*)", lambda m: str(self.path(m.group(1))), value)


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), os.environ.get(m.group(1), "")), value)


def build(dockerfile: Path, context: Path, image: Image) -> dict[str, Any]:
    """Follow the Dockerfile: COPY from the context, RUN the install steps, collect ENV/CMD."""
    stages = parse_dockerfile(dockerfile.read_text())
    final: dict[str, Any] = {}
    for stage in stages:
        env: dict[str, str] = {}
        workdir = "/"
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                for key, value in parse_env(rest).items():
                    env[key] = expand(image.rewrite(value), env)
            elif keyword == "WORKDIR":
                workdir = rest
                image.path(workdir).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                args = shlex.split(rest)
                if any(a.startswith("--from=") for a in args):
                    continue  # between stages: one folder stands for both
                *sources, dest = args
                target = image.path(dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}")
                for source in sources:
                    origin = context / source
                    assert origin.exists(), f"COPY names {source}, which the build context lacks"
                    if origin.is_dir():
                        shutil.copytree(origin, target if dest.endswith("/") else target, symlinks=True,
                                        dirs_exist_ok=True)
                    else:
                        into = target / origin.name if dest.endswith("/") else target
                        into.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, into)
            elif keyword == "RUN":
                command = image.rewrite(rest)
                if re.search(r"\b(groupadd|useradd|chown)\b", command):
                    # Creating the service user and handing it /data needs the image's own
                    # /etc; here the folder for /data is made, and the user is the test's.
                    image.path("/data").mkdir(parents=True, exist_ok=True)
                    continue
                run_env = {**os.environ, **env}
                run_env["PATH"] = expand(env.get("PATH", os.environ["PATH"]), {**os.environ})
                subprocess.run(["/bin/sh", "-c", command], cwd=image.path(workdir), env=run_env,
                               check=True, capture_output=True, timeout=900)
            elif keyword in ("CMD", "EXPOSE", "HEALTHCHECK", "USER", "VOLUME"):
                final[keyword] = rest
        final["ENV"] = env
        final["WORKDIR"] = workdir
    return final


@pytest.fixture(scope="module")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, dict[str, Any]]:
    root = tmp_path_factory.mktemp("image")
    image = Image(root)
    return image, build(ROOT / "Dockerfile", ROOT, image)


def test_dockerfile_recipe_serves_the_shipped_nodes(built_image: tuple[Image, dict[str, Any]], tmp_path: Path) -> None:
    image, final = built_image
    cmd = json.loads(final["CMD"])
    assert cmd == ["droq-registry", "serve"], "exec form, so SIGTERM reaches the server"
    env = {**final["ENV"]}
    port = free_port()
    env.update({"HOST": "127.0.0.1", "PORT": str(port)})
    # Only what the image holds: no checkout on the path, no project venv.
    clean = {"PATH": env["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    clean.update({k: v for k, v in env.items() if k != "PATH"})
    assert Path(env["REGISTRY_ASSETS_DIR"]).is_dir()
    proc = subprocess.Popen(cmd, cwd=image.path(final["WORKDIR"]), env=clean,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            def ready() -> bool:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    return http.get("/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=30, interval=0.1)
            lookup = http.get("/api/v1/components/Multiply/node")
            assert lookup.status_code == 200
            assert lookup.json()["node"]["node_id"] == "dfx-math-executor-node"
            assert lookup.json()["module_path"] == "dfx.math.component.multiply"
            health_cmd = json.loads(final["HEALTHCHECK"].split(" CMD ", 1)[1])
            probe = subprocess.run(health_cmd, env=clean, capture_output=True, timeout=10)
            assert probe.returncode == 0, probe.stderr
        assert Path(env["REGISTRY_DB_PATH"]).is_file(), "the database goes to the /data volume"
        assert str(Path(env["REGISTRY_DB_PATH"]).parent) == str(image.path("/data"))
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout:
            proc.stdout.close()


def test_image_runs_as_non_root_and_exposes_the_default_port(built_image: tuple[Image, dict[str, Any]]) -> None:
    _, final = built_image
    assert final["USER"] not in ("root", "0", "0:0")
    assert final["EXPOSE"] == str(Settings().port)
    assert "/data" in final["VOLUME"]


def test_final_image_has_no_compiler_and_a_slim_base() -> None:
    stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert len(stages) >= 2, "dependencies are installed in a build stage"
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM python:\$\{PYTHON_VERSION\}-slim", text, re.M), "slim Python bases"
    final_runs = [rest for keyword, rest in stages[-1].instructions if keyword == "RUN"]
    assert not any(re.search(r"\b(gcc|build-essential|apt-get install)\b", r) for r in final_runs)


def test_hadolint_passes_without_warnings() -> None:
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


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


def test_compose_mounts_assets_read_only_and_keeps_the_database_on_a_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    registry = compose["services"]["registry"]
    assert "./assets/nodes:/srv/assets/nodes:ro" in registry["volumes"]
    named = [v.split(":")[0] for v in registry["volumes"] if not v.startswith(".")]
    assert named and all(n in compose["volumes"] for n in named)
    assert registry["healthcheck"]["test"][:2] == ["CMD", "droq-registry"]
    Settings.from_env({k: str(v) for k, v in registry["environment"].items()})
