"""The hot reads answered by the protocol itself (`direct.DirectReads.answer_here`, a part of `protocol.LimitedProtocol`).

A lookup, node detail or node list whose head is parsed with nothing before it in progress
is answered at once from the prepared answer, with no ASGI task; anything else goes to the
app as before. These tests drive a real server process over raw sockets, the way clients
really send requests (pipelined, HTTP/1.0, `Connection: close`, HEAD, with a body, behind a
long-poll, after an answer from Starlette), and check each answer against the one the same
server gives a plain request, parsed by h11 (a client's parser, not ours).
"""

from __future__ import annotations

import socket
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.http import revision
from support.polling import wait_until
from support.server import ServerProcess, memory_mib, on_real_nodes

LOOKUP = "/api/v1/components/TextInputComponent/node"
DETAIL = "/api/v1/nodes/lfx-runtime-executor-node"
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@pytest.fixture
def srv(tmp_path: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    return on_real_nodes(server, tmp_path, RELOAD="false", LOG_LEVEL="warning")


def request(method: str, target: str, *headers: str, version: str = "1.1", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: registry", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answers(sock: socket.socket, methods: list[str], timeout: float = 10.0) -> list[Answer]:
    """Read one answer per method from `sock`, in order (h11 needs each request's method)."""
    sock.settimeout(timeout)
    conn = h11.Connection(h11.CLIENT)
    out: list[Answer] = []
    for i, method in enumerate(methods):
        if i:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "registry")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, [], b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        out.append((status, headers, body))
    return out


def closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the server closes `sock` (reads EOF) within `timeout`, with nothing more sent."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def comparable(answer: Answer) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An answer without its date and connection headers (they differ by the second and the request)."""
    status, headers, body = answer
    return status, [(k, v) for k, v in headers if k not in (b"date", b"connection")], body


def alone(srv: ServerProcess, method: str, target: str) -> Answer:
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(request(method, target))
        return answers(sock, [method])[0]


def test_pipelined_hot_reads_are_answered_in_order_and_the_connection_goes_on(srv: ServerProcess) -> None:
    targets = [LOOKUP, DETAIL, "/api/v1/nodes", "/api/v1/components/NoSuchComponent/node", LOOKUP]
    want = [comparable(alone(srv, "GET", t)) for t in targets]
    assert [w[0] for w in want] == [200, 200, 200, 404, 200]
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"".join(request("GET", t) for t in targets))  # one write: one read by the server
        got = answers(sock, ["GET"] * len(targets))
        assert [comparable(a) for a in got] == want
        sock.sendall(request("GET", "/health"))  # then a route Starlette answers, on the same connection
        health = answers(sock, ["GET"])[0]
        assert health[0] == 200 and b'"revision"' in health[2]
        sock.sendall(request("GET", LOOKUP))  # and a hot read again after it
        assert comparable(answers(sock, ["GET"])[0]) == want[0]


@pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
def test_requests_pipelined_behind_an_upgrade_in_one_write_are_answered(srv: ServerProcess, upgrade: str) -> None:
    # Nothing is upgraded, so the connection stays HTTP: what follows the Upgrade request in
    # the same read is the next request (uvicorn's parser alone stops there and drops it).
    targets = [LOOKUP, "/api/v1/nodes", "/api/v1/components/NoSuchComponent/node", LOOKUP]
    want = [comparable(alone(srv, "GET", t)) for t in targets]
    assert [w[0] for w in want] == [200, 200, 404, 200]
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(request("GET", LOOKUP, "Connection: Upgrade", f"Upgrade: {upgrade}")
                     + b"".join(request("GET", t) for t in targets[1:]))
        got = answers(sock, ["GET"] * len(targets))
    assert [comparable(a) for a in got] == want


def test_head_304_http10_and_connection_close_are_answered_as_uvicorn_would(srv: ServerProcess) -> None:
    status, headers, body = alone(srv, "GET", LOOKUP)
    etag = dict(headers)[b"etag"].decode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(request("HEAD", LOOKUP))
        head = answers(sock, ["HEAD"])[0]
        assert comparable(head) == (200, comparable((status, headers, body))[1], b"")
        assert dict(head[1])[b"content-length"] == str(len(body)).encode()
        sock.sendall(request("GET", LOOKUP, f"If-None-Match: {etag}"))
        not_modified = answers(sock, ["GET"])[0]
        assert not_modified[0] == 304 and not_modified[2] == b""
        assert dict(not_modified[1])[b"etag"] == etag.encode()
    for raw in (request("GET", LOOKUP, version="1.0"), request("GET", LOOKUP, "Connection: close")):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(raw)
            got = answers(sock, ["GET"])[0]
            assert comparable(got) == comparable((status, headers, body))
            assert (b"connection", b"close") in got[1]
            assert closed(sock)


def test_a_request_with_a_body_or_behind_a_long_poll_waits_its_turn(srv: ServerProcess) -> None:
    want = comparable(alone(srv, "GET", LOOKUP))
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        # A GET with a body: the app reads it (it is never taken for the next request's head).
        sock.sendall(request("GET", LOOKUP, "Content-Length: 5", body=b"hello") + request("GET", LOOKUP))
        assert [comparable(a) for a in answers(sock, ["GET", "GET"])] == [want, want]
    rev = revision(srv)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        # A lookup pipelined behind a long-poll is answered after the long-poll's answer.
        sock.sendall(request("GET", f"/api/v1/changes?since={rev}&wait=1") + request("GET", LOOKUP))
        poll, lookup = answers(sock, ["GET", "GET"])
        assert poll[0] == 200 and b'"changes":[]' in poll[2].replace(b" ", b"")
        assert comparable(lookup) == want


def test_hot_reads_answered_here_are_counted_in_the_metrics(srv: ServerProcess) -> None:
    def lookups() -> float:
        text = srv.get("/metrics").text
        line = ('droq_registry_http_requests_total{method="GET",'
                'route="/api/v1/components/{component_class}/node",status="200"} ')
        return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), 0.0)

    before = lookups()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(request("GET", LOOKUP) * 7)
        assert [a[0] for a in answers(sock, ["GET"] * 7)] == [200] * 7
    assert wait_until(lambda: lookups() == before + 7, timeout=5)


def test_with_the_access_log_on_hot_reads_are_logged(tmp_path: Path, server: Callable[..., Any]) -> None:
    srv = on_real_nodes(server, tmp_path, RELOAD="false", LOG_LEVEL="info")
    status, _, body = alone(srv, "GET", LOOKUP)
    assert status == 200 and body
    assert wait_until(lambda: f'"GET {LOOKUP} HTTP/1.1" 200' in srv.log(), timeout=5)


def test_a_client_that_pipelines_and_does_not_read_costs_only_its_own_bounded_buffer(srv: ServerProcess) -> None:
    want = comparable(alone(srv, "GET", LOOKUP))
    n = 2000  # ~70 MB of answers if each were written as its request arrives
    before = memory_mib(srv.pid, "VmHWM")
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(request("GET", LOOKUP) * n)  # ~160 KB: the kernel's buffers take it all
        # Meanwhile the server answers everyone else at once.
        assert srv.get("/health").status_code == 200
        assert comparable(alone(srv, "GET", LOOKUP)) == want
        got = answers(sock, ["GET"] * n, timeout=30)
    assert all(comparable(a) == want for a in got)  # nothing lost, in order
    grown = memory_mib(srv.pid, "VmHWM") - before
    assert grown < 25, f"the server's peak memory grew by {grown:.1f} MiB for one client's unread answers"


# -- the two ways in give the same answer, whatever the request ----------------------------

SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", max_size=12) | st.sampled_from(
    ["TextInputComponent", "lfx-runtime-executor-node", "%C3%A9", "%2F", "%00", "%", "..", "a%20b"]
)
TARGETS = st.builds(
    lambda prefix, middle, suffix: prefix + middle + suffix,
    st.sampled_from(["/api/v1/components/", "/api/v1/nodes/", "/api/v1/nodes", "/api/v1/", "/health", "//api/v1/nodes/"]),
    SEGMENT,
    st.sampled_from(["/node", "", "/nodes", "?status=all", "?status=active", "?status=", "?x=1", "/node?", "/node/"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "HEAD"]), target=TARGETS,
       inm=st.sampled_from([None, "*", '"nope"', "W/\"x\", \"y\""]))
def test_any_request_answered_here_is_the_answer_the_app_gives(
    srv: ServerProcess, method: str, target: str, inm: str | None
) -> None:
    headers = [] if inm is None else [f"If-None-Match: {inm}"]
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        # The first as a client sends it; the second with an (empty) body, which only the app reads.
        sock.sendall(request(method, target, *headers) + request(method, target, *headers, "Content-Length: 0"))
        here, app = answers(sock, [method, method])
    assert comparable(here) == comparable(app), (method, target, inm)
    assert here[0] < 500


def test_hundreds_of_pipelined_requests_of_every_kind_are_all_answered_in_order(srv: ServerProcess) -> None:
    # Far past the depth at which the rest of a read waits unparsed (protocol.PIPELINE_DEPTH):
    # app routes (queued behind one another) and hot reads, in one write.
    kinds = [("/health", 200), (LOOKUP, 200), ("/api/v1/components/Nope/node", 404), (DETAIL, 200),
             ("/api/v1/sources", 200), ("/api/v1/nodes", 200)]
    sequence = [kinds[i % len(kinds)] for i in range(600)]
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"".join(request("GET", target) for target, _ in sequence))
        got = answers(sock, ["GET"] * len(sequence), timeout=60)
        assert [status for status, _, _ in got] == [status for _, status in sequence]
        assert all(b'"revision"' in body for (target, _), (_, _, body) in zip(sequence, got) if target == "/health")
        sock.sendall(request("GET", LOOKUP))  # and the connection goes on
        assert answers(sock, ["GET"])[0][0] == 200
