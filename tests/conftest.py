"""Shared fixtures: real folders in tmp_path, the real app, real server processes, raw sockets.

Nothing here fakes the file system, SQLite or HTTP. The helpers these fixtures use, and
that the tests import, live in tests/support/ (one module per concern); waiting is always
`support.polling.wait_until`, never a fixed sleep.
"""

from __future__ import annotations

import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from support.files import copy_real_nodes
from support.http import make_settings, open_client, refuse_urls
from support.server import ServerProcess


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    """An empty assets folder (`tmp_path/assets/nodes`)."""
    folder = tmp_path / "assets" / "nodes"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def real_assets(assets: Path) -> Path:
    """The assets folder holding copies of the four real node files."""
    return copy_real_nodes(assets)


@pytest.fixture
def client_for() -> Iterator[Callable[..., TestClient]]:
    """`client_for(assets, **settings)` -> a ready TestClient; closed after the test."""
    opened: list[TestClient] = []

    def make(assets: Path, **overrides: Any) -> TestClient:
        client = open_client(make_settings(assets, **overrides))
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def server() -> Iterator[Callable[..., ServerProcess]]:
    """`server(env, log_path, ready=True, **options)` -> a started ServerProcess (options as
    ServerProcess takes them); killed after the test if it still runs."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], log_path: Path, ready: bool = True, **options: Any) -> ServerProcess:
        proc = ServerProcess(env, log_path, **options)
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """The test's raw sockets, closed after it whatever happens."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and record) any URL fetch: the node schema must resolve locally."""
    attempts: list[str] = []
    monkeypatch.setattr(urllib.request, "urlopen", refuse_urls(attempts))
    return attempts
