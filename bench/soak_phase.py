"""One phase of the soak benchmark (bench/soak.py): commits under the whole load.

`run_phase` starts every client (soak_load.py), waits until each follower is following,
makes the phase's commits with the writer (soak_writer.py), lets every follower catch up
with the last revision, hangs every client up, and compares each follower's records with
the writer's over the revisions it followed.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import soak_proc
from soak_load import Catalogue, Client, Follower, Poller, Reader, Record, Searcher, Stream, Tally
from soak_writer import Writer

#: How long a long-poll of the pollers waits when nothing changes (one is picked each time).
POLL_WAITS = (1.0, 5.0)
#: Stream i (from 1) reconnects with Last-Event-ID every i x this many events; stream 0 never.
RESUME_EVERY = 25


@dataclass
class Load:
    """The clients of one phase."""

    readers: list[Reader]
    searchers: list[Searcher]
    pollers: list[Poller]
    streams: list[Stream]
    stop: threading.Event

    @property
    def clients(self) -> list[Client]:
        return [*self.readers, *self.searchers, *self.pollers, *self.streams]

    @property
    def followers(self) -> list[Follower]:
        return [*self.pollers, *self.streams]


def start_load(port: int, args: argparse.Namespace, cat: Catalogue, seed: int) -> Load:
    stop = threading.Event()
    readers = [
        Reader(f"reader-{i}", port, stop, seed + i, cat, keep_alive=i < args.readers - 1 or args.readers == 1)
        for i in range(args.readers)
    ]
    searchers = [Searcher(f"searcher-{i}", port, stop, seed + 100 + i, cat) for i in range(args.searchers)]
    pollers = [Poller(f"poller-{i}", port, stop, seed + 200 + i, POLL_WAITS) for i in range(args.pollers)]
    streams = [
        Stream(f"stream-{i}", port, stop, seed + 300 + i, resume_every=RESUME_EVERY * i)
        for i in range(args.streams)
    ]
    load = Load(readers, searchers, pollers, streams, stop)
    for client in load.clients:
        client.start()
    deadline = time.monotonic() + 30
    while any(f.start_revision is None for f in load.followers):
        failed = [c for c in load.clients if c.failure is not None]
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"followers did not start: {[(c.name, c.failure) for c in failed]}")
        time.sleep(0.02)
    return load


def stop_load(load: Load, final: int, timeout: float) -> list[str]:
    """Let every follower reach revision `final`, then stop all clients; return problems."""
    problems = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(f.seen < final for f in load.followers):
        time.sleep(0.02)
    for f in load.followers:
        if f.seen < final:
            problems.append(f"{f.name} saw up to revision {f.seen}, not {final}, within {timeout:.0f}s")
    load.stop.set()
    for follower in load.followers:  # a long-poll or a stream may be waiting: do not wait for it
        follower.hang_up()
    for client in load.clients:
        client.join(timeout)
        if client.is_alive():
            problems.append(f"{client.name} did not stop within {timeout:.0f}s")
        if client.failure is not None:
            problems.append(f"{client.name} failed: {type(client.failure).__name__}: {client.failure}")
    return problems


def follower_misses(f: Follower, truth: dict[int, list[Record]], final: int) -> list[str]:
    """How `f`'s records differ from the writer's, over the revisions it followed."""
    assert f.start_revision is not None
    misses = list(f.missed)
    want = [rec for r in range(f.start_revision + 1, final + 1) for rec in truth.get(r, [])]
    got = [rec for rec in f.records if f.start_revision < rec[0] <= final]
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        misses.append(
            f"{len(got)} records, expected {len(want)}; missing {missing[:3]}, unexpected {extra[:3]}"
            + ("" if missing or extra else " (order or duplicates differ)")
        )
    return misses


@dataclass
class Phase:
    name: str
    first: int
    final: int
    seconds: float
    tallies: list[tuple[str, Tally]]
    followers: list[dict[str, Any]]
    problems: list[str]
    timeline: list[list[str]]


def run_phase(
    name: str,
    server: common.Server,
    writer: Writer,
    commits: int,
    args: argparse.Namespace,
    cat: Catalogue,
    workdir: Path,
    seed: int,
) -> Phase:
    load = start_load(server.port, args, cat, seed)
    first = writer.revision
    started = time.perf_counter()
    every = max(1, commits // 10)
    timeline = []
    try:
        while writer.revision < first + commits:
            writer.commit()
            done = writer.revision - first
            if done % every == 0 or writer.revision >= first + commits:
                s = soak_proc.sample(server.pid, writer.revision, workdir)
                timeline.append(
                    [
                        str(done),
                        str(writer.revision),
                        f"{time.perf_counter() - started:.0f}",
                        f"{s.rss_kib / 1024:.1f}",
                        str(s.fd_count),
                        str(s.thread_count),
                    ]
                )
                print(f"  {name}: {done}/{commits} commits, " + ", ".join(timeline[-1][2:]), flush=True)
    finally:
        seconds = time.perf_counter() - started
        problems = stop_load(load, writer.revision, args.follow_timeout)
    print(f"  {name}: every client caught up and hung up in {time.perf_counter() - started - seconds:.1f}s")
    followers = []
    for f in load.followers:
        misses = follower_misses(f, writer.truth, writer.revision)
        followers.append(
            {
                "name": f.name,
                "from": f.start_revision,
                "to": f.seen,
                "records": len(f.records),
                "connections": f.connections,
                "misses": misses,
            }
        )
    tallies = [(c.name, c.tally) for c in load.clients]
    return Phase(name, first, writer.revision, seconds, tallies, followers, problems, timeline)
