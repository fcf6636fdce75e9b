"""The reconcile state machine: one pass from the folder to a committed revision.

`Reconciler` holds what the last commit left (sources, served nodes, which files claim
which node id, what each file's stat was when it was read, the snapshot) and
`Reconciler.reconcile()` brings it up to date with the folder: read what moved
(`folder.py`), plan the change (`diff.plan`), write it in one transaction (`store.py`),
then publish the next snapshot. It is blocking and not re-entrant: it runs only on the
writer thread (`writer.py`), which also owns its database connection. A failed commit
leaves memory as it was, so the next pass tries again.

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
from datetime import UTC, datetime
from typing import Any

from . import diff, nodebytes
from .dbfile import WriterLock
from .folder import TransientError, file_sig, list_folder
from .model import Result, Served, Source, Status
from .nodefile import Schema
from .scan import SeenFiles, Stopped, classify, read_moved
from .settings import Settings
from .snapshot import ChangeLog, NodeView, Snapshot
from .store import StorageFault, Store, StoreError, provisional_epoch

log = logging.getLogger("droq_registry.reconcile")

def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")



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
        self.sources: dict[str, Source] = {}
        self.served: dict[str, Served] = {}
        self.claims: dict[str, set[str]] = {}
        #: The folders of every components file some node file points to, for the watcher.
        #: Replaced whole by the writer thread; the event loop only ever reads it.
        self.watch_dirs: frozenset[str] = frozenset()
        self._seen = SeenFiles()
        self.snapshot = Snapshot.empty(provisional_epoch(), ChangeLog.of((), 0, settings.changes_keep))
        if store is not None:
            self.attach(store)

    def attach(self, store: Store) -> None:
        """Take the committed state from `store` and write to it from now on (called once,
        by the service that holds the database's writer lock, before any reconcile)."""
        loaded = store.load()
        epoch = self._own_history(store, loaded.epoch, loaded.revision)
        self.sources = loaded.sources
        self.served = loaded.served
        for source in self.sources.values():
            self._claim(source)
        self.watch_dirs = _folders_of(self.sources)
        changes = ChangeLog.of(loaded.changes, loaded.changes_floor, self.settings.changes_keep)
        self._served(epoch, loaded.revision)
        self.snapshot = Snapshot.empty(epoch, changes).evolve(
            loaded.revision,
            {k: self._view(v.owner) for k, v in self.served.items()},
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
        """Note a failed pass for /health; log one line when the cause changes, not each time."""
        status = self.status
        update: dict[str, Any] = {
            "reconciles": {**status.reconciles, "failed": status.reconciles["failed"] + 1},
            "failed_passes": status.failed_passes + 1,
            "failing_since": status.failing_since or utc_now(),
        }
        known = isinstance(exc, (StoreError, OSError, TransientError))
        message = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, StorageFault):
            update.update(database="failing", database_error=message)
            if exc.cause in ("damaged", "replaced"):
                self._rewrite = self._rewrite or exc.cause
        if message == status.last_error:
            log.debug("reconcile failed again (%s)", message)
        elif known:
            log.error("reconcile failed: %s; serving revision %d and trying again", message, self.revision)
        else:  # not a fault of the disk or the files: a bug, worth its traceback once
            log.exception("reconcile failed: %s; serving revision %d and trying again", message, self.revision)
        self.note(last_error=message, **update)

    def _succeeded(self) -> None:
        status = self.status
        if status.last_error is not None:
            log.info(
                "reconcile works again after %d failed pass(es) since %s; serving revision %d",
                status.failed_passes, status.failing_since, self.revision,
            )
        self.note(last_error=None, failed_passes=0, failing_since=None, database="ok", database_error=None)

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
        nodes = ((node_id, s.owner, nodebytes.unpack(self._packed(s.owner))) for node_id, s in sorted(self.served.items()))
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
        plan = diff.plan(self.sources, self.claims, self.served, outcomes, now)
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
                    node = nodebytes.unpack(self._packed(served.owner, plan))
                    tx.put_node(node_id, served.owner, node, now)
                    views[node_id] = NodeView(served.owner, node)
                changes, floor = tx.record(plan.records, now, self.settings.changes_keep)
            self._commit(plan)
            self._served(self.snapshot.epoch, revision)
            self.snapshot = self.snapshot.evolve(
                revision, views, plan.nodes_drop, plan.sources_put, plan.sources_drop,
                self.snapshot.changes.extend(changes, floor),
            )
        self._seen.remember(reading.seen, reading.deps_seen, plan.sources_drop)

        duration_ms = (time.perf_counter() - started) * 1000
        result_kind = "changed" if plan else "unchanged"
        self.note(
            ready=True,
            last_reconcile_at=now,
            last_duration_ms=round(duration_ms, 3),
            reconciles={**self.status.reconciles, result_kind: self.status.reconciles[result_kind] + 1},
        )
        counts = plan.counts
        if plan:
            log.info(
                "reconciled revision %d: added=%d updated=%d removed=%d errors=%d files_read=%d duration_ms=%.1f",
                revision, counts["added"], counts["updated"], counts["removed"], counts["errors"], read, duration_ms,
            )
            for source in plan.sources_put.values():
                if source.state != "ok":
                    log.warning("%s: %s", source.path, source.error)
        return Result(revision, bool(plan), counts, duration_ms, read)

    def _packed(self, path: str, plan: diff.Plan | None = None) -> bytes:
        source = plan.sources_put.get(path) if plan is not None else None
        source = source or self.sources[path]
        assert source.packed is not None
        return source.packed

    def _view(self, path: str) -> NodeView:
        return NodeView(path, nodebytes.unpack(self._packed(path)))

    def _commit(self, plan: diff.Plan) -> None:
        deps_moved = False
        for path, source in plan.sources_drop.items():
            self._unclaim(source)
            self.sources.pop(path, None)
            deps_moved = deps_moved or bool(source.deps)
        for path, source in plan.sources_put.items():
            old = self.sources.get(path)
            if old is not None:
                self._unclaim(old)
            self.sources[path] = source
            self._claim(source)
            deps_moved = deps_moved or bool(source.deps) or (old is not None and bool(old.deps))
        for node_id in plan.nodes_drop:
            self.served.pop(node_id, None)
        self.served.update(plan.nodes_put)
        if deps_moved:
            self.watch_dirs = _folders_of(self.sources)

    def _claim(self, source: Source) -> None:
        if source.node_id is not None and source.fingerprint is not None:
            self.claims.setdefault(source.node_id, set()).add(source.path)

    def _unclaim(self, source: Source) -> None:
        if source.node_id is not None:
            paths = self.claims.get(source.node_id)
            if paths is not None:
                paths.discard(source.path)
                if not paths:
                    del self.claims[source.node_id]


def _folders_of(sources: dict[str, Source]) -> frozenset[str]:
    return frozenset(os.path.dirname(dep) for source in sources.values() for dep in source.deps)


class FolderMissing(Exception):
    """The assets folder is not there; nothing was changed."""

