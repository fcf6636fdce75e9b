"""The hot reads answered by a connection's protocol itself, as soon as a head is parsed.

`DirectReads.answer_here` (a part of `protocol.LimitedProtocol`) asks `Reads` (the fast
path, `hotpath.HotPath.reply`) for the answer to a lookup, a node's detail or the node
list, and writes it whole (`wire.write_whole`): no ASGI task, messages or header checks,
which are most of uvicorn's cost for such an answer. A long-poll of the change log is
answered the same way when there is news (`HotPath.poll`), and when it must wait it is
held by the connection itself (`outlet.FollowerWrites.follow_here`), with no task either,
until the feed's fan-out writes its answer. It leaves to uvicorn and the app whatever it
is not sure of; they send the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from .wire import ANSWERED, Headers, write_whole

log = logging.getLogger("droq_registry.server")
_clock = time.perf_counter


class Reads(Protocol):
    """What answers the hot reads before any ASGI work (`hotpath.HotPath`): `reply`, and
    for a long-poll `poll`, then `hold` when it waits."""

    def reply(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, Headers, bytes, str] | None: ...

    def poll(self, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> Any: ...

    def hold(self, waits: Any, release: Any, done: Callable[[int], None]) -> None: ...


#: How a request answered here is counted: route template, method, status, seconds (`Metrics.request`).
Count = Callable[[str, str, int, float], None]


def uncounted(route: str, method: str, status: int, seconds: float) -> None:
    """A `Count` that counts nothing."""


class DirectReads:
    """The part of the protocol that answers hot reads (its attributes are the protocol's)."""

    if TYPE_CHECKING:
        parser: httptools.HttpRequestParser
        flow: Any
        transport: asyncio.Transport
        server_state: Any
        access_log: bool
        access_logger: logging.Logger
        headers: list[tuple[bytes, bytes]]
        url: bytes
        cycle: Any
        reads: Reads | None
        count: Count

        def on_response_complete(self) -> None: ...

        def follow_here(self, waits: Any, keep_alive: bool, started: float) -> bool: ...

    def answer_here(self) -> bool:
        """Answer the request whose head was just parsed, now, if it is a hot read (`Reads`)
        with nothing before it in progress: the prepared bytes are written at once, with no
        task, ASGI messages or header checks (uvicorn's cost per request, which is most of
        the cost of such an answer). False (nothing done) for anything else: uvicorn then
        runs the app, whose own fast path or Starlette answers the same bytes."""
        started = _clock()
        parser = self.parser
        method = parser.get_method()
        if method != b"GET" and method != b"HEAD" or parser.should_upgrade():
            return False
        if self.flow.write_paused:
            return False  # the client reads too slowly: uvicorn's `send` waits for it, reading no more
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            return False  # uvicorn's access line is written by its own `send`
        for name, _ in self.headers:
            if name == b"content-length" or name == b"transfer-encoding":
                return False  # a request body: uvicorn reads it
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn answers it as it always does
        if "%" in path:
            path = urllib.parse.unquote(path)
        verb = "GET" if method == b"GET" else "HEAD"
        reads: Reads = self.reads  # type: ignore[assignment]
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        try:
            reply = reads.reply(verb, path, url.query or b"", self.headers)
            if reply is None and verb == "GET":
                reply = reads.poll(path, url.query or b"", self.headers)
                if reply is not None and not isinstance(reply, tuple):
                    return self.follow_here(reply, keep_alive, started)  # a long-poll that waits
        except Exception:  # a bug here must not cost the answer: the app gives it
            log.exception("answering %s %s here failed; the app answers it", verb, path)
            return False
        if reply is None:
            return False
        status, headers, body, route = reply
        self.cycle = ANSWERED
        write_whole(self.transport, self.server_state.default_headers, status, headers,
                    b"" if verb == "HEAD" else body, keep_alive)
        self.on_response_complete()
        self.count(route, verb, status, _clock() - started)
        return True
