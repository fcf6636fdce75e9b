"""Prometheus metrics with the official client: state read at scrape time, events counted.

State (revision, epoch and content hash, nodes, components, files, files in error, ready,
watcher up and restarts) is read from the current snapshot when Prometheus scrapes, as the
client's custom collectors are meant to be used; events (reconciles, HTTP requests) are
counted where they happen. Each app has
its own `CollectorRegistry`, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .dbfile import StorageFault

PREFIX = "droq_registry"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class StateCollector(Collector):
    """Gauges derived from the served state, computed on each scrape."""

    def __init__(
        self,
        state: Callable[[], tuple[dict[str, float], dict[str, str]]],
        restarts: Callable[[], int],
    ) -> None:
        self._state = state
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        # One call, one read of the snapshot: the gauges, epoch and content hash of one state.
        state, position = self._state()
        helps = {
            "revision": "Revision of the served registry state.",
            "nodes": "Nodes served (any status).",
            "components": "Component classes declared by served nodes.",
            "files": "Node files the registry knows.",
            "files_in_error": "Node files refused (in error or in conflict).",
            "ready": "1 once the first load has committed.",
            "watcher_up": "1 while the file watcher runs, 0 while polling, waiting or off.",
        }
        for name, help_text in helps.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=state[name])
        yield CounterMetricFamily(
            f"{PREFIX}_watcher_restarts", "Times the file watcher failed and was started again.",
            value=self._restarts(),
        )
        # Equal content hashes on every replica: they have converged (whatever their revisions).
        yield InfoMetricFamily(
            f"{PREFIX}_state", "The served state's history (epoch) and content hash.", value=position,
        )


class Metrics:
    """The metrics of one service instance."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series are noise here
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            f"{PREFIX}_reconciles", "Reconcile passes by result (changed, unchanged, failed).",
            ["result"], registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds", "Time one reconcile pass took.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.requests = Counter(
            f"{PREFIX}_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=self.registry,
        )
        for result in ("changed", "unchanged", "failed"):
            self.reconciles.labels(result)
        self.storage_failures = Counter(
            f"{PREFIX}_storage_failures", "Failed attempts to open or write the database, by cause.",
            ["cause"], registry=self.registry,
        )
        for cause in StorageFault.CAUSES:
            self.storage_failures.labels(cause)
        # prometheus-client's labels() costs a lock and a dict lookup; cache the children
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def watch_state(
        self,
        state: Callable[[], tuple[dict[str, float], dict[str, str]]],
        restarts: Callable[[], int],
    ) -> None:
        """Read `state` at each scrape: the gauges of the served state and its position
        (epoch, content hash), both from one read of the snapshot."""
        self.registry.register(StateCollector(state, restarts))

    def reconciled(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result).inc()
        self.reconcile_seconds.observe(seconds)

    def storage_failed(self, cause: str) -> None:
        self.storage_failures.labels(cause if cause in StorageFault.CAUSES else "other").inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:  # a client can send any token as a method: keep labels bounded
            method = "OTHER"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route),
            )
            if len(self._children) < 1000:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path: ids are unbounded).

    The template is the matched Starlette route's, which `routes.TABLE` declares; the fast
    path counts its answers with the same table templates (`app.RegistryApp`)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request(template, scope["method"], status, time.perf_counter() - started)
