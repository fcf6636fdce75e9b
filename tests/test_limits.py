"""Slow and hostile clients cost only themselves: real server processes and raw sockets.

A connection that never finishes its request head is closed after the head timeout; an
idle kept-alive connection after the keep-alive timeout; a client that reads nothing of
its answer after the send timeout; a head over the size limit is answered 431 before it
ends; and a flood of connections never takes the file descriptors the service needs to
read node files, nor the room a probe needs. What closed a
connection is read from the service's own metrics, so no test depends on timing.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from droq_registry.settings import Settings, SettingsError
from support.files import node_doc, write_json
from support.http import closed_for, metric
from support.polling import wait_until
from support.server import DEADLINE, ServerProcess, text_env
from support.sockets import closed_by_server, connect, connect_narrow, descriptors, probe, read_response

Server = Callable[..., ServerProcess]


@pytest.fixture
def limited(tmp_path: Path, real_assets: Path, server: Server) -> Callable[..., ServerProcess]:
    def start(**extra: str) -> ServerProcess:
        return server(text_env(real_assets, tmp_path / "registry.db", **extra), tmp_path / "server.log")

    return start


# --- settings ---------------------------------------------------------------------------------


def test_limits_have_sane_defaults_and_are_read_from_the_environment() -> None:
    defaults = Settings.from_env({})
    assert (defaults.head_timeout_seconds, defaults.keepalive_timeout_seconds, defaults.send_timeout_seconds,
            defaults.max_head_bytes, defaults.max_connections) == (10.0, 5.0, 30.0, 65536, None)
    given = Settings.from_env({"REGISTRY_HEAD_TIMEOUT_SECONDS": "2.5", "REGISTRY_KEEPALIVE_TIMEOUT_SECONDS": "30",
                               "REGISTRY_SEND_TIMEOUT_SECONDS": "7", "REGISTRY_MAX_HEAD_BYTES": "8192",
                               "REGISTRY_MAX_CONNECTIONS": "100"})
    assert (given.head_timeout_seconds, given.keepalive_timeout_seconds, given.send_timeout_seconds,
            given.max_head_bytes, given.max_connections) == (2.5, 30.0, 7.0, 8192, 100)
    for name, value, reason in [
        ("REGISTRY_HEAD_TIMEOUT_SECONDS", "0", "expected a number of seconds, more than 0"),
        ("REGISTRY_KEEPALIVE_TIMEOUT_SECONDS", "inf", "expected a number of seconds, more than 0"),
        ("REGISTRY_MAX_HEAD_BYTES", "-1", "expected a whole number, 1 or more"),
        ("REGISTRY_MAX_CONNECTIONS", "many", "invalid value"),
    ]:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({name: value})
        assert str(caught.value) == f"{name}={value!r}: {reason}"


# --- request heads: time and size ---------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(
    limited: Callable[..., ServerProcess],
) -> None:
    srv = limited(REGISTRY_HEAD_TIMEOUT_SECONDS="1")
    before = closed_for(srv, "head_timeout")
    with connect(srv.port) as sock:
        assert closed_by_server(sock)
    assert closed_for(srv, "head_timeout") == before + 1
    assert srv.get("/health").status_code == 200


def test_a_request_head_sent_a_byte_at_a_time_is_closed_after_the_head_timeout(
    limited: Callable[..., ServerProcess],
) -> None:
    srv = limited(REGISTRY_HEAD_TIMEOUT_SECONDS="1")
    before = closed_for(srv, "head_timeout")
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 10_000
    sent = 0
    with connect(srv.port) as sock:
        sock.settimeout(0.2)
        try:
            for byte in head:  # one byte every 0.2 s at most: 2,000 s for the whole head
                sock.send(bytes([byte]))
                sent += 1
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < len(head)  # cut off long before the head could end
    assert closed_for(srv, "head_timeout") == before + 1


def test_a_request_head_over_the_limit_is_answered_431_before_it_ends(limited: Callable[..., ServerProcess]) -> None:
    srv = limited()
    start = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
    with connect(srv.port) as sock:
        sock.sendall(start + b"b" * (65536 - len(start)) + b"b")  # one byte over, and no end of head
        answer = read_response(sock)
        assert answer == (431, {"content-type": "application/json", "content-length": "56", "connection": "close"},
                          b'{"detail":"the request head is larger than 65536 bytes"}')
        assert closed_by_server(sock)
    assert closed_for(srv, "head_too_large") == 1
    # a head just within the limit is served
    with connect(srv.port) as sock:
        end = b"\r\n\r\n"
        sock.sendall(start + b"b" * (65536 - len(start) - len(end)) + end)
        answer = read_response(sock)
        assert answer is not None and answer[0] == 200
        assert orjson.loads(answer[2])["status"] == "healthy"


def test_the_head_size_limit_is_a_setting_and_counts_every_header(limited: Callable[..., ServerProcess]) -> None:
    srv = limited(REGISTRY_MAX_HEAD_BYTES="2048")
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(100))  # small headers, 3 KB in all
    with connect(srv.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        answer = read_response(sock)
        assert answer is not None
        assert (answer[0], answer[2]) == (431, b'{"detail":"the request head is larger than 2048 bytes"}')
    with connect(srv.port) as sock:
        fewer = many[: many.index(b"X-H50:")]  # 50 of them, 1.4 KB
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fewer + b"\r\n")
        answer = read_response(sock)
        assert answer is not None and answer[0] == 200


def test_a_kept_alive_connection_serves_requests_and_is_closed_once_idle(
    limited: Callable[..., ServerProcess],
) -> None:
    srv = limited(REGISTRY_KEEPALIVE_TIMEOUT_SECONDS="1", REGISTRY_HEAD_TIMEOUT_SECONDS="60")
    with connect(srv.port) as sock:
        for path in ("/health", "/ready", "/api/v1/nodes"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = read_response(sock)
            assert answer is not None and answer[0] == 200, path
        # nothing more is sent: the keep-alive timeout, not the (longer) head timeout, closes it
        assert closed_by_server(sock)
    assert closed_for(srv, "head_timeout") == 0


def test_after_a_kept_alive_request_the_next_head_has_the_head_timeout(
    limited: Callable[..., ServerProcess],
) -> None:
    srv = limited(REGISTRY_KEEPALIVE_TIMEOUT_SECONDS="60", REGISTRY_HEAD_TIMEOUT_SECONDS="1")
    with connect(srv.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_response(sock)
        assert answer is not None and answer[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a head, then nothing
        assert closed_by_server(sock)
    assert closed_for(srv, "head_timeout") == 1


# --- the connection cap -----------------------------------------------------------------------------


def with_nofile(nofile: int) -> list[str]:
    """A command prefix that runs the service with at most `nofile` file descriptors
    (util-linux's prlimit sets the limit and execs it, so the PID is the service's)."""
    return ["prlimit", f"--nofile={nofile}:{nofile}"]


def flood(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing, or half a request head, and then wait."""
    socks = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(sock)
        if i % 2:
            try:
                sock.send(b"GET /health HTTP/1.1\r\nHost: flood\r\n")
            except OSError:  # not connected yet: it stays a silent one
                pass
    return socks


def test_a_flood_of_1000_connections_costs_no_node_file_and_no_probe(tmp_path: Path, real_assets: Path) -> None:
    env = text_env(real_assets, tmp_path / "registry.db", REGISTRY_HEAD_TIMEOUT_SECONDS="60")
    with descriptors(4096):
        srv = ServerProcess(env, tmp_path / "server.log", prefix=with_nofile(256))
        socks: list[socket.socket] = []
        try:
            srv.wait_ready()
            limit = metric(srv, "droq_registry_connections_limit")
            assert limit == 256 - 64  # the cap leaves descriptors for files, database, watcher
            socks = flood(srv.port, 1000)
            assert [probe(srv.port) for _ in range(20)] == [200] * 20
            # a node file written during the flood is read and served, not "Too many open files"
            write_json(real_assets / "during-flood.json", node_doc("during-flood", {"FloodComp": "pkg.flood"}))
            assert [probe(srv.port) for _ in range(20)] == [200] * 20
            wait_until(lambda: srv.get("/api/v1/nodes/during-flood").status_code == 200, DEADLINE)
            sources = srv.get("/api/v1/sources").json()
            assert sources["errors"] == 0, sources
            assert metric(srv, "droq_registry_connections_open") <= limit
            assert closed_for(srv, "idle_evicted") >= 1000 - limit
        finally:
            for sock in socks:
                sock.close()
            code = srv.stop()
    log = srv.log()
    assert code == 0
    assert "Too many open files" not in log
    assert " ERROR " not in log and "Traceback" not in log


def test_when_every_connection_is_a_long_poll_a_new_one_is_served_and_the_oldest_answers_early(
    limited: Callable[..., ServerProcess], real_assets: Path,
) -> None:
    # (Until followers could be released, the new connection waited here for a commit;
    # waiting in the listen queue is now for connections busy with anything else, see
    # test_followers_at_the_cap.py.)
    srv = limited(REGISTRY_MAX_CONNECTIONS="4")
    revision = srv.get("/ready").json()["revision"]
    srv.http.close()  # its kept-alive connection would count as one of the four
    with ExitStack() as sockets:
        polls = [sockets.enter_context(connect(srv.port)) for _ in range(4)]
        for sock in polls:
            sock.sendall(f"GET /api/v1/changes?since={revision}&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        waiting = sockets.enter_context(connect(srv.port))
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_response(waiting)
        assert answer is not None and answer[0] == 200
        # One long-poll made room: it was answered, and closed, before the new one got in.
        released = select.select(polls, [], [], 0)[0]
        assert len(released) == 1
        early = read_response(released[0])
        assert early is not None and (early[0], orjson.loads(early[2])) == (200, {"revision": revision, "changes": []})
        # a commit answers the other three
        write_json(real_assets / "wake.json", node_doc("wake"))
        answers = [read_response(sock) for sock in polls if sock is not released[0]]
        assert [(a[0], orjson.loads(a[2])["revision"]) if a else None for a in answers] == [(200, revision + 1)] * 3
    srv.http = httpx.Client(base_url=srv.url, timeout=10)
    assert metric(srv, "droq_registry_connections_held_total") == 0
    assert closed_for(srv, "follower_released") == 1
    assert closed_for(srv, "idle_evicted") >= 1


def test_a_client_that_reads_nothing_of_a_big_answer_is_cut_off_after_the_send_timeout(
    tmp_path: Path, assets: Path, server: Server
) -> None:
    for i in range(120):  # a node list of about 8 MB: more than the socket buffers hold
        write_json(assets / f"big-{i:03d}.json", node_doc(f"big-{i:03d}", readme="r" * 65536))
    srv = server(text_env(assets, tmp_path / "registry.db", REGISTRY_SEND_TIMEOUT_SECONDS="1"),
                 tmp_path / "server.log")
    size = len(srv.get("/api/v1/nodes").content)
    assert size > 7_000_000
    with connect_narrow(srv.port, window=4096) as sock:
        sock.sendall(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: closed_for(srv, "send_stalled") == 1, DEADLINE)  # it read nothing
        received = 0
        try:
            while chunk := sock.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < size  # cut off, not served whole
    assert srv.get("/health").status_code == 200
    assert metric(srv, "droq_registry_connections_open") == 1  # only the one /metrics itself came on


def test_an_upgrade_request_is_answered_as_http_and_logs_no_warning(limited: Callable[..., ServerProcess]) -> None:
    srv = limited()
    with connect(srv.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = read_response(sock)
        assert answer is not None and answer[0] == 200
    wait_until(lambda: metric(srv, "droq_registry_connections_open") == 1, DEADLINE)  # the gate saw it close
    assert "WARNING uvicorn" not in srv.log()
