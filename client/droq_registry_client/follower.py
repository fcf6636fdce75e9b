"""The follower: list once, then follow the registry's feed; relist only when it must.

One coroutine does all of the client's network I/O and is the only writer of the state
(`Core.state`). The sync client runs it in its own thread's event loop, the async client
as a task in the caller's loop: one implementation of the protocol for both.

- A listing is `GET /api/v1/nodes?status=all` and then every node's `GET
  /api/v1/nodes/{id}`, revalidated with `If-None-Match` against the ETags already held
  (ETags are content hashes, the same on every replica), so relisting an unchanged
  registry costs one small 304 per node.
- Following is the long-poll `GET /api/v1/changes?since=R&wait=W` (with `&epoch=E` once
  the registry sends `X-Registry-Epoch`); each answer names the nodes to fetch again.
- A cursor is trusted only where it is known to mean the same history: on the process that
  gave it (no failure since), or on any replica when the answers carry the same epoch.
  Otherwise the follower relists. The registry answers a cursor of another history (another
  epoch, or a revision ahead of its own) with `410 {detail, revision, epoch, content_hash}`:
  when that content hash equals the state's own the follower takes the new cursor without
  relisting, else it relists. A registry without epochs (older than issue 12) is listed
  again after every reconnect or replica switch.
- A failure never changes the state: lookups keep answering from it, marked stale. The
  follower rotates to the next replica at once, and once every replica has failed, waits
  with exponential backoff and jitter before the next round.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import httpx

from . import cache, wire
from .core import LOG, Core
from .model import StateChangeKind
from .state import Entry, State, build

T = TypeVar("T")
#: Runs CPU-heavy work (building a large state) off the caller's event loop, or inline.
Offload = Callable[..., Awaitable[Any]]

RESYNC = "periodic resync"

Note = tuple[StateChangeKind, str]


class Failure(Exception):
    """One attempt on one replica failed; the message says where and how."""


async def inline(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


class Follower:
    """Keeps `core.state` current from the replicas in `core.options.urls`."""

    def __init__(self, core: Core, http: httpx.AsyncClient, offload: Offload = inline) -> None:
        self.core = core
        self.options = core.options
        self.http = http
        self.offload = offload
        self.current = 0  # the replica being used: an index into options.urls
        #: The replica whose feed the state's cursor is known to follow (None after a failure).
        self.session: str | None = None
        self.failures = 0  # consecutive
        self.next_resync = math.inf
        path = self.options.cache_path
        self.cache = None if path is None else cache.Writer(path, self.options.cache_interval, self._to_save)

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow until cancelled; the cache file (if any) is loaded first, flushed last."""
        writer: asyncio.Task[None] | None = None
        if self.cache is not None:
            await self._load_cache(self.cache)
            writer = asyncio.get_running_loop().create_task(self.cache.run())
        self._schedule_resync()
        try:
            while True:
                url = self.options.urls[self.current]
                try:
                    notes = await self._step(url)
                except Failure as failure:
                    await self._failed(url, failure)
                    continue
                except Exception as exc:  # noqa: BLE001 - a bug here must not stop the following for good
                    LOG.exception("unexpected error while following %s", url)
                    await self._failed(url, Failure(f"unexpected {type(exc).__name__}: {exc}"))
                    continue
                self._succeeded(url, notes)
        finally:
            # Closed: lookups still answer from the last state, which nothing confirms now.
            if self.core.state is not None:
                self.core.stale = True
            self.core.set_flags(synced=False)
            if writer is not None and self.cache is not None:
                writer.cancel()
                await self.cache.flush()

    async def _step(self, url: str) -> list[Note]:
        state = self.core.state
        if state is None:
            return await self._relist(url, "first listing")
        if self.session != url and state.epoch is None:
            why = "the cached state" if self.core.from_cache else "a new connection"
            return await self._relist(
                url, f"{why}: without X-Registry-Epoch a cursor cannot be checked against {url}'s history"
            )
        if time.monotonic() >= self.next_resync:
            return await self._relist(url, RESYNC)
        return await self._follow(url, state)

    # --- following ---------------------------------------------------------------------

    async def _follow(self, url: str, state: State) -> list[Note]:
        # Resuming (another replica, or after a failure) asks without waiting, so the
        # cursor is confirmed, or refused, at once rather than at the end of a long-poll.
        resuming = self.session != url
        wait = 0.0 if resuming else max(0.0, min(self.options.poll_wait, self.next_resync - time.monotonic()))
        response = await self._get(url, wire.CHANGES, params=wire.changes_params(state.revision, state.epoch, wait),
                                   wait=wait)
        position = self._meta(response)
        status = response.status_code
        if status == 200:
            if position.epoch != state.epoch:
                return await self._relist(url, f"{url} answers from epoch {position.epoch}, not {state.epoch}")
            changes = self._parse(wire.changes, response)
            if changes.revision < state.revision:
                return await self._relist(
                    url, f"{url}'s revision went back from {state.revision} to {changes.revision}"
                )
            put, drop, exact = await self._fetch(url, changes.node_ids, state, position.epoch, changes.revision)
            content_hash = position.content_hash if exact else None
            if put or drop:
                new = state.evolve(put, drop, position.epoch, changes.revision, content_hash)
            else:
                new = state.at(position.epoch, changes.revision, content_hash)
            self._publish(new)
            self.session = url
            return []
        if status == 410:
            # A registry still loading answers for an empty state (revision 0): its hash
            # would differ from any real state's and cost a needless relist.
            await self._ready(url)
            gone = wire.gone(response)
            same = gone.content_hash is not None and gone.content_hash == state.content_hash
            if same and gone.epoch is not None and gone.revision is not None:
                # The same content in another history (another replica, a rebuilt database):
                # take its cursor, nothing to fetch.
                self._publish(state.at(gone.epoch, gone.revision, gone.content_hash))
                self.session = url
                LOG.info(
                    "resumed on %s at revision %d of epoch %s without relisting: same content hash",
                    url,
                    gone.revision,
                    gone.epoch,
                )
                return []
            return await self._relist(url, f"{url} answered 410: {gone.detail}")
        raise Failure(wire.refusal(response))

    # --- listing -----------------------------------------------------------------------

    async def _relist(self, url: str, reason: str) -> list[Note]:
        old = self.core.state
        await self._ready(url)
        response = await self._get(url, wire.NODES, params={"status": "all"})
        if response.status_code != 200:
            raise Failure(wire.refusal(response))
        position = self._meta(response)
        ids = self._parse(wire.node_ids, response)
        if position.revision == 0 and not ids:
            await self._ready(url)  # empty because it is empty, or because it restarted meanwhile?
        if old is not None and position.content_hash is not None and position.content_hash == old.content_hash:
            new, differed = old.at(position.epoch, position.revision, position.content_hash), 0
        else:
            entries, exact = await self._fetch_all(url, ids, old, position.epoch, position.revision)
            content_hash = position.content_hash if exact else None
            new = await self.offload(build, entries, position.epoch, position.revision, content_hash)
            differed = 0 if old is None else old.differences(new)
        self._publish(new)
        self.session = url
        self._schedule_resync()
        if old is None or (reason == RESYNC and not differed):
            LOG.debug("listed %s at revision %d: %d nodes (%s)", url, new.revision, len(new.nodes), reason)
            return []
        nodes = "node" if differed == 1 else "nodes"
        return [("relisted", f"listed {url} again at revision {new.revision} ({reason}); {differed} {nodes} differed")]

    async def _ready(self, url: str) -> None:
        """A registry that has not committed its first load serves an empty revision 0:
        never take that for its state (`/ready` answers 503 until then)."""
        response = await self._get(url, wire.READY)
        if response.status_code == 503:
            raise Failure(f"{url} is not ready: {wire.detail_of(response)}")

    async def _fetch(
        self, url: str, node_ids: Iterable[str], state: State, epoch: str | None, revision: int
    ) -> tuple[list[Entry], list[str], bool]:
        """Fetch the named nodes again: (changed or new entries, removed ids, all at `revision`)."""
        results = await self._details(url, list(node_ids), state, epoch, revision)
        put = [e for _, e, _ in results if e is not None and e is not state.nodes.get(e.node_id)]
        drop = [node_id for node_id, e, _ in results if e is None and node_id in state.nodes]
        return put, drop, all(r == revision for _, _, r in results)

    async def _fetch_all(
        self, url: str, node_ids: list[str], old: State | None, epoch: str | None, revision: int
    ) -> tuple[list[Entry], bool]:
        results = await self._details(url, node_ids, old, epoch, revision)
        return [e for _, e, _ in results if e is not None], all(r == revision for _, _, r in results)

    async def _details(
        self, url: str, node_ids: list[str], old: State | None, epoch: str | None, floor: int
    ) -> list[tuple[str, Entry | None, int]]:
        """Each node's entry (None if gone) and the revision it was answered at.

        At most `concurrency` requests at a time. Every answer must come from the same
        history as the listing or change list that named the node: same epoch, revision
        not below `floor`."""
        results: list[tuple[str, Entry | None, int]] = []
        pending = iter(node_ids)

        async def worker() -> None:
            for node_id in pending:
                results.append(await self._detail(url, node_id, old, epoch, floor))

        workers = min(self.options.concurrency, len(node_ids))
        if workers <= 1:
            await worker()
            return results
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except BaseExceptionGroup as errors:
            failure = next((e for e in errors.exceptions if isinstance(e, Failure)), None)
            if failure is None:
                raise
            raise failure from None
        return results

    async def _detail(
        self, url: str, node_id: str, old: State | None, epoch: str | None, floor: int
    ) -> tuple[str, Entry | None, int]:
        known = None if old is None else old.nodes.get(node_id)
        headers = {"if-none-match": known.etag} if known is not None and known.etag else None
        response = await self._get(url, wire.detail_path(node_id), headers=headers)
        position = self._meta(response)
        if position.epoch != epoch or position.revision < floor:
            raise Failure(
                f"{url} answered node {node_id!r} from another history (epoch {position.epoch}, revision "
                f"{position.revision}) than the one that named it (epoch {epoch}, revision {floor})"
            )
        status = response.status_code
        if status == 200:
            if known is not None and known.etag is not None and response.headers.get("etag") == known.etag:
                return node_id, known, position.revision  # the same content: keep the object (and its dict)
            return node_id, self._parse(wire.entry, response, node_id), position.revision
        if status == 304 and known is not None:
            return node_id, known, position.revision
        if status == 404:
            return node_id, None, position.revision
        raise Failure(wire.refusal(response))

    # --- HTTP ----------------------------------------------------------------------------

    async def _get(
        self,
        url: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        wait: float = 0.0,
    ) -> httpx.Response:
        """One request. `timeout` bounds the connect and every read (after the `wait` of a
        long-poll); the whole answer must also arrive within `wait + 2 x timeout`, so a
        replica that trickles its answer a byte at a time is given up like a frozen one."""
        timeout = self.options.timeout
        whole = wait + 2 * timeout
        limits = httpx.Timeout(timeout, read=wait + timeout)
        try:
            async with asyncio.timeout(whole):
                try:
                    response = await self.http.get(url + path, params=params, headers=headers, timeout=limits)
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # A kept-alive connection the server closed just as it was reused: the
                    # request never arrived. A GET is safe to send again, once, on a new one.
                    LOG.debug("GET %s%s again after %s: %s", url, path, type(exc).__name__, _why(exc))
                    response = await self.http.get(url + path, params=params, headers=headers, timeout=limits)
        except httpx.HTTPError as exc:
            raise Failure(f"GET {_url_of(exc, url + path)}: {type(exc).__name__}: {_why(exc)}") from None
        except TimeoutError:
            bound = f"wait {wait:g} s + 2 x timeout" if wait else "2 x timeout"
            where = httpx.URL(url + path, params=params)
            raise Failure(f"GET {where}: the whole answer took longer than {whole:g} s ({bound})") from None
        if response.status_code in (401, 403):
            raise Failure(f"{wire.refusal(response)}; check the token")
        return response

    @staticmethod
    def _meta(response: httpx.Response) -> wire.Meta:
        try:
            return wire.meta(response)
        except wire.ProtocolError as exc:
            raise Failure(str(exc)) from None

    @staticmethod
    def _parse(parse: Callable[..., T], response: httpx.Response, *args: Any) -> T:
        try:
            return parse(response, *args)
        except wire.ProtocolError as exc:
            raise Failure(str(exc)) from None

    # --- outcomes ------------------------------------------------------------------------

    def _publish(self, new: State) -> None:
        old = self.core.state
        self.core.state = new
        if self.cache is not None and (old is None or new.nodes is not old.nodes or new.epoch != old.epoch):
            self.cache.changed()

    def _succeeded(self, url: str, notes: list[Note]) -> None:
        core = self.core
        previous = core.url
        self.failures = 0
        core.url = url
        core.confirmed_at = time.time()
        if previous is not None and previous != url:
            core.emit("replica_switched", f"now following {url} (was {previous})", previous_url=previous)
        for kind, detail in notes:
            core.emit(kind, detail)
        if not core.synced.is_set():
            core.stale = False
            core.from_cache = False
            core.set_flags(synced=True, settled=True)
            state = core.state
            assert state is not None
            core.emit("synced", f"synced with {url} at revision {state.revision} ({len(state.nodes)} nodes)")

    async def _failed(self, url: str, failure: Failure) -> None:
        core = self.core
        urls = self.options.urls
        self.session = None
        self.failures += 1
        core.last_error = str(failure)
        core.set_flags(synced=False, settled=self.failures >= len(urls))
        state = core.state
        if state is not None and not core.stale:
            core.stale = True
            core.emit(
                "stale",
                f"{failure}; answering from the last known state (revision {state.revision}, "
                f"{len(state.nodes)} nodes) until a replica answers",
            )
        else:
            LOG.debug("attempt %d failed: %s", self.failures, failure)
        self.current = (self.current + 1) % len(urls)
        if self.failures % len(urls):
            return  # try the next replica at once
        rounds = self.failures // len(urls)
        delay = min(self.options.backoff_max, self.options.backoff_initial * 2 ** min(rounds - 1, 30))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _schedule_resync(self) -> None:
        interval = self.options.resync_interval
        self.next_resync = time.monotonic() + interval if interval > 0 else math.inf

    # --- the cache file ----------------------------------------------------------------

    async def _load_cache(self, writer: cache.Writer) -> None:
        try:
            cached = await asyncio.to_thread(cache.load, writer.path)
        except cache.CacheError as exc:
            LOG.warning("not using the cache file: %s", exc)
            return
        if cached is None:
            return
        core = self.core
        core.state = cached.state
        writer.holds(cached.state)
        core.url = cached.url
        core.confirmed_at = cached.confirmed_at
        core.stale = True
        core.from_cache = True
        core.set_flags(settled=True)
        age = "" if cached.confirmed_at is None else f", confirmed {time.time() - cached.confirmed_at:.0f} s ago"
        core.emit(
            "stale",
            f"answering from the cache file {writer.path} (revision {cached.state.revision}, "
            f"{len(cached.state.nodes)} nodes{age}) until a replica answers",
        )

    def _to_save(self) -> tuple[State | None, str | None, float | None]:
        return self.core.state, self.core.url, self.core.confirmed_at


def _url_of(exc: httpx.HTTPError, fallback: str) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # an error raised before the request was made
        return fallback


def _why(exc: BaseException) -> str:
    """The first message along the exception's causes (httpx's own are often empty)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen) if seen is exc else f"{type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return "no detail"
