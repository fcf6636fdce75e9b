"""Work too big for the event loop runs in a few worker threads, once per snapshot.

Most answers are prepared bytes: a lookup is a dictionary hit. A few need work in
proportion to the registry (every node in one list, every source, a search, the metrics
text); on 1,000 nodes x 350 components that is tens or hundreds of milliseconds, and on
the event loop it would hold up every probe and lookup meanwhile. Such work runs here, in
worker threads, and what is derived from a snapshot is built once: whoever asks while it
is being built waits for that one build.

There are two lanes of one thread each: searches (the dashboard asks one per keystroke,
from many browsers) and everything else (lists, sources, metrics). The work holds the
GIL, so a second thread in a lane would not answer sooner; it would only take more turns
from the event loop (measured: probes' p99 doubled). Two lanes keep a burst of searches
from delaying a metrics scrape or a listing, and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .snapshot import Snapshot

T = TypeVar("T")

#: Worker threads in each lane.
THREADS = 1


class Offload:
    """The worker threads of one app."""

    def __init__(self, threads: int = THREADS) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.search_limiter = anyio.CapacityLimiter(threads)
        self._building: dict[tuple[Snapshot, Hashable], anyio.Event] = {}

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker thread; waits for a free one."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self.limiter)

    async def search(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in the searches' worker thread."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self.search_limiter)

    async def once(self, snap: Snapshot, key: Hashable, build: Callable[[], T]) -> T:
        """`snap.cache[key]`, built by `build()` in a worker thread the first time."""
        marker = (snap, key)
        while True:  # all on the event loop: nothing runs between a check and what follows
            if key in snap.cache:
                return snap.cache[key]  # type: ignore[no-any-return]
            building = self._building.get(marker)
            if building is None:
                break
            await building.wait()
        done = self._building[marker] = anyio.Event()
        try:
            value = await self.run(build)
            snap.cache[key] = value
            return value
        finally:
            del self._building[marker]
            done.set()
