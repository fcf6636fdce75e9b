"""The loop: watchfiles' `awatch` plus a periodic rescan, each batch one reconcile.

The only module that imports watchfiles. A batch of events is taken as "something changed
here", not as an exact list of edits: the reconciler stats and hashes to find out what.
The assets folder is watched with its subfolders; a folder of components files elsewhere
is watched on its own, never its tree (`Registry.watch_dirs`, published whole by the
reconcile thread, says which). Events can be lost: when the kernel's queue overflows
(`overflow.LostEvents` notices) the whole folder is looked at again at once; for what
cannot be noticed (network mounts) a full rescan runs on a timer too; and when the
watcher fails the loop says so and polls until it can start it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from watchfiles import Change, awatch

from .dbfile import WriterLock
from .overflow import DRAIN_SECONDS, LostEvents, queue_limit
from .model import Result
from .reconcile import FolderMissing, Registry, Stopped, utc_now
from .store import StorageFault, Store

log = logging.getLogger("droq_registry.watch")

#: How often to look while the watcher is down or the folder is missing.
POLL_SECONDS = 1.0
#: Longest wait between two attempts to start the watcher again.
MAX_BACKOFF_SECONDS = 30.0
#: After a failed pass (a storage fault, a transient read error), the first wait before
#: a full pass tries again; it doubles up to the longest, so pending changes commit within
#: seconds of the fault clearing.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0
#: How often a service waiting for the database's writer lock looks again.
LOCK_POLL_SECONDS = 0.5
#: A watcher that ran this long before it failed was healthy: the wait before the next
#: attempt starts again from POLL_SECONDS instead of growing on from the last failure.
STABLE_SECONDS = 60.0


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
    """Runs reconciles one at a time, off the event loop, and tells listeners of commits.

    It is also the one writer: `take_over` waits for the database's writer lock and a
    usable database before the registry loads anything, and `retry_failed` runs a failed
    pass again with a bounded backoff until one succeeds."""

    def __init__(
        self,
        registry: Registry,
        on_commit: Callable[[Result], Awaitable[None] | None],
        on_pass: Callable[[str, float], None] = lambda result, seconds: None,
        on_fault: Callable[[str], None] = lambda cause: None,
    ) -> None:
        self.registry = registry
        self._on_commit = on_commit
        self._on_pass = on_pass
        self._on_fault = on_fault
        self._lock = anyio.Lock()
        #: Whether the latest pass failed; `retry_failed` runs passes until it is False.
        self.failing = False
        self._failed = anyio.Event()

    async def take_over(self, lock: WriterLock) -> None:
        """Become the database's writer: wait (not ready, saying why) while another service
        holds its lock, open it (retrying while it cannot be opened), then load the registry
        from it. Loading only now means the state is what the previous writer committed last."""
        registry = self.registry
        path = registry.settings.db_path
        waited_from = None
        while True:
            try:
                if await anyio.to_thread.run_sync(lock.acquire):
                    break
                waiting = f"{path} is in use by another registry ({lock.holder()}); waiting for it to exit"
                if waited_from is None:
                    waited_from = time.monotonic()
                    log.warning("database %s; not ready meanwhile", waiting)
                registry.note(database="waiting", database_error=waiting)
            except StorageFault as exc:  # the lock file cannot be opened: say so, keep trying
                if str(exc) != registry.status.database_error:
                    log.error("%s; not ready, trying again", exc)
                registry.note(database="failing", database_error=str(exc))
            registry.note(failing_since=registry.status.failing_since or utc_now())
            await anyio.sleep(LOCK_POLL_SECONDS)
        if waited_from is not None:
            log.info("database %s is free after %.1fs; taking it over", path, time.monotonic() - waited_from)
        registry.writer_lock = lock
        delay = RETRY_FIRST_SECONDS
        while True:
            registry.note(database="opening")
            try:
                store = await anyio.to_thread.run_sync(Store.open, path)
                try:
                    await anyio.to_thread.run_sync(self._attach, store)
                except BaseException:
                    store.close()
                    raise
                break
            except StorageFault as exc:
                self._on_fault(exc.cause)
                if str(exc) != registry.status.database_error:
                    log.error("%s; not ready, trying again", exc)
                registry.note(database="failing", database_error=str(exc),
                              failing_since=registry.status.failing_since or utc_now())
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        registry.note(failing_since=None)

    def _attach(self, store: Store) -> None:
        try:
            self.registry.attach(store)
        except StorageFault as exc:
            if exc.cause != "damaged":
                raise
            store.start_afresh(str(exc))  # its content does not hold together: rebuild it
            self.registry.attach(store)

    async def retry_failed(self) -> None:
        """Run until cancelled: after a failed pass, full passes with a doubling wait
        (at most RETRY_MAX_SECONDS) until one succeeds. A full pass finds every change the
        failed ones missed, since only a commit marks files as seen."""
        while True:
            await self._failed.wait()
            self._failed = anyio.Event()
            delay = RETRY_FIRST_SECONDS
            while self.failing:
                await anyio.sleep(delay)
                if self.failing:
                    await self.run()
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def run(self, named: Iterable[str] | None = None) -> Result | None:
        """One reconcile; None when the folder is missing or the pass failed (logged)."""
        async with self._lock:
            started = time.perf_counter()
            try:
                result = await anyio.to_thread.run_sync(self.registry.reconcile, named)
            except (FolderMissing, Stopped):
                return None
            except Exception as exc:  # noqa: BLE001  # any failure is a failed pass: logged by the
                # registry, retried by retry_failed; the last committed state stays served
                self.failing = True
                self._failed.set()
                self._on_pass("failed", time.perf_counter() - started)
                if isinstance(exc, StorageFault):
                    self._on_fault(exc.cause)
                return None
            self.failing = False
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
    undecodable_at = -POLL_SECONDS
    while not stopping.is_set():
        identity = _identity(folder)
        if identity is None:
            status.state = "waiting"
            await reconciler.run()  # notes the folder as missing
            while _identity(folder) is None:
                await anyio.sleep(POLL_SECONDS)
            identity = _identity(folder)
            await reconciler.run()
        elsewhere = _folders_elsewhere(registry, folder)
        started = time.monotonic()
        try:
            await _watch(reconciler, status, folder, identity, elsewhere, step_ms, debounce_ms, stopping)
            backoff = POLL_SECONDS
        except _Undecodable:
            # Not a failure: watchfiles gives up on a file name that is not UTF-8 (and drops
            # the batch), so it starts again at once and its first pass looks at everything;
            # at most once a second, should such a file be written over and over.
            wait = max(0.0, undecodable_at + POLL_SECONDS - time.monotonic())
            undecodable_at = time.monotonic() + wait
            await anyio.sleep(wait)
        except Exception as exc:  # the watcher itself failed: say so and poll meanwhile
            if time.monotonic() - started >= STABLE_SECONDS:
                backoff = POLL_SECONDS  # it had run well: this failure is not one of a series
            status.state = "polling"
            status.error = f"{type(exc).__name__}: {exc}"
            status.restarts += 1
            log.error(
                "file watcher failed (%s); polling every %gs and retrying in %gs",
                status.error, POLL_SECONDS, backoff,
            )
            with anyio.move_on_after(backoff):
                while True:
                    await reconciler.run()
                    await anyio.sleep(POLL_SECONDS)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _folders_elsewhere(registry: Registry, folder: str) -> list[str]:
    """Folders of components files outside the assets folder (whose own watch covers the
    ones inside it) that are there now: each is watched on its own, not recursively."""
    inside = folder + os.sep
    return sorted(
        d for d in registry.watch_dirs if d != folder and not d.startswith(inside) and os.path.isdir(d)
    )


class _Undecodable(Exception):
    """watchfiles met a file name that is not valid UTF-8 and stopped."""


#: watchfiles' error for a path it cannot turn into a string (`src/lib.rs`, the event handler).
UNDECODABLE = "Unable to decode path"

Batch = set[tuple[Change, str]]


async def _watch(
    reconciler: Reconciler,
    status: WatchStatus,
    folder: str,
    identity: tuple[int, int] | None,
    elsewhere: list[str],
    step_ms: int,
    debounce_ms: int,
    stopping: anyio.Event,
) -> None:
    """One life of the watchers; returns when the folder or the set of watched folders
    changed, or when the service stops.

    The assets folder is watched with every folder below it (node files may be links into
    them); each folder of components files elsewhere is watched on its own, never its
    tree. The two watchers' batches are taken in turn.
    """
    # Each life has its own stop event: watchfiles sets the one it is given when it is
    # cancelled, and ending one life must not stop the service.
    stop = anyio.Event()
    options: dict[str, Any] = {
        "watch_filter": None, "step": step_ms, "debounce": debounce_ms,
        "rust_timeout": 1_000, "yield_on_timeout": True, "stop_event": stop,
    }
    watchers = [awatch(folder, **options)]
    if elsewhere:
        watchers.append(awatch(*elsewhere, recursive=False, **options))
    lost = await anyio.to_thread.run_sync(LostEvents, folder, elsewhere)
    send, receive = anyio.create_memory_object_stream[Batch | Exception]()
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_relay, stopping, stop)
            tg.start_soon(_drain_every, lost, DRAIN_SECONDS)
            for watcher in watchers:
                tg.start_soon(_pump, watcher, send.clone())
            send.close()
            try:
                await _follow(reconciler, status, folder, identity, elsewhere, receive, lost)
            except Exception as exc:  # noqa: BLE001 - raised below, not as a group of one
                failure = exc
            finally:
                stop.set()
                tg.cancel_scope.cancel()
    finally:
        lost.close()  # no drain is running now: the task group waited for its thread
    if failure is not None:
        if isinstance(failure, RuntimeError) and str(failure).startswith(UNDECODABLE):
            log.debug("the file watcher stopped on a file name that is not UTF-8 (%s)", failure)
            raise _Undecodable() from failure
        raise failure


async def _follow(
    reconciler: Reconciler,
    status: WatchStatus,
    folder: str,
    identity: tuple[int, int] | None,
    elsewhere: list[str],
    batches: anyio.abc.ObjectReceiveStream[Batch | Exception],
    lost: LostEvents,
) -> None:
    registry = reconciler.registry
    first = True
    # awatch sets up its watches on the first iteration; a failure there raises at once
    # and turns this into "polling", so the state is right within moments either way.
    if status.state != "watching":
        log.info("watching %s for node files", folder)
    status.state = "watching"
    status.error = None
    async with batches:
        async for changes in batches:
            if isinstance(changes, Exception):
                raise changes
            if await anyio.to_thread.run_sync(lost.overflowed) and not first:
                log.warning(
                    "file events were lost (the kernel's event queue overflowed; "
                    "fs.inotify.max_queued_events=%s); rescanning %s", queue_limit(), folder,
                )
                await reconciler.run()
            elif first:
                # Events between the last full scan and the watch starting were not seen.
                await reconciler.run()
            elif changes:
                await reconciler.run([os.path.abspath(path) for _, path in changes])
            first = False
            # The folder itself in the batch means it was removed (its watch is gone even if a
            # new folder took its place, possibly with the same inode number).
            if any(os.path.abspath(path) == folder for _, path in changes) or _identity(folder) != identity:
                log.warning("assets folder %s was removed or replaced; watching again", folder)
                return
            if _folders_elsewhere(registry, folder) != elsewhere:
                return


async def _pump(
    watcher: AsyncIterator[Batch], send: anyio.abc.ObjectSendStream[Batch | Exception]
) -> None:
    """One watcher's batches, then its failure if it fails, into the shared stream."""
    async with send:
        try:
            async for changes in watcher:
                await send.send(changes)
        except Exception as exc:  # noqa: BLE001 - handed on: the watcher failed, whatever the cause
            # awatch runs its worker in a task group of its own, so its failure comes as a
            # group of one; the error inside is what the log and /health should name.
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            await send.send(exc)


async def _relay(stopping: anyio.Event, stop: anyio.Event) -> None:
    await stopping.wait()
    stop.set()


async def _drain_every(lost: LostEvents, seconds: float) -> None:
    while lost.active:
        await anyio.sleep(seconds)
        await anyio.to_thread.run_sync(lost.drain)
