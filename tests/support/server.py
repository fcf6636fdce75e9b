"""`droq-registry serve` (or any server command) as a real process on 127.0.0.1.

The tests' `server` fixture and the benchmarks in bench/ start every server through
`ServerProcess`, so both see the service the same way: a free port, an environment built
from `server_env`, the log in a file, readiness polled with a deadline, a stop by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from .files import ROOT, copy_real_nodes, node_doc, write_json
from .polling import wait_until

#: Generous bounds for what a server does in about a second (slow machines, no asserts on time).
DEADLINE = 20.0

#: The settings the service reads from its environment besides the REGISTRY_* ones.
SERVICE_SETTINGS = ("HOST", "PORT", "LOG_LEVEL", "LOG_FORMAT", "RELOAD")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outside_env() -> dict[str, str]:
    """The caller's environment without any of the service's settings."""
    return {k: v for k, v in os.environ.items() if k not in SERVICE_SETTINGS and not k.startswith("REGISTRY_")}


def server_env(assets: Path, db: Path, **extra: str) -> dict[str, str]:
    """The settings of a service on `assets` with the database `db`: no periodic rescan
    (a test or benchmark says when it wants one), and `extra` on top."""
    return {
        "REGISTRY_ASSETS_DIR": str(assets),
        "REGISTRY_DB_PATH": str(db),
        "REGISTRY_RESYNC_SECONDS": "0",
        **extra,
    }


def text_env(assets: Path, db: Path, **extra: str) -> dict[str, str]:
    """`server_env` with the log written as text lines, as an operator reads it."""
    return server_env(assets, db, LOG_FORMAT="text", **extra)


class ServerProcess:
    """A server as a real process on a free port of 127.0.0.1.

    `env` is laid over the caller's environment (or, with `clean`, over `outside_env()`).
    `argv` is the server command (default `python -m droq_registry serve`), run through
    `prefix` (a command that drops privileges, pins CPUs, ...); `popen` goes to Popen.
    `port` is a free one unless given (a restart on the same address passes the old one).
    `started_at` is the `time.perf_counter()` just before the process was spawned.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        argv: Sequence[str] | None = None,
        prefix: Sequence[str] = (),
        clean: bool = False,
        port: int | None = None,
        **popen: Any,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        base = outside_env() if clean else dict(os.environ)
        full_env = {**base, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        command = list(argv) if argv is not None else [sys.executable, "-m", "droq_registry", "serve"]
        self._log = open(log_path, "wb")  # noqa: SIM115 - the child writes it until stop()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [*prefix, *command],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            **popen,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """One GET on the process's kept-alive client."""
        return self.http.get(path, **kwargs)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.05, path: str = "/ready") -> float:
        """Poll `path` until it answers 200; return the seconds since the process was spawned.
        Fails (with the log) if the process exits first."""

        def ready() -> float | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get(path).status_code == 200:
                    return time.perf_counter() - self.started_at
            except httpx.TransportError:
                pass
            return None

        return float(wait_until(ready, timeout=timeout, interval=interval))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` (SIGKILL after `timeout` seconds); return the exit code. Idempotent."""
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


def health_or_none(srv: ServerProcess) -> dict[str, Any] | None:
    """/health, or None while the process is not listening (yet, or any more)."""
    try:
        return srv.get("/health").json()  # type: ignore[no-any-return]
    except httpx.TransportError:
        return None


def commit_one(srv: ServerProcess, assets: Path, name: str) -> int:
    """Write the node file `name` and wait for the server to commit it; the revision it made."""
    before = int(srv.get("/health").json()["revision"])
    write_json(assets / f"{name}.json", node_doc(name))
    wait_until(lambda: int(srv.get("/health").json()["revision"]) > before, timeout=DEADLINE)
    return before + 1


def on_real_nodes(server: Any, tmp: Path, **env: str) -> ServerProcess:
    """A server (from the `server` fixture) on copies of the real node files in `tmp/nodes`,
    its database and log beside them, with `env` over `server_env`'s settings."""
    assets = copy_real_nodes(tmp / "nodes")
    return server(server_env(assets, tmp / "registry.db", **env), tmp / "server.log")


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's memory in MiB, as /proc/PID/status gives it (VmRSS now, VmHWM its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")
