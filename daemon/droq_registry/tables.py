"""The registry's tables: their schema, and how one row of each is read and written.

Plain SQL on a connection the caller holds (the writer thread's, inside a transaction
`store.Store` opened); nothing here opens, commits or decides anything.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import orjson

from .dbfile import StorageFault
from .model import Node, Source

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
    doc          BLOB,  -- Source.packed: the last good node, packed canonical JSON (nodebytes.pack)
    digest       TEXT,  -- Source.fingerprint: its identity (nodebytes.fingerprint)
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


def schema_version(conn: sqlite3.Connection, path: Path) -> str | None:
    tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    if "meta" not in tables:
        if tables:
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StorageFault("foreign", f"{path}: is a SQLite database of another program (tables: "
                               f"{shown}), not a registry database; refusing to touch it")
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


#: The `meta` key of the database's history token: random, written once when the file is
#: created (or first opened by a version that had none), never changed (see `store.epoch_of`).
HISTORY = "history"


def start_history(conn: sqlite3.Connection) -> None:
    """Give a database that has no history token its own (a new one for a new file)."""
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (HISTORY, secrets.token_urlsafe(16)))


def new_history(conn: sqlite3.Connection) -> None:
    """Give the database a history token of its own in place of the one it has: its state
    goes on in a history no cursor of the old one is taken in."""
    set_meta(conn, HISTORY, secrets.token_urlsafe(16))


def meta(conn: sqlite3.Connection, key: str, default: str) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def put_source(conn: sqlite3.Connection, s: Source) -> None:
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


def put_node(conn: sqlite3.Connection, node_id: str, owner: str, node: Node, now: str) -> None:
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


def prune_changes(conn: sqlite3.Connection, keep: int) -> int:
    """Keep the newest `keep` records, dropping whole revisions; return the new floor."""
    floor = int(meta(conn, "changes_floor", "0"))
    row = conn.execute(
        "SELECT revision FROM changes ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)
    ).fetchone()
    if row is not None:
        floor = max(floor, int(row[0]))
        conn.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
        set_meta(conn, "changes_floor", str(floor))
    return floor
