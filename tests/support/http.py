"""The app in a TestClient, and reading answers from any client of the service.

The readers (`revision`, `sources`, `metric`) take anything with `get(path)` that returns
an httpx-style response: a TestClient, an `httpx.Client` with a base URL, a `ServerProcess`.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.model import Result
from droq_registry.settings import Settings

from .polling import wait_until


class Getter(Protocol):
    def get(self, path: str) -> httpx.Response: ...


def make_settings(assets: Path, **overrides: Any) -> Settings:
    """Settings of an app on `assets` with a database beside it, no rescan, no watcher."""
    base = Settings(
        assets_dir=assets,
        db_path=assets.parent.parent / "registry.db",
        resync_seconds=0,
        reload=False,
    )
    return base.with_(**overrides)


def open_client(settings: Settings) -> TestClient:
    """A TestClient whose lifespan has run and whose first load has committed."""
    client = TestClient(create_app(settings))
    client.__enter__()
    wait_until(lambda: client.get("/ready").status_code == 200)
    return client


def reconcile_now(client: TestClient, named: Iterable[str] | None = None) -> Result:
    """One pass of the live app's reconciler, run by the test on the app's writer thread:
    the only thread that may use its database connection."""
    state = client.app.state  # type: ignore[attr-defined]
    assert client.portal is not None, "the client's lifespan is running"
    return client.portal.call(state.writer.thread.call, state.registry.reconcile, named)  # type: ignore[no-any-return]


def revision(client: Getter) -> int:
    """The revision `/ready` reports (which its X-Registry-Revision header must agree with)."""
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.headers["x-registry-revision"] == str(response.json()["revision"])
    return int(response.json()["revision"])


def sources(client: Getter) -> dict[str, dict[str, Any]]:
    """/api/v1/sources as {path: row}."""
    return {row["path"]: row for row in client.get("/api/v1/sources").json()["sources"]}


def metric(client: Getter, sample: str) -> float:
    """The value of the one /metrics sample named `sample` (labels included, as written:
    `droq_registry_reconciles_total{result="failed"}`)."""
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(sample + " ")]
    assert len(lines) == 1, (sample, lines)
    return float(lines[0].rsplit(" ", 1)[1])


def closed_for(client: Getter, reason: str) -> float:
    """How many connections the service closed for `reason` (head_timeout, idle_evicted,
    follower_released, ...), as its /metrics counts them."""
    return metric(client, f'droq_registry_connections_closed_total{{reason="{reason}"}}')


def refuse_urls(attempts: list[str]) -> Any:
    """A stand-in for `urllib.request.urlopen` that records each URL and refuses it."""

    def refuse(request: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("network access is not allowed in this test")

    return refuse

