"""Read throughput and latency of the registry against a bare Starlette reference, with wrk.

    .venv/bin/python bench/read.py [--duration 10] [--connections 32]
    .venv/bin/python bench/read.py --nodes 1000 --components 350     # synthetic registry

Starts `python -m droq_registry serve` on a copy of the real node files (plus, with --nodes,
N synthetic nodes of M components from gen_nodes.py, moved in after start by chunks, see
--fill), then runs `wrk -t2 -c32 --latency` for each endpoint:

  lookup   GET /api/v1/components/{class}/node   (a class of lfx-runtime-executor-node)
  shared   GET /api/v1/components/{class}/node   (synthetic only: a class several nodes declare)
  detail   GET /api/v1/nodes/{id}
  list     GET /api/v1/nodes                      (real files only by default: with 1000 x 350
                                                  synthetic nodes the body is megabytes)
  404      GET /api/v1/components/NoSuchComponent/node
  304      the lookup with If-None-Match: <its ETag> (a wrk Lua script sets the header)

Two references, each a process of bench/reference_app.py on uvicorn with the options
`droq_registry serve` gives it: bare Starlette serving a constant body of the same bytes as
each 200 endpoint (the 404 body for 404 and 304, "small body"), and a bare ASGI callable
sending exactly the endpoint's answer (its status, headers in their order, and body): the
server's own cost. Each of our runs is followed by the bare ASGI run and the Starlette
run, so all see the same machine. Reports req/s, p50, p99 and the ratios ours/reference,
with the targets of issue 14: lookup, detail and list >= 90% of the bare ASGI callable's
req/s and p99 <= 1.2x its p99; 404 and 304 >= 90% of theirs; and, against bare Starlette,
lookup, detail and list >= 80% of its req/s and p99 <= 2x, 404 and 304 >= 90%. --profile also samples the server with py-spy during an
extra (unmeasured) run per endpoint, and the reference likewise, and prints where the time
goes and the GIL time per request by package for both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import gen_nodes

REAL_NODE = "lfx-runtime-executor-node"
#: Issue 14: the registry adds at most 10% to the server's own cost, and p99 at most 1.2x.
BARE_MIN_RPS = 0.9
BARE_MAX_P99 = 1.2
PREFERRED_CLASS = "TextInputComponent"
MISSING_CLASS = "NoSuchComponent"


@dataclass
class Endpoint:
    key: str
    path: str
    expect: int
    ref: str  # which reference body: the key of a 200 endpoint, or "small"
    min_rps_ratio: float
    max_p99_ratio: float | None
    headers: dict[str, str] | None = None
    body: bytes = b""
    #: The answer's headers as the registry sent them, in order (the bare reference sends these).
    answer_headers: list[tuple[str, str]] = field(default_factory=list)
    ours: common.WrkResult | None = None
    ref_result: common.WrkResult | None = None
    bare_result: common.WrkResult | None = None


def pick_class(folder: Path) -> str:
    """TextInputComponent if the lfx-runtime node declares it, else its first class."""
    document = json.loads((folder / f"{REAL_NODE}.json").read_bytes())
    classes = list(document["components"])
    return PREFERRED_CLASS if PREFERRED_CLASS in classes else classes[0]


def build_endpoints(args: argparse.Namespace, folder: Path) -> list[Endpoint]:
    cls = args.component_class or pick_class(folder)
    lookup = f"/api/v1/components/{cls}/node"
    out = [Endpoint("lookup", lookup, 200, "lookup", 0.8, 2.0)]
    if args.nodes:
        shared = gen_nodes.shared_classes(args.nodes, args.components)
        if shared:
            out.append(Endpoint("shared", f"/api/v1/components/{shared[0]}/node", 200, "shared", 0.8, 2.0))
    out += [
        Endpoint("detail", f"/api/v1/nodes/{args.node}", 200, "detail", 0.8, 2.0),
        Endpoint("list", "/api/v1/nodes", 200, "list", 0.8, 2.0),
        Endpoint("404", f"/api/v1/components/{MISSING_CLASS}/node", 404, "small", 0.9, None),
        Endpoint("304", lookup, 304, "small", 0.9, None),
    ]
    wanted = (
        args.endpoints.split(",")
        if args.endpoints
        else (
            ["lookup", "shared", "detail", "404", "304"]
            if args.nodes
            else ["lookup", "detail", "list", "404", "304"]
        )
    )
    unknown = set(wanted) - {e.key for e in out} - {"shared"}
    if unknown:
        raise SystemExit(f"unknown endpoint(s): {', '.join(sorted(unknown))}")
    return [e for e in out if e.key in wanted]


def probe(server: common.Server, endpoints: list[Endpoint]) -> bytes:
    """Fetch each endpoint once: check the status, keep the body, set up If-None-Match."""
    small = b""
    for e in endpoints:
        if e.expect == 304:
            status, headers, _ = common.get(server.port, e.path)
            etag = headers.get("etag")
            if status != 200 or not etag:
                raise SystemExit(f"{e.path}: expected 200 with an ETag, got {status} {headers}")
            e.headers = {"If-None-Match": etag}
        status, headers, body = common.get(server.port, e.path, e.headers)
        if status != e.expect:
            raise SystemExit(f"{e.path}: expected {e.expect}, got {status}: {body[:200]!r}")
        e.body = body
        e.answer_headers = list(headers.items())
        if e.expect == 404:
            small = body
    if not small:
        _, _, small = common.get(server.port, f"/api/v1/components/{MISSING_CLASS}/node")
    return small


def _answers(port: int) -> bool:
    try:
        common.get(port, "/", timeout=2.0)
    except OSError:
        return False
    return True


def measure(url: str, args: argparse.Namespace, headers: dict[str, str] | None = None) -> common.WrkResult:
    if args.warmup > 0:
        common.run_wrk(url, args.warmup, args.threads, args.connections, headers)
    return common.run_wrk(url, args.duration, args.threads, args.connections, headers)


def median_run(runs: list[common.WrkResult]) -> common.WrkResult:
    """The run with the median req/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]


def profile(
    server: common.Server,
    refs: dict[str, common.Server],
    endpoints: list[Endpoint],
    args: argparse.Namespace,
    workdir: Path,
    report: common.Report,
) -> None:
    """py-spy (--gil, raw stacks) on ours and on the reference during one extra wrk run each.

    Prints each endpoint's top functions, then the GIL time per request by package for
    ours and the reference side by side: where our extra time per request goes.
    """
    secs = max(2, round(args.duration))
    compare = []
    for e in endpoints:
        per_request: dict[str, dict[str, float]] = {}
        ref = refs[e.ref]
        for who, target, url in (("ours", server, server.base + e.path), ("ref", ref, ref.base + e.path)):
            raw = workdir / f"profile-{e.key}-{who}.txt"
            spy = common.py_spy_record(target.pid, secs + 1, raw)
            if spy is None:
                report.note("py-spy not found (`.venv/bin/pip install py-spy`); no profile taken.")
                return
            time.sleep(0.5)
            run = common.run_wrk(
                url, secs, args.threads, args.connections, e.headers if who == "ours" else None
            )
            common.py_spy_wait(spy, secs + 30)
            if who == "ours":
                prof = common.summarise_profile(f"`{e.key}`", raw, report, args.profile_dir)
            else:
                prof = common.load_profile(raw)
            scale = 1e6 / common.PY_SPY_RATE / max(1, run.requests)  # samples -> us of GIL per request
            per_request[who] = {k: v * scale for k, v in prof.packages.items()}
            per_request[who]["(total)"] = prof.total * scale
        ours, ref = per_request["ours"], per_request["ref"]
        names = sorted(set(ours) | set(ref), key=lambda k: -(ours.get(k, 0) - ref.get(k, 0)))
        compare.append(
            (
                e.key,
                [
                    [
                        n,
                        f"{ours.get(n, 0):.1f}",
                        f"{ref.get(n, 0):.1f}",
                        f"{ours.get(n, 0) - ref.get(n, 0):+.1f}",
                    ]
                    for n in names
                    if max(ours.get(n, 0), ref.get(n, 0)) >= 0.5
                ],
            )
        )
    for key, rows in compare:
        report.table(
            f"GIL time per request by package, `{key}`: ours vs reference (us, from py-spy samples)",
            ["package", "ours us/req", "ref us/req", "extra us/req"],
            rows,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured wrk seconds first (default 1; 0 = none)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per endpoint and per reference, alternating; the median counts (default 1)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--nodes", type=int, default=0, help="add N synthetic nodes (with --components)")
    parser.add_argument(
        "--components", type=int, default=350, help="components per synthetic node (default 350)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fill",
        choices=("chunks", "start"),
        default="chunks",
        help="synthetic files moved in after start, --chunk at a time (default), or there at start",
    )
    parser.add_argument(
        "--chunk", type=int, default=50, help="files per chunk with --fill chunks (default 50)"
    )
    parser.add_argument(
        "--node", default=REAL_NODE, help=f"node id for the detail bench (default {REAL_NODE})"
    )
    parser.add_argument(
        "--class", dest="component_class", help=f"class to look up (default {PREFERRED_CLASS})"
    )
    parser.add_argument("--endpoints", help="comma list of lookup,shared,detail,list,404,304")
    parser.add_argument("--profile", action="store_true", help="also profile the server with py-spy")
    parser.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks in this folder")
    parser.add_argument("--name", help="result file name (default read, or read_NxM with --nodes)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds allowed for the start, and for each chunk (default 180)",
    )
    args = parser.parse_args(argv)
    common.exit_on_sigterm()
    common.require_wrk()
    if args.repeat < 1 or args.duration <= 0:
        parser.error("--repeat must be 1 or more and --duration positive")

    name = args.name or (f"read_{args.nodes}x{args.components}" if args.nodes else "read")
    label = (
        f"real node files + {args.nodes} x {args.components} synthetic" if args.nodes else "real node files"
    )
    report = common.Report(name, f"Read throughput and latency ({label})")
    workdir = common.temp_workdir("read")
    folder = workdir / "nodes"
    try:
        gen_nodes.copy_real(folder)
        staging = workdir / "staging"
        if args.nodes:
            t = time.perf_counter()
            gen_nodes.generate(
                folder if args.fill == "start" else staging, args.nodes, args.components, args.seed
            )
            print(f"generated {args.nodes} x {args.components} in {time.perf_counter() - t:.1f}s", flush=True)
        endpoints = build_endpoints(args, folder)

        server = common.Server(assets_dir=folder, db_path=workdir / "registry.db")
        refs: dict[str, common.Server] = {}
        try:
            server.start()
            ready_s = server.wait_ready(args.ready_timeout)
            server.wait_until(lambda: server.health()["watcher"]["state"] == "watching", 60)
            if args.nodes and args.fill == "chunks":
                took = common.fill_folder(server, staging, folder, args.chunk, args.ready_timeout)
                print(f"filled {args.nodes} files into the running server in {took:.1f}s", flush=True)
            health = server.health()
            print(
                f"registry ready in {ready_s:.2f}s: {health['nodes']} nodes, "
                f"{health['components']} components (pid {server.pid})",
                flush=True,
            )
            small = probe(server, endpoints)
            bodies = {e.ref: e.body for e in endpoints if e.ref != "small"}
            bodies["small"] = small
            for key in sorted({e.ref for e in endpoints}):
                body_file = workdir / f"ref-{key}.json"
                body_file.write_bytes(bodies[key])
                refs[key] = common.reference_server(body_file).start()
            bares: dict[str, common.Server] = {}
            for e in endpoints:
                (workdir / f"bare-{e.key}.body").write_bytes(e.body)
                (workdir / f"bare-{e.key}.headers.json").write_text(json.dumps(e.answer_headers))
                bares[e.key] = common.Server(argv=[
                    common.PYTHON, str(common.BENCH / "reference_app.py"), "--bare", "--status", str(e.expect),
                    "--body-file", str(workdir / f"bare-{e.key}.body"),
                    "--headers-file", str(workdir / f"bare-{e.key}.headers.json"),
                ]).start()
                refs[f"bare-{e.key}"] = bares[e.key]
            for ref in refs.values():
                # a bare reference answers its endpoint's status (404, 304) to any path
                ref.wait_until(lambda ref=ref: _answers(ref.port), 30)
            # Each endpoint: our run, then its reference's run, back to back (and again with
            # --repeat), so both see the same machine; the median run (by req/s) counts.
            for e in endpoints:
                ours_runs, bare_runs, ref_runs = [], [], []
                for _ in range(args.repeat):
                    ours_runs.append(measure(server.base + e.path, args, e.headers))
                    bare_runs.append(measure(bares[e.key].base + e.path, args))
                    ref_runs.append(measure(refs[e.ref].base + e.path, args))
                e.ours, e.ref_result = median_run(ours_runs), median_run(ref_runs)
                e.bare_result = median_run(bare_runs)
                print(
                    f"  {e.key:7} ours {e.ours.rps:7.0f} req/s p99 {e.ours.p99:6.2f} ms | "
                    f"bare ASGI {e.bare_result.rps:7.0f} req/s p99 {e.bare_result.p99:6.2f} ms | "
                    f"Starlette {e.ref_result.rps:7.0f} req/s p99 {e.ref_result.p99:6.2f} ms "
                    f"({len(bodies[e.ref])} B)",
                    flush=True,
                )
            rss = common.peak_rss_mb(server.pid)
            if args.profile:
                profile(server, refs, endpoints, args, workdir, report)
        finally:
            server.stop()
            server.cleanup()
            for ref in refs.values():
                ref.stop()
                ref.cleanup()

        bare_rows = []
        for e in endpoints:
            assert e.ours is not None and e.bare_result is not None
            bare = e.bare_result
            rps_ratio = e.ours.rps / bare.rps
            p99_ratio = e.ours.p99 / bare.p99 if bare.p99 else float("inf")
            verdicts = [report.check(
                f"{e.key}: req/s vs bare ASGI", rps_ratio * 100, BARE_MIN_RPS * 100, "%", higher=True
            ).verdict()]
            if e.max_p99_ratio:
                verdicts.append(report.check(f"{e.key}: p99 vs bare ASGI", p99_ratio, BARE_MAX_P99, "x").verdict())
            bare_rows.append([
                e.key, e.expect, len(e.body),
                common.fmt(e.ours.rps, 0), common.fmt(e.ours.p99, 2),
                common.fmt(bare.rps, 0), common.fmt(bare.p99, 2),
                f"{rps_ratio:.2f}", f"{p99_ratio:.2f}", " / ".join(verdicts),
            ])
            report.figures[f"{e.key}_bare"] = {
                "bare_rps": bare.rps, "bare_p99_ms": bare.p99, "rps_ratio": rps_ratio, "p99_ratio": p99_ratio,
            }
        rows = []
        for e in endpoints:
            assert e.ours is not None and e.ref_result is not None
            ref = e.ref_result
            rps_ratio = e.ours.rps / ref.rps
            p99_ratio = e.ours.p99 / ref.p99 if ref.p99 else float("inf")
            target = f"req/s >= {e.min_rps_ratio:.0%} of ref" + (
                f", p99 <= {e.max_p99_ratio:g}x ref" if e.max_p99_ratio else ""
            )
            rps_check = report.check(
                f"{e.key}: req/s vs reference", rps_ratio * 100, e.min_rps_ratio * 100, "%", higher=True
            )
            verdicts = [rps_check.verdict()]
            if e.max_p99_ratio:
                p99_check = report.check(f"{e.key}: p99 vs reference", p99_ratio, e.max_p99_ratio, "x")
                verdicts.append(p99_check.verdict())
            errors = sum(e.ours.socket_errors.values())
            rows.append(
                [
                    e.key,
                    e.path + (" +INM" if e.headers else ""),
                    e.expect,
                    len(e.body),
                    common.fmt(e.ours.rps, 0),
                    common.fmt(e.ours.p50, 2),
                    common.fmt(e.ours.p99, 2),
                    f"{e.ref} ({len(bodies[e.ref])} B)",
                    common.fmt(ref.rps, 0),
                    common.fmt(ref.p99, 2),
                    f"{rps_ratio:.2f}",
                    f"{p99_ratio:.2f}",
                    target,
                    " / ".join(verdicts) + (f" ({errors} socket errors)" if errors else ""),
                ]
            )
            report.figures[e.key] = {
                "path": e.path,
                "status": e.expect,
                "body_bytes": len(e.body),
                "rps": e.ours.rps,
                "p50_ms": e.ours.p50,
                "p99_ms": e.ours.p99,
                "ref_rps": ref.rps,
                "ref_p99_ms": ref.p99,
                "rps_ratio": rps_ratio,
                "p99_ratio": p99_ratio,
            }
        report.figures["registry"] = {
            "nodes": health["nodes"],
            "components": health["components"],
            "ready_s": ready_s,
            "peak_rss_mb": rss,
        }
        if args.nodes:
            report.note(
                f"The {args.nodes} synthetic files were "
                + (
                    f"moved into the folder after the server started, {args.chunk} at a time (a first load "
                    "of them all at once takes minutes with the current service: see startup.md)."
                    if args.fill == "chunks"
                    else "in the folder when the server started."
                )
            )
        report.table(
            f"wrk -t{args.threads} -c{args.connections} -d{round(args.duration)}s --latency, "
            f"median of {args.repeat} run(s) each "
            f"({health['nodes']} nodes, {health['components']} components; ready in {ready_s:.1f}s, "
            f"peak RSS {common.fmt(rss)} MiB)",
            [
                "endpoint",
                "path",
                "status",
                "body B",
                "req/s",
                "p50 ms",
                "p99 ms",
                "reference",
                "ref req/s",
                "ref p99 ms",
                "req/s ratio",
                "p99 ratio",
                "target",
                "verdict",
            ],
            rows,
        )
        report.table(
            "Against the bare ASGI callable (the server's own cost: the same status, headers and body "
            f"from two `send` calls), median of {args.repeat} run(s) each",
            ["endpoint", "status", "body B", "req/s", "p99 ms", "bare req/s", "bare p99 ms", "req/s ratio",
             "p99 ratio", "verdict (>= 90% req/s, p99 <= 1.2x)"],
            bare_rows,
        )
        report.note(
            "Ratios are ours / reference. The reference is bench/reference_app.py (bare Starlette, "
            "same uvicorn options) serving the same bytes as the endpoint, requested at the same path "
            "(its one route takes any path); 404 and 304 are compared with the small (404) body. "
            "wrk and the server share the machine's CPUs."
        )
        report.write()
    finally:
        common.remove_tree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
