"""The JSON Schemas of the answer bodies, as the OpenAPI document publishes them.

One schema per body that `answers.py`, `api.py` and `explore.py` build; the route table
(`routes.py`) names them. Enums and patterns come from where they are decided: the node
schema (`vocabulary.py`) and the model's literal types.
"""

from __future__ import annotations

from typing import Any, get_args

from .model import CONTENT_HASH_PATTERN, EPOCH_PATTERN, ChangeKind, SourceState
from .vocabulary import DEPLOYMENT_LOCATIONS, NODE_ID, STATUSES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_nullable = {"type": ["string", "null"]}
_EPOCH = {"type": "string", "pattern": f"^{EPOCH_PATTERN}$"}
_CONTENT_HASH = {"type": "string", "pattern": f"^{CONTENT_HASH_PATTERN}$"}
_node = {
    "type": "object",
    "description": "A node as its file declares it (defaults filled in), plus the file's extra fields.",
    "required": [
        "node_id", "name", "description", "source_code_location", "docker_image",
        "deployment_location", "api_url", "ip_address", "status", "priority", "supported_components",
    ],
    "properties": {
        "node_id": dict(NODE_ID),
        "name": {"type": "string"},
        "description": {"type": "string"},
        "source_code_location": _nullable,
        "docker_image": _nullable,
        "deployment_location": {"enum": list(DEPLOYMENT_LOCATIONS)},
        "api_url": _nullable,
        "ip_address": _nullable,
        "status": {"enum": list(STATUSES)},
        "priority": {"type": "integer"},
        "supported_components": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": True,
}
_components_map = {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "Component class -> module path."}
_change = {
    "type": "object",
    "required": ["revision", "kind", "node_id", "source", "at"],
    "properties": {
        "revision": {"type": "integer", "minimum": 1},
        "kind": {"enum": list(get_args(ChangeKind))},
        "node_id": _nullable,
        "source": _nullable,
        "at": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
}
SCHEMAS: dict[str, Any] = {
    "Node": _node,
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
        "properties": {"node": _ref("Node"), "components": _components_map},
        "additionalProperties": False,
    },
    "Lookup": {
        "type": "object", "required": ["node", "components", "module_path"],
        "properties": {"node": _ref("Node"), "components": _components_map, "module_path": {"type": "string"}},
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
                    "node_id": _nullable,
                    "state": {"enum": list(get_args(SourceState))},
                    "error": _nullable,
                    "content_hash": _nullable,
                    "applied_at": _nullable,
                    "updated_at": _nullable,
                    "serving_last_good": {"type": "boolean"},
                },
                "additionalProperties": False}},
            "total_sources": {"type": "integer", "minimum": 0},
            "errors": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
    "Change": _change,
    "Changes": {
        "type": "object", "required": ["revision", "changes"],
        "properties": {"revision": {"type": "integer", "minimum": 0},
                       "changes": {"type": "array", "items": _ref("Change")}},
        "additionalProperties": False,
    },
    "Gone": {
        "type": "object", "required": ["detail", "revision", "epoch", "content_hash"],
        "properties": {"detail": {"type": "string"}, "revision": {"type": "integer", "minimum": 0},
                       "epoch": _EPOCH, "content_hash": _CONTENT_HASH},
    },
    "Service": {
        "type": "object", "required": ["service", "version", "description"],
        "properties": {"service": {"type": "string"}, "version": {"type": "string"},
                       "description": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "service", "ready", "revision", "epoch", "content_hash", "watcher"],
        "properties": {
            "status": {"enum": ["healthy", "degraded"]},
            "service": {"type": "string"},
            "ready": {"type": "boolean"},
            "revision": {"type": "integer"},
            "epoch": _EPOCH,
            "content_hash": _CONTENT_HASH,
            "watcher": {"type": "object", "required": ["state", "error", "restarts"],
                        "properties": {"state": {"type": "string"}, "error": _nullable,
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
                    "display_name": _nullable,
                    "description": _nullable,
                    "module_path": {"type": "string"},
                    "node_id": _nullable,
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
