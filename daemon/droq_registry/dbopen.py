"""Opening the database file: one place that connects, prepares, checks and, when a
database of ours is unusable, sets it aside and starts afresh.

The database is a derived index of the node files: when it is missing, or a SQLite
database that is damaged or of another schema version, it is started afresh (and the
operator told); the next reconcile fills it from the files. Anything else at the path
(see `dbfile.check`) is refused and left as it is. Every SQLite error comes out as the
`StorageFault` it stands for.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from . import dbfile
from .dbfile import StorageFault
from .tables import SCHEMA, SCHEMA_VERSION, schema_version, start_history

# Its lines are the store's, as operators have always read them.
log = logging.getLogger("droq_registry.store")

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
        schema_version(conn, db_path)
    except sqlite3.Error:
        pass  # damaged, or locked by another program: the writer handles both
    finally:
        conn.close()


class _Damaged(Exception):
    """A SQLite database of ours that cannot be used as it is: set it aside, start afresh."""


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
    # FULL: a commit is on disk before its revision is served. With NORMAL, a power loss
    # could take the last commits back while followers hold their revisions, and the
    # history (same epoch, store.epoch_of) would go on from an older state. Commits are
    # one per change of the folder, so the fsync each costs is cheap here.
    conn.execute("PRAGMA synchronous = FULL")


def open_connection(path: Path) -> sqlite3.Connection:
    dbfile.check_file(path)
    try:
        existed = path.stat().st_size > 0
    except FileNotFoundError:
        existed = False
    try:
        return _connect_checked(path, existed)
    except _Damaged as exc:
        log.warning("database %s is unusable (%s); rebuilding it from the node files", path, exc)
        set_aside(path)
        return _connect_checked(path, False)


def _connect_checked(path: Path, existed: bool) -> sqlite3.Connection:
    """A prepared connection to a usable registry database at `path` (created if new)."""
    try:
        conn = _connection_to(path)
    except sqlite3.Error as exc:
        raise fault(path, exc, "cannot open the database") from exc
    try:
        # Look before touching: another program's database is left as it is.
        version = schema_version(conn, path)
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
        start_history(conn)
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


def set_aside(path: Path) -> None:
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
