"""The HTTP server: uvicorn, with limits that keep a slow or hostile client's cost its own.

With `protocol.py` (one connection's HTTP) and its parts, the only modules that import uvicorn. uvicorn
alone closes an idle kept-alive connection (`timeout_keep_alive`), but it waits for ever
for a connection that never sends a request or sends it a byte at a time, its httptools
parser buffers a request head of any size, and it accepts connections until the process
runs out of file descriptors (its `limit_concurrency` answers 503, and the service never
answers 5xx). So:

- `protocol.LimitedProtocol` (given as `http=`) enforces the head timeout and size, the send
  timeout and the followers' buffer bound, and carries the fan-out's writes.
- `connections.Gate` accepts connections itself, at most `max_connections` open at once,
  closing the longest-idle one to make room, or releasing the oldest follower (a
  long-poll or an event stream, `routes.is_follower`) through the `release.Release` the
  protocol put in its request's scope, or holding new ones in the listen queue.
- The file-descriptor limit is raised to its hard limit at start-up, and the connection
  cap leaves `RESERVED_FDS` of it for node files, the database, the watcher and probes.
- The process's garbage-collector policy is set here (`GC_THRESHOLDS`,
  `freeze_after_commit`).
- On SIGTERM, the app is told first (`RegistryApp.stop_following`): long-polls answer at
  once and event streams end, and then uvicorn's graceful shutdown finds them finished.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import socket
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.config import STARTUP_FAILURE, Config

from .app import create_app
from .connections import Gate, Limits, listen
from .direct import Count, Reads
from .logs import uvicorn_log_config
from .metrics import PREFIX
from .protocol import LimitedProtocol
from .settings import Settings
from .stopsignal import record_stop_signals, stop_requested

log = logging.getLogger("droq_registry.server")

#: File descriptors kept from the connection cap for everything else.
RESERVED_FDS = 64
#: How long a thread may hold the GIL while another waits for it.
SWITCH_INTERVAL_SECONDS = 0.001
#: The connection cap when there are descriptors enough (REGISTRY_MAX_CONNECTIONS overrides):
#: room for ten thousand followers and their probes; an idle follower costs a few KiB, so
#: the cap's worth of them stays within about 100 MiB.
DEFAULT_MAX_CONNECTIONS = 16384


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go's runtime does); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def connection_limit(configured: int | None, fd_limit: int) -> int:
    """At most `fd_limit - RESERVED_FDS` (and at least 1), whatever is configured."""
    room = max(1, fd_limit - RESERVED_FDS)
    if configured is None:
        return min(DEFAULT_MAX_CONNECTIONS, room)
    if configured > room:
        log.warning(
            "REGISTRY_MAX_CONNECTIONS=%d leaves too few of the %d file descriptors; using %d",
            configured, fd_limit, room,
        )
        return room
    return configured


class RegistryServer(uvicorn.Server):
    """uvicorn's Server, accepting through a `Gate` and telling the app first when it stops."""

    def __init__(
        self, config: Config, limits: Limits, on_stop: Callable[[], None], reads: Reads | None = None,
        count: Count | None = None,
    ) -> None:
        super().__init__(config)
        self.limits = limits
        self.reads = reads  # the hot reads, answered by the protocol itself (`DirectReads.answer_here`)
        self.count = count
        self.gate = Gate(limits.max_connections)
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own startup for a host and port, with the gate in place of create_server.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, loop = self.config, asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return LimitedProtocol(
                config, self.server_state, self.lifespan.state, self.gate, self.limits, loop, self.reads, self.count,
            )

        try:
            listeners = listen(config.host, config.port, config.backlog)
        except OSError as exc:
            logging.getLogger("uvicorn.error").error(exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self.gate.start(listeners, protocol)
        self.servers = [self.gate]  # type: ignore[list-item]  # close() and wait_closed() are what it uses
        self._log_started_message(listeners)
        self.started = True

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # A stop signal recorded before uvicorn's handlers were in place is handled as theirs.
        with super().capture_signals():
            signum = stop_requested()
            if signum is not None:
                self.handle_exit(signum, None)
            yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


class GateCollector(Collector):
    """The connection gate's figures for /metrics."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        gate = self._gate
        yield GaugeMetricFamily(f"{PREFIX}_connections_open", "Open client connections.", value=len(gate.open))
        yield GaugeMetricFamily(
            f"{PREFIX}_connections_limit", "Most client connections open at once.", value=gate.limit
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_connections_following",
            "Open connections held by a follower (a long-poll or an event stream), which the service "
            "releases, oldest first, to make room at the limit.",
            value=len(gate.followers),
        )
        closed = CounterMetricFamily(
            f"{PREFIX}_connections_closed", "Connections the service closed itself, by reason.", labels=["reason"]
        )
        for reason, count in dict(gate.closed_by_us).items():
            closed.add_metric([reason], count)
        yield closed
        yield CounterMetricFamily(
            f"{PREFIX}_connections_held", "New connections held in the listen queue: every open one was busy.",
            value=gate.held,
        )


#: The cyclic collector's thresholds for this process (CPython's are 700, 10, 10): a full
#: pass every 1,000 of the middle generation's instead of every 10. After a commit every
#: long-lived object is frozen (below), so what a full pass walks is what came since: with
#: ten thousand followers connecting, that is their connections' objects, walked again and
#: again for 30-160 ms each time, freeing nothing, while every request waits. Garbage in
#: cycles is still collected by the younger generations, where nearly all of it dies.
GC_THRESHOLDS = (700, 10, 1000)


def freeze_after_commit() -> None:
    """The process's garbage-collector policy, run by the writer thread after each commit.

    What is served now lives until the next revision and is then freed by reference
    counting (snapshots hold no reference cycles). Freezing moves every object the cyclic
    collector tracks into a permanent generation it no longer walks, so its full passes,
    which hold the GIL while every request waits, stay short however large the registry.
    The two younger generations are collected first, so their garbage is not frozen; a
    cycle already in the oldest generation would be, and would stay until the process
    ends: the reason snapshots must hold none."""
    gc.collect(1)
    gc.freeze()


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean stop."""
    record_stop_signals()  # the commands did already (stopsignal says why); run() alone needs it too
    if stop_requested() is not None:
        log.info("stopped before serving: a stop signal came during start-up")
        return 0
    # Worker threads (searches, big lists, reconciles) hold the GIL in turns with the event
    # loop; a shorter switch interval (CPython's default is 5 ms) hands it back to the loop
    # sooner, so probes and lookups wait less behind them.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.set_threshold(*GC_THRESHOLDS)  # the collector's policy, with freeze_after_commit
    fd_limit = raise_fd_limit()
    limits = Limits(
        head_timeout=settings.head_timeout_seconds,
        keepalive_timeout=settings.keepalive_timeout_seconds,
        send_timeout=settings.send_timeout_seconds,
        max_head_bytes=settings.max_head_bytes,
        max_connections=connection_limit(settings.max_connections, fd_limit),
        follower_buffer=settings.follower_buffer_bytes,
    )
    app = create_app(settings, after_commit=freeze_after_commit)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings),
        http=LimitedProtocol,
        ws="none",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    server = RegistryServer(config, limits, app.stop_following, app.hot, app.state.metrics.request)
    app.state.metrics.registry.register(GateCollector(server.gate))
    log.info(
        "limits: %d connections (of %d file descriptors), request heads %d bytes within %gs, keep-alive %gs",
        limits.max_connections, fd_limit, limits.max_head_bytes, limits.head_timeout, limits.keepalive_timeout,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handlers that were there before it: those installed above, which only record it, so
    # the process exits 0 (containers and supervisors read anything else as a crash).
    server.run()
    return 0 if server.started else 1
