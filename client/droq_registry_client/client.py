"""`RegistryClient` (synchronous, follows in a thread) and `AsyncRegistryClient` (a task).

Both hold a `Core` (the state, lookups, failover marks) and run the same `Follower`; they
differ only in where it runs and how callers wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Self

import httpx

from .core import Core
from .errors import RegistryUnavailable
from .follower import Follower
from .model import Options, StateChange, Status

USER_AGENT = "droq-registry-client"


def _http(options: Options) -> httpx.AsyncClient:
    headers = {"user-agent": USER_AGENT}
    if options.token is not None:
        headers["authorization"] = f"Bearer {options.token}"
    connections = options.concurrency + 1  # the listing's fetches, and the long-poll
    return httpx.AsyncClient(
        headers=headers,
        timeout=options.timeout,
        # Idle connections are closed before the registry would close them (its keep-alive
        # is 5 s by default), so a request rarely meets a connection closing under it.
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0),
    )


def _options(urls: str | Sequence[str], given: dict[str, Any]) -> Options:
    return Options.make(urls, **given)


class _Configured:
    """The options both clients take, declared once (see `RegistryClient` for each)."""

    _core: Core

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        poll_wait: float = 15.0,
        timeout: float = 5.0,
        resync_interval: float = 300.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
        failure_ttl: float = 30.0,
        startup_timeout: float = 10.0,
        cache_path: str | PathLike[str] | None = None,
        cache_interval: float = 1.0,
        concurrency: int = 8,
        on_state_change: Callable[[StateChange], None] | None = None,
    ) -> None:
        given = dict(locals())
        del given["self"], given["urls"]
        self._core = Core(_options(urls, given))
        self._begin()

    def _begin(self) -> None:
        """What the client sets up once its options are read."""
        raise NotImplementedError


class RegistryClient(_Configured):
    """Answers "which node runs class X?" from memory, kept current in a background thread.

    `urls` is the registry's base URL or a list of replicas (tried in turn). Options:

    - `token`: sent as `Authorization: Bearer` on every request, the long-poll included.
    - `poll_wait` (15 s): how long one long-poll of the feed waits for a change.
    - `timeout` (5 s): connect/read timeout of every request (a long-poll's read after its
      wait); a whole answer must arrive within `wait + 2 x timeout`.
    - `resync_interval` (300 s; 0 turns it off): a full relisting, revalidated with ETags,
      as a safety net against anything missed.
    - `backoff_initial` / `backoff_max` (0.25 s / 15 s): the wait after every replica has
      failed, doubling each round up to the maximum, with jitter (50-100 %).
    - `failure_ttl` (30 s): how long `report_failure` routes around a node.
    - `startup_timeout` (10 s): how long a lookup waits for the first state when none is
      known yet, before it raises `RegistryUnavailable` (it raises at once when every
      replica has already failed).
    - `cache_path`: persist the last known state there (atomically, at most every
      `cache_interval` seconds, 1 s) and start from it, marked stale, when the registry
      cannot be reached ("fail static").
    - `concurrency` (8): requests at a time while listing.
    - `on_state_change`: called with a `StateChange` for synced, stale, replica_switched
      and relisted, from the follower's thread (keep it short; its errors are logged).

    Answers are the registry's own JSON objects, shared between calls: read them, do not
    modify them.
    """

    def _begin(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="droq-registry-client", daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        async with _http(self._core.options) as http:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(Follower(self._core, http).run())
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- lookups -----------------------------------------------------------------------

    def node_for(self, component_class: str) -> dict[str, Any]:
        """The best active node for `component_class`: the same object `GET
        /api/v1/components/{class}/node` answers (`node`, `components`, `module_path`),
        skipping nodes reported down (all down: the best one). Raises `ComponentNotFound`
        or, when nothing is known yet, `RegistryUnavailable`."""
        core = self._core
        if core.state is None:
            self._wait_settled()
        return core.node_for(component_class)

    def nodes_for(self, component_class: str) -> list[dict[str, Any]]:
        """Every active candidate for the class, best first (`{"node", "module_path"}` each,
        as in `GET /api/v1/components/{class}/nodes`)."""
        if self._core.state is None:
            self._wait_settled()
        return self._core.nodes_for(component_class)

    def node(self, node_id: str) -> dict[str, Any]:
        """`{"node", "components"}` of one node of any status, as `GET /api/v1/nodes/{id}`;
        raises `NodeNotFound`."""
        if self._core.state is None:
            self._wait_settled()
        return self._core.node(node_id)

    def nodes(self, status: str = "active") -> list[dict[str, Any]]:
        """`{"metadata", "components_count"}` per node with that status (`all` for every
        one), by node_id, as in `GET /api/v1/nodes?status=...`."""
        if self._core.state is None:
            self._wait_settled()
        return self._core.nodes(status)

    def report_failure(self, node_id: str) -> None:
        """The executor could not reach `node_id`: `node_for` answers with the next
        candidate for `failure_ttl` seconds."""
        self._core.report_failure(node_id)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until the client holds a complete, current state; False on timeout."""
        return self._core.synced.wait(timeout)

    def status(self) -> Status:
        """Epoch, revision, content hash and replica of the state; stale, age, last error."""
        return self._core.status()

    def _wait_settled(self) -> None:
        if not self._core.settled.wait(self._core.options.startup_timeout):
            raise RegistryUnavailable(self._core.last_error or "no replica answered within startup_timeout")

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop following (and write the cache file one last time). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already stopped
                loop.call_soon_threadsafe(task.cancel)
        if threading.current_thread() is not self._thread:  # not from on_state_change itself
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class AsyncRegistryClient(_Configured):
    """`RegistryClient`'s methods as coroutines; follows in a task of the running loop.

    The same options as `RegistryClient`. The task starts on `async with`, or on the first
    call of any method; `on_state_change` is called in the loop. Large states are built in
    a worker thread so the loop keeps running.
    """

    def _begin(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._synced = asyncio.Event()
        self._settled = asyncio.Event()
        self._closed = False

    def _start(self) -> None:
        if self._task is not None or self._closed:
            return
        self._core.on_flags = self._mirror
        self._http = _http(self._core.options)
        follower = Follower(self._core, self._http, offload=asyncio.to_thread)
        self._task = asyncio.get_running_loop().create_task(follower.run())

    def _mirror(self) -> None:
        """The follower changed `synced`/`settled` (in this loop): wake the waiters."""
        if self._core.synced.is_set():
            self._synced.set()
        else:
            self._synced.clear()
        if self._core.settled.is_set():
            self._settled.set()

    async def _wait_settled(self) -> None:
        self._start()
        try:
            await asyncio.wait_for(self._settled.wait(), self._core.options.startup_timeout)
        except TimeoutError:
            raise RegistryUnavailable(
                self._core.last_error or "no replica answered within startup_timeout"
            ) from None

    async def node_for(self, component_class: str) -> dict[str, Any]:
        """See `RegistryClient.node_for`."""
        core = self._core
        if core.state is None:
            await self._wait_settled()
        return core.node_for(component_class)

    async def nodes_for(self, component_class: str) -> list[dict[str, Any]]:
        """See `RegistryClient.nodes_for`."""
        if self._core.state is None:
            await self._wait_settled()
        return self._core.nodes_for(component_class)

    async def node(self, node_id: str) -> dict[str, Any]:
        """See `RegistryClient.node`."""
        if self._core.state is None:
            await self._wait_settled()
        return self._core.node(node_id)

    async def nodes(self, status: str = "active") -> list[dict[str, Any]]:
        """See `RegistryClient.nodes`."""
        if self._core.state is None:
            await self._wait_settled()
        return self._core.nodes(status)

    async def report_failure(self, node_id: str) -> None:
        """See `RegistryClient.report_failure`."""
        self._core.report_failure(node_id)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until the client holds a complete, current state; False on timeout."""
        self._start()
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def status(self) -> Status:
        """See `RegistryClient.status`."""
        return self._core.status()

    async def close(self) -> None:
        """Stop following (and write the cache file one last time). Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, http = self._task, self._http
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if http is not None:
            await http.aclose()

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()
