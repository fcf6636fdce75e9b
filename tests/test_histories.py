"""Cursors that know their history (issue 12), through real server processes on real files.

A revision number only means something in one database's history. Every answer under
/api/v1/ says which history (`X-Registry-Epoch`) and which served content
(`X-Registry-Content-Hash`) it comes from; a cursor of another history gets 410 with this
registry's position instead of records from another history, and a follower whose state
has that content hash takes the new cursor without listing again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from droq_registry.nodefile import build_node
from droq_registry.snapshot import NodeView, Snapshot
from droq_registry.store import epoch_of
from support.events import Events
from support.files import REAL_NODES, node_doc, write_json
from support.histories import ahead, has_node, other_epoch, position, records, replica, where
from support.polling import wait_until
from support.server import ServerProcess

EPOCH = re.compile(r"[A-Za-z0-9_-]{16}")
CONTENT_HASH = re.compile(r"[0-9a-f]{32}")


















def copy_assets(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name / "nodes"
    shutil.copytree(REAL_NODES, folder)
    return folder


def with_error_and_recovery(srv: ServerProcess, assets: Path, name: str) -> None:
    """`srv` sees a half-written node file go into error, then the whole file: two revisions."""
    path = assets / f"{name}.json"
    path.write_bytes(b'{"node_id": "' + name.encode())
    wait_until(lambda: any(s["state"] == "error" for s in srv.get("/api/v1/sources").json()["sources"]))
    write_json(path, node_doc(name))
    wait_until(lambda: has_node(srv, name))


# --- two replicas, two histories ----------------------------------------------------------------


def test_a_cursor_moved_to_a_replica_of_another_history_gets_410_with_its_position_then_every_change(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a = replica(server, real_assets, tmp_path / "a.db")
    with_error_and_recovery(a, real_assets, "late")  # A: two more revisions than B will have
    b = replica(server, real_assets, tmp_path / "b.db")  # started later: sees only the final file
    wait_until(lambda: has_node(b, "late"))
    pa, pb = where(a), where(b)
    assert EPOCH.fullmatch(pa["epoch"]) and EPOCH.fullmatch(pb["epoch"]) and pa["epoch"] != pb["epoch"]
    assert pa["revision"] >= pb["revision"] + 2  # the error and the recovery (or more steps of a slow write)
    assert pa["content_hash"] == pb["content_hash"]  # the same served nodes, whatever the history

    # A's cursor on B: ahead of B's revision, with or without its epoch; held long-polls answer at once.
    for params, body in (
        ({"since": pa["revision"], "epoch": pa["epoch"]}, other_epoch(pa["epoch"], pb)),
        ({"since": pa["revision"], "epoch": pa["epoch"], "wait": 30}, other_epoch(pa["epoch"], pb)),
        ({"since": pa["revision"]}, ahead(pa["revision"], pb)),
        ({"since": pa["revision"], "wait": 30}, ahead(pa["revision"], pb)),
    ):
        gone = b.get("/api/v1/changes", params=params, timeout=5)
        assert (gone.status_code, gone.json(), position(gone)) == (410, body, pb), params
    # B's cursor on A: a lower revision, so only the epoch tells it is another history's;
    # A never answers it with A's own records.
    for wait in (0, 30):
        gone = a.get("/api/v1/changes", params={"since": pb["revision"], "epoch": pb["epoch"], "wait": wait},
                     timeout=5)
        assert (gone.status_code, gone.json()) == (410, other_epoch(pb["epoch"], pa))

    # The follower has the same content hash: it takes B's cursor and sees every later change.
    cursor = {"since": pb["revision"], "epoch": pb["epoch"]}
    assert records(b.get("/api/v1/changes", params=cursor)) == []
    write_json(real_assets / "later.json", node_doc("later"))
    wait_until(lambda: has_node(b, "later"))
    assert records(b.get("/api/v1/changes", params={**cursor, "wait": 10})) == [
        {"revision": pb["revision"] + 1, "kind": "added", "node_id": "later", "source": "later.json"}
    ]
    wait_until(lambda: has_node(a, "later"))
    assert where(a)["content_hash"] == where(b)["content_hash"] != pb["content_hash"]


def test_an_event_stream_resumed_on_a_replica_of_another_history_relists_first_then_streams(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a = replica(server, real_assets, tmp_path / "a.db")
    with_error_and_recovery(a, real_assets, "late")
    b = replica(server, real_assets, tmp_path / "b.db")
    wait_until(lambda: has_node(b, "late"))
    pa = where(a)
    far = pa["revision"] + 10
    cases: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
        (f"{pa['epoch']}:{pa['revision']}", lambda pb: other_epoch(pa["epoch"], pb)),  # A's id: ahead of B too
        (f"{pa['epoch']}:1", lambda pb: other_epoch(pa["epoch"], pb)),  # behind B: only the epoch tells
        (str(far), lambda pb: ahead(far, pb, "Last-Event-ID")),  # an older client's bare id, ahead
    ]
    for n, (last_event_id, relist) in enumerate(cases):
        pb = where(b)
        with b.http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": last_event_id}) as response:
            assert (response.status_code, position(response)) == (200, pb)
            events = Events(response)
            first = events.next()
            write_json(real_assets / f"live{n}.json", node_doc(f"live{n}"))
            live = events.next()
        assert (first["event"], first["id"], orjson.loads(first["data"])) == (
            "relist", f"{pb['epoch']}:{pb['revision']}", relist(pb))
        data = orjson.loads(live["data"])
        data.pop("at")
        revision = pb["revision"] + 1
        assert (live["event"], live["id"], data) == (
            "change", f"{pb['epoch']}:{revision}",
            {"revision": revision, "kind": "added", "node_id": f"live{n}", "source": f"live{n}.json"},
        )

    # Its own history's id, and a bare revision (taken in the current epoch): no relist.
    for n, own in enumerate((lambda pb: f"{pb['epoch']}:{pb['revision']}", lambda pb: str(pb["revision"]))):
        pb = where(b)
        last_event_id = own(pb)
        with b.http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": last_event_id}) as response:
            events = Events(response)
            write_json(real_assets / f"own{n}.json", node_doc(f"own{n}"))
            first = events.next()
        assert (first["event"], first["id"], orjson.loads(first["data"])["node_id"]) == (
            "change", f"{pb['epoch']}:{pb['revision'] + 1}", f"own{n}")


# --- one database, one history ----------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_restart_on_the_same_database_keeps_the_epoch_and_every_cursor_stays_valid(
    stop: signal.Signals, real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    first = replica(server, real_assets, db)
    write_json(real_assets / "x.json", node_doc("x"))
    wait_until(lambda: has_node(first, "x"))
    before = where(first)
    first.stop(stop)
    again = replica(server, real_assets, db)
    assert where(again) == before
    assert again.get("/health").json()["epoch"] == before["epoch"]
    for since in (0, before["revision"] - 1, before["revision"]):
        answer = again.get("/api/v1/changes", params={"since": since, "epoch": before["epoch"]})
        assert (answer.status_code, sorted({c["revision"] for c in answer.json()["changes"]})) == (
            200, list(range(since + 1, before["revision"] + 1)))
    (real_assets / "x.json").unlink()
    answer = again.get("/api/v1/changes", params={"since": before["revision"], "epoch": before["epoch"], "wait": 10})
    assert records(answer) == [{"revision": before["revision"] + 1, "kind": "removed", "node_id": "x",
                                "source": "x.json"}]


def _delete(db: Path, other: Path) -> None:
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)


def _damage(db: Path, other: Path) -> None:
    """Keep SQLite's header (so the file is known as a registry database) and ruin its pages."""
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(max(size - 4096, 8192)))


def _copy_of_another(db: Path, other: Path) -> None:
    """Replace the file with a copy of another replica's database (a seeded or restored volume)."""
    _delete(db, other)
    shutil.copyfile(other, db)


@pytest.mark.parametrize("fault", [_delete, _damage, _copy_of_another], ids=["deleted", "damaged", "copied"])
def test_after_the_database_is_rebuilt_or_replaced_an_old_cursor_gets_410_never_400_or_200(
    fault: Callable[[Path, Path], None], real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db, other_db = tmp_path / "r.db", tmp_path / "other.db"
    other = replica(server, real_assets, other_db)
    first = replica(server, real_assets, db)
    for name in ("x", "y", "z"):  # a history longer than the rebuilt one will be at first
        write_json(real_assets / f"{name}.json", node_doc(name))
        wait_until(lambda node_id=name: has_node(first, node_id))
    wait_until(lambda: has_node(other, "z"))
    old = where(first)
    first.stop()
    other.stop()
    fault(db, other_db)
    again = replica(server, real_assets, db)
    now = where(again)
    assert now["epoch"] not in (old["epoch"], where_epoch(other_db))
    assert now["content_hash"] == old["content_hash"]  # the same files are served
    for since in range(old["revision"] + 2):
        for params in ({"since": since, "epoch": old["epoch"]}, {"since": since, "epoch": old["epoch"], "wait": 30}):
            answer = again.get("/api/v1/changes", params=params, timeout=5)
            assert (answer.status_code, answer.json()) == (410, other_epoch(old["epoch"], now)), params
    # Without its epoch, a cursor ahead of the new revision is still known for another history's.
    for since in range(now["revision"] + 1, old["revision"] + 2):
        answer = again.get("/api/v1/changes", params={"since": since})
        assert (answer.status_code, answer.json()) == (410, ahead(since, now)), since


def where_epoch(db: Path) -> str | None:
    """The epoch a database file gives now (None when there is none)."""
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (history,) = conn.execute("SELECT value FROM meta WHERE key = 'history'").fetchone()
    return epoch_of(history, db.stat().st_ino)


def test_a_replica_seeded_from_a_copy_of_anothers_database_has_its_own_epoch(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a = replica(server, real_assets, tmp_path / "a.db")
    a.stop()
    shutil.copyfile(tmp_path / "a.db", tmp_path / "b.db")
    a = replica(server, real_assets, tmp_path / "a.db")
    b = replica(server, real_assets, tmp_path / "b.db")
    pa, pb = where(a), where(b)
    assert (pa["revision"], pa["content_hash"]) == (pb["revision"], pb["content_hash"])
    assert pa["epoch"] != pb["epoch"]
    gone = b.get("/api/v1/changes", params={"since": pa["revision"], "epoch": pa["epoch"]})
    assert (gone.status_code, gone.json()) == (410, other_epoch(pa["epoch"], pb))


def test_a_database_deleted_under_the_running_service_is_a_new_history_with_the_same_content(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    srv = replica(server, real_assets, db)
    before = where(srv)
    _delete(db, db)
    write_json(real_assets / "x.json", node_doc("x"))  # the next commit finds the file gone
    wait_until(lambda: has_node(srv, "x"))
    after = where(srv)
    assert after["epoch"] != before["epoch"] and after["epoch"] == where_epoch(db)
    assert after["revision"] == before["revision"] + 1
    gone = srv.get("/api/v1/changes", params={"since": before["revision"], "epoch": before["epoch"]})
    assert (gone.status_code, gone.json()) == (410, other_epoch(before["epoch"], after))
    # ... and the new history goes on from there
    (real_assets / "x.json").unlink()
    answer = srv.get("/api/v1/changes", params={"since": after["revision"], "epoch": after["epoch"], "wait": 10})
    assert records(answer) == [{"revision": after["revision"] + 1, "kind": "removed", "node_id": "x",
                                "source": "x.json"}]


def test_a_service_waiting_for_the_database_has_an_epoch_of_its_own_then_the_databases(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    writer = replica(server, real_assets, db)
    epoch = where(writer)["epoch"]
    waiting = server({"REGISTRY_ASSETS_DIR": str(real_assets), "REGISTRY_DB_PATH": str(db)},
                     tmp_path / "waiting.log", ready=False)
    wait_until(lambda: _answers(waiting) and waiting.get("/health").json()["database"]["state"] == "waiting")
    provisional = where(waiting)
    assert EPOCH.fullmatch(provisional["epoch"]) and provisional["epoch"] != epoch
    writer.stop()
    waiting.wait_ready()
    assert where(waiting)["epoch"] == epoch  # the same file: the same history, taken over


def _answers(srv: ServerProcess) -> bool:
    try:
        srv.get("/health")
    except httpx.TransportError:
        return False
    return True


# --- the content hash --------------------------------------------------------------------------


def _edit(assets: Path, change: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    def edit() -> None:
        path = assets / "dfx-math-executor-node.json"
        doc = orjson.loads(path.read_bytes())
        change(doc)
        write_json(path, doc)
    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.__setitem__(key, value)


def _module(doc: dict[str, Any]) -> None:
    name = next(iter(doc["components"]))
    component = doc["components"][name]
    if isinstance(component, str):
        doc["components"][name] = component + "_v2"
    else:
        component["path"] = component["path"] + "_v2"


CHANGES = {
    "status": _set("status", "inactive"),
    "priority": _set("priority", 7),
    "api_url": _set("api_url", "http://elsewhere:9000"),
    "extra field": _set("team", "math"),
    "module path": _module,
    "a component added": lambda doc: doc["components"].__setitem__("Brand", "new.brand"),
}


def test_replicas_serving_the_same_files_have_one_content_hash_whatever_their_history_names_or_times(
    server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a_assets, b_assets = copy_assets(tmp_path, "a"), copy_assets(tmp_path, "b")
    a = replica(server, a_assets, tmp_path / "a.db")
    with_error_and_recovery(a, a_assets, "extra")
    (a_assets / "extra.json").unlink()
    wait_until(lambda: not has_node(a, "extra"))
    # B: the same nodes under other file names, written at other times
    for path in sorted(b_assets.glob("*.json")):
        path.rename(path.with_name("renamed-" + path.name))
    b = replica(server, b_assets, tmp_path / "b.db")
    pa, pb = where(a), where(b)
    assert pa["revision"] != pb["revision"] and pa["epoch"] != pb["epoch"]
    assert pa["content_hash"] == pb["content_hash"]
    assert CONTENT_HASH.fullmatch(pa["content_hash"])
    # every answer under /api/v1 carries it, and /health and /metrics report it
    for path in ("/api/v1/nodes", "/api/v1/sources", "/api/v1/nodes/no-such", "/api/v1/changes?since=x"):
        assert b.get(path).headers["x-registry-content-hash"] == pb["content_hash"], path
    assert b.get("/health").json()["content_hash"] == pb["content_hash"]
    info = f'droq_registry_state_info{{content_hash="{pb["content_hash"]}",epoch="{pb["epoch"]}"}} 1.0'
    assert info in b.get("/metrics").text.splitlines()
    # a touch, or a reformatted file that says the same: same content
    target = a_assets / "dfx-math-executor-node.json"
    os.utime(target, (1, 1))
    write_json(target, orjson.loads(target.read_bytes()))
    target.write_bytes(orjson.dumps(orjson.loads(target.read_bytes())))
    wait_until(lambda: where(a)["revision"] > pa["revision"])
    assert where(a)["content_hash"] == pb["content_hash"]


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_the_content_hash_differs_as_soon_as_one_nodes_answer_differs(
    change: Callable[[dict[str, Any]], None], server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    a_assets, b_assets = copy_assets(tmp_path, "a"), copy_assets(tmp_path, "b")
    a, b = replica(server, a_assets, tmp_path / "a.db"), replica(server, b_assets, tmp_path / "b.db")
    same = where(b)["content_hash"]
    assert where(a)["content_hash"] == same
    original = (a_assets / "dfx-math-executor-node.json").read_bytes()
    detail = a.get("/api/v1/nodes/dfx-math-executor-node").content
    _edit(a_assets, change)()
    wait_until(lambda: a.get("/api/v1/nodes/dfx-math-executor-node").content != detail)
    assert where(a)["content_hash"] != same
    (a_assets / "dfx-math-executor-node.json").write_bytes(original)
    wait_until(lambda: a.get("/api/v1/nodes/dfx-math-executor-node").content == detail)
    assert where(a)["content_hash"] == same


# --- the content hash, from the snapshot ------------------------------------------------------


def _view(node_id: str, **fields: Any) -> NodeView:
    return NodeView(f"{node_id}.json", build_node({"node_id": node_id, "name": node_id, **fields}, {"C": "m.c"}))


VIEWS = [_view("a"), _view("b", priority=3), _view("c", status="inactive"), _view("d", team="x")]


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(len(VIEWS))), st.integers(min_value=1, max_value=len(VIEWS)))
def test_the_content_hash_of_a_snapshot_does_not_depend_on_the_order_or_batches_of_its_commits(
    order: list[int], batch: int
) -> None:
    everything = Snapshot.empty("e").evolve(1, {v.node_id: v for v in VIEWS}, (), {}, ())
    snap = Snapshot.empty("other")
    for start in range(0, len(order), batch):
        put = {VIEWS[i].node_id: VIEWS[i] for i in order[start:start + batch]}
        snap = snap.evolve(snap.revision + 1, put, (), {}, ())
    assert snap.content_hash == everything.content_hash != Snapshot.empty("e").content_hash
    # dropping one node and putting it back returns to the same hash; changing it does not
    dropped = snap.evolve(snap.revision + 1, {}, ("b",), {}, ())
    assert dropped.content_hash not in (snap.content_hash, Snapshot.empty("e").content_hash)
    assert dropped.evolve(dropped.revision + 1, {"b": VIEWS[1]}, (), {}, ()).content_hash == snap.content_hash
    changed = snap.evolve(snap.revision + 1, {"b": _view("b", priority=4)}, (), {}, ())
    assert changed.content_hash != snap.content_hash
    assert (changed.epoch, dropped.epoch) == ("other", "other")
