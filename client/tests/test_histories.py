"""Cursors from another history: replicas with their own revisions, rebuilt databases.

The registries are real processes; `tests/registry_proxy.py` sits in front of them, either
as a load balancer that moves the client to another replica without closing its
connection, or speaking issue 12 (`X-Registry-Epoch`, `X-Registry-Content-Hash`, and 410
for a cursor of another epoch) for a registry that does not yet. The client must never
take a record of one history for another's, and must relist only when the content differs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Client, Events, ProxyProcess, Registry, node_doc, wait_until, write_node
from test_lookups import FAST, client_view, every_class, server_view
from test_outage import _path


def converged(client: Client, reg: Registry) -> bool:
    classes = every_class(reg)
    ids = [n["metadata"]["node_id"] for n in reg.get("/api/v1/nodes?status=all")["nodes"]]
    return client_view(client, classes, ids) == server_view(reg, classes, ids)


def listing_requests(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["path"].startswith("/api/v1/nodes")]


def test_a_cursor_ahead_of_the_replica_it_reaches_makes_the_client_relist(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
    tmp_path: Path,
) -> None:
    a = registry(name="a")
    # B serves a copy of the folder and has a shorter history: it never saw A's edits.
    folder_b = tmp_path / "b-nodes"
    shutil.copytree(a.folder, folder_b)
    b = registry(folder=folder_b, name="b")
    for version in range(4):
        write_node(a.folder, "extra.json", node_doc("extra", {"Extra": f"extra.v{version}"}))
        wait_until(lambda version=version: a.http.get("/api/v1/nodes/extra").status_code == 200
                   and a.get("/api/v1/nodes/extra")["components"]["Extra"] == f"extra.v{version}")
    write_node(folder_b, "only-b.json", node_doc("only-b", {"OnlyB": "only.b"}))
    wait_until(lambda: b.http.get("/api/v1/nodes/only-b").status_code == 200)
    assert a.revision() > b.revision()

    balancer = proxy(a.url)
    events = Events()
    client = make_client(balancer.url, poll_wait=0.5, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    assert _path(client, "Extra") == "extra.v3"

    balancer.switch(b.url)  # the next long-poll reaches B, with A's cursor
    wait_until(lambda: _path(client, "OnlyB") == "only.b")
    assert _path(client, "Extra") is None
    assert converged(client, b)
    assert client.status().revision == b.revision()
    (relisted,) = [c for c in events.changes if c.kind == "relisted"]
    # Today B answers 400 ("since=N is ahead of the registry's revision M"), after issue 12 a 410.
    assert f"(revision {a.revision()}) is ahead of {balancer.url}'s revision" in relisted.detail or (
        f"{balancer.url} answered 410" in relisted.detail)
    assert "stale" not in events.kinds()  # nothing failed: the registry said the cursor is not its own


def test_moved_to_a_replica_with_the_same_content_the_client_takes_its_cursor_without_relisting(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
) -> None:
    a = registry(name="a")
    b = registry(folder=a.folder, name="b")
    # A saw a broken edit and its repair (two more revisions); B only the final file.
    original = (a.folder / "dfx-math-executor-node.json").read_bytes()
    b.kill()
    (a.folder / "dfx-math-executor-node.json").write_text("{broken")
    wait_until(lambda: any(s["state"] == "error" for s in a.get("/api/v1/sources")["sources"]))
    (a.folder / "dfx-math-executor-node.json").write_bytes(original)
    wait_until(lambda: all(s["state"] == "ok" for s in a.get("/api/v1/sources")["sources"]))
    b.start()
    assert a.revision() != b.revision()

    pa, pb = proxy(a.url, epoch="epoch-a"), proxy(b.url, epoch="epoch-b")
    events = Events()
    client = make_client([pa.url, pb.url], on_state_change=events, **FAST)
    assert client.wait_synced(15)
    status = client.status()
    assert (status.epoch, status.revision, status.url) == ("epoch-a", a.revision(), pa.url)
    assert status.content_hash is not None

    pb.clear()
    pa.kill()
    wait_until(lambda: client.status().url == pb.url and client.status().synced)
    status = client.status()
    assert (status.epoch, status.revision) == ("epoch-b", b.revision())
    first = pb.requests()[0]
    assert (first["path"], first["status"]) == ("/api/v1/changes", 410)
    assert f"since={a.revision()}" in first["query"] and "epoch=epoch-a" in first["query"]
    assert listing_requests(pb.requests()) == []  # same content hash: nothing listed or fetched
    assert "relisted" not in events.kinds()

    write_node(a.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")
    assert converged(client, b)


def test_moved_to_a_replica_with_other_content_the_client_relists_revalidating_with_etags(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
    tmp_path: Path,
) -> None:
    a = registry(name="a")
    folder_b = tmp_path / "b-nodes"
    shutil.copytree(a.folder, folder_b)
    write_node(folder_b, "dfx-math-executor-node.json",
               node_doc("dfx-math-executor-node", {"Multiply": "b.multiply"}, api_url="http://b-math:9000"))
    b = registry(folder=folder_b, name="b")
    pa, pb = proxy(a.url, epoch="epoch-a"), proxy(b.url, epoch="epoch-b")
    events = Events()
    client = make_client([pa.url, pb.url], on_state_change=events, **FAST)
    assert client.wait_synced(15)

    pb.clear()
    pa.kill()
    wait_until(lambda: _path(client, "Multiply") == "b.multiply")
    assert converged(client, b)
    assert client.status().epoch == "epoch-b"
    details = {r["path"].rsplit("/", 1)[1]: (r["status"], r["if_none_match"] is not None)
               for r in listing_requests(pb.requests()) if r["path"] != "/api/v1/nodes"}
    assert details == {  # unchanged nodes revalidated (304), only the changed one sent again
        "dfx-hf-models-node": (304, True),
        "dfx-math-executor-node": (200, True),
        "lfx-runtime-executor-node": (304, True),
        "lfx-tool-executor-node": (304, True),
    }
    relisted = [c for c in events.changes if c.kind == "relisted"]
    assert len(relisted) == 1 and relisted[0].detail.endswith("; 1 node differed")


def test_a_restart_on_the_same_database_keeps_the_cursor(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    front = proxy(reg.url, epoch="epoch-1")
    events = Events()
    client = make_client(front.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    reg.kill()
    wait_until(lambda: client.status().stale)
    front.clear()
    reg.start()  # the same database: the same history, the same epoch
    assert client.wait_synced(15), (client.status(), front.requests()[-3:])
    assert listing_requests(front.requests()) == []  # it followed on from its cursor
    assert "relisted" not in events.kinds()
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")


def test_a_rebuilt_database_is_a_new_epoch_relisted_only_if_the_content_differs(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    front = proxy(reg.url, epoch="epoch-1")
    events = Events()
    client = make_client(front.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)

    # Rebuilt with the same files: a 410 with the same content hash, no relisting.
    reg.rebuild()
    front.restart(epoch="epoch-2")
    wait_until(lambda: client.status().epoch == "epoch-2" and client.status().synced)
    assert listing_requests(front.requests()) == []
    assert "relisted" not in events.kinds()
    assert client.status().revision == reg.revision()

    # Rebuilt after a file changed while it was down: the hash differs, the client relists.
    reg.kill()
    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    reg.rebuild()
    front.restart(epoch="epoch-3")
    wait_until(lambda: _path(client, "WhileDown") == "down.mod")
    assert client.status().epoch == "epoch-3"
    assert converged(client, reg)
    assert [c.kind for c in events.changes].count("relisted") == 1
