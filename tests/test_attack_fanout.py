"""Attacks on the answers the fan-out writes itself, from outside, on real server processes.

A commit's fan-out writes each event stream's frames and each long-poll's whole answer
straight to the connection (`changes.Pushed`, `changes.Polled`, `protocol.LimitedProtocol`),
past uvicorn's request cycle. These tests speak raw HTTP/1.1 to it the ways clients do:
requests pipelined behind a follower (a follower behind a follower, too), `HEAD`,
`Expect: 100-continue`, a chunked body on a GET, a stale If-None-Match, a token, clients
that reset in the middle of a fan-out, and SIGTERM arriving with a commit. What they
check is what a client and an operator see: whole answers in order, connections kept
alive or closed as HTTP says, the connection cap still making room, /metrics counts and
access log lines for the answers the fan-out wrote, and a clean exit.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.files import node_doc, write_json
from support.http import closed_for, metric
from support.polling import wait_until
from support.server import DEADLINE, ServerProcess, commit_one, text_env
from support.sockets import (
    Conn,
    Stream,
    closed_by_server,
    connect,
    connect_narrow,
    following,
    probe,
    read_head,
    read_response,
    records,
    without_date,
)
from test_fanout import LAGGING, commit_many

FOLLOWING = "droq_registry_connections_following"
TOKEN = "s3cret-token-for-the-fan-out"


def _requests(srv: ServerProcess, route: str, status: int, method: str = "GET") -> float:
    """/metrics' count of requests answered on `route` with `status`."""
    sample = f'droq_registry_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    lines = [line for line in srv.get("/metrics").text.splitlines() if line.startswith(sample + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _no_5xx(srv: ServerProcess) -> list[str]:
    """Every /metrics request sample with a 5xx status but /ready's 503 (not loaded yet, as
    the fixture's wait for readiness may have seen): none, on this service."""
    return [line for line in srv.get("/metrics").text.splitlines()
            if line.startswith("droq_registry_http_requests_total") and re.search(r'status="5[0-9][0-9]"', line)
            and 'route="/ready",status="503"' not in line]


@pytest.fixture
def plain(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    return server(text_env(real_assets, tmp_path / "registry.db"), tmp_path / "server.log")


# --- a follower pipelined behind a follower ----------------------------------------------

CAP = 2


@pytest.fixture
def capped(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    env = text_env(real_assets, tmp_path / "registry.db", REGISTRY_MAX_CONNECTIONS=str(CAP))
    return server(env, tmp_path / "server.log")


def test_a_long_poll_pipelined_behind_an_event_stream_is_released_with_it_at_the_cap(
    capped: ServerProcess, sockets: list[socket.socket]
) -> None:
    """The stream is the request in progress; the long-poll waits behind it. At the cap the
    gate releases that connection: the stream ends whole, the long-poll then answers at
    once with what there is, the connection is closed, and the probe gets in."""
    srv = capped
    revision = srv.get("/ready").json()["revision"]
    srv.http.close()  # its kept-alive connection would count as one of the two
    meter = connect(srv.port)
    both = Conn(srv.port)
    sockets += [meter, both.sock]
    both.ask("/api/v1/events", f"/api/v1/changes?since={revision}&wait=60")
    assert both.head().split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    wait_until(lambda: following(meter) == 1, DEADLINE)
    meter.close()
    other = Stream(srv.port)  # the cap is full of followers now
    sockets.append(other.sock)

    assert probe(srv.port) == 200
    stream = Stream.on(both.sock, both.buf)
    stream.read_to_end()  # released: a complete response, not cut
    both.buf = stream.rest
    head, body = both.answer()
    assert (head.split(b"\r\n")[0], orjson.loads(body)) == (
        b"HTTP/1.1 200 OK", {"revision": revision, "changes": []},
    )
    assert closed_by_server(both.sock)
    srv.http = httpx.Client(base_url=srv.url, timeout=10)
    assert closed_for(srv, "follower_released") == 1


def test_a_long_poll_pipelined_behind_a_long_poll_the_fan_out_answered_is_released_at_the_cap(
    capped: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    """The first long-poll is answered by a commit's fan-out; the second, pipelined behind
    it, is then the follower in progress, and the gate can still release it."""
    srv = capped
    revision = srv.get("/ready").json()["revision"]
    both = Conn(srv.port)
    sockets.append(both.sock)
    both.ask(f"/api/v1/changes?since={revision}&wait=60", f"/api/v1/changes?since={revision + 1}&wait=60")
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    write_json(real_assets / "first.json", node_doc("first"))
    head, body = both.answer()
    assert (head.split(b"\r\n")[0], _changes(body)) == (b"HTTP/1.1 200 OK", (revision + 1, [("added", "first")]))
    srv.http.close()
    meter = connect(srv.port)
    sockets.append(meter)
    wait_until(lambda: following(meter) == 1, DEADLINE)  # the second long-poll waits now
    meter.close()
    other = Stream(srv.port)
    sockets.append(other.sock)

    assert probe(srv.port) == 200
    head, body = both.answer()
    assert (head.split(b"\r\n")[0], orjson.loads(body)) == (
        b"HTTP/1.1 200 OK", {"revision": revision + 1, "changes": []},
    )
    assert closed_by_server(both.sock)
    srv.http = httpx.Client(base_url=srv.url, timeout=10)
    assert closed_for(srv, "follower_released") == 1


def test_an_event_stream_pipelined_behind_a_long_poll_streams_after_it_and_is_released_at_the_cap(
    capped: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = capped
    revision = srv.get("/ready").json()["revision"]
    both = Conn(srv.port)
    sockets.append(both.sock)
    both.ask(f"/api/v1/changes?since={revision}&wait=60", f"/api/v1/events?since={revision}")
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    write_json(real_assets / "first.json", node_doc("first"))
    head, body = both.answer()
    assert (head.split(b"\r\n")[0], _changes(body)) == (b"HTTP/1.1 200 OK", (revision + 1, [("added", "first")]))
    head = both.head()
    assert (head.split(b"\r\n")[0], b"content-type: text/event-stream; charset=utf-8" in head.split(b"\r\n")) == (
        b"HTTP/1.1 200 OK", True,
    )
    stream = Stream.on(both.sock, both.buf)
    stream.read_until_id(revision + 1)
    write_json(real_assets / "second.json", node_doc("second"))
    stream.read_until_id(revision + 2)
    assert records(stream.events()) == srv.get(f"/api/v1/changes?since={revision}").json()["changes"]
    srv.http.close()
    meter = connect(srv.port)
    sockets.append(meter)
    wait_until(lambda: following(meter) == 1, DEADLINE)
    meter.close()
    other = Stream(srv.port)
    sockets.append(other.sock)

    assert probe(srv.port) == 200
    stream.read_to_end()
    assert closed_by_server(both.sock)
    srv.http = httpx.Client(base_url=srv.url, timeout=10)
    assert closed_for(srv, "follower_released") == 1


# --- HTTP/1.1 the ways clients speak it, answered by the fan-out ------------------------


def _changes(body: bytes) -> tuple[int, list[tuple[str, str]]]:
    doc = orjson.loads(body)
    return doc["revision"], [(c["kind"], c["node_id"]) for c in doc["changes"]]


def test_a_head_long_poll_gets_the_get_answers_head_without_a_body_and_the_next_request_is_answered(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.sock.sendall(f"HEAD /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    revision = commit_one(srv, real_assets, "headed")
    head = conn.head()
    conn.ask("/health")
    health_head, health_body = conn.answer()
    get_head, _ = _asked(srv, f"/api/v1/changes?since={start}", sockets).answer()
    assert without_date(head) == without_date(get_head)
    assert (health_head.split(b"\r\n")[0], orjson.loads(health_body)["revision"]) == (b"HTTP/1.1 200 OK", revision)


def _asked(srv: ServerProcess, path: str, sockets: list[socket.socket]) -> Conn:
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.ask(path)
    return conn


def test_a_long_poll_with_expect_100_continue_and_a_body_gets_one_final_answer_then_its_next_request_is_read(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    """No `100 Continue` goes out (the body is never asked for), before or after the answer,
    and the body the client sent anyway is not read as its next request."""
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.sock.sendall(
        f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        "Content-Length: 5\r\n\r\nhello".encode()
    )
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    revision = commit_one(srv, real_assets, "expecting")
    head, body = conn.answer()
    assert (head.split(b"\r\n")[0], _changes(body)) == (b"HTTP/1.1 200 OK", (revision, [("added", "expecting")]))
    conn.ask("/health")
    head, body = conn.answer()
    assert (head.split(b"\r\n")[0], orjson.loads(body)["revision"]) == (b"HTTP/1.1 200 OK", revision)
    assert conn.buf == b""


def test_a_long_poll_with_a_chunked_body_still_coming_is_answered_and_the_request_after_the_body_is_read(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.sock.sendall(
        f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n".encode()
    )
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    revision = commit_one(srv, real_assets, "chunky")
    head, body = conn.answer()  # the body has not ended yet
    assert (head.split(b"\r\n")[0], _changes(body)) == (b"HTTP/1.1 200 OK", (revision, [("added", "chunky")]))
    conn.sock.sendall(b"3\r\nabc\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = conn.answer()
    assert (head.split(b"\r\n")[0], orjson.loads(body)["revision"]) == (b"HTTP/1.1 200 OK", revision)


def test_a_long_poll_with_a_stale_if_none_match_gets_the_new_answer_and_with_the_current_one_a_304(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    stale = srv.get(f"/api/v1/changes?since={start}").headers["etag"]
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.sock.sendall(
        f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\nIf-None-Match: {stale}\r\n\r\n".encode()
    )
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    revision = commit_one(srv, real_assets, "tagged")
    head, body = conn.answer()
    plain_answer = srv.get(f"/api/v1/changes?since={start}")
    assert (head.split(b"\r\n")[0], body) == (b"HTTP/1.1 200 OK", plain_answer.content)
    assert _changes(body) == (revision, [("added", "tagged")])
    # The answer the client now has, asked again: 304 at once, as a plain request gets.
    conn.sock.sendall(
        f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\n"
        f"If-None-Match: {plain_answer.headers['etag']}\r\n\r\n".encode()
    )
    status, headers, rest = read_head(conn.sock)
    assert (status, headers["etag"], rest) == (304, plain_answer.headers["etag"], b"")


def test_a_long_poll_saying_connection_close_is_answered_by_the_fan_out_with_connection_close_and_closed(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    closing, kept = Conn(srv.port), Conn(srv.port)
    sockets += [closing.sock, kept.sock]
    closing.sock.sendall(
        f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    kept.ask(f"/api/v1/changes?since={start}&wait=30")
    wait_until(lambda: metric(srv, FOLLOWING) == 2, DEADLINE)
    revision = commit_one(srv, real_assets, "closing")
    (head, body), (kept_head, kept_body) = closing.answer(), kept.answer()
    assert (head.split(b"\r\n")[-1], _changes(body)) == (b"connection: close", (revision, [("added", "closing")]))
    assert closing.closed()
    assert (without_date(kept_head) + [b"connection: close"], kept_body) == (without_date(head), body)
    kept.ask("/health")  # kept alive: the next request is answered on it
    assert kept.answer()[0].split(b"\r\n")[0] == b"HTTP/1.1 200 OK"


@pytest.fixture
def secured(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    srv = server(text_env(real_assets, tmp_path / "registry.db", REGISTRY_API_TOKEN=TOKEN), tmp_path / "server.log")
    srv.http.headers["authorization"] = f"Bearer {TOKEN}"
    return srv


def test_with_a_token_a_long_poll_without_it_is_refused_401_at_once_and_only_the_authorized_ones_are_held(
    secured: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = secured
    start = int(srv.get("/health").json()["revision"])
    ask = f"GET /api/v1/changes?since={start}&wait=30 HTTP/1.1\r\nHost: x\r\n"
    bare, wrong = connect(srv.port), connect(srv.port)
    piped = Conn(srv.port)
    sockets += [bare, wrong, piped.sock]
    bare.sendall(f"{ask}\r\n".encode())
    wrong.sendall(f"{ask}Authorization: Bearer not-{TOKEN}\r\n\r\n".encode())
    for sock in (bare, wrong):  # answered before anything commits
        answer = read_response(sock)
        assert answer is not None and answer[0] == 401
    # An authorized long-poll with an unauthorized one pipelined behind it.
    piped.sock.sendall(f"{ask}Authorization: Bearer {TOKEN}\r\n\r\n{ask}\r\n".encode())
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    revision = commit_one(srv, real_assets, "secured")
    (first, body), (second, _) = piped.answer(), piped.answer()
    assert (first.split(b"\r\n")[0], _changes(body)) == (b"HTTP/1.1 200 OK", (revision, [("added", "secured")]))
    assert second.split(b"\r\n")[0] == b"HTTP/1.1 401 Unauthorized"
    assert (_requests(srv, "/api/v1/changes", 200), _no_5xx(srv)) == (1, [])


# --- what an operator sees of the fan-out's answers ---------------------------------------

POLLS = 30


def test_every_long_poll_the_fan_out_answers_is_counted_in_metrics_and_has_its_access_log_line(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    before = _requests(srv, "/api/v1/changes", 200)
    polls = [Conn(srv.port) for _ in range(POLLS)]
    old = Conn(srv.port)
    sockets += [c.sock for c in (*polls, old)]
    path = f"/api/v1/changes?since={start}&wait=30"
    for conn in polls:
        conn.ask(path)
    old.ask(path, version="1.0")
    wait_until(lambda: metric(srv, FOLLOWING) == POLLS + 1, DEADLINE)
    revision = commit_one(srv, real_assets, "counted")
    for conn in (*polls, old):
        _, body = conn.answer()
        assert _changes(body) == (revision, [("added", "counted")])
    assert _requests(srv, "/api/v1/changes", 200) - before == POLLS + 1
    lines = srv.log().splitlines()
    assert len([line for line in lines if line.endswith(f'"GET {path} HTTP/1.1" 200')]) == POLLS
    assert len([line for line in lines if line.endswith(f'"GET {path} HTTP/1.0" 200')]) == 1
    assert _no_5xx(srv) == []


FOLLOWERS = 150


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, whatever the server still writes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_reset_in_the_middle_of_a_fan_out_cost_the_others_nothing(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    canary = Conn(srv.port)  # subscribed first, so answered first
    canary.ask(f"/api/v1/changes?since={start}&wait=30")
    sockets.append(canary.sock)
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    polls = [Conn(srv.port) for _ in range(FOLLOWERS)]
    for conn in polls:
        conn.ask(f"/api/v1/changes?since={start}&wait=30")
    streams = [Stream(srv.port) for _ in range(FOLLOWERS)]
    sockets += [c.sock for c in polls] + [s.sock for s in streams]
    wait_until(lambda: metric(srv, FOLLOWING) == 2 * FOLLOWERS + 1, DEADLINE)
    write_json(real_assets / "reset.json", node_doc("reset"))
    _, body = canary.answer()  # the fan-out has begun: every other one resets now
    revision, added = _changes(body)
    assert added == [("added", "reset")]
    for conn in polls[::2]:
        _reset(conn.sock)
    for stream in streams[::2]:
        _reset(stream.sock)
    for conn in polls[1::2]:
        assert _changes(conn.answer()[1]) == (revision, added)
    log = srv.get(f"/api/v1/changes?since={start}").json()["changes"]
    for stream in streams[1::2]:
        stream.read_until_id(revision)
        assert records(stream.events()) == log
    # The streams left go on: the next commit reaches each of them.
    second = commit_one(srv, real_assets, "after-reset")
    log = srv.get(f"/api/v1/changes?since={start}").json()["changes"]
    for stream in streams[1::2]:
        stream.read_until_id(second)
        assert records(stream.events()) == log
    assert (metric(srv, FOLLOWING), _no_5xx(srv)) == (FOLLOWERS // 2, [])


def test_a_long_poll_whose_client_half_closes_is_released_and_its_connection_closed(
    plain: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    """uvicorn takes the end of a client's sending as the client gone: its follower is
    released then (nothing of it is left in the feed or the gate), and the fan-out of the
    next commit has nothing to write to it."""
    srv = plain
    start = int(srv.get("/health").json()["revision"])
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.ask(f"/api/v1/changes?since={start}&wait=30")
    wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
    conn.sock.shutdown(socket.SHUT_WR)
    assert closed_by_server(conn.sock)
    wait_until(lambda: metric(srv, FOLLOWING) == 0, DEADLINE)
    commit_one(srv, real_assets, "after-half-close")
    assert (metric(srv, "droq_registry_connections_open"), _no_5xx(srv)) == (1, [])  # srv.http's own


# --- SIGTERM with a commit's fan-out under way -------------------------------------------

STOPPING = 400


def test_sigterm_as_a_fan_out_begins_answers_every_long_poll_whole_ends_every_stream_whole_and_exits_0(
    tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]
) -> None:
    srv = server(text_env(real_assets, tmp_path / "registry.db"), tmp_path / "server.log")
    start = int(srv.get("/health").json()["revision"])
    with ExitStack() as stack:
        canary = Conn(srv.port)
        stack.enter_context(canary.sock)
        canary.ask(f"/api/v1/changes?since={start}&wait=60")
        wait_until(lambda: metric(srv, FOLLOWING) == 1, DEADLINE)
        polls = [Conn(srv.port) for _ in range(STOPPING)]
        for conn in polls:
            stack.enter_context(conn.sock)
            conn.ask(f"/api/v1/changes?since={start}&wait=60")
        streams = [Stream(srv.port) for _ in range(STOPPING)]
        for stream in streams:
            stack.enter_context(stream.sock)
        wait_until(lambda: metric(srv, FOLLOWING) == 2 * STOPPING + 1, DEADLINE)
        srv.http.close()
        write_json(real_assets / "stopping.json", node_doc("stopping"))
        _, body = canary.answer()
        # The fan-out that answered the canary goes on (or has just ended: when uvicorn sees
        # the signal relative to its turns is not ours to choose; what must hold either way
        # is below).
        srv.proc.send_signal(signal.SIGTERM)
        change = _changes(body)
        assert change == (start + 1, [("added", "stopping")])
        seen: dict[Any, int] = {}
        for conn in polls:
            head, body = conn.answer()
            revision, added = _changes(body)
            key = (head.split(b"\r\n")[0], (revision, tuple(added)))
            seen[key] = seen.get(key, 0) + 1
            assert conn.closed()
        # each answered whole: with the change, or (released by the stop first) with what it had
        assert set(seen) <= {(b"HTTP/1.1 200 OK", (start + 1, (("added", "stopping"),))),
                             (b"HTTP/1.1 200 OK", (start, ()))}, seen
        assert sum(seen.values()) == STOPPING
        for stream in streams:
            stream.read_to_end()  # a complete chunked body
            assert [(r["revision"], r["kind"], r["node_id"]) for r in records(stream.events())] in (
                [], [(start + 1, "added", "stopping")],
            )
        assert srv.proc.wait(DEADLINE) == 0


# --- the bounded buffer with many stuck readers -------------------------------------------

STUCK = 200
STUCK_BOUND = 8192
#: What the kernel may queue on a socket beyond its send buffer: one more segment as it
#: builds them (64 KiB on loopback), and its bookkeeping.
ONE_SEGMENT = 64 * 1024 + 4096


def _queued(port: int, peers: set[int]) -> dict[int, int]:
    """The bytes the kernel holds unsent on each server-side socket of `port` whose client
    is one of `peers` (ss's skmem `w`, its write queue), by client port."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[int, int] = {}
    for entry in re.finditer(r":(\d+)\s+\S+:(\d+)\s+skmem:\(([^)]*)\)", out):
        peer, skmem = int(entry.group(2)), entry.group(3)
        if peer in peers:
            found[peer] = int(re.search(r"(?:^|,)w(\d+)", skmem).group(1))  # type: ignore[union-attr]
    return found


def test_two_hundred_stuck_readers_are_each_cut_at_their_bound_and_none_holds_more_than_it(
    tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]
) -> None:
    """Each stuck reader (a tiny receive window, never read) is cut once what it has not
    taken would pass REGISTRY_FOLLOWER_BUFFER_BYTES, counting what the kernel holds for it
    too (its send buffer is that bound, not the up to 4 MiB Linux grows it to by itself); a
    reader as slow (the same window) that reads on is not cut and gets every event."""
    env = text_env(real_assets, tmp_path / "registry.db", REGISTRY_FOLLOWER_BUFFER_BYTES=str(STUCK_BOUND))
    srv = server(env, tmp_path / "server.log")
    start = int(srv.get("/health").json()["revision"])
    with ExitStack() as stack:

        def narrow() -> socket.socket:
            sock = stack.enter_context(connect_narrow(srv.port))
            sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock

        # The reader has the same narrow window as the stuck ones: slow, but it reads on.
        reader_sock = narrow()
        status, _, rest = read_head(reader_sock)
        assert status == 200
        reader = Stream.on(reader_sock, rest)
        stuck = [narrow() for _ in range(STUCK)]
        peers = {sock.getsockname()[1] for sock in stuck}
        wait_until(lambda: metric(srv, FOLLOWING) == STUCK + 1, DEADLINE)
        most = 0
        revision = start
        for round_ in range(80):
            revision = commit_many(srv, real_assets, round_)
            reader.read_until_id(revision)
            most = max([most, *_queued(srv.port, peers).values()])
            if metric(srv, LAGGING) >= STUCK:
                break
        log = srv.get(f"/api/v1/changes?since={start}").json()["changes"]
        assert (metric(srv, LAGGING), metric(srv, FOLLOWING), records(reader.events())) == (STUCK, 1, log)
        assert most <= 2 * STUCK_BOUND + ONE_SEGMENT, most
