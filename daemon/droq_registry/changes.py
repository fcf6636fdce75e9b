"""Following the change log: `GET /api/v1/changes` (with long-poll) and the event stream.

Both are plain ASGI apps that `app.RegistryApp` calls before Starlette (whose router
reaches the same apps otherwise), and a plain GET long-poll is held by the protocol with
no task at all (`Changes.asked`, `Changes.held`). Each answer is read from one snapshot
(its revision, change log and floor belong together) and sent as `answers.py` prepares
it, once per snapshot for every follower that had the same revision. A waiting request
holds no thread: the feed (`feed.Feed`) wakes it when a revision commits, and it answers
early when the server releases it (`release.Release`: shutdown, the connection cap, its
client gone). A stream that falls further behind than its connection may buffer is cut
(`Release.room`); its client resumes with Last-Event-ID and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from . import answers, cursors
from .answers import Answer
from .cursors import Poll
from .feed import Feed
from .release import Outlet, Release, release_of

log = logging.getLogger("droq_registry")

#: A comment line this often keeps idle streams open through proxies (one shared timer).
KEEPALIVE_SECONDS = 15.0

Scope = MutableMapping[str, Any]


async def _send_answer(scope: Scope, send: Any, answer: Answer) -> int:
    status, headers, body = answer.reply(answers.if_none_match(scope["headers"]))
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})
    return status


class Follow:
    """An ASGI app of the change log. `serve` returns the status it answered, for the
    metrics of the caller that counts it (`app.RegistryApp`), which calls `let_go` after it
    as `__call__` does (one coroutine less for each request held open)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self.serve(scope, receive, send)
        finally:
            self.let_go(scope)

    async def serve(self, scope: Scope, receive: Any, send: Any) -> int:
        """Answer the request; the status it answered."""
        raise NotImplementedError

    @staticmethod
    def let_go(scope: Scope) -> None:
        """After `serve`, whatever happened in it: the request's objects can be freed."""
        release = release_of(scope)
        if release is not None:
            # The scope holds the release, whose outlet holds the request's cycle, which
            # holds the scope: a reference cycle, which the collector alone would free,
            # and which `server.freeze_after_commit` could freeze for good. Cut it.
            release.outlet = None


def changes_after(snap: Any, since: int, epoch: str | None) -> Answer:
    """The answer of `snap` to a cursor: the changes after it, or why it cannot be followed (410)."""
    prepared = answers.of(snap)
    refused = cursors.refused(snap, since, epoch, "since")
    return prepared.gone(refused) if refused else prepared.changes(since)


class Changes(Follow):
    """`GET /api/v1/changes?since=N[&epoch=E][&wait=S]`: the change log after `since` (of
    history `epoch`, when given); with `wait`,
    held until a change commits (or the service stops, or the server releases it: then it
    answers at once with what there is).

    Held two ways. On our server the protocol holds a plain GET itself (`asked`, then
    `held`: no task, no ASGI scope, the fan-out writes its answer); any other request (one
    pipelined behind another, a HEAD, another server) runs `serve` as an ASGI app."""

    @staticmethod
    def asked(snap: Any, query_string: bytes) -> Answer | Poll:
        """The answer now, from `snap` (one read: its revision, log and floor agree), or
        the long-poll to hold until a revision above `since` commits."""
        since, epoch, wait, malformed = cursors.long_poll(query_string)
        if malformed is not None:
            return answers.of(snap).error(400, malformed)
        assert isinstance(since, int)
        if wait and snap.revision == since and cursors.refused(snap, since, epoch, "since") is None:
            return Poll(since, epoch, wait)
        return changes_after(snap, since, epoch)

    @staticmethod
    def held(registry: Any, feed: Feed, release: Release, poll: Poll, inm: bytes | None,
             done: Callable[[int], None]) -> None:
        """Hold a long-poll with no task: the fan-out answers it through `release`'s outlet
        (`Polled`), or, once its wait is over (its timeout, its release, the service
        stopping), it answers then with what there is. `done(status)` follows its answer
        (0: none could be sent, and the connection should close)."""
        polled = Polled(registry, feed, release, poll.since, poll.epoch, inm)

        def over(_: bool) -> None:
            feed.unsubscribe(polled)
            outlet, status = release.outlet, polled.status
            release.outlet = None  # see `Follow.let_go`
            try:
                if not status and outlet is not None:
                    answer = changes_after(registry.snapshot, poll.since, poll.epoch)
                    status, headers, body = answer.reply(inm)
                    outlet.answer(status, headers, body)  # nothing when the client has gone
            except Exception:  # a bug must cost only this answer: its connection closes
                log.exception("answering a long-poll failed")
                status = 0
            done(status)

        feed.attend(release, polled.waiter, poll.wait, over)
        feed.subscribe(polled)  # last: a request not held (`attend` failed) is never answered here

    async def serve(self, scope: Scope, receive: Any, send: Any) -> int:
        state = scope["app"].state
        registry, feed = state.registry, state.feed
        asked = self.asked(registry.snapshot, scope["query_string"])
        if isinstance(asked, Answer):
            return await _send_answer(scope, send, asked)
        release = release_of(scope)
        if release is not None and release.outlet is not None and scope["method"] == "GET":
            # On our server the feed's fan-out answers it itself (`Polled`).
            polled = Polled(registry, feed, release, asked.since, asked.epoch, answers.if_none_match(scope["headers"]))
            feed.subscribe(polled)
            try:
                await feed.until_released(release, polled.waiter, asked.wait)
            finally:
                feed.unsubscribe(polled)
            if polled.status:
                return polled.status
        elif release is not None:
            await feed.wait_beyond(asked.since, asked.wait, release)
            feed.hold(release)  # woken by a fan-out: its next request waits until it is over
        else:
            async with _released(receive) as release:
                await feed.wait_beyond(asked.since, asked.wait, release)
        return await _send_answer(scope, send, changes_after(registry.snapshot, asked.since, asked.epoch))


class Events(Follow):
    """Server-Sent Events: every change record, `id` = `<epoch>:<revision>`; resumable with
    Last-Event-ID (or `since` and `epoch`). A cursor of another history, or one this log no
    longer keeps, gets a `relist` event first, then the live events."""

    async def serve(self, scope: Scope, receive: Any, send: Any) -> int:
        state = scope["app"].state
        registry, feed = state.registry, state.feed
        snap = registry.snapshot
        header = cursors.header(scope, b"last-event-id")
        cursor = cursors.cursor(header, scope["query_string"], snap)
        if isinstance(cursor, str):
            return await _send_answer(scope, send, answers.of(snap).error(400, cursor))
        name = "Last-Event-ID" if header is not None else "since"
        await send({"type": "http.response.start", "status": 200, "headers": list(answers.of(snap).stream_headers())})
        if scope["method"] != "HEAD":
            release = release_of(scope)
            if release is not None:
                await _stream(registry, feed, release, send, cursor, name)
            else:
                async with _released(receive) as release:
                    await _stream(registry, feed, release, send, cursor, name)
        # Every revision sent so far is whole, so the client resumes with Last-Event-ID.
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200


async def _stream(
    registry: Any, feed: Feed, release: Release, send: Any, cursor: tuple[int, str | None], name: str
) -> None:
    """Send what commits after the cursor until the feed closes or the release is set. A
    cursor of another history, or one this log no longer keeps, gets a `relist` event first.

    On our server (the release has an outlet) the feed writes to the connection itself
    (`Pushed`) and this task only waits for the end; elsewhere it sends each round itself."""
    last, epoch = cursor
    if release.outlet is not None:
        pushed = Pushed(registry, release.outlet, last, epoch, name)
        pushed.deliver()  # what the cursor has not seen yet; then the feed's commits
        feed.subscribe(pushed)
        try:
            await feed.until_released(release, feed.opened(release))
        finally:
            feed.unsubscribe(pushed)
        return
    while feed.following(release):
        current = registry.snapshot  # read once per round: revision, epoch, log and floor agree
        refused = cursors.refused(current, last, epoch, name)
        frames = answers.relist_frame(current, refused) if refused else answers.of(current).frames(last)
        last, epoch = current.revision, current.epoch
        if frames and not await _send_frames(release, send, frames):
            return
        news = await feed.wait_beyond(last, None, release)
        if not news and feed.following(release) and not await _send_frames(release, send, answers.KEEPALIVE_FRAME):
            return  # the keep-alive tick, and no room even for its comment


class Pushed:
    """An event stream the feed writes to (`release.Subscriber`): after each commit, the frames
    after the revision it had, the same bytes for every stream that had that revision.
    A stream that lags past its bound is cut by the server (`Outlet.push`), which releases
    its request."""

    __slots__ = ("epoch", "last", "name", "outlet", "registry")

    def __init__(self, registry: Any, outlet: Outlet, last: int, epoch: str | None, name: str) -> None:
        self.registry = registry
        self.outlet = outlet
        self.last = last
        self.epoch = epoch
        self.name = name

    def deliver(self) -> None:
        """Write what committed after `last` (nothing when it already has this snapshot)."""
        current = self.registry.snapshot  # read once: revision, epoch, log and floor agree
        if current.revision == self.last and current.epoch == self.epoch:
            return
        refused = cursors.refused(current, self.last, self.epoch, self.name)
        frames = answers.relist_frame(current, refused) if refused else answers.of(current).frames(self.last)
        self.last, self.epoch = current.revision, current.epoch
        if frames:
            self.outlet.push(frames)

    def keep_alive(self) -> None:
        """Write the keep-alive comment."""
        self.outlet.push(answers.KEEPALIVE_FRAME)


class Polled:
    """A long-poll the feed answers (`release.Subscriber`): once the revision is above `since`,
    the same prepared answer for every long-poll that had `since`, written to its
    connection whole; its request's task then only ends. `status` is what it answered
    (0: not answered by the feed; the request answers itself, as after a timeout)."""

    __slots__ = ("epoch", "feed", "inm", "registry", "release", "since", "status", "waiter")

    def __init__(self, registry: Any, feed: Feed, release: Release, since: int, epoch: str | None,
                 inm: bytes | None) -> None:
        self.registry = registry
        self.feed = feed
        self.release = release
        self.since = since
        self.epoch = epoch
        self.inm = inm
        self.status = 0
        self.waiter = feed.opened(release)

    def deliver(self) -> asyncio.Future[bool] | None:
        """Answer, if a revision above `since` has committed and the request still waits."""
        current = self.registry.snapshot
        if current.revision <= self.since or self.waiter.done():
            return None  # nothing new yet, or its task answers (its timeout, its release)
        prepared = answers.of(current)
        refused = cursors.refused(current, self.since, self.epoch, "since")
        status, headers, body = (prepared.gone(refused) if refused else prepared.changes(self.since)).reply(self.inm)
        outlet = self.release.outlet
        assert outlet is not None
        self.feed.hold(self.release)  # its next request is read once the fan-out is over
        if not outlet.answer(status, headers, body):
            return None  # the client has gone: its release ends the request
        self.status = status
        return self.waiter

    def keep_alive(self) -> None:
        """A long-poll has no keep-alive."""


async def _send_frames(release: Release, send: Any, frames: bytes) -> bool:
    """Send `frames` unless the connection has no room for them (then the server has cut it)."""
    if not release.room(len(frames)):
        return False
    await send({"type": "http.response.body", "body": frames, "more_body": True})
    return True


@asynccontextmanager
async def _released(receive: Any) -> AsyncIterator[Release]:
    """A release for a follower the server gave none (another server than ours, such as
    the tests' client): set by a task that watches for the client's disconnect. Ours
    sets the release it attached itself when the client goes, and needs no such task."""
    own = Release()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        own.set()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            yield own
        finally:
            group.cancel_scope.cancel()


#: The route table's handlers (`routes.TABLE`).
list_changes = Changes()
events = Events()
