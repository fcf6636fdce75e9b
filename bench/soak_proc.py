"""What the soak benchmark (bench/soak.py) reads of the server process from outside.

`sample` reads /proc/PID: resident memory (VmRSS, VmHWM), open descriptors by kind
(socket, pipe, inotify, each database file...) and threads by name, so a leak shows as
what leaked. `settled` waits until the descriptor and thread counts stop moving (clients
that just hung up are closed by the server within moments) and, within a grace period,
until they are no higher than at the previous sample. `counters` reads the server's
own request and reconcile counters from /metrics, to be compared before and after.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import common

#: Seconds the server's counts must hold still before a sample.
STILL_S = 3.0
#: Seconds a sample may wait for counts above the previous sample's to come back down.
#: A thread that served a burst outlives it: anyio keeps an idle worker thread until a
#: later job finds it idle for 10 s (its WorkerThread.MAX_IDLE_TIME), and the watcher
#: submits a job every second (watchfiles runs each 1 s wait in a worker). The periodic
#: rescan, running beside the watcher's wait, needs a second worker, gone within 11 s;
#: an idle kept-alive connection is closed after 5 s. What is still there after this long
#: is counted: at the start it is part of the working set, at the end it has leaked.
GRACE_S = 15.0


@dataclass(frozen=True)
class ProcSample:
    """What /proc says of the server at one moment."""

    at_revision: int
    rss_kib: int
    hwm_kib: int
    fds: collections.Counter[str]
    threads: collections.Counter[str]
    #: For a `settled` sample: how long the counts had held still when it was taken, and
    #: how long it waited in all.
    still_s: float = 0.0
    waited_s: float = 0.0

    @property
    def fd_count(self) -> int:
        return sum(self.fds.values())

    @property
    def thread_count(self) -> int:
        return sum(self.threads.values())

    def as_json(self) -> dict[str, object]:
        return {
            "revision": self.at_revision,
            "rss_kib": self.rss_kib,
            "hwm_kib": self.hwm_kib,
            "fds": dict(self.fds),
            "threads": dict(self.threads),
        }


class ProcessGone(RuntimeError):
    """The server is no longer running (its /proc entry is gone or a zombie's)."""


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} has exited") from None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:  # a zombie has no memory lines
        raise ProcessGone(f"process {pid} has exited (no {key} in /proc/{pid}/status)")
    return int(match.group(1))


def _fd_kind(target: str, workdir: Path) -> str:
    """A descriptor's target, named so that equal kinds add up: socket, pipe, a file name."""
    if target.startswith(("socket:", "pipe:")):
        return target.split(":", 1)[0]
    if target.startswith(("anon_inode:", "/dev/")):
        return target
    if target.startswith(str(workdir)):
        return os.path.relpath(target, workdir)
    return "other file"


def sample(pid: int, revision: int, workdir: Path) -> ProcSample:
    """RSS, peak RSS, descriptors by kind and threads by name of process `pid`."""
    fds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[_fd_kind(os.readlink(f"/proc/{pid}/fd/{fd}"), workdir)] += 1
        except OSError:  # closed between listdir and readlink
            continue
    threads: collections.Counter[str] = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            threads[Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()] += 1
        except OSError:  # the thread ended meanwhile
            continue
    return ProcSample(revision, _status_kib(pid, "VmRSS"), _status_kib(pid, "VmHWM"), fds, threads)


def settled(pid: int, revision: int, workdir: Path, floor: ProcSample, grace: float) -> ProcSample:
    """Sample once the descriptor and thread counts have not moved for `STILL_S` seconds
    and are no higher than `floor`'s, or once `grace` seconds have passed, whatever they
    are then. `still_s` and `waited_s` of the result say how long each took."""
    started = time.monotonic()
    deadline = started + grace
    last = sample(pid, revision, workdir)
    since = started
    while time.monotonic() < deadline:
        now = time.monotonic()
        above = last.fd_count > floor.fd_count or last.thread_count > floor.thread_count
        if now - since >= STILL_S and not above:
            break
        time.sleep(0.25)
        new = sample(pid, revision, workdir)
        if (new.fd_count, new.thread_count) != (last.fd_count, last.thread_count):
            since = time.monotonic()
        last = new
    now = time.monotonic()
    return dataclasses.replace(last, still_s=now - since, waited_s=now - started)


def counters(port: int) -> dict[str, float]:
    """The server's `_http_requests_total` and `_reconciles_total` series: {line's labels: value}."""
    wanted = ("droq_registry_http_requests_total{", "droq_registry_reconciles_total{")
    return {series: value for series, value in common.metrics(port).items() if series.startswith(wanted)}


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The series that counted something between two `counters` readings, by how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def log_problems(text: str) -> list[str]:
    """Server log lines at ERROR or CRITICAL, and tracebacks."""
    return [line for line in text.splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]
