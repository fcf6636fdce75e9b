"""Waking readers when a revision commits: long-polls and event streams wait here.

A waiter is one future in the feed's set, and nothing else: no task of its own, no
thread, no database connection, no queue. A commit (`notify`) resolves every future at
once; the long-polls' timeouts share one timer per 50 ms slot (`TIMEOUT_GRAIN`; a
long-poll not answered by the fan-out has one of its own), and the event streams'
keep-alive comes from one shared timer (`keep_alive`), not one per stream. So an idle
follower costs a few hundred bytes here, and a slow one cannot hold up the reconciler or
anyone else: what it has not read waits in its own connection's buffer (`Release.room`).

On our server an event stream does not even wait: it subscribes (`Feed.subscribe`), and a
commit's fan-out writes its frames to each stream's connection itself (`Subscriber.deliver`,
through `Outlet.push`), so ten thousand streams cost ten thousand socket writes and no task
woken. A fan-out goes in turns of the event loop (`Round`): a few milliseconds of writes,
then a batch of long-polls woken, then the loop reads its sockets, so a probe or a lookup
waits one turn, not the whole fan-out. A long-poll answered during a fan-out reads its
client's next request only once the fan-out is over (`Feed.hold`), so those requests do
not lengthen it.

A follower stops following in two ways, and both take the same path: the service stops
(`Feed.close`, every follower at once), or the server needs one follower's connection
back (its `Release`, set by the connection gate when the connection cap is reached, or
when the client has gone). A long-poll then answers at once with what it has, and an
event stream ends as a complete response, which its client resumes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from .release import Outlet, Release, Subscriber

#: Long-polls woken per turn of the event loop (each then runs its request's task, some
#: 30-60 µs), and the time a turn may spend writing to event streams: between two turns the
#: loop reads its sockets, so a probe or a lookup waits about one turn, not the fan-out.
WAKE_BATCH = 128
PUSH_SECONDS = 0.004
#: Connections held by a fan-out (`Feed.hold`) that read again per turn once it is over:
#: each then reads its client's next request in the turn after (some 50 µs each), so a
#: lookup waits a few ms behind them, not the 5,000 long-polls' next requests at once.
RESUME_BATCH = 64
#: The long-polls' timeouts are kept in slots this many seconds long, with one timer of the
#: event loop per slot for all of them (a timer of its own costs each ~260 bytes), so a
#: long-poll that times out answers at most this much after its `wait`, never before.
TIMEOUT_GRAIN = 0.05
_clock = time.perf_counter


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Round:
    """One fan-out: the subscribed streams written to (`deliver`, or `keep_alive` for the
    tick), then the waiters woken with `result`, in turns of the event loop; then the
    connections held meanwhile read again."""

    __slots__ = ("feed", "keepalive", "result", "streams", "waiters")

    def __init__(self, feed: Feed, streams: list[Subscriber], waiters: list[asyncio.Future[bool]],
                 result: bool, keepalive: bool = False) -> None:
        self.feed = feed
        self.streams = streams
        self.waiters = waiters
        self.result = result
        self.keepalive = keepalive

    def start(self) -> None:
        """The first turn now (on the event loop), the others in the loop's next turns."""
        self.feed._rounds += 1
        self.turn(0, 0)

    def turn(self, pushed: int, woken: int) -> None:
        loop = asyncio.get_running_loop()
        streams, subscribed = self.streams, self.feed._streams
        deadline = _clock() + PUSH_SECONDS
        while pushed < len(streams):
            stream = streams[pushed]
            pushed += 1
            if stream in subscribed:  # not one that ended since the round began
                if self.keepalive:
                    stream.keep_alive()
                else:
                    done = stream.deliver()
                    if done is not None:
                        del subscribed[stream]
                        self.waiters.append(done)  # its task ends after every write is out
            if not pushed % 16 and _clock() >= deadline:
                loop.call_soon(self.turn, pushed, woken)
                return
        end = woken + WAKE_BATCH
        for waiter in self.waiters[woken:end]:
            if not waiter.done():
                waiter.set_result(self.result)
        if end < len(self.waiters):
            loop.call_soon(self.turn, pushed, end)
        else:
            # After the last waiters' tasks, which run in the next turn before this.
            loop.call_soon(self.feed._round_over)


class Feed:
    """Tells waiters that the registry's revision moved."""

    def __init__(self, revision: Callable[[], int]) -> None:
        self._revision = revision
        #: Every wait in progress (long-polls and streams), resolved True by a commit.
        self._waiters: set[asyncio.Future[bool]] = set()
        #: The waits of streams not subscribed (another server's), resolved False by the tick.
        self._idle: set[asyncio.Future[bool]] = set()
        #: The subscribed streams, oldest first, and the waits of their requests.
        self._streams: dict[Subscriber, None] = {}
        self._open: set[asyncio.Future[bool]] = set()
        #: Fan-outs in progress, and the connections they hold (`hold`).
        self._rounds = 0
        self._held: list[Outlet] = []
        #: The subscribed followers' timeouts, by slot (`_expire_after`).
        self._slots: dict[int, set[asyncio.Future[bool]]] = {}
        self.closed = False

    @property
    def waiting(self) -> int:
        """How many followers wait now (long-polls and streams, subscribed or not)."""
        return len(self._waiters) + len(self._streams)

    def notify(self) -> None:
        """Tell everyone following (call on the event loop after a commit): subscribed
        streams get the news written to them, waiters wake."""
        waiters, self._waiters = self._waiters, set()
        self._idle = set()
        if waiters or self._streams:
            Round(self, list(self._streams), list(waiters), True).start()

    def close(self) -> None:
        """The service is stopping: wake every waiter and every subscribed stream for good."""
        self.closed = True
        self.notify()
        held, self._open = self._open, set()
        for waiter in held:
            if not waiter.done():
                waiter.set_result(False)

    def tick(self) -> None:
        """The keep-alive: subscribed streams get its comment, and every other stream
        waiting now wakes with nothing new (and says so)."""
        idle, self._idle = self._idle, set()
        if idle or self._streams:
            Round(self, list(self._streams), list(idle), False, keepalive=True).start()

    def subscribe(self, stream: Subscriber) -> None:
        """Write each commit's news to `stream` from now on, until `unsubscribe`."""
        self._streams[stream] = None

    def unsubscribe(self, stream: Subscriber) -> None:
        """No more writes to `stream` (idempotent)."""
        self._streams.pop(stream, None)

    def opened(self, release: Release) -> asyncio.Future[bool]:
        """The wait of a subscribed follower's request (`until_released`): resolved False
        when the service stops, `release` is set or its timeout passes; True by the round
        that has answered it (`Subscriber.deliver`)."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self.following(release):
            waiter.set_result(False)
        return waiter

    async def until_released(self, release: Release, waiter: asyncio.Future[bool],
                             timeout: float | None = None) -> bool:
        """Wait on `waiter` (from `opened`) until it is resolved, at most `timeout` seconds
        (and at most `TIMEOUT_GRAIN` more); what it was resolved with."""
        slot = self._enter(release, waiter, timeout)
        try:
            return await waiter
        finally:
            self._leave(release, waiter, slot)

    def attend(self, release: Release, waiter: asyncio.Future[bool], timeout: float,
               then: Callable[[bool], None]) -> None:
        """`until_released` with no task: `then(result)` runs on the event loop once `waiter`
        is resolved (the long-polls the protocol holds itself, `Changes.held`)."""
        slot = self._enter(release, waiter, timeout)

        def over(resolved: asyncio.Future[bool]) -> None:
            self._leave(release, waiter, slot)
            then(resolved.result())

        waiter.add_done_callback(over)

    def _enter(self, release: Release, waiter: asyncio.Future[bool],
               timeout: float | None) -> set[asyncio.Future[bool]] | None:
        slot = None if timeout is None else self._expire_after(waiter, timeout)
        self._open.add(waiter)
        release.waiting = waiter
        return slot

    def _leave(self, release: Release, waiter: asyncio.Future[bool], slot: set[asyncio.Future[bool]] | None) -> None:
        self._open.discard(waiter)
        release.waiting = None
        if slot is not None:
            slot.discard(waiter)

    def _expire_after(self, waiter: asyncio.Future[bool], timeout: float) -> set[asyncio.Future[bool]]:
        """Resolve `waiter` False once `timeout` seconds have passed: the slot it is put in."""
        loop = asyncio.get_running_loop()
        key = math.ceil((loop.time() + timeout) / TIMEOUT_GRAIN)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            loop.call_at(key * TIMEOUT_GRAIN, self._expire_slot, key)
        slot.add(waiter)
        return slot

    def _expire_slot(self, key: int) -> None:
        for waiter in self._slots.pop(key, ()):
            _expire(waiter)

    def hold(self, release: Release | None) -> None:
        """A long-poll woken by a fan-out answers now: its connection reads the client's
        next request once the fan-out is over, so those requests do not lengthen it."""
        outlet = release.outlet if release is not None else None
        if outlet is not None and self._rounds:
            outlet.hold()
            self._held.append(outlet)

    def _round_over(self) -> None:
        self._rounds -= 1
        if not self._rounds and self._held:
            held, self._held = self._held, []
            self._resume(held, 0)

    def _resume(self, held: list[Outlet], start: int) -> None:
        end = start + RESUME_BATCH
        for outlet in held[start:end]:
            outlet.resume()
        if end < len(held):
            asyncio.get_running_loop().call_soon(self._resume, held, end)

    async def keep_alive(self, seconds: float) -> None:
        """Tick every `seconds` until cancelled (run it in the service's task group)."""
        while True:
            await asyncio.sleep(seconds)
            self.tick()

    def following(self, release: Release | None = None) -> bool:
        """Whether a follower should go on waiting: the service runs, and it is not released."""
        return not self.closed and not (release is not None and release.is_set)

    async def wait_beyond(self, revision: int, timeout: float | None, release: Release | None = None) -> bool:
        """Wait until the revision is above `revision`, only while `following(release)`,
        at most `timeout` seconds (None: until the next keep-alive tick).

        Returns whether it is (False on timeout, tick, shutdown or release)."""
        loop = asyncio.get_running_loop()
        timer = None
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while self._revision() <= revision and self.following(release):
                waiter: asyncio.Future[bool] = loop.create_future()
                self._waiters.add(waiter)
                if deadline is None:
                    self._idle.add(waiter)
                elif timer is None:
                    timer = loop.call_at(deadline, _expire, waiter)
                else:  # woken by a commit that did not move the revision: the same deadline
                    timer.cancel()
                    timer = loop.call_at(deadline, _expire, waiter)
                if release is not None:
                    release.waiting = waiter
                try:
                    if not await waiter:
                        break  # the timeout, the tick, or the release
                finally:
                    self._waiters.discard(waiter)
                    self._idle.discard(waiter)
        finally:
            if timer is not None:
                timer.cancel()
            if release is not None:
                release.waiting = None
        return self._revision() > revision
