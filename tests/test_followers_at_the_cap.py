"""Followers at the connection cap: the oldest is released, so a probe always gets in.

Long-polls and event streams hold their connections for a minute or for ever. At the cap,
with no idle connection left to close, the gate releases the oldest follower: a long-poll
answers 200 at once with what it has, an event stream ends as a complete response (its
client resumes with Last-Event-ID and misses nothing), and its connection, idle then, is
closed to make room. Real server processes and raw sockets; which follower is the oldest
is made certain by waiting, after each one, for the gate to count it
(`droq_registry_connections_following`), and what was released is read from the metrics.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from droq_registry.connections import Gate
from support.files import node_doc, write_json
from support.http import closed_for, metric
from support.polling import wait_until
from support.server import DEADLINE, ServerProcess, text_env
from support.sockets import Stream, closed_by_server, connect, following, probe, read_response, records

#: The connection cap of these tests (REGISTRY_MAX_CONNECTIONS).
CAP = 20


@pytest.fixture
def capped(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    """A service watching the real node files, with at most `CAP` connections open."""
    env = text_env(real_assets, tmp_path / "registry.db", REGISTRY_MAX_CONNECTIONS=str(CAP))
    return server(env, tmp_path / "server.log")


def epoch_of(srv: ServerProcess) -> str:
    """The server's epoch, as its /health says."""
    return str(httpx.get(f"{srv.url}/health", timeout=10).json()["epoch"])


def long_poll(port: int, since: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(f"GET /api/v1/changes?since={since}&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_at_the_cap_the_oldest_long_poll_answers_200_with_what_it_has_and_a_probe_gets_in(
    capped: ServerProcess, real_assets: Path,
) -> None:
    srv = capped
    revision = srv.get("/ready").json()["revision"]
    srv.http.close()  # its kept-alive connection would count as one of the twenty
    with ExitStack() as sockets:
        meter = sockets.enter_context(connect(srv.port))
        polls = []
        for count in range(1, CAP):  # nineteen long-polls, each counted before the next is sent
            polls.append(sockets.enter_context(long_poll(srv.port, revision)))
            wait_until(lambda: following(meter) == count, DEADLINE)  # noqa: B023 - called at once
        meter.close()
        last = Stream(srv.port)  # the twentieth follower: the cap is full of followers
        sockets.enter_context(last.sock)

        assert probe(srv.port) == 200  # within the probe's 1 s timeout
        oldest = read_response(polls[0])
        assert oldest is not None and (oldest[0], orjson.loads(oldest[2])) == (
            200, {"revision": revision, "changes": []}
        )
        assert closed_by_server(polls[0])  # idle once answered, then closed for the probe

        # The others were not released: the next commit answers them, with that change.
        write_json(real_assets / "after-release.json", node_doc("after-release"))
        answers = [read_response(sock) for sock in polls[1:]]
        last.read_until_id(revision + 1)
        srv.http = httpx.Client(base_url=srv.url, timeout=10)
        expected = srv.get("/api/v1/changes", params={"since": revision}).json()
        assert expected["revision"] == revision + 1
        assert [(a[0], orjson.loads(a[2])) if a else None for a in answers] == [(200, expected)] * (CAP - 2)
        assert records(last.events()) == expected["changes"]
    assert closed_for(srv, "follower_released") == 1


def test_at_the_cap_the_oldest_event_stream_ends_whole_and_resuming_it_misses_no_change(
    capped: ServerProcess, real_assets: Path,
) -> None:
    srv = capped
    start = srv.get("/ready").json()["revision"]
    srv.http.close()
    with ExitStack() as sockets:
        streams = [Stream(srv.port) for _ in range(CAP)]  # each head read before the next is sent
        for stream in streams:
            sockets.enter_context(stream.sock)
        write_json(real_assets / "before-release.json", node_doc("before-release"))
        streams[0].read_until_id(start + 1)

        assert probe(srv.port) == 200
        oldest = streams[0]
        oldest.read_to_end()  # a complete chunked body: the stream ended, it was not cut
        assert closed_by_server(oldest.sock)
        seen = oldest.events()
        last_id = [event["id"] for event in seen if "id" in event][-1]
        assert last_id == f"{epoch_of(srv)}:{start + 1}"
        for stream in streams[1:]:  # the others are still streaming (not released)
            stream.read_until_id(start + 1)
            assert not stream.ended
            stream.sock.close()

    # A change while the client is away, then it resumes from the id it last saw.
    srv.http = httpx.Client(base_url=srv.url, timeout=10)
    write_json(real_assets / "while-away.json", node_doc("while-away"))
    wait_until(lambda: srv.get("/ready").json()["revision"] == start + 2, DEADLINE)
    resumed = Stream(srv.port, last_event_id=last_id)
    with resumed.sock:
        resumed.read_until_id(start + 2)
    expected = srv.get("/api/v1/changes", params={"since": start}).json()
    assert expected["revision"] == start + 2
    assert records(seen) + records(resumed.events()) == expected["changes"]
    assert closed_for(srv, "follower_released") == 1


def test_with_room_at_the_cap_no_follower_is_released(
    capped: ServerProcess, real_assets: Path,
) -> None:
    srv = capped
    revision = srv.get("/ready").json()["revision"]
    with ExitStack() as sockets:
        polls = [sockets.enter_context(long_poll(srv.port, revision)) for _ in range(5)]
        streams = [Stream(srv.port) for _ in range(5)]
        for stream in streams:
            sockets.enter_context(stream.sock)
        wait_until(lambda: metric(srv, "droq_registry_connections_following") == 10, DEADLINE)
        assert [probe(srv.port) for _ in range(30)] == [200] * 30  # eleven connections at most
        write_json(real_assets / "with-room.json", node_doc("with-room"))
        answers = [read_response(sock) for sock in polls]
        for stream in streams:
            stream.read_until_id(revision + 1)
        expected = srv.get("/api/v1/changes", params={"since": revision}).json()
        assert expected["revision"] == revision + 1
        assert [(a[0], orjson.loads(a[2])) if a else None for a in answers] == [(200, expected)] * 5
        assert [records(stream.events()) for stream in streams] == [expected["changes"]] * 5
        assert [stream.ended for stream in streams] == [False] * 5
    assert closed_for(srv, "follower_released") == 0


# --- the gate alone: which follower, and how many ---------------------------------------------------


class FakeConnection:
    """What the gate sees of a connection: it records being released and evicted."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def evict(self) -> None:
        self.log.append(f"evict {self.name}")

    def release(self) -> None:
        self.log.append(f"release {self.name}")


def test_the_gate_releases_the_oldest_follower_one_at_a_time_and_closes_it_once_idle() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = Gate(3)
        busy, first, second = (FakeConnection(name, log) for name in ("busy", "first", "second"))
        for conn in (busy, first, second):
            gate.opened(conn)
            gate.busy(conn)
        gate.following(first)
        gate.following(second)
        room = asyncio.create_task(gate._room())
        await asyncio.sleep(0)  # it runs until it waits
        log.append(f"waiting {not room.done()}")
        gate.idle_again(first)  # the released one answered
        await asyncio.wait_for(room, DEADLINE)
        log.append(f"open {sorted(c.name for c in gate.open)}, following {[c.name for c in gate.followers]}")
        log.append(f"closed {gate.closed_by_us['follower_released']} released, {gate.closed_by_us['idle_evicted']} idle")
        return log

    assert asyncio.run(scenario()) == [
        "release first",
        "waiting True",
        "evict first",
        "open ['busy', 'second'], following ['second']",
        "closed 1 released, 1 idle",
    ]


def test_the_gate_holds_a_new_connection_while_every_open_one_is_busy_and_none_follows() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = Gate(2)
        first, second = FakeConnection("first", log), FakeConnection("second", log)
        for conn in (first, second):
            gate.opened(conn)
            gate.busy(conn)
        room = asyncio.create_task(gate._room())
        await asyncio.sleep(0)
        log.append(f"waiting {not room.done()}, held {gate.held}")
        gate.closed(second)  # its answer ended and the client closed
        await asyncio.wait_for(room, DEADLINE)
        log.append(f"open {[c.name for c in gate.open]}, released {gate.closed_by_us['follower_released']}")
        return log

    assert asyncio.run(scenario()) == ["waiting True, held 1", "open ['first'], released 0"]
