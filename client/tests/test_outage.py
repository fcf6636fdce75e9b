"""Outages of a real registry: killed, frozen, restarted with its database rebuilt.

Known lookups keep answering from the last state, flagged stale; the client reports each
state change once, however often it retries; and when the registry is back it converges
on exactly what the registry serves, whatever happened to the files meanwhile.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from conftest import Client, Events, Registry, node_doc, wait_until, write_node
from test_lookups import FAST, client_view, every_class, server_view


class ResettingPort:
    """Listens on a port and closes every connection at once, counting them: a registry
    address where something answers TCP but never HTTP (a crashing process, a bad proxy)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def resetting() -> Iterator[Callable[[int], ResettingPort]]:
    made: list[ResettingPort] = []

    def make(port: int) -> ResettingPort:
        made.append(ResettingPort(port))
        return made[-1]

    yield make
    for port in made:
        if port.sock.fileno() != -1:
            port.close()


def test_killed_registry_known_lookups_keep_answering_marked_stale_once(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
    resetting: Callable[[int], ResettingPort],
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    classes = every_class(reg)
    before = {cls: client.node_for(cls) for cls in classes}
    revision = client.status().revision

    reg.kill()
    wait_until(lambda: client.status().stale)
    port = resetting(reg.port)
    wait_until(lambda: port.accepted >= 3)  # several more failed attempts
    assert {cls: client.node_for(cls) for cls in classes} == before
    status = client.status()
    assert (status.stale, status.synced, status.revision, status.url) == (True, False, revision, reg.url)
    assert reg.url in str(status.last_error)
    assert events.kinds() == ["synced", "stale"]
    assert client.wait_synced(0.1) is False

    port.close()
    reg.start()  # the same database: the same history
    assert client.wait_synced(15)
    assert events.kinds()[:2] == ["synced", "stale"] and events.kinds()[-1] == "synced"
    assert not client.status().stale


def test_restart_with_a_rebuilt_database_relists_and_misses_no_change(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    # Some history first, so the client's cursor is past where a new database starts.
    for version in range(3):
        write_node(reg.folder, "extra.json", node_doc("extra", {"Extra": f"extra.v{version}"}))
        wait_until(lambda version=version: _path(client, "Extra") == f"extra.v{version}")
    cursor = client.status().revision

    reg.kill()
    wait_until(lambda: client.status().stale)
    for suffix in ("", "-wal", "-shm"):
        reg.db_path.with_name(reg.db_path.name + suffix).unlink(missing_ok=True)
    # While it is down: one node added, one changed, one removed.
    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    write_node(reg.folder, "extra.json", node_doc("extra", {"Extra": "extra.final"}, priority=2))
    (reg.folder / "dfx-hf-models-node.json").unlink()
    reg.start()
    assert reg.revision() < cursor  # a new history, behind the client's cursor

    assert client.wait_synced(15)
    classes = every_class(reg) + ["MiniLMEmbeddingsComponent"]
    ids = ["while-down", "extra", "dfx-hf-models-node"]
    wait_until(lambda: client_view(client, classes, ids) == server_view(reg, classes, ids))
    assert _path(client, "WhileDown") == "down.mod" and _path(client, "Extra") == "extra.final"
    assert _path(client, "MiniLMEmbeddingsComponent") is None
    assert "relisted" in events.kinds()
    assert client.status().revision == reg.revision()

    # And it follows the new history from there.
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")


def test_a_frozen_registry_is_noticed_by_the_timeout_and_followed_again(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, poll_wait=0.5, timeout=0.5, **FAST)
    assert client.wait_synced(15)
    before = client.node_for("Multiply")

    reg.pause()  # SIGSTOP: connections open, nothing answers
    wait_until(lambda: client.status().stale)
    assert "Timeout" in str(client.status().last_error)
    assert client.node_for("Multiply") == before

    reg.resume()
    assert client.wait_synced(15)
    write_node(reg.folder, "thawed.json", node_doc("thawed", {"Thawed": "thawed.mod"}))
    wait_until(lambda: _path(client, "Thawed") == "thawed.mod")
    assert events.kinds()[:2] == ["synced", "stale"] and events.kinds()[-1] == "synced"


def _path(client: Client, cls: str) -> str | None:
    from droq_registry_client import ComponentNotFound

    try:
        return str(client.node_for(cls)["module_path"])
    except ComponentNotFound:
        return None


def test_a_registry_that_has_not_loaded_yet_is_not_taken_for_an_empty_one(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    known = {cls: client.node_for(cls) for cls in every_class(reg)}

    # Restarted with a new database while its folder is not there (a volume not mounted
    # yet): it serves an empty revision 0 and /ready answers 503 until the folder appears.
    reg.kill()
    for suffix in ("", "-wal", "-shm"):
        reg.db_path.with_name(reg.db_path.name + suffix).unlink(missing_ok=True)
    away = reg.folder.with_name("nodes-not-mounted-yet")
    reg.folder.rename(away)
    reg.start(ready=False)
    wait_until(lambda: "is not ready: waiting for the assets folder" in str(client.status().last_error))
    assert reg.get("/api/v1/nodes?status=all") == {"nodes": [], "total_nodes": 0}
    assert {cls: client.node_for(cls) for cls in known} == known
    assert client.status().stale

    away.rename(reg.folder)
    reg.wait_ready()
    assert client.wait_synced(15)
    assert {cls: client.node_for(cls) for cls in known} == {
        cls: reg.get(f"/api/v1/components/{cls}/node") for cls in known}
