"""The client attacked from outside, as executors' environments break it.

A replica address that answers garbage, resets connections, cuts answers short or trickles
them forever; a proxy answering 502 while its registry is down; a replica frozen with
SIGSTOP; node ids and class names with every character the registry allows; thousands of
lookups from many threads while the follower keeps relisting. In every case known lookups
keep answering with the registry's own answers, and one bad replica costs only itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import (
    Client,
    Events,
    ProxyProcess,
    Registry,
    free_port,
    node_doc,
    requests_since,
    wait_until,
    write_node,
)
from droq_registry_client import RegistryClient
from registry_proxy import BAD_GATEWAY
from test_lookups import FAST, client_view, every_class, server_view
from test_outage import _path


class BadReplica:
    """A replica address where something answers TCP but not as a registry does.

    - `html`: another service on the port (200 with a web page, for every path);
    - `reset`: every connection reset (RST) once the request has arrived;
    - `truncated`: a registry-looking answer cut short (Content-Length promises more);
    - `trickle`: a registry-looking answer whose body comes a byte every 0.1 s, forever,
      so no single read ever times out.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
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
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                if self.mode == "html":
                    page = b"<html><body><h1>It works!</h1></body></html>"
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(page), page))
                elif self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                elif self.mode == "truncated":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-registry-revision: 7\r\n"
                                 b"content-length: 1000\r\n\r\n{\"nodes\": [")
                elif self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-registry-revision: 7\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n")
                    while not self.stopping.wait(0.1):
                        conn.sendall(b"1\r\n \r\n")
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def bad_replica() -> Iterator[Callable[[str], BadReplica]]:
    made: list[BadReplica] = []

    def make(mode: str) -> BadReplica:
        made.append(BadReplica(mode))
        return made[-1]

    yield make
    for bad in made:
        bad.close()


def changes_url(url: str, client: Client) -> str:
    """The URL of the first poll the client sends a replica it resumes on."""
    status = client.status()
    return f"{url}/api/v1/changes?since={status.revision}&wait=0&epoch={status.epoch}"


@pytest.mark.parametrize("mode", ["html", "reset", "truncated"])
def test_a_bad_replica_never_becomes_the_state_known_lookups_keep_answering(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
    bad_replica: Callable[[str], BadReplica], mode: str,
) -> None:
    reg = registry()
    bad = bad_replica(mode)
    events = Events()
    client = make_client([reg.url, bad.url], on_state_change=events, **FAST)
    assert client.wait_synced(15)
    classes = every_class(reg)
    known = {cls: client.node_for(cls) for cls in classes}
    before = client.status()

    reg.kill()
    wait_until(lambda: bad.accepted >= 3 and bad.url in str(client.status().last_error))
    assert {cls: client.node_for(cls) for cls in classes} == known
    status = client.status()
    assert (status.stale, status.synced, status.url, status.revision, status.epoch, status.content_hash) == (
        True, False, reg.url, before.revision, before.epoch, before.content_hash)
    why = {
        "html": " answered 200 without a valid x-registry-revision header (got None): is this a Droq registry?",
        "reset": ": ReadError: ConnectionResetError: [Errno 104] Connection reset by peer",
        "truncated": ": RemoteProtocolError: peer closed connection without sending complete message body "
                     "(received 11 bytes, expected 1000)",
    }[mode]
    wait_until(lambda: client.status().last_error == f"GET {changes_url(bad.url, client)}{why}")
    assert events.kinds() == ["synced", "stale"]  # stale once, however many attempts failed

    reg.start()
    assert client.wait_synced(15)
    write_node(reg.folder, "after.json", node_doc("after", {"After": "after.mod"}))
    wait_until(lambda: _path(client, "After") == "after.mod")
    assert client.status().url == reg.url


def test_a_replica_that_trickles_its_answer_forever_is_given_up_and_the_next_one_followed(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
    bad_replica: Callable[[str], BadReplica],
) -> None:
    reg = registry()
    bad = bad_replica("trickle")  # first in the list: the client starts with it
    client = make_client([bad.url, reg.url], poll_wait=0.5, timeout=0.5, **FAST)
    assert client.wait_synced(15)
    assert client.status().url == reg.url
    assert client.status().last_error == (
        f"GET {bad.url}/ready: the whole answer took longer than 1 s (2 x timeout)"
    )
    assert client.node_for("Multiply") == reg.get("/api/v1/components/Multiply/node")


def test_through_a_proxy_a_registry_down_is_a_502_not_an_answer_and_stale_once(
    registry: Callable[..., Registry], proxy: Callable[..., ProxyProcess], make_client: Callable[..., Client],
) -> None:
    reg = registry()
    front = proxy(reg.url)
    events = Events()
    client = make_client(front.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    classes = every_class(reg)
    known = {cls: client.node_for(cls) for cls in classes}

    reg.kill()  # the proxy stays up and answers 502 to everything
    page = BAD_GATEWAY.strip()
    wait_until(lambda: client.status().last_error == f"GET {changes_url(front.url, client)} answered 502: {page}")
    assert {cls: client.node_for(cls) for cls in classes} == known
    assert (client.status().stale, client.status().synced) == (True, False)
    assert events.kinds() == ["synced", "stale"]

    write_node(reg.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))
    reg.start()
    wait_until(lambda: _path(client, "WhileDown") == "down.mod")
    assert events.kinds() == ["synced", "stale", "synced"]


def test_one_of_two_replicas_frozen_the_client_follows_the_other_and_misses_no_change(
    registry: Callable[..., Registry], make_client: Callable[..., Client],
) -> None:
    a = registry(name="a")
    b = registry(folder=a.folder, name="b")
    client = make_client([a.url, b.url], poll_wait=0.5, timeout=0.5, **FAST)
    assert client.wait_synced(15)
    a.pause()  # SIGSTOP: its connections stay open, nothing answers
    write_node(a.folder, "during.json", node_doc("during", {"During": "during.mod"}))
    wait_until(lambda: _path(client, "During") == "during.mod")
    assert client.status().url == b.url
    a.resume()


#: The registry allows node ids of [A-Za-z0-9][A-Za-z0-9._-]{0,127} and ASCII identifiers
#: as class names; the free text (names, descriptions) may hold any character.
ODD_IDS = ["a.b_c-d", "Z", "0..-__.", "x" * 128, "9-9"]
ODD_CLASSES = ["_", "__init__", "A" * 255, "None", "class_", "x9_"]
ODD_TEXT = "line\u2028sep next\x85line para\u2029sep tab\t \"quotes\" back\\slash Ünïcödé 🚀 \x1c\x1d\x1e\x0b\x0c"


def test_node_ids_and_odd_text_answer_as_the_registry_does_and_survive_the_cache_file(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmp_path: Path,
) -> None:
    reg = registry(real=False)
    for i, node_id in enumerate(ODD_IDS):
        components = {cls: f"mod{i}.c{n}" for n, cls in enumerate(ODD_CLASSES)}
        write_node(reg.folder, f"n{i}.json", node_doc(node_id, components, priority=i, name=f"{ODD_TEXT} {i}",
                                                     description=ODD_TEXT))
    wait_until(lambda: len(reg.get("/api/v1/nodes?status=all")["nodes"]) == len(ODD_IDS))
    cache_path = tmp_path / "cache.jsonl"
    client = make_client(reg.url, cache_path=cache_path, **FAST)
    assert client.wait_synced(15)
    for node_id in ODD_IDS:
        assert client.node(node_id) == reg.get(f"/api/v1/nodes/{quote(node_id, safe='')}")
    best = reg.get(f"/api/v1/nodes/{ODD_IDS[-1]}")  # the highest priority
    for cls in ODD_CLASSES:
        assert client.node_for(cls) == reg.get(f"/api/v1/components/{cls}/node") == {
            **best, "module_path": best["components"][cls]}
        assert [n["node"]["node_id"] for n in client.nodes_for(cls)] == list(reversed(ODD_IDS))
    client.close()

    # The cache file holds them exactly: a client started while the registry is down routes from it.
    reg.kill()
    again = make_client(reg.url, cache_path=cache_path, **FAST)
    for cls in ODD_CLASSES:
        assert again.node_for(cls) == {**best, "module_path": best["components"][cls]}
    assert again.status().from_cache
    for node_id in ODD_IDS:
        assert again.node(node_id) == client.node(node_id)


def test_thousands_of_lookups_from_many_threads_while_the_follower_relists(
    registry: Callable[..., Registry], tmp_path: Path,
) -> None:
    reg = registry()
    write_node(reg.folder, "moving.json", node_doc("moving", {"Moving": "moving.v0", "Multiply": "moving.mul"}))
    wait_until(lambda: reg.http.get("/api/v1/nodes/moving").status_code == 200)
    # resync_interval 0.05 s: the follower lists the registry again and again, while a
    # writer changes a node that competes for Multiply and lookups run in 16 threads.
    events = Events()
    client = RegistryClient(reg.url, resync_interval=0.05, cache_path=tmp_path / "cache.jsonl",
                            cache_interval=0.01, failure_ttl=0.2, on_state_change=events, **FAST)
    try:
        assert client.wait_synced(15)
        stable = [c for c in every_class(reg) if c not in ("Multiply", "Moving")]
        known = {cls: client.node_for(cls) for cls in stable}
        multiply = {reg.get("/api/v1/components/Multiply/node")["node"]["node_id"], "moving"}
        before = reg.requests()
        errors: list[str] = []
        done = [0] * 16
        stop = threading.Event()

        def lookups(n: int) -> None:
            while not stop.is_set():
                for cls in stable[n::16]:
                    try:
                        if client.node_for(cls) != known[cls]:
                            errors.append(f"{cls}: another answer")
                        answer = client.node_for("Multiply")
                        if answer["node"]["node_id"] not in multiply or \
                                answer["module_path"] != answer["components"]["Multiply"]:
                            errors.append(f"Multiply: {answer['node']['node_id']} {answer['module_path']}")
                        moving = client.node_for("Moving")["module_path"]
                        if not moving.startswith("moving.v"):
                            errors.append(f"Moving: {moving}")
                        if n == 0:
                            client.report_failure("moving")
                    except Exception as exc:  # noqa: BLE001 - every failure is collected and shown
                        errors.append(f"{cls}: {type(exc).__name__}: {exc}")
                    done[n] += 3

        threads = [threading.Thread(target=lookups, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        priority = 0
        while sum(done) < 30_000 or requests_since(reg, before).get(("/api/v1/nodes", "200"), 0) < 5:
            priority += 1
            write_node(reg.folder, "moving.json", node_doc(
                "moving", {"Moving": f"moving.v{priority}", "Multiply": "moving.mul"}, priority=priority % 3 - 1))
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert all(count > 0 for count in done)
        # Nothing failed: a kept-alive connection closed under a request is not an outage.
        assert "stale" not in events.kinds()
        final = f"moving.v{priority}"
        wait_until(lambda: client.node_for("Moving")["module_path"] == final)
        classes, ids = every_class(reg), ["moving"]
        wait_until(lambda: client_view(client, classes, ids) == server_view(reg, classes, ids))
    finally:
        client.close()
