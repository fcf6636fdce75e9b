"""What a follower's request holds while it follows: its way out and its connection.

The server puts a `Release` in each follower request's ASGI scope (`Release.attach`,
`release_of`); setting it ends that request's wait at once (the connection gate sets it to
make room at the cap, the protocol when the client has gone). Its `Outlet` is what the
request may do to its connection (`outlet.FollowerOutlet`), and a `Subscriber` is a
follower the feed writes to itself (`feed.Feed.subscribe`).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, Protocol

#: The key of a follower request's `Release` in its ASGI scope's "extensions".
RELEASE = "droq_registry.release"


class Outlet(Protocol):
    """What the server lets a follower know of its connection (protocol.LimitedProtocol)."""

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may be queued for the client; False: it lags too far
        behind and its connection has been cut (the client resumes with Last-Event-ID)."""

    def push(self, body: bytes) -> bool:
        """Write `body` as the next piece of the streamed answer in progress, now, without
        its task; False when it cannot (no room, as `room`; or no answer streaming)."""

    def answer(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> bool:
        """Send the whole answer of the request in progress now, without its task; False
        when it cannot (an answer was started, or the client has gone)."""

    def hold(self) -> None:
        """Read the client's next request only after `resume` (the answer in progress goes out)."""

    def resume(self) -> None:
        """Read the client's requests again (after `hold`)."""


class Subscriber(Protocol):
    """A follower the feed writes to itself (`Feed.subscribe`): an event stream, or a
    long-poll it answers."""

    def deliver(self) -> asyncio.Future[bool] | None:
        """Write what committed since what it had (nothing if nothing did). A follower that
        is done (a long-poll answered) returns its request's wait: the round unsubscribes
        it and resolves that (True) once its writes are out, and the request's task ends."""

    def keep_alive(self) -> None:
        """Write the keep-alive comment."""


class Release:
    """One follower request's way out, put in its scope by the server (`attach`).

    `set` wakes only this request's wait, so releasing one follower costs nothing to the
    others; it holds no task and no event of its own."""

    __slots__ = ("is_set", "outlet", "waiting")

    def __init__(self, outlet: Outlet | None = None) -> None:
        self.is_set = False
        self.outlet = outlet
        #: The request's wait while it waits (the feed's future), else None.
        self.waiting: asyncio.Future[bool] | None = None

    @classmethod
    def attach(cls, scope: MutableMapping[str, Any], outlet: Outlet | None = None) -> Release:
        """A new release, reachable from the request's ASGI `scope`."""
        release = cls(outlet)
        scope["extensions"] = {**(scope.get("extensions") or {}), RELEASE: release}
        return release

    def set(self) -> None:
        """Stop following: the request's wait ends now, or as soon as it starts."""
        self.is_set = True
        waiting = self.waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(False)

    def room(self, size: int) -> bool:
        """Whether `size` more bytes may be sent now (see `Outlet.room`; True without one)."""
        return self.outlet is None or self.outlet.room(size)


def release_of(scope: MutableMapping[str, Any]) -> Release | None:
    """The release the server attached to a request (None: it is never released early)."""
    release = (scope.get("extensions") or {}).get(RELEASE)
    return release if isinstance(release, Release) else None
