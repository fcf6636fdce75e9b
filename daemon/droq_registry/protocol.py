"""One connection's HTTP: uvicorn's httptools protocol, with the limits that keep a slow or
hostile client's cost its own, and the writes a commit's fan-out makes to its followers.

- `LimitedProtocol` (given to uvicorn as `http=`) closes a connection whose request head
  is not complete `head_timeout` seconds after it connected or after the head's first
  byte, and answers 431 and closes when a head grows past `max_head_bytes` (it counts the
  bytes as they arrive, so a head is never buffered whole). A client that takes nothing
  of an answer for `send_timeout` seconds while the unsent part waits (its socket buffers
  are full) is cut off, so it keeps neither the connection nor those bytes for ever.
- Followers: an event stream whose unsent bytes would grow past `follower_buffer` is cut
  at once (`LimitedProtocol.room`): its client resumes with Last-Event-ID, and it cost
  nobody else anything. A follower's socket has a send buffer of that size too, so the
  kernel does not hold megabytes more for a reader that is stuck. Followers pipelined
  behind one another are released in order (`LimitedProtocol.queued`). The fan-out writes
  a stream's frames (`push`) and a long-poll's whole answer (`answer`) through the
  request's own `FollowerOutlet`, and holds the connection's next request until it is over.
"""


from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from .connections import Gate
from .feed import Release
from .lean import Pipeline, Signal
from .routes import is_follower

log = logging.getLogger("droq_registry.server")


#: Requests parsed and queued behind the one in progress before the rest of what a client
#: sent waits unparsed; and the piece of a read the parser is given at a time, so that no
#: more than about PIECE / 18 bytes' worth of requests pass that depth (`data_received`).
PIPELINE_DEPTH = 8
PIECE = 512


@dataclass(frozen=True)
class Limits:
    head_timeout: float
    keepalive_timeout: float
    send_timeout: float
    max_head_bytes: int
    max_connections: int
    follower_buffer: int = 256 * 1024


class Reads(Protocol):
    """What answers the hot reads before any ASGI work: `hotpath.HotPath.reply`."""

    def reply(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes, str] | None: ...


#: How a request answered here is counted: route template, method, status, seconds (`Metrics.request`).
Count = Callable[[str, str, int, float], None]


class _Answered:
    """The cycle of a request answered by the protocol itself (`answer_here`): complete,
    so uvicorn's callbacks (the rest of its message, a lost connection, shutdown) find
    nothing in progress, as after any complete answer."""

    __slots__ = ()
    response_complete = True
    disconnected = False

    class message_event:  # uvicorn calls `cycle.message_event.set()`
        @staticmethod
        def set() -> None:
            pass


ANSWERED: Any = _Answered()
_clock = time.perf_counter


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a head size limit and the gate, and
    the hot reads answered as soon as their head is parsed (`answer_here`)."""

    # Our own attributes in slots: uvicorn's alone stay few enough for CPython to share
    # their dict's keys between connections (a dict of 40 keys costs 1.3 KiB more).
    __slots__ = ("bounded", "count", "deferred", "follower", "gate", "head_bytes", "head_timer", "heads",
                 "holding", "in_head", "limits", "queued", "reads", "running", "send_timer", "unparsed", "unsent")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        gate: Gate,
        limits: Limits,
        _loop: asyncio.AbstractEventLoop | None = None,
        reads: Reads | None = None,
        count: Count | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.pipeline = Pipeline()  # type: ignore[assignment]  # a deque's methods uvicorn uses
        self.gate = gate
        self.limits = limits
        # Answered here only where nothing about the request needs ASGI: no root path (the
        # app's routes are under it), no access log (uvicorn writes it, with the client
        # address its proxy-headers middleware gives).
        direct = reads is not None and count is not None and not config.root_path
        self.reads = reads if direct else None
        self.count: Count = count if count is not None else _uncounted
        self.timeout_keep_alive = limits.keepalive_timeout  # type: ignore[assignment]  # a float is fine
        self.in_head = True  # waiting for (the rest of) a request head
        self.head_bytes = 0
        self.heads = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.send_timer: asyncio.TimerHandle | None = None
        self.unsent = 0
        self.follower: Release | None = None  # the follower request in progress, if any
        #: Follower requests pipelined behind the one in progress, by their cycle: each
        #: becomes `follower` when uvicorn starts it (`on_response_complete`).
        self.queued: dict[RequestResponseCycle, Release] = {}
        #: The request whose ASGI task uvicorn started last (`_start_asgi_task`): the one in
        #: progress, which `self.cycle` is not when others are pipelined behind it.
        self.running: RequestResponseCycle | None = None
        self.holding = False  # a fan-out holds the next request (`hold`)
        self.deferred = False  # an answer completed meanwhile (`answer`)
        self.bounded = False  # its socket's send buffer is the follower bound (`_follow`)
        #: Bytes read but not parsed yet: requests beyond `PIPELINE_DEPTH` behind the one in
        #: progress wait here, with reading paused (`data_received`, `_parse_unparsed`).
        self.unparsed = b""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = Flow(transport)
        self.gate.opened(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.send_timer is not None:
            self.send_timer.cancel()
        self.gate.closed(self)
        running = self.running
        if running is not None and not running.response_complete:
            # uvicorn marks only the last request it parsed (`self.cycle`) disconnected. With
            # requests pipelined behind it, the one in progress would wake from waiting for
            # its client to drain and write to the closed transport (uvloop raises; uvicorn
            # logs "Exception in ASGI application").
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)
        self.unparsed = b""
        self.release()  # its client has gone: its followers stop waiting now
        self.queued.clear()  # those never started: uvicorn starts nothing on a lost connection

    def data_received(self, data: bytes) -> None:
        """Parse what the client sent, a piece at a time, keeping what comes once
        `PIPELINE_DEPTH` requests wait behind the one in progress unparsed. uvicorn would
        parse a whole read (up to 256 KiB) at once and keep a cycle (~1 KiB) for each
        request in it: a client that pipelines tiny requests and never reads would hold
        megabytes. Here it holds at most the depth's cycles and one read's bytes."""
        if self.unparsed:  # reading is paused for those: what came meanwhile waits behind them
            self.unparsed += data
            self.flow.pause_reading()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        for start in range(0, len(data), PIECE):
            if len(self.pipeline) >= PIPELINE_DEPTH:
                self.unparsed = data[start:]
                self.flow.pause_reading()
                return
            if self.transport.is_closing():
                return
            self._parse(data if len(data) <= PIECE else data[start : start + PIECE])

    def _parse_unparsed(self) -> None:
        """Parse what waited, now that a request behind the one in progress has started."""
        if self.transport.is_closing() or not self.unparsed:
            self.unparsed = b""
            return
        data, self.unparsed = self.unparsed, b""
        self._take(data)
        if not self.unparsed and not self.pipeline and not self.holding and not self.transport.is_closing():
            self.flow.resume_reading()

    def _parse(self, data: bytes) -> None:
        if not self.in_head:
            super().data_received(data)
            return
        if self.head_timer is None:
            self._arm()  # the first byte of a request on a kept-alive connection
        # The parser sees no more than the head may still hold. (A head that starts in the
        # same read as the previous request's end is counted from the next read on.)
        room = self.limits.max_head_bytes - self.head_bytes
        piece = data if len(data) <= room else data[:room]
        self.head_bytes += len(piece)
        heads = self.heads
        super().data_received(piece)
        if len(piece) == len(data) or self.transport.is_closing():
            return
        if self.heads == heads:
            self._refuse_head()
        else:
            self._parse(data[len(piece) :])

    def on_headers_complete(self) -> None:
        self.heads += 1
        self.in_head = False
        self._disarm()
        # A request has come: the connection is not idle. uvicorn cancels its keep-alive
        # timer only as a read begins; an answer given here, within that read, armed it
        # again, and would cut a follower pipelined behind it in the same read.
        self._unset_keepalive_if_required()
        self.gate.busy(self)
        if self.reads is not None and (self.cycle is None or self.cycle.response_complete) and self.answer_here():
            return
        behind = self.cycle is not None and not self.cycle.response_complete  # uvicorn queues it
        super().on_headers_complete()
        # The head is parsed into the scope now, and the request's task, made but not yet
        # run, has not read it: a follower gets its release before its handler starts.
        scope = self.scope
        if "path" in scope and is_follower(scope["path"], scope["query_string"]):
            # Its own cycle: a request pipelined behind it gets the next one (uvicorn's `self.cycle`).
            self.cycle.message_event = Signal()  # type: ignore[assignment]  # held for long: lean
            outlet = FollowerOutlet(self, self.cycle)
            release = Release.attach(scope, outlet)  # type: ignore[arg-type]  # an HTTPScope is a dict
            self.gate.following(self)
            if behind:  # the request in progress keeps `follower` until it is complete
                self.queued[self.cycle] = release
            else:
                self._follow(release)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        super()._start_asgi_task(cycle, app)

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
        try:
            reply = self.reads.reply(verb, path, url.query or b"", self.headers)  # type: ignore[union-attr]
        except Exception:  # a bug here must not cost the answer: the app gives it
            log.exception("answering %s %s here failed; the app answers it", verb, path)
            return False
        if reply is None:
            return False
        status, headers, body, route = reply
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        self.cycle = ANSWERED
        self._write_whole(status, headers, b"" if verb == "HEAD" else body, keep_alive)
        self.on_response_complete()
        self.count(route, verb, status, _clock() - started)
        return True

    def _write_whole(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes,
                     keep_alive: bool) -> None:
        """Write a whole answer in one write, as uvicorn's two `send` calls would: its
        default headers first, `connection: close` (and the close) when the connection
        is not kept alive. Our headers are our own, valid by construction, so they skip
        uvicorn's checks of each one."""
        # The date is now's (uvicorn's current default headers); answers that share it and
        # their headers share the encoded head (`_head`).
        head = _head(status, self.server_state.default_headers, headers)
        if keep_alive:
            self.transport.write(b"".join((head, b"\r\n", body)))
        else:
            self.transport.write(b"".join((head, b"connection: close\r\n\r\n", body)))
            self.transport.close()

    def _follow(self, release: Release) -> None:
        """`release`'s request is the one in progress now."""
        self.follower = release
        # uvicorn waits for the client to drain above the high-water mark; a follower's
        # bound is checked before each send instead (`room`), so it never waits there.
        self.transport.set_write_buffer_limits(high=self.limits.follower_buffer)
        if not self.bounded:
            # Linux grows a socket's send buffer by itself up to tcp_wmem's maximum (4 MiB),
            # so a stuck reader would hold that much kernel memory before `room` saw any
            # of it unsent. A fixed send buffer of the bound (the kernel doubles it for its
            # bookkeeping) keeps what a follower has not taken within about 3x the bound.
            # It stays for the connection's life, ample for the answers a follower's
            # connection asks for next.
            self.bounded = True
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.follower_buffer)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True
        self.head_bytes = 0

    def on_response_complete(self) -> None:
        if self.follower is not None:
            self.follower = None
            self.transport.set_write_buffer_limits()
        pipelined = bool(self.pipeline)
        if pipelined:  # uvicorn starts the oldest pipelined request now (the deque's right end)
            release = self.queued.pop(self.pipeline[-1][0], None)
            if release is not None:
                self._follow(release)
        super().on_response_complete()
        if self.unparsed and not self.transport.is_closing():
            self.flow.pause_reading()  # uvicorn resumed it: what waits unparsed comes first
            if len(self.pipeline) < PIPELINE_DEPTH:
                self.loop.call_soon(self._parse_unparsed)  # not within the answer's `send`
        if not pipelined and not self.transport.is_closing():
            self.gate.idle_again(self)
        if self.holding and not self.transport.is_closing():
            self.flow.pause_reading()  # uvicorn resumed it: the next request waits for `resume`

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timer is None:
            self._watch_sending()

    def _watch_sending(self) -> None:
        self.unsent = self.transport.get_write_buffer_size()
        self.send_timer = self.loop.call_later(self.limits.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    def _send_stalled(self) -> None:
        self.send_timer = None
        if self.transport.get_write_buffer_size() < self.unsent:
            self._watch_sending()  # slow, but it reads
            return
        self.gate.counted("send_stalled")
        self.transport.abort()  # close() would wait for the unsent bytes to go

    def evict(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a slow reader: close() would keep its descriptor until it reads
        elif not self.transport.is_closing():
            self.transport.close()

    def release(self) -> None:
        """The follower in progress answers now, and any pipelined behind it as it starts."""
        if self.follower is not None:
            self.follower.set()
        for queued in self.queued.values():
            queued.set()

    def room(self, size: int) -> bool:
        """Whether a follower may queue `size` more bytes (feed.Outlet). A stream whose
        unsent bytes would pass `follower_buffer` lags too far behind: it is cut now, so
        what it has not read never grows beyond that bound, and it costs nobody else a
        wait. A connection with nothing unsent always takes the next send whole."""
        unsent = self.transport.get_write_buffer_size()
        if unsent == 0 or unsent + size <= self.limits.follower_buffer:
            return not self.transport.is_closing()
        self.gate.counted("follower_lagging")
        self.transport.abort()
        return False

    def push(self, cycle: RequestResponseCycle, body: bytes) -> bool:
        """Write `body` as the next chunk of `cycle`'s streamed answer, as uvicorn's `send`
        would, but now and without waking the request's task (`FollowerOutlet`): the
        feed's fan-out writes each event stream's frames this way. False when there is no
        room (`room` has cut the connection) or no streamed answer in progress."""
        streaming = cycle.response_started and not cycle.response_complete and cycle.chunked_encoding
        if not streaming or not self.room(len(body)):
            return False
        self.transport.write(_chunk(body))
        return True

    def answer(self, cycle: RequestResponseCycle, status: int, headers: tuple[tuple[bytes, bytes], ...],
               body: bytes) -> bool:
        """Send `cycle`'s whole answer in one write, as uvicorn's two `send` calls would
        (its default headers, its access log line, `connection: close` when the
        connection is not kept alive), without waking the request's task
        (`FollowerOutlet`): the feed's fan-out answers each long-poll this way. Our headers
        are our own, valid by construction, so they skip uvicorn's checks of each one.
        False when an answer was started, or the client has gone."""
        if cycle.response_started or cycle.disconnected or self.transport.is_closing():
            return False
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        if cycle.access_log and cycle.access_logger.isEnabledFor(logging.INFO):  # its arguments cost
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d', get_client_addr(cycle.scope), cycle.scope["method"],
                get_path_with_query_string(cycle.scope), cycle.scope["http_version"], status,
            )
        cycle.response_complete = True
        cycle.message_event.set()
        self._write_whole(status, headers, body, cycle.keep_alive)
        if cycle.keep_alive and self.holding:
            # What follows a complete answer (reading the next request, starting one
            # pipelined, arming the keep-alive timer, the gate's bookkeeping) waits for the
            # fan-out to be over (`resume`): its turns spend only the write on this one.
            self.flow.pause_reading()
            self.deferred = True
            if not self.pipeline:
                self.gate.idle_again(self)  # as `on_response_complete` would: the cap may close it
            return True
        cycle.on_response()
        return True

    def hold(self) -> None:
        """Read no next request once the answer in progress is complete, until `resume`."""
        self.holding = True

    def resume(self) -> None:
        """Read the client's requests again (after `hold`), and finish the answer the
        fan-out sent meanwhile (`answer`)."""
        if self.holding:
            self.holding = False
            deferred, self.deferred = self.deferred, False
            if self.transport.is_closing():
                return
            if deferred:
                # What its cycle's `on_response` is (uvicorn's request task, ended by now,
                # has unset that): read again, or start the request pipelined.
                self.on_response_complete()
            else:
                self.flow.resume_reading()

    def _unsupported_upgrade_warning(self) -> None:
        # There are no WebSocket routes (ws="none"): an Upgrade header is ignored and the
        # request answered as HTTP. uvicorn would log two warnings for every such request.
        self.logger.debug("ignoring an Upgrade request header")

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            self.gate.counted("head_timeout")
            self.transport.close()

    def _refuse_head(self) -> None:
        self.gate.counted("head_too_large")
        if self.cycle is None or self.cycle.response_complete:  # else a response is being written
            body = b'{"detail":"the request head is larger than %d bytes"}' % self.limits.max_head_bytes
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
            )
        self.transport.close()


def _uncounted(route: str, method: str, status: int, seconds: float) -> None:
    pass


#: Encoded heads by (status, id of the headers tuple), for uvicorn's default headers `_heads_of`.
_heads: dict[tuple[int, int], tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
_heads_of: list[object] = [None]
HEADS_KEPT = 4096


def _head(status: int, default: list[tuple[bytes, bytes]], headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The status line and header lines of an answer (without the blank line), encoded once
    for each answer's headers while uvicorn's default headers (the date) stay the same
    object: the hot answers and the long-polls of a fan-out within one second."""
    if _heads_of[0] is not default or len(_heads) >= HEADS_KEPT:
        _heads.clear()
        _heads_of[0] = default
    key = (status, id(headers))
    kept = _heads.get(key)
    if kept is not None and kept[0] is headers:
        return kept[1]
    head = b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in (*default, *headers))])
    _heads[key] = (headers, head)
    return head


_last_chunk: tuple[object, bytes] = (None, b"")


def _chunk(body: bytes) -> bytes:
    """`body` framed as one chunk of a chunked answer; the last one's bytes again for the
    same object (the event streams of one fan-out that had the same revision)."""
    global _last_chunk
    last = _last_chunk
    if last[0] is body:
        return last[1]
    chunk = b"%x\r\n%b\r\n" % (len(body), body)
    _last_chunk = (body, chunk)
    return chunk


class Flow(FlowControl):
    """uvicorn's flow control, with a lean event (`lean.Signal`): a connection keeps it
    for its whole life."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = Signal(True)  # type: ignore[assignment]  # an Event's methods


class FollowerOutlet:
    """What a follower request may do to its connection (feed.Outlet): its own request's
    cycle and the protocol, so the feed writes to the right answer even when the client
    has pipelined another request behind it."""

    __slots__ = ("cycle", "protocol")

    def __init__(self, protocol: LimitedProtocol, cycle: RequestResponseCycle) -> None:
        self.protocol = protocol
        self.cycle = cycle

    def room(self, size: int) -> bool:
        """See `LimitedProtocol.room`."""
        return self.protocol.room(size)

    def push(self, body: bytes) -> bool:
        """See `LimitedProtocol.push`."""
        return self.protocol.push(self.cycle, body)

    def answer(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> bool:
        """See `LimitedProtocol.answer`."""
        return self.protocol.answer(self.cycle, status, headers, body)

    def hold(self) -> None:
        """See `LimitedProtocol.hold`."""
        self.protocol.hold()

    def resume(self) -> None:
        """See `LimitedProtocol.resume`."""
        self.protocol.resume()
