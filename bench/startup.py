"""Start-up cost: first load of a large registry, restart with nothing changed, peak memory.

    .venv/bin/python bench/startup.py [--nodes 1000] [--components 350] [--restarts 3]

Generates N synthetic node files of M components (gen_nodes.py; default 1,000 x 350, about
93 MB of JSON) and starts `python -m droq_registry serve` on them with a new database:

  first load   time from spawning the process to GET /ready answering 200
  restart      stop it (SIGTERM), start again on the same database and folder, nothing
               changed: time to /ready 200 (repeated --restarts times; the median counts)
  peak RSS     VmHWM of the server process after the first load (and after the watcher's
               first full rescan, which follows it)

Also shown: time until the process answers HTTP at all (interpreter, imports, the database
load), the first reconcile's own duration from /metrics, and the database size.
Targets: first load <= 10 s, restart <= 2 s, peak RSS <= 200 MiB.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import common
import gen_nodes


def time_to_listen_and_ready(server: common.Server, timeout: float) -> tuple[float | None, float | None]:
    """(seconds to the first HTTP answer of any status, seconds to /ready 200) from spawn.

    None for what did not happen within `timeout` seconds (the caller reports it as such).
    """
    deadline = time.monotonic() + timeout
    listening = None
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise common.ServerError(f"server exited with {server.proc.returncode}\n{server.log_tail()}")
        try:
            status, _, _ = common.get(server.port, "/ready", timeout=5.0)
        except OSError:
            time.sleep(0.005)
            continue
        now = time.perf_counter() - server.started_at
        if listening is None:
            listening = now
        if status == 200:
            return listening, now
        time.sleep(0.005)
    return listening, None


def one_start(folder: Path, db: Path, timeout: float) -> dict[str, float | None]:
    """Start, wait for /ready and the watcher, read the figures, stop."""
    server = common.Server(assets_dir=folder, db_path=db)
    with server:
        listen_s, ready_s = time_to_listen_and_ready(server, timeout)
        rss_ready = common.peak_rss_mb(server.pid)
        health: dict[str, object] = {}
        first_pass_ms = None
        rss_after = None
        if ready_s is not None:
            health = server.health()
            passes = common.Reconciles.of(server.port)
            if passes.passes == 1:  # the first load, alone: its own duration
                first_pass_ms = passes.seconds * 1000
            server.wait_until(lambda: server.health()["watcher"]["state"] == "watching", 60)
            time.sleep(0.5)  # the watcher's first full rescan runs right after it starts
            rss_after = common.peak_rss_mb(server.pid)
        rss_now = common.rss_mb(server.pid)
    server.cleanup()
    return {
        "timeout_s": timeout,
        "listen_s": listen_s,
        "ready_s": ready_s,
        "reconcile_ms": first_pass_ms,
        "nodes": health.get("nodes"),
        "components": health.get("components"),
        "peak_rss_ready": rss_ready,
        "peak_rss_after_rescan": rss_after,
        "rss_now": rss_now,
    }


def ready_text(r: dict[str, float | None]) -> str:
    if r["ready_s"] is None:
        return f"NOT ready within {r['timeout_s']:.0f}s (listening after {common.fmt(r['listen_s'], 2)}s)"
    return f"ready in {r['ready_s']:.2f}s (listening {common.fmt(r['listen_s'], 2)}s)"


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=1000, help="synthetic node files (default 1000)")
    parser.add_argument("--components", type=int, default=350, help="components per node (default 350)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restarts", type=int, default=3, help="restarts to time (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per start (default 120)"
    )
    parser.add_argument("--name", default="startup", help="result file name (default startup)")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    if args.nodes < 1 or args.restarts < 1:
        parser.error("--nodes and --restarts must be 1 or more")

    report = common.Report(args.name, f"Start-up: {args.nodes} nodes x {args.components} components")
    workdir = common.temp_workdir("startup")
    folder = workdir / "nodes"
    db = workdir / "registry.db"
    try:
        t = time.perf_counter()
        paths = gen_nodes.generate(folder, args.nodes, args.components, args.seed)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(
            f"generated {len(paths)} files ({size_mb:.1f} MB) in {time.perf_counter() - t:.1f}s", flush=True
        )

        first = one_start(folder, db, args.timeout)
        print(
            f"first load: {ready_text(first)}, peak RSS {common.fmt(first['peak_rss_ready'], 0)} MiB",
            flush=True,
        )
        db_mb = sum(p.stat().st_size for p in workdir.glob("registry.db*")) / 1e6
        restarts = []
        if first["ready_s"] is None:
            print(
                "no restart: the first load did not commit, so a restart would be another first load",
                flush=True,
            )
        else:
            for i in range(args.restarts):
                r = one_start(folder, db, args.timeout)
                restarts.append(r)
                print(
                    f"restart {i + 1}: {ready_text(r)} (first pass {common.fmt(r['reconcile_ms'], 0)} ms)",
                    flush=True,
                )
                if r["ready_s"] is None:
                    break

        def row(label: str, r: dict[str, float | None]) -> list[str]:
            ready = common.fmt(r["ready_s"], 2) if r["ready_s"] is not None else f"> {r['timeout_s']:.0f}"
            return [
                label,
                common.fmt(r["listen_s"], 2),
                ready,
                common.fmt(r["reconcile_ms"], 0),
                common.fmt(r["peak_rss_ready"], 0),
                common.fmt(r["peak_rss_after_rescan"], 0),
                common.fmt(r["rss_now"], 0),
            ]

        served = (
            f"{first['nodes']} nodes, {first['components']} components served"
            if first["nodes"] is not None
            else "not loaded in time"
        )
        report.table(
            f"{args.nodes} node files x {args.components} components ({size_mb:.0f} MB of JSON; "
            f"{served}; database {db_mb:.0f} MB)",
            [
                "start",
                "listening s",
                "/ready 200 s",
                "first pass ms",
                "VmHWM at ready MiB",
                "VmHWM after rescan MiB",
                "VmRSS MiB",
            ],
            [row("first load (new database)", first)]
            + [row(f"restart {i + 1} (nothing changed)", r) for i, r in enumerate(restarts)],
        )
        # A start that timed out counts as its timeout: the real figure is at least that.
        first_s = first["ready_s"] if first["ready_s"] is not None else args.timeout
        report.check(
            "first load: spawn to /ready 200"
            + ("" if first["ready_s"] is not None else f" (timed out: at least {args.timeout:.0f} s)"),
            first_s,
            10.0,
            "s",
        )
        if restarts:
            times = [r["ready_s"] if r["ready_s"] is not None else args.timeout for r in restarts]
            restart_s = statistics.median(times)
            report.check(
                f"restart, nothing changed: median of {len(restarts)}"
                + ("" if all(r["ready_s"] is not None for r in restarts) else " (timed out)"),
                restart_s,
                2.0,
                "s",
            )
        else:
            restart_s = None
            report.note(
                "Restart not measured: the first load did not finish within the timeout "
                "(--timeout to allow more)."
            )
        peak = max(first["peak_rss_ready"] or 0, first["peak_rss_after_rescan"] or 0)
        report.check(
            "peak RSS after the first load (VmHWM)" + ("" if first["ready_s"] is not None else ", so far"),
            peak,
            200.0,
            "MiB",
        )
        report.note(
            "'listening' is the first HTTP answer of any status (503 while loading): interpreter start, "
            "imports and, on a restart, reading the served state back from the database. 'first pass ms' "
            "is the first reconcile's own duration (/metrics: droq_registry_reconcile_duration_seconds_sum "
            "while its _count is 1). Page cache warm: the "
            "files were just written. '> T' means /ready was not 200 after T seconds (--timeout); the "
            "process was then stopped."
        )
        report.figures = {
            "first": first,
            "restarts": restarts,
            "restart_median_s": restart_s,
            "peak_rss_mib": peak,
            "json_mb": size_mb,
            "db_mb": db_mb,
        }
        report.write()
    finally:
        common.remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
