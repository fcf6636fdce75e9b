"""create_app(settings): the Starlette app, and the lifespan that starts the writer thread,
makes it take over the database, starts the watcher, and stops them in order.

The app serves the route table (`routes.py`); `RegistryApp` lets the fast path
(`hotpath.py`) answer the hot routes first, with the answers Starlette's handlers send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from . import answers, api, changes, dbfile, openapi, routes, watch
from .auth import TokenAuth
from .feed import Feed
from .hotpath import HotPath
from .metrics import Metrics, MetricsMiddleware
from .model import Result
from .nodefile import Schema
from .offload import Offload
from .reconcile import Reconciler
from .settings import Settings
from .store import check_path
from .writer import Writer, WriterThread

log = logging.getLogger("droq_registry")
_clock = time.perf_counter

#: How long start-up waits for the database to be taken over before it serves anyway.
TAKE_OVER_WAIT_SECONDS = 30.0


def create_app(settings: Settings, after_commit: Callable[[], None] = lambda: None) -> RegistryApp:
    """The service. Nothing is opened until the lifespan starts. `after_commit` is the
    process's policy after each commit, run on the writer thread (see server.py)."""
    schema = Schema.load(settings.schema_path)
    metrics = Metrics()
    hot = HotPath(routes.TABLE, settings.api_token)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.api_token is None:
            log.warning("REGISTRY_API_TOKEN is not set: /api/v1 and /metrics are open to anyone who can reach them")
        check_path(settings.db_path, settings.assets_dir)  # never harm what is not ours
        lock = dbfile.WriterLock(settings.db_file)
        # Until this service holds the database's writer lock, it serves nothing (revision
        # 0, not ready): the state is loaded only once it is the one writer.
        registry = Reconciler(settings, None, schema)
        thread = WriterThread()
        try:
            status = watch.WatchStatus(state="starting" if settings.reload else "off")
            feed = Feed(lambda: registry.revision)
            app.state.registry = registry
            app.state.watch_status = status
            app.state.feed = feed
            hot.registry, hot.feed = registry, feed  # the fast path answers from now on

            async def on_commit(result: Result) -> None:
                feed.notify()

            writer = Writer(registry, thread, on_commit, metrics.reconciled, metrics.storage_failed, after_commit)
            app.state.writer = writer

            taken = anyio.Event()

            async def write_and_watch() -> None:
                await writer.take_over(lock)
                taken.set()
                feed.notify()  # the loaded revision is news to anyone who asked meanwhile
                log.info(
                    "serving revision %d from %s; loading %s (reload=%s)",
                    registry.revision, settings.db_path, settings.assets_dir, settings.reload,
                )
                tg.start_soon(writer.retry_failed)
                if settings.reload:
                    await watch.run_watcher(
                        writer,
                        status,
                        settings.resync_seconds,
                        settings.watch_step_ms,
                        settings.watch_debounce_ms,
                        stopping,
                    )
                else:
                    await _load_only(writer, status)

            stopping = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(write_and_watch)
                tg.start_soon(feed.keep_alive, changes.KEEPALIVE_SECONDS)  # one timer for every stream
                # Serve once the committed state is loaded, so the first answer already carries
                # the database's revision (a follower's cursor from before a restart is not
                # "ahead" of a revision 0 that was only not loaded yet). Only a service that
                # must wait (another registry holds the database, or it cannot be opened)
                # starts serving before that: not ready, saying why.
                with anyio.move_on_after(TAKE_OVER_WAIT_SECONDS):
                    while not taken.is_set() and registry.status.database not in ("waiting", "failing"):
                        await anyio.sleep(0.01)
                try:
                    yield
                finally:
                    # Stop in order: no new reconcile, the one in progress gives up before
                    # writing (or commits), waiters and streams end, then the tasks go.
                    stopping.set()
                    hot.registry = hot.feed = None
                    registry.stop()
                    feed.close()
                    tg.cancel_scope.cancel()
            status.state = "stopped"
        finally:
            with anyio.CancelScope(shield=True):
                # On the writer thread, after any step still running there; then it ends.
                await thread.call(registry.close)
                await thread.stop()
            lock.release()  # after the close: the next writer finds the database complete

    middleware = [Middleware(MetricsMiddleware, metrics=metrics), Middleware(NamingTheState)]
    if settings.api_token is not None:
        middleware.append(Middleware(TokenAuth, token=settings.api_token))
    app = RegistryApp(
        hot,
        metrics,
        routes=routes.starlette_routes(),
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: api.http_error, Exception: api.server_error},
    )
    app.state.metrics = metrics
    app.state.offload = Offload()
    auth = settings.api_token is not None
    app.state.contract = lambda: orjson.dumps(openapi.build(routes.TABLE, auth=auth))

    def state() -> tuple[dict[str, float], dict[str, str]]:
        registry = app.state.registry
        snap = registry.snapshot  # once: the writer thread may publish the next one meanwhile
        counts = api.state_counts(snap, registry, app.state.watch_status)
        return counts, {"epoch": snap.epoch, "content_hash": snap.content_hash}

    metrics.watch_state(state, lambda: app.state.watch_status.restarts)
    return app


class RegistryApp(Starlette):
    """Starlette, with the hot read endpoints answered first by `hotpath.HotPath`.

    Most hot reads never get here: the protocol answers them from the same `HotPath`
    before any ASGI work (`direct.DirectReads.answer_here`). Those it leaves to the
    app cost a few string checks, a dictionary hit and two `send` calls here, then are
    counted in the metrics as `MetricsMiddleware` would count them; every other request
    goes through Starlette's middleware and routes as before.
    """

    def __init__(self, hot: HotPath, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot = hot
        self._answer: Callable[[dict[str, Any]], Any] = hot.answer
        self._count = metrics.request

    def stop_following(self) -> None:
        """The server is stopping (before it waits for open requests): pending long-polls
        answer now with what they have, and event streams end. Idempotent."""
        feed = getattr(self.state, "feed", None)
        if feed is not None:
            feed.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            started = _clock()
            follower = self.hot.follower(scope)
            if follower is not None:
                # A long-poll or an event stream, held open in its own small coroutine.
                scope["app"] = self
                status = 500
                try:
                    status = await follower.serve(scope, receive, send)
                finally:
                    follower.let_go(scope)
                    self._count(scope["path"], scope["method"], status, _clock() - started)
                return
            try:
                answer = self._answer(scope)
            except Exception:  # a bug here must not cost the answer: Starlette gives it
                log.exception("the fast path failed on %s %s; answering through Starlette",
                              scope["method"], scope["path"])
                answer = None
            if answer is not None:
                status, headers, body, route = answer
                try:
                    # fresh messages: whoever wraps this app may change them in place
                    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
                    await send({"type": "http.response.body", "body": body})
                finally:
                    self._count(route, scope["method"], status, _clock() - started)
                return
        await super().__call__(scope, receive, send)


class NamingTheState:
    """Middleware: an answer under /api/ that has no state headers gets them
    (`answers.snapshot_headers`): the few Starlette's router makes itself, past `answers.py`
    (its redirect of a trailing slash), so every answer under /api/ says where it stands."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                registry = getattr(state, "registry", None)
                if registry is not None and not any(name == answers.REVISION for name, _ in headers):
                    message = {**message, "headers": [*answers.snapshot_headers(registry.snapshot), *headers]}
            await send(message)

        await self.app(scope, receive, sending)


async def _load_only(writer: Writer, status: watch.WatchStatus) -> None:
    await watch.load_once(writer, status)
    status.state = "off"
