"""The service as a real process: restarts on the same database, signals, kill -9, its log.

Each test runs `python -m droq_registry serve` (the `server` fixture) on real files in
tmp_path and talks to it over real HTTP.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.files import node_doc, save, save_bytes, write_json
from support.http import sources
from support.polling import wait_until
from support.server import ServerProcess, health_or_none, server_env
from support.sockets import connect, descriptors, read_chunks, read_head, read_response

DEADLINE = 10.0
KILL_DEADLINE = 30.0

RECONCILE_LINE = re.compile(
    r"reconciled revision (\d+): added=(\d+) updated=(\d+) removed=(\d+) errors=(\d+)"
    r" files_read=\d+ duration_ms=\d+\.\d\b"
)

Server = Callable[..., ServerProcess]


def env_for(assets: Path, db: Path) -> dict[str, str]:
    # RELOAD empty: the default (watch), whatever the calling environment says.
    return server_env(assets, db, RELOAD="", LOG_FORMAT="text")


def snapshot_of(srv: ServerProcess) -> dict[str, Any]:
    """Everything a client can see of the registry's content."""
    return {
        "ready": srv.get("/ready").json(),
        "nodes": srv.get("/api/v1/nodes", params={"status": "all"}).json(),
        "sources": srv.get("/api/v1/sources").json(),
    }


def wait_watching(srv: ServerProcess) -> None:
    wait_until(lambda: srv.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)


def node(srv: ServerProcess, node_id: str) -> tuple[int, Any]:
    response = srv.get(f"/api/v1/nodes/{node_id}")
    return response.status_code, response.json()


def generate_large_folder(assets: Path, files: int = 300, components: int = 300) -> None:
    for i in range(files):
        doc = node_doc(
            f"big-{i:03d}",
            {f"Comp{i:03d}x{j:03d}": f"pkg.node{i:03d}.comp{j:03d}" for j in range(components)},
        )
        (assets / f"big-{i:03d}.json").write_bytes(orjson.dumps(doc))


def committed_revision(db: Path, scratch: Path) -> tuple[object, int]:
    """(meta revision, node rows) of a copy of the database files, so the original is untouched."""
    scratch.mkdir()
    for suffix in ("", "-wal"):
        if Path(str(db) + suffix).exists():
            shutil.copy(str(db) + suffix, scratch / (db.name + suffix))
    conn = sqlite3.connect(scratch / db.name)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        nodes = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
    finally:
        conn.close()
    return (None if row is None else row[0]), nodes


def test_restart_on_the_same_database_rewrites_nothing(
    tmp_path: Path, real_assets: Path, server: Server
) -> None:
    # Besides the four real files: one in conflict, and one serving its last good version.
    write_json(real_assets / "zz-duplicate.json", node_doc("dfx-math-executor-node"))
    write_json(real_assets / "went-bad.json", node_doc("went-bad"))
    env = env_for(real_assets, tmp_path / "registry.db")
    first = server(env, tmp_path / "first.log")
    save_bytes(real_assets / "went-bad.json", b"{ broken")
    wait_until(lambda: sources(first)["went-bad.json"]["state"] == "error", DEADLINE)
    before = snapshot_of(first)
    assert before["ready"] == {"status": "ready", "revision": 2}
    assert {path: (row["state"], row["serving_last_good"]) for path, row in sources(first).items()} == {
        "dfx-hf-models-node.json": ("ok", False),
        "dfx-math-executor-node.json": ("ok", False),
        "lfx-runtime-executor-node.json": ("ok", False),
        "lfx-tool-executor-node.json": ("ok", False),
        "went-bad.json": ("error", True),
        "zz-duplicate.json": ("conflict", False),
    }
    assert first.stop(signal.SIGTERM) == 0

    second = server(env, tmp_path / "second.log")

    # The same revision, the same nodes, every source's updated_at and applied_at as before.
    assert snapshot_of(second) == before
    assert RECONCILE_LINE.search(second.log()) is None  # the start-up pass committed nothing


def test_restart_applies_what_changed_while_the_service_was_down(
    tmp_path: Path, assets: Path, server: Server
) -> None:
    components = tmp_path / "assets" / "components"
    components.mkdir()
    write_json(components / "via-path.json", {"Before": "pkg.before"})
    via_path = {
        "node_id": "via-path",
        "name": "Via path",
        "components_json_path": "../components/via-path.json",
    }
    write_json(assets / "via-path.json", via_path)
    write_json(assets / "keep.json", node_doc("keep"))
    write_json(assets / "change.json", node_doc("change", {"Before": "pkg.before"}))
    write_json(assets / "remove.json", node_doc("remove"))
    env = env_for(assets, tmp_path / "registry.db")
    first = server(env, tmp_path / "first.log")
    kept = first.get("/api/v1/sources").json()["sources"]
    assert first.get("/ready").json()["revision"] == 1
    assert first.stop(signal.SIGTERM) == 0

    os.remove(assets / "remove.json")
    changed = node_doc("change", {"After": "pkg.after"}, name="Changed while down")
    write_json(assets / "change.json", changed)
    write_json(components / "via-path.json", {"After": "pkg.after"})
    write_json(assets / "new.json", node_doc("new"))
    second = server(env, tmp_path / "second.log")

    assert second.get("/ready").json() == {"status": "ready", "revision": 2}  # one start-up pass
    assert node(second, "remove") == (404, {"detail": "Node 'remove' not found in registry"})
    assert node(second, "change")[1]["node"]["name"] == "Changed while down"
    assert node(second, "change")[1]["components"] == {"After": "pkg.after"}
    assert node(second, "via-path")[1]["components"] == {"After": "pkg.after"}
    assert node(second, "new")[0] == 200
    rows = sources(second)
    assert sorted(rows) == ["change.json", "keep.json", "new.json", "via-path.json"]
    assert rows["keep.json"] == next(row for row in kept if row["path"] == "keep.json")
    assert [m.groups()[1:] for m in RECONCILE_LINE.finditer(second.log())] == [("1", "2", "1", "0")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_5_seconds(
    tmp_path: Path, real_assets: Path, server: Server, sig: signal.Signals
) -> None:
    srv = server(env_for(real_assets, tmp_path / "registry.db"), tmp_path / "server.log")
    wait_watching(srv)

    started = time.monotonic()
    code = srv.stop(sig, timeout=5)
    elapsed = time.monotonic() - started

    assert code == 0, srv.log()
    assert elapsed < 5
    assert "Traceback" not in srv.log()


def test_stop_signal_during_a_large_reconcile_exits_0_within_5_seconds(
    tmp_path: Path, assets: Path, server: Server
) -> None:
    generate_large_folder(assets)
    srv = server(env_for(assets, tmp_path / "registry.db"), tmp_path / "server.log", ready=False)
    seen = wait_until(lambda: health_or_none(srv), DEADLINE, interval=0.02)
    assert seen["ready"] is False  # the first load (90,000 components) is still running

    started = time.monotonic()
    code = srv.stop(signal.SIGTERM, timeout=5)
    elapsed = time.monotonic() - started

    assert (code, elapsed < 5) == (0, True), f"exit code {code} after {elapsed:.1f}s"


def test_kill_9_during_a_large_reconcile_then_restart_serves_every_file(
    tmp_path: Path, assets: Path, server: Server
) -> None:
    generate_large_folder(assets)
    db = tmp_path / "registry.db"
    env = env_for(assets, db)
    wal = Path(str(db) + "-wal")

    doomed = server(env, tmp_path / "killed.log", ready=False)
    # The first load writes ~15 MB to the WAL in one transaction; kill it part-way through.
    wait_until(lambda: wal.exists() and wal.stat().st_size > 1_000_000, KILL_DEADLINE, interval=0.002)
    assert doomed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert committed_revision(db, tmp_path / "inspect") == (None, 0), "killed after the commit, not during it"

    revived = server(env, tmp_path / "revived.log", ready=False)
    revived.wait_ready(timeout=KILL_DEADLINE)

    assert revived.get("/ready").json() == {"status": "ready", "revision": 1}
    listed = revived.get("/api/v1/sources").json()
    assert (listed["total_sources"], listed["errors"]) == (300, 0)
    assert {row["state"] for row in listed["sources"]} == {"ok"}
    assert revived.get("/api/v1/nodes").json()["total_nodes"] == 300
    health = revived.get("/health").json()
    assert (health["nodes"], health["components"], health["files_in_error"]) == (300, 90_000, 0)
    last = revived.get("/api/v1/nodes/big-299").json()
    assert len(last["components"]) == 300
    assert last["components"]["Comp299x299"] == "pkg.node299.comp299"


def test_log_has_one_line_per_reconcile_with_its_counts(
    tmp_path: Path, assets: Path, server: Server
) -> None:
    save(assets / "a.json", node_doc("a"))
    srv = server(env_for(assets, tmp_path / "registry.db"), tmp_path / "server.log")
    wait_watching(srv)

    save(assets / "b.json", node_doc("b"))
    wait_until(lambda: node(srv, "b")[0] == 200, DEADLINE)
    save(assets / "a.json", node_doc("a", {"Changed": "pkg.changed"}))
    wait_until(lambda: node(srv, "a")[1].get("components") == {"Changed": "pkg.changed"}, DEADLINE)
    temp = assets / ".b.json.tmp"
    temp.write_bytes(b'{"node_id": "b",')
    os.replace(temp, assets / "b.json")
    wait_until(lambda: srv.get("/health").json()["files_in_error"] == 1, DEADLINE)
    os.remove(assets / "a.json")
    wait_until(lambda: node(srv, "a")[0] == 404, DEADLINE)
    assert srv.get("/ready").json()["revision"] == 5

    log = srv.log()
    assert [m.groups() for m in RECONCILE_LINE.finditer(log)] == [
        ("1", "1", "0", "0", "0"),  # first load: a
        ("2", "1", "0", "0", "0"),  # b written
        ("3", "0", "1", "0", "0"),  # a changed
        ("4", "0", "0", "0", "1"),  # b broken (its last good node stays)
        ("5", "0", "0", "1", "0"),  # a removed
    ]
    assert "b.json: not valid JSON: unexpected end of data at line 1 column 17" in log


def test_stop_signal_answers_every_long_poll_200_and_ends_every_stream_cleanly(
    tmp_path: Path, real_assets: Path, server: Server
) -> None:
    srv = server(env_for(real_assets, tmp_path / "registry.db"), tmp_path / "server.log")
    wait_watching(srv)
    revision = srv.get("/ready").json()["revision"]
    with descriptors(4096), ExitStack() as sockets:
        polls = [sockets.enter_context(connect(srv.port)) for _ in range(100)]
        for sock in polls:
            sock.sendall(f"GET /api/v1/changes?since={revision}&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams = [sockets.enter_context(connect(srv.port)) for _ in range(200)]
        for sock in streams:
            sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        heads = [read_head(sock) for sock in streams]  # each stream has started: its handler runs
        assert {head[0] for head in heads} == {200}
        assert {head[1]["content-type"] for head in heads} == {"text/event-stream; charset=utf-8"}
        # the long-polls are pending too (asked before the streams): nothing has committed
        started = time.monotonic()
        code = srv.stop(signal.SIGTERM, timeout=5)
        elapsed = time.monotonic() - started
        answers = [read_response(sock) for sock in polls]
        ends = [read_chunks(sock, head[2]) for sock, head in zip(streams, heads)]
    assert (code, elapsed < 5) == (0, True), f"exit code {code} after {elapsed:.1f}s\n{srv.log()}"
    assert [(a[0], orjson.loads(a[2])) if a else None for a in answers] == [
        (200, {"revision": revision, "changes": []})
    ] * 100
    assert ends == [b""] * 200  # complete chunked bodies (no events happened), then closed
    log = srv.log()
    assert " ERROR " not in log and "Traceback" not in log, log


def test_a_restarted_service_answers_with_its_committed_revision_from_the_first_request(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A follower that reconnects the moment the port opens must not see revision 0 (not
    loaded yet) and be told its cursor is ahead of the registry: the service serves only
    once it has loaded what it committed (2,000 nodes make the load take a while)."""
    for i in range(2000):
        write_json(assets / f"n{i:04d}.json", node_doc(f"n{i:04d}", {f"C{i}x{j}": "m.c" for j in range(20)}))
    env = {"REGISTRY_ASSETS_DIR": str(assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db")}
    first = server(env, tmp_path / "first.log")
    wait_until(lambda: first.get("/ready").status_code == 200, 60)
    write_json(assets / "b.json", node_doc("b"))
    wait_until(lambda: first.get("/api/v1/nodes/b").status_code == 200)
    revision = int(first.get("/api/v1/nodes").headers["x-registry-revision"])
    assert first.stop() == 0

    again = server(env, tmp_path / "again.log", ready=False)
    seen: list[tuple[int, str]] = []

    def answered() -> bool:
        try:
            r = httpx.get(f"{again.url}/api/v1/changes", params={"since": revision}, timeout=2)
        except httpx.TransportError:
            return False  # not listening yet
        seen.append((r.status_code, r.headers["x-registry-revision"]))
        return True

    wait_until(answered, 30, interval=0.001)
    assert seen == [(200, str(revision))]
