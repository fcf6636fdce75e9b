"""Bytes of a node file -> a `Node`, or a `NodeFileError` that names the file and the place.

Pure: no file system, no clock. Parsing refuses what is too large or nests too deeply before
the schema sees it. Validation uses the node schema (`node.schema.json` in the package, a
link to `config/node.schema.json`), given as a `Schema`: fastjsonschema compiles it for the common case (every file
that is fine); a rejection is worded by `refusal.py`. A node's bytes (canonical, packed, its
fingerprint) are `nodebytes.py`'s.
"""

from __future__ import annotations

import codecs
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from . import nodebytes
from .model import CORE_FIELDS, Component, Node
from .refusal import NodeFileError, explain, place, show

#: Larger files are refused before they are parsed: no real node file comes close.
MAX_FILE_BYTES = 16 * 1024 * 1024

#: How deeply a node file may nest, its top-level object being level 1 (a components file's
#: top level is level 2: it stands for the node's "components"). The parser refuses anything
#: deeper, before the schema sees it, so every later stage only ever holds nodes this deep:
#: the encoder and the answers that wrap a node in a few more levels (orjson encodes up to
#: 254 levels), and the store. Real node files nest 4 levels.
MAX_DEPTH = 64
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"

#: Keys of a file that are not passed through as extra fields.
_STRUCTURAL = frozenset(("components", "supported_components"))

_DEFAULTS: dict[str, Any] = {
    "description": "",
    "source_code_location": None,
    "docker_image": None,
    "deployment_location": "local",
    "api_url": None,
    "ip_address": None,
    "status": "active",
    "priority": 0,
}


def _refuse_remote(uri: str) -> Any:
    raise ValueError(f"the node schema may not refer to {uri}: only local references resolve")


#: The schema is local; never let a `$ref` reach for the network.
_NO_REMOTE = {"http": _refuse_remote, "https": _refuse_remote, "file": _refuse_remote}


@dataclass(frozen=True)
class Schema:
    """The compiled node-file schema; build it once with `Schema.load()`."""

    raw: dict[str, Any]
    _check_node: Callable[[Any], Any]
    _check_components: Callable[[Any], Any]

    @classmethod
    def load(cls, path: Path) -> Schema:
        """Read and compile the schema at `path`."""
        return cls.from_dict(orjson.loads(path.read_bytes()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Schema:
        # fastjsonschema rewrites the `$ref`s of the schema it is given in place: give it copies.
        return cls(
            raw=raw,
            _check_node=fastjsonschema.compile(copy.deepcopy(raw), handlers=_NO_REMOTE),
            _check_components=fastjsonschema.compile(
                copy.deepcopy(_components_schema(raw)), handlers=_NO_REMOTE
            ),
        )

    def check_node(self, path: str, document: Any) -> None:
        self._check(self._check_node, self.raw, path, document)

    def check_components(self, path: str, document: Any) -> None:
        self._check(self._check_components, _components_schema(self.raw), path, document)

    @staticmethod
    def _check(fast: Callable[[Any], Any], schema: dict[str, Any], path: str, document: Any) -> None:
        try:
            fast(document)
        except fastjsonschema.JsonSchemaValueException as fast_error:
            raise explain(path, schema, document, fast_error) from None


def _components_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The shape of a `components_json_path` file: the same schema, entered at its
    components definition (in draft 7, `$ref` overrides its sibling keywords)."""
    return {**raw, "$ref": "#/definitions/components"}


def _too_deep(value: Any, levels: int) -> list[Any] | None:
    """The place (reversed) of the first container in `value` nested more than `levels`
    levels, `value` itself being the first; None when there is none. Recursion is bounded
    by `levels`."""
    if levels == 0:
        return []
    for key, child in value.items() if type(value) is dict else enumerate(value):
        kind = type(child)
        if kind is dict or kind is list:
            found = _too_deep(child, levels - 1)
            if found is not None:
                found.append(key)
                return found
    return None


def load_json(raw: bytes, path: str, levels: int = MAX_DEPTH) -> Any:
    """Decode a UTF-8 JSON document (a leading byte-order mark is allowed) that nests at
    most `levels` levels."""
    if len(raw) > MAX_FILE_BYTES:
        raise NodeFileError(path, None, f"file is larger than {MAX_FILE_BYTES} bytes")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    raw = raw[bom:]
    if not raw.strip():
        raise NodeFileError(path, None, "file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1  # the offset counts the file's bytes, BOM too
        raise NodeFileError(path, None, f"not valid UTF-8 at byte {bom + exc.start} (line {line})") from None
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        at = f"at line {exc.lineno} column {exc.colno}"
        if "depth limit" in exc.msg:  # deeper than orjson parses (1024): our limit, its place
            raise NodeFileError(path, None, f"{_TOO_DEEP} {at}") from None
        reason = exc.msg.split(":")[0] if exc.msg else "invalid JSON"
        raise NodeFileError(path, None, f"not valid JSON: {reason} {at}") from None
    if type(document) is dict or type(document) is list:
        found = _too_deep(document, levels)
        if found is not None:
            raise NodeFileError(path, place(reversed(found)) or None, _TOO_DEEP)
    return document


def parse_document(raw: bytes, path: str, schema: Schema) -> dict[str, Any]:
    """Bytes -> the validated document of a node file (components not yet resolved)."""
    document = load_json(raw, path)
    if not isinstance(document, dict):
        raise NodeFileError(path, None, f"expected a JSON object, got {show(document)}")
    schema.check_node(path, document)
    return document


def parse_components(raw: bytes, path: str, schema: Schema) -> dict[str, Any]:
    """Bytes of a `components_json_path` file -> its validated component map."""
    document = load_json(raw, path, MAX_DEPTH - 1)
    schema.check_components(path, document)
    return document  # type: ignore[no-any-return]


def build_node(document: dict[str, Any], components: dict[str, Any]) -> Node:
    """A validated document and its component map -> `Node` with defaults filled in."""
    fields = {key: document.get(key, default) for key, default in _DEFAULTS.items()}
    fields["priority"] = int(fields["priority"])
    extra = {
        key: document[key]
        for key in sorted(document)
        if key not in _STRUCTURAL and key not in CORE_FIELDS
    }
    parts = []
    for cls in sorted(components):
        spec = components[cls]
        if isinstance(spec, str):
            parts.append(Component(cls, spec, {}))
        else:
            info = {k: spec[k] for k in sorted(spec) if k != "path"}
            parts.append(Component(cls, spec["path"], info))
    return Node(
        node_id=document["node_id"],
        name=document["name"],
        extra=extra,
        components=tuple(parts),
        **fields,
    )


def canonical(node: Node, path: str) -> bytes:
    """`nodebytes.encode(node)`, or the file's `NodeFileError`: whatever the store could not
    hold is refused here, as the error of the file it came from, before any transaction."""
    try:
        return nodebytes.encode(node)
    except orjson.JSONEncodeError as exc:
        raise NodeFileError(path, None, f"cannot be stored: {exc}") from None

