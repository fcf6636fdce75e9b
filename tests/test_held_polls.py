"""Long-polls held by the connection itself (`outlet.FollowerWrites.follow_here`).

A plain `GET /api/v1/changes?...&wait=S` whose head is parsed with nothing before it in
progress is answered by the protocol at once when there is news, and otherwise held with no
ASGI task until the fan-out writes its answer, its wait runs out, or its client goes. These
tests drive a real server process over raw sockets: what such a long-poll costs (memory, no
thread), what it answers in each way out (the answer a plain request gets, byte for byte
but the date), that its next request is read, that it is counted, and that the clients that
leave cost the others nothing.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from support.http import metric
from support.polling import wait_until
from support.server import DEADLINE, ServerProcess, commit_one, memory_mib, text_env
from support.sockets import Conn, descriptors, without_date

FOLLOWING = "droq_registry_connections_following"


@pytest.fixture
def srv(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    return server(text_env(real_assets, tmp_path / "registry.db", LOG_LEVEL="warning"), tmp_path / "server.log")


def threads(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


def counted(srv: ServerProcess, status: int = 200) -> float:
    return metric(srv, f'droq_registry_http_requests_total{{method="GET",route="/api/v1/changes",status="{status}"}}')


def plain(srv: ServerProcess, since: int, *headers: str) -> tuple[list[bytes], bytes]:
    """The answer of a request that does not wait, on its own connection (head without its date)."""
    conn = Conn(srv.port)
    try:
        conn.sock.sendall(("\r\n".join([f"GET /api/v1/changes?since={since} HTTP/1.1", "Host: r", *headers])
                           + "\r\n\r\n").encode())
        head, body = conn.answer()
        return without_date(head), body
    finally:
        conn.sock.close()


HELD = 400


def test_held_long_polls_cost_no_thread_and_under_10_kib_each_and_each_gets_the_commit_then_is_read_again(
    srv: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    start = int(srv.get("/health").json()["revision"])
    warm = [Conn(srv.port) for _ in range(50)]  # the allocator's first arenas, not the followers' cost
    for conn in warm:
        conn.ask(f"/api/v1/changes?since={start}&wait=30")
    wait_until(lambda: metric(srv, FOLLOWING) == 50, timeout=DEADLINE)
    for conn in warm:
        conn.sock.close()
    wait_until(lambda: metric(srv, FOLLOWING) == 0, timeout=DEADLINE)
    rss, before = memory_mib(srv.pid), threads(srv.pid)
    with descriptors(HELD + 200):
        polls = [Conn(srv.port) for _ in range(HELD)]
        sockets += [c.sock for c in polls]
        for conn in polls:
            conn.ask(f"/api/v1/changes?since={start}&wait=30")
        wait_until(lambda: metric(srv, FOLLOWING) == HELD, timeout=DEADLINE)
        per_poll_kib = (memory_mib(srv.pid) - rss) * 1024 / HELD
        assert (threads(srv.pid), per_poll_kib <= 10) == (before, True), per_poll_kib

        revision = commit_one(srv, real_assets, "held-1")
        expected = plain(srv, start)
        assert orjson.loads(expected[1])["revision"] == revision
        for conn in polls:
            head, body = conn.answer()
            assert (without_date(head), body) == expected
        # Their next requests are read on the same connections and held again.
        for conn in polls:
            conn.ask(f"/api/v1/changes?since={revision}&wait=30")
        wait_until(lambda: metric(srv, FOLLOWING) == HELD, timeout=DEADLINE)
        second = commit_one(srv, real_assets, "held-2")
        expected = plain(srv, revision)
        for conn in polls:
            head, body = conn.answer()
            assert (without_date(head), body) == expected
        assert [c["node_id"] for c in orjson.loads(expected[1])["changes"]] == ["held-2"]
        assert orjson.loads(expected[1])["revision"] == second


@pytest.mark.parametrize("headers", [(), ("If-None-Match: *",), ('If-None-Match: "stale"',)],
                         ids=["plain", "inm-any", "inm-stale"])
def test_a_held_long_poll_answers_at_its_wait_what_a_plain_request_gets_and_is_counted(
    srv: ServerProcess, sockets: list[socket.socket], headers: tuple[str, ...]
) -> None:
    start = int(srv.get("/health").json()["revision"])
    expected = plain(srv, start, *headers)
    before = counted(srv, int(expected[0][0].split()[1]))
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.sock.sendall(("\r\n".join([f"GET /api/v1/changes?since={start}&wait=0.3 HTTP/1.1", "Host: r", *headers])
                       + "\r\n\r\n").encode())
    wait_until(lambda: metric(srv, FOLLOWING) == 1, timeout=DEADLINE)  # held, not answered at once
    head, body = conn.answer()
    assert (without_date(head), body) == expected
    wait_until(lambda: metric(srv, FOLLOWING) == 0, timeout=DEADLINE)
    assert counted(srv, int(expected[0][0].split()[1])) == before + 1
    conn.ask("/api/v1/components/TextInputComponent/node")  # the connection is kept and read
    head, _ = conn.answer()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_held_long_polls_whose_clients_leave_are_let_go_and_the_others_still_get_the_commit(
    srv: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    start = int(srv.get("/health").json()["revision"])
    polls = [Conn(srv.port) for _ in range(60)]
    sockets += [c.sock for c in polls]
    for conn in polls:
        conn.ask(f"/api/v1/changes?since={start}&wait=30")
    wait_until(lambda: metric(srv, FOLLOWING) == 60, timeout=DEADLINE)
    leaving, staying = polls[:40], polls[40:]
    for i, conn in enumerate(leaving):
        if i % 2:  # half reset the connection, half close it
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()
    wait_until(lambda: metric(srv, FOLLOWING) == 20, timeout=DEADLINE)
    revision = commit_one(srv, real_assets, "after-leaving")
    for conn in staying:
        _, body = conn.answer()
        assert orjson.loads(body)["revision"] == revision
    assert srv.stop() == 0
    assert "Traceback" not in srv.log() and "ERROR" not in srv.log(), srv.log()


FAILING_HOLD = '''
from droq_registry import changes

_held = changes.Changes.held
_calls = []


def failing_once(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == 1:
        raise RuntimeError("injected: holding a long-poll failed")
    return _held(*args, **kwargs)


changes.Changes.held = staticmethod(failing_once)
'''


def test_a_long_poll_the_protocol_fails_to_hold_is_held_and_answered_by_the_app_instead(
    tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess], sockets: list[socket.socket]
) -> None:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAILING_HOLD)  # loaded by the server at start
    srv = server(text_env(real_assets, tmp_path / "registry.db", LOG_LEVEL="warning",
                          PYTHONPATH=str(tmp_path / "inject")), tmp_path / "server.log")
    start = int(srv.get("/health").json()["revision"])
    expected = plain(srv, start)
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.ask(f"/api/v1/changes?since={start}&wait=0.3")  # the protocol fails: the app holds it
    head, body = conn.answer()
    assert (without_date(head), body) == expected
    conn.ask(f"/api/v1/changes?since={start}&wait=0.3")  # and the next is held by the protocol
    wait_until(lambda: metric(srv, FOLLOWING) == 1, timeout=DEADLINE)
    head, body = conn.answer()
    assert (without_date(head), body) == expected
    assert counted(srv) >= 2
    assert srv.stop() == 0
    assert "injected: holding a long-poll failed" in srv.log()
    assert "the app answers it" in srv.log()
