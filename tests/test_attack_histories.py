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

import httpx
from starlette.testclient import TestClient

from droq_registry.nodefile import build_node
from droq_registry.snapshot import NodeView, Snapshot
from support.files import node_doc, write_json
from support.polling import wait_until
from support.server import ServerProcess


def replica(server: Callable[..., ServerProcess], assets: Path, db: Path, **env: str) -> ServerProcess:
    """A `droq-registry serve` process on `assets` with the database `db`."""
    return server(
        {"REGISTRY_ASSETS_DIR": str(assets), "REGISTRY_DB_PATH": str(db), "REGISTRY_RESYNC_SECONDS": "0", **env},
        db.with_suffix(f".{len(list(db.parent.glob('*.log')))}.log"),
    )


def position(response: httpx.Response) -> dict[str, Any]:
    """Where an answer's headers say it stands."""
    return {
        "revision": int(response.headers["x-registry-revision"]),
        "epoch": response.headers["x-registry-epoch"],
        "content_hash": response.headers["x-registry-content-hash"],
    }


def where(srv: ServerProcess) -> dict[str, Any]:
    return position(srv.get("/api/v1/nodes?status=all"))


def then(pos: dict[str, Any]) -> str:
    return (
        f"list the registry again, unless your state has content hash {pos['content_hash']}, and follow "
        f"changes from revision {pos['revision']} of epoch {pos['epoch']}"
    )


def other_epoch(asked: str, pos: dict[str, Any]) -> dict[str, Any]:
    """The 410 body for a cursor of epoch `asked` on a registry at `pos`."""
    return {"detail": f"epoch {asked} is another history than this registry's (epoch {pos['epoch']}); {then(pos)}",
            **pos}


def has_node(srv: ServerProcess, node_id: str) -> bool:
    return srv.get(f"/api/v1/nodes/{node_id}").status_code == 200


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
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
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
