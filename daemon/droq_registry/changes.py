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
from .model import EPOCH_PATTERN
from .snapshot import Snapshot, etag_of

#: The longest `wait` a long-poll of `GET /api/v1/changes` may ask for.
MAX_WAIT_SECONDS = 60.0
_NUMBER = re.compile(r"[0-9]{1,64}")
_EPOCH = re.compile(EPOCH_PATTERN)


def _revision(value: str | None, name: str) -> int | str:
    """A revision number a client sent, or why it is malformed (an answer 400)."""
    if value is None or value == "":
        return 0
    if not _NUMBER.fullmatch(value):
        return f"{name} must be a revision number (a whole number, 0 or more), got {answers.quote(value)}"
    return int(value)


def _epoch(value: str | None, name: str) -> str | None:
    """Why an epoch a client sent is malformed (an answer 400), or None when it is fine."""
    if value is None or _EPOCH.fullmatch(value):
        return None
    return f"{name} must be an epoch (1 to 32 of A-Z a-z 0-9 _ -), got {answers.quote(value)}"


def _event_id(value: str, name: str) -> tuple[int, str | None] | str:
    """A Last-Event-ID: `<epoch>:<revision>`, or a bare revision (an older client's, taken
    in the current epoch). The reason it is malformed otherwise."""
    epoch, colon, number = value.rpartition(":")
    if _NUMBER.fullmatch(number) and (not colon or _EPOCH.fullmatch(epoch)):
        return int(number), epoch if colon else None
    return f"{name} must be <epoch>:<revision> or a revision number, got {answers.quote(value)}"


def _refused(snap: Snapshot, since: int, epoch: str | None, name: str) -> str | None:
    """Why `snap` cannot answer a cursor `since` of history `epoch` (an answer 410: the
    client lists again, or takes the new cursor when it already has the content hash)."""
    then = (
        f"list the registry again, unless your state has content hash {snap.content_hash}, and follow "
        f"changes from revision {snap.revision} of epoch {snap.epoch}"
    )
    if epoch is not None and epoch != snap.epoch:
        return f"epoch {epoch} is another history than this registry's (epoch {snap.epoch}); {then}"
    if since > snap.revision:
        return (
            f"{name}={since} is ahead of this registry's revision {snap.revision}, so it counts in another"
            f" history; {then}"
        )
    if not snap.changes.kept(since):
        return (
            f"changes after revision {since} are no longer kept (the log starts after revision "
            f"{snap.changes.floor}); {then}"
        )
    return None


async def list_changes(request: Request) -> Response:
    """The change log after `since` (of history `epoch`, when given); with `wait`, held
    until a change commits (or the service stops, or the server releases it: then it
    answers at once with what there is)."""
    registry = request.app.state.registry
    snap = registry.snapshot
    params = request.query_params
    since = _revision(params.get("since"), "since")
    epoch = params.get("epoch")
    malformed = since if isinstance(since, str) else _epoch(epoch, "epoch")
    raw_wait = params.get("wait")
    wait = 0.0
    if malformed is None and raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            malformed = f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
    if malformed is not None:
        return respond(request, answers.of(snap).error(400, malformed))
    assert isinstance(since, int)
    if wait and snap.revision == since and _refused(snap, since, epoch, "since") is None:
        await request.app.state.feed.wait_beyond(since, wait, release_of(request.scope))
        snap = registry.snapshot
    # From here on only `snap` is read: its revision, epoch, log and floor belong together.
    prepared = answers.of(snap)
    refused = _refused(snap, since, epoch, "since")
    if refused:
        return respond(request, prepared.gone(refused))
    body = answers.changes_body(snap, since)
    return respond(request, prepared.ok(body, etag_of(body)))


async def events(request: Request) -> Response:
    """Server-Sent Events: every change record, `id` = `<epoch>:<revision>`; resumable with
    Last-Event-ID (or `since` and `epoch`). A cursor of another history, or one this log no
    longer keeps, gets a `relist` event first, then the live events."""
    registry = request.app.state.registry
    feed = request.app.state.feed
    release = release_of(request.scope)
    snap = registry.snapshot
    header = request.headers.get("last-event-id")
    cursor: tuple[int, str | None] | str
    if header is not None:
        cursor = _event_id(header.strip(), "Last-Event-ID")
    elif "since" in request.query_params or "epoch" in request.query_params:
        since, epoch = _revision(request.query_params.get("since"), "since"), request.query_params.get("epoch")
        cursor = since if isinstance(since, str) else _epoch(epoch, "epoch") or (since, epoch)
    else:
        cursor = (snap.revision, snap.epoch)
    if isinstance(cursor, str):
        return respond(request, answers.of(snap).error(400, cursor))
    name = "Last-Event-ID" if header is not None else "since"

    async def stream() -> AsyncIterator[ServerSentEvent]:
        last, epoch = cursor
        while feed.following(release):
            current = registry.snapshot  # read once per round: revision, epoch, log and floor agree
            refused = _refused(current, last, epoch, name)
            if refused:
                yield ServerSentEvent(
                    orjson.dumps({**answers.position(current), "detail": refused}).decode(),
                    event="relist",
                    id=f"{current.epoch}:{current.revision}",
                )
                last = current.revision
            epoch = current.epoch
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
                    id=f"{epoch}:{revisions[i]}" if complete else None,
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
