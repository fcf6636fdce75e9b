"""What the benchmarks in bench/ share: one implementation of each step.

`Server` is a real `python -m droq_registry serve` (or any command) on 127.0.0.1, started
with the tests' harness (tests/support/server.py). `metrics` reads its figures from
/metrics. `run_wrk` drives the `wrk` load generator. `percentile` is the one percentile.
`Report` prints tables and writes them, with the command, machine and commit, to
bench/results/<name>.md, and its target checks to <name>.json (bench/summarize.py gathers
those into summary.md). `fill_folder` moves generated node files (bench/gen_nodes.py)
into a served folder. The py-spy helpers at the end serve `bench/read.py --profile`.
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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Self

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package: one server harness for both

from support.files import save_bytes as write_node_file_atomic
from support.polling import wait_until
from support.server import ServerProcess, free_port

__all__ = ["free_port", "write_node_file_atomic"]  # the scripts use them as common.X

RESULTS = BENCH / "results"
PYTHON = sys.executable
#: The service re-reads a file whose mtime was within 2 s of when it read it ("racy clean");
#: waiting this long before a full pass settles freshly written files.
RACY_S = 2.5


# --------------------------------------------------------------------------- processes


def _proc_status_mb(pid: int, key: str) -> float | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+)\s+kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB; None if unreadable."""
    return _proc_status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """Current resident set size (VmRSS) of a live process, in MiB."""
    return _proc_status_mb(pid, "VmRSS")


class ServerError(RuntimeError):
    """The server exited or did not become ready in time; the message has its log tail."""


@dataclass
class Server:
    """One server process on 127.0.0.1 (the registry, or the command `argv`), started with
    the tests' `ServerProcess`. A context manager; `start()` after `stop()` starts it again
    on the same port. `started_at` is the `time.perf_counter()` just before the spawn."""

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
        env = {"LOG_LEVEL": self.log_level, "RELOAD": str(self.reload).lower(),
               "REGISTRY_RESYNC_SECONDS": str(self.resync_seconds)}
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
        self.process = ServerProcess(self.env(), self.log_path, argv=self.argv, clean=True,
                                     port=self.port or None,
                                     start_new_session=True)  # Ctrl-C in the terminal does not reach it
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
        """Poll `condition()` until truthy (returned); ServerError after `timeout` s, or at
        once if the process exits."""

        def alive_and() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode}\n{self.log_tail()}")
            return condition()

        try:
            return wait_until(alive_and, timeout, interval)
        except AssertionError:
            raise ServerError(f"condition not met within {timeout:.0f}s\n{self.log_tail()}") from None

    def wait_watching(self, timeout: float = 60.0) -> None:
        """/ready, then the file watcher running (so file events from now on are seen)."""
        self.wait_ready(timeout)
        self.wait_until(lambda: self.health()["watcher"]["state"] == "watching", 60)

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

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None if never started)."""
        return self.process.stop(signal.SIGTERM, grace) if self.process is not None else None

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
    status, _, body = get(port, "/metrics", timeout=30)
    if status != 200:
        raise ServerError(f"/metrics answered {status}")
    samples = (line.rpartition(" ") for line in body.decode().splitlines() if line and line[0] != "#")
    return {series: float(value) for series, _, value in samples}


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


def full_pass(server: Server, folder: Path, timeout: float) -> None:
    """Make the watcher run a full pass (a hidden file's events do) and wait until it ran."""
    before = server.health()["last_reconcile_at"]
    marker = folder / ".bench-settle"
    marker.write_bytes(b"")
    marker.unlink()
    server.wait_until(lambda: server.health()["last_reconcile_at"] != before, timeout)


def fill_folder(server: Server, staging: Path, folder: Path, chunk: int, timeout: float) -> float:
    """Move staging/*.json into the served folder `chunk` files at a time, each chunk waited
    for: how the benches get a large registry quickly (every chunk is a small reconcile).
    Ends with a full pass once the files are older than the racy window, so later rescans
    do not read them all again. Returns seconds."""
    started = time.perf_counter()
    names = sorted(p.name for p in staging.glob("*.json"))
    base = server.metrics()["droq_registry_nodes"]
    for start in range(0, len(names), chunk):
        for name in names[start : start + chunk]:
            os.rename(staging / name, folder / name)
        want = base + min(start + chunk, len(names))
        server.wait_until(lambda want=want: server.metrics()["droq_registry_nodes"] >= want, timeout)
    took = time.perf_counter() - started
    time.sleep(RACY_S)
    full_pass(server, folder, timeout)
    return took


def write_node_file(path: Path, data: bytes) -> None:
    """Rewrite a file in place (open O_TRUNC, write, close), as most editors do."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, its --help made of its docstring: the first paragraph says what it
    measures, the paragraphs after the usage lines say what the figures mean."""
    assert doc is not None
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


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


Answer = tuple[int, dict[str, str], bytes]


def _exchange(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None) -> Answer:
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Answer:
    """One GET on a new connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return _exchange(conn, path, headers)
    finally:
        conn.close()


class KeepAlive:
    """A keep-alive HTTP/1.1 connection that reconnects once if the server closed it."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        try:
            return _exchange(self.conn, path, headers)
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            return _exchange(self.conn, path, headers)

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- wrk


def require_wrk() -> str:
    """The path of `wrk`, or exit with a clear message saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        print("wrk is not installed. It is the Debian package `wrk`: apt-get install -y wrk", file=sys.stderr)
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
    lat = {pct: _ms(value) for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)}
    if m := re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE):
        lat["avg"], lat["max"] = _ms(m.group(1)), _ms(m.group(3))
    m = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m))", output)
    if not m or "99" not in lat:
        raise ValueError(f"unexpected wrk output:\n{output}")
    requests, seconds = int(m.group(1)), _ms(m.group(2)) / 1000
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {}
    return WrkResult(url, requests, seconds, float(rps.group(1)) if rps else requests / seconds, lat,
                     int(non.group(1)) if non else 0, errors, output)


def run_wrk(url: str, duration: float, threads: int = 2, connections: int = 32,
            headers: dict[str, str] | None = None, timeout: str = "5s") -> WrkResult:
    """Run wrk against `url` for `duration` seconds with --latency; parse its report.
    Extra request headers (If-None-Match for the 304 runs) go through a small Lua script."""
    secs = max(1, round(duration))
    argv = [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{secs}s", f"--timeout={timeout}", "--latency"]
    with tempfile.NamedTemporaryFile("w", prefix="bench-wrk-", suffix=".lua") as script:
        if headers:
            script.write("".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items()))
            script.flush()
            argv += ["-s", script.name]
        done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=secs + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, url)


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100), linear between closest ranks; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of `values` (nan when there are none)."""
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values, default=float("nan"))}


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


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
        return f"MISS ({self.value / self.limit:.2f}x the limit)" if self.limit else "MISS"

    def target(self) -> str:
        return f"{'>=' if self.higher else '<='} {fmt(self.limit, 2)} {self.unit}".strip()

    def row(self) -> list[str]:
        return [self.name, f"{fmt(self.value, 2)} {self.unit}".strip(), self.target(), self.verdict()]


# --------------------------------------------------------------------------- reports


def _git(*args: str) -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not even refresh the index
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                              env=env, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> str:
    """The checkout's commit, and whether the service code has uncommitted changes."""
    dirty = " + uncommitted changes in daemon/" if _git("status", "--porcelain", "--", "daemon") else ""
    return (_git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def machine() -> dict[str, str]:
    """The commit, nproc, CPU model, memory, kernel, Python and the server stack's versions."""
    def first(path: str, pattern: str) -> str | None:
        try:
            m = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        except OSError:
            return None
        return m.group(1) if m else None

    def installed(mod: str) -> str:
        try:
            return f"{mod} {version(mod)}"
        except PackageNotFoundError:
            return f"{mod} -"

    mem = first("/proc/meminfo", r"^MemTotal:\s+(\d+) kB")
    return {
        "code": code_version(), "nproc": str(os.cpu_count()),
        "cpu": first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or "unknown",
        "memory": f"{int(mem) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "kernel": platform.release(), "python": platform.python_version(),
        "stack": ", ".join(map(installed, ("uvicorn", "starlette", "uvloop", "httptools", "watchfiles", "orjson"))),
    }


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
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def header(title: str, command: str, info: dict[str, str], started: datetime, load: str | None) -> list[str]:
    """The lines that open every results file: what ran, when, where, on which commit."""
    lines = [f"# {title}", "", f"- command: `{command}`", f"- date: {started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
             f"- machine: nproc={info['nproc']}, CPU: {info['cpu']}, memory {info['memory']}, kernel {info['kernel']}",
             f"- software: Python {info['python']}; {info['stack']}", f"- code: {info['code']}"]
    if load:
        lines.append(f"- load average (1, 5, 15 min) at start: {load}; at end: {loadavg()} "
                     "(other work on the machine shows here)")
    return lines


class Report:
    """Collects sections (tables, notes), target checks and figures; prints and writes them."""

    def __init__(self, name: str, title: str) -> None:
        self.name, self.title = name, title
        self.sections: list[str] = []
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}
        self.started = datetime.now(UTC)
        self.load_start = loadavg()

    def note(self, text: str) -> None:
        print("\n" + text, flush=True)
        self.sections.append(text)

    def table(self, heading: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.note(f"### {heading}\n\n{markdown_table(headers, rows)}")

    def check(self, name: str, value: float, limit: float, unit: str = "", higher: bool = False) -> Check:
        self.checks.append(Check(name, value, limit, unit, higher))
        return self.checks[-1]

    def write(self) -> Path:
        """Print the targets table and write bench/results/<name>.md and <name>.json."""
        if self.checks:
            self.table("Targets", ["target", "measured", "limit", "verdict"], [c.row() for c in self.checks])
        info, command = machine(), command_line()
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.md"
        head = header(self.title, command, info, self.started, self.load_start)
        path.write_text("\n".join(head) + "\n\n" + "\n\n".join(self.sections) + "\n")
        checks = [{**vars(c), "ok": c.ok, "verdict": c.verdict()} for c in self.checks]
        sidecar = {"name": self.name, "title": self.title, "command": command,
                   "date": self.started.isoformat(timespec="seconds"), "loadavg": [self.load_start, loadavg()],
                   "machine": info, "figures": self.figures, "checks": checks}
        (RESULTS / f"{self.name}.json").write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
        print(f"\nwritten {os.path.relpath(path, ROOT)}", flush=True)
        return path


# --------------------------------------------------------------------------- py-spy (read.py --profile)


PY_SPY_RATE = 200


def py_spy_record(pid: int, seconds: float, out: Path, rate: int = PY_SPY_RATE) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record --gil --format raw` on `pid` for `seconds`; None without py-spy.
    --gil samples only the thread holding the GIL: Python work, not the watcher's Rust wait."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    argv = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
            "--gil", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def py_spy_wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # by its PID: ours
        proc.wait()


@dataclass
class Profile:
    """Sample counts from py-spy's raw output: total, by function (own, inclusive), by package."""

    total: int
    own: collections.Counter[str]
    inclusive: collections.Counter[str]
    packages: collections.Counter[str]


def load_profile(raw: Path) -> Profile:
    """Read `py-spy record --format raw` output (`frame;frame;... count` lines)."""
    prof = Profile(0, collections.Counter(), collections.Counter(), collections.Counter())
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or not count.isdigit():
            continue
        prof.total += int(count)
        prof.own[_short(frames[-1])] += int(count)
        prof.inclusive.update(dict.fromkeys({_short(f) for f in frames}, int(count)))
        file = frames[-1].partition(" (")[2].rsplit(":", 1)[0].split("site-packages/")[-1]
        prof.packages[file if file.startswith("<") else file.split("/")[0].removesuffix(".py") or "(native)"] += int(count)
    return prof


def summarise_profile(what: str, raw: Path, report: Report, keep: Path | None = None) -> Profile:
    """Report the top functions (own and inclusive samples) and own samples by package."""
    prof = load_profile(raw)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, keep / raw.name)
    if not prof.total:
        report.note(f"profile of {what}: no samples")
        return prof
    share = lambda n: f"{n / prof.total * 100:.1f}"
    report.table(f"Profile of the server during {what} (py-spy --gil, {prof.total} samples): top functions",
                 ["function", "own %", "inclusive %"],
                 [[n, share(c), share(prof.inclusive[n])] for n, c in prof.own.most_common(12)])
    report.table(f"Profile of {what}: own time by package", ["package", "own %"],
                 [[n, share(c)] for n, c in prof.packages.most_common(10)])
    return prof


def _short(frame: str) -> str:
    """`func (path/to/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(file.split('/')[-2:])})" if file else name
