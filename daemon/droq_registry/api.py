"""Starlette endpoints: thin adapters that send the answers `answers.py` prepares.

A handler reads `registry.snapshot` once, asks that snapshot's `answers.Answers` for the
answer (or has a body built off the event loop first, `offload.py`, for an answer that
grows with the registry) and returns it as a `Sent` response: the status, headers and
body exactly as prepared, which are the bytes the fast path (`hotpath.py`) sends too.
The routes these handlers serve are declared once, in `routes.py`; following the change
log (long-poll and event stream) is in `changes.py`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import __version__, answers, bodies
from .answers import Answer, Answers
from .offload import Offload
from .snapshot import Snapshot, etag_of
from .vocabulary import STATUSES

SERVICE = "droq-registry-service"
DESCRIPTION = "Registry service for mapping executor nodes to their supported components"


class Sent(Response):
    """A prepared answer as Starlette sends it: status, headers and body as they are."""

    def __init__(self, status: int, headers: answers.Headers, body: bytes) -> None:
        self.status_code = status
        self.raw_headers = list(headers)
        self.body = body
        self.background = None


def respond(request: Request, answer: Answer) -> Response:
    """`answer` for this request: its 304 when the client's If-None-Match matches."""
    return Sent(*answer.reply(answers.if_none_match(request.scope["headers"])))


def snapshot_of(request: Request) -> Snapshot:
    return request.app.state.registry.snapshot  # type: ignore[no-any-return]


def answers_of(request: Request) -> Answers:
    """The prepared answers of the snapshot served now (read once per answer)."""
    return answers.of(snapshot_of(request))


def offload_of(request: Request) -> Offload:
    """The app's worker threads, for answers too big to build on the event loop."""
    return request.app.state.offload  # type: ignore[no-any-return]


async def root(request: Request) -> Response:
    answer = answers_of(request).json(200, {"service": SERVICE, "version": __version__, "description": DESCRIPTION})
    return respond(request, answer)


def state_counts(snap: Snapshot, registry: Any, watcher: Any) -> dict[str, float]:
    """Counts of the served state `snap` (read once by the caller, with whatever else it
    says of it: the writer thread may publish the next one between two reads), for
    /health and /metrics."""
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
    counts = state_counts(snap, registry, watcher)
    body = {
        "status": "degraded" if degraded else "healthy",
        "service": SERVICE,
        "version": __version__,
        "ready": status.ready,
        **answers.position(snap),
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
    return respond(request, answers.of(snap).json(200, body))


async def ready(request: Request) -> Response:
    registry = request.app.state.registry
    snap = registry.snapshot
    prepared = answers.of(snap)
    if registry.status.ready:
        return respond(request, prepared.json(200, {"status": "ready", "revision": snap.revision}))
    detail = "the first load of the node files has not committed yet"
    if registry.status.database != "ok" and registry.status.database_error:
        detail = registry.status.database_error
    elif registry.status.folder_present is False:
        detail = f"waiting for the assets folder {registry.folder}"
    return respond(request, prepared.json(503, {"status": "starting", "detail": detail}))


#: What `GET /api/v1/nodes?status=` accepts: a node status, or every node.
LIST_FILTERS = (*STATUSES, "all")
#: Query strings of the node list the fast path answers -> the status they select (exactly
#: what Starlette's query parsing gives for them); any other query goes through Starlette.
LIST_QUERIES = {b"": "active", **{f"status={s}".encode(): s for s in LIST_FILTERS}}


async def list_nodes(request: Request) -> Response:
    prepared = answers_of(request)
    status = request.query_params.get("status", "active")
    if status not in LIST_FILTERS:
        return respond(request, prepared.error(400, f"status must be one of {', '.join(LIST_FILTERS)}"))
    snap = prepared.snap
    assert snap is not None
    await offload_of(request).once(snap, bodies.node_list_key(status), lambda: bodies.node_list(snap, status))
    listed = prepared.built_list(status)
    assert listed is not None
    return respond(request, listed)


async def get_node(request: Request) -> Response:
    return respond(request, answers_of(request).detail(request.path_params["node_id"]))


async def component_node(request: Request) -> Response:
    return respond(request, answers_of(request).lookup(request.path_params["component_class"]))


#: Up to this many candidates, `GET /api/v1/components/{class}/nodes` is built on the loop.
INLINE_CANDIDATES = 4


async def component_nodes(request: Request) -> Response:
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None
    component_class = request.path_params["component_class"]
    candidates = prepared.candidates(component_class)
    if not candidates:
        return respond(request, prepared.error(404, bodies.component_missing_detail(component_class)))
    if len(candidates) <= INLINE_CANDIDATES:
        body = bodies.candidates(snap, component_class, candidates)
    else:  # every candidate's whole node: a class many nodes declare makes megabytes
        body = await offload_of(request).run(bodies.candidates, snap, component_class, candidates)
    return respond(request, prepared.ok(body, etag_of(body)))


async def list_sources(request: Request) -> Response:
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None
    built = await offload_of(request).once(snap, "sources", lambda: bodies.sources(snap))
    return respond(request, prepared.ok(*built))


async def openapi_document(request: Request) -> Response:
    """The API contract (OpenAPI 3.1), built from the route table on first request (off
    the event loop) and kept for the life of the app."""
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        state.openapi = await offload_of(request).run(state.contract)
    return Response(state.openapi, media_type="application/json")


async def metrics(request: Request) -> Response:
    """Prometheus text format (written off the event loop: prometheus-client is thread-safe,
    and the state it reports is read from the immutable snapshot)."""
    body = await offload_of(request).run(generate_latest, request.app.state.metrics.registry)
    return Response(body, headers={"cache-control": "no-cache"}, media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer JSON too, with the snapshot's headers."""
    assert isinstance(exc, HTTPException)
    return respond(request, answers_of(request).json(exc.status_code, {"detail": exc.detail}, exc.headers))


async def server_error(request: Request, exc: Exception) -> Response:
    """A handler that raised (a bug): Starlette's ServerErrorMiddleware answers it outside
    every middleware, so the answer is JSON with the snapshot's headers here, as every other
    answer is. The exception goes on to the server, which logs its traceback."""
    detail = f"internal error ({type(exc).__name__}); the service logged it, and keeps serving"
    return respond(request, answers_of(request).error(500, detail))

