"""Soak: thousands of effective commits under concurrent readers, followers and searches.

    .venv/bin/python bench/soak.py [--commits 10000] [--pool 40] [--components 20]

Starts the registry (a real `python -m droq_registry serve` on 127.0.0.1) on the real node
files plus --pool synthetic ones (gen_nodes.py) in a temporary folder, then makes changes
one at a time (soak_writer.py): a rewrite in place, an atomic rename over, a create, a
remove, a rename, a broken save, its fix, a second file claiming a node id, its removal.
The next change is only made once the previous one is served, so each is one revision
(two when the service read a file written in place half done: the file in error, then
its content), and the writer checks each revision's change records against what it did.
Meanwhile, each client a thread with its own connections (soak_load.py):

  readers    lookups, node details, lists with and without If-None-Match, candidates,
             sources, health, ready, metrics, ... (the last reader opens a new connection
             for every request)
  searchers  /api/v1/search, typed one letter at a time
  pollers    long-polls of /api/v1/changes?since=R&wait=W
  streams    /api/v1/events; all but one reconnect with Last-Event-ID every few events

Two phases with the same load (soak_phase.py): a warm-up of --warmup commits, by default
enough to fill the change log to its bound (so what follows measures leaks, not the log
reaching its size), then --commits commits. After each, every client hangs up and the
server is left alone until its descriptor and thread counts hold still (and are back to
the previous sample's, if they come back within --grace seconds); then its RSS, open
descriptors and threads are read from /proc (soak_proc.py).

Targets: RSS growth over the measured commits < 5 MiB; no descriptor and no thread more
at the end; no 5xx (as the clients saw it and as the server counted it); no transport
error; no answer an endpoint may not give; every follower got every record of every
revision, compared with the writer's; the revision advanced by at least --commits; each
change committed exactly the records it should; the final sources and nodes are what the
writer left on disk; no failed reconcile, no error in the server's log; exit code 0 on
SIGTERM. Exits 1 when a target is missed. Writes bench/results/soak.md and soak.json.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import subprocess
import sys
from typing import Any

import common
import soak_load
import soak_proc
from soak_load import Conn, Tally
from soak_phase import RESUME_EVERY, Phase, run_phase
from soak_proc import ProcSample
from soak_writer import Writer, build_folder, final_state_problems

RSS_GROWTH_LIMIT_MIB = 5.0
CLASSES = ("2xx", "3xx", "4xx", "5xx", "errors", "unexpected", "abandoned")


def git_head() -> str:
    done = subprocess.run(
        ["git", "-C", str(common.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def responses(tallies: list[Tally]) -> tuple[list[list[str]], collections.Counter[str]]:
    """Answers by endpoint and status class (table rows), and the totals that are checked."""
    by: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for tally in tallies:
        for (label, status), n in tally.answers.items():
            by[label][f"{status // 100}xx"] += n
            totals["answers"] += n
            totals["5xx"] += n if status >= 500 else 0
            if status not in soak_load.ALLOWED.get(label, frozenset()):
                by[label]["unexpected"] += n
                totals["unexpected"] += n
        for key, n in tally.errors.items():
            by[key.split(":", 1)[0]]["errors"] += n
            totals["errors"] += n
        totals["backwards"] += tally.backwards
        totals["reconnects"] += tally.reconnects
        for label, n in tally.aborted.items():
            by[label]["abandoned"] += n
            totals["abandoned"] += n
    rows = [[label, *(f"{c[k]:,}" for k in CLASSES)] for label, c in sorted(by.items())]
    rows.append(["all", *(f"{sum(c[k] for c in by.values()):,}" for k in CLASSES)])
    return rows, totals


def proc_rows(start: ProcSample, end: ProcSample) -> list[list[str]]:
    """Start, end and change of the server's memory, descriptors (by kind), threads (by name)."""

    def row(what: str, a: int, b: int) -> list[str]:
        return [what, str(a), str(b), f"{b - a:+d}"]

    def mib(what: str, a: int, b: int) -> list[str]:
        return [what, f"{a / 1024:.2f}", f"{b / 1024:.2f}", f"{(b - a) / 1024:+.2f}"]

    rows = [
        row("revision", start.at_revision, end.at_revision),
        mib("RSS (VmRSS), MiB", start.rss_kib, end.rss_kib),
        mib("peak RSS (VmHWM), MiB", start.hwm_kib, end.hwm_kib),
        row("open descriptors", start.fd_count, end.fd_count),
    ]
    rows += [row(f"  fd: {k}", start.fds[k], end.fds[k]) for k in sorted(set(start.fds) | set(end.fds))]
    rows.append(row("threads", start.thread_count, end.thread_count))
    names = sorted(set(start.threads) | set(end.threads))
    rows += [row(f"  thread: {n}", start.threads[n], end.threads[n]) for n in names]
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common.argument_parser(__doc__)
    add = parser.add_argument
    add("--commits", type=int, default=10_000, help="effective commits measured (default 10000)")
    add("--warmup", type=int, help="commits before the first sample (default 2 x --changes-keep + 50)")
    add("--changes-keep", type=int, help="the server's REGISTRY_CHANGES_KEEP (default --commits/10, 50-1000)")
    add("--pool", type=int, default=40, help="synthetic node files that are changed (default 40)")
    add("--name", default="soak", help="results file name in bench/results/ (default soak)")
    add("--components", type=int, default=20, help="components per synthetic node (default 20)")
    add("--readers", type=int, default=4, help="reader threads (default 4)")
    add("--searchers", type=int, default=1, help="search threads (default 1)")
    add("--pollers", type=int, default=4, help="long-polling followers (default 4)")
    add("--streams", type=int, default=4, help="event-stream followers (default 4)")
    add("--seed", type=int, default=1, help="seed of the writer's and the clients' choices (default 1)")
    add("--stall", type=float, default=30.0, help="seconds one change may take to be served (default 30)")
    add("--follow-timeout", type=float, default=60.0, help="seconds followers get to catch up (default 60)")
    add(
        "--grace",
        type=float,
        default=soak_proc.GRACE_S,
        help=f"seconds idle counts may take to come back down before a sample (default {soak_proc.GRACE_S:g})",
    )
    add("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of the server")
    add("--keep-workdir", action="store_true", help="keep the temporary folder (node files, database, log)")
    args = parser.parse_args(argv)
    if args.commits < 1 or args.pool < 4 or args.readers < 1:
        parser.error("--commits and --readers must be 1 or more, --pool 4 or more")
    if any("=" not in e for e in args.env):
        parser.error("--env takes KEY=VALUE")
    args.changes_keep = args.changes_keep or min(1000, max(50, args.commits // 10))
    if args.warmup is None:
        args.warmup = 2 * args.changes_keep + 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.exit_on_sigterm()
    workdir = common.temp_workdir("soak")
    folder = workdir / "nodes"
    folder.mkdir()
    slots, real, cat = build_folder(folder, args.pool, args.components)
    report = common.Report(args.name, f"Soak: {args.commits:,} effective commits under concurrent load")
    server = common.Server(
        assets_dir=folder,
        db_path=workdir / "registry.db",
        log_path=workdir / "server.log",
        extra_env={
            "REGISTRY_CHANGES_KEEP": str(args.changes_keep),
            **dict(e.split("=", 1) for e in args.env),
        },
    )
    print(f"soak: {workdir}: {len(real)} real + {args.pool} synthetic node files", flush=True)
    writer_tally = Tally()
    server.start()
    try:
        server.wait_ready(120)
        server.wait_until(lambda: server.health()["watcher"]["state"] == "watching", 60)
        counted = soak_proc.counters(server.port)  # the start-up's own /ready 503s stay out
        writer = Writer(folder, slots, Conn(server.port, writer_tally), random.Random(args.seed), args.stall)
        writer.revision = int(server.metrics()["droq_registry_revision"])
        ready = soak_proc.sample(server.pid, writer.revision, workdir)
        print(
            f"soak: server {server.pid} ready at revision {writer.revision}, RSS {ready.rss_kib / 1024:.1f} MiB",
            flush=True,
        )

        warm = run_phase("warm-up", server, writer, args.warmup, args, cat, workdir, args.seed * 1000)
        start = soak_proc.settled(server.pid, writer.revision, workdir, ready, args.grace)
        print(f"soak: start sample after {start.waited_s:.1f}s idle", flush=True)
        measured = run_phase(
            "measured", server, writer, args.commits, args, cat, workdir, args.seed * 1000 + 500
        )
        end = soak_proc.settled(server.pid, writer.revision, workdir, start, args.grace)
        print(f"soak: end sample after {end.waited_s:.1f}s idle", flush=True)

        health = server.health()
        server_counted = soak_proc.grown(counted, soak_proc.counters(server.port))
        state = final_state_problems(server.port, writer, real)
        writer.conn.close()
        exit_code = server.stop()
        print(f"soak: server stopped with exit code {exit_code}", flush=True)
        log_errors = soak_proc.log_problems(server.log_text())
    except Exception:
        # Whatever went wrong, the server's own account of it is in its log.
        exited = server.proc is not None and server.proc.poll() is not None
        how = f"exited with {server.proc.returncode}" if exited and server.proc else "running"
        if exited and server.proc and server.proc.returncode == 0:
            # The service exits 0 only on SIGTERM/SIGINT, and the soak sends none before the end.
            how += ": another process sent it SIGTERM or SIGINT"
        print(f"soak failed; the server ({how}) logged last:\n{server.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        server.stop()
        if not args.keep_workdir:
            common.remove_tree(workdir)

    phases = [warm, measured]
    rows, totals = responses([t for p in phases for _, t in p.tallies] + [writer_tally])
    server_5xx = {k: v for k, v in server_counted.items() if re.search(r'status="5\d\d"', k)}
    failed = {k: v for k, v in server_counted.items() if 'result="failed"' in k}
    misses = [f"{p.name} {f['name']}: {m}" for p in phases for f in p.followers for m in f["misses"]]
    problems = [f"{p.name}: {x}" for p in phases for x in p.problems]
    problems += [
        f"the {what} sample was taken after {x.still_s:.1f}s of still counts, not {soak_proc.STILL_S:g}s"
        for what, x in (("start", start), ("end", end))
        if x.still_s < soak_proc.STILL_S
    ]
    notes = [f"{p.name} {name}: {n}" for p in phases for name, t in p.tallies for n in t.notes]
    notes += [f"writer: {n}" for n in writer_tally.notes]
    growth = (end.rss_kib - start.rss_kib) / 1024

    write_tables(report, args, real, start, end, measured, rows)
    vis = writer.visible_ms
    requests = sum(v for k, v in server_counted.items() if k.startswith("droq_registry_http_requests_total"))
    report.table(
        "Commits and answers (both phases)",
        ["what", "value"],
        [
            [
                "changes made",
                f"{writer.count:,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(writer.ops.items())),
            ],
            ["revisions", f"{warm.first} -> {measured.final} ({measured.final - warm.first:,})"],
            ["changes whose revision or records differed from what was done", str(writer.mismatch_count)],
            [
                "writes in place read half done (an error revision, then the whole file)",
                str(writer.half_done),
            ],
            [
                "change to served (write -> the writer's long-poll answers), p50 / p99 / max ms",
                f"{common.percentile(vis, 50):.1f} / {common.percentile(vis, 99):.1f} / {max(vis):.1f}",
            ],
            [
                "measured phase: seconds, commits/s",
                f"{measured.seconds:.0f}, {args.commits / measured.seconds:.1f}",
            ],
            [
                "answers / transport errors / idle keep-alive connections reopened",
                f"{totals['answers']:,} / {totals['errors']} / {totals['reconnects']}",
            ],
            [
                "the server's own count (/metrics): requests, 5xx, failed reconciles",
                f"{requests:,.0f}, {sum(server_5xx.values()):.0f}, {sum(failed.values()):.0f}",
            ],
            [
                "/health at the end",
                (
                    f"{health['status']}, revision {health['revision']}, {health['nodes']} nodes, "
                    f"{health['files_in_error']} files in error"
                ),
            ],
            ["server exit code on SIGTERM", str(exit_code)],
        ],
    )
    for title, items in (
        ("Writer: changes whose records differed", writer.mismatches),
        ("Followers: what they missed", misses[:20]),
        ("Clients: problems", problems),
        ("Clients: notes (the first 20 of each)", notes[:40]),
        ("Final state against the folder", state),
        ("Server log: errors", log_errors[:20]),
        (
            "Server metrics: the 5xx and failed reconciles it counted",
            [f"{k} +{v:g}" for k, v in {**server_5xx, **failed}.items()],
        ),
    ):
        if items:
            report.note(f"### {title}\n\n" + "\n".join(f"- `{i}`" for i in items))

    report.check("RSS growth over the measured commits", growth, RSS_GROWTH_LIMIT_MIB, "MiB")
    report.check("open descriptors more at the end", end.fd_count - start.fd_count, 0)
    report.check("threads more at the end", end.thread_count - start.thread_count, 0)
    report.check("5xx answers seen by the clients", totals["5xx"], 0)
    report.check("5xx answers counted by the server", sum(server_5xx.values()), 0)
    report.check("transport errors", totals["errors"], 0)
    report.check("answers an endpoint may not give", totals["unexpected"], 0)
    report.check("revision going backwards for one client", totals["backwards"], 0)
    report.check("follower records missed (410, relist, gap, differing)", len(misses), 0)
    report.check("client problems (stuck, failed, behind)", len(problems), 0)
    report.check("effective commits measured", measured.final - measured.first, args.commits, higher=True)
    report.check("changes not committed exactly as made", writer.mismatch_count, 0)
    report.check("final state differences", len(state), 0)
    report.check("failed reconciles", sum(failed.values()), 0)
    report.check("server log errors", len(log_errors), 0)
    report.check("server exit code on SIGTERM", 99 if exit_code is None else abs(exit_code), 0)
    report.figures = {
        "git_head": git_head(),
        "commits": args.commits,
        "warmup": args.warmup,
        "changes_keep": args.changes_keep,
        "ready": ready.as_json(),
        "start": start.as_json(),
        "end": end.as_json(),
        "rss_growth_mib": growth,
        "responses": dict(totals),
        "ops": dict(writer.ops),
        "half_done_writes": writer.half_done,
        "visible_ms": {"p50": common.percentile(vis, 50), "p99": common.percentile(vis, 99), "max": max(vis)},
        "measured_seconds": measured.seconds,
        "server_counted": server_counted,
        "follower_misses": misses[:50],
        "writer_mismatches": writer.mismatches,
        "problems": problems,
        "final_state": state,
        "log_errors": log_errors[:50],
    }
    report.note(f"git rev-parse HEAD: `{report.figures['git_head']}`")
    report.write()
    return 0 if all(c.ok for c in report.checks) else 1


def write_tables(
    report: common.Report,
    args: argparse.Namespace,
    real: list[str],
    start: ProcSample,
    end: ProcSample,
    measured: Phase,
    rows: list[list[str]],
) -> None:
    """The setup, the process at start and end, the timeline, the answers, the followers."""
    last_resume = RESUME_EVERY * max(1, args.streams - 1)
    clients = (
        f"{args.readers} readers (the last without keep-alive), {args.searchers} searchers, "
        f"{args.pollers} long-pollers, {args.streams} event streams (one connected for the whole "
        f"phase, the others reconnecting every {RESUME_EVERY}-{last_resume} events, every other "
        f"time with a reset); the reader without keep-alive and the pollers abandon "
        f"{soak_load.ABANDON:.0%} of their requests with a reset"
    )
    setup: list[list[Any]] = [
        ["node files", f"{len(real)} real + {args.pool} synthetic ({args.components} components each)"],
        ["change log kept (REGISTRY_CHANGES_KEEP)", f"{args.changes_keep:,}"],
        ["commits: warm-up, then measured", f"{args.warmup:,}, then {args.commits:,}"],
        ["clients (threads, each with its own connections)", clients],
        [
            "server",
            "python -m droq_registry serve, LOG_LEVEL=warning, RELOAD=true, REGISTRY_RESYNC_SECONDS=60",
        ],
    ]
    report.table("Setup", ["what", "value"], setup)
    report.table(
        "The server after the warm-up (start) and after the measured commits (end), each once idle",
        ["", "start", "end", "change"],
        proc_rows(start, end),
    )
    report.table(
        "During the measured commits (under load)",
        ["commits", "revision", "seconds", "RSS MiB", "descriptors", "threads"],
        measured.timeline,
    )
    report.table("Answers by endpoint and status class (both phases)", ["endpoint", *CLASSES], rows)
    report.table(
        "Followers in the measured phase: their records against the writer's, revision by revision",
        ["follower", "revisions", "records", "connections", "missed"],
        [
            [
                f["name"],
                f"{f['from']}..{f['to']}",
                f"{f['records']:,}",
                str(f["connections"]),
                str(len(f["misses"])),
            ]
            for f in measured.followers
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
