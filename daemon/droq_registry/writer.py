"""The one writer: a thread of its own, fed by a queue, that runs every reconcile and every
other step that touches the database or the reconcile state, one at a time, in order.

As in Datasette's `database.py` (`_execute_writes`), the database connection is opened,
used and closed on this thread only (SQLite's `check_same_thread` holds it to that), and
the reconcile state machine (`reconcile.Reconciler`) changes only here, so no lock is
needed to know who writes. The event loop hands a step over with `await thread.call(...)`
and reads only values the writer replaces whole: the snapshot (with the change log and
its floor), the folders to watch and the status.

`Writer` is what the watcher drives: `take_over` waits for the database's writer lock and
a usable database before anything is loaded, `run` is one pass, and `retry_failed` runs a
failed pass again with a bounded backoff until one succeeds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from .dbfile import WriterLock
from .health import utc_now
from .model import Result
from .reconcile import FolderMissing, Reconciler
from .scan import Stopped
from .store import StorageFault, Store

log = logging.getLogger("droq_registry.watch")

T = TypeVar("T")

#: After a failed pass (a storage fault, a transient read error), the first wait before
#: a full pass tries again; it doubles up to the longest, so pending changes commit within
#: seconds of the fault clearing.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0
#: How often a service waiting for the database's writer lock looks again.
LOCK_POLL_SECONDS = 0.5


class _Job(Generic[T]):
    """One step for the writer thread, and how to tell the event loop it is done."""

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.token = anyio.lowlevel.current_token()
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            self.error = exc
        try:
            anyio.from_thread.run_sync(self.done.set, token=self.token)
        except anyio.RunFinishedError:
            pass  # the event loop has ended: nobody waits for this any more


class WriterThread:
    """A thread that runs the steps it is given one at a time, in the order given."""

    def __init__(self, name: str = "droq-registry-writer") -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        # A daemon thread: a step stuck in the kernel must not keep the process from exiting.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def is_alive(self) -> bool:
        """Whether the thread still runs (until `stop`)."""
        return self._thread.is_alive()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread after the steps asked for before it; return
        its result or raise its exception. A caller that is cancelled still waits for the
        step to end (as `anyio.to_thread.run_sync` does), so no step outlives its caller and
        what follows a cancelled pass (closing the store) never runs beside it."""
        job = _Job(fn, args)
        self._jobs.put(job)
        with anyio.CancelScope(shield=True):
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def stop(self) -> None:
        """End the thread once the steps asked for before have run (idempotent)."""
        self._jobs.put(None)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)


class Writer:
    """Drives the reconciler from the event loop; every step runs on its writer thread."""

    def __init__(
        self,
        reconciler: Reconciler,
        thread: WriterThread,
        on_commit: Callable[[Result], Awaitable[None] | None],
        on_pass: Callable[[str, float], None] = lambda result, seconds: None,
        on_fault: Callable[[str], None] = lambda cause: None,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        """`after_commit` runs on the writer thread after every commit: the process's policy
        (server.py installs its garbage-collector freeze there)."""
        self.reconciler = reconciler
        self.thread = thread
        self._on_commit = on_commit
        self._on_pass = on_pass
        self._on_fault = on_fault
        self._after_commit = after_commit
        self._failed = anyio.Event()

    @property
    def failing(self) -> bool:
        """Whether the latest pass failed; `retry_failed` runs passes until it did not."""
        return self.reconciler.status.failed_passes > 0

    async def note(self, **changes: Any) -> None:
        """Publish a status change from the writer thread, where every other one is made."""
        await self.thread.call(lambda: self.reconciler.note(**changes))

    async def take_over(self, lock: WriterLock) -> None:
        """Become the database's writer: wait (not ready, saying why) while another service
        holds its lock, open it (retrying while it cannot be opened), then load the state
        from it. Loading only now means the state is what the previous writer committed last."""
        reconciler = self.reconciler
        path = reconciler.settings.db_file
        waited_from = None
        while True:
            try:
                if await self.thread.call(lock.acquire):
                    break
                waiting = f"{path} is in use by another registry ({lock.holder()}); waiting for it to exit"
                if waited_from is None:
                    waited_from = time.monotonic()
                    log.warning("database %s; not ready meanwhile", waiting)
                await self.note(database="waiting", database_error=waiting)
            except StorageFault as exc:  # the lock file cannot be opened: say so, keep trying
                if str(exc) != reconciler.status.database_error:
                    log.error("%s; not ready, trying again", exc)
                await self.note(database="failing", database_error=str(exc))
            await self.note(failing_since=reconciler.status.failing_since or utc_now())
            await anyio.sleep(LOCK_POLL_SECONDS)
        if waited_from is not None:
            log.info("database %s is free after %.1fs; taking it over", path, time.monotonic() - waited_from)
        delay = RETRY_FIRST_SECONDS
        while True:
            await self.note(database="opening")
            try:
                await self.thread.call(self._open_and_attach, path, lock)
                break
            except StorageFault as exc:
                self._on_fault(exc.cause)
                if str(exc) != reconciler.status.database_error:
                    log.error("%s; not ready, trying again", exc)
                await self.note(database="failing", database_error=str(exc),
                                failing_since=reconciler.status.failing_since or utc_now())
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        await self.note(failing_since=None)

    def _open_and_attach(self, path: Path, lock: WriterLock) -> None:
        self.reconciler.writer_lock = lock
        store = Store.open(path)
        try:
            try:
                self.reconciler.attach(store)
            except StorageFault as exc:
                if exc.cause != "damaged":
                    raise
                store.start_afresh(str(exc))  # its content does not hold together: rebuild it
                self.reconciler.attach(store)
        except BaseException:
            store.close()
            raise

    async def close(self) -> None:
        """Close the database on the writer thread, after any step still running."""
        await self.thread.call(self.reconciler.close)

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

    def _pass(self, named: Iterable[str] | None) -> Result:
        result = self.reconciler.reconcile(named)
        if result.changed:
            self._after_commit()
        return result

    async def run(self, named: Iterable[str] | None = None) -> Result | None:
        """One reconcile; None when the folder is missing or the pass failed (logged)."""
        if self.failing:
            # What the failed pass would have written is still pending, and a pass over only
            # the files an event names does not see it (a `touch` of an unchanged file
            # succeeds with nothing to write, even on a full disk). Only a full pass that
            # succeeds means nothing is pending.
            named = None
        started = time.perf_counter()
        try:
            result = await self.thread.call(self._pass, named)
        except (FolderMissing, Stopped):
            return None
        except Exception as exc:  # noqa: BLE001  # any failure is a failed pass: logged by the
            # reconciler, retried by retry_failed; the last committed state stays served
            self._failed.set()
            self._on_pass("failed", time.perf_counter() - started)
            if isinstance(exc, StorageFault):
                self._on_fault(exc.cause)
            return None
        self._on_pass("changed" if result.changed else "unchanged", result.duration_ms / 1000)
        if result.changed:
            pending = self._on_commit(result)
            if pending is not None:
                await pending
        return result
