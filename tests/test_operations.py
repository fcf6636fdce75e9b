"""What operators rely on: JSON logs, metrics, the access token, probes, path guards."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from droq_registry.settings import Settings, SettingsError
from support.files import node_doc, write_json
from support.polling import wait_until
from support.server import ServerProcess

TOKEN = "op-secret-token"


def test_json_log_format_makes_every_line_one_json_object_access_log_included(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db"),
                  "LOG_FORMAT": "json", "LOG_LEVEL": "info"}, tmp_path / "server.log")
    assert srv.get("/api/v1/nodes").status_code == 200
    (real_assets / "broken.json").write_text("{")
    wait_until(lambda: srv.get("/api/v1/sources").json()["errors"] == 1)
    assert srv.stop() == 0
    lines = [line for line in srv.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.access", "uvicorn.error", "droq_registry.reconcile"} <= loggers
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("GET /api/v1/nodes HTTP/1.1" in r["message"] for r in access)
    assert any(r["level"] == "WARNING" and "broken.json" in r["message"] for r in records)


def test_text_log_format_is_the_readable_default(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db")},
                 tmp_path / "server.log")
    assert srv.stop() == 0
    log = srv.log()
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO +droq_registry.reconcile: reconciled revision 1: added=4",
                     log, re.MULTILINE)
    # Unset token: said once, at start-up.
    assert log.count("REGISTRY_API_TOKEN is not set") == 1


def test_metrics_expose_state_reconciles_and_requests_by_route(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets)
    client.get("/api/v1/nodes/dfx-math-executor-node")
    client.get("/api/v1/nodes/no-such-node")
    client.get("/api/v1/components/Multiply/node")
    text = client.get("/metrics").text
    samples = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^([a-z_]+(?:\{.*\})?) ([0-9.e+-]+)$", text, re.MULTILINE)
    }
    assert samples["droq_registry_revision"] == 1
    assert samples["droq_registry_nodes"] == 4
    assert samples["droq_registry_components"] == client.get("/health").json()["components"]
    assert samples["droq_registry_files_in_error"] == 0
    assert samples["droq_registry_watcher_restarts_total"] == 0
    assert samples['droq_registry_reconciles_total{result="changed"}'] == 1
    assert samples["droq_registry_reconcile_duration_seconds_count"] == 1
    by_route = 'droq_registry_http_requests_total{method="GET",route="/api/v1/nodes/{node_id}",status="%s"}'
    assert samples[by_route % "200"] == 1 and samples[by_route % "404"] == 1
    assert samples['droq_registry_http_request_duration_seconds_count{route="/api/v1/components/{component_class}/node"}'] == 1
    assert "no-such-node" not in text, "raw paths never become labels"


def test_token_guards_api_and_metrics_but_not_probes(real_assets: Path, client_for: Callable[..., TestClient]) -> None:
    client = client_for(real_assets, api_token=TOKEN)
    for path in ("/api/v1/nodes", "/api/v1/components/Multiply/node", "/api/v1/sources", "/metrics",
                 "/api/v1/changes?since=0", "/api/v1/nope"):
        missing = client.get(path)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"] == 'Bearer realm="droq-registry"'
        assert missing.json() == {"detail": "this endpoint needs an Authorization: Bearer <token> header"}
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Bearer realm="droq-registry", error="invalid_token"'
        assert client.get(path, headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/nodes", headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200
    for path in ("/health", "/ready", "/", "/openapi.json", "/ui/"):
        assert client.get(path).status_code == 200, path


def test_token_from_a_mounted_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert Settings.from_env({"REGISTRY_API_TOKEN_FILE": str(secret)}).api_token == TOKEN
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env({"REGISTRY_API_TOKEN_FILE": str(secret), "REGISTRY_API_TOKEN": "x"})
    secret.write_text("  \n")
    with pytest.raises(SettingsError, match="the file is empty"):
        Settings.from_env({"REGISTRY_API_TOKEN_FILE": str(secret)})
    with pytest.raises(SettingsError, match="cannot read it"):
        Settings.from_env({"REGISTRY_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_token_file_on_a_real_server(real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    srv = server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db"),
                  "REGISTRY_API_TOKEN_FILE": str(secret)}, tmp_path / "server.log")
    assert srv.get("/api/v1/nodes").status_code == 401
    assert srv.get("/api/v1/nodes", headers={"Authorization": f"Bearer {TOKEN}"}).json()["total_nodes"] == 4
    assert "REGISTRY_API_TOKEN is not set" not in srv.log()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nodes/" + "n" * 257,
        "/api/v1/components/" + "C" * 300 + "/node",
        "/api/v1/components/" + "C" * 300 + "/nodes",
        "/api/v1/nodes/bad%20id",
        "/api/v1/components/Not-A-Class/node",
        "/api/v1/components/1abc/nodes",
    ],
)
def test_impossible_path_parameters_answer_404_at_once(
    assets: Path, client_for: Callable[..., TestClient], path: str
) -> None:
    # A node that would match if the guard were missing: the long id is a valid file name
    # but not a valid node id, so no file can declare it.
    write_json(assets / "a.json", node_doc("a"))
    client = client_for(assets)
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}
    assert len(response.json()["detail"]) < 400, "the message does not echo unbounded input"
