"""Fixtures for the client's tests: real registry processes on real node files.

`registry(...)` starts the project's own server (`python -m droq_registry serve`) on a
free port of 127.0.0.1, with its folder and database in tmp_path; it can be killed,
stopped (SIGSTOP), continued and restarted on the same port, with or without its
database. `make_client(kind, urls, ...)` gives a sync `RegistryClient` or an
`AsyncRegistryClient` driven from its own event-loop thread behind the same blocking
interface, so each behaviour is tested on both. Waiting is `wait_until` (bounded polling).

The server runs with the interpreter in DROQ_REGISTRY_PYTHON when set (so the client can
be tested on another Python than the server's), else with this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from droq_registry_client import AsyncRegistryClient, RegistryClient, StateChange

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHARED = ROOT.parent / "shared" / "fixtures" / "droq-nodes"
#: The real node files (the shipped copies in assets/nodes are the same four files).
REAL_NODES = SHARED if SHARED.is_dir() else ROOT / "assets" / "nodes"
SERVER_PYTHON = os.environ.get("DROQ_REGISTRY_PYTHON") or sys.executable
REQUESTS = re.compile(
    r'droq_registry_http_requests_total\{method="GET",route="(?P<route>[^"]+)",status="(?P<status>\d+)"\} '
    r"(?P<count>[0-9.e+]+)"
)


def unavailable(reason: str) -> None:
    """What a test cannot have here (root's tmpfs, the git history): skipped on a
    developer's machine, a failure in CI (`.ci/run` sets CI), where it must run."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def requests_since(reg: Registry, before: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """The requests `reg` answered since `before` (a `reg.requests()`), without zeros."""
    now = reg.requests()
    return {key: count - before.get(key, 0) for key, count in now.items() if count != before.get(key, 0)}


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_doc(node_id: str, components: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A minimal valid node document."""
    doc: dict[str, Any] = {"node_id": node_id, "name": f"Node {node_id}", **fields}
    doc["components"] = components if components is not None else {"Comp": "pkg.comp"}
    return doc


def write_node(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    """Write a node file the way editors and config tools do: a temporary file renamed over."""
    path = folder / name
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


class Registry:
    """One `droq-registry serve` process; `url` stays the same across restarts."""

    def __init__(self, folder: Path, db_path: Path, log_path: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.db_path = db_path
        self.log_path = log_path
        self.env = env  # laid over the service's settings (PYTHONPATH runs another version of it)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10, headers=self._auth())

    def _auth(self) -> dict[str, str]:
        token = self.env.get("REGISTRY_API_TOKEN")
        return {"authorization": f"Bearer {token}"} if token else {}

    def start(self, ready: bool = True) -> Registry:
        #: The requests this object made itself to the new process (not the client's).
        self.own: dict[tuple[str, str], int] = {}
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("REGISTRY_") and key not in ("HOST", "PORT", "RELOAD", "LOG_LEVEL")
        }
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            LOG_LEVEL="warning",
            REGISTRY_ASSETS_DIR=str(self.folder),
            REGISTRY_DB_PATH=str(self.db_path),
            REGISTRY_RESYNC_SECONDS="0",
        )
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SERVER_PYTHON, "-m", "droq_registry", "serve"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"registry exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status = self.http.get("/ready").status_code
            except httpx.TransportError:
                return False
            key = ("/ready", str(status))
            self.own[key] = self.own.get(key, 0) + 1
            return status == 200

        wait_until(ready, timeout=timeout, interval=0.05)
        # On a shared machine another process can take the port while ours is down.
        served = self.http.get("/health").json().get("assets_dir")
        if served != str(self.folder):
            raise AssertionError(f"{self.url} is another registry's (it serves {served}): the port was taken")

    def kill(self) -> None:
        """SIGKILL and wait: the registry is gone, its port refuses connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait: a graceful stop (pending long-polls are answered first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def rebuild(self) -> None:
        """Kill it, delete its database (a rescheduled pod, a lost volume), start it again."""
        self.kill()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        self.start()

    def revision(self) -> int:
        return int(self.http.get("/api/v1/nodes?status=all").headers["x-registry-revision"])

    def position(self) -> tuple[int, str, str]:
        """(revision, epoch, content hash) as `/health` reports them."""
        health = self.get("/health")
        return health["revision"], health["epoch"], health["content_hash"]

    def requests(self) -> dict[tuple[str, str], int]:
        """{(route template, status): count} of the requests this process has answered but
        this object's own, from the process's /metrics (the counters start at 0 with every
        process)."""
        counts: dict[tuple[str, str], int] = {}
        for line in self.http.get("/metrics").text.splitlines():
            found = REQUESTS.fullmatch(line)
            if found and found["route"] not in ("/metrics", "/health"):
                key = (found["route"], found["status"])
                counts[key] = int(float(found["count"])) - self.own.get(key, 0)
        return {key: count for key, count in counts.items() if count}

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process does not act on SIGKILL until continued
        self.kill()
        self.http.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """`registry(folder=None, name="a", real=True, env=None)` -> a started Registry.

    Without `folder`, a new folder `tmp_path/<name>/nodes` holding copies of the real
    node files (or nothing, with `real=False`)."""
    started: list[Registry] = []

    def start(folder: Path | None = None, name: str = "a", real: bool = True,
              env: dict[str, str] | None = None) -> Registry:
        if folder is None:
            folder = tmp_path / name / "nodes"
            folder.mkdir(parents=True)
            if real:
                for path in sorted(REAL_NODES.glob("*.json")):
                    (folder / path.name).write_bytes(path.read_bytes())
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        reg = Registry(folder, home / "registry.db", home / "server.log", env or {})
        started.append(reg)
        return reg.start()

    yield start
    for reg in started:
        reg.close()


@pytest.fixture(scope="session")
def before_epochs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that runs the registry as it was before issue 12 (no epochs, no
    content hash, 400 for a cursor ahead): its code from this repository's history, on
    PYTHONPATH. Pass it as `registry(env=...)`."""
    git = ["git", "-C", str(ROOT)]
    found = subprocess.run(
        [*git, "log", "--format=%H", "--reverse", "-S", "x-registry-epoch", "--", "daemon/droq_registry/answers.py"],
        capture_output=True, text=True, check=False,
    )
    if found.returncode != 0 or not found.stdout.split():
        unavailable(f"no git history of the registry here: {found.stderr.strip()}")
    before = f"{found.stdout.split()[0]}^"
    code = tmp_path_factory.mktemp("registry-before-epochs")
    archive = subprocess.run([*git, "archive", before, "daemon", "config"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    return {"PYTHONPATH": str(code / "daemon")}


class AsyncDriver:
    """An AsyncRegistryClient in an event loop of its own thread, called like the sync one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="async-driver", daemon=True)
        self.thread.start()

        async def make() -> AsyncRegistryClient:
            client = AsyncRegistryClient(*args, **kwargs)
            await client.__aenter__()
            return client

        self.client = self._run(make())

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=60)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def close(self) -> None:
        self._run(self.client.close())

    def shutdown(self) -> None:
        """Close the client and stop the loop (after the test)."""
        if self.loop.is_closed():
            return
        self.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


Client = Any  # RegistryClient or AsyncDriver: the same methods, blocking


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Events:
    """Collects the StateChanges a client reports (from its follower's thread or loop)."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self._lock = threading.Lock()

    def __call__(self, change: StateChange) -> None:
        with self._lock:
            self.changes.append(change)

    def kinds(self) -> list[str]:
        with self._lock:
            return [c.kind for c in self.changes]


@pytest.fixture
def make_client(kind: str) -> Iterator[Callable[..., Client]]:
    """`make_client(urls, **options)` -> a started client of the test's kind; closed after."""
    made: list[Any] = []

    def make(urls: Any, **options: Any) -> Client:
        client: Any = RegistryClient(urls, **options) if kind == "sync" else AsyncDriver(urls, **options)
        made.append(client)
        return client

    yield make
    for client in reversed(made):
        if isinstance(client, AsyncDriver):
            client.shutdown()
        else:
            client.close()


class ProxyProcess:
    """tests/registry_proxy.py as a real process: a reverse proxy in front of registries
    (502 while its upstream cannot be reached); `url` stays the same across switches."""

    def __init__(self, upstream: str, log_path: Path) -> None:
        self.upstream = upstream
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> ProxyProcess:
        argv = [SERVER_PYTHON, str(HERE / "registry_proxy.py"), "--port", str(self.port), "--upstream", self.upstream]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited:\n{self.log_path.read_text()}")
            try:
                return self.http.get("/_proxy/upstream").json() == {"upstream": self.upstream}
            except httpx.TransportError:
                return False

        wait_until(up, interval=0.05)
        return self

    def switch(self, upstream: str) -> None:
        """Send the next requests to another registry, keeping the client's connection."""
        self.upstream = upstream
        assert self.http.post("/_proxy/upstream", content=upstream).status_code == 200

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self.http.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """`proxy(upstream_url)` -> a started ProxyProcess; killed after the test."""
    started: list[ProxyProcess] = []

    def start(upstream: str) -> ProxyProcess:
        made = ProxyProcess(upstream, tmp_path / f"proxy-{len(started)}.log")
        started.append(made)
        return made.start()

    yield start
    for made in started:
        made.close()
