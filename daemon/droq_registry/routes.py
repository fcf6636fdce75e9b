"""The route table: every route of the service, declared once.

Each `Entry` says everything about one route: its template, its handler, and what the
API document says of it (summary, parameters, answers). Everything else is derived:

- Starlette's routes (`starlette_routes`), so the router serves exactly these;
- the fast path's dispatch (`hotpath.HotPath` takes the entries with a `fast` answer, and
  calls the same `answers.Answers` method the handler calls);
- the metrics' route labels (the template of the entry that answered);
- the OpenAPI document (`openapi.build` walks the table);
- which requests are followers, held open until something changes (`is_follower`): the
  server releases the oldest of them when the connection cap is reached.

Limits are imported from the code that enforces them, and patterns and enums come from
the node schema (`vocabulary.py`), so the document cannot drift from the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import BaseRoute, Mount, Route

from . import api, changes, cursors, explore
from .answers import Answer, Answers
from .model import EPOCH_PATTERN
from .search import MAX_QUERY, MAX_RESULTS
from .vocabulary import COMPONENT_CLASS, NODE_ID


@dataclass(frozen=True)
class Param:
    """One documented parameter (OpenAPI's Parameter Object, less its boilerplate)."""

    name: str
    where: str  # "path", "query" or "header"
    schema: Mapping[str, Any]
    description: str | None = None
    example: str | None = None
    required: bool = False  # a path parameter always is

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "in": self.where, "required": self.required or self.where == "path"}
        if self.description is not None:
            doc["description"] = self.description
        doc["schema"] = dict(self.schema)
        if self.example is not None:
            doc["example"] = self.example
        return doc


@dataclass(frozen=True)
class Doc:
    """One documented answer: what it means and its body (a schema name in `shapes.py`,
    or an inline schema with its media type). `etag`: it carries an ETag."""

    description: str
    schema: str | Mapping[str, Any]
    media: str = "application/json"
    etag: bool = False


@dataclass(frozen=True)
class Fast:
    """How the fast path answers a route: `answer(prepared, key)`, the very `Answers`
    method the route's handler calls (None: not ready, let Starlette answer). The key is
    the path parameter, or, with `queries`, what the query string selects (any other
    query goes through Starlette)."""

    answer: Callable[[Answers, str], Answer | None]
    queries: Mapping[bytes, str] | None = None


@dataclass(frozen=True)
class Entry:
    """One route. `conditional`: it
    answers If-None-Match with a 304. `handler` is an endpoint, or an ASGI app to mount.
    `follows`: its requests are held open until something changes, always (""), or when
    they carry this query parameter."""

    template: str
    handler: Callable[..., Any]
    summary: str
    ok: Doc
    errors: Mapping[int, Doc] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    conditional: bool = True
    fast: Fast | None = None
    mount: bool = False
    follows: str | None = None

    def starlette(self) -> BaseRoute:
        if self.mount:
            return Mount(self.template.rstrip("/"), self.handler, name="ui")
        return Route(self.template, self.handler, methods=["GET"])


def _error(description: str) -> Doc:
    return Doc(description, "Error")


NODE_ID_PARAM = Param("node_id", "path", NODE_ID, "A node id.", "dfx-math-executor-node")
CLASS_PARAM = Param("component_class", "path", COMPONENT_CLASS, "A component class name.", "Multiply")
SINCE = Param("since", "query", {"type": "integer", "minimum": 0},
              "The revision the client has; records after it are returned (default 0). Without `epoch` it is "
              "only safe against one registry process and one database: a cursor counts in one history.")
EPOCH = Param("epoch", "query", {"type": "string", "pattern": f"^{EPOCH_PATTERN}$"},
              "The history `since` counts in (the X-Registry-Epoch of the answer it came from). Another "
              "history's cursor answers 410 instead of records from this one.", "kqXoPWeNDvVhH0NS")
STATUS = Param("status", "query", {"enum": list(api.LIST_FILTERS)}, "Which nodes to list (default: active).")
WAIT = Param("wait", "query", {"type": "number", "minimum": 0, "maximum": cursors.MAX_WAIT_SECONDS},
             f"Seconds to hold the request when nothing is newer than `since` (at most {cursors.MAX_WAIT_SECONDS:g}).")
QUERY = Param("q", "query", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
              "The text (any case).", "TextInput", required=True)
LAST_EVENT_ID = Param("Last-Event-ID", "header", {"type": "string"},
                      "The id of the last event received, `<epoch>:<revision>` (a bare revision is taken in "
                      "the current epoch); the stream resumes after it.")

TABLE: tuple[Entry, ...] = (
    Entry("/", api.root, "Service description", Doc("Name, version and purpose.", "Service"),
          conditional=False),
    Entry("/health", api.health, "Liveness and state", Doc("Always 200 while the process serves.", "Health"),
          conditional=False),
    Entry("/ready", api.ready, "Readiness", Doc("The first load has committed.", "Ready"),
          {503: Doc("Still loading, or waiting for the assets folder.", "Ready")}, conditional=False),
    Entry("/api/v1/nodes", api.list_nodes, "List nodes", Doc("Nodes sorted by node_id.", "NodeList", etag=True),
          {400: _error("Unknown status filter.")}, (STATUS,),
          fast=Fast(Answers.built_list, api.LIST_QUERIES)),
    Entry("/api/v1/nodes/{node_id}", api.get_node, "One node and its components",
          Doc("The node, any status.", "NodeDetail", etag=True), {404: _error("No such node.")}, (NODE_ID_PARAM,),
          fast=Fast(Answers.detail)),
    Entry("/api/v1/components/{component_class}/node", api.component_node, "The node that runs a component class",
          Doc("The active node chosen: highest priority, then smallest node_id.", "Lookup", etag=True),
          {404: _error("No active node declares the class.")}, (CLASS_PARAM,),
          fast=Fast(Answers.lookup)),
    Entry("/api/v1/components/{component_class}/nodes", api.component_nodes,
          "Every active node that declares a component class", Doc("Candidates, best first.", "Candidates", etag=True),
          {404: _error("No active node declares the class.")}, (CLASS_PARAM,)),
    Entry("/api/v1/nodes/{node_id}/components", explore.node_components,
          "A node's components with their details (for people)",
          Doc("Components sorted by class.", "NodeComponents", etag=True), {404: _error("No such node.")},
          (NODE_ID_PARAM,)),
    Entry("/api/v1/search", explore.search, "Components whose class, display name or description contains a text",
          Doc(f"At most {MAX_RESULTS} matches, each with the node a lookup would choose.", "SearchResults",
              etag=True),
          {400: _error("Empty or too long q.")}, (QUERY,)),
    Entry("/api/v1/shared-classes", explore.shared_classes, "Classes that more than one active node declares",
          Doc("Each with its candidates, best first.", "SharedClasses", etag=True)),
    Entry("/api/v1/sources", api.list_sources, "Every node file the registry knows, with its state",
          Doc("Files sorted by path.", "Sources", etag=True)),
    Entry("/api/v1/changes", changes.list_changes, "The change log after a revision (long-poll with wait)",
          Doc("Records after `since`, in order.", "Changes", etag=True),
          {400: _error("Bad since, epoch or wait."),
           410: Doc("`since` is not in this history (another epoch, ahead of the revision, or older than the "
                    "log keeps): take `revision` of `epoch` as the new cursor; re-list first unless your state "
                    "already has `content_hash`.", "Gone")},
          (SINCE, EPOCH, WAIT), follows="wait"),
    Entry("/api/v1/events", changes.events, "Server-Sent Events of the change log",
          Doc("An endless stream: `event: change` records (id = `<epoch>:<revision>`), `event: relist` (data: "
              "revision, epoch, content_hash, detail) when Last-Event-ID is of another epoch, ahead of the "
              "revision or older than what is kept, and keep-alive comments.", {"type": "string"},
              "text/event-stream"),
          {400: _error("Bad Last-Event-ID, since or epoch.")}, (SINCE, EPOCH, LAST_EVENT_ID), conditional=False,
          follows=""),
    Entry("/metrics", api.metrics, "Prometheus metrics",
          Doc("Prometheus text exposition format.", {"type": "string"}, "text/plain"), conditional=False),
    Entry("/ui/", explore.UIFiles(directory=explore.UI_DIR, html=True), "The dashboard (HTML)",
          Doc("The page; it asks for the token itself when one is needed.", {"type": "string"}, "text/html"),
          conditional=False, mount=True),
    Entry("/openapi.json", api.openapi_document, "This document", Doc("OpenAPI 3.1.", {"type": "object"}),
          conditional=False),
)


def starlette_routes(table: tuple[Entry, ...] = TABLE) -> list[BaseRoute]:
    """The table as Starlette's router serves it."""
    return [entry.starlette() for entry in table]


_FOLLOWS = {entry.template: entry.follows for entry in TABLE if entry.follows is not None}


def is_follower(path: str, query: bytes) -> bool:
    """Whether a request for `path?query` is held open until something changes (a long-poll
    or an event stream), as the table's `follows` says."""
    needs = _FOLLOWS.get(path)
    if needs is None:
        return False
    # as Starlette reads a query string (parse_qsl of its latin-1 text)
    return not needs or any(name == needs for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))
