"""What the node schema says a node id, a component class and a status can be.

`node.schema.json` (shipped in the package) is the one statement of these facts: the
validator enforces it on every file, and the API takes its filters and the OpenAPI
document its patterns and enums from here, read once at import.
"""

from __future__ import annotations

from typing import Any

import orjson

from .settings import default_schema_path

SCHEMA: dict[str, Any] = orjson.loads(default_schema_path().read_bytes())

_PROPERTIES = SCHEMA["properties"]
_CLASS_NAME = SCHEMA["definitions"]["components"]["propertyNames"]

#: JSON Schema of a node id, and of a component class name, as node files must write them.
NODE_ID: dict[str, Any] = {"type": "string", "pattern": _PROPERTIES["node_id"]["pattern"]}
COMPONENT_CLASS: dict[str, Any] = {
    "type": "string", "pattern": _CLASS_NAME["pattern"], "maxLength": _CLASS_NAME["maxLength"],
}
#: The statuses a node can have, and where it can be deployed.
STATUSES: tuple[str, ...] = tuple(_PROPERTIES["status"]["enum"])
DEPLOYMENT_LOCATIONS: tuple[str, ...] = tuple(_PROPERTIES["deployment_location"]["enum"])
