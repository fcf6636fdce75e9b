"""create_app(settings): the Starlette app and the lifespan that owns the store and watcher."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from . import api, explore, watch
from .auth import TokenAuth
from .feed import Feed
from .metrics import Metrics, MetricsMiddleware
from .nodefile import Schema
from .reconcile import Registry, Result
from .settings import Settings
from .store import Store

log = logging.getLogger("droq_registry")

#: The dashboard: plain HTML, CSS and JavaScript shipped in the package, no build step.
UI_DIR = Path(__file__).resolve().parent / "ui"


def create_app(settings: Settings) -> Starlette:
    """The service. Nothing is opened until the lifespan starts."""
    schema = Schema.load(settings.schema_path)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.api_token is None:
            log.warning("REGISTRY_API_TOKEN is not set: /api/v1 and /metrics are open to anyone who can reach them")
        store = Store.open(settings.db_path)
        try:
            registry = Registry(settings, store, schema)
            status = watch.WatchStatus(state="starting" if settings.reload else "off")
            feed = Feed(lambda: registry.revision)
            app.state.registry = registry
            app.state.watch_status = status
            app.state.feed = feed

            async def on_commit(result: Result) -> None:
                feed.notify()

            reconciler = watch.Reconciler(registry, on_commit, metrics.reconciled)
            log.info(
                "serving revision %d from %s; loading %s (reload=%s)",
                registry.revision, settings.db_path, settings.assets_dir, settings.reload,
            )
            stopping = anyio.Event()
            async with anyio.create_task_group() as tg:
                if settings.reload:
                    tg.start_soon(
                        watch.run_watcher,
                        reconciler,
                        status,
                        settings.resync_seconds,
                        settings.watch_step_ms,
                        settings.watch_debounce_ms,
                        stopping,
                    )
                else:
                    tg.start_soon(_load_only, reconciler, status)
                try:
                    yield
                finally:
                    # Stop in order: no new reconcile, the one in progress gives up before
                    # writing (or commits), waiters and streams end, then the tasks go.
                    stopping.set()
                    registry.stop()
                    feed.close()
                    tg.cancel_scope.cancel()
            status.state = "stopped"
        finally:
            store.close()

    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]
    if settings.api_token is not None:
        middleware.append(Middleware(TokenAuth, token=settings.api_token))
    routes = [
        *api.routes(),
        *explore.routes(),
        Mount("/ui", UIFiles(directory=UI_DIR, html=True), name="ui"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: api.http_error},
    )
    app.state.metrics = metrics
    app.state.auth = settings.api_token is not None
    metrics.watch_state(
        lambda: api.state_counts(app.state.registry, app.state.watch_status),
        lambda: app.state.watch_status.restarts,
    )
    return app


class UIFiles(StaticFiles):
    """The dashboard's files, with a policy that lets the page load nothing from elsewhere."""

    POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["content-security-policy"] = self.POLICY
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-cache"
        return response


async def _load_only(reconciler: watch.Reconciler, status: watch.WatchStatus) -> None:
    await watch.load_once(reconciler, status)
    status.state = "off"
