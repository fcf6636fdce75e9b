"""Waking readers when a revision commits: long-polls and event streams wait here.

One `anyio.Event` is shared by every waiter and replaced on each commit, so a waiter
holds no thread, no database connection and no queue: idle subscribers cost a task each,
and a slow one cannot hold up the reconciler or anyone else.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio


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

    async def wait_beyond(self, revision: int, timeout: float) -> bool:
        """Wait until the revision is above `revision`, at most `timeout` seconds.

        Returns whether it is (False on timeout or shutdown)."""
        with anyio.move_on_after(timeout):
            while self._revision() <= revision and not self.closed.is_set():
                await self._event.wait()
        return self._revision() > revision
