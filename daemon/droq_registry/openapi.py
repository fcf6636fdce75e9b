"""The API contract: an OpenAPI 3.1 document built by walking the route table.

Every path in it is an entry of `routes.TABLE` and every entry is a path in it; the body
schemas are `shapes.SCHEMAS`. The app builds the document on the first request for it
(`api.openapi_document`), and schemathesis checks the live server against it in the tests
(tests/test_contract.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from . import __version__
from .answers import SNAPSHOT_HEADERS
from .auth import protected
from .model import CONTENT_HASH_PATTERN, EPOCH_PATTERN
from .routes import Doc, Entry
from .shapes import SCHEMAS

#: The headers `answers.snapshot_headers` puts on every answer built from a snapshot.
_SNAPSHOT_HEADERS = {name: {"$ref": f"#/components/headers/{key}"} for name, key in SNAPSHOT_HEADERS.items()}
_ETAG = {"$ref": "#/components/headers/ETag"}

_NOT_MODIFIED = {
    "description": "The client's copy (If-None-Match) is current; no body.",
    "headers": {**_SNAPSHOT_HEADERS, "ETag": _ETAG},
}
_UNAUTHORIZED = {
    "description": "REGISTRY_API_TOKEN is set and the request has no valid bearer token.",
    "headers": {**_SNAPSHOT_HEADERS, "WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag from an earlier answer; answers 304 when it still matches.",
    "schema": {"type": "string"},
}


def _answer(doc: Doc) -> dict[str, Any]:
    """A documented answer. A named body is one of ours, with the snapshot's headers."""
    if not isinstance(doc.schema, str):
        return {"description": doc.description, "content": {doc.media: {"schema": dict(doc.schema)}}}
    headers = dict(_SNAPSHOT_HEADERS)
    if doc.etag:
        headers["ETag"] = _ETAG
    schema = {"$ref": f"#/components/schemas/{doc.schema}"}
    return {"description": doc.description, "headers": headers, "content": {doc.media: {"schema": schema}}}


def _operation(entry: Entry, auth: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": _answer(entry.ok)}
    if entry.conditional:
        responses["304"] = _NOT_MODIFIED
    responses.update({str(status): _answer(doc) for status, doc in entry.errors.items()})
    if protected(entry.template) and auth:
        responses["401"] = _UNAUTHORIZED
    operation: dict[str, Any] = {
        "summary": entry.summary,
        "parameters": [p.document() for p in entry.params] + ([_IF_NONE_MATCH] if entry.conditional else []),
        "responses": responses,
    }
    if not protected(entry.template) and auth:
        operation["security"] = []
    return operation


def build(table: Iterable[Entry], auth: bool) -> dict[str, Any]:
    """The whole document of `table`; with `auth`, the bearer scheme and its 401 answers."""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Droq Registry Service",
            "version": __version__,
            "description": "Which executor node handles component class X, and where does it run? "
                           "Read-only; the registry follows the node files in its assets folder.",
        },
        "paths": {entry.template: {"get": _operation(entry, auth)} for entry in table},
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "headers": {
                "Revision": {"description": "The registry revision the answer was built from.",
                             "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                "Epoch": {"description": "The history the revision counts in: new whenever the registry's "
                                         "database is created, rebuilt or copied; never shared by two replicas. "
                                         "A cursor is (epoch, revision).",
                          "schema": {"type": "string", "pattern": f"^{EPOCH_PATTERN}$"}},
                "ContentHash": {"description": "Hash of every served node as GET /api/v1/nodes/{node_id} serves "
                                               "it: equal on every replica serving the same nodes, whatever its "
                                               "history; changes with any node's answer.",
                                "schema": {"type": "string", "pattern": f"^{CONTENT_HASH_PATTERN}$"}},
                "ETag": {"description": "Strong validator of the body; equal on every replica.",
                         "schema": {"type": "string"}},
            },
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Needed when REGISTRY_API_TOKEN is set."}
        }
        document["security"] = [{"bearer": []}]
    return document
