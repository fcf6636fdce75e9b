"""SQLite: the schema, the one write connection, `apply(plan)` in one transaction.

The only module that imports sqlite3. The database is a derived index of the node files:
when it is missing, damaged or of another schema version, `Store.open` starts it afresh
and says so; the next reconcile fills it from the files.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from .diff import Served
from .model import Change, ChangeKind, Node, Source

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
    doc          BLOB,  -- the last good node, compressed canonical JSON (nodefile.pack)
    digest       TEXT,  -- its identity (nodefile.digest)
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


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message says where and why."""


@dataclass(frozen=True)
class Loaded:
    """Everything the service needs from the database at start-up."""

    revision: int
    changes_floor: int
    sources: dict[str, Source]
    served: dict[str, Served]
    changes: list[Change]


def connect(path: Path) -> sqlite3.Connection:
    """Every connection is prepared here: autocommit mode, WAL, foreign keys on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    prepare(conn)
    return conn


def prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


class Store:
    """The single writer. Callers serialise access (one reconcile at a time)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (or create) the database; rebuild it when it is unusable."""
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists() and path.stat().st_size > 0
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            try:
                # Look before touching: another program's database is set aside unchanged.
                version = _schema_version(conn)
                if version is not None and version != SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
                if existed:
                    # A damaged page anywhere would fail a later write; find it now (cheap:
                    # tens of milliseconds for a registry of 1,000 large nodes).
                    verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
                    if verdict != "ok":
                        raise sqlite3.DatabaseError(f"damaged: {verdict}")
                prepare(conn)
                conn.executescript(SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not existed:
                raise StoreError(f"{path}: cannot create the database: {exc}") from None
            log.warning("database %s is unusable (%s); rebuilding it from the node files", path, exc)
            _set_aside(path)
            return cls.open(path)
        if not existed:
            log.info("database %s created; it will be filled from the node files", path)
        return cls(path, conn)

    def close(self) -> None:
        self._conn.close()

    def load(self) -> Loaded:
        """Read the committed state: revision, sources, served nodes and the change log."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            sources = {
                row[0]: Source(
                    path=row[0],
                    state=row[1],
                    node_id=row[2],
                    doc=row[3],
                    content_hash=row[4],
                    error=row[5],
                    deps=tuple(orjson.loads(row[6])),
                    applied_at=row[7],
                    updated_at=row[8],
                    digest=row[9],
                )
                for row in conn.execute(
                    "SELECT path, state, node_id, doc, content_hash, error, deps_json,"
                    " applied_at, updated_at, digest FROM sources"
                )
            }
            served: dict[str, Served] = {}
            for node_id, source in conn.execute("SELECT node_id, source FROM nodes"):
                owner = sources.get(source)
                if owner is None or owner.digest is None or owner.node_id != node_id:
                    raise StoreError(f"{self.path}: node {node_id!r} has no source {source!r}")
                served[node_id] = Served(source, owner.digest)
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
    def transaction(self, revision: int) -> Iterator[Transaction]:
        """One write: `BEGIN IMMEDIATE`, the caller's changes, the new revision, `COMMIT`.
        Any exception rolls everything back."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(_meta(conn, "revision", "0"))
            if current != revision - 1:
                raise StoreError(f"revision {current} in the database, expected {revision - 1}")
            yield Transaction(conn, revision)
            _set_meta(conn, "revision", str(revision))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


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


def _schema_version(conn: sqlite3.Connection) -> str | None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise sqlite3.DatabaseError("not a registry database (no meta table)")
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _set_aside(path: Path) -> None:
    """Keep the unusable file for inspection and start with an empty one."""
    aside = path.with_name(path.name + ".unusable")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.unlink()


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
            s.doc,
            s.content_hash,
            s.error,
            orjson.dumps(list(s.deps)).decode(),
            s.applied_at,
            s.updated_at,
            s.digest,
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
