"""Cursors from another history: replicas with their own revisions, rebuilt databases.

Every registry here is the project's own server, speaking issue 12 itself: each answer
names its epoch and content hash, and a cursor of another history gets `410 {detail,
revision, epoch, content_hash}`. The client must never take a record of one history for
another's, and must relist only when the content differs. What the client asked of a
registry is read from that registry's own /metrics (requests by route and status).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from conftest import Client, Events, ProxyProcess, Registry, node_doc, requests_since, wait_until, write_node
from test_lookups import FAST, client_view, every_class, server_view
from test_outage import _path

CHANGES_OK = ("/api/v1/changes", "200")


def converged(client: Client, reg: Registry) -> bool:
    classes = every_class(reg)
    ids = [n["metadata"]["node_id"] for n in reg.get("/api/v1/nodes?status=all")["nodes"]]
    return client_view(client, classes, ids) == server_view(reg, classes, ids)


def without_polls(requests: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """The requests but the long-polls answered 200 (how many depends on timing)."""
    return {key: count for key, count in requests.items() if key != CHANGES_OK}


def refused(reg: Registry, epoch: str) -> str:
    """The detail of the 410 `reg` answers a cursor of history `epoch` with."""
    revision, own, content_hash = reg.position()
    return (
        f"epoch {epoch} is another history than this registry's (epoch {own}); list the registry again, "
        f"unless your state has content hash {content_hash}, and follow changes from revision {revision} "
        f"of epoch {own}"
    )


def relisted_on_410(reg: Registry, epoch: str, differed: str, detail: str) -> bool:
    """Whether `detail` is the `relisted` note of a client whose cursor of history `epoch`
    `reg` refused. A restarted registry may refuse it before its first load has committed
    (at revision 0, with the empty state's hash), or after: both are the same refusal."""
    revision, own, content_hash = reg.position()
    found = re.fullmatch(
        re.escape(f"listed {reg.url} again at revision {revision} ({reg.url} answered 410: epoch {epoch} is another "
                  f"history than this registry's (epoch {own}); list the registry again, unless your state has "
                  "content hash ") + "(?P<hash>[0-9a-f]+)" + re.escape(", and follow changes from revision ")
        + "(?P<revision>[0-9]+)" + re.escape(f" of epoch {own}); {differed}"),
        detail,
    )
    return found is not None and (found["revision"], found["hash"] == content_hash) in (("0", False), (
        str(revision), True))


def test_behind_one_url_another_replicas_history_gets_410_and_a_relist_revalidated_with_etags(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
    tmp_path: Path,
) -> None:
    a = registry(name="a")
    # B serves a copy of the folder with a shorter history: it never saw A's edits, and
    # has a node of its own.
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
    epoch_a = a.position()[1]

    balancer = proxy(a.url)  # one URL, as a Service or a load balancer gives executors
    events = Events()
    client = make_client(balancer.url, poll_wait=0.5, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    assert _path(client, "Extra") == "extra.v3"
    before = b.requests()

    balancer.switch(b.url)  # the next long-poll reaches B on the same connection, with A's cursor
    wait_until(lambda: _path(client, "OnlyB") == "only.b")
    asked = requests_since(b, before)
    assert without_polls(asked) == {
        ("/api/v1/changes", "410"): 1,
        ("/ready", "200"): 2,  # a 410 is only believed from a registry that has loaded; so is a listing
        ("/api/v1/nodes", "200"): 1,
        ("/api/v1/nodes/{node_id}", "304"): 4,  # the real nodes, unchanged: revalidated
        ("/api/v1/nodes/{node_id}", "200"): 1,  # only-b, new
    }
    assert _path(client, "Extra") is None
    assert converged(client, b)
    assert (client.status().revision, client.status().epoch) == b.position()[:2]
    (relisted,) = [c for c in events.changes if c.kind == "relisted"]
    assert relisted.detail == (
        f"listed {balancer.url} again at revision {b.revision()} ({balancer.url} answered 410: "
        f"{refused(b, epoch_a)}); 2 nodes differed"
    )
    assert "stale" not in events.kinds()  # nothing failed: the registry said the cursor is not its own


def test_moved_to_a_replica_with_the_same_content_the_client_takes_its_cursor_without_relisting(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
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
    (rev_a, epoch_a, hash_a), (rev_b, epoch_b, hash_b) = a.position(), b.position()
    assert rev_a != rev_b and epoch_a != epoch_b and hash_a == hash_b

    events = Events()
    client = make_client([a.url, b.url], on_state_change=events, **FAST)
    assert client.wait_synced(15)
    status = client.status()
    assert (status.epoch, status.revision, status.content_hash, status.url) == (epoch_a, rev_a, hash_a, a.url)

    before = b.requests()
    a.kill()
    wait_until(lambda: client.status().url == b.url and client.status().synced)
    status = client.status()
    assert (status.epoch, status.revision, status.content_hash) == (epoch_b, rev_b, hash_b)
    # One refused cursor and nothing listed or fetched: the same content hash.
    assert without_polls(requests_since(b, before)) == {("/api/v1/changes", "410"): 1, ("/ready", "200"): 1}
    assert "relisted" not in events.kinds()

    write_node(a.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")
    assert converged(client, b)
    assert client.status().content_hash == b.position()[2]


def test_a_restart_on_the_same_database_keeps_the_epoch_and_the_cursor(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    epoch = reg.position()[1]
    reg.kill()
    wait_until(lambda: client.status().stale)
    reg.start()  # the same database: the same history, the same epoch
    assert client.wait_synced(15)
    assert reg.position()[1] == epoch == client.status().epoch
    assert without_polls(reg.requests()) == {}  # it followed on from its cursor: nothing refused or listed
    assert "relisted" not in events.kinds()
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")


def test_a_rebuilt_database_is_a_new_epoch_relisted_only_if_the_content_differs(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    first = reg.position()[1]

    # Rebuilt with the same files: a 410 with the same content hash, no relisting.
    reg.rebuild()
    second = reg.position()[1]
    assert second != first
    wait_until(lambda: client.status().epoch == second and client.status().synced)
    asked = without_polls(reg.requests())  # how many depends on when the client came during the start
    assert asked[("/api/v1/changes", "410")] >= 1 and asked[("/ready", "200")] >= 1
    assert [key for key in asked if key[0].startswith("/api/v1/nodes")] == []  # nothing listed or fetched
    assert "relisted" not in events.kinds()
    assert (client.status().revision, client.status().content_hash) == (reg.revision(), reg.position()[2])

    # Rebuilt after a file changed while it was down: the hash differs, the client relists.
    reg.kill()
    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    reg.rebuild()
    wait_until(lambda: _path(client, "WhileDown") == "down.mod")
    assert client.status().epoch == reg.position()[1]
    assert converged(client, reg)
    (relisted,) = [c for c in events.changes if c.kind == "relisted"]
    assert relisted_on_410(reg, second, "1 node differed", relisted.detail), relisted.detail


def test_stopped_during_a_long_poll_and_back_on_a_rebuilt_database_the_client_misses_no_change(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)  # poll_wait 15 s: always in a long-poll
    assert client.wait_synced(15)
    write_node(reg.folder, "extra.json", node_doc("extra", {"Extra": "extra.v1"}))
    wait_until(lambda: _path(client, "Extra") == "extra.v1")
    old_epoch = reg.position()[1]
    wait_until(lambda: "droq_registry_connections_following 1.0" in reg.http.get("/metrics").text)

    reg.stop()  # SIGTERM: the pending long-poll is answered at once, then the process exits
    for suffix in ("", "-wal", "-shm"):
        Path(f"{reg.db_path}{suffix}").unlink(missing_ok=True)
    write_node(reg.folder, "extra.json", node_doc("extra", {"Extra": "extra.v2"}))
    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    reg.start()

    wait_until(lambda: _path(client, "WhileDown") == "down.mod" and _path(client, "Extra") == "extra.v2")
    assert converged(client, reg)
    assert client.status().epoch == reg.position()[1] != old_epoch
    (relisted,) = [c.detail for c in events.changes if c.kind == "relisted"]
    assert relisted_on_410(reg, old_epoch, "2 nodes differed", relisted), relisted
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")


def test_a_registry_without_epochs_is_followed_and_relisted_after_every_reconnect(
    registry: Callable[..., Registry], make_client: Callable[..., Client], before_epochs: dict[str, str],
) -> None:
    reg = registry(env=before_epochs)  # the server as it was before issue 12
    assert "x-registry-epoch" not in reg.http.get("/api/v1/nodes").headers
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    status = client.status()
    assert (status.epoch, status.content_hash, status.revision) == (None, None, reg.revision())
    write_node(reg.folder, "extra.json", node_doc("extra", {"Extra": "extra.v1"}))
    wait_until(lambda: _path(client, "Extra") == "extra.v1")

    # Without an epoch the cursor cannot be checked against a new process: the client lists again.
    reg.kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{reg.db_path}{suffix}").unlink(missing_ok=True)
    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    reg.start()
    wait_until(lambda: _path(client, "WhileDown") == "down.mod")
    assert converged(client, reg)
    assert client.status().revision == reg.revision()
    assert [c.detail for c in events.changes if c.kind == "relisted"] == [
        (f"listed {reg.url} again at revision {reg.revision()} (a new connection: without X-Registry-Epoch a "
         f"cursor cannot be checked against {reg.url}'s history); 1 node differed")
    ]
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")
