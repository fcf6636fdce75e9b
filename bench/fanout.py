"""Fan-out: thousands of followers on one server, one file renamed, time to every follower.

    .venv/bin/python bench/fanout.py [--followers 1000,5000,10000] [--rounds 8]

For each follower count N, starts a fresh `python -m droq_registry serve` on a copy of the
real node files plus one small node file (`fanout-probe.json`) and connects N followers
over raw sockets from `--procs` load processes (asyncio with uvloop, one protocol object
per socket, no HTTP library): half event streams (`GET /api/v1/events`), half long-polls
(`GET /api/v1/changes?since=R&wait=60`, asked again on the same connection after each
answer). Once the server counts N connections following (`droq_registry_connections_following`
on /metrics), it measures the server's RSS and threads (the cost of an idle follower is
the growth over the RSS before they connected, divided by N), then runs `--rounds` rounds:

  the probe file is rewritten by an atomic rename (written beside it under a dot name,
  which the service ignores, then os.rename over it), and each follower notes the time its
  socket received the bytes of that revision (the SSE frame, or the long-poll's answer): the
  kernel's receive time of that read (SO_TIMESTAMPNS), and when the load process read it.
  The latency is the kernel's time minus the time just before the rename (CLOCK_REALTIME
  both); the second figure also carries the load processes' own queue on the shared cores.

Meanwhile a prober process asks a lookup (`/api/v1/components/{class}/node`, 36 KB) and
`/health` every 5 ms each, on kept-alive connections: their latencies while a fan-out is
in progress (from the rename until the last follower has the change) are compared with
those at rest (before the followers connect, and between rounds). Prints the table and
writes it to bench/results/fanout.md with the targets of issue 14: followers' p99 ≤ 250 ms
at 10,000, lookups during fan-out p99 ≤ 3x idle, /health ≤ 50 ms, idle follower ≤ 10 KiB.

The open-file limit of this process (inherited by the server and the load processes) is
raised to fit the followers (we run as root); the server's connection cap is its default
unless --max-connections is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
import gen_nodes

PROBE_NODE = "fanout-probe"
LOOKUP_CLASS = "TextInputComponent"
ROUND_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.005


# --------------------------------------------------------------------------- load process


#: SO_TIMESTAMPNS (SCM_TIMESTAMPNS) on Linux, where Python's socket module may not name it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


class Follower:
    """One follower socket: an event stream or a long-poll, asked again after each answer.

    A raw non-blocking socket read with recvmsg, so each read carries the kernel's receive
    time (SO_TIMESTAMPNS, CLOCK_REALTIME): on loopback, when the server's write put the
    bytes in this socket. `got` is that time for the read that completed the expected
    revision, and `read` when this process got to it."""

    __slots__ = ("buf", "got", "kind", "load", "read", "since", "sock")

    def __init__(self, load: Load, kind: str, since: int, sock: socket.socket) -> None:
        self.load = load
        self.kind = kind
        self.since = since
        self.sock = sock
        self.buf = b""
        self.got = 0.0
        self.read = 0.0

    def start(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self.readable)
        self.ask()

    def ask(self) -> None:
        if self.kind == "sse":
            path = f"/api/v1/events?since={self.since}"
        else:
            path = f"/api/v1/changes?since={self.since}&wait=60"
        self.sock.send(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())

    def readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(262144, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.load.lost += 1
            return
        now = time.time()
        stamp = now
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                stamp = seconds + nanoseconds / 1e9
        self.received(data, stamp, now)

    def arrived(self, stamp: float, now: float) -> None:
        self.got, self.read = stamp, now
        self.load.arrived()

    def received(self, data: bytes, stamp: float, now: float) -> None:
        load = self.load
        if self.kind == "sse":
            # keep a tail, so a marker split between two reads is still found
            self.buf = self.buf[-64:] + data
            if not self.got and load.marker and load.marker in self.buf:
                self.arrived(stamp, now)
            return
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", self.buf[:head_end])
            if m is None:
                load.errors.append(self.buf[:200].decode("latin-1"))
                self.buf = b""
                return
            end = head_end + 4 + int(m.group(1))
            if len(self.buf) < end:
                return
            status = self.buf[9:12]
            body, self.buf = self.buf[head_end + 4 : end], self.buf[end:]
            if status != b"200":
                load.errors.append(f"long-poll answered {status!r}: {body[:200]!r}")
            else:
                revision = json.loads(body)["revision"]
                if load.marker and not self.got and revision >= load.target:
                    self.arrived(stamp, now)
                self.since = max(self.since, revision)
            self.ask()


class Load:
    """The followers of one load process, driven by lines on stdin."""

    def __init__(self, port: int, sse: int, polls: int, since: int) -> None:
        self.port = port
        self.counts = (sse, polls)
        self.since = since
        self.followers: list[Follower] = []
        self.marker = b""
        self.target = 0
        self.pending = 0
        self.lost = 0
        self.errors: list[str] = []
        self.all_in = asyncio.Event()

    def arrived(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.all_in.set()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sse, polls = self.counts
        # interleaved, so each batch of connections holds both kinds
        order = [k for i in range(max(sse, polls)) for k in ("sse", "poll")[(i >= sse) : 1 + (i < polls)]]
        for start in range(0, len(order), 200):
            batch = [Follower(self, kind, self.since, socket.socket()) for kind in order[start : start + 200]]
            for follower in batch:
                follower.sock.setblocking(False)
            await asyncio.gather(*(loop.sock_connect(f.sock, ("127.0.0.1", self.port)) for f in batch))
            for follower in batch:
                follower.start()
            self.followers += batch

    async def run(self) -> None:
        await self.connect()
        reply({"connected": len(self.followers)})
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            if command["do"] == "expect":
                self.target = command["revision"]
                self.marker = b'"revision":%d,' % self.target
                for f in self.followers:
                    f.got = 0.0
                self.pending = len(self.followers)
                self.all_in = asyncio.Event()
                reply({"expecting": self.target})
            elif command["do"] == "collect":
                try:
                    await asyncio.wait_for(self.all_in.wait(), command["timeout"])
                except TimeoutError:
                    pass
                self.marker = b""
                reply({"times": [[f.got, f.read] for f in self.followers if f.got], "missing": self.pending,
                       "lost": self.lost, "errors": self.errors[:5]})
                self.errors.clear()
            elif command["do"] == "quit":
                break
        for f in self.followers:
            if f.sock.fileno() >= 0:
                loop.remove_reader(f.sock.fileno())
                f.sock.close()


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def load_main(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        uvloop = None
    load = Load(args.port, args.sse, args.polls, args.since)
    if uvloop is not None:
        uvloop.run(load.run())
    else:
        asyncio.run(load.run())
    return 0


# --------------------------------------------------------------------------- prober process


def probe_main(args: argparse.Namespace) -> int:
    """Ask the lookup and /health every PROBE_INTERVAL_S each until stdin closes; print
    (kind, started, seconds, status) lines at the end."""
    samples: list[tuple[str, float, float, int]] = []
    stop = threading.Event()

    def loop(kind: str, path: str) -> None:
        conn = common.KeepAlive(args.port, timeout=10)
        try:
            while not stop.is_set():
                began = time.time()
                status, _, _ = conn.get(path)
                samples.append((kind, began, time.time() - began, status))
                rest = PROBE_INTERVAL_S - (time.time() - began)
                if rest > 0:
                    stop.wait(rest)
        finally:
            conn.close()

    threads = [
        threading.Thread(target=loop, args=("lookup", f"/api/v1/components/{args.lookup_class}/node")),
        threading.Thread(target=loop, args=("health", "/health")),
    ]
    for t in threads:
        t.start()
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join()
    json.dump(samples, sys.stdout)
    return 0


# --------------------------------------------------------------------------- orchestration


def metric(port: int, name: str) -> float:
    _, _, body = common.get(port, "/metrics", timeout=30)
    m = re.search(rb"^" + name.encode() + rb" ([0-9.e+]+)$", body, re.MULTILINE)
    return float(m.group(1)) if m else -1.0


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user + system), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)
    return int(m.group(1)) if m else -1


class LoadProc:
    def __init__(self, port: int, sse: int, polls: int, since: int) -> None:
        self.proc = subprocess.Popen(
            [common.PYTHON, __file__, "--role", "load", "--port", str(port), "--sse", str(sse),
             "--polls", str(polls), "--since", str(since)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a load process ended (exit {self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def stop(self) -> None:
        try:
            self.send({"do": "quit"})
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def probe_file(version: int) -> bytes:
    return json.dumps({"node_id": PROBE_NODE, "name": "Fan-out probe", "version": str(version),
                       "components": {"FanoutProbe": "bench.fanout.probe"}}).encode()


def rename_into(folder: Path, version: int) -> float:
    """Write the probe file's next version beside it and rename it over; the time before the rename."""
    staged = folder / ".fanout-probe.json.tmp"
    with open(staged, "wb") as f:
        f.write(probe_file(version))
        f.flush()
        os.fsync(f.fileno())
    before = time.time()
    os.rename(staged, folder / f"{PROBE_NODE}.json")
    return before


def one_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    folder = workdir / f"nodes-{n}"
    gen_nodes.copy_real(folder)
    (folder / f"{PROBE_NODE}.json").write_bytes(probe_file(0))
    env = {} if args.max_connections is None else {"REGISTRY_MAX_CONNECTIONS": str(args.max_connections)}
    server = common.Server(assets_dir=folder, db_path=workdir / f"registry-{n}.db", extra_env=env)
    loads: list[LoadProc] = []
    prober: subprocess.Popen[str] | None = None
    windows: list[tuple[float, float, float]] = []  # rename, first and last delivery
    latencies: list[float] = []  # rename to the kernel's receive time of the follower's socket
    read_latencies: list[float] = []  # rename to the load process reading it
    missing = lost = 0
    errors: list[str] = []
    try:
        server.start()
        server.wait_ready(60)
        server.wait_until(lambda: server.health()["watcher"]["state"] == "watching", 60)
        prober = subprocess.Popen(
            [common.PYTHON, __file__, "--role", "probe", "--port", str(server.port),
             "--lookup-class", LOOKUP_CLASS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        time.sleep(args.idle_seconds)  # lookups at rest, before any follower
        idle_until = time.time()
        rss_before = common.rss_mb(server.pid) or 0.0
        threads_before = threads_of(server.pid)
        limit = metric(server.port, "droq_registry_connections_limit")
        revision = int(server.health()["revision"])
        sse = n // 2
        polls = n - sse
        per = [(sse // args.procs + (i < sse % args.procs), polls // args.procs + (i < polls % args.procs))
               for i in range(args.procs)]
        connect_started = time.time()
        loads = [LoadProc(server.port, s, p, revision) for s, p in per]
        for load in loads:
            load.read()
        server.wait_until(
            lambda: metric(server.port, "droq_registry_connections_following") >= n, 120, interval=0.25
        )
        connect_s = time.time() - connect_started
        time.sleep(1.0)
        rss_with = common.rss_mb(server.pid) or 0.0
        threads_with = threads_of(server.pid)
        cpu_before = cpu_seconds(server.pid)
        for r in range(1, args.rounds + 1):
            server.wait_until(
                lambda: metric(server.port, "droq_registry_connections_following") >= n, 60, interval=0.05
            )
            time.sleep(args.gap)
            for load in loads:
                load.send({"do": "expect", "revision": revision + r})
            for load in loads:
                load.read()
            renamed = rename_into(folder, r)
            for load in loads:
                load.send({"do": "collect", "timeout": ROUND_TIMEOUT_S})
            first, last, last_read = float("inf"), renamed, renamed
            for load in loads:
                got = load.read()
                stamps = [kernel for kernel, _ in got["times"]]
                latencies += [t - renamed for t in stamps]
                read_latencies += [read - renamed for _, read in got["times"]]
                first = min([first, *stamps])
                last = max([last, *stamps])
                last_read = max([last_read, *(read for _, read in got["times"])])
                missing += got["missing"]
                lost = max(lost, got["lost"])
                errors += got["errors"]
            windows.append((renamed, min(first, last), last))
            print(f"  {n} followers, round {r}: the last follower's socket had it after "
                  f"{(last - renamed) * 1000:.1f} ms (read by the load after {(last_read - renamed) * 1000:.1f} ms)",
                  flush=True)
        cpu_rounds = cpu_seconds(server.pid) - cpu_before
        rss_end = common.rss_mb(server.pid) or 0.0
    finally:
        for load in loads:
            load.stop()
        samples: list[list[Any]] = []
        if prober is not None:
            out, _ = prober.communicate("", timeout=60)
            samples = json.loads(out or "[]")
        server.stop()
        server.cleanup()

    def during(t: float) -> bool:
        """Asked while the followers were being sent the change (first to last delivery)."""
        return any(first <= t <= last for _, first, last in windows)

    def after_rename(t: float) -> bool:
        """Asked from the rename on (the reconcile, then the fan-out) until the last delivery."""
        return any(renamed <= t <= last for renamed, _, last in windows)

    def at_rest(t: float) -> bool:
        """Before any follower connected, or between rounds (nothing changing)."""
        settled = connect_started + connect_s + 1.0
        return t <= idle_until or (t >= settled and all(not (a - 0.05 <= t <= b + 0.05) for a, _, b in windows))

    lookups_idle = [s[2] for s in samples if s[0] == "lookup" and at_rest(s[1])]
    lookups_busy = [s[2] for s in samples if s[0] == "lookup" and during(s[1])]
    lookups_rename = [s[2] for s in samples if s[0] == "lookup" and after_rename(s[1])]
    health_busy = [s[2] for s in samples if s[0] == "health" and during(s[1])]
    health_all = [s[2] for s in samples if s[0] == "health"]
    bad = sum(1 for s in samples if s[3] != 200)
    ms = [x * 1000 for x in latencies]
    return {
        "followers": n,
        "connection_limit": limit,
        "connect_s": connect_s,
        "p50_ms": common.percentile(ms, 50),
        "p99_ms": common.percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "read_p50_ms": common.percentile([x * 1000 for x in read_latencies], 50),
        "read_p99_ms": common.percentile([x * 1000 for x in read_latencies], 99),
        "deliveries": len(ms),
        "missing": missing,
        "lost_connections": lost,
        "errors": errors[:5],
        "rss_before_mib": rss_before,
        "rss_mib": rss_with,
        "rss_end_mib": rss_end,
        "server_cpu_ms_per_round": cpu_rounds * 1000 / args.rounds,
        "kib_per_follower": (rss_with - rss_before) * 1024 / n,
        "threads": [threads_before, threads_with],
        "lookup_idle_p99_ms": common.percentile([x * 1000 for x in lookups_idle], 99),
        "lookup_busy_p99_ms": common.percentile([x * 1000 for x in lookups_busy], 99),
        "lookup_after_rename_p99_ms": common.percentile([x * 1000 for x in lookups_rename], 99),
        "lookup_samples": [len(lookups_idle), len(lookups_busy), len(lookups_rename)],
        "health_busy_max_ms": max(health_busy) * 1000 if health_busy else float("nan"),
        "health_max_ms": max(health_all) * 1000 if health_all else float("nan"),
        "probe_non_200": bad,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--followers", default="1000,5000,10000", help="comma list of follower counts")
    parser.add_argument("--rounds", type=int, default=8, help="renames per follower count (default 8)")
    parser.add_argument("--procs", type=int, default=2, help="load processes (default 2)")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds at rest before each rename")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="lookups at rest before followers")
    parser.add_argument("--max-connections", type=int, help="REGISTRY_MAX_CONNECTIONS (default: the server's)")
    parser.add_argument("--name", default="fanout", help="result file name (default fanout)")
    parser.add_argument("--role", choices=("main", "load", "probe"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sse", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--polls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--since", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lookup-class", default=LOOKUP_CLASS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "load":
        return load_main(args)
    if args.role == "probe":
        return probe_main(args)

    sizes = [int(x) for x in args.followers.split(",")]
    want = max(sizes) + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise its hard limit
    elif soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    common.exit_on_sigterm()
    report = common.Report(args.name, "Fan-out: one file renamed, time until every follower has the change")
    workdir = common.temp_workdir("fanout")
    rows = []
    try:
        for n in sizes:
            fig = one_size(n, args, workdir)
            report.figures[str(n)] = fig
            rows.append([
                f"{n:,}",
                common.fmt(fig["p50_ms"]),
                common.fmt(fig["p99_ms"]),
                common.fmt(fig["max_ms"]),
                f"{common.fmt(fig['read_p50_ms'])} / {common.fmt(fig['read_p99_ms'])}",
                f"{fig['deliveries']:,} / {fig['missing']}",
                common.fmt(fig["rss_mib"]),
                common.fmt(fig["kib_per_follower"], 2),
                f"{fig['threads'][0]} → {fig['threads'][1]}",
                common.fmt(fig["server_cpu_ms_per_round"]),
                (f"{common.fmt(fig['lookup_idle_p99_ms'], 2)} / {common.fmt(fig['lookup_busy_p99_ms'], 2)}"
                f" ({fig['lookup_samples'][1]}) / {common.fmt(fig['lookup_after_rename_p99_ms'], 2)}"),
                common.fmt(fig["health_busy_max_ms"]),
                f"{common.fmt(fig['connect_s'])} s",
            ])
            print(json.dumps(fig), flush=True)
            if fig["missing"] or fig["errors"]:
                report.note(f"{n} followers: {fig['missing']} deliveries missing; errors: {fig['errors']}")
            if n == max(sizes):
                report.check(f"{n} followers: rename to every follower, p99", fig["p99_ms"], 250, " ms")
                ratio = fig["lookup_busy_p99_ms"] / fig["lookup_idle_p99_ms"]
                report.check(f"{n} followers: lookup p99 during fan-out vs idle", ratio, 3, "x")
                report.check(f"{n} followers: /health during fan-out, slowest", fig["health_busy_max_ms"], 50, " ms")
                report.check(f"{n} followers: memory per idle follower", fig["kib_per_follower"], 10, " KiB")
                report.check(f"{n} followers: deliveries missing", fig["missing"], 0, "")
    finally:
        common.remove_tree(workdir)
    report.table(
        f"Half event streams, half long-polls; {args.rounds} renames each; {args.procs} load processes "
        "on the same 2 cores",
        ["followers", "p50 ms", "p99 ms", "max ms", "read by the load p50 / p99 ms", "deliveries / missing",
         "RSS MiB", "KiB per follower", "threads", "server CPU ms per round",
         "lookup p99 ms: idle / fan-out (n) / rename to last", "/health max during ms", "connect"],
        rows,
    )
    report.note(
        "Latency: from just before the rename to the kernel's receive time of the follower's socket "
        "(SO_TIMESTAMPNS) for the read that completed that revision: on loopback, when the server's "
        "write put the bytes in the follower's socket. 'Read by the load' is when the load process got "
        "to that read: it reads thousands of sockets in Python on the same 2 cores as the server, so "
        "that figure carries the bench's own queue. "
        "Server CPU per round: the server's user + system time over the rounds (each: the gap at rest, "
        "the rename, the reconcile, the fan-out and every long-poll asking again) / rounds. "
        "KiB per follower: (RSS with the followers connected and idle − RSS before) / followers. "
        "Lookups every 5 ms on a kept-alive connection: at rest (before the followers, and between "
        "rounds), during the fan-out (asked between the first and the last follower's delivery: the "
        "target's figure) and from the rename to the last delivery (the reconcile's own cost included)."
    )
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
