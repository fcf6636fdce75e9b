"""Node files as bytes -> documents, nodes and canonical bytes. Pure: only the schema is read.

Every rule of the node-file format has a case here, with the exact error a node author sees
(`NodeFileError.message`, and `str(err)` with the file name in front).
"""

from __future__ import annotations

import codecs
from typing import Any

import orjson
import pytest

from droq_registry.model import Component, Node
from droq_registry.nodebytes import decode, encode
from droq_registry.nodefile import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    Schema,
    build_node,
    canonical,
    parse_components,
    parse_document,
)
from droq_registry.refusal import NodeFileError
from droq_registry.settings import Settings

NODE_ID_RULE = "a node id of 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
PRIORITY_RULE = "a whole number between -1000000000 and 1000000000"
CLASS_RULE = "a component class name (a Python identifier of at most 255 characters)"
MISSING_COMPONENTS = 'missing "components" (or "components_json_path"); "components": {} declares none'


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema.load(Settings().schema_path)


def doc(**fields: Any) -> dict[str, Any]:
    """A valid document with `fields` changed; a value of `...` removes the key."""
    base: dict[str, Any] = {"node_id": "n1", "name": "Node one", "components": {}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def raw(**fields: Any) -> bytes:
    return orjson.dumps(doc(**fields))


def refusal(data: bytes, schema: Schema, path: str = "node.json") -> NodeFileError:
    with pytest.raises(NodeFileError) as info:
        parse_document(data, path, schema)
    return info.value


def parse(data: bytes, schema: Schema) -> Node:
    document = parse_document(data, "node.json", schema)
    return build_node(document, document["components"])


# --- bytes that are not a JSON object ------------------------------------------------------

NOT_AN_OBJECT = [
    pytest.param(b"", "file is empty", id="empty"),
    pytest.param(b"  \n\t\r\n ", "file is empty", id="whitespace-only"),
    pytest.param(codecs.BOM_UTF8, "file is empty", id="bom-only"),
    pytest.param(codecs.BOM_UTF8 + b"\n  ", "file is empty", id="bom-and-whitespace"),
    pytest.param(b"{", "not valid JSON: unexpected end of data at line 1 column 2", id="truncated"),
    pytest.param(
        b'{"node_id": "a",}',
        "not valid JSON: trailing comma is not allowed at line 1 column 16",
        id="trailing-comma",
    ),
    pytest.param(
        b'{"a": 1} {"b": 2}',
        "not valid JSON: unexpected content after document at line 1 column 10",
        id="two-documents",
    ),
    pytest.param(
        b'{"a": NaN}',
        "not valid JSON: unexpected character, expected a JSON value at line 1 column 7",
        id="nan",
    ),
    pytest.param(
        b"{'a': 1}",
        "not valid JSON: unexpected character, expected a string key at line 1 column 2",
        id="single-quotes",
    ),
    pytest.param(
        b'{"a": 1e400}',
        "not valid JSON: number is infinity when parsed as double at line 1 column 7",
        id="infinite-number",
    ),
    pytest.param(
        b'{"name": "a\x00b"}',
        "not valid JSON: unexpected control character in string at line 1 column 12",
        id="raw-nul-in-string",
    ),
    pytest.param(
        codecs.BOM_UTF8 + codecs.BOM_UTF8 + b"{}",
        "not valid JSON: UTF-8 byte order mark (BOM) is not supported at line 1 column 1",
        id="two-boms",
    ),
    pytest.param(b'{"node_id": "a\xff"}', "not valid UTF-8 at byte 14 (line 1)", id="invalid-utf8"),
    pytest.param(b'{\n\n  "x": "\xc3\x28"}', "not valid UTF-8 at byte 11 (line 3)", id="invalid-utf8-line-3"),
    pytest.param("{}".encode("utf-16"), "not valid UTF-8 at byte 0 (line 1)", id="utf-16"),
    pytest.param(b"[1, 2]", "expected a JSON object, got a list", id="list"),
    pytest.param(b"null", "expected a JSON object, got null", id="null"),
    pytest.param(b'"node"', 'expected a JSON object, got "node"', id="string"),
    pytest.param(b"42", "expected a JSON object, got 42", id="number"),
    pytest.param(b"true", "expected a JSON object, got true", id="bool"),
]


@pytest.mark.parametrize(("data", "message"), NOT_AN_OBJECT)
def test_bytes_that_are_not_a_json_object_are_refused_with_the_reason(
    data: bytes, message: str, schema: Schema
) -> None:
    err = refusal(data, schema)
    assert (err.path, err.where, err.why) == ("node.json", None, message)
    assert err.message == message
    assert str(err) == f"node.json: {message}"


def test_invalid_utf8_is_refused_with_byte_offset_and_line(schema: Schema) -> None:
    data = b'{\n  "node_id": "n1",\n  "name": "caf\xe9",\n  "components": {}\n}'
    offset = data.index(b"\xe9")
    err = refusal(data, schema, "cafe.json")
    assert str(err) == f"cafe.json: not valid UTF-8 at byte {offset} (line 3)"


def test_invalid_utf8_after_a_byte_order_mark_is_refused_at_its_offset_in_the_file(schema: Schema) -> None:
    data = codecs.BOM_UTF8 + b'{"node_id": "n1", "name": "caf\xe9", "components": {}}'
    offset = data.index(b"\xe9")
    assert refusal(data, schema).message == f"not valid UTF-8 at byte {offset} (line 1)"


def test_file_larger_than_the_limit_is_refused_before_parsing(schema: Schema) -> None:
    data = b" " * (MAX_FILE_BYTES + 1)
    err = refusal(data, schema)
    assert err.message == f"file is larger than {MAX_FILE_BYTES} bytes"


def test_utf8_byte_order_mark_is_accepted(schema: Schema) -> None:
    node = parse(codecs.BOM_UTF8 + raw(node_id="bom-node"), schema)
    assert node == Node(node_id="bom-node", name="Node one")


# --- the fields of a node ------------------------------------------------------------------

BAD_FIELDS = [
    pytest.param(doc(node_id=...), None, 'missing required key "node_id"', id="no-node_id"),
    pytest.param(doc(name=...), None, 'missing required key "name"', id="no-name"),
    pytest.param(doc(node_id=5), "node_id", f"expected {NODE_ID_RULE}, got 5", id="node_id-number"),
    pytest.param(doc(node_id=None), "node_id", f"expected {NODE_ID_RULE}, got null", id="node_id-null"),
    pytest.param(doc(node_id=""), "node_id", f'expected {NODE_ID_RULE}, got ""', id="node_id-empty"),
    pytest.param(
        doc(node_id="-n"), "node_id", f'expected {NODE_ID_RULE}, got "-n"', id="node_id-leading-dash"
    ),
    pytest.param(
        doc(node_id=".n"), "node_id", f'expected {NODE_ID_RULE}, got ".n"', id="node_id-leading-dot"
    ),
    pytest.param(
        doc(node_id="_n"), "node_id", f'expected {NODE_ID_RULE}, got "_n"', id="node_id-leading-underscore"
    ),
    pytest.param(doc(node_id="a b"), "node_id", f'expected {NODE_ID_RULE}, got "a b"', id="node_id-space"),
    pytest.param(doc(node_id="a/b"), "node_id", f'expected {NODE_ID_RULE}, got "a/b"', id="node_id-slash"),
    pytest.param(
        doc(node_id="café"), "node_id", f'expected {NODE_ID_RULE}, got "café"', id="node_id-non-ascii"
    ),
    pytest.param(
        doc(node_id="a" * 129),
        "node_id",
        f'expected {NODE_ID_RULE}, got "{"a" * 76}...',
        id="node_id-129-chars",
    ),
    pytest.param(doc(name=3), "name", "expected a string, got 3", id="name-number"),
    pytest.param(doc(name=None), "name", "expected a string, got null", id="name-null"),
    pytest.param(doc(name=["a"]), "name", "expected a string, got a list", id="name-list"),
    pytest.param(doc(description=None), "description", "expected a string, got null", id="description-null"),
    pytest.param(doc(description=7), "description", "expected a string, got 7", id="description-number"),
    pytest.param(
        doc(source_code_location=3),
        "source_code_location",
        "expected a string or null, got 3",
        id="source_code_location-number",
    ),
    pytest.param(
        doc(docker_image=[]), "docker_image", "expected a string or null, got a list", id="docker_image-list"
    ),
    pytest.param(doc(api_url={}), "api_url", "expected a string or null, got an object", id="api_url-object"),
    pytest.param(
        doc(ip_address=True), "ip_address", "expected a string or null, got true", id="ip_address-bool"
    ),
    pytest.param(
        doc(deployment_location="moon"),
        "deployment_location",
        'expected one of "local", "cloud", "k8s", got "moon"',
        id="deployment_location-unknown",
    ),
    pytest.param(
        doc(deployment_location=None),
        "deployment_location",
        'expected one of "local", "cloud", "k8s", got null',
        id="deployment_location-null",
    ),
    pytest.param(
        doc(status="broken"),
        "status",
        'expected one of "active", "inactive", "deploying", got "broken"',
        id="status-unknown",
    ),
    pytest.param(
        doc(status="Active"),
        "status",
        'expected one of "active", "inactive", "deploying", got "Active"',
        id="status-wrong-case",
    ),
    pytest.param(doc(priority=True), "priority", f"expected {PRIORITY_RULE}, got true", id="priority-bool"),
    pytest.param(doc(priority=1.5), "priority", f"expected {PRIORITY_RULE}, got 1.5", id="priority-float"),
    pytest.param(doc(priority="1"), "priority", f'expected {PRIORITY_RULE}, got "1"', id="priority-string"),
    pytest.param(doc(priority=None), "priority", f"expected {PRIORITY_RULE}, got null", id="priority-null"),
    pytest.param(
        doc(priority=1_000_000_001),
        "priority",
        f"expected {PRIORITY_RULE}, got 1000000001",
        id="priority-too-high",
    ),
    pytest.param(
        doc(priority=-1_000_000_001),
        "priority",
        f"expected {PRIORITY_RULE}, got -1000000001",
        id="priority-too-low",
    ),
]


@pytest.mark.parametrize(("document", "where", "why"), BAD_FIELDS)
def test_a_field_that_breaks_its_rule_is_refused_naming_the_field(
    document: dict[str, Any], where: str | None, why: str, schema: Schema
) -> None:
    err = refusal(orjson.dumps(document), schema)
    assert (err.where, err.why) == (where, why)
    expected = f"{where}: {why}" if where else why
    assert err.message == expected
    assert str(err) == f"node.json: {expected}"


def test_a_node_id_with_a_trailing_newline_is_refused_at_node_id(schema: Schema) -> None:
    # "$" in a Python regex also matches before a final newline; the id must still be refused.
    err = refusal(raw(node_id="abc\n"), schema)
    assert err.where == "node_id"
    assert err.message.startswith("node_id: ")


# --- components ----------------------------------------------------------------------------

BAD_COMPONENTS = [
    pytest.param(
        [],
        "components",
        "expected an object mapping component classes to module paths, got a list",
        id="list",
    ),
    pytest.param(
        "pkg.mod",
        "components",
        'expected an object mapping component classes to module paths, got "pkg.mod"',
        id="string",
    ),
    pytest.param(
        None,
        "components",
        "expected an object mapping component classes to module paths, got null",
        id="null",
    ),
    pytest.param(
        {"Foo": "not a path"},
        "components.Foo",
        'expected a dotted module path, got "not a path"',
        id="spaces",
    ),
    pytest.param(
        {"Foo": "a..b"}, "components.Foo", 'expected a dotted module path, got "a..b"', id="empty-part"
    ),
    pytest.param(
        {"Foo": "a."}, "components.Foo", 'expected a dotted module path, got "a."', id="trailing-dot"
    ),
    pytest.param(
        {"Foo": ".a"}, "components.Foo", 'expected a dotted module path, got ".a"', id="leading-dot"
    ),
    pytest.param(
        {"Foo": "1a.b"}, "components.Foo", 'expected a dotted module path, got "1a.b"', id="digit-first"
    ),
    pytest.param({"Foo": "a/b"}, "components.Foo", 'expected a dotted module path, got "a/b"', id="slash"),
    pytest.param({"Foo": ""}, "components.Foo", 'expected a dotted module path, got ""', id="empty-path"),
    pytest.param(
        {"Foo": "a." + "b" * 1030},
        "components.Foo",
        f'expected a dotted module path, got "a.{"b" * 74}...',
        id="path-too-long",
    ),
    pytest.param(
        {"Foo": 3},
        "components.Foo",
        'expected a dotted module path or an object with a "path", got 3',
        id="number",
    ),
    pytest.param(
        {"Foo": None},
        "components.Foo",
        'expected a dotted module path or an object with a "path", got null',
        id="null-spec",
    ),
    pytest.param(
        {"Foo": ["a.b"]},
        "components.Foo",
        'expected a dotted module path or an object with a "path", got a list',
        id="list-spec",
    ),
    pytest.param({"Foo": {}}, "components.Foo", 'missing required key "path"', id="object-without-path"),
    pytest.param(
        {"Foo": {"description": "d", "author": "a"}},
        "components.Foo",
        'missing required key "path"',
        id="object-with-keys-but-no-path",
    ),
    pytest.param(
        {"Foo": {"path": "x y"}},
        "components.Foo.path",
        'expected a dotted module path, got "x y"',
        id="object-bad-path",
    ),
    pytest.param(
        {"Foo": {"path": 3}},
        "components.Foo.path",
        "expected a dotted module path, got 3",
        id="object-path-number",
    ),
    pytest.param(
        {"Foo": {"path": "a.b", "description": 3}},
        "components.Foo.description",
        "expected a string, got 3",
        id="object-description-number",
    ),
    pytest.param(
        {"Foo": {"path": "a.b", "display_name": None}},
        "components.Foo.display_name",
        "expected a string, got null",
        id="object-display_name-null",
    ),
    pytest.param(
        {"Foo": {"path": "a.b", "author": ["x"]}},
        "components.Foo.author",
        "expected a string, got a list",
        id="object-author-list",
    ),
    pytest.param({"1Foo": "a.b"}, "components", f'expected {CLASS_RULE}, got "1Foo"', id="class-digit-first"),
    pytest.param({"Foo-Bar": "a.b"}, "components", f'expected {CLASS_RULE}, got "Foo-Bar"', id="class-dash"),
    pytest.param({"Foo.Bar": "a.b"}, "components", f'expected {CLASS_RULE}, got "Foo.Bar"', id="class-dot"),
    pytest.param({"": "a.b"}, "components", f'expected {CLASS_RULE}, got ""', id="class-empty"),
    pytest.param({"Café": "a.b"}, "components", f'expected {CLASS_RULE}, got "Café"', id="class-non-ascii"),
    pytest.param(
        {"A" * 256: "a.b"}, "components", f'expected {CLASS_RULE}, got "{"A" * 76}...', id="class-256-chars"
    ),
    pytest.param(
        {"Foo": "a.b", "description": "Another DFX component"},
        "components.description",
        'expected a dotted module path, got "Another DFX component"',
        id="stray-description-string-form",
    ),
    pytest.param(
        {"Foo": {"path": "a.b"}, "description": "Another DFX component"},
        "components.description",
        'expected a dotted module path, got "Another DFX component"',
        id="stray-description-object-form",
    ),
]


@pytest.mark.parametrize(("components", "where", "why"), BAD_COMPONENTS)
def test_components_that_break_a_rule_are_refused_naming_the_place(
    components: Any, where: str, why: str, schema: Schema
) -> None:
    err = refusal(raw(components=components), schema, "dfx.json")
    assert (err.where, err.why) == (where, why)
    assert str(err) == f"dfx.json: {where}: {why}"


COMPONENT_SOURCES = [
    pytest.param(doc(components=...), MISSING_COMPONENTS, id="neither"),
    pytest.param(
        doc(components=..., componets={"Foo": "a.b"}),
        MISSING_COMPONENTS + ' (is "componets" a misspelling of "components"?)',
        id="misspelt-componets",
    ),
    pytest.param(
        doc(components=..., component={"Foo": "a.b"}),
        MISSING_COMPONENTS + ' (is "component" a misspelling of "components"?)',
        id="misspelt-component",
    ),
    pytest.param(
        doc(components=..., Components={"Foo": "a.b"}),
        MISSING_COMPONENTS + ' (is "Components" a misspelling of "components"?)',
        id="capitalised",
    ),
    pytest.param(doc(components=..., modules={"Foo": "a.b"}), MISSING_COMPONENTS, id="unrelated-key-no-hint"),
    pytest.param(
        doc(components={}, components_json_path="c.json"),
        'give either "components" or "components_json_path", not both',
        id="both",
    ),
]


@pytest.mark.parametrize(("document", "message"), COMPONENT_SOURCES)
def test_exactly_one_of_components_or_components_json_path_is_required(
    document: dict[str, Any], message: str, schema: Schema
) -> None:
    err = refusal(orjson.dumps(document), schema)
    assert (err.where, err.message) == (None, message)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("", '""', id="empty"),
        pytest.param(3, "3", id="number"),
        pytest.param(None, "null", id="null"),
    ],
)
def test_components_json_path_must_be_a_non_empty_string(value: Any, shown: str, schema: Schema) -> None:
    err = refusal(raw(components=..., components_json_path=value), schema)
    assert err.message == (
        "components_json_path: expected a path to a JSON file of components, relative to the node file's "
        f"folder, got {shown}"
    )


def test_components_json_path_alone_is_a_valid_document(schema: Schema) -> None:
    document = parse_document(
        raw(components=..., components_json_path="../components/x.json"), "n.json", schema
    )
    assert document == {"node_id": "n1", "name": "Node one", "components_json_path": "../components/x.json"}


# --- valid nodes ---------------------------------------------------------------------------


def test_minimal_node_gets_every_default(schema: Schema) -> None:
    node = parse(b'{"node_id": "n1", "name": "Node one", "components": {}}', schema)
    assert node == Node(
        node_id="n1",
        name="Node one",
        description="",
        source_code_location=None,
        docker_image=None,
        deployment_location="local",
        api_url=None,
        ip_address=None,
        status="active",
        priority=0,
        extra={},
        components=(),
    )


def test_full_node_keeps_every_field_and_the_extras_in_key_order(schema: Schema) -> None:
    document = {
        "version": "0.1.0",
        "node_id": "dfx-x.node_1",
        "name": "DFX X",
        "description": "Does X",
        "source_code_location": "nodes/dfx-x",
        "docker_image": "droqai/dfx-x:latest",
        "deployment_location": "k8s",
        "api_url": "http://x:8000",
        "ip_address": None,
        "status": "deploying",
        "priority": -7,
        "author": "Droq Team",
        "category": "Math",
        "created_at": "2025-11-14T21:11:12Z",
        "repository_url": "https://github.com/droq-ai/dfx-x",
        "commit": "d51663a642343d944caf80496ed195c9982e3910",
        "tags": ["a", {"b": 1}],
        "supported_components": ["ignored"],
        "components": {"Multiply": "dfx.math.multiply"},
    }
    node = parse(orjson.dumps(document), schema)
    assert node == Node(
        node_id="dfx-x.node_1",
        name="DFX X",
        description="Does X",
        source_code_location="nodes/dfx-x",
        docker_image="droqai/dfx-x:latest",
        deployment_location="k8s",
        api_url="http://x:8000",
        ip_address=None,
        status="deploying",
        priority=-7,
        extra={
            "author": "Droq Team",
            "category": "Math",
            "commit": "d51663a642343d944caf80496ed195c9982e3910",
            "created_at": "2025-11-14T21:11:12Z",
            "repository_url": "https://github.com/droq-ai/dfx-x",
            "tags": ["a", {"b": 1}],
            "version": "0.1.0",
        },
        components=(Component("Multiply", "dfx.math.multiply", {}),),
    )
    assert list(node.extra) == sorted(node.extra)


def test_components_in_string_and_object_form_are_sorted_by_class(schema: Schema) -> None:
    components = {
        "Zeta": "pkg.zeta",
        "Alpha": {
            "path": "pkg.alpha",
            "display_name": "Alpha",
            "description": "First",
            "author": "Droq",
            "icon": "a.svg",
        },
        "_private": "pkg._private",
        "Mid": {"path": "pkg.mid"},
        "alpha": "pkg.lower",
    }
    node = parse(raw(components=components), schema)
    assert node.components == (
        Component(
            "Alpha",
            "pkg.alpha",
            {"author": "Droq", "description": "First", "display_name": "Alpha", "icon": "a.svg"},
        ),
        Component("Mid", "pkg.mid", {}),
        Component("Zeta", "pkg.zeta", {}),
        Component("_private", "pkg._private", {}),
        Component("alpha", "pkg.lower", {}),
    )
    assert list(node.components[0].info) == ["author", "description", "display_name", "icon"]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"node_id": "a" * 128}, id="node_id-128-chars"),
        pytest.param({"node_id": "0"}, id="node_id-one-digit"),
        pytest.param({"node_id": "A.b_c-9"}, id="node_id-all-allowed-characters"),
        pytest.param({"priority": 1_000_000_000}, id="priority-max"),
        pytest.param({"priority": -1_000_000_000}, id="priority-min"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"ip_address": None, "api_url": None, "docker_image": None}, id="nulls"),
        pytest.param({"deployment_location": "cloud", "status": "inactive"}, id="other-enums"),
        pytest.param({"components": {"C" * 255: "a" * 1024}}, id="longest-class-and-path"),
        pytest.param({"components": {"Foo": "_a._b1.C2"}}, id="underscores-in-path"),
    ],
)
def test_values_at_the_edges_of_each_rule_are_accepted(fields: dict[str, Any], schema: Schema) -> None:
    document = doc(**fields)
    assert parse_document(orjson.dumps(document), "edge.json", schema) == document


def test_a_whole_number_written_as_float_is_accepted_as_integer_priority(schema: Schema) -> None:
    # JSON Schema counts 2.0 as an integer; the node carries a real int.
    node = parse(b'{"node_id": "n1", "name": "N", "priority": 2.0, "components": {}}', schema)
    assert (node.priority, type(node.priority)) == (2, int)


def test_empty_components_object_is_a_valid_node_with_no_components(schema: Schema) -> None:
    assert parse(raw(components={}), schema).components == ()


def test_the_real_shape_of_a_published_node_file_is_accepted(schema: Schema) -> None:
    document = {
        "node_id": "dfx-math-executor-node",
        "name": "DFX Math Executor Node",
        "components": {
            "Multiply": {
                "path": "dfx.math.component.multiply",
                "description": "Multiplies two numbers together",
                "display_name": "DFX Multiply",
                "author": "Dorq",
            }
        },
    }
    node = parse(orjson.dumps(document), schema)
    assert node.components == (
        Component(
            "Multiply",
            "dfx.math.component.multiply",
            {
                "author": "Dorq",
                "description": "Multiplies two numbers together",
                "display_name": "DFX Multiply",
            },
        ),
    )


# --- canonical bytes -----------------------------------------------------------------------

FULL = {
    "node_id": "n1",
    "name": "Node one",
    "description": "d",
    "status": "inactive",
    "priority": 3,
    "version": "1.0.0",
    "author": "me",
    "components": {"B": {"path": "pkg.b", "author": "x", "description": "y"}, "A": "pkg.a"},
}


def test_encode_then_decode_gives_the_same_node(schema: Schema) -> None:
    node = parse(orjson.dumps(FULL), schema)
    assert decode(encode(node)) == node


def test_encode_writes_the_core_fields_extras_and_components_with_sorted_keys(schema: Schema) -> None:
    encoded = encode(parse(orjson.dumps(FULL), schema))
    assert orjson.loads(encoded) == {
        "node_id": "n1",
        "name": "Node one",
        "description": "d",
        "source_code_location": None,
        "docker_image": None,
        "deployment_location": "local",
        "api_url": None,
        "ip_address": None,
        "status": "inactive",
        "priority": 3,
        "extra": {"author": "me", "version": "1.0.0"},
        "components": [["A", "pkg.a", {}], ["B", "pkg.b", {"author": "x", "description": "y"}]],
    }
    assert encoded == orjson.dumps(orjson.loads(encoded), option=orjson.OPT_SORT_KEYS)


def test_reordered_keys_give_equal_canonical_bytes(schema: Schema) -> None:
    reordered = {
        "components": {"A": "pkg.a", "B": {"description": "y", "path": "pkg.b", "author": "x"}},
        "author": "me",
        "priority": 3,
        "version": "1.0.0",
        "status": "inactive",
        "description": "d",
        "name": "Node one",
        "node_id": "n1",
    }
    indented = orjson.dumps(FULL, option=orjson.OPT_INDENT_2)
    assert encode(parse(orjson.dumps(reordered), schema)) == encode(parse(indented, schema))


def test_a_changed_value_changes_the_canonical_bytes(schema: Schema) -> None:
    before = encode(parse(orjson.dumps(FULL), schema))
    after = encode(parse(orjson.dumps({**FULL, "priority": 4}), schema))
    assert before != after


def test_defaults_written_out_give_the_same_bytes_as_defaults_left_out(schema: Schema) -> None:
    explicit = doc(
        description="",
        source_code_location=None,
        docker_image=None,
        deployment_location="local",
        api_url=None,
        ip_address=None,
        status="active",
        priority=0,
    )
    assert encode(parse(orjson.dumps(explicit), schema)) == encode(parse(raw(), schema))


# --- nesting depth -------------------------------------------------------------------------

TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def nested(levels: int, kind: str = "list") -> Any:
    """A value `levels` containers deep (0: a number); "object" nests under key "k"."""
    value: Any = 1
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


def deep_doc(levels: int, kind: str = "list") -> dict[str, Any]:
    """A valid node whose extra field `extra.a.b` holds a value so deep that the whole file
    nests exactly `levels` levels (the top-level object is level 1; `extra` level 2, ...)."""
    return doc(extra={"a": {"b": nested(levels - 3, kind)}})


def deep_bytes(levels: int) -> bytes:
    """`deep_doc(levels)` as bytes, for depths no encoder writes."""
    inner = levels - 3
    return raw(extra={"a": {"b": 0}}).replace(b'"b":0', b'"b":' + b"[" * inner + b"1" + b"]" * inner)


@pytest.mark.parametrize(
    ("document", "where"),
    [
        pytest.param(
            deep_doc(MAX_DEPTH + 1), "extra.a.b" + "[0]" * (MAX_DEPTH - 3), id="lists-one-level-too-deep"
        ),
        pytest.param(deep_bytes(300), "extra.a.b" + "[0]" * (MAX_DEPTH - 3), id="lists-300-levels"),
        pytest.param(
            deep_doc(MAX_DEPTH + 1, "object"), "extra.a.b" + ".k" * (MAX_DEPTH - 3), id="objects-one-too-deep"
        ),
        pytest.param(
            doc(tags=["ok", {"x": 1}, nested(MAX_DEPTH)]), "tags[2]" + "[0]" * (MAX_DEPTH - 2), id="third-tag"
        ),
        pytest.param(
            doc(components={"Foo": {"path": "a.b", "icon": nested(MAX_DEPTH - 2)}}),
            "components.Foo.icon" + "[0]" * (MAX_DEPTH - 3),
            id="component-info",
        ),
        pytest.param(
            doc(extra={"a b": {"line\nbreak": nested(MAX_DEPTH - 2)}}),
            'extra["a b"]["line\\nbreak"]' + "[0]" * (MAX_DEPTH - 3),
            id="odd-keys-quoted-and-escaped",
        ),
    ],
)
def test_a_document_nested_deeper_than_the_limit_is_refused_naming_the_place(
    document: dict[str, Any] | bytes, where: str, schema: Schema
) -> None:
    data = document if isinstance(document, bytes) else orjson.dumps(document)
    err = refusal(data, schema, "deep.json")
    assert (err.where, err.why) == (where, TOO_DEEP)
    assert str(err) == f"deep.json: {where}: {TOO_DEEP}"
    assert "\n" not in str(err)


def test_a_value_that_could_break_or_reorder_a_line_is_shown_escaped(schema: Schema) -> None:
    err = refusal(raw(node_id="\u202e\u2028x\x85"), schema, "odd\nname.json")
    assert err.message == f'node_id: expected {NODE_ID_RULE}, got "\\u202e\\u2028x\\u0085"'
    assert str(err) == f"odd\\nname.json: {err.message}"
    assert str(err).isprintable()


def test_a_place_is_bounded_however_long_the_keys_on_the_way(schema: Schema) -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = {"k" * 80: value}
    err = refusal(raw(extra=value), schema)
    full = "extra" + ("." + "k" * 80) * (MAX_DEPTH - 1)
    assert (err.where, err.why) == (full[:500] + "..." + full[-500:], TOO_DEEP)


def test_a_document_nested_exactly_to_the_limit_is_a_node_that_encodes(schema: Schema) -> None:
    document = deep_doc(MAX_DEPTH)
    document["components"] = {"Foo": {"path": "a.b", "icon": nested(MAX_DEPTH - 3, "object")}}
    node = parse(orjson.dumps(document), schema)
    assert node.extra == {"extra": document["extra"]}
    assert node.components == (Component("Foo", "a.b", {"icon": nested(MAX_DEPTH - 3, "object")}),)
    assert decode(canonical(node, "deep.json")) == node


def test_a_document_deeper_than_the_json_parser_goes_is_refused_with_the_same_limit(schema: Schema) -> None:
    prefix = b'{"node_id": "n1", "name": "N", "components": {}, "extra": '
    data = prefix + b"[" * 2000 + b"]" * 2000 + b"}"
    err = refusal(data, schema)
    # orjson stops past its own limit (about 1024 levels) and names the bracket it stopped at
    column = len(prefix) + 1025
    assert (err.where, err.why) == (None, f"{TOO_DEEP} at line 1 column {column}")
    assert data[column - 1 : column] == b"["


def test_a_components_file_counts_its_top_level_as_the_second_level(schema: Schema) -> None:
    fits = orjson.dumps({"Foo": {"path": "a.b", "icon": nested(MAX_DEPTH - 3)}})
    assert parse_components(fits, "../c.json", schema)["Foo"]["icon"] == nested(MAX_DEPTH - 3)
    too_deep = orjson.dumps({"Foo": {"path": "a.b", "icon": nested(MAX_DEPTH - 2)}})
    with pytest.raises(NodeFileError) as info:
        parse_components(too_deep, "../c.json", schema)
    assert str(info.value) == "../c.json: Foo.icon" + "[0]" * (MAX_DEPTH - 3) + f": {TOO_DEEP}"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        pytest.param({"x": {1, 2}}, "cannot be stored: Type is not JSON serializable: set", id="a-set"),
        pytest.param({"x": nested(300)}, "cannot be stored: Recursion limit reached", id="too-deep"),
        pytest.param({"x": "\ud800"}, "cannot be stored: str is not valid UTF-8: surrogates not allowed",
                     id="surrogate"),
    ],
)
def test_a_node_the_encoder_cannot_write_is_the_files_error_not_an_exception(extra: Any, why: str) -> None:
    node = Node(node_id="n1", name="N", extra=extra)
    with pytest.raises(NodeFileError) as info:
        canonical(node, "odd.json")
    assert str(info.value) == f"odd.json: {why}"


# --- components_json_path files ------------------------------------------------------------


def test_a_components_file_in_both_forms_is_parsed(schema: Schema) -> None:
    data = b'{"Foo": "pkg.foo", "Bar": {"path": "pkg.bar", "display_name": "B"}}'
    assert parse_components(data, "../components/x.json", schema) == {
        "Foo": "pkg.foo",
        "Bar": {"path": "pkg.bar", "display_name": "B"},
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "file is empty", id="empty"),
        pytest.param(
            b'{"Foo": ', "not valid JSON: unexpected end of data at line 1 column 9", id="truncated"
        ),
        pytest.param(b'{"Foo": "\xff"}', "not valid UTF-8 at byte 9 (line 1)", id="invalid-utf8"),
    ],
)
def test_a_components_file_that_is_not_json_is_refused_naming_it(
    data: bytes, message: str, schema: Schema
) -> None:
    with pytest.raises(NodeFileError) as info:
        parse_components(data, "../components/x.json", schema)
    assert str(info.value) == f"../components/x.json: {message}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            b'{"Foo": {"path": "no good"}}',
            'Foo.path: expected a dotted module path, got "no good"',
            id="bad-path",
        ),
        pytest.param(
            b"[]", "expected an object mapping component classes to module paths, got a list", id="list"
        ),
    ],
)
def test_a_components_file_with_bad_content_is_refused_naming_the_place_without_the_network(
    data: bytes, message: str, schema: Schema, no_network: list[str]
) -> None:
    with pytest.raises(NodeFileError) as info:
        parse_components(data, "../components/x.json", schema)
    assert str(info.value) == f"../components/x.json: {message}"
    assert no_network == []


def test_the_shipped_schema_is_a_valid_draft_7_schema() -> None:
    import jsonschema

    raw = orjson.loads(Settings().schema_path.read_bytes())
    jsonschema.Draft7Validator.check_schema(raw)
    assert raw["$schema"] == "http://json-schema.org/draft-07/schema#"
