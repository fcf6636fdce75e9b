"""Accepting connections within a cap, so that file descriptors are left for the rest.

A file descriptor is what every open connection, node file, database file and watch
costs, and the process has a fixed number of them. Were connections accepted without
limit, a flood of clients would take them all, and the next node file read would fail
with "Too many open files". So the `Gate` accepts connections one at a time, while fewer
than its limit are open. At the limit it first closes the connection that has been idle
longest (no request in progress: never sent one, still sending its head, or kept alive
between requests; nginx reuses such connections the same way). When none is idle, it
releases the oldest follower (a long-poll or an event stream, which would otherwise hold
its connection for a minute or for ever): the long-poll answers at once with what it
has and the stream ends as a complete response, as at shutdown, and its connection,
idle then, is closed for the new one. Only when every connection is busy with a request
that is not a follower (or already released) does it stop accepting: new connections
wait in the kernel's listen queue until one closes. Nobody is answered 503, and a probe
gets in as soon as any connection is idle or following.

The protocol of each connection tells the gate when it opens, starts a request (and
whether it is a follower), becomes idle and closes (`protocol.LimitedProtocol`). Only the
event loop's thread touches the gate, except the metrics, which read a copy of its counts.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("droq_registry.connections")

#: Why the service closed a connection itself (the keys of `Gate.closed_by_us`).
REASONS = ("idle_evicted", "follower_released", "follower_lagging", "head_timeout", "head_too_large", "send_stalled")
#: accept() errors that mean "no descriptor or memory right now": wait and try again.
_SCARCE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_RETRY_SECONDS = 0.1



@dataclass(frozen=True)
class Limits:
    """What one connection is held to (settings.py reads them; protocol.py enforces them)."""

    head_timeout: float
    keepalive_timeout: float
    send_timeout: float
    max_head_bytes: int
    max_connections: int
    follower_buffer: int


class Connection(Protocol):
    def evict(self) -> None:
        """Close the connection now (it is idle)."""

    def release(self) -> None:
        """Have its follower request answer now (its connection is idle once it has)."""


class Gate:
    """Accepts connections while fewer than `limit` are open; see the module's docstring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[Connection, None] = {}
        #: Open connections with no request in progress, longest idle first.
        self.idle: dict[Connection, None] = {}
        #: Open connections busy with a follower request not yet released, oldest first.
        self.followers: dict[Connection, None] = {}
        self.closed_by_us = dict.fromkeys(REASONS, 0)
        #: Times a new connection had to wait because every open one was busy.
        self.held = 0
        self._room_made = asyncio.Event()  # a connection closed or became idle
        self._listeners: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting: set[socket.socket] = set()

    # --- what the connections tell the gate

    def opened(self, conn: Connection) -> None:
        self.open[conn] = None
        self.idle[conn] = None

    def busy(self, conn: Connection) -> None:
        self.idle.pop(conn, None)

    def following(self, conn: Connection) -> None:
        """Its request in progress is a follower (it may be released for room)."""
        if conn in self.open:
            self.followers[conn] = None

    def idle_again(self, conn: Connection) -> None:
        self.followers.pop(conn, None)
        if conn in self.open:
            self.idle.pop(conn, None)
            self.idle[conn] = None
            self._room_made.set()

    def closed(self, conn: Connection) -> None:
        self.open.pop(conn, None)
        self.idle.pop(conn, None)
        self.followers.pop(conn, None)
        self._room_made.set()

    def counted(self, reason: str) -> None:
        self.closed_by_us[reason] += 1

    # --- accepting

    def start(self, listeners: list[socket.socket], factory: Callable[[], asyncio.Protocol]) -> None:
        """Accept on every listening socket (non-blocking), making protocols with `factory`."""
        loop = asyncio.get_running_loop()
        self._listeners = listeners
        self._tasks = [loop.create_task(self._accept(loop, sock, factory)) for sock in listeners]

    async def _accept(
        self, loop: asyncio.AbstractEventLoop, listener: socket.socket, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _SCARCE:
                    log.warning("cannot accept a connection (%s); trying again shortly", exc.strerror)
                    await asyncio.sleep(_RETRY_SECONDS)
                continue  # ECONNABORTED and the like: that client is gone
            self._waiting.add(sock)
            try:
                await self._room()
                sock.setblocking(False)
                await loop.connect_accepted_socket(factory, sock)
            except OSError:  # the client went away meanwhile
                sock.close()
            except BaseException:
                sock.close()
                raise
            finally:
                self._waiting.discard(sock)

    async def _room(self) -> None:
        """Return once there is room for one more connection (closing an idle one, or
        releasing a follower and then closing it, if need be)."""
        waited = False
        while len(self.open) >= self.limit:
            oldest = next(iter(self.idle), None)
            if oldest is not None:
                self.idle.pop(oldest)
                self.open.pop(oldest, None)  # its descriptor goes as soon as the loop closes it
                self.counted("idle_evicted")
                oldest.evict()
                continue
            follower = next(iter(self.followers), None)
            if follower is not None:
                # It answers soon, on the loop: then it is idle (or closed), and the wait
                # below wakes to close it. One per round: the next follower is released
                # only if room is still short when this round wakes.
                self.followers.pop(follower)
                self.counted("follower_released")
                follower.release()
            elif not waited:
                waited = True
                self.held += 1
            self._room_made.clear()
            await self._room_made.wait()

    # --- what uvicorn's Server calls at shutdown (as on asyncio's Server)

    def close(self) -> None:
        """Stop accepting: close the listening sockets and the connections not let in yet."""
        for task in self._tasks:
            task.cancel()
        for sock in [*self._listeners, *self._waiting]:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def listen_addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, int, int, Any]]:
    """(family, type, protocol, address) of each socket `listen` opens for `host` and `port`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return [(family, kind, proto, address) for family, kind, proto, _, address in dict.fromkeys(infos)]


def local_urls(host: str, port: int) -> list[str]:
    """http://ADDRESS:PORT for each address the server listens on, as seen from this machine.

    A wildcard address (0.0.0.0, ::) is reached through the loopback of its family; an IPv6
    socket accepts IPv6 only (`listen`), so with HOST=:: the service is at [::1], not 127.0.0.1."""
    urls: list[str] = []
    for family, _, _, address in listen_addresses(host, port):
        ip = address[0]
        if ipaddress.ip_address(ip.split("%")[0]).is_unspecified:
            ip = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        urls.append(f"http://[{ip}]:{port}" if family == socket.AF_INET6 else f"http://{ip}:{port}")
    return list(dict.fromkeys(urls))


def listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (as asyncio's create_server)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in listen_addresses(host, port):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
