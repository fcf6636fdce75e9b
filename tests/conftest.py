"""Shared fixtures: real folders in tmp_path, the real app, real server processes.

Nothing here fakes the file system, SQLite or HTTP. Waiting is always `wait_until`: poll
a condition until it holds or a deadline passes, never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry.app import create_app
from droq_registry.model import Result
from droq_registry.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "nodes"
SHARED = ROOT.parent / "shared" / "fixtures"
#: The real node files; the shipped copies in assets/nodes are the same four files.
REAL_NODES = SHARED / "droq-nodes" if (SHARED / "droq-nodes").is_dir() else ASSETS
#: The older node file whose components use the plain string form (a copy is kept in
#: tests/fixtures for clones without ../shared beside them).
LEGACY_NODE = next(
    path
    for path in (
        SHARED / "legacy-string-format" / "langflow-executor-node.json",
        ROOT / "tests" / "fixtures" / "legacy-string-format" / "langflow-executor-node.json",
    )
    if path.is_file()
)


#: The NODE fields a node file may leave out, with the values the registry then serves.
CORE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "source_code_location": None,
    "docker_image": None,
    "deployment_location": "local",
    "api_url": None,
    "ip_address": None,
    "status": "active",
    "priority": 0,
}


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def write_json(path: Path, value: Any) -> Path:
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2))
    return path


def node_doc(node_id: str, components: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A minimal valid node document."""
    doc: dict[str, Any] = {"node_id": node_id, "name": f"Node {node_id}"}
    doc.update(fields)
    doc["components"] = components if components is not None else {"Comp": "pkg.comp"}
    return doc


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    """An empty assets folder (`tmp_path/assets/nodes`)."""
    folder = tmp_path / "assets" / "nodes"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def real_assets(assets: Path) -> Path:
    """The assets folder holding copies of the four real node files."""
    for path in sorted(REAL_NODES.glob("*.json")):
        shutil.copy(path, assets / path.name)
    return assets


def make_settings(assets: Path, **overrides: Any) -> Settings:
    base = Settings(
        assets_dir=assets,
        db_path=assets.parent.parent / "registry.db",
        resync_seconds=0,
        reload=False,
    )
    return base.with_(**overrides)


def reconcile_now(client: TestClient, named: Iterable[str] | None = None) -> Result:
    """One pass of the live app's reconciler, run by the test on the app's writer thread:
    the only thread that may use its database connection."""
    state = client.app.state  # type: ignore[attr-defined]
    assert client.portal is not None, "the client's lifespan is running"
    return client.portal.call(state.writer.thread.call, state.registry.reconcile, named)  # type: ignore[no-any-return]


def open_client(settings: Settings) -> TestClient:
    """A TestClient whose lifespan has run and whose first load has committed."""
    client = TestClient(create_app(settings))
    client.__enter__()
    wait_until(lambda: client.get("/ready").status_code == 200)
    return client


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`droq-registry serve` as a real process on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "droq_registry", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get("/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, interval=0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def server() -> Iterator[Callable[..., ServerProcess]]:
    """`server(env, log_path)` -> a started ServerProcess; stopped after the test."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], log_path: Path, ready: bool = True) -> ServerProcess:
        proc = ServerProcess(env, log_path)
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)
