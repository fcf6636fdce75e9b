"""The SQLite database through the real service: what a load writes, and start-up on bad files.

Tests look at the database file with their own sqlite3 connections (closed with
`contextlib.closing`), never through the service's objects.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.store import SCHEMA_VERSION, StoreError, connect
from support.db import query
from support.expect import CORE_DEFAULTS, TIMESTAMP_FORMAT
from support.files import LEGACY_NODE, ROOT, node_doc, tree, write_json
from support.http import make_settings
from support.polling import wait_until
from support.server import ServerProcess, free_port, health_or_none, server_env


def db_of(assets: Path) -> Path:
    return make_settings(assets).db_path


@contextmanager
def serving(assets: Path) -> Iterator[TestClient]:
    """The app on `assets` until the block ends; waits for its first load to commit."""
    with TestClient(create_app(make_settings(assets))) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        yield client


def docs_in(folder: Path) -> dict[str, dict[str, Any]]:
    loaded = (orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json")))
    return {d["node_id"]: d for d in loaded}


def node_row(doc: dict[str, Any], source: str) -> tuple[Any, ...]:
    """A `nodes` row as the spec implies it for a node file."""
    core = [doc.get(key, default) for key, default in CORE_DEFAULTS.items()]
    skip = {"node_id", "name", "components", "supported_components", *CORE_DEFAULTS}
    extra = {k: v for k, v in doc.items() if k not in skip}
    return (doc["node_id"], doc["name"], *core, extra, source)


def component_rows(doc: dict[str, Any]) -> set[tuple[str, str, str, bytes]]:
    rows = set()
    for cls, spec in doc["components"].items():
        path, info = (
            (spec, {})
            if isinstance(spec, str)
            else (spec["path"], {k: v for k, v in spec.items() if k != "path"})
        )
        rows.add((doc["node_id"], cls, path, orjson.dumps(info, option=orjson.OPT_SORT_KEYS)))
    return rows


def db_nodes(db: Path) -> list[tuple[Any, ...]]:
    rows = query(
        db,
        "SELECT node_id, name, description, source_code_location, docker_image, deployment_location, api_url,"
        " ip_address, status, priority, metadata_json, source FROM nodes ORDER BY node_id",
    )
    return [(*row[:10], orjson.loads(row[10]), row[11]) for row in rows]


def db_components(db: Path) -> set[tuple[str, str, str, bytes]]:
    rows = query(db, "SELECT node_id, component_class, module_path, info_json FROM components")
    return {(n, c, p, orjson.dumps(orjson.loads(i), option=orjson.OPT_SORT_KEYS)) for n, c, p, i in rows}


@pytest.fixture
def store_log() -> Iterator[list[str]]:
    """`LEVEL message` of every record the store logs during the test."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("droq_registry.store")
    handler = Collect(logging.INFO)
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(previous)


# --- what a load writes --------------------------------------------------------------------


def test_database_is_wal_with_cascading_components_and_foreign_keys_enforced(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client_for(real_assets)
    db = db_of(real_assets)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"nodes", "components", "sources", "changes", "meta"} <= tables
        assert conn.execute("PRAGMA foreign_key_list(components)").fetchall() == [
            (0, 0, "nodes", "node_id", "node_id", "NO ACTION", "CASCADE", "NONE")
        ]
        unique = [
            [col[2] for col in conn.execute(f"PRAGMA index_info('{index[1]}')")]
            for index in conn.execute("PRAGMA index_list(components)")
            if index[2] == 1
        ]
        assert ["node_id", "component_class"] in unique

    # Every connection the service opens is prepared by `connect`: foreign keys are on.
    with closing(connect(db)) as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
            conn.execute(
                "INSERT INTO components (node_id, component_class, module_path, created_at)"
                " VALUES ('no-such-node', 'X', 'pkg.x', '2026-01-01T00:00:00.000Z')"
            )
        node_id = min(docs_in(real_assets))
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
            conn.execute(
                "INSERT INTO components (node_id, component_class, module_path, created_at)"
                " SELECT node_id, component_class, module_path, created_at FROM components WHERE node_id = ?"
                " LIMIT 1",
                (node_id,),
            )


def test_node_and_component_rows_match_the_real_files_exactly(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client_for(real_assets)
    db = db_of(real_assets)
    docs = docs_in(real_assets)
    files = {orjson.loads(p.read_bytes())["node_id"]: p.name for p in real_assets.glob("*.json")}
    assert db_nodes(db) == [node_row(docs[i], files[i]) for i in sorted(docs)]
    expected = set().union(*(component_rows(d) for d in docs.values()))
    assert db_components(db) == expected
    assert query(db, "SELECT count(*) FROM components") == [
        (sum(len(d["components"]) for d in docs.values()),)
    ]


def test_the_legacy_string_form_is_stored_with_empty_info(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    legacy = LEGACY_NODE
    (assets / legacy.name).write_bytes(legacy.read_bytes())
    client_for(assets)
    doc = orjson.loads(legacy.read_bytes())
    assert db_components(db_of(assets)) == component_rows(doc)
    assert query(db_of(assets), "SELECT DISTINCT info_json FROM components") == [("{}",)]


def test_removing_a_node_file_deletes_its_node_and_component_rows(real_assets: Path) -> None:
    db = db_of(real_assets)
    docs = docs_in(real_assets)
    gone = max(docs)
    with serving(real_assets):
        assert query(db, "SELECT count(*) FROM components WHERE node_id = ?", (gone,)) == [
            (len(docs[gone]["components"]),)
        ]
    next(p for p in real_assets.glob("*.json") if orjson.loads(p.read_bytes())["node_id"] == gone).unlink()
    with serving(real_assets) as client:
        assert client.get(f"/api/v1/nodes/{gone}").status_code == 404
    assert query(db, "SELECT count(*) FROM nodes WHERE node_id = ?", (gone,)) == [(0,)]
    assert query(db, "SELECT count(*) FROM components WHERE node_id = ?", (gone,)) == [(0,)]
    rest = {k: v for k, v in docs.items() if k != gone}
    assert db_components(db) == set().union(*(component_rows(d) for d in rest.values()))


def test_edited_components_leave_rows_matching_the_new_file(assets: Path) -> None:
    db = db_of(assets)
    original = node_doc("n", components={"Keep": "pkg.keep", "Change": "pkg.old", "Drop": "pkg.drop"})
    write_json(assets / "n.json", original)
    with serving(assets):
        assert db_components(db) == component_rows(original)
    edited = node_doc(
        "n", components={"Keep": "pkg.keep", "Change": {"path": "pkg.new", "author": "me"}, "Add": "pkg.add"}
    )
    write_json(assets / "n.json", edited)
    with serving(assets):
        assert db_components(db) == component_rows(edited)
    assert db_nodes(db) == [node_row(edited, "n.json")]


def test_restart_on_the_same_database_with_nothing_changed_keeps_the_revision(real_assets: Path) -> None:
    db = db_of(real_assets)
    with serving(real_assets) as client:
        first = client.get("/ready")
        sources_before = client.get("/api/v1/sources").json()
    changes_before = query(db, "SELECT revision, kind, node_id, source FROM changes ORDER BY seq")
    with serving(real_assets) as client:
        again = client.get("/ready")
        assert again.json() == first.json() == {"status": "ready", "revision": 1}
        assert again.headers["x-registry-revision"] == first.headers["x-registry-revision"] == "1"
        assert client.get("/api/v1/sources").json() == sources_before
    assert query(db, "SELECT revision, kind, node_id, source FROM changes ORDER BY seq") == changes_before
    assert query(db, "SELECT value FROM meta WHERE key = 'revision'") == [("1",)]


# --- unusable databases of ours at start-up ------------------------------------------------


def older_schema(db: Path) -> tuple[str, Callable[[Path], None]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
        conn.commit()

    def kept(aside: Path) -> None:
        assert query(aside, "SELECT key, value FROM meta") == [("schema_version", "0")]

    return f"schema version 0, expected {SCHEMA_VERSION}", kept


def newer_schema(db: Path) -> tuple[str, Callable[[Path], None]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
        conn.execute("CREATE TABLE future (x)")
        conn.commit()

    def kept(aside: Path) -> None:
        assert query(aside, "SELECT key, value FROM meta") == [("schema_version", "99")]

    return f"schema version 99, expected {SCHEMA_VERSION}", kept


def truncated(db: Path) -> tuple[str, Callable[[Path], None]]:
    """A real registry database cut short: the header says SQLite, the pages run out."""
    with serving(db.parent / "assets" / "nodes"):
        pass
    content = db.read_bytes()[: 4096 + 100]
    db.write_bytes(content)

    def kept(aside: Path) -> None:
        assert aside.read_bytes() == content

    return "database disk image is malformed", kept


@pytest.mark.parametrize("spoil", [older_schema, newer_schema, truncated])
def test_a_damaged_or_other_version_registry_database_is_set_aside_rebuilt_and_logged(
    spoil: Callable[[Path], tuple[str, Callable[[Path], None]]], real_assets: Path, store_log: list[str]
) -> None:
    db = db_of(real_assets)
    reason, kept = spoil(db)
    store_log.clear()
    with serving(real_assets) as client:
        listing = client.get("/api/v1/nodes").json()
        assert [n["metadata"]["node_id"] for n in listing["nodes"]] == sorted(docs_in(real_assets))
    assert store_log == [
        f"WARNING database {db} is unusable ({reason}); rebuilding it from the node files",
        f"INFO database {db} created; it will be filled from the node files",
    ]
    kept(db.with_name(db.name + ".unusable"))
    assert query(db, "SELECT count(*) FROM nodes") == [(len(docs_in(real_assets)),)]


def test_empty_database_file_is_filled_from_the_files(real_assets: Path) -> None:
    db = db_of(real_assets)
    db.write_bytes(b"")
    with serving(real_assets) as client:
        assert client.get("/api/v1/nodes").json()["total_nodes"] == len(docs_in(real_assets))
    assert query(db, "SELECT count(*) FROM nodes") == [(len(docs_in(real_assets)),)]


def test_empty_database_file_is_mentioned_in_the_log(real_assets: Path, store_log: list[str]) -> None:
    db = db_of(real_assets)
    db.write_bytes(b"")
    with serving(real_assets):
        pass
    assert store_log == [f"INFO database {db} created; it will be filled from the node files"]


def start_server(
    server: Callable[..., ServerProcess], assets: Path, log: Path, ready: bool = True, **env: str
) -> ServerProcess:
    return server(server_env(assets, db_of(assets), RELOAD="false", **env), log, ready=ready)


# --- database paths that are refused: nothing is touched -------------------------------------


def serve_once(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`droq-registry serve` with `env`, to be refused at start-up (else the timeout fails it)."""
    full = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()), "RELOAD": "false", **env}
    return subprocess.run(
        [sys.executable, "-m", "droq_registry", "serve"],
        env=full, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )


def _foreign(tmp: Path) -> Path:
    db = tmp / "invoices.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
        conn.commit()
    return db


def _symlink_to_node_file(tmp: Path) -> Path:
    link = tmp / "registry.db"
    link.symlink_to(tmp / "assets" / "nodes" / "a.json")
    return link


def _symlink_to_assets(tmp: Path) -> Path:
    link = tmp / "registry.db"
    link.symlink_to(tmp / "assets" / "nodes", target_is_directory=True)
    return link


def _directory(tmp: Path) -> Path:
    data = tmp / "data"
    data.mkdir()
    (data / "keep.txt").write_text("kept")
    return data


def _text_file(tmp: Path) -> Path:
    notes = tmp / "notes.db"
    notes.write_bytes(b"this is not a database, just some text \x00\xff" * 200)
    return notes


def _json_outside(tmp: Path) -> Path:
    copy = tmp / "node.json"
    copy.write_bytes((tmp / "assets" / "nodes" / "a.json").read_bytes())
    return copy


def _short_file(tmp: Path) -> Path:
    short = tmp / "short.db"
    short.write_bytes(b"SQLite")
    return short


REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "the assets folder": (lambda tmp: tmp / "assets" / "nodes",
                          "REGISTRY_DB_PATH={db!r} is the assets folder; point it at a file outside that folder"),
    "the assets folder, spelt another way": (
        lambda tmp: tmp / "assets" / "nodes" / ".." / "nodes",
        "REGISTRY_DB_PATH={db!r} is the assets folder; point it at a file outside that folder"),
    "a link to the assets folder": (
        _symlink_to_assets,
        "REGISTRY_DB_PATH={db!r} is the assets folder; point it at a file outside that folder"),
    "a new file in the assets folder": (
        lambda tmp: tmp / "assets" / "nodes" / "registry.db",
        "REGISTRY_DB_PATH={db!r} lies inside the assets folder {assets}; point it at a file outside that folder"),
    "a node file": (
        lambda tmp: tmp / "assets" / "nodes" / "a.json",
        "REGISTRY_DB_PATH={db!r} lies inside the assets folder {assets}; point it at a file outside that folder"),
    "a link to a node file": (
        _symlink_to_node_file,
        "REGISTRY_DB_PATH={db!r} lies inside the assets folder {assets}; point it at a file outside that folder"),
    "a directory": (_directory, "{db}: is a directory, not a database file; point REGISTRY_DB_PATH at a file"),
    "a text file": (_text_file, ("{db}: is not a SQLite database (it starts with b'this is not a da');"
                                 " refusing to touch it")),
    "a node file outside the assets folder": (
        _json_outside, "{db}: is not a SQLite database (it starts with {head!r}); refusing to touch it"),
    "a file shorter than SQLite's header": (
        _short_file, "{db}: is not a SQLite database (it starts with b'SQLite'); refusing to touch it"),
    "another program's SQLite database": (
        _foreign, ("{db}: is a SQLite database of another program (tables: invoices), not a registry"
                   " database; refusing to touch it")),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_database_path_stops_start_up_with_one_line_and_exit_2_touching_nothing(
    case: str, tmp_path: Path
) -> None:
    assets = tmp_path / "assets" / "nodes"
    assets.mkdir(parents=True)
    write_json(assets / "a.json", node_doc("a"))
    make, message = REFUSED[case]
    db = make(tmp_path)
    before = tree(tmp_path)
    done = serve_once({"REGISTRY_ASSETS_DIR": str(assets), "REGISTRY_DB_PATH": str(db)})
    assert (done.returncode, done.stdout) == (2, "")
    head = db.read_bytes()[:16] if db.is_file() else b""
    assert done.stderr.splitlines() == ["droq-registry: " + message.format(db=str(db), assets=assets, head=head)]
    assert tree(tmp_path) == before


def test_the_app_refuses_a_database_path_in_the_assets_folder_before_opening_anything(assets: Path) -> None:
    write_json(assets / "a.json", node_doc("a"))
    before = tree(assets.parent)
    settings = make_settings(assets, db_path=assets / "a.json")
    with pytest.raises(StoreError, match="lies inside the assets folder"), TestClient(create_app(settings)):
        pass
    assert tree(assets.parent) == before


# --- damaged databases through a real process -----------------------------------------------


def corrupt_nodes_table(db: Path) -> None:
    """Overwrite the root page of the `nodes` table: the header and `meta` stay readable."""
    assert not db.with_name(db.name + "-wal").exists()
    with closing(sqlite3.connect(db)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'nodes'").fetchone()[0]
    data = bytearray(db.read_bytes())
    data[(root - 1) * page_size : root * page_size] = b"\xab" * page_size
    db.write_bytes(bytes(data))


def test_served_process_rebuilds_a_database_with_a_damaged_page(
    server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    with serving(real_assets):
        pass
    db = db_of(real_assets)
    corrupt_nodes_table(db)
    proc = start_server(server, real_assets, tmp_path / "server.log")
    assert proc.get("/api/v1/nodes").json()["total_nodes"] == len(docs_in(real_assets))
    assert "is unusable" in proc.log()


def test_the_damaged_page_is_only_found_past_the_header_and_meta(real_assets: Path) -> None:
    # Guards the xfail above: the damage must be real, and only found past the header and meta.
    with serving(real_assets):
        pass
    db = db_of(real_assets)
    corrupt_nodes_table(db)
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(SCHEMA_VERSION,)]
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        query(db, "SELECT * FROM nodes")
    assert os.path.getsize(db) > 0


# --- one database, one writer ---------------------------------------------------------------

@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_second_service_on_the_same_database_waits_not_ready_and_takes_over_when_the_first_exits(
    stop: int, server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    db = db_of(real_assets)
    env = {"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(db), "RELOAD": "true"}
    first = server(env, tmp_path / "first.log")
    second = server(env, tmp_path / "second.log", ready=False)
    waiting = f"{db} is in use by another registry (pid {first.proc.pid} on {socket.gethostname()}); waiting for it to exit"
    wait_until(lambda: (health_or_none(second) or {}).get("database", {}).get("state") == "waiting")

    # The first one goes on writing; the second serves nothing and says why.
    write_json(real_assets / "new.json", node_doc("new-node"))
    wait_until(lambda: first.get("/api/v1/nodes/new-node").status_code == 200)
    ready = second.get("/ready")
    assert (ready.status_code, ready.json()) == (503, {"status": "starting", "detail": waiting})
    health = second.get("/health").json()
    assert TIMESTAMP_FORMAT.fullmatch(health["database"].pop("failing_since"))
    assert (health["status"], health["ready"], health["revision"], health["nodes"]) == ("degraded", False, 0, 0)
    assert health["database"] == {"path": str(db), "state": "waiting", "error": waiting}
    assert second.get("/api/v1/nodes").json() == {"nodes": [], "total_nodes": 0}
    assert second.get("/api/v1/nodes/new-node").status_code == 404
    assert [line for line in second.log().splitlines() if "in use by another registry" in line] == [
        next(line for line in second.log().splitlines() if line.endswith(f"database {waiting}; not ready meanwhile"))
    ]

    first.stop(stop)
    second.wait_ready()
    # It loaded what the first one committed last, and found nothing else to do.
    assert second.get("/ready").json() == {"status": "ready", "revision": 2}
    assert second.get("/api/v1/nodes/new-node").status_code == 200
    (real_assets / "new.json").unlink()
    wait_until(lambda: second.get("/api/v1/nodes/new-node").status_code == 404)
    assert second.get("/ready").json() == {"status": "ready", "revision": 3}
    wait_until(lambda: second.get("/health").json()["status"] == "healthy")
    assert query(db, "SELECT value FROM meta WHERE key = 'revision'") == [("3",)]
    log = second.log()
    assert re.search(rf"database {re.escape(str(db))} is free after [0-9.]+s; taking it over$", log, re.MULTILINE)
    assert "Traceback" not in log and "expected" not in log


def test_the_writer_lock_names_its_holder_and_is_released_on_exit(
    server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    db = db_of(real_assets)
    proc = start_server(server, real_assets, tmp_path / "server.log")
    lock = db.with_name(db.name + ".lock")
    at = proc.get("/health").json()
    # ... and how far it served the database's history (a restored older copy is found out by it)
    assert lock.read_text() == f"pid {proc.proc.pid} on {socket.gethostname()} served {at['epoch']}:{at['revision']}\n"
    with open(lock, "rb") as held:
        with pytest.raises(BlockingIOError):
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert proc.stop() == 0
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once it has exited


def test_a_writer_whose_lock_file_is_deleted_and_taken_by_another_service_stops_being_ready(
    server: Callable[..., ServerProcess], real_assets: Path, tmp_path: Path
) -> None:
    db = db_of(real_assets)
    env = {"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(db), "RELOAD": "true"}
    first = server(env, tmp_path / "first.log")
    second = server(env, tmp_path / "second.log", ready=False)
    wait_until(lambda: (health_or_none(second) or {}).get("database", {}).get("state") == "waiting")
    # The first one's watcher has made its first rescan: it has no pass to make until a file
    # changes, so the second one is the first to find the lock file gone.
    wait_until(lambda: 'droq_registry_reconciles_total{result="unchanged"} 1.0' in first.get("/metrics").text)
    db.with_name(db.name + ".lock").unlink()  # someone cleans the volume
    second.wait_ready()  # it made a new lock file and took it

    write_json(real_assets / "new.json", node_doc("new-node"))
    wait_until(lambda: second.get("/api/v1/nodes/new-node").status_code == 200)
    wait_until(lambda: first.get("/ready").status_code == 503)
    taken = (f"{db} was taken over by another registry (pid {second.proc.pid} on {socket.gethostname()}) after"
             " its lock file was deleted or replaced; not ready until this service can write it again")
    assert first.get("/ready").json() == {"status": "starting", "detail": taken}
    assert first.get("/health").json()["database"]["error"] == taken

    assert second.stop() == 0
    # The first one takes its lock again, finds the database moved on without it, writes
    # its state into it and converges on the files: ready again, and serving the new node.
    first.wait_ready()
    wait_until(lambda: first.get("/health").json()["status"] == "healthy")
    assert first.get("/api/v1/nodes/new-node").status_code == 200
    revision = first.get("/ready").json()["revision"]
    assert query(db, "SELECT value FROM meta WHERE key = 'revision'") == [(str(revision),)]
    assert "Traceback" not in first.log()
