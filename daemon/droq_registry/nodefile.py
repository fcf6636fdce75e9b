"""Bytes of a node file -> a `Node`, or a `NodeFileError` that names the file and the place.

Pure: no file system, no clock. Validation uses the node schema (`config/node.schema.json`,
shipped in the package), given as a `Schema`: fastjsonschema
compiles it for the common case (every file that is fine), and jsonschema explains a rejection,
because its errors carry the exact path and the failing sub-schema.
"""

from __future__ import annotations

import codecs
import copy
import difflib
import functools
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from .model import CORE_FIELDS, Component, Node

#: Larger files are refused before they are parsed: no real node file comes close.
MAX_FILE_BYTES = 16 * 1024 * 1024

#: How deeply a node file may nest, its top-level object being level 1 (a components file's
#: top level is level 2: it stands for the node's "components"). The parser refuses anything
#: deeper, before the schema sees it, so every later stage only ever holds nodes this deep:
#: the encoder and the answers that wrap a node in a few more levels (orjson encodes up to
#: 254 levels), and the store. Real node files nest 4 levels.
MAX_DEPTH = 64
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"

#: How much of a key or value an error message shows, and of a place or a reason.
_SHOWN = 80
_MESSAGE = 1000

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


class NodeFileError(Exception):
    """A node file that cannot be used. `where` is a dotted path inside the document."""

    def __init__(self, path: str, where: str | None, why: str) -> None:
        # A message is one printable line of bounded size, whatever the file holds: it goes
        # to the API, the log and a terminal.
        where = _bounded(where) if where else where
        why = _bounded(why)
        super().__init__(path, where, why)
        self.path = path
        self.where = where
        self.why = why

    def __str__(self) -> str:
        return f"{printable(self.path)}: {self.message}"

    @property
    def message(self) -> str:
        """The error without the file name: `components.Foo.path: expected ...`."""
        return f"{self.where}: {self.why}" if self.where else self.why


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
            best = _explainer(orjson.dumps(schema)).best_match(document)
            if best is None:  # the libraries disagree (regex dialects): explain the fast one's find
                where = _where(fast_error.path[1:]) or None
                expected = _expected(fast_error.definition, str(fast_error.rule))
                why = f"expected {expected}, got {_show(fast_error.value)}" if expected else fast_error.message
                raise NodeFileError(path, where, why) from None
            raise _explain(path, best) from None


def _components_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The shape of a `components_json_path` file: the same schema, entered at its
    components definition (in draft 7, `$ref` overrides its sibling keywords)."""
    return {**raw, "$ref": "#/definitions/components"}


class _Explainer:
    """jsonschema, loaded only when a file is refused: it names the exact place and the
    failing sub-schema, but a service whose files are fine need not carry it in memory."""

    def __init__(self, schema_json: bytes) -> None:
        import jsonschema  # type: ignore[import-untyped]

        self._jsonschema = jsonschema
        self._validator = jsonschema.Draft7Validator(orjson.loads(schema_json))

    def best_match(self, document: Any) -> Any:
        return self._jsonschema.exceptions.best_match(self._validator.iter_errors(document))


@functools.lru_cache(maxsize=4)
def _explainer(schema_json: bytes) -> _Explainer:
    return _Explainer(schema_json)


def _explain(path: str, error: Any) -> NodeFileError:
    """Turn jsonschema's error into `where: why` with the schema's own wording."""
    where = _where(error.absolute_path) or None
    keyword = error.validator
    expected = _expected(error.schema, str(keyword))
    got = _show(error.instance)
    if keyword == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return NodeFileError(path, where, f"missing required key {_show(missing[0])}")
    if keyword == "oneOf" and where is None:
        present = [k for k in ("components", "components_json_path") if k in error.instance]
        if present:
            why = 'give either "components" or "components_json_path", not both'
        else:
            why = 'missing "components" (or "components_json_path"); "components": {} declares none'
            close = difflib.get_close_matches("components", list(error.instance), n=1, cutoff=0.75)
            if close:
                why += f' (is {_show(close[0])} a misspelling of "components"?)'
        return NodeFileError(path, where, why)
    if expected:
        return NodeFileError(path, where, f"expected {expected}, got {got}")
    return NodeFileError(path, where, error.message)


def _expected(schema: Any, keyword: str) -> str | None:
    """The schema's own wording of what it wants: `x-expected`, per keyword if it is an object."""
    expected = schema.get("x-expected") if isinstance(schema, dict) else None
    if isinstance(expected, dict):
        expected = expected.get(keyword, expected.get("default"))
    return expected if isinstance(expected, str) else None


def _where(parts: Iterable[Any]) -> str:
    """A place in a document: `components.Foo.path`, `tags[0]`, `extra["a b"]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _plain_key(part):
            out += f".{part}" if out else part
        else:  # any key a reader could misread, or that could break a line: quoted, escaped
            out += f"[{_clip(json.dumps(str(part)))}]"
    return out


def _plain_key(key: Any) -> bool:
    return (
        isinstance(key, str)
        and 0 < len(key) <= _SHOWN
        and key.isprintable()
        and not any(c in key for c in '.[]" ')
    )


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _bounded(text: str) -> str:
    text = printable(text)
    return text if len(text) <= _MESSAGE else text[: _MESSAGE // 2] + "..." + text[-_MESSAGE // 2 :]


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls, line and paragraph
    separators, bidirectional overrides, lone surrogates) written as a JSON escape, so that
    it cannot break, forge or reorder a line wherever it is shown."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > _SHOWN:
        value = value[:_SHOWN]  # a huge string is not encoded whole to show 80 characters
    return _clip(printable(orjson.dumps(value).decode()))


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
            raise NodeFileError(path, _where(reversed(found)) or None, _TOO_DEEP)
    return document


def parse_document(raw: bytes, path: str, schema: Schema) -> dict[str, Any]:
    """Bytes -> the validated document of a node file (components not yet resolved)."""
    document = load_json(raw, path)
    if not isinstance(document, dict):
        raise NodeFileError(path, None, f"expected a JSON object, got {_show(document)}")
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


def encode(node: Node) -> bytes:
    """The canonical bytes of a node: equal nodes give equal bytes, on every machine."""
    return orjson.dumps(
        {
            **{name: getattr(node, name) for name in CORE_FIELDS},
            "extra": node.extra,
            "components": [[c.component_class, c.module_path, c.info] for c in node.components],
        },
        option=orjson.OPT_SORT_KEYS,
    )


def canonical(node: Node, path: str) -> bytes:
    """`encode(node)`, or the file's `NodeFileError`: whatever the store could not hold is
    refused here, as the error of the file it came from, before any transaction."""
    try:
        return encode(node)
    except orjson.JSONEncodeError as exc:
        raise NodeFileError(path, None, f"cannot be stored: {exc}") from None


def decode(canonical: bytes) -> Node:
    """The inverse of `encode` (for bytes this module wrote; not validated again)."""
    data = orjson.loads(canonical)
    components = tuple(Component(c, p, i) for c, p, i in data.pop("components"))
    return Node(components=components, **data)


def pack(canonical: bytes) -> bytes:
    """How the registry keeps a canonical node between uses: compressed (JSON shrinks
    several times), so a thousand large last-good nodes cost megabytes, not hundreds."""
    return zlib.compress(canonical, 1)


def unpack(packed: bytes) -> Node:
    """The node that `pack` kept."""
    return decode(zlib.decompress(packed))


def fingerprint(canonical: bytes) -> str:
    """The identity of a node, from its canonical bytes: equal nodes, equal fingerprints."""
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()
