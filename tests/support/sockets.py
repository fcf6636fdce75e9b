"""Raw sockets to a server process on 127.0.0.1: requests and answers as the bytes on the wire.

For tests that must see what a client sees with nothing normalised: heads that never end,
pipelined requests, followers that read slowly or not at all.

- `connect` (and `connect_narrow`, with a tiny receive window) opens a connection;
- `read_head`, `read_chunks`, `read_response` read one answer; `closed_by_server` reads
  until the server closes; `send_once` is one request on its own connection, read to its end;
- `Conn` is a kept-alive connection whose pipelined answers are read in order;
- `Stream` is an event stream read chunk by chunk, `records` the changes it carried;
- `probe` is what a liveness probe sees; `following` the gate's count of followers;
- `descriptors` lets this process open many sockets at once.
"""

from __future__ import annotations

import re
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from .server import DEADLINE


def connect(port: int) -> socket.socket:
    """A connection to the server on `port`, its reads bounded by `DEADLINE`."""
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def connect_narrow(port: int, window: int = 2048) -> socket.socket:
    """A connection with a receive buffer of `window` bytes (set before connecting, so the
    TCP window is that small): what the server writes to it waits in the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", port))
    return sock


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status and headers of a response, and what was read beyond them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed before a whole response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, rest


def _more(sock: socket.socket, data: bytes, size: int) -> bytes:
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed in the middle of a body: {data[-200:]!r}")
        data += chunk
    return data


def read_chunks(sock: socket.socket, rest: bytes) -> bytes:
    """A chunked body to its last chunk (`rest`: what came after the head)."""
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest = _more(sock, rest, len(rest) + 1)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        rest = _more(sock, rest, size + 2)
        body, rest = body + rest[:size], rest[size + 2 :]
        if size == 0:
            return body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """One HTTP/1.1 response (Content-Length or chunked); None if the server closed first."""
    try:
        status, headers, rest = read_head(sock)
    except EOFError:
        return None
    if "content-length" in headers:
        size = int(headers["content-length"])
        return status, headers, _more(sock, rest, size)[:size]
    return status, headers, read_chunks(sock, rest)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes this connection (reading until it does, or the deadline)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def send_once(port: int, request: bytes, timeout: float = 10) -> bytes:
    """`request` (which should say `Connection: close`) on a connection of its own; all
    the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


class Conn:
    """A kept-alive raw connection whose answers (with Content-Length) are read in order,
    so pipelined answers are told apart: each is its raw head and its body."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.buf = b""

    def more(self) -> None:
        """Read what the server sent next into `buf`."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed; unread: {self.buf[:200]!r}")
        self.buf += chunk

    def ask(self, *paths: str, version: str = "1.1") -> None:
        self.sock.sendall(b"".join(f"GET {p} HTTP/{version}\r\nHost: x\r\n\r\n".encode() for p in paths))

    def head(self) -> bytes:
        """The next answer's head alone (a HEAD answer has no body, whatever its Content-Length)."""
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def answer(self) -> tuple[bytes, bytes]:
        head = self.head()
        if head.startswith((b"HTTP/1.1 304 ", b"HTTP/1.1 204 ")):
            return head, b""  # no body, whatever the head says (RFC 9110)
        found = re.search(rb"(?im)^content-length: *([0-9]+)\r?$", head)
        assert found is not None, head
        size = int(found.group(1))
        while len(self.buf) < size:
            self.more()
        body, self.buf = self.buf[:size], self.buf[size:]
        return head, body

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def without_date(head: bytes) -> list[bytes]:
    """The lines of a raw head but its Date (which two answers need not share)."""
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]


class Stream:
    """An event stream on a raw socket: its head, then its chunked body read as it comes.

    `Stream(port)` asks for the stream and reads its head; `Stream.on(sock, rest)` reads
    one asked for on a socket of the test's own (`rest`: what came after its head, if that
    was read already; else read it with `head()`). `rest` is what was read beyond the last
    chunk, for whatever answer follows the stream on its connection."""

    def __init__(self, port: int, last_event_id: str | None = None) -> None:
        self.sock = connect(port)
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        self.sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n{resume}\r\n".encode())
        status, headers, self.rest = read_head(self.sock)  # its handler runs: the head was parsed
        assert (status, headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
        self.text = ""
        self.ended = False  # the last chunk came: a complete response

    @classmethod
    def on(cls, sock: socket.socket, rest: bytes = b"") -> Stream:
        stream = cls.__new__(cls)
        stream.sock, stream.rest, stream.text, stream.ended = sock, rest, "", False
        return stream

    def head(self) -> bytes:
        """The stream's raw response head (for a stream made with `on` before it was read)."""
        while b"\r\n\r\n" not in self.rest:
            self._need(len(self.rest) + 1)
        head, _, self.rest = self.rest.partition(b"\r\n\r\n")
        return head

    def _need(self, size: int) -> None:
        while len(self.rest) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed in the middle of the stream: {self.text[-200:]!r}")
            self.rest += chunk

    def read_chunk(self) -> None:
        while b"\r\n" not in self.rest:
            self._need(len(self.rest) + 1)
        size_line, _, self.rest = self.rest.partition(b"\r\n")
        size = int(size_line, 16)
        self._need(size + 2)
        self.text += self.rest[:size].decode()
        self.rest = self.rest[size + 2 :]
        self.ended = size == 0

    def events(self) -> list[dict[str, str]]:
        """The whole events read so far (comments left out)."""
        found = []
        for block in self.text.replace("\r\n", "\n").split("\n\n")[:-1]:
            event = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
            if event:
                found.append(event)
        return found

    def read_until_id(self, revision: int) -> None:
        while not any(event.get("id", "").endswith(f":{revision}") for event in self.events()):
            self.read_chunk()

    def read_to_end(self) -> None:
        while not self.ended:
            self.read_chunk()


def records(events: list[dict[str, str]]) -> list[Any]:
    """The change records the `change` events carried."""
    return [orjson.loads(event["data"]) for event in events if event["event"] == "change"]


def probe(port: int) -> int | str:
    """What a liveness probe with a 1 s timeout sees."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def following(meter: socket.socket) -> float:
    """The gate's count of followers, asked on a kept-alive raw connection of its own."""
    meter.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_response(meter)
    assert answer is not None and answer[0] == 200
    for line in answer[2].decode().splitlines():
        if line.startswith("droq_registry_connections_following "):
            return float(line.split()[1])
    raise AssertionError("no droq_registry_connections_following")


@contextmanager
def descriptors(count: int) -> Iterator[None]:
    """This test process may open `count` files (a flood needs a thousand sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count), max(hard, count)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
