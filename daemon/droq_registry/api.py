"""Starlette routes: read-only answers built from one snapshot each.

A handler takes `registry.snapshot` once and builds its body, ETag and
`X-Registry-Revision` from it (the change log and its floor included). Bodies of nodes
are pre-serialised in the snapshot, so a lookup is a dictionary hit and a few byte joins;
an answer that grows with the registry (a list of every node or source, /metrics) is
built in a worker thread (`offload.py`), so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, openapi
from .offload import Offload
from .snapshot import Snapshot, etag_of

SERVICE = "droq-registry-service"
DESCRIPTION = "Registry service for mapping executor nodes to their supported components"
STATUSES = ("active", "inactive", "deploying")

#: What a node id or a component class can be; anything else cannot be in the registry.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
COMPONENT_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


class JSONResponse(Response):
    """orjson-rendered JSON (Starlette's own uses the standard library)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _headers(snap: Snapshot, etag: str | None = None) -> dict[str, str]:
    headers = {"x-registry-revision": str(snap.revision), "cache-control": "no-cache"}
    if etag is not None:
        headers["etag"] = etag
    return headers


def _matches(request: Request, etag: str) -> bool:
    """If-None-Match with the weak comparison RFC 9110 asks for."""
    return etag_matches(request.headers.get("if-none-match"), etag)


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an If-None-Match value (the first such header, latin-1) matches `etag`."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.removeprefix("W/") == etag:
            return True
    return False


def ok(request: Request, snap: Snapshot, body: bytes, etag: str) -> Response:
    """200 with the body, or 304 when the client already has it."""
    headers = _headers(snap, etag)
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type="application/json")


def error(snap: Snapshot, status: int, detail: str) -> Response:
    return JSONResponse({"detail": detail}, status, _headers(snap))


def snapshot_of(request: Request) -> Snapshot:
    return request.app.state.registry.snapshot  # type: ignore[no-any-return]


def offload_of(request: Request) -> Offload:
    """The app's worker threads, for answers too big to build on the event loop."""
    return request.app.state.offload  # type: ignore[no-any-return]


async def root(request: Request) -> Response:
    snap = snapshot_of(request)
    return JSONResponse(
        {"service": SERVICE, "version": __version__, "description": DESCRIPTION},
        headers=_headers(snap),
    )


def state_counts(registry: Any, watcher: Any) -> dict[str, float]:
    """Counts of the served state, for /health and /metrics."""
    snap = registry.snapshot
    return {
        "revision": snap.revision,
        "nodes": len(snap.nodes),
        "components": snap.components,
        "files": len(snap.sources),
        "files_in_error": snap.files_in_error,
        "ready": 1 if registry.status.ready else 0,
        "watcher_up": 1 if watcher.state == "watching" else 0,
    }


async def health(request: Request) -> Response:
    state = request.app.state
    registry, watcher = state.registry, state.watch_status
    snap = registry.snapshot
    status = registry.status
    degraded = (
        watcher.state in ("polling", "waiting")
        or status.folder_present is False
        or status.database != "ok"
        or status.last_error is not None
    )
    counts = state_counts(registry, watcher)
    body = {
        "status": "degraded" if degraded else "healthy",
        "service": SERVICE,
        "version": __version__,
        "ready": status.ready,
        "revision": snap.revision,
        "watcher": {"state": watcher.state, "error": watcher.error, "restarts": watcher.restarts},
        "assets_dir": str(registry.folder),
        "assets_dir_present": status.folder_present,
        "last_reconcile_at": status.last_reconcile_at,
        "last_reconcile_ms": status.last_duration_ms,
        "last_reconcile_error": status.last_error,
        "database": {
            "path": str(registry.settings.db_path),
            "state": status.database,
            "error": status.database_error,
            "failing_since": status.failing_since,
        },
        "nodes": counts["nodes"],
        "components": counts["components"],
        "files": counts["files"],
        "files_in_error": counts["files_in_error"],
    }
    return JSONResponse(body, headers=_headers(snap))


async def ready(request: Request) -> Response:
    registry = request.app.state.registry
    snap = registry.snapshot
    if registry.status.ready:
        return JSONResponse({"status": "ready", "revision": snap.revision}, headers=_headers(snap))
    detail = "the first load of the node files has not committed yet"
    if registry.status.database != "ok" and registry.status.database_error:
        detail = registry.status.database_error
    elif registry.status.folder_present is False:
        detail = f"waiting for the assets folder {registry.folder}"
    return JSONResponse({"status": "starting", "detail": detail}, 503, _headers(snap))


def node_list_key(status: str) -> tuple[str, str]:
    """Where the snapshot keeps the answer of `GET /api/v1/nodes?status=...` once built."""
    return ("nodes", status)


def node_list(snap: Snapshot, status: str) -> tuple[bytes, str]:
    """Body and ETag of the node list: a walk of every node (run it off the event loop)."""
    views = [v for _, v in sorted(snap.nodes.items()) if status == "all" or v.status == status]
    parts = [
        b'{"metadata":' + v.node_json + b',"components_count":' + str(len(v.paths)).encode() + b"}"
        for v in views
    ]
    body = b'{"nodes":[' + b",".join(parts) + b'],"total_nodes":' + str(len(views)).encode() + b"}"
    return body, etag_of(body)


async def list_nodes(request: Request) -> Response:
    snap = snapshot_of(request)
    status = request.query_params.get("status", "active")
    if status not in STATUSES and status != "all":
        return error(snap, 400, "status must be one of active, inactive, deploying, all")
    answer = await offload_of(request).once(snap, node_list_key(status), lambda: node_list(snap, status))
    return ok(request, snap, *answer)


async def get_node(request: Request) -> Response:
    snap = snapshot_of(request)
    node_id = request.path_params["node_id"]
    view = snap.nodes.get(node_id) if NODE_ID.fullmatch(node_id) else None
    if view is None:
        return error(snap, 404, node_missing_detail(node_id))
    return ok(request, snap, *view.detail())


def _candidates(snap: Snapshot, component_class: str) -> tuple[str, ...]:
    if not COMPONENT_CLASS.fullmatch(component_class):
        return ()
    return snap.index.get(component_class, ())


def _component_missing(snap: Snapshot, component_class: str) -> Response:
    return error(snap, 404, component_missing_detail(component_class))


def component_missing_detail(component_class: str) -> str:
    return f"Component {_quote(component_class)} not found in any executor node"


def node_missing_detail(node_id: str) -> str:
    return f"Node {_quote(node_id)} not found in registry"


async def component_node(request: Request) -> Response:
    snap = snapshot_of(request)
    component_class = request.path_params["component_class"]
    candidates = _candidates(snap, component_class)
    if not candidates:
        return _component_missing(snap, component_class)
    return ok(request, snap, *snap.nodes[candidates[0]].lookup(component_class))


async def component_nodes(request: Request) -> Response:
    snap = snapshot_of(request)
    component_class = request.path_params["component_class"]
    candidates = _candidates(snap, component_class)
    if not candidates:
        return _component_missing(snap, component_class)
    if len(candidates) <= INLINE_CANDIDATES:
        body = _component_nodes(snap, component_class, candidates)
    else:  # every candidate's whole node: a class many nodes declare makes megabytes
        body = await offload_of(request).run(_component_nodes, snap, component_class, candidates)
    return ok(request, snap, body, etag_of(body))


#: Up to this many candidates, `GET /api/v1/components/{class}/nodes` is built on the loop.
INLINE_CANDIDATES = 4


def _component_nodes(snap: Snapshot, component_class: str, candidates: tuple[str, ...]) -> bytes:
    views = [snap.nodes[n] for n in candidates]
    parts = [
        b'{"node":' + v.node_json + b',"module_path":' + orjson.dumps(v.paths[component_class]) + b"}"
        for v in views
    ]
    return (
        b'{"component_class":' + orjson.dumps(component_class) + b',"nodes":['
        + b",".join(parts) + b'],"total_nodes":' + str(len(views)).encode() + b"}"
    )


async def list_sources(request: Request) -> Response:
    snap = snapshot_of(request)

    def build() -> tuple[bytes, str]:
        rows = [
            {
                "path": s.path,
                "node_id": s.node_id,
                "state": s.state,
                "error": s.error,
                "content_hash": s.content_hash,
                "applied_at": s.applied_at,
                "updated_at": s.updated_at,
                "serving_last_good": s.state != "ok" and s.node_id is not None
                and s.node_id in snap.nodes and snap.nodes[s.node_id].source == s.path,
            }
            for _, s in sorted(snap.sources.items())
        ]
        body = orjson.dumps(
            {
                "sources": rows,
                "total_sources": len(rows),
                "errors": sum(1 for r in rows if r["state"] != "ok"),
            }
        )
        return body, etag_of(body)

    return ok(request, snap, *await offload_of(request).once(snap, "sources", build))


MAX_WAIT_SECONDS = 60.0
_NUMBER = re.compile(r"[0-9]{1,64}")


def _since(value: str | None, snap: Snapshot, name: str) -> int | str:
    """The revision a client has seen, or the reason it cannot be used."""
    if value is None or value == "":
        return 0
    if not _NUMBER.fullmatch(value):
        return f"{name} must be a revision number (a whole number, 0 or more), got {_quote(value)}"
    since = int(value)
    if since > snap.revision:
        return f"{name}={since} is ahead of the registry's revision {snap.revision}"
    return since


def _expired(snap: Snapshot, since: int) -> str | None:
    if not snap.changes.kept(since):
        return (
            f"changes after revision {since} are no longer kept (the log starts after revision "
            f"{snap.changes.floor}); re-list the registry and follow changes from the X-Registry-Revision "
            "of that answer"
        )
    return None


def _gone(snap: Snapshot, detail: str) -> Response:
    return JSONResponse({"detail": detail, "revision": snap.revision}, 410, _headers(snap))


async def list_changes(request: Request) -> Response:
    """The change log after `since`; with `wait`, held until a change commits (or the
    service stops: then it answers at once with what there is)."""
    registry = request.app.state.registry
    snap = registry.snapshot
    since = _since(request.query_params.get("since"), snap, "since")
    if isinstance(since, str):
        return error(snap, 400, since)
    raw_wait = request.query_params.get("wait")
    wait = 0.0
    if raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            return error(snap, 400, f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
    if wait and snap.revision == since and snap.changes.kept(since):
        await request.app.state.feed.wait_beyond(since, wait)
        snap = registry.snapshot
    # From here on only `snap` is read: its revision, log and floor belong together.
    expired = _expired(snap, since)
    if expired:
        return _gone(snap, expired)
    log = snap.changes
    records = b",".join(log.encoded[log.span(since, snap.revision)])
    body = b'{"revision":%d,"changes":[%b]}' % (snap.revision, records)
    return ok(request, snap, body, etag_of(body))


async def events(request: Request) -> Response:
    """Server-Sent Events: every change record, `id` = its revision; resumable."""
    registry = request.app.state.registry
    feed = request.app.state.feed
    snap = registry.snapshot
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    if raw is None:
        start: int | str = snap.revision
    else:
        start = _since(raw.strip(), snap, "Last-Event-ID" if request.headers.get("last-event-id") else "since")
    if isinstance(start, str):
        return error(snap, 400, start)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        last = int(start)
        while not feed.closed.is_set():
            current = registry.snapshot  # read once per round: revision, log and floor agree
            expired = _expired(current, last)
            if expired:
                yield ServerSentEvent(
                    orjson.dumps({"revision": current.revision, "detail": expired}).decode(),
                    event="relist",
                    id=str(current.revision),
                )
                last = current.revision
            log = current.changes
            span = log.span(last, current.revision)
            revisions, encoded = log.revisions[span], log.encoded[span]
            for i, record in enumerate(encoded):
                # Only a revision's last record carries the id: a client cut off in the middle
                # of a revision resumes from the one before and gets all of it again.
                complete = i + 1 == len(revisions) or revisions[i + 1] != revisions[i]
                yield ServerSentEvent(
                    record.decode(),
                    event="change",
                    id=str(revisions[i]) if complete else None,
                )
            last = current.revision
            await feed.wait_beyond(last, KEEPALIVE_SECONDS)

    # A stream ends when the feed closes, which the server does first thing when it stops
    # (RegistryApp.stop_following). sse-starlette also watches for the stop signal; its
    # grace period lets the stream end on its own, as a complete response, instead of
    # being cut (which uvicorn logs as an error).
    return EventSourceResponse(
        stream(),
        headers=_headers(snap),
        ping=KEEPALIVE_SECONDS,
        shutdown_grace_period=STREAM_GRACE_SECONDS,
    )


#: A comment line this often keeps idle streams open through proxies.
KEEPALIVE_SECONDS = 15.0
#: How long a stream may take to end on its own at shutdown before it is cut.
STREAM_GRACE_SECONDS = 1.0


def _quote(value: str) -> str:
    """A path parameter as it goes back into a message: shortened, quoted like the old API."""
    return "'" + (value if len(value) <= 256 else value[:253] + "...") + "'"


async def openapi_document(request: Request) -> Response:
    """The API contract (OpenAPI 3.1), built once (off the event loop)."""
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        auth = state.auth
        state.openapi = await offload_of(request).run(lambda: orjson.dumps(openapi.build(auth=auth)))
    return Response(state.openapi, media_type="application/json")


async def metrics(request: Request) -> Response:
    """Prometheus text format (written off the event loop: prometheus-client is thread-safe,
    and the state it reports is read from the immutable snapshot)."""
    body = await offload_of(request).run(generate_latest, request.app.state.metrics.registry)
    return Response(body, headers={"cache-control": "no-cache"}, media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer JSON too."""
    assert isinstance(exc, HTTPException)
    snap = snapshot_of(request)
    headers = dict(exc.headers or {}) | _headers(snap)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers)


def routes() -> list[Route]:
    get: Callable[[str, Any], Route] = lambda path, endpoint: Route(path, endpoint, methods=["GET"])
    return [
        get("/", root),
        get("/health", health),
        get("/ready", ready),
        get("/api/v1/nodes", list_nodes),
        get("/api/v1/nodes/{node_id}", get_node),
        get("/api/v1/components/{component_class}/node", component_node),
        get("/api/v1/components/{component_class}/nodes", component_nodes),
        get("/api/v1/sources", list_sources),
        get("/api/v1/changes", list_changes),
        get("/api/v1/events", events),
        get("/metrics", metrics),
        get("/openapi.json", openapi_document),
    ]
