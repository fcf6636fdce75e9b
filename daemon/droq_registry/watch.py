"""The loop: watchfiles' `awatch` plus a periodic rescan, each batch one reconcile.

The only module that imports watchfiles. A batch of events is taken as "something changed
here", not as an exact list of edits: the reconciler stats and hashes to find out what.
The assets folder is watched with its subfolders; a folder of components files elsewhere
is watched on its own, never its tree (`Reconciler.watch_dirs`, replaced whole by the
writer thread, says which). Events can be lost: when the kernel's queue overflows
(`overflow.LostEvents` notices) the whole folder is looked at again at once; for what
cannot be noticed (network mounts) a full rescan runs on a timer too; and when the
watcher fails the loop says so and polls until it can start it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from watchfiles import Change, awatch

from .overflow import DRAIN_SECONDS, LostEvents, queue_limit
from .reconcile import Reconciler
from .writer import Writer

log = logging.getLogger("droq_registry.watch")

#: How often to look while the watcher is down or the folder is missing.
POLL_SECONDS = 1.0
#: Longest wait between two attempts to start the watcher again.
MAX_BACKOFF_SECONDS = 30.0
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


async def load_once(writer: Writer, status: WatchStatus) -> None:
    """The first load; waits for the folder when it is not there yet."""
    while await writer.run() is None:
        status.state = "waiting"
        await anyio.sleep(POLL_SECONDS)


async def run_watcher(
    writer: Writer,
    status: WatchStatus,
    resync_seconds: float,
    step_ms: int,
    debounce_ms: int,
    stopping: anyio.Event,
) -> None:
    """Watch until `stopping` is set (or cancelled): the first load, then events, rescans
    and recovery."""
    await load_once(writer, status)
    async with anyio.create_task_group() as tg:
        if resync_seconds > 0:
            tg.start_soon(_rescan_every, writer, resync_seconds)
        await _watch_loop(writer, status, step_ms, debounce_ms, stopping)
        tg.cancel_scope.cancel()


async def _rescan_every(writer: Writer, seconds: float) -> None:
    while True:
        await anyio.sleep(seconds)
        await writer.run()


async def _watch_loop(
    writer: Writer, status: WatchStatus, step_ms: int, debounce_ms: int, stopping: anyio.Event
) -> None:
    reconciler = writer.reconciler
    folder = os.path.abspath(reconciler.folder)
    backoff = POLL_SECONDS
    undecodable_at = -POLL_SECONDS
    while not stopping.is_set():
        identity = _identity(folder)
        if identity is None:
            status.state = "waiting"
            await writer.run()  # notes the folder as missing
            while _identity(folder) is None:
                await anyio.sleep(POLL_SECONDS)
            identity = _identity(folder)
            await writer.run()
        elsewhere = _folders_elsewhere(reconciler, folder)
        started = time.monotonic()
        try:
            await _watch(writer, status, folder, identity, elsewhere, step_ms, debounce_ms, stopping)
            backoff = POLL_SECONDS
        except _Undecodable:
            # Not a failure: watchfiles gives up on a file name that is not UTF-8 (and drops
            # the batch), so it starts again at once and its first pass looks at everything;
            # at most once a second, should such a file be written over and over.
            wait = max(0.0, undecodable_at + POLL_SECONDS - time.monotonic())
            undecodable_at = time.monotonic() + wait
            await anyio.sleep(wait)
        except Exception as exc:  # noqa: BLE001  # the watcher itself failed (any cause): say so and poll meanwhile
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
                    await writer.run()
                    await anyio.sleep(POLL_SECONDS)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def _folders_elsewhere(reconciler: Reconciler, folder: str) -> list[str]:
    """Folders of components files outside the assets folder (whose own watch covers the
    ones inside it) that are there now: each is watched on its own, not recursively."""
    inside = folder + os.sep
    return sorted(
        d for d in reconciler.watch_dirs if d != folder and not d.startswith(inside) and os.path.isdir(d)
    )


class _Undecodable(Exception):
    """watchfiles met a file name that is not valid UTF-8 and stopped."""


#: watchfiles' error for a path it cannot turn into a string (`src/lib.rs`, the event handler).
UNDECODABLE = "Unable to decode path"

Batch = set[tuple[Change, str]]


async def _watch(
    writer: Writer,
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
                await _follow(writer, status, folder, identity, elsewhere, receive, lost)
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
    writer: Writer,
    status: WatchStatus,
    folder: str,
    identity: tuple[int, int] | None,
    elsewhere: list[str],
    batches: anyio.abc.ObjectReceiveStream[Batch | Exception],
    lost: LostEvents,
) -> None:
    reconciler = writer.reconciler
    first = True
    # awatch sets up its watches on the first iteration; a failure there raises at once
    # and turns this into "polling", so the state is right within moments either way.
    if status.state != "watching":
        log.info("watching %s for node files", folder)
    status.state = "watching"
    status.error = None
    async with batches:
        # What changed between the last full scan and the watches starting was not seen:
        # look again as soon as they have started (each watcher sets its watches up in its
        # first step, which runs before this task's next), not only at their first batch,
        # which comes a second later when nothing happens.
        await anyio.lowlevel.checkpoint()
        await writer.run()
        if _must_watch_again(reconciler, folder, identity, elsewhere, set()):
            return  # that scan found the folder replaced, or new folders to watch: a new life
        async for changes in batches:
            if isinstance(changes, Exception):
                raise changes
            if await anyio.to_thread.run_sync(lost.overflowed) and not first:
                log.warning(
                    "file events were lost (the kernel's event queue overflowed; "
                    "fs.inotify.max_queued_events=%s); rescanning %s", queue_limit(), folder,
                )
                await writer.run()
            elif first:
                await writer.run()  # again: a watch that took longer to set up has now
            elif changes:
                await writer.run([os.path.abspath(path) for _, path in changes])
            first = False
            if _must_watch_again(reconciler, folder, identity, elsewhere, changes):
                return


def _must_watch_again(
    reconciler: Reconciler, folder: str, identity: tuple[int, int] | None, elsewhere: list[str], changes: Batch
) -> bool:
    """Whether the watches must start again: the assets folder was removed or replaced, or
    the folders of components files outside it are not those watched."""
    # The folder itself in the batch means it was removed (its watch is gone even if a new
    # folder took its place, possibly with the same inode number).
    if any(os.path.abspath(path) == folder for _, path in changes) or _identity(folder) != identity:
        log.warning("assets folder %s was removed or replaced; watching again", folder)
        return True
    return _folders_elsewhere(reconciler, folder) != elsewhere


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
