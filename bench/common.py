"""Shared helpers for the benchmark scripts in bench/.

Everything here talks to real processes: `Server` starts `python -m droq_registry serve`
(or the reference app) on 127.0.0.1 with a free port and a temporary database, waits for
it with a deadline, and stops it by its PID (SIGTERM, then SIGKILL). `run_wrk` drives the
`wrk` load generator and parses its output. `Report` prints a table and writes it, with the
command line, date and machine, to bench/results/<name>.md (and the target checks to a
.json beside it, which bench/summarize.py gathers into summary.md).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package: one server harness for both

from support.polling import wait_until
from support.server import ServerProcess, free_port

RESULTS = BENCH / "results"
PYTHON = sys.executable

#: Where the server's own logs are kept while it runs (one file per start).
LOG_TAIL_LINES = 30


# --------------------------------------------------------------------------- processes

__all__ = ["free_port"]  # the scripts use the harness's as common.free_port


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB; None if unreadable."""
    return _proc_status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """Current resident set size (VmRSS) of a live process, in MiB."""
    return _proc_status_mb(pid, "VmRSS")


def _proc_status_mb(pid: int, key: str) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


class ServerError(RuntimeError):
    """The server exited or did not become ready in time; the message has its log tail."""


@dataclass
class Server:
    """One server process on 127.0.0.1 (the registry, or any command given in `argv`),
    started with the tests' harness (tests/support/server.py: `ServerProcess`).

    Use as a context manager, or call `start()`/`stop()`; `start()` after `stop()` starts it
    again on the same port (its log file is then written anew). `started_at` is the
    `time.perf_counter()` just before the process was spawned.
    """

    assets_dir: Path | None = None
    db_path: Path | None = None
    log_level: str = "warning"
    reload: bool = True
    resync_seconds: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)
    argv: Sequence[str] | None = None  # default: the registry service
    port: int = 0
    log_path: Path | None = None
    process: ServerProcess | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def started_at(self) -> float:
        assert self.process is not None
        return self.process.started_at

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The service's settings (laid over the caller's environment less its own)."""
        env = {
            "LOG_LEVEL": self.log_level,
            "RELOAD": "true" if self.reload else "false",
            "REGISTRY_RESYNC_SECONDS": str(self.resync_seconds),
        }
        if self.db_path is not None:
            env["REGISTRY_DB_PATH"] = str(self.db_path)
        if self.assets_dir is not None:
            env["REGISTRY_ASSETS_DIR"] = str(self.assets_dir)
        return {**env, **self.extra_env}

    def start(self) -> Self:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.process = ServerProcess(
            self.env(), self.log_path, argv=self.argv, clean=True, port=self.port or None,
            start_new_session=True,  # Ctrl-C in the terminal does not reach it directly
        )
        self.port = self.process.port
        return self

    def wait_ready(self, timeout: float = 60.0, path: str = "/ready", interval: float = 0.01) -> float:
        """Poll `path` until it answers 200; return seconds since the process was spawned."""
        assert self.process is not None
        try:
            return self.process.wait_ready(timeout, interval, path)
        except AssertionError as exc:
            raise ServerError(f"{self.base}{path}: {str(exc).splitlines()[0]}\n{self.log_tail()}") from None

    def wait_until(self, condition: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
        """Poll `condition()` until truthy (returned) or raise ServerError after `timeout` s
        (at once if the process exits)."""

        def alive_and(condition: Callable[[], Any]) -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode}\n{self.log_tail()}")
            return condition()

        try:
            return wait_until(lambda: alive_and(condition), timeout, interval)
        except AssertionError:
            raise ServerError(f"condition not met within {timeout:.0f}s\n{self.log_tail()}") from None

    def health(self) -> dict[str, Any]:
        status, _, body = get(self.port, "/health")
        if status != 200:
            raise ServerError(f"/health answered {status}")
        return json.loads(body)  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        """Every /metrics sample, by its name with labels as written."""
        return metrics(self.port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None if never started)."""
        if self.process is None:
            return None
        return self.process.stop(signal.SIGTERM, grace)

    def cleanup(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is not None:  # the error carries the log's tail; the file is not needed
            self.cleanup()


def metrics(port: int) -> dict[str, float]:
    """Every sample of the server's /metrics: {name with labels as written: value}."""
    status, _, body = get(port, "/metrics")
    if status != 200:
        raise ServerError(f"/metrics answered {status}")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


@dataclass(frozen=True)
class Reconciles:
    """The reconcile figures of /metrics at one moment: passes of any result, changed passes,
    and the seconds all passes took (droq_registry_reconcile_duration_seconds)."""

    passes: float
    changed: float
    seconds: float

    @classmethod
    def of(cls, port: int) -> Reconciles:
        m = metrics(port)
        return cls(m["droq_registry_reconcile_duration_seconds_count"],
                   m['droq_registry_reconciles_total{result="changed"}'],
                   m["droq_registry_reconcile_duration_seconds_sum"])

    def since(self, before: Reconciles) -> Reconciles:
        return Reconciles(self.passes - before.passes, self.changed - before.changed, self.seconds - before.seconds)


def reference_server(body_file: Path) -> Server:
    """The bare Starlette reference app (bench/reference_app.py) serving `body_file`."""
    return Server(argv=[PYTHON, str(BENCH / "reference_app.py"), "--body-file", str(body_file)])


#: The service re-reads a file whose mtime was within 2 s of when it read it ("racy clean");
#: waiting this long before a full pass settles freshly written files.
RACY_S = 2.5


def full_pass(server: Server, folder: Path, timeout: float) -> None:
    """Make the watcher run a full pass (a hidden file's events do) and wait until it ran."""
    before = server.health()["last_reconcile_at"]
    marker = folder / ".bench-settle"
    marker.write_bytes(b"")
    marker.unlink()
    server.wait_until(lambda: server.health()["last_reconcile_at"] != before, timeout)


def fill_folder(server: Server, staging: Path, folder: Path, chunk: int, timeout: float) -> float:
    """Move staging/*.json into the served folder `chunk` files at a time, each chunk waited for.

    Loading many files this way is how the benches get a large registry quickly: every
    chunk is a small reconcile. Ends with a full pass once the files are older than the
    service's racy window, so later rescans do not read them all again. Returns seconds.
    """
    started = time.perf_counter()
    names = sorted(p.name for p in staging.glob("*.json"))
    base = server.metrics()["droq_registry_nodes"]
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        for name in part:
            os.rename(staging / name, folder / name)
        want = base + start + len(part)
        server.wait_until(lambda want=want: server.metrics()["droq_registry_nodes"] >= want, timeout)
    took = time.perf_counter() - started
    time.sleep(RACY_S)
    full_pass(server, folder, timeout)
    return took


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, its --help made of its docstring: the first paragraph says what it
    measures, the paragraphs after the usage lines say what the figures mean."""
    assert doc is not None
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so `with Server(...)` and `finally` stop our servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def temp_workdir(prefix: str) -> Path:
    """A fresh temporary folder for node files and databases (outside the checkout)."""
    return Path(tempfile.mkdtemp(prefix=f"droq-bench-{prefix}-"))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP


def get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


class KeepAlive:
    """A keep-alive HTTP/1.1 connection that reconnects once if the server closed it."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- wrk


WRK_MISSING = "wrk is not installed. It is the Debian package `wrk`: apt-get update && apt-get install -y wrk"


def require_wrk() -> str:
    """The path of `wrk`, or exit with a clear message saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        print(WRK_MISSING, file=sys.stderr)
        raise SystemExit(2)
    return path


@dataclass
class WrkResult:
    url: str
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # "avg", "max", "50", "75", "90", "99"
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    raw: str

    @property
    def p50(self) -> float:
        return self.latency_ms["50"]

    @property
    def p99(self) -> float:
        return self.latency_ms["99"]


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, url: str = "") -> WrkResult:
    """Read wrk's --latency report (requests, req/s, latency percentiles, errors)."""
    lat: dict[str, float] = {}
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE)
    if m:
        lat["avg"], lat["max"] = _ms(m.group(1)), _ms(m.group(3))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE):
        lat[pct] = _ms(value)
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if not m or "99" not in lat:
        raise ValueError(f"unexpected wrk output:\n{output}")
    requests, seconds = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1000
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {}
    return WrkResult(
        url=url,
        requests=requests,
        seconds=seconds,
        rps=float(rps_m.group(1)) if rps_m else requests / seconds,
        latency_ms=lat,
        non_2xx_3xx=int(non.group(1)) if non else 0,
        socket_errors=errors,
        raw=output,
    )


def run_wrk(
    url: str,
    duration: float,
    threads: int = 2,
    connections: int = 32,
    headers: dict[str, str] | None = None,
    timeout: str = "5s",
) -> WrkResult:
    """Run wrk against `url` for `duration` seconds with --latency; parse its report.

    Extra request headers go through a small Lua script (wrk.headers), which is how the
    304 revalidation bench sends If-None-Match.
    """
    wrk = require_wrk()
    secs = max(1, round(duration))
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{secs}s", f"--timeout={timeout}", "--latency"]
    script = None
    if headers:
        fd, name = tempfile.mkstemp(prefix="bench-wrk-", suffix=".lua")
        lines = [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()]
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.close(fd)
        script = name
        argv += ["-s", script]
    argv.append(url)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30, check=False)
    finally:
        if script:
            os.unlink(script)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, url)


def _lua(text: str) -> str:
    """A Lua long-bracket-free string literal (quotes and backslashes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------- targets


@dataclass
class Check:
    """One target: `value` against `limit`; `higher` says which side is good."""

    name: str
    value: float
    limit: float
    unit: str
    higher: bool = False

    @property
    def ok(self) -> bool:
        return self.value >= self.limit if self.higher else self.value <= self.limit

    def verdict(self) -> str:
        if self.ok:
            return "PASS"
        if self.higher:
            short = (self.limit - self.value) / self.limit * 100 if self.limit else float("inf")
            return f"MISS ({short:.0f}% below the limit)"
        if not self.limit:  # "at most 0": a ratio to it says nothing
            return "MISS"
        return f"MISS ({self.value / self.limit:.2f}x the limit)"

    def target(self) -> str:
        return f"{'>=' if self.higher else '<='} {fmt(self.limit, 2)} {self.unit}".strip()

    def row(self) -> list[str]:
        return [self.name, f"{fmt(self.value, 2)} {self.unit}".strip(), self.target(), self.verdict()]


# --------------------------------------------------------------------------- reports


def machine() -> dict[str, str]:
    """nproc, CPU model, kernel, Python and the server stack's versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        if m:
            mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    versions = []
    for mod in ("uvicorn", "starlette", "uvloop", "httptools", "watchfiles", "orjson"):
        try:
            from importlib.metadata import version

            versions.append(f"{mod} {version(mod)}")
        except Exception:  # noqa: BLE001 - not installed, or no metadata
            versions.append(f"{mod} -")
    return {
        "code": code_version(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "stack": ", ".join(versions),
    }


def code_version() -> str:
    """The checkout's commit, and whether the service code has uncommitted changes (read-only git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not even refresh the index
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "daemon"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in daemon/' if dirty else ''}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def command_line() -> str:
    """The command as it was run, relative to the checkout when possible."""
    exe = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join(shlex.quote(a) for a in [exe, script, *sys.argv[1:]])


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(headers), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in rows]
    return "\n".join(out)


class Report:
    """Collects sections (tables, notes) and target checks; prints and writes them."""

    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.sections: list[str] = []
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}
        self.started = datetime.now(UTC)
        self.load_start = loadavg()

    def table(self, heading: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        text = f"### {heading}\n\n{markdown_table(headers, rows)}"
        print("\n" + text, flush=True)
        self.sections.append(text)

    def note(self, text: str) -> None:
        print("\n" + text, flush=True)
        self.sections.append(text)

    def check(self, name: str, value: float, limit: float, unit: str = "", higher: bool = False) -> Check:
        c = Check(name, value, limit, unit, higher)
        self.checks.append(c)
        return c

    def write(self) -> Path:
        """Print the targets table and write bench/results/<name>.md and <name>.json."""
        if self.checks:
            self.table("Targets", ["target", "measured", "limit", "verdict"], [c.row() for c in self.checks])
        info = machine()
        head = [
            f"# {self.title}",
            "",
            f"- command: `{command_line()}`",
            f"- date: {self.started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
            (
                f"- machine: nproc={info['nproc']}, CPU: {info['cpu']}, memory {info['memory']}, "
                f"kernel {info['kernel']}"
            ),
            f"- software: Python {info['python']}; {info['stack']}",
            f"- code: {info['code']}",
            (
                f"- load average (1, 5, 15 min) at start: {self.load_start}; at end: {loadavg()} "
                "(other work on the machine shows here)"
            ),
        ]
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.md"
        path.write_text("\n".join(head) + "\n\n" + "\n\n".join(self.sections) + "\n")
        sidecar = {
            "name": self.name,
            "title": self.title,
            "command": command_line(),
            "date": self.started.isoformat(timespec="seconds"),
            "loadavg": [self.load_start, loadavg()],
            "machine": info,
            "figures": self.figures,
            "checks": [
                {
                    "name": c.name,
                    "value": c.value,
                    "limit": c.limit,
                    "unit": c.unit,
                    "higher": c.higher,
                    "ok": c.ok,
                    "verdict": c.verdict(),
                }
                for c in self.checks
            ],
        }
        (RESULTS / f"{self.name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(f"\nwritten {os.path.relpath(path, ROOT)}", flush=True)
        return path


# --------------------------------------------------------------------------- profiling


PY_SPY_RATE = 200


def py_spy_record(
    pid: int, seconds: float, out: Path, rate: int = PY_SPY_RATE
) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record --gil --format raw` on `pid` for `seconds`; None without py-spy.

    --gil samples only the thread holding the GIL, i.e. Python work: the watchfiles thread,
    which blocks in Rust without it, is left out.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--gil",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def py_spy_wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # by its PID: ours
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Profile:
    """Sample counts from py-spy's raw output: total, by function (own, inclusive), by package."""

    total: int
    everything: int
    own: collections.Counter[str]
    inclusive: collections.Counter[str]
    packages: collections.Counter[str]


def load_profile(raw: Path, within: str | None = None) -> Profile:
    """Read `py-spy record --format raw` output; with `within`, only stacks through that function."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    pkg: collections.Counter[str] = collections.Counter()
    total = everything = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        everything += count if frames else 0
        if not frames or (within is not None and not any(f.startswith(within + " ") for f in frames)):
            continue
        total += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            incl[name] += count
        pkg[_package(frames[-1])] += count
    return Profile(total, everything, own, incl, pkg)


def summarise_profile(
    what: str, raw: Path, report: Report, keep: Path | None = None, within: str | None = None
) -> Profile:
    """Top functions by own and by inclusive samples, and own samples by package.

    Sampled with --gil: only the thread holding the GIL counts, i.e. Python work (the
    watchfiles thread blocks in Rust without the GIL and is left out).
    """
    prof = load_profile(raw, within)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, keep / raw.name)
    total = prof.total
    if not total:
        report.note(f"profile of {what}: no samples")
        return prof
    share = f"; {total / prof.everything * 100:.0f}% of all {prof.everything} GIL samples" if within else ""
    report.table(
        f"Profile of the server during {what} (py-spy --gil, {total} samples{share}): top functions",
        ["function", "own %", "inclusive %"],
        [
            [n, f"{c / total * 100:.1f}", f"{prof.inclusive[n] / total * 100:.1f}"]
            for n, c in prof.own.most_common(12)
        ],
    )
    report.table(
        f"Profile of {what}: own time by package",
        ["package", "own %"],
        [[n, f"{c / total * 100:.1f}"] for n, c in prof.packages.most_common(10)],
    )
    return prof


def _short(frame: str) -> str:
    """`func (path/to/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if file else name


def _package(frame: str) -> str:
    """The top-level package of a frame's file (py-spy names files relative to sys.path)."""
    file = frame.partition(" (")[2].rsplit(":", 1)[0]
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    if file.startswith("<"):
        return file  # <string>: code generated at run time (fastjsonschema's validators)
    return file.split("/")[0].removesuffix(".py") or "(native)"


def write_node_file(path: Path, data: bytes) -> None:
    """Rewrite a file in place with one write() (open O_TRUNC, write, close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_node_file_atomic(path: Path, data: bytes) -> None:
    """Write a hidden temporary file beside `path` and rename it over (editors, config tools)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_node_file(tmp, data)
    os.replace(tmp, path)
