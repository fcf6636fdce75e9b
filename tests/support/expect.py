"""The answers the service owes for a node file, derived from the file itself, never typed in.

These are the tests' oracle: they restate the spec's defaults and shapes on their own,
without importing the code under test, so a change in the service cannot change them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

#: The NODE fields a node file may leave out, with the values the registry then serves.
CORE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "source_code_location": None,
    "docker_image": None,
    "deployment_location": "local",
    "api_url": None,
    "ip_address": None,
    "status": "active",
    "priority": 0,
}

#: Every UTC timestamp the service writes: `2026-01-01T00:00:00.000Z`.
TIMESTAMP_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Timestamp:
    """Equal to any UTC timestamp the service writes (`2026-01-01T00:00:00.000Z`)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and TIMESTAMP_FORMAT.fullmatch(other) is not None

    def __repr__(self) -> str:
        return "<timestamp>"


TIMESTAMP = Timestamp()

_STRUCTURAL = ("components", "supported_components")


def sha256(raw: bytes) -> str:
    """The content hash the service reports for a file of these bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def module_paths(components: dict[str, Any]) -> dict[str, str]:
    """{class: module path} of a components map (string or object form), sorted by class."""
    return {cls: spec if isinstance(spec, str) else spec["path"] for cls, spec in sorted(components.items())}


def expected_node(doc: dict[str, Any], components: dict[str, Any] | None = None) -> dict[str, Any]:
    """NODE as the spec describes it for the valid node document `doc`.

    `components` is the component map when `doc` refers to a components_json_path file.
    """
    comps = doc.get("components", {}) if components is None else components
    node: dict[str, Any] = {"node_id": doc["node_id"], "name": doc["name"]}
    node.update({key: doc.get(key, default) for key, default in CORE_DEFAULTS.items()})
    node["priority"] = int(node["priority"])
    node["supported_components"] = sorted(comps)
    node.update({k: v for k, v in doc.items() if k not in node and k not in _STRUCTURAL})
    return node


def detail(doc: dict[str, Any], components: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body `GET /api/v1/nodes/{id}` answers for the node document `doc`."""
    comps = doc.get("components", {}) if components is None else components
    return {"node": expected_node(doc, comps), "components": module_paths(comps)}


def candidates(docs: dict[str, dict[str, Any]], component_class: str) -> list[dict[str, Any]]:
    """Active nodes declaring `component_class`, best first (priority, then node_id)."""
    found = [
        d
        for d in docs.values()
        if component_class in d["components"] and d.get("status", "active") == "active"
    ]
    return sorted(found, key=lambda d: (-d.get("priority", 0), d["node_id"]))
