"""Waking readers when a revision commits: long-polls and event streams wait here.

A waiter is one future in the feed's set, and nothing else: no task of its own, no
thread, no database connection, no queue. A commit (`notify`) resolves every future at
once; a long-poll's timeout is one timer handle on the event loop; the event streams'
keep-alive comes from one shared timer (`keep_alive`), not one per stream. So an idle
follower costs a few hundred bytes here, and a slow one cannot hold up the reconciler or
anyone else: what it has not read waits in its own connection's buffer (`Release.room`).

A follower stops following in two ways, and both take the same path: the service stops
(`Feed.close`, every follower at once), or the server needs one follower's connection
back (its `Release`, set by the connection gate when the connection cap is reached, or
when the client has gone). A long-poll then answers at once with what it has, and an
event stream ends as a complete response, which its client resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

#: The key of a follower request's `Release` in its ASGI scope's "extensions".
RELEASE = "droq_registry.release"


class Outlet(Protocol):
    """What the server lets a follower know of its connection (server.LimitedProtocol)."""

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may be queued for the client; False: it lags too far
        behind and its connection has been cut (the client resumes with Last-Event-ID)."""


class Release:
    """One follower request's way out, put in its scope by the server (`attach`).

    `set` wakes only this request's wait, so releasing one follower costs nothing to the
    others; it holds no task and no event of its own."""

    __slots__ = ("_waiting", "is_set", "outlet")

    def __init__(self, outlet: Outlet | None = None) -> None:
        self.is_set = False
        self.outlet = outlet
        self._waiting: asyncio.Future[bool] | None = None

    @classmethod
    def attach(cls, scope: MutableMapping[str, Any], outlet: Outlet | None = None) -> Release:
        """A new release, reachable from the request's ASGI `scope`."""
        release = cls(outlet)
        scope["extensions"] = {**(scope.get("extensions") or {}), RELEASE: release}
        return release

    def set(self) -> None:
        """Stop following: the request's wait ends now, or as soon as it starts."""
        self.is_set = True
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(False)

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may be sent now (see `Outlet.room`; True without one)."""
        return self.outlet is None or self.outlet.room(size)


def release_of(scope: MutableMapping[str, Any]) -> Release | None:
    """The release the server attached to a request (None: it is never released early)."""
    release = (scope.get("extensions") or {}).get(RELEASE)
    return release if isinstance(release, Release) else None


#: Waiters woken per turn of the event loop: between two batches the loop reads its
#: sockets, so a lookup or a probe that arrives during a fan-out to ten thousand followers
#: waits for one batch, not for all of them.
WAKE_BATCH = 256


def _wake(waiters: list[asyncio.Future[bool]], start: int, result: bool) -> None:
    end = start + WAKE_BATCH
    for waiter in waiters[start:end]:
        if not waiter.done():
            waiter.set_result(result)
    if end < len(waiters):
        asyncio.get_running_loop().call_soon(_wake, waiters, end, result)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Feed:
    """Tells waiters that the registry's revision moved."""

    def __init__(self, revision: Callable[[], int]) -> None:
        self._revision = revision
        #: Every wait in progress (long-polls and streams), resolved True by a commit.
        self._waiters: set[asyncio.Future[bool]] = set()
        #: The streams' waits, resolved False by the keep-alive tick.
        self._idle: set[asyncio.Future[bool]] = set()
        self.closed = False

    @property
    def waiting(self) -> int:
        """How many waits are in progress now."""
        return len(self._waiters)

    def notify(self) -> None:
        """Wake everyone waiting (call on the event loop after a commit)."""
        waiters, self._waiters = self._waiters, set()
        self._idle = set()
        if waiters:
            _wake(list(waiters), 0, True)

    def close(self) -> None:
        """The service is stopping: wake every waiter for good."""
        self.closed = True
        self.notify()

    def tick(self) -> None:
        """The keep-alive: every stream waiting now wakes with nothing new (and says so)."""
        idle, self._idle = self._idle, set()
        if idle:
            _wake(list(idle), 0, False)

    async def keep_alive(self, seconds: float) -> None:
        """Tick every `seconds` until cancelled (run it in the service's task group)."""
        while True:
            await asyncio.sleep(seconds)
            self.tick()

    def following(self, release: Release | None = None) -> bool:
        """Whether a follower should go on waiting: the service runs, and it is not released."""
        return not self.closed and not (release is not None and release.is_set)

    async def wait_beyond(self, revision: int, timeout: float | None, release: Release | None = None) -> bool:
        """Wait until the revision is above `revision`, only while `following(release)`,
        at most `timeout` seconds (None: until the next keep-alive tick).

        Returns whether it is (False on timeout, tick, shutdown or release)."""
        loop = asyncio.get_running_loop()
        timer = None
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while self._revision() <= revision and self.following(release):
                waiter: asyncio.Future[bool] = loop.create_future()
                self._waiters.add(waiter)
                if deadline is None:
                    self._idle.add(waiter)
                elif timer is None:
                    timer = loop.call_at(deadline, _expire, waiter)
                else:  # woken by a commit that did not move the revision: the same deadline
                    timer.cancel()
                    timer = loop.call_at(deadline, _expire, waiter)
                if release is not None:
                    release._waiting = waiter
                try:
                    if not await waiter:
                        break  # the timeout, the tick, or the release
                finally:
                    self._waiters.discard(waiter)
                    self._idle.discard(waiter)
        finally:
            if timer is not None:
                timer.cancel()
            if release is not None:
                release._waiting = None
        return self._revision() > revision
