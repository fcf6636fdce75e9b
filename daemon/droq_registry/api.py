"""Starlette endpoints: thin adapters that send the answers `answers.py` prepares.

A handler reads `registry.snapshot` once, asks that snapshot's `answers.Answers` for the
answer (or has a body built off the event loop first, `offload.py`, for an answer that
grows with the registry) and returns it as a `Sent` response: the status, headers and
body exactly as prepared, which are the bytes the fast path (`hotpath.py`) sends too.
The routes these handlers serve are declared once, in `routes.py`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import __version__, answers
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
    await offload_of(request).once(snap, answers.node_list_key(status), lambda: answers.node_list(snap, status))
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
        return respond(request, prepared.error(404, answers.component_missing_detail(component_class)))
    if len(candidates) <= INLINE_CANDIDATES:
        body = answers.candidates(snap, component_class, candidates)
    else:  # every candidate's whole node: a class many nodes declare makes megabytes
        body = await offload_of(request).run(answers.candidates, snap, component_class, candidates)
    return respond(request, prepared.ok(body, etag_of(body)))


async def list_sources(request: Request) -> Response:
    prepared = answers_of(request)
    snap = prepared.snap
    assert snap is not None
    built = await offload_of(request).once(snap, "sources", lambda: answers.sources(snap))
    return respond(request, prepared.ok(*built))


#: The longest `wait` a long-poll of `GET /api/v1/changes` may ask for.
MAX_WAIT_SECONDS = 60.0
_NUMBER = re.compile(r"[0-9]{1,64}")


def _since(value: str | None, snap: Snapshot, name: str) -> int | str:
    """The revision a client has seen, or the reason it cannot be used."""
    if value is None or value == "":
        return 0
    if not _NUMBER.fullmatch(value):
        return f"{name} must be a revision number (a whole number, 0 or more), got {answers.quote(value)}"
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


async def list_changes(request: Request) -> Response:
    """The change log after `since`; with `wait`, held until a change commits (or the
    service stops: then it answers at once with what there is)."""
    registry = request.app.state.registry
    snap = registry.snapshot
    since = _since(request.query_params.get("since"), snap, "since")
    if isinstance(since, str):
        return respond(request, answers.of(snap).error(400, since))
    raw_wait = request.query_params.get("wait")
    wait = 0.0
    if raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            detail = f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
            return respond(request, answers.of(snap).error(400, detail))
    if wait and snap.revision == since and snap.changes.kept(since):
        await request.app.state.feed.wait_beyond(since, wait)
        snap = registry.snapshot
    # From here on only `snap` is read: its revision, log and floor belong together.
    prepared = answers.of(snap)
    expired = _expired(snap, since)
    if expired:
        return respond(request, prepared.gone(expired))
    body = answers.changes_body(snap, since)
    return respond(request, prepared.ok(body, etag_of(body)))


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
        return respond(request, answers.of(snap).error(400, start))

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
        headers=answers.of(snap).text_headers(),
        ping=KEEPALIVE_SECONDS,
        shutdown_grace_period=STREAM_GRACE_SECONDS,
    )


#: A comment line this often keeps idle streams open through proxies.
KEEPALIVE_SECONDS = 15.0
#: How long a stream may take to end on its own at shutdown before it is cut.
STREAM_GRACE_SECONDS = 1.0


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
