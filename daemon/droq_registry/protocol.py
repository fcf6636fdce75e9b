"""One connection's HTTP: uvicorn's httptools protocol, with the limits that keep a slow or
hostile client's cost its own.

`LimitedProtocol` (given to uvicorn as `http=`):
- closes a connection whose request head is not complete `head_timeout` seconds after it
  connected or after the head's first byte, and answers 431 and closes when a head grows
  past `max_head_bytes` (it counts the bytes as they arrive, so a head is never buffered
  whole);
- cuts off a client that takes nothing of an answer for `send_timeout` seconds while the
  unsent part waits (its socket buffers are full), so it keeps neither the connection nor
  those bytes for ever;
- parses at most `PIPELINE_DEPTH` requests pipelined behind the one in progress; the rest
  of what the client sent waits unparsed, with reading paused;
- tells the connection gate (`connections.Gate`) when the connection is idle, busy or
  following, so the cap can make room.
Its other parts are in their own modules: the hot reads it answers itself as soon as a
head is parsed (`direct.DirectReads`), and what a commit's fan-out writes to a follower's
connection (`outlet.FollowerWrites`, through the request's `outlet.FollowerOutlet`).
"""


from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from .connections import Gate, Limits
from .direct import Count, DirectReads, Reads, uncounted
from .lean import Flow, Pipeline, Signal
from .outlet import FollowerOutlet, FollowerWrites
from .release import Release
from .routes import is_follower

log = logging.getLogger("droq_registry.server")


#: Requests parsed and queued behind the one in progress before the rest of what a client
#: sent waits unparsed; and the piece of a read the parser is given at a time, so that no
#: more than about PIECE / 18 bytes' worth of requests pass that depth (`data_received`).
PIPELINE_DEPTH = 8
PIECE = 512


class LimitedProtocol(FollowerWrites, DirectReads, HttpToolsProtocol):
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
        self.pipeline = Pipeline()  # a deque's methods uvicorn uses
        self.gate = gate
        self.limits = limits
        # Answered here only where nothing about the request needs ASGI: no root path (the
        # app's routes are under it), no access log (uvicorn writes it, with the client
        # address its proxy-headers middleware gives).
        direct = reads is not None and count is not None and not config.root_path
        self.reads = reads if direct else None
        self.count: Count = count if count is not None else uncounted
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
        self.bounded = False  # its socket's send buffer is the follower bound (`follow`)
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
            self._feed(data)
            return
        if self.head_timer is None:
            self._arm()  # the first byte of a request on a kept-alive connection
        # The parser sees no more than the head may still hold. (A head that starts in the
        # same read as the previous request's end is counted from the next read on.)
        room = self.limits.max_head_bytes - self.head_bytes
        piece = data if len(data) <= room else data[:room]
        self.head_bytes += len(piece)
        heads = self.heads
        self._feed(piece)
        if len(piece) == len(data) or self.transport.is_closing():
            return
        if self.heads == heads:
            self._refuse_head()
        else:
            self._parse(data[len(piece) :])

    def _feed(self, data: bytes) -> None:
        """uvicorn's `data_received`, except that nothing is upgraded (ws="none"): the parser
        pauses after a request with an Upgrade header, and what follows it in the same read
        is the next request. (uvicorn drops it: whether a request pipelined behind one was
        answered depended on how the client's writes were read.)"""
        self._unset_keepalive_if_required()
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            except httptools.HttpParserUpgrade as upgrade:
                self.logger.debug("ignoring an Upgrade request header")  # uvicorn warns twice
                data = data[upgrade.args[0] :]  # the offset just past the request
                if not data or self.transport.is_closing():
                    return

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
            self.cycle.message_event = Signal()  # held for long: lean
            outlet = FollowerOutlet(self, self.cycle)
            release = Release.attach(scope, outlet)  # type: ignore[arg-type]  # an HTTPScope is a dict
            self.gate.following(self)
            if behind:  # the request in progress keeps `follower` until it is complete
                self.queued[self.cycle] = release
            else:
                self.follow(release)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        super()._start_asgi_task(cycle, app)

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
                self.follow(release)
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


