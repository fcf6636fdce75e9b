"""Following the change log: `GET /api/v1/changes` (with long-poll) and the event stream.

Each answer is read from one snapshot, whose revision, change log and floor belong
together, and sent as `answers.py` prepares it; a waiting request holds no thread and
is woken by `feed.Feed` when a revision commits, and answers early (as at shutdown)
when the server releases it to make room for a new connection (`feed.Release`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from . import answers
from .api import respond
from .feed import release_of
from .snapshot import Snapshot, etag_of

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
    service stops, or the server releases it: then it answers at once with what there is)."""
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
        await request.app.state.feed.wait_beyond(since, wait, release_of(request.scope))
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
    release = release_of(request.scope)
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
        while feed.following(release):
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
            await feed.wait_beyond(last, KEEPALIVE_SECONDS, release)

    # A stream ends when the feed closes, which the server does first thing when it stops
    # (RegistryApp.stop_following), or when the server releases it for room (the same
    # end: every revision sent so far is whole, so the client resumes with Last-Event-ID). sse-starlette also watches for the stop signal; its
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
