"""The API contract: an OpenAPI 3.1 document of every endpoint, built once at import.

Kept next to the handlers it describes and checked against the live server by
schemathesis in CI (tests/test_contract.py): every answer must match what is written here.
"""

from __future__ import annotations

from typing import Any

from . import __version__

NODE_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
CLASS_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,254}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, etag: bool = False) -> dict[str, Any]:
    headers = {"X-Registry-Revision": {"$ref": "#/components/headers/Revision"}}
    if etag:
        headers["ETag"] = {"$ref": "#/components/headers/ETag"}
    return {"description": description, "headers": headers, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_NOT_MODIFIED = {
    "description": "The client's copy (If-None-Match) is current; no body.",
    "headers": {
        "X-Registry-Revision": {"$ref": "#/components/headers/Revision"},
        "ETag": {"$ref": "#/components/headers/ETag"},
    },
}
_UNAUTHORIZED = {
    "description": "REGISTRY_API_TOKEN is set and the request has no valid bearer token.",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": _ref("Error")}},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag from an earlier answer; answers 304 when it still matches.",
    "schema": {"type": "string"},
}


def _read(summary: str, ok: dict[str, Any], *extra: tuple[str, dict[str, Any]], params: list[Any] | None = None,
          secured: bool = True, conditional: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    if conditional:
        responses["304"] = _NOT_MODIFIED
    responses.update(dict(extra))
    if secured:
        responses["401"] = _UNAUTHORIZED
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": (params or []) + ([_IF_NONE_MATCH] if conditional else []),
        "responses": responses,
    }
    if not secured:
        operation["security"] = []
    return {"get": operation}


def _path_param(name: str, pattern: str, description: str, example: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}, "example": example}


def build(auth: bool) -> dict[str, Any]:
    """The whole document; with `auth`, the bearer scheme and its 401 answers are in it."""
    document = _build()
    if not auth:
        del document["security"]
        del document["components"]["securitySchemes"]
        for item in document["paths"].values():
            item["get"]["responses"].pop("401", None)
            item["get"].pop("security", None)
    return document


def _build() -> dict[str, Any]:
    nullable = {"type": ["string", "null"]}
    node = {
        "type": "object",
        "description": "A node as its file declares it (defaults filled in), plus the file's extra fields.",
        "required": [
            "node_id", "name", "description", "source_code_location", "docker_image",
            "deployment_location", "api_url", "ip_address", "status", "priority", "supported_components",
        ],
        "properties": {
            "node_id": {"type": "string", "pattern": NODE_ID_PATTERN},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "source_code_location": nullable,
            "docker_image": nullable,
            "deployment_location": {"enum": ["local", "cloud", "k8s"]},
            "api_url": nullable,
            "ip_address": nullable,
            "status": {"enum": ["active", "inactive", "deploying"]},
            "priority": {"type": "integer"},
            "supported_components": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": True,
    }
    components_map = {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "Component class -> module path."}
    change = {
        "type": "object",
        "required": ["revision", "kind", "node_id", "source", "at"],
        "properties": {
            "revision": {"type": "integer", "minimum": 1},
            "kind": {"enum": ["added", "updated", "removed", "error", "conflict", "recovered", "source"]},
            "node_id": nullable,
            "source": nullable,
            "at": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": False,
    }
    schemas: dict[str, Any] = {
        "Node": node,
        "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
        "NodeList": {
            "type": "object",
            "required": ["nodes", "total_nodes"],
            "properties": {
                "nodes": {"type": "array", "items": {
                    "type": "object", "required": ["metadata", "components_count"],
                    "properties": {"metadata": _ref("Node"), "components_count": {"type": "integer", "minimum": 0}},
                    "additionalProperties": False}},
                "total_nodes": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "NodeDetail": {
            "type": "object", "required": ["node", "components"],
            "properties": {"node": _ref("Node"), "components": components_map},
            "additionalProperties": False,
        },
        "Lookup": {
            "type": "object", "required": ["node", "components", "module_path"],
            "properties": {"node": _ref("Node"), "components": components_map, "module_path": {"type": "string"}},
            "additionalProperties": False,
        },
        "Candidates": {
            "type": "object", "required": ["component_class", "nodes", "total_nodes"],
            "properties": {
                "component_class": {"type": "string"},
                "nodes": {"type": "array", "items": {
                    "type": "object", "required": ["node", "module_path"],
                    "properties": {"node": _ref("Node"), "module_path": {"type": "string"}},
                    "additionalProperties": False}},
                "total_nodes": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        "Sources": {
            "type": "object", "required": ["sources", "total_sources", "errors"],
            "properties": {
                "sources": {"type": "array", "items": {
                    "type": "object",
                    "required": ["path", "node_id", "state", "error", "content_hash", "applied_at",
                                 "updated_at", "serving_last_good"],
                    "properties": {
                        "path": {"type": "string"},
                        "node_id": nullable,
                        "state": {"enum": ["ok", "error", "conflict"]},
                        "error": nullable,
                        "content_hash": nullable,
                        "applied_at": nullable,
                        "updated_at": nullable,
                        "serving_last_good": {"type": "boolean"},
                    },
                    "additionalProperties": False}},
                "total_sources": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "Change": change,
        "Changes": {
            "type": "object", "required": ["revision", "changes"],
            "properties": {"revision": {"type": "integer", "minimum": 0},
                           "changes": {"type": "array", "items": _ref("Change")}},
            "additionalProperties": False,
        },
        "Expired": {
            "type": "object", "required": ["detail", "revision"],
            "properties": {"detail": {"type": "string"}, "revision": {"type": "integer"}},
        },
        "Service": {
            "type": "object", "required": ["service", "version", "description"],
            "properties": {"service": {"type": "string"}, "version": {"type": "string"},
                           "description": {"type": "string"}},
        },
        "Health": {
            "type": "object", "required": ["status", "service", "ready", "revision", "watcher"],
            "properties": {
                "status": {"enum": ["healthy", "degraded"]},
                "service": {"type": "string"},
                "ready": {"type": "boolean"},
                "revision": {"type": "integer"},
                "watcher": {"type": "object", "required": ["state", "error", "restarts"],
                            "properties": {"state": {"type": "string"}, "error": nullable,
                                           "restarts": {"type": "integer"}}},
            },
        },
        "NodeComponents": {
            "type": "object", "required": ["node_id", "components", "total_components"],
            "properties": {
                "node_id": {"type": "string"},
                "components": {"type": "array", "items": {
                    "type": "object", "required": ["component_class", "module_path"],
                    "properties": {"component_class": {"type": "string"}, "module_path": {"type": "string"}},
                    "additionalProperties": True,
                    "description": "The class, its module path, and the other keys of its object form "
                                   "(display_name, description, author, ...)."}},
                "total_components": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "SearchResults": {
            "type": "object", "required": ["query", "results", "truncated"],
            "properties": {
                "query": {"type": "string"},
                "results": {"type": "array", "items": {
                    "type": "object",
                    "required": ["component_class", "display_name", "description", "module_path", "node_id",
                                 "candidates", "declared_by"],
                    "properties": {
                        "component_class": {"type": "string"},
                        "display_name": nullable,
                        "description": nullable,
                        "module_path": {"type": "string"},
                        "node_id": nullable,
                        "candidates": {"type": "array", "items": {"type": "string"}},
                        "declared_by": {"type": "string"},
                    },
                    "additionalProperties": False}},
                "truncated": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "SharedClasses": {
            "type": "object", "required": ["classes", "total_classes"],
            "properties": {
                "classes": {"type": "array", "items": {
                    "type": "object", "required": ["component_class", "nodes", "chosen"],
                    "properties": {"component_class": {"type": "string"},
                                   "nodes": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                                   "chosen": {"type": "string"}},
                    "additionalProperties": False}},
                "total_classes": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "Ready": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"enum": ["ready", "starting"]}, "revision": {"type": "integer"},
                           "detail": {"type": "string"}},
        },
    }
    node_id = _path_param("node_id", NODE_ID_PATTERN, "A node id.", "dfx-math-executor-node")
    component_class = _path_param("component_class", CLASS_PATTERN, "A component class name.", "Multiply")
    status_param = {"name": "status", "in": "query", "required": False,
                    "description": "Which nodes to list (default: active).",
                    "schema": {"enum": ["active", "inactive", "deploying", "all"]}}
    since = {"name": "since", "in": "query", "required": False,
             "description": "The revision the client has; records after it are returned (default 0).",
             "schema": {"type": "integer", "minimum": 0}}
    wait = {"name": "wait", "in": "query", "required": False,
            "description": "Seconds to hold the request when nothing is newer than `since` (at most 60).",
            "schema": {"type": "number", "minimum": 0, "maximum": 60}}
    paths = {
        "/": _read("Service description", _json(_ref("Service"), "Name, version and purpose."),
                   secured=False, conditional=False),
        "/health": _read("Liveness and state", _json(_ref("Health"), "Always 200 while the process serves."),
                         secured=False, conditional=False),
        "/ready": _read(
            "Readiness", _json(_ref("Ready"), "The first load has committed."),
            ("503", _json(_ref("Ready"), "Still loading, or waiting for the assets folder.")),
            secured=False, conditional=False),
        "/api/v1/nodes": _read(
            "List nodes", _json(_ref("NodeList"), "Nodes sorted by node_id.", etag=True),
            ("400", _error("Unknown status filter.")), params=[status_param]),
        "/api/v1/nodes/{node_id}": _read(
            "One node and its components", _json(_ref("NodeDetail"), "The node, any status.", etag=True),
            ("404", _error("No such node.")), params=[node_id]),
        "/api/v1/components/{component_class}/node": _read(
            "The node that runs a component class",
            _json(_ref("Lookup"), "The active node chosen: highest priority, then smallest node_id.", etag=True),
            ("404", _error("No active node declares the class.")), params=[component_class]),
        "/api/v1/components/{component_class}/nodes": _read(
            "Every active node that declares a component class",
            _json(_ref("Candidates"), "Candidates, best first.", etag=True),
            ("404", _error("No active node declares the class.")), params=[component_class]),
        "/api/v1/nodes/{node_id}/components": _read(
            "A node's components with their details (for people)",
            _json(_ref("NodeComponents"), "Components sorted by class.", etag=True),
            ("404", _error("No such node.")), params=[node_id]),
        "/api/v1/search": _read(
            "Components whose class, display name or description contains a text",
            _json(_ref("SearchResults"), "At most 50 matches, each with the node a lookup would choose.",
                  etag=True),
            ("400", _error("Empty or too long q.")),
            params=[{"name": "q", "in": "query", "required": True, "description": "The text (any case).",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 200}, "example": "TextInput"}]),
        "/api/v1/shared-classes": _read(
            "Classes that more than one active node declares",
            _json(_ref("SharedClasses"), "Each with its candidates, best first.", etag=True)),
        "/api/v1/sources": _read(
            "Every node file the registry knows, with its state",
            _json(_ref("Sources"), "Files sorted by path.", etag=True)),
        "/api/v1/changes": _read(
            "The change log after a revision (long-poll with wait)",
            _json(_ref("Changes"), "Records after `since`, in order.", etag=True),
            ("400", _error("Bad since or wait.")),
            ("410", _json(_ref("Expired"), "Records after `since` are no longer kept: re-list.")),
            params=[since, wait]),
        "/api/v1/events": _read(
            "Server-Sent Events of the change log",
            {"description": "An endless stream: `event: change` records (id = revision), `event: relist` "
                            "when Last-Event-ID is older than what is kept, and keep-alive comments.",
             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            ("400", _error("Bad Last-Event-ID or since.")),
            params=[since, {"name": "Last-Event-ID", "in": "header", "required": False,
                            "schema": {"type": "string"}}],
            conditional=False),
        "/metrics": _read(
            "Prometheus metrics",
            {"description": "Prometheus text exposition format.",
             "content": {"text/plain": {"schema": {"type": "string"}}}},
            conditional=False),
        "/ui/": _read(
            "The dashboard (HTML)",
            {"description": "The page; it asks for the token itself when one is needed.",
             "content": {"text/html": {"schema": {"type": "string"}}}},
            secured=False, conditional=False),
        "/openapi.json": _read(
            "This document", {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}},
            secured=False, conditional=False),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Droq Registry Service",
            "version": __version__,
            "description": "Which executor node handles component class X, and where does it run? "
                           "Read-only; the registry follows the node files in its assets folder.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": {
                "Revision": {"description": "The registry revision the answer was built from.",
                             "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                "ETag": {"description": "Strong validator of the body; equal on every replica.",
                         "schema": {"type": "string"}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Needed when REGISTRY_API_TOKEN is set."}},
        },
        "security": [{"bearer": []}],
    }

