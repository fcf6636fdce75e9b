"""Many followers, one commit: encoded once for all of them, and a stuck one costs only itself.

The first tests drive the real app's follower routes (`RegistryApp`, the lifespan, the
watcher and a real file written) with many ASGI requests at once, counting the encodings
at their one seam (`answers.event_frames`, `answers.changes_body`). The stuck subscriber is
a raw socket with a tiny receive buffer that stops reading, on a real server process with
a small `REGISTRY_FOLLOWER_BUFFER_BYTES`; the others read every event, and the stuck one
resumes with the Last-Event-ID it had and misses nothing.
"""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry import answers
from droq_registry.release import Release
from support.files import node_doc, write_json
from support.http import metric
from support.polling import wait_until
from support.server import DEADLINE, ServerProcess, commit_one, text_env
from support.sockets import Conn, Stream, connect, connect_narrow, records, without_date

FOLLOWERS = 300


def _scope(path: str, query: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": [],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }


def _follow_many(client: TestClient, assets: Path, path: str, query: bytes, monkeypatch: pytest.MonkeyPatch,
                 encoder: str) -> tuple[list[int], list[list[dict[str, Any]]], int, str]:
    """FOLLOWERS requests of `path?query` held at once on the app, one file written, and
    the messages each sent until it had the change; returns (calls of `encoder` before
    the write and in all, the messages, the revision and epoch before)."""
    app: Any = client.app
    state = app.state
    start = state.registry.revision
    epoch = state.registry.snapshot.epoch
    calls = 0
    calls_before = -1
    real = getattr(answers, encoder)

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(answers, encoder, counted)
    sent: list[list[dict[str, Any]]] = [[] for _ in range(FOLLOWERS)]

    async def main() -> None:
        nonlocal calls_before
        gone = anyio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def one(i: int) -> None:
            async def send(message: dict[str, Any]) -> None:
                sent[i].append(message)
                if b'"revision":%d,' % (start + 1) in message.get("body", b""):
                    raise _Had()

            try:
                await app(_scope(path, query), receive, send)
            except* _Had:  # through the follower's own task group (no server release here)
                pass

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for i in range(FOLLOWERS):
                    group.start_soon(one, i)
                while state.feed.waiting < FOLLOWERS:
                    await anyio.sleep(0.01)
                calls_before = calls
                await anyio.to_thread.run_sync(write_json, assets / "new.json", node_doc("new"))
                while state.registry.revision == start:
                    await anyio.sleep(0.01)
            gone.set()

    assert client.portal is not None
    client.portal.call(main)
    return [calls_before, calls], sent, start, epoch


class _Had(Exception):
    """The follower had the change: the test stops reading it."""


def test_one_commit_is_encoded_once_for_every_event_stream_and_the_same_bytes_go_to_each(
    assets: Path, client_for: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(assets, reload=True)
    calls, sent, start, epoch = _follow_many(client, assets, "/api/v1/events", b"", monkeypatch, "event_frames")
    frames = [messages[-1]["body"] for messages in sent]
    # Before: the (empty) frames after the revision they all started from, once; then the
    # commit's, once.
    assert calls == [1, 2]
    assert all(body is frames[0] for body in frames)  # the very same bytes object
    text = frames[0].decode().replace("\r\n", "\n")
    event = dict(line.split(": ", 1) for line in text.strip().split("\n"))
    assert (event["id"], event["event"]) == (f"{epoch}:{start + 1}", "change")
    assert {k: v for k, v in orjson.loads(event["data"]).items() if k != "at"} == {
        "revision": start + 1, "kind": "added", "node_id": "new", "source": "new.json",
    }


def test_one_commit_is_encoded_once_for_every_long_poll_and_the_same_answer_goes_to_each(
    assets: Path, client_for: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(assets, reload=True)
    start = client.app.state.registry.revision  # type: ignore[attr-defined]
    query = b"since=%d&wait=30" % start
    calls, sent, start, _ = _follow_many(client, assets, "/api/v1/changes", query, monkeypatch, "changes_body")
    assert calls == [0, 1]
    bodies = [messages[-1]["body"] for messages in sent]
    assert all(body is bodies[0] for body in bodies)
    assert [messages[0]["status"] for messages in sent] == [200] * FOLLOWERS
    body = orjson.loads(bodies[0])
    assert (body["revision"], [(c["kind"], c["node_id"]) for c in body["changes"]]) == (
        start + 1, [("added", "new")],
    )


# --- a stuck subscriber --------------------------------------------------------------------

#: The stuck subscriber's bound (REGISTRY_FOLLOWER_BUFFER_BYTES): small, so that a few
#: commits of long records fill it beyond what the kernel's socket buffers hold.
BOUND = 8192
#: Files per commit, with long names: each commit's frames are some 150 KB. The kernel's
#: socket buffers on the loopback take a few MB of them (the send buffer grows with the
#: connection) before anything waits in the server's own buffer.
FILES = 400
LAGGING = 'droq_registry_connections_closed_total{reason="follower_lagging"}'


def commit_many(srv: ServerProcess, assets: Path, round_: int) -> int:
    """One commit of FILES new node files with long names; the revision it made."""
    before = int(srv.get("/health").json()["revision"])
    staging = assets.parent / f"staging-{round_}"
    staging.mkdir()
    for i in range(FILES):
        node_id = f"r{round_}-{i:03d}-" + "x" * 110
        write_json(staging / f"{node_id}.json", node_doc(node_id))
    for path in sorted(staging.iterdir()):
        path.rename(assets / path.name)
    wait_until(lambda: srv.get("/health").json()["nodes"] >= (round_ + 1) * FILES + 4, timeout=DEADLINE)
    after = int(srv.get("/health").json()["revision"])
    assert after > before
    return after


@pytest.fixture
def stuck_run(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> Iterator[dict[str, Any]]:
    """A server with three readers and one subscriber that reads the first commit and then
    stops reading; commits until the server has cut it, then one more; then the stuck one
    reads what it got and resumes with its Last-Event-ID."""
    env = text_env(real_assets, tmp_path / "registry.db", REGISTRY_FOLLOWER_BUFFER_BYTES=str(BOUND))
    srv = server(env, tmp_path / "server.log")
    start = int(srv.get("/health").json()["revision"])
    readers = [Stream(srv.port) for _ in range(3)]
    stuck = Stream.on(connect_narrow(srv.port))
    stuck.sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    stuck.head()
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 4, timeout=DEADLINE)

    first = commit_many(srv, real_assets, 0)
    stuck.read_until_id(first)  # it had the first commit whole; from here on it reads nothing
    for reader in readers:
        reader.read_until_id(first)
    revisions = [first]
    for round_ in range(1, 80):
        revisions.append(commit_many(srv, real_assets, round_))
        for reader in readers:  # the others read on, so only the stuck one lags
            reader.read_until_id(revisions[-1])
        if metric(srv, LAGGING) >= 1:
            break
    cut_at = revisions[-1]
    revisions.append(commit_many(srv, real_assets, len(revisions)))  # one more, after the cut
    for reader in readers:
        reader.read_until_id(revisions[-1])
    lagging = metric(srv, LAGGING)
    # The stuck client wakes up: it reads what reached it, until the server's cut.
    try:
        while True:
            stuck.read_chunk()
    except (EOFError, ConnectionError, ValueError):
        pass
    had = [e for e in stuck.events() if "id" in e or e.get("event") == "change"]
    last_id = [e["id"] for e in stuck.events() if "id" in e][-1]
    resumed = Stream(srv.port, last_event_id=last_id)
    resumed.read_until_id(revisions[-1])
    log = srv.get(f"/api/v1/changes?since={start}").json()["changes"]
    yield {
        "start": start, "revisions": revisions, "cut_at": cut_at, "lagging": lagging, "readers": readers,
        "had": had, "last_id": int(last_id.rpartition(":")[2]), "resumed": resumed, "log": log,
        "following": metric(srv, "droq_registry_connections_following"),
    }
    for stream in (*readers, stuck, resumed):
        stream.sock.close()


def test_a_stuck_subscriber_is_cut_at_its_bound_and_the_others_get_every_event(stuck_run: dict[str, Any]) -> None:
    run = stuck_run
    assert run["lagging"] == 1  # the stuck one, and no other
    assert run["cut_at"] < run["revisions"][-1]
    for reader in run["readers"]:
        assert records(reader.events()) == run["log"]  # every event, in order, nothing twice
    # what is left following: the three readers and the resumed stream
    assert run["following"] == 4


def test_resuming_after_being_cut_loses_nothing(stuck_run: dict[str, Any]) -> None:
    run = stuck_run
    had, resumed = records(run["had"]), records(run["resumed"].events())
    assert run["last_id"] >= run["revisions"][0]
    assert resumed[0]["revision"] == run["last_id"] + 1
    complete = [r for r in had if r["revision"] <= run["last_id"]]
    assert complete + resumed == run["log"]


# --- long-polls the fan-out answers itself ------------------------------------------------

POLLS = 40


@pytest.fixture
def following_server(tmp_path: Path, real_assets: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    return server(text_env(real_assets, tmp_path / "registry.db"), tmp_path / "server.log")


def test_long_polls_answered_by_the_fan_out_get_the_answer_a_plain_request_gets_and_their_next_request_is_read(
    following_server: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = following_server
    start = int(srv.get("/health").json()["revision"])
    polls = [Conn(srv.port) for _ in range(POLLS)]
    streams = [Stream(srv.port) for _ in range(POLLS)]
    sockets += [c.sock for c in polls] + [s.sock for s in streams]
    for conn in polls:
        conn.ask(f"/api/v1/changes?since={start}&wait=30")
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 2 * POLLS, timeout=DEADLINE)

    first = commit_one(srv, real_assets, "fanned-1")
    plain = Conn(srv.port)  # the same question without a wait: answered by its own task
    sockets.append(plain.sock)
    plain.ask(f"/api/v1/changes?since={start}")
    plain_head, plain_body = plain.answer()
    assert plain_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [(c["kind"], c["node_id"]) for c in orjson.loads(plain_body)["changes"]] == [("added", "fanned-1")]
    for conn in polls:
        head, body = conn.answer()
        assert (without_date(head), body) == (without_date(plain_head), plain_body)
    # Each asks again on the same connection: held during the fan-out, read after it.
    for conn in polls:
        conn.ask(f"/api/v1/changes?since={first}&wait=30")
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 2 * POLLS, timeout=DEADLINE)
    second = commit_one(srv, real_assets, "fanned-2")
    for conn in polls:
        _, body = conn.answer()
        assert (orjson.loads(body)["revision"], [c["node_id"] for c in orjson.loads(body)["changes"]]) == (
            second, ["fanned-2"],
        )
    log = srv.get(f"/api/v1/changes?since={start}").json()["changes"]
    for stream in streams:
        stream.read_until_id(second)
        assert records(stream.events()) == log


def test_a_long_poll_pipelined_with_a_lookup_gets_both_answers_in_order_after_the_commit(
    following_server: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = following_server
    start = int(srv.get("/health").json()["revision"])
    lookup = "/api/v1/components/TextInputComponent/node"
    expected = srv.get(lookup)
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.ask(f"/api/v1/changes?since={start}&wait=30", lookup)
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 1, timeout=DEADLINE)
    revision = commit_one(srv, real_assets, "piped")
    head, body = conn.answer()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (orjson.loads(body)["revision"], [c["node_id"] for c in orjson.loads(body)["changes"]]) == (
        revision, ["piped"],
    )
    head, body = conn.answer()
    assert (head.split(b"\r\n")[0], orjson.loads(body)) == (b"HTTP/1.1 200 OK", expected.json())


def test_an_http_1_0_long_poll_answered_by_the_fan_out_says_connection_close_and_is_closed(
    following_server: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = following_server
    start = int(srv.get("/health").json()["revision"])
    conn = Conn(srv.port)
    sockets.append(conn.sock)
    conn.ask(f"/api/v1/changes?since={start}&wait=30", version="1.0")
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 1, timeout=DEADLINE)
    revision = commit_one(srv, real_assets, "old-client")
    head, body = conn.answer()
    lines = head.split(b"\r\n")
    assert (lines[0], lines[-1], orjson.loads(body)["revision"]) == (
        b"HTTP/1.1 200 OK", b"connection: close", revision,
    )
    assert conn.closed()


def test_an_event_stream_with_a_request_pipelined_behind_it_still_gets_each_commit(
    following_server: ServerProcess, real_assets: Path, sockets: list[socket.socket]
) -> None:
    srv = following_server
    start = int(srv.get("/health").json()["revision"])
    sock = connect(srv.port)
    sockets.append(sock)
    sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    stream = Stream.on(sock)
    head = stream.head()
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    wait_until(lambda: metric(srv, "droq_registry_connections_following") == 1, timeout=DEADLINE)
    revision = commit_one(srv, real_assets, "behind")
    stream.read_until_id(revision)
    assert records(stream.events()) == srv.get(f"/api/v1/changes?since={start}").json()["changes"]


class _Outlet:
    """A connection's outlet as the app sees it (`release.Outlet`), holding its request's scope
    as the server's does (through the request's cycle): what it was asked to write."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.answers: list[tuple[int, bytes]] = []

    def room(self, size: int) -> bool:
        return True

    def push(self, body: bytes) -> bool:
        return False

    def answer(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> bool:
        self.answers.append((status, body))
        return True

    def hold(self) -> None:
        pass

    def resume(self) -> None:
        pass


def test_a_long_poll_the_feed_answers_is_answered_once_and_leaves_no_reference_cycle(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(assets, reload=True)
    app: Any = client.app
    start = app.state.registry.revision
    sent: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = _scope("/api/v1/changes", b"since=%d&wait=30" % start)
        outlet = _Outlet(scope)
        release = Release.attach(scope, outlet)
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                group.start_soon(app, scope, receive, send)
                while app.state.feed.waiting < 1:
                    await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(write_json, assets / "new.json", node_doc("new"))
        seen.update(answers=outlet.answers, outlet=release.outlet, ref=weakref.ref(outlet))

    assert client.portal is not None
    gc.disable()  # what frees the request's objects below is reference counting alone
    try:
        client.portal.call(main)
        gone = seen.pop("ref")() is None
    finally:
        gc.enable()
    plain = client.get(f"/api/v1/changes?since={start}")
    assert (seen, sent, gone) == ({"answers": [(200, plain.content)], "outlet": None}, [], True)
