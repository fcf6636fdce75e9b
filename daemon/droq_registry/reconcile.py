"""The reconcile state machine: one pass from the folder to a committed revision.

`Reconciler` holds what the last commit left (`committed.py`: sources, served nodes, which
files claim which node id), what each file's stat was when it was read (`scan.SeenFiles`)
and the snapshot, and `Reconciler.reconcile()` brings it up to date with the folder: read
what moved (`scan.py`, `folder.py`), plan the change (`diff.plan`), write it in one
transaction (`store.py`), then publish the next snapshot and the pass's status
(`health.py`). It also keeps the database in step with what is served: a lock file
retaken, a database file written again when it was deleted, replaced or found damaged, an
older copy put back made a new history. It is blocking and not re-entrant: it runs only
on the writer thread (`writer.py`), which also owns its database connection. A failed
commit leaves memory as it was, so the next pass tries again.

What the event loop reads of it is replaced whole, never changed in place: `snapshot`
(with the change log and its floor), `watch_dirs` and `status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from . import diff, health
from .committed import Committed
from .dbfile import WriterLock
from .folder import file_sig, list_folder
from .health import utc_now
from .model import Result, Served, Source, Status
from .nodefile import Schema
from .scan import SeenFiles, Stopped, classify, read_moved
from .settings import Settings
from .snapshot import ChangeLog, NodeView, Snapshot
from .store import StorageFault, Store, provisional_epoch

log = logging.getLogger("droq_registry.reconcile")


class Reconciler:
    """The registry's state between commits, and the reconcile pass that advances it."""

    def __init__(self, settings: Settings, store: Store | None, schema: Schema) -> None:
        """Without a store it serves nothing (revision 0, not ready) until `attach` gives
        it the database: a service waiting to become the writer."""
        self.settings = settings
        self.folder = settings.assets_dir
        self.schema = schema
        self.status = Status()
        self._stopping = threading.Event()
        self.store: Store | None = None
        #: The database's writer lock, once this service holds it (see writer.Writer.take_over).
        self.writer_lock: WriterLock | None = None
        #: Why the database must be opened again and given the served state (None: it need not).
        self._rewrite: str | None = None
        self.committed = Committed()
        self._seen = SeenFiles()
        self.snapshot = Snapshot.empty(provisional_epoch(), ChangeLog.of((), 0, settings.changes_keep))
        if store is not None:
            self.attach(store)

    def attach(self, store: Store) -> None:
        """Take the committed state from `store` and write to it from now on (called once,
        by the service that holds the database's writer lock, before any reconcile)."""
        loaded = store.load()
        epoch = self._own_history(store, loaded.epoch, loaded.revision)
        self.committed = Committed(loaded.sources, loaded.served)
        changes = ChangeLog.of(loaded.changes, loaded.changes_floor, self.settings.changes_keep)
        self._served(epoch, loaded.revision)
        self.snapshot = Snapshot.empty(epoch, changes).evolve(
            loaded.revision,
            {k: NodeView(v.owner, self.committed.node(v.owner)) for k, v in self.served.items()},
            (),
            self.sources,
            (),
        )
        self.store = store
        self.note(database="ok", database_error=None)

    def _own_history(self, store: Store, epoch: str, revision: int) -> str:
        """The epoch to serve the loaded state in: the database's, unless this history was
        served further than the database holds. Commits are synced before they are served,
        so only an older copy of the database put back in its place (a restored backup,
        written into the same file) holds less; its revisions after that point would count
        again, differently, under the same epoch. It becomes a new history instead."""
        lock = self.writer_lock
        served = None if lock is None else lock.served_to
        if served is None or served[0] != epoch or served[1] <= revision:
            return epoch
        new = store.start_new_history()
        log.warning(
            "database %s holds revision %d of epoch %s, but revision %d of it was served: it is an older copy"
            " put back in its place; its state goes on as a new history (epoch %s), and followers list again",
            store.path, revision, epoch, served[1], new,
        )
        return new

    def _served(self, epoch: str, revision: int) -> None:
        """Note in the lock file how far this history is served (before it is published)."""
        if self.writer_lock is not None:
            self.writer_lock.served(epoch, revision)

    @property
    def sources(self) -> dict[str, Source]:
        return self.committed.sources

    @property
    def served(self) -> dict[str, Served]:
        return self.committed.served

    @property
    def watch_dirs(self) -> frozenset[str]:
        """The folders of the components files, for the watcher (read by the event loop)."""
        return self.committed.watch_dirs

    @property
    def revision(self) -> int:
        return self.snapshot.revision

    @property
    def changes(self) -> ChangeLog:
        """The change log: part of the snapshot, so read `snapshot.changes` with the rest."""
        return self.snapshot.changes

    def stop(self) -> None:
        """Ask a reconcile in progress to give up before it writes (the service is stopping)."""
        self._stopping.set()

    def reconcile(self, named: Iterable[str] | None = None) -> Result:
        """Bring the store up to date with the folder.

        `named` are absolute paths the watcher reported. When every one of them is a node
        file or a components file, only those are looked at; otherwise (and with None) the
        whole folder is listed and every file whose stat moved is read.
        """
        started = time.perf_counter()
        try:
            self._check_database()
            result = self._reconcile(None if named is None else set(named), started)
        except (FolderMissing, Stopped):
            raise  # reported once by _reconcile, or shutting down: not a failed pass
        except Exception as exc:
            self._failed(exc)
            raise
        self._succeeded()
        return result

    def close(self) -> None:
        """Close the database (idempotent); on the thread that used it."""
        if self.store is not None:
            self.store.close()

    def note(self, **changes: Any) -> None:
        """Publish a new status with `changes` (one assignment: readers see all or none).
        Only the writer thread calls it, so no change is lost between read and replace."""
        self.status = replace(self.status, **changes)

    def _failed(self, exc: Exception) -> None:
        """Note a failed pass for /health; a damaged or replaced database is written again."""
        if isinstance(exc, StorageFault) and exc.cause in ("damaged", "replaced"):
            self._rewrite = self._rewrite or exc.cause
        self.status = health.failed(self.status, exc, self.revision)

    def _succeeded(self) -> None:
        self.status = health.succeeded(self.status, self.revision)

    def _check_database(self) -> None:
        """Before writing: when the database file was deleted or replaced under the service
        (its inode moved), or found damaged, open it again as at start-up and write the
        served state into it, so it holds what is served and the next commit follows on."""
        store = self.store
        if store is None:
            raise StorageFault("other", "the database is not open yet")
        lock = self.writer_lock
        if lock is not None and not lock.held():
            # Its lock file was deleted or replaced (someone cleaned the volume): a service
            # waiting for it may have taken a new one and be writing now.
            if not lock.retake():
                self.note(ready=False)  # what it serves may be stale: not ready until it writes again
                raise StorageFault(
                    "locked",
                    f"{store.path} was taken over by another registry ({lock.holder()}) after its lock"
                    " file was deleted or replaced; not ready until this service can write it again",
                )
            log.warning("the database's lock file %s was deleted or replaced; this service holds it again",
                        lock.path)
        why = store.moved() or self._rewrite
        if why is None:
            return
        self._rewrite = why
        try:
            store.reopen()
            self._write_again(store)
            # Its history is new (store.rewrite): followers are told so, and take the new
            # cursor without relisting when their content is the same.
            snap = self.snapshot
            epoch = store.epoch()
            self._served(epoch, snap.revision)
            self.snapshot = snap.evolve(snap.revision, {}, (), {}, (), epoch=epoch)
        except StorageFault as exc:
            what = {"deleted": "was deleted", "replaced": "was replaced"}.get(why, f"is {why}")
            raise StorageFault(
                exc.cause, f"the database {what} under the running service; writing it again failed: {exc}"
            ) from exc
        self._rewrite = None
        log.warning(
            "database %s was %s under the running service; revision %d is written to it again",
            store.path, why, self.revision,
        )

    def _write_again(self, store: Store) -> None:
        changes = self.changes
        nodes = ((node_id, s.owner, self.committed.node(s.owner)) for node_id, s in sorted(self.served.items()))
        store.rewrite(
            self.revision,
            changes.floor,
            self.sources.values(),
            nodes,
            changes.since(changes.floor, self.revision),
            utc_now(),
        )

    def _reconcile(self, named: set[str] | None, started: float) -> Result:
        folder = self.folder
        forced, targeted = classify(named, self.folder, self.sources)
        if targeted:
            listing = {name: file_sig(os.path.join(folder, name)) for name in forced}
        else:
            found = list_folder(folder)
            if found is None:
                if self.status.folder_present is not False:
                    log.warning("assets folder %s is missing; serving the last state and waiting for it", folder)
                self.note(folder_present=False)
                raise FolderMissing(str(folder))
            if self.status.folder_present is False:
                log.info("assets folder %s is back; loading it", folder)
            self.note(folder_present=True)
            listing = dict(found)
            listing.update({name: None for name in self.sources if name not in found})

        reading = read_moved(folder, listing, forced, self.sources, self._seen, self.schema, self._stopping)
        outcomes, read = reading.outcomes, reading.read

        now = utc_now()
        committed = self.committed
        plan = diff.plan(committed.sources, committed.claims, committed.served, outcomes, now)
        revision = self.revision
        if plan:
            revision += 1
            views: dict[str, NodeView] = {}
            assert self.store is not None  # _check_database made sure
            with self.store.transaction(revision) as tx:
                for node_id in plan.nodes_drop:
                    tx.drop_node(node_id)
                for path in plan.sources_drop:
                    tx.drop_source(path)
                for source in plan.sources_put.values():
                    tx.put_source(source)
                # One node at a time: decoded, written, turned into its answers, let go.
                for node_id, served in sorted(plan.nodes_put.items()):
                    node = committed.node(served.owner, plan)
                    tx.put_node(node_id, served.owner, node, now)
                    views[node_id] = NodeView(served.owner, node)
                changes, floor = tx.record(plan.records, now, self.settings.changes_keep)
            committed.apply(plan)
            self._served(self.snapshot.epoch, revision)
            self.snapshot = self.snapshot.evolve(
                revision, views, plan.nodes_drop, plan.sources_put, plan.sources_drop,
                self.snapshot.changes.extend(changes, floor),
            )
        self._seen.remember(reading.seen, reading.deps_seen, plan.sources_drop)

        duration_ms = (time.perf_counter() - started) * 1000
        self.status = health.done(self.status, plan, now, duration_ms)
        if plan:
            health.log_commit(plan, revision, read, duration_ms)
        return Result(revision, bool(plan), plan.counts, duration_ms, read)


class FolderMissing(Exception):
    """The assets folder is not there; nothing was changed."""

