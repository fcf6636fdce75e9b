"""The database's one write connection: load the committed state, write one revision in
one transaction, and notice the file being deleted or replaced under the service.

`Store` is opened, used and closed on the writer thread only (writer.py). Each write runs
inside `BEGIN IMMEDIATE` ... `COMMIT`, and any exception rolls it back. Every SQLite error
comes out as a `StorageFault` whose cause (disk full, I/O error, read-only, locked,
damaged...) and message say what happened; the reconciler reports it and tries again. A
file deleted or replaced under the running service is noticed (`moved`), opened again as
at start-up (`dbopen.py`), and given the served state again (`rewrite`). The tables and
their rows are `tables.py`'s.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import dbfile
from .dbfile import StorageFault, StoreError
from .dbopen import check_path, connect, fault, open_connection, set_aside
from .model import Change, ChangeKind, Node, Served, Source
from .tables import HISTORY, SCHEMA_VERSION, meta, new_history, prune_changes, put_node, put_source, set_meta

log = logging.getLogger("droq_registry.store")

__all__ = ["SCHEMA_VERSION", "Loaded", "StorageFault", "Store", "StoreError", "Transaction", "check_path", "connect"]


def epoch_of(history: str, inode: int) -> str:
    """The epoch of a database: which history its revision numbers count.

    It names one database file: the random token written when the file was created
    (`tables.HISTORY`), and the file's inode, so a copy of the file (a replica seeded from
    another's database, a backup restored over a newer one) is another history too, while
    a restart on the same file keeps it. 16 characters of `[A-Za-z0-9_-]`."""
    digest = hashlib.blake2b(f"{history}:{inode}".encode(), digest_size=12, person=b"droq-epoch").digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")


def provisional_epoch() -> str:
    """The epoch of a service that has no database yet (waiting for the writer lock): its
    own, so no cursor from a real history is ever taken by it."""
    return epoch_of(secrets.token_urlsafe(16), 0)


@dataclass(frozen=True)
class Loaded:
    """Everything the service needs from the database at start-up."""

    epoch: str
    revision: int
    changes_floor: int
    sources: dict[str, Source]
    served: dict[str, Served]
    changes: list[Change]


class Store:
    """The database's one write connection. It is opened, used and closed on one thread
    (the writer thread, writer.py), by the service that holds `dbfile.WriterLock`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._identity = dbfile.identity(path)
        self._companions: dict[str, tuple[int, int] | None] = {}
        self._note_companions()

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (or create) the database; start afresh when it is a damaged or outdated
        database of ours. Raises StorageFault (nothing renamed) for anything else."""
        return cls(path, open_connection(path))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def moved(self) -> str | None:
        """"deleted" or "replaced" when the file at the path is not the one this store
        writes any more (its inode changed), else None."""
        now = dbfile.identity(self.path)
        if now == self._identity:
            return None
        return "deleted" if now is None else "replaced"

    def _companion(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _note_companions(self) -> None:
        """Remember which `-wal` and `-shm` files are this connection's (they exist after
        the first write), to know them from a replacement's later."""
        self._companions = {suffix: dbfile.identity(self._companion(suffix)) for suffix in ("-wal", "-shm")}

    def reopen(self) -> None:
        """Open the file at the path again, as at start-up (a damaged one is set aside)."""
        moved = self.moved() is not None
        self.close()
        if moved:
            # SQLite leaves the WAL and its index behind when the database file was deleted
            # or replaced; beside a new file they would be replayed into it. They are the
            # old file's (their inodes say so), whose state is written again anyway.
            for suffix, known in self._companions.items():
                if known is not None and dbfile.identity(self._companion(suffix)) == known:
                    self._companion(suffix).unlink(missing_ok=True)
        self._conn = open_connection(self.path)
        self._identity = dbfile.identity(self.path)
        self._note_companions()

    def start_afresh(self, why: str) -> None:
        """Set the database aside (it is ours but unusable: `why`) and open an empty one."""
        self.close()
        log.warning("database %s is unusable (%s); rebuilding it from the node files", self.path, why)
        set_aside(self.path)
        self.reopen()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageFault("other", f"{self.path}: the database is not open")
        return self._conn

    def load(self) -> Loaded:
        """Read the committed state: revision, sources, served nodes and the change log.
        A state that does not hold together raises StorageFault("damaged")."""
        try:
            return self._load(self._connection())
        except sqlite3.Error as exc:
            raise fault(self.path, exc, "cannot read the committed state") from exc

    def _load(self, conn: sqlite3.Connection) -> Loaded:
        conn.execute("BEGIN")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            sources = {
                row[0]: Source(
                    path=row[0],
                    state=row[1],
                    node_id=row[2],
                    packed=row[3],
                    content_hash=row[4],
                    error=row[5],
                    deps=tuple(orjson.loads(row[6])),
                    applied_at=row[7],
                    updated_at=row[8],
                    fingerprint=row[9],
                )
                for row in conn.execute(
                    "SELECT path, state, node_id, doc, content_hash, error, deps_json,"
                    " applied_at, updated_at, digest FROM sources"
                )
            }
            served: dict[str, Served] = {}
            for node_id, source in conn.execute("SELECT node_id, source FROM nodes"):
                owner = sources.get(source)
                if owner is None or owner.fingerprint is None or owner.node_id != node_id:
                    raise StorageFault("damaged", f"{self.path}: node {node_id!r} has no source {source!r}")
                served[node_id] = Served(source, owner.fingerprint)
            changes = [
                Change(*row)
                for row in conn.execute(
                    "SELECT revision, kind, node_id, source, at FROM changes ORDER BY seq"
                )
            ]
        finally:
            conn.execute("COMMIT")
        return Loaded(
            epoch=self._epoch(meta.get(HISTORY)),
            revision=int(meta.get("revision", 0)),
            changes_floor=int(meta.get("changes_floor", 0)),
            sources=sources,
            served=served,
            changes=changes,
        )

    def epoch(self) -> str:
        """The epoch of the open database file (see `epoch_of`)."""
        try:
            return self._epoch(meta(self._connection(), HISTORY, ""))
        except sqlite3.Error as exc:
            raise fault(self.path, exc, "cannot read the database's history token") from exc

    def start_new_history(self) -> str:
        """Give the database a new history token (one transaction); return its new epoch."""
        with self._writing("cannot start a new history") as conn:
            new_history(conn)
        return self.epoch()

    def _epoch(self, history: str | None) -> str:
        if not history:
            raise StorageFault("damaged", f"{self.path}: the database has no history token (meta {HISTORY!r})")
        return epoch_of(history, 0 if self._identity is None else self._identity[1])

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... `COMMIT`; any exception rolls back, and an SQLite error
        comes out as the StorageFault it stands for (never as a failed ROLLBACK)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            self._note_companions()
        except sqlite3.Error as exc:
            raise fault(self.path, exc, doing) from exc

    @contextmanager
    def transaction(self, revision: int) -> Iterator[Transaction]:
        """One write: `BEGIN IMMEDIATE`, the caller's changes, the new revision, `COMMIT`.
        Any exception rolls everything back."""
        with self._writing(f"cannot write revision {revision}") as conn:
            current = int(meta(conn, "revision", "0"))
            if current != revision - 1:
                raise StorageFault(
                    "replaced",
                    f"{self.path}: the database is at revision {current}, expected {revision - 1}:"
                    " another program changed it",
                )
            yield Transaction(conn, revision)
            set_meta(conn, "revision", str(revision))

    def rewrite(
        self,
        revision: int,
        floor: int,
        sources: Iterable[Source],
        nodes: Iterable[tuple[str, str, Node]],
        changes: Iterable[Change],
        now: str,
    ) -> None:
        """Make the database hold exactly this state, in one transaction: what the service
        serves, written again into a database that was deleted, replaced or damaged.
        `nodes` are (node_id, owning file, node).

        The state goes on in a new history (a new token): the file held something else, and
        whatever it held may have been served under the file's epoch. A file overwritten in
        place keeps its inode and token, so without a new token an older copy's revisions, or
        another writer's (one that took the lock while this service's lock file was deleted),
        would count again, differently, under one epoch."""
        with self._writing(f"cannot write revision {revision} again") as conn:
            new_history(conn)
            for table in ("components", "nodes", "sources", "changes"):
                conn.execute(f"DELETE FROM {table}")
            for source in sources:
                put_source(conn, source)
            for node_id, owner, node in nodes:
                put_node(conn, node_id, owner, node, now)
            conn.executemany(
                "INSERT INTO changes (revision, kind, node_id, source, at) VALUES (?, ?, ?, ?, ?)",
                [(c.revision, c.kind, c.node_id, c.source, c.at) for c in changes],
            )
            set_meta(conn, "revision", str(revision))
            set_meta(conn, "changes_floor", str(floor))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is still open. After a failed COMMIT (disk full, I/O error) SQLite
    may have rolled back already; a ROLLBACK then fails with "no transaction is active",
    which must not take the place of the real cause."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is unusable; the caller's error says why, and close() cleans up


class Transaction:
    """The writes of one reconcile, inside `Store.transaction`."""

    def __init__(self, conn: sqlite3.Connection, revision: int) -> None:
        self._conn = conn
        self.revision = revision

    def drop_node(self, node_id: str) -> None:
        self._conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))

    def drop_source(self, path: str) -> None:
        self._conn.execute("DELETE FROM sources WHERE path = ?", (path,))

    def put_source(self, source: Source) -> None:
        put_source(self._conn, source)

    def put_node(self, node_id: str, owner: str, node: Node, now: str) -> None:
        put_node(self._conn, node_id, owner, node, now)

    def record(
        self, records: Sequence[tuple[ChangeKind, str | None, str | None]], now: str, keep: int
    ) -> tuple[list[Change], int]:
        """Append the change records of this revision; return them and the log's new floor."""
        changes = [Change(self.revision, kind, node_id, src, now) for kind, node_id, src in records]
        self._conn.executemany(
            "INSERT INTO changes (revision, kind, node_id, source, at) VALUES (?, ?, ?, ?, ?)",
            [(c.revision, c.kind, c.node_id, c.source, c.at) for c in changes],
        )
        return changes, prune_changes(self._conn, keep)
