"""Attacks on issue 12 (cursors that know their history), from outside: real server
processes, real files, real SQLite, raw sockets, real faults.

Each test here broke something the issue promises before the commit that follows it.
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.nodefile import build_node
from droq_registry.snapshot import NodeView, Snapshot
from support.files import node_doc, write_json
from support.histories import has_node, other_epoch, position, replica, where
from support.http import make_settings
from support.polling import wait_until
from support.server import ServerProcess, health_or_none
from support.sockets import send_once


def add(srv: ServerProcess, assets: Path, name: str) -> dict[str, Any]:
    """Write one node file and wait until `srv` serves it; where `srv` stands then."""
    write_json(assets / f"{name}.json", node_doc(name))
    wait_until(lambda: has_node(srv, name))
    return where(srv)


# --- a backup restored over the database -----------------------------------------------------


def test_a_backup_restored_over_the_database_is_another_history_for_every_cursor_taken_after_it(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The operator restores last night's copy with `cp backup.db registry.db` while the
    service is stopped: the same file (inode) and the same history token, an older revision.
    A follower that saw revisions after the backup must not be answered from the history
    that restarts from it: the restored database goes on differently (here one revision adds
    both nodes the old history added one by one)."""
    db, backup = tmp_path / "r.db", tmp_path / "backup.db"
    first = replica(server, real_assets, db)
    first.stop()
    shutil.copyfile(db, backup)  # a cleanly stopped database: no WAL beside it
    again = replica(server, real_assets, db)
    saw_y = add(again, real_assets, "y")  # the follower's cursor: it has y
    add(again, real_assets, "z")
    again.stop()
    inode = db.stat().st_ino
    shutil.copyfile(backup, db)  # written into the existing file, as cp does
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    assert db.stat().st_ino == inode
    restored = replica(server, real_assets, db)
    now = where(restored)
    assert now["epoch"] != saw_y["epoch"] and now["revision"] <= saw_y["revision"]
    answer = restored.get("/api/v1/changes", params={"since": saw_y["revision"], "epoch": saw_y["epoch"]})
    # The follower never saw z: it is told to list again, not handed an empty log.
    assert (answer.status_code, answer.json()) == (410, other_epoch(saw_y["epoch"], now))
    assert (
        f"database {db} holds revision {now['revision'] - 1} of epoch {saw_y['epoch']}, but revision"
        f" {saw_y['revision'] + 1} of it was served: it is an older copy put back in its place; its state goes"
        f" on as a new history (epoch {now['epoch']}), and followers list again"
    ) in restored.log()
    # The new history is the database's own from now on: a restart keeps it.
    restored.stop()
    assert where(replica(server, real_assets, db)) == now


# --- every answer under /api/v1/ names its state ------------------------------------------------


def raw_get(srv: ServerProcess, target: str, *headers: str) -> tuple[str, dict[str, str]]:
    """The status line and headers of one request sent as raw bytes (nothing normalised)."""
    request = "\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""])
    data = send_once(srv.port, request.encode("latin-1"))
    status, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_a_trailing_slash_under_api_v1_is_redirected_with_the_registrys_position(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Starlette redirects `/api/v1/nodes/` to `/api/v1/nodes` itself, from its router,
    past every answer `answers.py` builds: the 307 named no epoch and no content hash."""
    srv = replica(server, real_assets, tmp_path / "r.db")
    pos = where(srv)
    for path in ("/api/v1/nodes/", "/api/v1/changes/", "/api/v1/sources/"):
        status, headers = raw_get(srv, path + "?since=0")
        assert (status, headers["location"]) == ("HTTP/1.1 307 Temporary Redirect",
                                                 f"http://127.0.0.1{path.rstrip('/')}?since=0")
        assert {
            "revision": int(headers.get("x-registry-revision", "-1")),
            "epoch": headers.get("x-registry-epoch"),
            "content_hash": headers.get("x-registry-content-hash"),
        } == pos, path


# --- /health and /metrics read one state ---------------------------------------------------------


class Committing:
    """The app's registry, whose writer thread commits between any two reads of its
    snapshot (the one seam a scrape races with): each read gets the other snapshot."""

    def __init__(self, registry: Any, other: Snapshot) -> None:
        self._registry = registry
        self._snapshots = [registry.snapshot, other]

    @property
    def snapshot(self) -> Snapshot:
        self._snapshots.reverse()
        return self._snapshots[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def gauge(text: str, name: str) -> int:
    found = re.search(rf"^droq_registry_{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return int(float(found[1]))


def test_health_and_metrics_say_one_states_revision_epoch_content_hash_and_counts(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    """/metrics read the snapshot once for the gauges and twice more for the info metric's
    epoch and content hash; /health once for its position and again for its counts. A
    commit between two reads gave a revision, epoch and content hash that never were one state."""
    client = client_for(real_assets)
    registry = client.app.state.registry  # type: ignore[attr-defined]
    now: Snapshot = registry.snapshot
    view = NodeView("extra.json", build_node({"node_id": "extra", "name": "extra"}, {"Extra": "extra.run"}))
    later = now.evolve(now.revision + 1, {"extra": view}, (), {}, (), epoch="another-history0")
    states = {
        (s.revision, s.epoch, s.content_hash, len(s.nodes)) for s in (now, later)
    }
    client.app.state.registry = Committing(registry, later)  # type: ignore[attr-defined]
    try:
        for _ in range(4):  # whichever snapshot each answer starts with
            health = client.get("/health").json()
            assert (health["revision"], health["epoch"], health["content_hash"], health["nodes"]) in states
            text = client.get("/metrics").text
            revision, nodes = gauge(text, "revision"), gauge(text, "nodes")
            info = re.search(r'^droq_registry_state_info\{content_hash="(\w+)",epoch="([\w-]+)"\} 1\.0$',
                             text, re.MULTILINE)
            assert info is not None, text
            assert (revision, info[2], info[1], nodes) in states
    finally:
        client.app.state.registry = registry  # type: ignore[attr-defined]


# --- a rollback finds a lock file it takes --------------------------------------------------------

#: What the release before the served mark took as its lock file's note (dbfile._NOTE then):
#: any other content and it refuses to start ("is not this registry's lock file").
PREVIOUS_RELEASES_NOTE = re.compile(rb"(pid [0-9]+ on [^\r\n]*\n)?")


def test_the_lock_file_left_behind_is_one_the_previous_release_takes_again(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A rollback to the previous release starts on the same volume: the served mark must
    not make it refuse the lock file (a second line did)."""
    db = tmp_path / "r.db"
    srv = replica(server, real_assets, db)
    pos = add(srv, real_assets, "x")
    srv.stop()
    note = db.with_name(db.name + ".lock").read_bytes()
    assert note == f"pid {srv.pid} on {socket.gethostname()} served {pos['epoch']}:{pos['revision']}\n".encode()
    assert PREVIOUS_RELEASES_NOTE.fullmatch(note)


# --- a writer that takes its lock back after another one wrote ------------------------------------


def test_a_writer_that_takes_its_lock_back_after_another_wrote_goes_on_in_a_new_history(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The lock file is deleted under a running writer (someone cleans the volume): the
    replica waiting for it takes a new one and writes two revisions, y then z, and exits.
    The first writer takes its lock back and writes its own, older state into the database
    again, then adds y and z in one revision. Those revision numbers counted other states
    in the other writer's history: under the same epoch a follower that saw the other's
    y-only revision would be answered "nothing changed" and never see z."""
    db = tmp_path / "r.db"
    first = replica(server, real_assets, db)
    second = replica(server, real_assets, db, ready=False)
    wait_until(lambda: (health_or_none(second) or {}).get("database", {}).get("state") == "waiting")
    # The first one's start-up rescan is done: it has no pass to make until a file changes,
    # so the waiting one is the first to find the lock file gone.
    wait_until(lambda: 'droq_registry_reconciles_total{result="unchanged"} 1.0' in first.get("/metrics").text)
    before = where(first)
    db.with_name(db.name + ".lock").unlink()
    second.wait_ready()  # it made a new lock file and took it
    assert where(second) == before  # the same database, the same history so far
    saw_y = add(second, real_assets, "y")
    add(second, real_assets, "z")
    assert saw_y["epoch"] == before["epoch"]
    second.stop()

    first.wait_ready()  # its lock back, and its state written into the database again
    wait_until(lambda: has_node(first, "z"))
    now = where(first)
    answer = first.get("/api/v1/changes", params={"since": saw_y["revision"], "epoch": saw_y["epoch"]})
    assert (answer.status_code, answer.json()) == (410, other_epoch(saw_y["epoch"], now))
    assert now["epoch"] != before["epoch"]


# --- an answer that fails inside the app -------------------------------------------------------


class FailingOffload:
    """The app's worker threads, failing every build (the one seam an answer that is too big
    for the event loop is built at): the handler raises, and Starlette answers 500."""

    async def once(self, *args: Any) -> Any:
        raise RuntimeError("injected: the worker threads are gone")

    async def run(self, *args: Any) -> Any:
        raise RuntimeError("injected: the worker threads are gone")


def test_an_answer_that_fails_inside_the_app_says_where_the_registry_stands_and_why(
    real_assets: Path, tmp_path: Path
) -> None:
    """Starlette's ServerErrorMiddleware answers an exception from a handler outside every
    user middleware, so the 500 had neither the state's headers nor a JSON body."""
    with TestClient(create_app(make_settings(real_assets)), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        pos = position(client.get("/api/v1/nodes?status=all"))
        client.app.state.offload = FailingOffload()  # type: ignore[attr-defined]
        answer = client.get("/api/v1/sources")
        assert (answer.status_code, answer.headers["content-type"], answer.json()) == (
            500, "application/json", {"detail": "internal error (RuntimeError); the service logged it, and keeps serving"}
        )
        assert position(answer) == pos
