"""The published API contract holds against a live server: schemathesis, bounded."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient

from droq_registry.cursors import MAX_WAIT_SECONDS
from droq_registry.routes import TABLE
from droq_registry.search import MAX_QUERY, MAX_RESULTS
from droq_registry.settings import default_schema_path
from support.server import ServerProcess

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(srv: ServerProcess, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Every operation but the endless event stream; all checks; bounded in examples and time."""
    return subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{srv.url}/openapi.json",
            "--checks", "all",
            # A `since` above the current revision is schema-valid (an integer >= 0) yet is
            # answered 410 (only another history makes it); no schema can say "at most the
            # current revision".
            "--exclude-checks", "positive_data_acceptance",
            "--exclude-path", "/api/v1/events",
            "--max-examples", "40",
            "--request-timeout", "10",
            "--seed", "1",
            "--no-color",
            *extra,
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )


@pytest.mark.parametrize("token", [None, "contract-token"])
def test_live_server_matches_its_openapi_document(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path, token: str | None
) -> None:
    env = {"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db"),
           "LOG_LEVEL": "warning"}
    extra: tuple[str, ...] = ()
    if token:
        env["REGISTRY_API_TOKEN"] = token
        extra = ("--header", f"Authorization: Bearer {token}")
    srv = server(env, tmp_path / "server.log")
    result = run_schemathesis(srv, tmp_path, *extra)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
    assert srv.proc.poll() is None, "the server died under the contract run"


def served_paths(app: Any) -> list[str]:
    """The paths Starlette routes, as the document writes them (a mount ends with '/')."""
    return [route.path + ("/" if isinstance(route, Mount) else "") for route in app.routes]


@pytest.mark.parametrize("token", [None, "contract-token"])
def test_document_is_openapi_3_1_and_names_every_route_and_only_routes(
    real_assets: Path, client_for: Callable[..., TestClient], token: str | None
) -> None:
    client = client_for(real_assets, api_token=token)
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    routes = served_paths(client.app)
    assert len(routes) == len(set(routes))
    # every route is documented, and every documented path is a route
    assert set(routes) == set(document["paths"]), set(routes) ^ set(document["paths"])
    assert list(document["paths"]) == [entry.template for entry in TABLE]
    for template, item in document["paths"].items():
        assert list(item) == ["get"], template
        secured = "401" in item["get"]["responses"]
        assert secured == (token is not None and template.startswith(("/api/", "/metrics"))), template


def test_documented_limits_patterns_and_enums_are_the_enforced_ones(real_assets: Path, client_for) -> None:
    client = client_for(real_assets)
    document = client.get("/openapi.json").json()
    paths = document["paths"]

    def parameter(path: str, name: str) -> dict[str, Any]:
        [found] = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        return found  # type: ignore[no-any-return]

    schema = orjson.loads(default_schema_path().read_bytes())
    node_id_pattern = schema["properties"]["node_id"]["pattern"]
    class_names = schema["definitions"]["components"]["propertyNames"]
    assert parameter("/api/v1/changes", "wait")["schema"]["maximum"] == MAX_WAIT_SECONDS
    assert parameter("/api/v1/search", "q")["schema"]["maxLength"] == MAX_QUERY
    assert f"At most {MAX_RESULTS} matches" in paths["/api/v1/search"]["get"]["responses"]["200"]["description"]
    assert parameter("/api/v1/nodes/{node_id}", "node_id")["schema"]["pattern"] == node_id_pattern
    assert document["components"]["schemas"]["Node"]["properties"]["node_id"]["pattern"] == node_id_pattern
    for path in ("/api/v1/components/{component_class}/node", "/api/v1/components/{component_class}/nodes"):
        assert parameter(path, "component_class")["schema"] == {
            "type": "string", "pattern": class_names["pattern"], "maxLength": class_names["maxLength"]}
    node = document["components"]["schemas"]["Node"]["properties"]
    assert node["status"]["enum"] == schema["properties"]["status"]["enum"] == ["active", "inactive", "deploying"]
    assert node["deployment_location"]["enum"] == schema["properties"]["deployment_location"]["enum"]
    assert parameter("/api/v1/nodes", "status")["schema"]["enum"] == ["active", "inactive", "deploying", "all"]
    # the enforced values answer, one past them is refused
    assert client.get("/api/v1/changes?wait=0").status_code == 200
    assert client.get(f"/api/v1/changes?wait={MAX_WAIT_SECONDS + 0.5:g}").status_code == 400
    assert client.get("/api/v1/search", params={"q": "x" * MAX_QUERY}).status_code == 200
    assert client.get("/api/v1/search", params={"q": "x" * (MAX_QUERY + 1)}).status_code == 400
    for status in ["active", "inactive", "deploying", "all"]:
        assert client.get("/api/v1/nodes", params={"status": status}).status_code == 200
    assert client.get("/api/v1/nodes", params={"status": "draining"}).json() == {
        "detail": "status must be one of active, inactive, deploying, all"}
