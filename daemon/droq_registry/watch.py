"""The loop: watchfiles' `awatch` plus a periodic rescan, each batch one reconcile.

The only module that imports watchfiles. A batch of events is taken as "something changed
here", not as an exact list of edits: the reconciler stats and hashes to find out what.
Watches can be lost (inotify limits, queue overflows, network mounts), so a full rescan
runs on a timer too, and when the watcher fails the loop says so and polls instead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import anyio
from watchfiles import awatch

from .reconcile import FolderMissing, Registry, Result, Stopped

log = logging.getLogger("droq_registry.watch")

#: How often to look while the watcher is down or the folder is missing.
POLL_SECONDS = 1.0
#: Longest wait between two attempts to start the watcher again.
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class WatchStatus:
    """The watcher's state as /health reports it."""

    state: str = "starting"  # starting | watching | polling | waiting | off | stopped
    error: str | None = None
    restarts: int = 0


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Reconciler:
    """Runs reconciles one at a time, off the event loop, and tells listeners of commits."""

    def __init__(
        self,
        registry: Registry,
        on_commit: Callable[[Result], Awaitable[None] | None],
        on_pass: Callable[[str, float], None] = lambda result, seconds: None,
    ) -> None:
        self.registry = registry
        self._on_commit = on_commit
        self._on_pass = on_pass
        self._lock = anyio.Lock()

    async def run(self, named: Iterable[str] | None = None) -> Result | None:
        """One reconcile; None when the folder is missing or the pass failed (logged)."""
        async with self._lock:
            started = time.perf_counter()
            try:
                result = await anyio.to_thread.run_sync(self.registry.reconcile, named)
            except (FolderMissing, Stopped):
                return None
            except Exception:  # logged by the registry; the last good state stays served
                self._on_pass("failed", time.perf_counter() - started)
                return None
        self._on_pass("changed" if result.changed else "unchanged", result.duration_ms / 1000)
        if result.changed:
            pending = self._on_commit(result)
            if pending is not None:
                await pending
        return result


async def load_once(reconciler: Reconciler, status: WatchStatus) -> None:
    """The first load; waits for the folder when it is not there yet."""
    while await reconciler.run() is None:
        status.state = "waiting"
        await anyio.sleep(POLL_SECONDS)


async def run_watcher(
    reconciler: Reconciler,
    status: WatchStatus,
    resync_seconds: float,
    step_ms: int,
    debounce_ms: int,
    stopping: anyio.Event,
) -> None:
    """Watch until `stopping` is set (or cancelled): the first load, then events, rescans
    and recovery."""
    await load_once(reconciler, status)
    async with anyio.create_task_group() as tg:
        if resync_seconds > 0:
            tg.start_soon(_rescan_every, reconciler, resync_seconds)
        await _watch_loop(reconciler, status, step_ms, debounce_ms, stopping)
        tg.cancel_scope.cancel()


async def _rescan_every(reconciler: Reconciler, seconds: float) -> None:
    while True:
        await anyio.sleep(seconds)
        await reconciler.run()


async def _watch_loop(
    reconciler: Reconciler, status: WatchStatus, step_ms: int, debounce_ms: int, stopping: anyio.Event
) -> None:
    registry = reconciler.registry
    folder = os.path.abspath(registry.folder)
    backoff = POLL_SECONDS
    while not stopping.is_set():
        identity = _identity(folder)
        if identity is None:
            status.state = "waiting"
            await reconciler.run()  # notes the folder as missing
            while _identity(folder) is None:
                await anyio.sleep(POLL_SECONDS)
            identity = _identity(folder)
            await reconciler.run()
        dep_dirs = sorted({os.path.dirname(d) for d in registry.deps() if os.path.isdir(os.path.dirname(d))})
        try:
            await _watch(reconciler, status, folder, identity, dep_dirs, step_ms, debounce_ms, stopping)
            backoff = POLL_SECONDS
        except Exception as exc:  # the watcher itself failed: say so and poll meanwhile
            status.state = "polling"
            status.error = f"{type(exc).__name__}: {exc}"
            status.restarts += 1
            log.error(
                "file watcher failed (%s); polling every %.0fs and retrying in %.0fs",
                status.error, POLL_SECONDS, backoff,
            )
            with anyio.move_on_after(backoff):
                while True:
                    await reconciler.run()
                    await anyio.sleep(POLL_SECONDS)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


async def _watch(
    reconciler: Reconciler,
    status: WatchStatus,
    folder: str,
    identity: tuple[int, int] | None,
    dep_dirs: list[str],
    step_ms: int,
    debounce_ms: int,
    stopping: anyio.Event,
) -> None:
    """One life of `awatch`; returns when the folder or the set of watched folders changed,
    or when the service stops."""
    registry = reconciler.registry
    first = True
    # awatch sets up its watches on the first iteration; a failure there raises at once
    # and turns this into "polling", so the state is right within moments either way.
    if status.state != "watching":
        log.info("watching %s for node files", folder)
    status.state = "watching"
    status.error = None
    async for changes in awatch(
        folder,
        *[d for d in dep_dirs if d != folder],
        watch_filter=None,
        step=step_ms,
        debounce=debounce_ms,
        rust_timeout=1_000,
        yield_on_timeout=True,
        stop_event=stopping,
    ):
        if first:
            # Events between the last full scan and the watch starting were not seen.
            first = False
            await reconciler.run()
        paths = [os.path.abspath(path) for _, path in changes]
        if changes:
            await reconciler.run(paths)
        # The folder itself in the batch means it was removed (its watch is gone even if a
        # new folder took its place, possibly with the same inode number).
        if folder in paths or _identity(folder) != identity:
            log.warning("assets folder %s was removed or replaced; watching again", folder)
            return
        wanted = sorted({os.path.dirname(d) for d in registry.deps() if os.path.isdir(os.path.dirname(d))})
        if wanted != dep_dirs:
            return
