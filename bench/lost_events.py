"""Lost file events: how fast files made while the service was stopped are served.

    .venv/bin/python bench/lost_events.py [--files 20000] [--repeat 3]

Starts the registry on an empty folder with the periodic rescan an hour away
(REGISTRY_RESYNC_SECONDS=3600), waits until its watcher applies events, then stops the
process (SIGSTOP), writes --files small node files, and lets it go on (SIGCONT). The
kernel's inotify queue (`fs.inotify.max_queued_events`) holds only part of their events;
the rest are dropped. Measured: seconds from SIGCONT until /health counts every node (the
target is 10 s), and whether the log said that events were lost. Each round uses a new
folder and database; the median counts.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import common

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")
TARGET_S = 10.0


def node_file(i: int) -> bytes:
    node_id = f"n{i:05d}"
    return json.dumps({"node_id": node_id, "name": f"Node {i}", "components": {f"C{i}": "pkg.c"}}).encode()


def one_round(workdir: Path, files: int, timeout: float) -> tuple[float, float, bool]:
    """(seconds to write the files while stopped, seconds from SIGCONT to all served,
    whether the log said events were lost)."""
    folder = workdir / "nodes"
    folder.mkdir(parents=True)
    server = common.Server(assets_dir=folder, db_path=workdir / "registry.db", log_level="info",
                           resync_seconds=3600)
    with server:
        server.wait_watching(60)
        common.write_node_file(folder / "probe.json", node_file(99999))
        server.wait_until(lambda: server.metrics()["droq_registry_nodes"] == 1, 30)  # events apply
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            for i in range(files):
                (folder / f"n{i:05d}.json").write_bytes(node_file(i))
            written = time.perf_counter() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
            resumed = time.perf_counter()
        server.wait_until(lambda: server.metrics()["droq_registry_nodes"] == files + 1, timeout, interval=0.05)
        served = time.perf_counter() - resumed
        said = "file events were lost" in server.log_text()
    server.cleanup()
    return written, served, said


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--files", type=int, default=20_000, help="files made while stopped (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median counts (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a round (default 120)")
    parser.add_argument("--name", default="lost_events", help="result file name (default lost_events)")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    limit = QUEUE_LIMIT.read_text().strip()

    report = common.Report(args.name, f"{args.files:,} files made while the service was stopped")
    rows = []
    served = []
    for round_no in range(1, args.repeat + 1):
        workdir = common.temp_workdir("lost-events")
        try:
            written, seconds, said = one_round(workdir, args.files, args.timeout)
        finally:
            common.remove_tree(workdir)
        served.append(seconds)
        rows.append([round_no, common.fmt(written, 2), common.fmt(seconds, 2), "yes" if said else "no"])
        print(f"round {round_no}: written in {written:.2f} s, all served {seconds:.2f} s after SIGCONT",
              flush=True)
    report.table(
        f"Rounds (fs.inotify.max_queued_events={limit}, REGISTRY_RESYNC_SECONDS=3600)",
        ["round", "writing while stopped (s)", "SIGCONT to all served (s)", "log said events were lost"],
        rows,
    )
    report.check("SIGCONT to all files served, median", statistics.median(served), TARGET_S, "s")
    report.write()
    return 0 if all(c.ok for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
