"""Reconcile cost of one changed file, and change-to-visible latency through the API.

    .venv/bin/python bench/reconcile.py [--files 10000] [--changes 50] [--visible-changes 200]

(a) reconcile duration: a folder of --files generated node files (--components each, default
    5, so generating is quick) plus the real files; one generated file is rewritten with a
    new "version" --changes times, waiting after each until /metrics counts a changed pass
    (droq_registry_reconciles_total{result="changed"}); the pass's duration is what
    droq_registry_reconcile_duration_seconds_sum grew by; p50/p99 over the changes. Two ways
    of writing are measured (--write-mode): `inplace` (open with
    O_TRUNC, one write, close) and `rename` (write a hidden temporary file beside it and
    rename it over, as editors and config tools do). Target: p50 <= 50 ms.

(b) change-to-visible latency: lfx-runtime-executor-node.json rewritten in place with a new
    "version" each time, --visible-changes times; the time from the writer closing the file
    to GET /api/v1/nodes/{id} showing the new value, polled as fast as possible on one
    keep-alive connection with If-None-Match (304 until the node changes). Run on the real
    files alone and in the --files folder. Targets: p50 <= 50 ms, p99 <= 250 ms.

The big folder is filled after the server has started (--fill chunks, the default): the
generated files are moved in --chunk at a time, each chunk waited for, then a full pass
settles them, so what is measured is one change in a settled folder; --fill start puts
them all in before the server starts instead (a first load: give --ready-timeout enough).

The server runs as in production (RELOAD=true, the default watcher step and debounce,
REGISTRY_RESYNC_SECONDS=--resync), LOG_LEVEL=warning. Every wait is bounded by --timeout
seconds per change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import common
import gen_nodes

REAL_NODE = "lfx-runtime-executor-node"
#: Files must be older than the service's "racy clean" window (2 s) when it first reads
#: them, or its next full scans read them again (that is right, but not what is measured).
RACY_S = common.RACY_S


def wait_for(condition: Callable[[], object], timeout: float) -> bool:
    """Poll `condition` every millisecond for up to `timeout` s; whether it came true."""
    try:
        return bool(common.wait_until(condition, timeout, 0.001))
    except AssertionError:
        return False


def settle(server: common.Server, timeout: float) -> None:
    """Wait for /ready, the watcher, and its first full pass to be over."""
    server.wait_watching(timeout)
    time.sleep(1.0)


@contextlib.contextmanager
def big_server(
    args: argparse.Namespace, folder: Path, staging: Path, db: Path, log_level: str
) -> Iterator[common.Server]:
    """A server on `folder` with the generated files from `staging` in it; moved back after."""
    names = sorted(p.name for p in staging.glob("*.json"))
    if args.fill == "start":
        for name in names:
            os.rename(staging / name, folder / name)
        time.sleep(RACY_S)
    server = common.Server(assets_dir=folder, db_path=db, log_level=log_level, resync_seconds=args.resync)
    try:
        server.start()
        settle(server, args.ready_timeout)
        if args.fill == "chunks":
            took = common.fill_folder(server, staging, folder, args.chunk, args.ready_timeout)
            print(f"  filled {len(names)} files in {took:.1f}s", flush=True)
            time.sleep(0.5)
        yield server
    finally:
        server.stop()
        server.cleanup()
        for name in names:
            if (folder / name).exists():
                os.rename(folder / name, staging / name)


#: Starts a settled server at the given log level, with a database of the given name.
Opener = Callable[[str, str], "contextlib.AbstractContextManager[common.Server]"]


def part_a(open_server: Opener, target: Path, mode: str, args: argparse.Namespace) -> dict[str, object]:
    """Rewrite `target` --changes times; the reconcile passes each change caused, from /metrics."""
    write = common.write_node_file if mode == "inplace" else common.write_node_file_atomic
    per_change: list[common.Reconciles] = []
    timeouts = 0
    with open_server("warning", f"a-{mode}") as server:
        original = target.read_bytes()
        for k in range(args.changes):
            before = common.Reconciles.of(server.port)
            write(target, gen_nodes.with_version(original, f"1.{k + 1}.0-{mode}"))
            if not wait_for(lambda before=before: common.Reconciles.of(server.port).changed > before.changed,
                            args.timeout):
                timeouts += 1
                continue
            time.sleep(args.quiet)  # a second batch for the same write lands here
            per_change.append(common.Reconciles.of(server.port).since(before))
        target.write_bytes(original)
    # One pass per change is the rule; where a write caused more (a half-written file seen
    # first), the change's seconds are shared evenly by its passes.
    durations = [r.seconds / r.passes * 1000 for r in per_change for _ in range(round(r.passes))]
    return {
        "mode": mode,
        "changes": args.changes,
        "timeouts": timeouts,
        "reconciles": len(durations),
        "extra": sum(max(0, round(r.passes) - 1) for r in per_change),
        **common.spread(durations),
    }


def part_b(open_server: Opener, folder: Path, label: str, args: argparse.Namespace) -> dict[str, object]:
    """Rewrite the lfx node --visible-changes times; time until the API shows each value."""
    target = folder / f"{REAL_NODE}.json"
    original = target.read_bytes()
    versions = [f"2.{k}.0-visible" for k in range(args.visible_changes)]
    payloads = [gen_nodes.with_version(original, v) for v in versions]
    markers = [f'"version":"{v}"'.encode() for v in versions]
    path = f"/api/v1/nodes/{REAL_NODE}"
    latencies: list[float] = []
    polls: list[int] = []
    timeouts = 0
    with open_server("warning", f"b-{label}") as server:
        conn = common.KeepAlive(server.port)
        status, headers, _ = conn.get(path)
        if status != 200:
            raise SystemExit(f"{path}: {status}")
        etag = headers["etag"]
        for data, marker in zip(payloads, markers):
            common.write_node_file(target, data)
            t0 = time.perf_counter()
            deadline = t0 + args.timeout
            n = 0
            seen = False
            while time.perf_counter() < deadline:
                status, headers, body = conn.get(path, {"If-None-Match": etag})
                n += 1
                if status == 200:
                    etag = headers["etag"]
                    if marker in body:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        seen = True
                        break
            polls.append(n)
            if not seen:
                timeouts += 1
            time.sleep(args.pause)
        conn.close()
    target.write_bytes(original)
    return {
        "folder": label,
        "changes": args.visible_changes,
        "timeouts": timeouts,
        **common.spread(latencies),
        "polls": statistics.median(polls) if polls else 0,
    }


def part_first(folder: Path, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    """(first) A new node file written the moment /ready answers 200 (no settling), on a fresh
    server each time: how long until its lookup answers 200."""
    latencies: list[float] = []
    for k in range(args.first_changes):
        server = common.Server(assets_dir=folder, db_path=workdir / f"first-{k}.db", log_level="warning",
                               resync_seconds=args.resync)
        try:
            server.start()
            server.wait_ready(args.ready_timeout, interval=0.001)
            conn = common.KeepAlive(server.port)
            lookup = f"/api/v1/components/First{k}/node"
            (folder / f"first-{k}.json").write_text(
                json.dumps({"node_id": f"first-{k}", "name": "First", "components": {f"First{k}": "p.f"}})
            )
            t0 = time.perf_counter()
            if wait_for(lambda conn=conn, lookup=lookup: conn.get(lookup)[0] == 200, args.timeout):
                latencies.append((time.perf_counter() - t0) * 1000)
            conn.close()
        finally:
            server.stop()
            server.cleanup()
    return {"changes": args.first_changes, "timeouts": args.first_changes - len(latencies), **common.spread(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--files", type=int, default=10_000, help="generated files in the big folder (default 10000)"
    )
    parser.add_argument("--components", type=int, default=5, help="components per generated file (default 5)")
    parser.add_argument("--changes", type=int, default=50, help="(a) changes per write mode (default 50)")
    parser.add_argument(
        "--write-mode",
        choices=("inplace", "rename", "both"),
        default="both",
        help="(a) how the file is rewritten (default both)",
    )
    parser.add_argument(
        "--visible-changes", type=int, default=200, help="(b) changes per folder (default 200)"
    )
    parser.add_argument(
        "--parts",
        default="a,b,b-big,first",
        help="which parts: a (big folder), b (real files), b-big (big folder), first (the first change "
        "after /ready); default all",
    )
    parser.add_argument("--first-changes", type=int, default=10,
                        help="(first) fresh servers, each given a new file as /ready answers (default 10)")
    parser.add_argument(
        "--fill",
        choices=("chunks", "start"),
        default="chunks",
        help="how the big folder gets its files: moved in after start (default) or there at start",
    )
    parser.add_argument("--chunk", type=int, default=500, help="files moved in at a time with --fill chunks")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each change (default 5)"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.05,
        help="(a) seconds to wait after a change's reconcile line for more (default 0.05)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.02, help="(b) seconds between changes (default 0.02)"
    )
    parser.add_argument("--resync", type=float, default=60.0, help="REGISTRY_RESYNC_SECONDS (default 60)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds allowed for a start, and for each chunk to load (default 180)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="reconcile", help="result file name (default reconcile)")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    parts = set(args.parts.split(","))
    if parts - {"a", "b", "b-big", "first"}:
        parser.error("--parts takes a, b, b-big, first")

    report = common.Report(args.name, "Reconcile duration and change-to-visible latency")
    workdir = common.temp_workdir("reconcile")
    try:
        real = workdir / "real"
        gen_nodes.copy_real(real)
        big = workdir / "big"
        staging = workdir / "staging"
        gen_nodes.copy_real(big)
        if parts & {"a", "b-big"}:
            t = time.perf_counter()
            gen_nodes.generate(staging, args.files, args.components, args.seed)
            print(f"generated {args.files} x {args.components} in {time.perf_counter() - t:.1f}s", flush=True)
            time.sleep(RACY_S)  # see RACY_S
        big_label = f"{args.files} generated + real files"

        @contextlib.contextmanager
        def real_server(log_level: str, db_name: str) -> Iterator[common.Server]:
            server = common.Server(
                assets_dir=real,
                db_path=workdir / f"{db_name}.db",
                log_level=log_level,
                resync_seconds=args.resync,
            )
            try:
                server.start()
                settle(server, args.ready_timeout)
                yield server
            finally:
                server.stop()
                server.cleanup()

        def big_opener(log_level: str, db_name: str) -> contextlib.AbstractContextManager[common.Server]:
            return big_server(args, big, staging, workdir / f"{db_name}.db", log_level)

        total_files = args.files + len(list(real.glob("*.json")))
        if "a" in parts:
            target = big / f"{gen_nodes.node_id('bench', args.files // 2)}.json"
            modes = ["inplace", "rename"] if args.write_mode == "both" else [args.write_mode]
            rows = []
            for mode in modes:
                r = part_a(big_opener, target, mode, args)
                print(
                    f"(a) {mode}: p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms "
                    f"({r['reconciles']} reconciles)",
                    flush=True,
                )
                rows.append(
                    [
                        mode,
                        r["changes"],
                        r["reconciles"],
                        r["extra"],
                        r["timeouts"],
                        common.fmt(r["p50"]),
                        common.fmt(r["p90"]),
                        common.fmt(r["p99"]),
                        common.fmt(r["max"]),
                    ]
                )
                report.check(f"(a) reconcile of one changed file, {mode} write: p50", r["p50"], 50.0, "ms")
                report.figures[f"a_{mode}"] = r
            report.table(
                f"(a) one file changed in a folder of {total_files} node files (filled: {args.fill}): "
                "reconcile duration from /metrics",
                [
                    "write",
                    "changes",
                    "reconciles",
                    "extra reconciles",
                    "timeouts",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                ],
                rows,
            )

        rows = []
        for key, opener, folder, label in (
            ("b", real_server, real, "real files"),
            ("b-big", big_opener, big, big_label),
        ):
            if key not in parts:
                continue
            r = part_b(opener, folder, label, args)
            print(
                f"(b) {label}: p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms ({r['timeouts']} timeouts)",
                flush=True,
            )
            rows.append(
                [
                    label,
                    r["changes"],
                    r["timeouts"],
                    common.fmt(r["polls"], 0),
                    common.fmt(r["p50"]),
                    common.fmt(r["p90"]),
                    common.fmt(r["p99"]),
                    common.fmt(r["max"]),
                ]
            )
            p50, p99 = float(r["p50"]), float(r["p99"])  # type: ignore[arg-type]
            report.check(f"(b) change to visible, {label}: p50", p50, 50.0, "ms")
            # A change that never showed counts as the whole timeout: p99 is at least that.
            timed_out = f" ({r['timeouts']} timed out)" if r["timeouts"] else ""
            worst = p99 if not r["timeouts"] else args.timeout * 1000
            report.check(f"(b) change to visible, {label}: p99{timed_out}", worst, 250.0, "ms")
            report.figures[key] = r
        if rows:
            report.table(
                f"(b) change to visible: {REAL_NODE}.json rewritten with a new version, "
                f"polled with If-None-Match on one keep-alive connection",
                [
                    "folder",
                    "changes",
                    "timeouts",
                    "polls per change (median)",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                ],
                rows,
            )
        if "first" in parts:
            r = part_first(real, workdir, args)
            print(f"(first) p50 {r['p50']:.1f} ms max {r['max']:.1f} ms ({r['timeouts']} timeouts)", flush=True)
            report.table(
                "(first) a new node file written as /ready first answers 200, each on a fresh server",
                ["changes", "timeouts", "p50 ms", "max ms"],
                [[r["changes"], r["timeouts"], common.fmt(r["p50"]), common.fmt(r["max"])]],
            )
            worst = float(r["max"]) if not r["timeouts"] else args.timeout * 1000  # type: ignore[arg-type]
            report.check("(first) the first change after /ready: slowest", worst, 250.0, "ms")
            report.figures["first"] = r
        filled = f"after start, {args.chunk} files at a time" if args.fill == "chunks" else "before start"
        report.note(
            "Server as in production: RELOAD=true, watcher step 10 ms / debounce 400 ms (defaults), "
            f"REGISTRY_RESYNC_SECONDS={args.resync:g}. (a): 'extra reconciles' are further passes the "
            "same write caused (e.g. a half-written file seen first); durations include them. The big "
            f"folder was filled {filled}. "
            "(b): from the writer's close() to the first response carrying the new value."
        )
        report.write()
    finally:
        common.remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
