"""Lookup latency while a burst of node files lands in the folder, against idle.

    .venv/bin/python bench/burst.py [--files 500] [--components 20] [--duration 5]

Starts the registry on a copy of the real node files and measures
GET /api/v1/components/{class}/node (a class of lfx-runtime-executor-node) with
`wrk -t2 -c32 --latency`:

  idle     --duration seconds, nothing changing
  create   --burst-duration seconds; --lead seconds in, --files new synthetic node files
           (gen_nodes.py, --components each) are written into the folder at once
  rewrite  the same, the --files files all rewritten with a new "version"

For each burst: p99 and req/s during the run, the ratio to idle p99 (target <= 3x), how
long the burst took to become visible (from the first write to /health showing every
node, or the last file's new version, with the revision then stable), and how many
revisions the server made of it. The server logs at warning (no access lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import common
import gen_nodes

REAL_NODE = "lfx-runtime-executor-node"
PREFERRED_CLASS = "TextInputComponent"


def lookup_path(folder: Path) -> str:
    classes = list(json.loads((folder / f"{REAL_NODE}.json").read_bytes())["components"])
    cls = PREFERRED_CLASS if PREFERRED_CLASS in classes else classes[0]
    return f"/api/v1/components/{cls}/node"


def wrk_in_background(url: str, args: argparse.Namespace, duration: float) -> tuple[threading.Thread, list]:
    """Start wrk in a thread; the list gets its WrkResult (or the exception)."""
    out: list = []

    def run() -> None:
        try:
            out.append(common.run_wrk(url, duration, args.threads, args.connections))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which reports it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def burst(
    server: common.Server,
    url: str,
    args: argparse.Namespace,
    write: Callable[[], None],
    visible: Callable[[], bool],
) -> dict[str, object]:
    """wrk for --duration s; --lead s in, `write()`; then wait until `visible()` and quiet."""
    before = int(server.metrics()["droq_registry_revision"])
    thread, out = wrk_in_background(url, args, args.burst_duration)
    time.sleep(args.lead)
    t0 = time.perf_counter()
    write()
    written = time.perf_counter() - t0
    deadline = time.monotonic() + args.timeout
    seen_at = None
    while time.monotonic() < deadline:
        if visible():
            seen_at = time.perf_counter() - t0
            break
        time.sleep(0.01)
    # The revision is stable when two looks 300 ms apart agree.
    revision = int(server.metrics()["droq_registry_revision"])
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = int(server.metrics()["droq_registry_revision"])
        if now == revision:
            break
        revision = now
    thread.join(args.burst_duration + 60)
    if not out or isinstance(out[0], Exception):
        raise RuntimeError(f"wrk failed during the burst: {out[0] if out else 'no result'}")
    result: common.WrkResult = out[0]
    return {
        "wrk": result,
        "write_s": written,
        "visible_s": seen_at,
        "revisions": revision - before,
        "last_reconcile_ms": server.health().get("last_reconcile_ms"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--files", type=int, default=500, help="node files in the burst (default 500)")
    parser.add_argument("--components", type=int, default=20, help="components per burst file (default 20)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument(
        "--burst-duration",
        type=float,
        default=10.0,
        help="seconds per wrk run around a burst; should outlast the burst (default 10)",
    )
    parser.add_argument(
        "--lead", type=float, default=0.5, help="seconds of load before the burst (default 0.5)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for a burst to become visible (default 120)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="burst", help="result file name (default burst)")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    common.require_wrk()
    if args.files < 1 or args.burst_duration <= args.lead:
        parser.error("--files must be 1 or more and --burst-duration longer than --lead")

    report = common.Report(args.name, f"Lookup latency during a burst of {args.files} node files")
    workdir = common.temp_workdir("burst")
    folder = workdir / "nodes"
    staging = workdir / "staging"
    try:
        gen_nodes.copy_real(folder)
        paths = gen_nodes.generate(staging, args.files, args.components, args.seed, prefix="burst")
        payloads = [(folder / p.name, p.read_bytes()) for p in paths]
        rewrites = [(dst, gen_nodes.with_version(raw, "2.0.0-burst")) for dst, raw in payloads]
        last_id = gen_nodes.node_id("burst", args.files - 1)
        expected_nodes = len(list(folder.glob("*.json"))) + args.files
        path = lookup_path(folder)

        server = common.Server(assets_dir=folder, db_path=workdir / "registry.db")
        with server:
            server.wait_watching(60)
            time.sleep(1.0)
            url = server.base + path
            common.run_wrk(url, 1, args.threads, args.connections)  # warm-up, not counted
            idle = common.run_wrk(url, args.duration, args.threads, args.connections)
            print(f"idle: {idle.rps:.0f} req/s p99 {idle.p99:.2f} ms", flush=True)

            def write_all(items: list[tuple[Path, bytes]]) -> Callable[[], None]:
                return lambda: [common.write_node_file(dst, raw) for dst, raw in items]

            def all_there() -> bool:
                return server.metrics()["droq_registry_nodes"] >= expected_nodes

            def rewritten() -> bool:
                status, _, body = common.get(server.port, f"/api/v1/nodes/{last_id}")
                return status == 200 and b'"version":"2.0.0-burst"' in body and all_there()

            runs = {
                "create": burst(server, url, args, write_all(payloads), all_there),
                "rewrite": burst(server, url, args, write_all(rewrites), rewritten),
            }
            health = server.health()
            rss = common.peak_rss_mb(server.pid)
        server.cleanup()

        rows = [
            [
                "idle",
                "-",
                "-",
                "-",
                common.fmt(idle.rps, 0),
                common.fmt(idle.p50, 2),
                common.fmt(idle.p99, 2),
                common.fmt(idle.latency_ms.get("max"), 1),
                "1.00",
                "-",
            ]
        ]
        for key, r in runs.items():
            w: common.WrkResult = r["wrk"]  # type: ignore[assignment]
            ratio = w.p99 / idle.p99
            check = report.check(f"{key} burst: lookup p99 / idle p99", ratio, 3.0, "x")
            vis = r["visible_s"]
            if vis is None or vis > args.burst_duration - args.lead:
                report.note(
                    f"{key}: the burst outlasted the {args.burst_duration:g}s wrk window "
                    "(--burst-duration to widen it)."
                )
            rows.append(
                [
                    f"{key} {args.files} files",
                    f"{r['write_s']:.2f}",
                    f"{vis:.2f}" if vis is not None else f"> {args.timeout:.0f}",
                    r["revisions"],
                    common.fmt(w.rps, 0),
                    common.fmt(w.p50, 2),
                    common.fmt(w.p99, 2),
                    common.fmt(w.latency_ms.get("max"), 1),
                    f"{ratio:.2f}",
                    check.verdict(),
                ]
            )
            errors = sum(w.socket_errors.values())
            if errors:
                report.note(f"{key}: wrk counted {errors} socket errors {w.socket_errors}")
            report.figures[key] = {
                "rps": w.rps,
                "p50_ms": w.p50,
                "p99_ms": w.p99,
                "max_ms": w.latency_ms.get("max"),
                "ratio": ratio,
                "visible_s": vis,
                "write_s": r["write_s"],
                "revisions": r["revisions"],
                "last_reconcile_ms": r["last_reconcile_ms"],
            }
        report.figures["idle"] = {"rps": idle.rps, "p50_ms": idle.p50, "p99_ms": idle.p99}
        report.table(
            f"GET {path}, wrk -t{args.threads} -c{args.connections} --latency, "
            f"-d{round(args.duration)}s idle, -d{round(args.burst_duration)}s around each burst, "
            f"written {args.lead:g}s into the run ({args.files} files x {args.components} components; "
            f"{health['nodes']} nodes at the end, peak RSS {common.fmt(rss)} MiB)",
            [
                "run",
                "write s",
                "visible s",
                "revisions",
                "req/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 / idle p99",
                "target <= 3x",
            ],
            rows,
        )
        report.note(
            "'write s': time to write all the files; 'visible s': from the first write until the API "
            "showed the whole burst; 'revisions': commits the server made of it. The wrk window around "
            f"a burst is {args.burst_duration:g}s from {args.lead:g}s before it: when 'visible s' is close "
            "to or past the rest, the burst outlasted the measurement and p99 covers only its start."
        )
        report.write()
    finally:
        common.remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
