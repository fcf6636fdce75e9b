"""The fast path: the hot read endpoints answered in pure ASGI, before Starlette.

`GET`/`HEAD` of

    /api/v1/components/{component_class}/node     (the lookup, and its 404)
    /api/v1/nodes/{node_id}                       (node detail, and its 404)
    /api/v1/nodes   [?status=active|inactive|deploying|all]

are recognised with a few string checks, looked up in answers prepared once per snapshot
(the status line's headers already encoded, 200 and 304 variants), and sent as the two
ASGI messages Starlette would send, with the same bytes in the same order. No Request,
Response, routing or middleware objects are made. Anything else, and any request this
module is not sure about (another method, a query on the list it does not know, a
`root_path`, a missing or wrong bearer token when one is configured, the registry not
loaded yet), falls through to the Starlette app untouched, whose routes stay the
reference: the answers here are built by the same functions the Starlette handlers use.

Rules kept: one snapshot per answer (`registry.snapshot` is read once; the body, ETag and
`X-Registry-Revision` all come from it), `If-None-Match` with the weak comparison (lists,
`W/`, `*`), HEAD, the bearer token when configured (a refused request goes through
Starlette, which answers the 401), and Prometheus counting by route template, method,
status and duration.

Memory: lookup bodies are big (a node's whole JSON, tens of KB) and there is one per
component class, so the per-snapshot cache of prepared answers has a byte budget
(`CACHE_BYTES`, counted in bytes: bodies plus the UTF-8 length of the keys a client
chose); when it is full it is emptied and refilled by the requests that follow. A 404 is
not kept at all (it costs one small `orjson.dumps`), so what a client can make the cache
hold is bounded by the registry's own classes and nodes. Node detail and list bodies are
kept already (`NodeView.detail`, the snapshot's cache); their prepared answers only add
headers.

The event loop only ever does small work here. The node list is a walk of every node (on
1,000 nodes, tens of megabytes): it is answered here only once the Starlette handler has
built it in a worker thread for this snapshot (`offload.py`); until then the request goes
through Starlette, which builds it off the loop.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import api
from .auth import bearer_matches
from .metrics import Metrics
from .snapshot import Snapshot

LOOKUP_ROUTE = "/api/v1/components/{component_class}/node"
DETAIL_ROUTE = "/api/v1/nodes/{node_id}"
LIST_ROUTE = "/api/v1/nodes"

_COMPONENTS = "/api/v1/components/"
_NODES = "/api/v1/nodes"
_CLASS_START, _CLASS_END = len(_COMPONENTS), -len("/node")
_ID_START = len(_NODES) + 1

#: Query strings of `GET /api/v1/nodes` answered here -> the status they select (exactly
#: what Starlette's query parsing gives for them); any other query goes through Starlette.
LIST_QUERIES = {
    b"": "active",
    b"status=active": "active",
    b"status=inactive": "inactive",
    b"status=deploying": "deploying",
    b"status=all": "all",
}

#: Bytes of prepared answers kept per snapshot (bodies, plus `ENTRY_COST` each). A registry
#: of 350,000 classes with 40 KB lookup bodies would otherwise hold 14 GB.
CACHE_BYTES = 32 * 1024 * 1024
#: What one cached answer costs besides its body (headers, messages, the key).
ENTRY_COST = 512

_CACHE_CONTROL = (b"cache-control", b"no-cache")
_CONTENT_TYPE = (b"content-type", b"application/json")

Headers = tuple[tuple[bytes, bytes], ...]
#: What `HotPath.answer` gives: status, headers, body, route template.
Reply = tuple[int, Headers, bytes, str]


class Answer:
    """One prepared answer: status, encoded headers and body of the 200 (or 404), and the
    headers of its 304. Immutable: the caller makes fresh ASGI messages from it each time."""

    __slots__ = ("body", "etag", "etag_bytes", "headers", "not_modified", "status")

    def __init__(self, revision: tuple[bytes, bytes], status: int, body: bytes, etag: str | None) -> None:
        # Header order as Starlette's Response gives it: the handler's headers
        # (x-registry-revision, cache-control[, etag]), then content-length, content-type.
        headers = [revision, _CACHE_CONTROL]
        self.status = status
        self.body = body
        self.etag = etag
        self.etag_bytes = None if etag is None else etag.encode("latin-1")
        self.not_modified: Headers = ()
        if self.etag_bytes is not None:
            headers.append((b"etag", self.etag_bytes))
            self.not_modified = tuple(headers)
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        headers.append(_CONTENT_TYPE)
        self.headers: Headers = tuple(headers)


class Prepared:
    """Answers prepared from one snapshot, built on first use and kept within a budget."""

    __slots__ = ("details", "lists", "lookups", "revision", "snap", "used")

    def __init__(self, snap: Snapshot | None) -> None:
        self.snap = snap
        rev = b"0" if snap is None else str(snap.revision).encode("latin-1")
        self.revision = (b"x-registry-revision", rev)
        self.lookups: dict[str, Answer] = {}
        self.details: dict[str, Answer] = {}
        self.lists: dict[str, Answer] = {}
        self.used = 0

    def _keep(self, table: dict[str, Answer], key: str, answer: Answer) -> Answer:
        if answer.status != 200:
            return answer
        cost = len(answer.body) + len(key.encode("utf-8", "surrogatepass")) + ENTRY_COST
        if cost > CACHE_BYTES:
            return answer
        if self.used + cost > CACHE_BYTES:
            self.lookups.clear()
            self.details.clear()
            self.used = 0
        table[key] = answer
        self.used += cost
        return answer

    def _missing(self, detail: str) -> Answer:
        return Answer(self.revision, 404, orjson.dumps({"detail": detail}), None)

    def lookup(self, component_class: str) -> Answer:
        """`GET /api/v1/components/{component_class}/node`, as `api.component_node` answers."""
        snap = self.snap
        assert snap is not None
        candidates = api._candidates(snap, component_class)
        if candidates:
            body, etag = snap.nodes[candidates[0]].lookup(component_class)
            answer = Answer(self.revision, 200, body, etag)
        else:
            answer = self._missing(api.component_missing_detail(component_class))
        return self._keep(self.lookups, component_class, answer)

    def detail(self, node_id: str) -> Answer:
        """`GET /api/v1/nodes/{node_id}`, as `api.get_node` answers."""
        snap = self.snap
        assert snap is not None
        view = snap.nodes.get(node_id) if api.NODE_ID.fullmatch(node_id) else None
        if view is None:
            answer = self._missing(api.node_missing_detail(node_id))
        else:
            answer = Answer(self.revision, 200, *view.detail())
        return self._keep(self.details, node_id, answer)

    def node_list(self, status: str) -> Answer | None:
        """`GET /api/v1/nodes?status=...`, as `api.list_nodes` answers (`status` is valid);
        None while the list is not built for this snapshot (Starlette builds it off the loop)."""
        snap = self.snap
        assert snap is not None
        built = snap.cache.get(api.node_list_key(status))
        if built is None:
            return None
        answer = self.lists[status] = Answer(self.revision, 200, *built)
        return answer


class HotPath:
    """Answers the hot routes of one app; `registry` is set while its lifespan runs."""

    def __init__(self, metrics: Metrics, token: str | None) -> None:
        self.metrics = metrics
        self.token = None if token is None else token.encode()
        self.registry: Any = None
        self.served = Prepared(None)

    def answer(self, scope: dict[str, Any]) -> Reply | None:
        """Status, headers, body and route template of the answer to an HTTP scope, or None.

        None means "not answered here": the caller passes the request to Starlette.
        """
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return None
        path: str = scope["path"]
        if path.startswith(_COMPONENTS):
            if not path.endswith("/node"):
                return None
            key = path[_CLASS_START:_CLASS_END]
            if not key or "/" in key:
                return None
            kind = 0
        elif path.startswith(_NODES):
            if len(path) > len(_NODES):
                if path[len(_NODES)] != "/":
                    return None
                key = path[_ID_START:]
                if not key or "/" in key:
                    return None
                kind = 1
            else:
                status = LIST_QUERIES.get(scope["query_string"])
                if status is None:
                    return None
                key = status
                kind = 2
        else:
            return None
        registry = self.registry
        if registry is None or scope.get("root_path"):
            return None
        inm = None
        if self.token is None:
            for name, value in scope["headers"]:
                if name == b"if-none-match":
                    inm = value
                    break
        else:
            auth = None
            for name, value in scope["headers"]:
                if name == b"if-none-match":
                    if inm is None:
                        inm = value
                elif name == b"authorization" and auth is None:
                    auth = value
            if auth is None or not bearer_matches(auth, self.token):
                return None  # Starlette's TokenAuth answers the 401

        snap = registry.snapshot  # the one read of the snapshot for this answer
        served = self.served
        if served.snap is not snap:
            served = self.served = Prepared(snap)
        if kind == 0:
            route = LOOKUP_ROUTE
            answer = served.lookups.get(key) or served.lookup(key)
        elif kind == 1:
            route = DETAIL_ROUTE
            answer = served.details.get(key) or served.detail(key)
        else:
            route = LIST_ROUTE
            listed = served.lists.get(key) or served.node_list(key)
            if listed is None:
                return None
            answer = listed
        if inm is not None and answer.etag is not None and (
            inm == answer.etag_bytes or api.etag_matches(inm.decode("latin-1"), answer.etag)
        ):
            return 304, answer.not_modified, b"", route
        return answer.status, answer.headers, answer.body, route
