"""A follower's connection: what a commit's fan-out writes to it, and its bounds.

`FollowerWrites` (a part of `protocol.LimitedProtocol`) is what `feed.py`'s fan-out may do
to a follower's connection, through the request's own `FollowerOutlet`: write an event
stream's frames (`push`), a long-poll's whole answer (`answer`), hold the connection's next
request until the fan-out is over (`hold`, `resume`). An event stream whose unsent bytes
would grow past the follower bound is cut at once (`room`): its client resumes with
Last-Event-ID, and it cost nobody else anything. A follower's socket has a send buffer of
that size too (`follow`), so the kernel does not hold megabytes more for a reader that
is stuck.

A plain long-poll that must wait is held by the connection itself (`follow_here`, from
`direct.DirectReads.answer_here`): a `HeldCycle` of a few fields stands for its request,
and no ASGI task, scope or message runs for it, so the re-asks that follow every fan-out
cost little more than parsing their heads.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .connections import Gate, Limits
from .release import Release
from .wire import ANSWERED, chunk, write_whole

_clock = time.perf_counter


def _nothing() -> None:
    pass


class HeldCycle:
    """The cycle of a long-poll the protocol holds itself (`FollowerWrites.follow_here`):
    what uvicorn's callbacks and `FollowerWrites.answer` read of a request in progress,
    and nothing else (no scope, no body, no task)."""

    __slots__ = ("disconnected", "keep_alive", "more_body", "on_response", "response_complete",
                 "response_started", "waiting_for_100_continue")
    access_log = False  # held here only with the access log off (`DirectReads.answer_here`)
    chunked_encoding = None
    message_event = ANSWERED.message_event  # its request has no body to wait for

    def __init__(self, keep_alive: bool, on_response: Callable[[], None]) -> None:
        self.disconnected = False
        self.keep_alive = keep_alive  # uvicorn's `shutdown` unsets it
        self.more_body = True
        self.on_response = on_response
        self.response_complete = False
        self.response_started = False
        self.waiting_for_100_continue = False


class FollowerWrites:
    """The part of the protocol that serves followers (its attributes are the protocol's)."""

    if TYPE_CHECKING:
        transport: asyncio.Transport
        flow: Any
        server_state: Any
        pipeline: Any
        gate: Gate
        limits: Limits
        follower: Release | None
        queued: dict[RequestResponseCycle, Release]
        holding: bool
        deferred: bool
        bounded: bool
        cycle: Any
        reads: Any
        count: Callable[[str, str, int, float], None]

        def on_response_complete(self) -> None: ...

        def evict(self) -> None: ...

    def follow(self, release: Release) -> None:
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

    def follow_here(self, waits: Any, keep_alive: bool, started: float) -> bool:
        """Hold the long-poll whose head was just parsed (`HotPath.poll` gave `waits`) with
        no task: the connection follows (`follow`, the gate's `following`), and the feed
        answers it through its outlet (`HotPath.hold`), as it answers one held by a task."""
        cycle = HeldCycle(keep_alive, self.on_response_complete)
        release = Release(FollowerOutlet(self, cycle))  # type: ignore[arg-type]  # a cycle's part

        def done(status: int) -> None:
            cycle.on_response = _nothing  # as uvicorn's task does when it ends
            if not status:
                self.transport.close()  # no answer could be sent: the client asks again
                return
            self.count(waits.route, "GET", status, _clock() - started)

        # First, as it may fail: then nothing here has changed, and uvicorn runs the app.
        # (`done` runs in a later turn of the loop, never within `hold`.)
        self.reads.hold(waits, release, done)
        self.cycle = cycle
        self.gate.following(self)
        self.follow(release)
        return True

    def release(self) -> None:
        """The follower in progress answers now, and any pipelined behind it as it starts."""
        if self.follower is not None:
            self.follower.set()
        for queued in self.queued.values():
            queued.set()

    def room(self, size: int) -> bool:
        """Whether a follower may queue `size` more bytes (release.Outlet). A stream whose
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
        self.transport.write(chunk(body))
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
        write_whole(self.transport, self.server_state.default_headers, status, headers, body, cycle.keep_alive)
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


class FollowerOutlet:
    """What a follower request may do to its connection (release.Outlet): its own request's
    cycle and the protocol, so the feed writes to the right answer even when the client
    has pipelined another request behind it."""

    __slots__ = ("cycle", "protocol")

    def __init__(self, protocol: FollowerWrites, cycle: RequestResponseCycle) -> None:
        self.protocol = protocol
        self.cycle = cycle

    def room(self, size: int) -> bool:
        """See `FollowerWrites.room`."""
        return self.protocol.room(size)

    def push(self, body: bytes) -> bool:
        """See `FollowerWrites.push`."""
        return self.protocol.push(self.cycle, body)

    def answer(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> bool:
        """See `FollowerWrites.answer`."""
        return self.protocol.answer(self.cycle, status, headers, body)

    def hold(self) -> None:
        """See `FollowerWrites.hold`."""
        self.protocol.hold()

    def resume(self) -> None:
        """See `FollowerWrites.resume`."""
        self.protocol.resume()
