"""SQLite: the schema, the one write connection, `apply(plan)` in one transaction.

The only module that imports sqlite3. The database is a derived index of the node files:
when it is missing, or a SQLite database that is damaged or of another schema version,
`Store.open` starts it afresh and says so; the next reconcile fills it from the files.
Anything else at the path (see `dbfile.check`) is refused and left as it is.

Every SQLite error is turned into a `StorageFault` whose cause (disk full, I/O error,
read-only, locked, damaged...) and message say what happened; the registry reports it and
tries again. A file deleted or replaced under the running service is noticed (`moved`),
opened again as at start-up, and given the served state again (`rewrite`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import dbfile
from .dbfile import StorageFault, StoreError
from .model import Change, ChangeKind, Node, Served, Source

log = logging.getLogger("droq_registry.store")

SCHEMA_VERSION = "2"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id              TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    source_code_location TEXT,
    docker_image         TEXT,
    deployment_location  TEXT NOT NULL DEFAULT 'local',
    api_url              TEXT,
    ip_address           TEXT,
    status               TEXT NOT NULL DEFAULT 'active',
    priority             INTEGER NOT NULL DEFAULT 0,
    metadata_json        TEXT NOT NULL DEFAULT '{}',
    source               TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS components (
    id              INTEGER PRIMARY KEY,
    node_id         TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
    component_class TEXT NOT NULL,
    module_path     TEXT NOT NULL,
    info_json       TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL,
    UNIQUE (node_id, component_class)
);
CREATE INDEX IF NOT EXISTS components_by_class ON components (component_class);
CREATE TABLE IF NOT EXISTS sources (
    path         TEXT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('ok', 'error', 'conflict')),
    node_id      TEXT,
    doc          BLOB,  -- Source.packed: the last good node, packed canonical JSON (nodefile.pack)
    digest       TEXT,  -- Source.fingerprint: its identity (nodefile.fingerprint)
    content_hash TEXT,
    error        TEXT,
    deps_json    TEXT NOT NULL DEFAULT '[]',
    applied_at   TEXT,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq      INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    node_id  TEXT,
    source   TEXT,
    at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_revision ON changes (revision);
"""


__all__ = ["Loaded", "StorageFault", "Store", "StoreError", "Transaction", "connect"]

#: How long a write waits for a lock another program holds before it fails as "locked"
#: (and is retried). Short: with one writer per database, only other programs lock it,
#: and a pass stuck in SQLite's busy loop would hold up the service's shutdown.
BUSY_SECONDS = 2.0

_CAUSES = {
    sqlite3.SQLITE_FULL: ("disk_full", "the disk is full"),
    sqlite3.SQLITE_IOERR: ("io_error", "an I/O error"),
    sqlite3.SQLITE_READONLY: ("read_only", "the database is read-only"),
    sqlite3.SQLITE_PERM: ("permission", "permission denied"),
    sqlite3.SQLITE_CANTOPEN: ("other", "the file cannot be opened"),
    sqlite3.SQLITE_BUSY: ("locked", "another program holds a lock on the database"),
    sqlite3.SQLITE_LOCKED: ("locked", "another program holds a lock on the database"),
    sqlite3.SQLITE_CORRUPT: ("damaged", "the database is damaged"),
    sqlite3.SQLITE_NOTADB: ("damaged", "the database is damaged"),
}


def fault(path: Path, exc: sqlite3.Error, doing: str) -> StorageFault:
    """The storage fault an SQLite error stands for, with the real cause in its message."""
    code = getattr(exc, "sqlite_errorcode", None)
    cause, words = _CAUSES.get((code or 0) & 0xFF, ("other", "a database error"))
    return StorageFault(cause, f"{path}: {doing}: {words} ({exc})")


def check_path(db_path: Path, assets_dir: Path) -> None:
    """Everything start-up refuses with one line (StoreError): what `dbfile.check` refuses,
    and a SQLite database of another program. Looks only; changes nothing. A damaged or
    outdated database of ours passes: the writer sets it aside once it holds the lock."""
    dbfile.check(db_path, assets_dir)
    try:
        if db_path.stat().st_size == 0:
            return
    except FileNotFoundError:
        return
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_SECONDS)
    except sqlite3.Error:
        return  # the writer will say why it cannot open it
    try:
        _schema_version(conn, db_path)
    except sqlite3.Error:
        pass  # damaged, or locked by another program: the writer handles both
    finally:
        conn.close()


class _Damaged(Exception):
    """A SQLite database of ours that cannot be used as it is: set it aside, start afresh."""


@dataclass(frozen=True)
class Loaded:
    """Everything the service needs from the database at start-up."""

    revision: int
    changes_floor: int
    sources: dict[str, Source]
    served: dict[str, Served]
    changes: list[Change]


def connect(path: Path) -> sqlite3.Connection:
    """A prepared connection: autocommit mode, WAL, foreign keys on. It may be used only on
    the thread that opened it (sqlite3's `check_same_thread`): the service's one connection
    is the writer thread's (writer.py)."""
    conn = _connection_to(path)
    prepare(conn)
    return conn


def _connection_to(path: Path) -> sqlite3.Connection:
    """Every connection is opened here, in autocommit mode (transactions are explicit)."""
    return sqlite3.connect(path, isolation_level=None, timeout=BUSY_SECONDS)


def prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


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
        return cls(path, _open(path))

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
        self._conn = _open(self.path)
        self._identity = dbfile.identity(self.path)
        self._note_companions()

    def start_afresh(self, why: str) -> None:
        """Set the database aside (it is ours but unusable: `why`) and open an empty one."""
        self.close()
        log.warning("database %s is unusable (%s); rebuilding it from the node files", self.path, why)
        _set_aside(self.path)
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
            revision=int(meta.get("revision", 0)),
            changes_floor=int(meta.get("changes_floor", 0)),
            sources=sources,
            served=served,
            changes=changes,
        )

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
            current = int(_meta(conn, "revision", "0"))
            if current != revision - 1:
                raise StorageFault(
                    "replaced",
                    f"{self.path}: the database is at revision {current}, expected {revision - 1}:"
                    " another program changed it",
                )
            yield Transaction(conn, revision)
            _set_meta(conn, "revision", str(revision))

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
        `nodes` are (node_id, owning file, node)."""
        with self._writing(f"cannot write revision {revision} again") as conn:
            for table in ("components", "nodes", "sources", "changes"):
                conn.execute(f"DELETE FROM {table}")
            for source in sources:
                _put_source(conn, source)
            for node_id, owner, node in nodes:
                _put_node(conn, node_id, owner, node, now)
            conn.executemany(
                "INSERT INTO changes (revision, kind, node_id, source, at) VALUES (?, ?, ?, ?, ?)",
                [(c.revision, c.kind, c.node_id, c.source, c.at) for c in changes],
            )
            _set_meta(conn, "revision", str(revision))
            _set_meta(conn, "changes_floor", str(floor))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is still open. After a failed COMMIT (disk full, I/O error) SQLite
    may have rolled back already; a ROLLBACK then fails with "no transaction is active",
    which must not take the place of the real cause."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is unusable; the caller's error says why, and close() cleans up


def _open(path: Path) -> sqlite3.Connection:
    dbfile.check_file(path)
    try:
        existed = path.stat().st_size > 0
    except FileNotFoundError:
        existed = False
    try:
        return _connect_checked(path, existed)
    except _Damaged as exc:
        log.warning("database %s is unusable (%s); rebuilding it from the node files", path, exc)
        _set_aside(path)
        return _connect_checked(path, False)


def _connect_checked(path: Path, existed: bool) -> sqlite3.Connection:
    """A prepared connection to a usable registry database at `path` (created if new)."""
    try:
        conn = _connection_to(path)
    except sqlite3.Error as exc:
        raise fault(path, exc, "cannot open the database") from exc
    try:
        # Look before touching: another program's database is left as it is.
        version = _schema_version(conn, path)
        if version is not None and version != SCHEMA_VERSION:
            raise _Damaged(f"schema version {version}, expected {SCHEMA_VERSION}")
        if existed:
            # A damaged page anywhere would fail a later write; find it now (cheap:
            # tens of milliseconds for a registry of 1,000 large nodes).
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise _Damaged(f"damaged: {verdict}")
        prepare(conn)
        conn.executescript(SCHEMA)
        if version is None:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    except sqlite3.Error as exc:
        conn.close()
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if existed and code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise _Damaged(str(exc)) from None
        raise fault(path, exc, "cannot open the database") from exc
    except BaseException:
        conn.close()
        raise
    if not existed:
        log.info("database %s created; it will be filled from the node files", path)
    return conn


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
        _put_source(self._conn, source)

    def put_node(self, node_id: str, owner: str, node: Node, now: str) -> None:
        _put_node(self._conn, node_id, owner, node, now)

    def record(
        self, records: Sequence[tuple[ChangeKind, str | None, str | None]], now: str, keep: int
    ) -> tuple[list[Change], int]:
        """Append the change records of this revision; return them and the log's new floor."""
        changes = [Change(self.revision, kind, node_id, src, now) for kind, node_id, src in records]
        self._conn.executemany(
            "INSERT INTO changes (revision, kind, node_id, source, at) VALUES (?, ?, ?, ?, ?)",
            [(c.revision, c.kind, c.node_id, c.source, c.at) for c in changes],
        )
        return changes, _prune_changes(self._conn, keep)


def _schema_version(conn: sqlite3.Connection, path: Path) -> str | None:
    tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    if "meta" not in tables:
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StorageFault("foreign", f"{path}: is a SQLite database of another program (tables: "
                               f"{shown}), not a registry database; refusing to touch it")
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _set_aside(path: Path) -> None:
    """Keep the unusable database (with its WAL, which SQLite finds beside the new name)
    for inspection, and make room for an empty one. Only ever called on a file whose header
    says SQLite and whose content is damaged or of another schema version."""
    aside = path.with_name(path.name + ".unusable")
    try:
        os.replace(path, aside)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + "-wal"))
        shm = path.with_name(path.name + "-shm")  # only an index of the WAL, rebuilt on open
        if shm.exists():
            shm.unlink()
    except OSError as exc:
        raise dbfile.os_fault(exc, f"{path}: cannot set the unusable database aside") from None


def _meta(conn: sqlite3.Connection, key: str, default: str) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _put_source(conn: sqlite3.Connection, s: Source) -> None:
    conn.execute(
        "INSERT INTO sources (path, state, node_id, doc, content_hash, error, deps_json,"
        " applied_at, updated_at, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (path) DO UPDATE SET state = excluded.state, node_id = excluded.node_id,"
        " doc = excluded.doc, digest = excluded.digest, content_hash = excluded.content_hash,"
        " error = excluded.error,"
        " deps_json = excluded.deps_json, applied_at = excluded.applied_at,"
        " updated_at = excluded.updated_at",
        (
            s.path,
            s.state,
            s.node_id,
            s.packed,
            s.content_hash,
            s.error,
            orjson.dumps(list(s.deps)).decode(),
            s.applied_at,
            s.updated_at,
            s.fingerprint,
        ),
    )


def _put_node(conn: sqlite3.Connection, node_id: str, owner: str, node: Node, now: str) -> None:
    """Insert or update one node; add, change and remove exactly the components that differ."""
    columns = (
        node.name,
        node.description,
        node.source_code_location,
        node.docker_image,
        node.deployment_location,
        node.api_url,
        node.ip_address,
        node.status,
        node.priority,
        orjson.dumps(node.extra).decode(),
        owner,
    )
    updated = conn.execute(
        "UPDATE nodes SET name = ?, description = ?, source_code_location = ?, docker_image = ?,"
        " deployment_location = ?, api_url = ?, ip_address = ?, status = ?, priority = ?,"
        " metadata_json = ?, source = ?, updated_at = ? WHERE node_id = ?",
        (*columns, now, node_id),
    ).rowcount
    if not updated:
        conn.execute(
            "INSERT INTO nodes (name, description, source_code_location, docker_image,"
            " deployment_location, api_url, ip_address, status, priority, metadata_json, source,"
            " created_at, updated_at, node_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*columns, now, now, node_id),
        )
    wanted = {
        c.component_class: (c.module_path, orjson.dumps(c.info).decode()) for c in node.components
    }
    have = {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            "SELECT component_class, module_path, info_json FROM components WHERE node_id = ?",
            (node_id,),
        )
    }
    gone = [(node_id, cls) for cls in have if cls not in wanted]
    if gone:
        conn.executemany("DELETE FROM components WHERE node_id = ? AND component_class = ?", gone)
    changed = [(*wanted[cls], node_id, cls) for cls in wanted if cls in have and have[cls] != wanted[cls]]
    if changed:
        conn.executemany(
            "UPDATE components SET module_path = ?, info_json = ? WHERE node_id = ? AND component_class = ?",
            changed,
        )
    new = [(node_id, cls, *wanted[cls], now) for cls in wanted if cls not in have]
    if new:
        conn.executemany(
            "INSERT INTO components (node_id, component_class, module_path, info_json, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            new,
        )


def _prune_changes(conn: sqlite3.Connection, keep: int) -> int:
    """Keep the newest `keep` records, dropping whole revisions; return the new floor."""
    floor = int(_meta(conn, "changes_floor", "0"))
    row = conn.execute(
        "SELECT revision FROM changes ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)
    ).fetchone()
    if row is not None:
        floor = max(floor, int(row[0]))
        conn.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
        _set_meta(conn, "changes_floor", str(floor))
    return floor
