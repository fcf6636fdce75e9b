"""Attacks on the hot reads the protocol answers itself (`direct.DirectReads.answer_here`, a part of `protocol.LimitedProtocol`).

Two real server processes on the same node files: `direct` answers the hot reads in the
protocol; `ref` has uvicorn's access log on, so the protocol declines every request and the
app answers all of them (its own fast path or Starlette). The same raw bytes go to both, over
raw sockets, and what comes back is compared byte for byte, with only what differs between
two processes masked: the date and the database's epoch. Then the limits, the metrics,
the token, shutdown and a new revision, each through a real process.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import string
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.files import copy_real_nodes, save_bytes
from support.http import revision
from support.polling import wait_until
from support.server import ServerProcess, memory_mib, on_real_nodes, server_env
from support.sockets import closed_by_server, connect, connect_narrow

LOOKUP = "/api/v1/components/TextInputComponent/node"
DETAIL = "/api/v1/nodes/lfx-runtime-executor-node"
MISSING = "/api/v1/components/NoSuchComponent/node"
TOKEN = "s3cret-token"
#: Ends every exchange: a hot read (answered here by `direct`) after which the server closes.
LAST = b"GET " + MISSING.encode() + b" HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n"


def start(tmp: Path, name: str, **env: str) -> ServerProcess:
    assets = tmp / name / "nodes"
    copy_real_nodes(assets)
    # One hash seed: Starlette's `Allow` lists a set of methods, in the order of its hashes.
    # Short head and keep-alive timeouts: an exchange the server keeps open ends soon.
    env = {"RELOAD": "false", "PYTHONHASHSEED": "0", "REGISTRY_HEAD_TIMEOUT_SECONDS": "1",
           "REGISTRY_KEEPALIVE_TIMEOUT_SECONDS": "2", **env}
    srv = ServerProcess(server_env(assets, tmp / name / "registry.db", **env), tmp / f"{name}.log")
    srv.wait_ready()
    return srv


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("pair")
    direct = start(tmp, "dir", LOG_LEVEL="warning")  # names of one length: paths in bodies mask alike
    ref = start(tmp, "ref", LOG_LEVEL="info")  # the access log on: the protocol answers nothing
    yield direct, ref
    stopped = [srv.stop() for srv in (direct, ref)]
    assert stopped == [0, 0]
    for srv in (direct, ref):
        assert "Traceback" not in srv.log(), srv.log()


_own: dict[int, tuple[bytes, ...]] = {}


def own(srv: ServerProcess) -> tuple[bytes, ...]:
    """What only this process says: its epoch, and the etag of its change log (its records
    carry the time they were made)."""
    if srv.port not in _own:
        token = {"Authorization": f"Bearer {TOKEN}"}  # harmless where no token is set
        changes = srv.get("/api/v1/changes?since=0", headers=token).headers["etag"].encode()
        _own[srv.port] = (srv.get("/health").json()["epoch"].encode(), changes)
    return _own[srv.port]


def exchange(srv: ServerProcess, *pieces: bytes, timeout: float = 10.0) -> bytes:
    """Send `pieces` (each its own write, TCP_NODELAY) on one connection; all the server
    sends until it closes, with the date and the epoch masked."""
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        for piece in pieces:
            sock.sendall(piece)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return mask(got, own(srv))


def mask(raw: bytes, own: tuple[bytes, ...]) -> bytes:
    """Without what two processes on the same files say differently (`own`, the date, the
    time of a change (same length), the folder's name (`dir` or `ref`))."""
    raw = re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: -", raw)
    for i, value in enumerate(own):
        raw = raw.replace(value, b"<own%d>" % i)
    raw = re.sub(rb'"at":"[^"]*"', b'"at":"-"', raw)
    return re.sub(rb"/(dir|ref)/", b"/-/", raw)


def head(method: str, target: str, *headers: str, version: str = "1.1") -> bytes:
    return ("\r\n".join([f"{method} {target} HTTP/{version}", "Host: registry", *headers]) + "\r\n\r\n").encode()


def statuses(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def same(pair: tuple[ServerProcess, ServerProcess], *pieces: bytes) -> bytes:
    """What both servers send for `pieces`, asserted equal; no 5xx."""
    direct, ref = pair
    here, app = exchange(direct, *pieces), exchange(ref, *pieces)
    assert here == app, (pieces, here[:3000], app[:3000])
    assert all(s < 500 for s in statuses(here)), here[:2000]
    return here


# -- byte for byte, whatever the request --------------------------------------------------

ODD = [
    head("GET", LOOKUP),
    head("HEAD", LOOKUP),
    head("GET", DETAIL),
    head("GET", "/api/v1/nodes"),
    head("GET", "/api/v1/nodes?status=all"),
    head("GET", "/api/v1/nodes?status=all&status=active"),
    head("GET", "/api/v1/nodes?"),
    head("GET", "/api/v1/nodes#frag"),
    head("GET", "http://registry/api/v1/nodes"),
    head("GET", "http://other:1/api/v1/components/TextInputComponent/node?"),
    head("GET", "http://user:pw@registry/api/v1/nodes"),
    head("GET", "/api/v1/components/Text%49nputComponent/node"),
    head("GET", "/api/v1/components/TextInputComponent%2Fnode"),
    head("GET", "/api/v1/components/TextInputComponent/node%3Fx"),
    head("GET", "/api/v1/nodes/%2e%2e"),
    head("GET", "/api/v1/nodes/lfx-runtime-executor-node/"),
    head("GET", "/api/v1/nodes/%ff%fe"),
    head("GET", "/api/v1/nodes/%C3%A9"),
    head("GET", "/api/v1/nodes/a%0d%0aSet-Cookie:%20x"),
    head("GET", "/api/v1/nodes/%00"),
    head("GET", "/api/v1/nodes/" + "x" * 5000),
    head("GET", "*"),
    head("OPTIONS", LOOKUP),
    head("POST", LOOKUP),
    head("PUT", LOOKUP, "Content-Length: 0"),
    head("DELETE", DETAIL),
    head("PATCH", DETAIL),
    head("TRACE", DETAIL),
    head("get", LOOKUP),
    head("CONNECT", "registry:80"),
    head("GET", LOOKUP, "If-None-Match: *"),
    head("GET", LOOKUP, 'If-None-Match: "nope"', "If-None-Match: *"),
    head("GET", LOOKUP, "If-None-Match: *", 'If-None-Match: "nope"'),
    head("HEAD", LOOKUP, "If-None-Match: *"),
    head("GET", LOOKUP, "IF-NONE-MATCH: *"),
    head("GET", LOOKUP, "If-None-Match:    *   "),
    head("GET", LOOKUP, "If-None-Match: " + "W/\"x\", " * 2000 + "*"),
    head("GET", LOOKUP, "If-None-Match: \"a\",\r\n *"),  # obs-fold
    head("GET", LOOKUP, "X-Long: " + "y" * 40000),
    head("GET", LOOKUP, "Authorization: Bearer x", "Authorization: Basic eA=="),
    head("GET", LOOKUP, version="1.0"),
    head("GET", LOOKUP, "Connection: keep-alive", version="1.0"),
    head("HEAD", LOOKUP, "Connection: keep-alive", version="1.0"),
    head("GET", LOOKUP, "Connection: close"),
    head("GET", LOOKUP, "Connection: Close"),
    head("GET", LOOKUP, "Connection: keep-alive, close"),
    head("GET", LOOKUP, "Connection: keep-alive", "Connection: close"),
    head("GET", LOOKUP, "Connection: upgrade", "Upgrade: websocket"),
    head("GET", LOOKUP, "Connection: upgrade", "Upgrade: h2c"),
    head("GET", LOOKUP, "Connection: Upgrade, close", "Upgrade: foo"),
    head("GET", LOOKUP, "Upgrade: foo"),
    head("GET", LOOKUP, "Connection: upgrade"),
    head("GET", LOOKUP, "Expect: 100-continue"),
    head("GET", LOOKUP, "Expect: 100-continue", "Content-Length: 3") + b"abc",
    head("GET", LOOKUP, "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n",
    head("GET", LOOKUP, "Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n",
    head("GET", LOOKUP, "Content-Length: 0", "Content-Length: 0"),
    head("GET", LOOKUP, "Content-Length: 1", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    head("GET", LOOKUP, version="0.9"),
    head("GET", LOOKUP, version="2.0"),
    head("GET", LOOKUP, version="1.2"),
    b"GET " + LOOKUP.encode() + b" HTTP/1.1\r\n\r\n",  # no Host
    b"GET " + LOOKUP.encode() + b" HTTP/1.1\nHost: registry\n\n",  # bare LF
    b"\r\n\r\nGET " + LOOKUP.encode() + b" HTTP/1.1\r\nHost: r\r\n\r\n",  # empty lines first
    b"GET  " + LOOKUP.encode() + b"  HTTP/1.1\r\nHost: r\r\n\r\n",
    b"GET " + LOOKUP.encode() + b" HTTP/1.1\r\nHost: r\r\nX: a\x00b\r\n\r\n",
    b"GET " + LOOKUP.encode() + b" HTTP/1.1\r\nHost: r\r\nX : a\r\n\r\n",
]


@pytest.mark.parametrize("raw", ODD, ids=range(len(ODD)))
def test_an_odd_request_gets_the_bytes_the_app_sends(pair: tuple[ServerProcess, ServerProcess], raw: bytes) -> None:
    same(pair, raw, LAST)  # and, when the connection is kept, a hot read after it


@pytest.mark.parametrize("first", [
    head("GET", LOOKUP, "Connection: close"),
    head("GET", LOOKUP, version="1.0"),
    head("HEAD", "/api/v1/nodes", "Connection: close"),
    head("GET", MISSING, "Connection: close"),
], ids=["close", "http10", "head-close", "404-close"])
@pytest.mark.parametrize("behind", [head("GET", LOOKUP), head("GET", "/api/v1/nodes"), head("GET", "/health"),
                                    head("GET", LOOKUP, version="1.0")], ids=["lookup", "list", "health", "http10"])
def test_nothing_is_answered_after_an_answer_that_closes(
    pair: tuple[ServerProcess, ServerProcess], first: bytes, behind: bytes
) -> None:
    got = same(pair, first + behind * 3 + LAST)  # one write: the server reads them together
    assert len(statuses(got)) == 1, got[:2000]


# -- the change log: answered or held by the protocol, the same bytes -----------------------

#: Both servers are at revision 1 (no reload, the same files): `since=1` with a wait is held
#: (by the protocol in `direct`, by a task in `ref`), then answered when its wait runs out.
HELD = "/api/v1/changes?since=1&wait=0.2"
CHANGE_LOG = [
    *(head("GET", "/api/v1/changes?" + query) for query in (
        "since=1&wait=0.2", "since=0&wait=0.2", "since=2&wait=0.2", "since=x&wait=0.2", "since=1&wait=61",
        "since=1&wait=-1", "since=1&wait=nan", "since=1&wait=inf", "since=1&wait=", "since=1&wait=0",
        "since=1&epoch=other&wait=0.2", "since=1&epoch=bad!&wait=0.2", "since=1&since=0&wait=0.2",
        "wait=0.2", "since=1&wait=0.2&wait=5", "since=%31&wait=0.2", "since=1&wait=2e-1", "since=1&wait=0.2&x",
        "since=0", "since=", "since=1&epoch=",
    )),
    head("GET", HELD, version="1.0"),
    head("GET", HELD, "Connection: keep-alive", version="1.0"),
    head("GET", HELD, "Connection: close"),
    head("GET", HELD, "If-None-Match: *"),
    head("GET", HELD, 'If-None-Match: "stale"'),
    head("HEAD", HELD),
    head("GET", HELD, "Content-Length: 0"),
    head("GET", HELD, "Authorization: Bearer x"),
    head("GET", HELD) + head("GET", LOOKUP),  # a hot read pipelined behind a held long-poll
    head("GET", LOOKUP) + head("GET", HELD),  # a held long-poll behind a hot read, in one write
    head("GET", HELD) + head("GET", HELD),  # one held after the other
]


@pytest.mark.parametrize("raw", CHANGE_LOG, ids=range(len(CHANGE_LOG)))
def test_a_change_log_request_gets_the_bytes_the_app_sends_whether_answered_or_held(
    pair: tuple[ServerProcess, ServerProcess], raw: bytes
) -> None:
    same(pair, raw, LAST)


_QUERY_VALUES = st.one_of(st.sampled_from(["0", "1", "2", "", "01", "1.0", "-1", "x", "%31", "+1", "1 "]),
                          st.text(string.printable, max_size=6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(st.sampled_from(["since", "epoch", "wait", "x", "Wait"]), _QUERY_VALUES),
                      max_size=4),
       wait=st.sampled_from(["0", "0.1", "0.15", "", "-0", "1e-1", "nan", "x", "61"]))
def test_any_long_poll_query_gets_the_bytes_the_app_sends(
    pair: tuple[ServerProcess, ServerProcess], query: list[tuple[str, str]], wait: str
) -> None:
    # Only the one `wait` drawn last: a drawn `wait` of seconds would hold the example that long.
    pairs = [(name, value) for name, value in query if name != "wait"] + [("wait", wait)]
    target = "/api/v1/changes?" + urllib.parse.urlencode(pairs)
    same(pair, head("GET", target), LAST)


# -- pipelined mixes, split anywhere --------------------------------------------------------

#: Requests of every kind a client mixes on one connection; each answers at once (a long-poll
#: behind revision 0 has its changes; a search, the list of sources and a 405 are Starlette's).
MIX = [
    head("GET", LOOKUP), head("HEAD", LOOKUP), head("GET", DETAIL), head("GET", "/api/v1/nodes"),
    head("GET", "/api/v1/nodes?status=all"), head("GET", MISSING), head("GET", "/api/v1/nodes/nope"),
    head("GET", LOOKUP, "If-None-Match: *"), head("GET", LOOKUP, "Content-Length: 0"),
    head("GET", "/api/v1/changes?since=0&wait=5"), head("GET", "/api/v1/changes?since=0"),
    head("GET", "/ready"), head("GET", DETAIL + "/components"), head("GET", "/api/v1/search?q=text"),
    head("GET", "/api/v1/components/TextInputComponent/nodes"), head("POST", LOOKUP, "Content-Length: 2") + b"{}",
    head("GET", "/api/v1/shared-classes"), head("GET", "/nope"), head("GET", LOOKUP, "Expect: 100-continue"),
    head("GET", "http://registry" + DETAIL),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.sampled_from(range(len(MIX))), min_size=1, max_size=12), data=st.data())
def test_a_pipelined_mix_split_anywhere_gets_the_apps_answers_in_order(
    pair: tuple[ServerProcess, ServerProcess], picks: list[int], data: st.DataObject
) -> None:
    raw = b"".join(MIX[i] for i in picks) + LAST
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=4)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    got = same(pair, *pieces)
    assert len(statuses(got)) == len(picks) + 1  # none lost, none doubled


def test_every_byte_boundary_of_a_pipelined_pair(pair: tuple[ServerProcess, ServerProcess]) -> None:
    raw = head("GET", LOOKUP, "If-None-Match: *") + head("GET", "/api/v1/changes?since=0") + LAST
    want = exchange(pair[1], raw)
    assert statuses(want) == [304, 200, 404]
    for cut in range(1, len(raw)):
        assert exchange(pair[0], raw[:cut], raw[cut:]) == want, cut


# -- the token ----------------------------------------------------------------------------



@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("guarded")
    direct = start(tmp, "dir", LOG_LEVEL="warning", REGISTRY_API_TOKEN=TOKEN)
    ref = start(tmp, "ref", LOG_LEVEL="info", REGISTRY_API_TOKEN=TOKEN)
    yield direct, ref
    stopped = [srv.stop() for srv in (direct, ref)]
    assert stopped == [0, 0]
    for srv in (direct, ref):
        assert "Traceback" not in srv.log(), srv.log()


WRONG = [
    [], ["Authorization: "], ["Authorization: Bearer"], ["Authorization: Bearer "], [f"Authorization: {TOKEN}"],
    [f"Authorization: Basic {TOKEN}"], [f"Authorization: Bearer {TOKEN}x"], [f"Authorization: Bearer {TOKEN[:-1]}"],
    [f"Authorization: Bearer {TOKEN.upper()}"], [f"Authorization: Bearer\t{TOKEN}"], [f"Authorization: Bearer{TOKEN}"],
    ["Authorization: Bearer nope", f"Authorization: Bearer {TOKEN}"],  # the first one counts, as in TokenAuth
    [f"X-Authorization: Bearer {TOKEN}"], [f"Authorization-X: Bearer {TOKEN}"], [f"Proxy-Authorization: Bearer {TOKEN}"],
    [f"Cookie: token={TOKEN}"], [f"Authorization: Bearer {TOKEN}\x00"], [f"Authorization: Bearer %73{TOKEN[1:]}"],
    [f"Authorization: Bearer {TOKEN[:5]}", f" {TOKEN[5:]}"],  # obs-fold
    ["Authorization: Bearer " + "x" * 60000],
]
RIGHT = [
    [f"Authorization: Bearer {TOKEN}"], [f"authorization: bearer {TOKEN}"], [f"AUTHORIZATION: BEARER {TOKEN}"],
    [f"Authorization: Bearer   {TOKEN}   "], [f"Authorization: Bearer {TOKEN}", "Authorization: Bearer nope"],
]
GUARDED = [LOOKUP, DETAIL, "/api/v1/nodes", "/api/v1/nodes?status=all", MISSING, "/api/v1/nodes/nope",
           "/api/v1/components/Text%49nputComponent/node", "http://registry/api/v1/nodes",
           f"http://{TOKEN}@registry{LOOKUP}", f"{LOOKUP}?access_token={TOKEN}", f"{LOOKUP}?token={TOKEN}"]


@pytest.mark.parametrize("headers", WRONG, ids=range(len(WRONG)))
def test_no_hot_read_is_answered_without_the_right_token(
    guarded: tuple[ServerProcess, ServerProcess], headers: list[str]
) -> None:
    for method in ("GET", "HEAD"):
        raw = b"".join(head(method, target, *headers) for target in GUARDED)
        got = same(guarded, raw, LAST)
        # A head the parser refuses is answered 400 by uvicorn, before any route.
        assert set(statuses(got)) <= {401, 400}, got[:2000]
        if method == "GET":
            assert b"node_id" not in got and b"components" not in got


@pytest.mark.parametrize("headers", RIGHT, ids=range(len(RIGHT)))
def test_the_right_token_gets_the_apps_answers(guarded: tuple[ServerProcess, ServerProcess], headers: list[str]) -> None:
    for method in ("GET", "HEAD"):
        raw = b"".join(head(method, target, *headers) for target in GUARDED)
        got = same(guarded, raw, head("GET", MISSING, *headers, "Connection: close"))
        assert 401 not in statuses(got) and 200 in statuses(got), got[:2000]


# -- metrics --------------------------------------------------------------------------------

def samples(srv: ServerProcess, prefix: str) -> dict[str, float]:
    text = srv.get("/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix)}


def requests_by_label(srv: ServerProcess) -> dict[str, float]:
    return samples(srv, "droq_registry_http_requests_total{")


def duration_counts(srv: ServerProcess) -> dict[str, float]:
    return samples(srv, "droq_registry_http_request_duration_seconds_count{")


def grown(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_every_answered_request_is_counted_once_with_its_route_method_status_and_a_duration(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    direct, _ = pair
    lookup, detail, nodes = ("/api/v1/components/{component_class}/node", "/api/v1/nodes/{node_id}",
                             "/api/v1/nodes")
    raw = (head("GET", LOOKUP) * 3 + head("HEAD", LOOKUP) + head("GET", LOOKUP, "If-None-Match: *")
           + head("GET", MISSING) + head("GET", DETAIL) + head("HEAD", "/api/v1/nodes/nope")
           + head("GET", "/api/v1/nodes?status=all") + head("GET", LOOKUP, "Content-Length: 0")
           + head("GET", LOOKUP, "Connection: close") + head("GET", LOOKUP) * 5)  # never answered: after the close
    own(direct)  # its own requests, before the counts are taken
    before, seconds = requests_by_label(direct), duration_counts(direct)
    got = exchange(direct, raw)
    assert statuses(got) == [200, 200, 200, 200, 304, 404, 200, 404, 200, 200, 200]

    def label(route: str, method: str, status: int) -> str:
        return f'droq_registry_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'

    want = {label(lookup, "GET", 200): 5.0, label(lookup, "HEAD", 200): 1.0, label(lookup, "GET", 304): 1.0,
            label(lookup, "GET", 404): 1.0, label(detail, "GET", 200): 1.0, label(detail, "HEAD", 404): 1.0,
            label(nodes, "GET", 200): 1.0}
    # /metrics itself is counted too, once per scrape (after the scrape answers).
    metrics = label("/metrics", "GET", 200)
    assert wait_until(lambda: {k: v for k, v in grown(requests_by_label(direct), before).items() if k != metrics}
                      == want, timeout=5)
    durations = {k: v for k, v in grown(duration_counts(direct), seconds).items() if "/metrics" not in k}
    assert durations == {f'droq_registry_http_request_duration_seconds_count{{route="{r}"}}': n
                         for r, n in ((lookup, 8.0), (detail, 2.0), (nodes, 1.0))}


# -- limits ---------------------------------------------------------------------------------

@pytest.fixture
def limited(tmp_path: Path, server: Callable[..., ServerProcess]) -> ServerProcess:
    assets = tmp_path / "nodes"
    copy_real_nodes(assets)
    env = server_env(assets, tmp_path / "registry.db", RELOAD="false", LOG_LEVEL="warning",
                     REGISTRY_HEAD_TIMEOUT_SECONDS="1", REGISTRY_KEEPALIVE_TIMEOUT_SECONDS="1",
                     REGISTRY_SEND_TIMEOUT_SECONDS="1", REGISTRY_MAX_HEAD_BYTES="4096", REGISTRY_MAX_CONNECTIONS="6")
    return server(env, tmp_path / "server.log")


def read_answers(sock: socket.socket, n: int) -> bytes:
    """Read until `n` whole answers to GETs (each with a content-length) have come."""
    got = b""
    while True:
        pos, count = 0, 0
        while True:
            end = got.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            length = re.search(rb"content-length: (\d+)", got[pos:end])
            size = int(length.group(1)) if length and not got[pos:end].startswith(b"HTTP/1.1 304") else 0
            if end + 4 + size > len(got):
                break
            pos, count = end + 4 + size, count + 1
            if count == n:
                return got
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {count} answers")
        got += chunk


def test_a_kept_alive_connection_is_closed_after_the_keepalive_timeout_after_a_direct_answer(
    limited: ServerProcess,
) -> None:
    with connect(limited.port) as sock:
        sock.sendall(head("GET", LOOKUP))
        assert statuses(read_answers(sock, 1)) == [200]
        assert closed_by_server(sock)  # before the deadline: the keep-alive timeout is 1 s


def test_the_head_timeout_and_size_hold_on_a_connection_after_direct_answers(limited: ServerProcess) -> None:
    with connect(limited.port) as sock:
        sock.sendall(head("GET", LOOKUP) + b"GET " + LOOKUP.encode())  # a next head begun, never ended
        assert statuses(read_answers(sock, 1)) == [200]
        assert closed_by_server(sock)  # by the keep-alive timeout: the head began in the answered request's read
    with connect(limited.port) as sock:
        sock.sendall(head("GET", LOOKUP))
        assert statuses(read_answers(sock, 1)) == [200]
        sock.sendall(b"GET " + LOOKUP.encode())  # begun in a read of its own, never ended
        assert closed_by_server(sock)
    with connect(limited.port) as sock:
        sock.sendall(head("GET", LOOKUP) * 2 + head("GET", LOOKUP, "X-Big: " + "y" * 9000))
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert statuses(got) == [200, 200, 431]
    assert wait_until(lambda: samples(limited, "droq_registry_connections_closed_total{").get(
        'droq_registry_connections_closed_total{reason="head_too_large"}') == 1.0)
    assert samples(limited, "droq_registry_connections_closed_total{").get(
        'droq_registry_connections_closed_total{reason="head_timeout"}') == 1.0


def test_a_pipelining_client_that_never_reads_is_cut_by_the_send_timeout(limited: ServerProcess) -> None:
    with connect_narrow(limited.port, 4096) as sock:
        sock.sendall(head("GET", LOOKUP) * 300)  # ~10 MB of answers
        assert limited.get("/health").status_code == 200
        reason = 'droq_registry_connections_closed_total{reason="send_stalled"}'
        assert wait_until(lambda: samples(limited, "droq_registry_connections_closed_total{").get(reason) == 1.0)
        assert closed_by_server(sock)


def test_at_the_connection_cap_an_idle_connection_after_a_direct_answer_makes_room(limited: ServerProcess) -> None:
    socks = [connect(limited.port) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(head("GET", LOOKUP))
            assert statuses(read_answers(sock, 1)) == [200]
        # Every one of the six is idle after its direct answer: a new client gets in.
        with connect(limited.port) as sock:
            sock.sendall(head("GET", LOOKUP, "Connection: close"))
            assert statuses(read_answers(sock, 1)) == [200]
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in limited.log()


# -- a new revision, shutdown, many hostile connections -----------------------------------

def test_after_a_node_file_changes_a_direct_answer_never_serves_the_old_snapshot(
    tmp_path: Path, server: Callable[..., ServerProcess],
) -> None:
    srv = on_real_nodes(server, tmp_path, RELOAD="true", LOG_LEVEL="warning")
    path = tmp_path / "nodes" / "lfx-runtime-executor-node.json"
    node = orjson.loads(path.read_bytes())
    with connect(srv.port) as sock:  # one kept-alive connection, asking again and again
        for i in range(5):
            before = revision(srv)
            waiting = connect(srv.port)  # and one whose hot reads wait behind a long-poll the commit answers
            waiting.sendall(head("GET", f"/api/v1/changes?since={before}&wait=20") + head("GET", DETAIL))
            node["description"] = f"edition {i}"
            save_bytes(path, orjson.dumps(node))
            with waiting:
                got = read_answers(waiting, 2)
            assert statuses(got) == [200, 200] and got.count(f'"description":"edition {i}"'.encode()) == 1
            assert wait_until(lambda: revision(srv) > before, timeout=15)  # noqa: B023
            now = revision(srv)
            sock.sendall(head("GET", DETAIL) + head("GET", "/api/v1/nodes") + head("GET", LOOKUP))
            got = read_answers(sock, 3)
            assert statuses(got) == [200, 200, 200]
            revisions = [int(r) for r in re.findall(rb"x-registry-revision: (\d+)", got)]
            assert all(r >= now for r in revisions), (now, revisions)
            assert f'"description":"edition {i}"'.encode() in got
    assert "Traceback" not in srv.log()


def test_sigterm_while_direct_answers_are_in_flight_exits_0_without_a_5xx_or_a_traceback(
    tmp_path: Path, server: Callable[..., ServerProcess],
) -> None:
    srv = on_real_nodes(server, tmp_path, RELOAD="false", LOG_LEVEL="warning")
    seen: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            got = b""
            try:
                with connect(srv.port) as sock:
                    sock.sendall((head("GET", LOOKUP) + head("HEAD", DETAIL) + head("GET", "/api/v1/nodes")) * 10)
                    while chunk := sock.recv(65536):
                        got += chunk
                        if got.count(b"HTTP/1.1 ") >= 30 and got.endswith(b"}"):
                            break
            except OSError:  # refused, reset: the server is going
                pass
            seen.extend(statuses(got))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(seen) > 300, timeout=20)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert seen and all(s < 500 for s in seen), sorted(set(seen))
    assert "Traceback" not in srv.log() and "Exception" not in srv.log(), srv.log()


def test_thousands_of_clients_that_pipeline_never_read_half_close_or_reset_cost_health_nothing(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    direct, _ = pair
    want = exchange(direct, head("GET", LOOKUP, "Connection: close"))
    socks: list[socket.socket] = []
    try:
        for i in range(1500):
            sock = connect_narrow(direct.port, 4096)
            socks.append(sock)
            sock.sendall(head("GET", LOOKUP) * 20 + head("GET", "/api/v1/nodes") * 5)
            if i % 3 == 1:
                sock.shutdown(socket.SHUT_WR)  # half-closed: it reads nothing either
            if i % 3 == 2:  # reset mid-answer: RST, with answers unsent
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            if i % 100 == 0:
                assert direct.get("/health").status_code == 200
        assert direct.get("/health").status_code == 200
        assert exchange(direct, head("GET", LOOKUP, "Connection: close")) == want
    finally:
        for sock in socks:
            if sock.fileno() >= 0:  # still open: reset it too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    assert direct.get("/health").status_code == 200
    log = direct.log()
    assert "Traceback" not in log and "Exception" not in log and "socket.send() raised" not in log, log[-3000:]


def test_a_half_closed_client_gets_every_direct_answer_it_asked_for(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """Where the protocol answers more than the app: uvicorn closes a connection at its
    client's EOF, so the app answers only the requests it had begun by then (a known limit,
    docs/operations.md); the protocol has answered every hot read of that read already."""
    direct, ref = pair
    raw = head("GET", LOOKUP) + head("HEAD", DETAIL) + head("GET", MISSING)

    def half_closed(srv: ServerProcess) -> bytes:
        with connect(srv.port) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            return mask(got, own(srv))

    here, app = half_closed(direct), half_closed(ref)
    assert statuses(here) == [200, 200, 404]
    assert here.startswith(app)  # the app answers some of them: as many as it began before the EOF was read


@pytest.mark.parametrize("which", [0, 1], ids=["direct", "app"])
def test_a_client_that_goes_while_the_app_waits_to_send_behind_direct_answers_leaves_no_traceback(
    pair: tuple[ServerProcess, ServerProcess], which: int
) -> None:
    """Direct answers fill the socket until writing pauses; the next request goes to the
    app, whose `send` waits for the client to drain, and those behind it queue. The client
    goes: the request the app was answering must be taken as disconnected, not written to
    a closed transport (uvloop raises, uvicorn logs "Exception in ASGI application")."""
    direct = pair[which]
    gauge = "droq_registry_connections_open"
    baseline = samples(direct, gauge)[gauge]
    lookups = 'droq_registry_http_requests_total{method="GET",route="/api/v1/components/{component_class}/node",status="200"}'
    for reset in (False, True):
        before = requests_by_label(direct).get(lookups, 0.0)
        sock = connect_narrow(direct.port, 4096)
        sock.sendall(head("GET", LOOKUP) * 300)  # ~10 MB of answers: more than the kernel buffers hold
        assert wait_until(lambda: requests_by_label(direct).get(lookups, 0.0) >= before + 2)  # noqa: B023
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert wait_until(lambda: samples(direct, gauge)[gauge] == baseline)
    log = direct.log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_hundreds_pipelined_to_a_slow_reader_come_in_order_each_counted_once(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """Answered here until the client's socket is full, then by the app (queued by uvicorn
    behind the one waiting to send), then here again once it drains: one order, one count."""
    direct, ref = pair
    unit = head("GET", LOOKUP) + head("GET", LOOKUP, "If-None-Match: *") + head("GET", MISSING) + head("HEAD", DETAIL)
    raw = unit * 100 + LAST
    own(direct)
    before = requests_by_label(direct)
    with connect_narrow(direct.port, 4096) as sock:
        sock.sendall(raw)
        got = b""
        while chunk := sock.recv(4096):  # slowly: a small window, a small read at a time
            got += chunk
    here = mask(got, own(direct))
    assert here == exchange(ref, raw)
    assert statuses(here) == [200, 304, 404, 200] * 100 + [404]

    def label(route: str, method: str, status: int) -> str:
        return f'droq_registry_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'

    lookup, detail = "/api/v1/components/{component_class}/node", "/api/v1/nodes/{node_id}"
    want = {label(lookup, "GET", 200): 100.0, label(lookup, "GET", 304): 100.0, label(lookup, "GET", 404): 101.0,
            label(detail, "HEAD", 200): 100.0}
    metrics = label("/metrics", "GET", 200)
    assert wait_until(lambda: {k: v for k, v in grown(requests_by_label(direct), before).items() if k != metrics}
                      == want, timeout=5)


def test_hot_reads_pipelined_around_a_waiting_long_poll_get_the_apps_answers(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    rev = revision(pair[0])
    assert revision(pair[1]) == rev
    poll = head("GET", f"/api/v1/changes?since={rev}&wait=1")
    got = same(pair, head("GET", LOOKUP) + poll + head("GET", LOOKUP) + head("HEAD", DETAIL), LAST)
    assert statuses(got) == [200, 200, 200, 200, 404]


def test_an_event_stream_pipelined_behind_direct_answers_starts_after_them(pair: tuple[ServerProcess, ServerProcess]) -> None:
    direct, ref = pair
    raw = head("GET", LOOKUP) + head("GET", MISSING) + head("GET", "/api/v1/events")
    for srv in (direct, ref):
        with connect(srv.port) as sock:
            sock.sendall(raw)
            got = b""
            while b"text/event-stream" not in got:
                chunk = sock.recv(65536)
                assert chunk, got
                got += chunk
            assert statuses(got) == [200, 404, 200]


def push_until_refused(sock: socket.socket, data: bytes) -> int:
    """Send `data` again and again until the server takes no more for a quarter of a second; bytes sent."""
    sock.setblocking(False)
    sent = 0
    while select.select([], [sock], [], 0.25)[1]:
        try:
            sent += sock.send(data)
        except BlockingIOError:
            continue
    return sent


def test_ten_clients_that_pipeline_tiny_requests_and_never_read_cost_a_bounded_buffer_each(
    tmp_path: Path, server: Callable[..., ServerProcess],
) -> None:
    srv = on_real_nodes(server, tmp_path, RELOAD="false", LOG_LEVEL="warning")
    before = memory_mib(srv.pid)
    socks = [connect_narrow(srv.port, 4096) for _ in range(10)]
    try:
        tiny = b"GET /api/v1/nodes/nope HTTP/1.1\r\n\r\n" * 2000
        for sock in socks:
            push_until_refused(sock, tiny)
        assert srv.get("/health").status_code == 200
        grown = memory_mib(srv.pid) - before
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    assert grown < 25, f"ten clients that never read cost the server {grown:.1f} MiB"


def test_followers_pipelined_behind_a_direct_answer_outlive_the_keepalive_timeout(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    """A direct answer completes while its read is still being parsed, and arms the
    keep-alive timer (2 s here); a follower behind it, started in the same read, must not be
    cut by that timer: a long-poll waiting 3 s gets its answer, and an event stream opened
    beside it is still open when that answer comes. (The app's answers arm no timer while
    a request is pipelined behind them: the reference passes.)"""
    for srv in (pair[1], pair[0]):
        rev = revision(srv)
        with connect(srv.port) as stream, connect(srv.port) as poll:
            stream.sendall(head("GET", LOOKUP) + head("GET", "/api/v1/events"))
            got = b""
            while b"text/event-stream" not in got:
                chunk = stream.recv(65536)
                assert chunk, got
                got += chunk
            poll.sendall(head("GET", LOOKUP) + head("GET", f"/api/v1/changes?since={rev}&wait=3"))
            got = b""
            try:
                while not got.endswith(b'"changes":[]}') and (chunk := poll.recv(65536)):
                    got += chunk
            except ConnectionResetError:
                pass
            assert statuses(got) == [200, 200] and got.endswith(b'"changes":[]}'), (srv is pair[0], got[-300:])
            stream.setblocking(False)
            try:
                cut = stream.recv(65536) == b""
            except BlockingIOError:
                cut = False  # open, with nothing to read
            except ConnectionResetError:
                cut = True
            assert not cut, "the stream was closed" if srv is pair[0] else "the app's stream was closed"
