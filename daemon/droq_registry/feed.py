"""Waking readers when a revision commits: long-polls and event streams wait here.

One `anyio.Event` is shared by every waiter and replaced on each commit, so a waiter
holds no thread, no database connection and no queue: idle subscribers cost a task each,
and a slow one cannot hold up the reconciler or anyone else.

A follower stops following in two ways, and both take the same path: the service stops
(`Feed.close`, every follower at once), or the server needs one follower's connection
back (its `Release`, set by the connection gate when the connection cap is reached). A
long-poll then answers at once with what it has, and an event stream ends as a complete
response, which its client resumes with Last-Event-ID.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import anyio

#: The key of a follower request's `Release` in its ASGI scope's "extensions".
RELEASE = "droq_registry.release"


class Release:
    """One follower request's way out, put in its scope by the server (`attach`).

    `set` wakes only this request's wait (it cancels that wait's own cancel scope), so
    releasing one follower costs nothing to the others; it holds no task and no event."""

    __slots__ = ("_waiting", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._waiting: anyio.CancelScope | None = None

    @classmethod
    def attach(cls, scope: MutableMapping[str, Any]) -> Release:
        """A new release, reachable from the request's ASGI `scope`."""
        release = cls()
        scope["extensions"] = {**(scope.get("extensions") or {}), RELEASE: release}
        return release

    def set(self) -> None:
        """Stop following: the request's wait ends now, or as soon as it starts."""
        self.is_set = True
        if self._waiting is not None:
            self._waiting.cancel()


def release_of(scope: MutableMapping[str, Any]) -> Release | None:
    """The release the server attached to a request (None: it is never released early)."""
    release = (scope.get("extensions") or {}).get(RELEASE)
    return release if isinstance(release, Release) else None


class Feed:
    """Tells waiters that the registry's revision moved."""

    def __init__(self, revision: Callable[[], int]) -> None:
        self._revision = revision
        self._event = anyio.Event()
        self.closed = anyio.Event()

    def notify(self) -> None:
        """Wake everyone waiting (call on the event loop after a commit)."""
        event, self._event = self._event, anyio.Event()
        event.set()

    def close(self) -> None:
        """The service is stopping: wake every waiter for good."""
        self.closed.set()
        self.notify()

    def following(self, release: Release | None = None) -> bool:
        """Whether a follower should go on waiting: the service runs, and it is not released."""
        return not self.closed.is_set() and not (release is not None and release.is_set)

    async def wait_beyond(self, revision: int, timeout: float, release: Release | None = None) -> bool:
        """Wait until the revision is above `revision`, at most `timeout` seconds, and
        only while `following(release)`.

        Returns whether it is (False on timeout, shutdown or release)."""
        with anyio.move_on_after(timeout) as waiting:
            if release is not None:
                release._waiting = waiting
            try:
                while self._revision() <= revision and self.following(release):
                    await self._event.wait()
            finally:
                if release is not None:
                    release._waiting = None
        return self._revision() > revision
