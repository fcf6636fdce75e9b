"""Probes and lookups while the dashboard searches: nothing may hold the event loop.

    .venv/bin/python bench/search_load.py [--nodes 1000] [--components 350] [--searchers 10] [--duration 30]

Generates a registry with gen_nodes.py (1,000 nodes x 350 components by default), starts
`python -m droq_registry serve` on it and waits for /ready. Then:

1. the first search, which builds the search index for the snapshot (timed);
2. idle: probes alone, for a baseline;
3. load: `--searchers` processes search as fast as they can for `--duration` seconds, each
   on its own kept-alive connection, with queries taken from the registry's own texts as
   a dashboard user types them (prefixes of class names, display names and words, other
   pieces, and texts found nowhere: no two searchers ask the same sequence); meanwhile
   this process probes `GET /health` and a lookup `GET /api/v1/components/{class}/node`
   alternately, every `--interval` seconds, each on a new connection as a probe does.

Reports the probes' p50/p99/max during load against the target (p99 <= 100 ms for both),
the searches' rate, latency and status codes (any 5xx or error is a failure), and the
idle baseline. Writes bench/results/search_load.md and .json.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import sys
import time
import urllib.parse
from pathlib import Path

import common
import gen_nodes

TARGET_P99_MS = 100.0


def query_sequences(folder: Path, count: int, seed: int) -> list[str]:
    """Queries as people type them: each text grows a character at a time (2 to 12)."""
    rng = random.Random(seed)
    texts: list[str] = []
    for path in sorted(folder.glob("*.json"))[:50]:
        for cls, value in json.loads(path.read_bytes())["components"].items():
            texts.append(cls)
            if isinstance(value, dict):
                texts += [value.get("display_name") or "", value.get("description") or ""]
    texts = [t for t in texts if t]
    queries: list[str] = []
    while len(queries) < count:
        kind = rng.random()
        if kind < 0.1:
            text = "".join(rng.choice("qxzjkvw") for _ in range(8))  # found nowhere
        else:
            text = rng.choice(texts)
            if kind > 0.5:  # a piece from the middle: a word, part of one
                start = rng.randrange(len(text))
                text = text[start:]
        for end in range(1, min(len(text), 12) + 1):
            piece = text[:end].strip()
            if piece:
                queries.append(piece)
    return queries[:count]


def searcher(port: int, queries: list[str], deadline: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Search until `deadline` (time.time()); put (latencies in ms, status counts) on `out`."""
    conn = common.KeepAlive(port, timeout=30)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    i = 0
    while time.time() < deadline:
        path = "/api/v1/search?q=" + urllib.parse.quote(queries[i % len(queries)])
        i += 1
        started = time.perf_counter()
        try:
            status, _, _ = conn.get(path)
            key = str(status)
        except (OSError, http.client.HTTPException) as exc:
            key = type(exc).__name__
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[key] = statuses.get(key, 0) + 1
    conn.close()
    out.put((latencies, statuses))


def probe(port: int, path: str) -> tuple[float, int | str]:
    started = time.perf_counter()
    try:
        status, _, _ = common.get(port, path, timeout=5)
        result: int | str = status
    except (OSError, http.client.HTTPException) as exc:
        result = type(exc).__name__
    return (time.perf_counter() - started) * 1000, result


def probe_for(port: int, seconds: float, interval: float, lookup: str) -> dict[str, list[tuple[float, int | str]]]:
    samples: dict[str, list[tuple[float, int | str]]] = {"health": [], "lookup": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples["health"].append(probe(port, "/health"))
        samples["lookup"].append(probe(port, lookup))
        time.sleep(interval)
    return samples


def summary(values: list[float]) -> tuple[float, float, float]:
    spread = common.spread(values)
    return spread["p50"], spread["p99"], spread["max"]


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--components", type=int, default=350)
    parser.add_argument("--searchers", type=int, default=10, help="concurrent searching clients (default 10)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of search load (default 30)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of probes without load (default 5)")
    parser.add_argument("--interval", type=float, default=0.02, help="pause between probe pairs (default 0.02 s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="how long the first load may take")
    parser.add_argument("--name", default="search_load", help="result file name (default search_load)")
    args = parser.parse_args(argv)
    common.exit_on_sigterm()

    report = common.Report(args.name, "Probes and lookups during concurrent searches")
    workdir = common.temp_workdir("search")
    folder = workdir / "nodes"
    try:
        gen_nodes.generate(folder, args.nodes, args.components)
        lookup_class = gen_nodes.shared_classes(args.nodes, args.components)[0]
        lookup = f"/api/v1/components/{lookup_class}/node"
        queries = query_sequences(folder, 20_000, seed=1)
        with common.Server(assets_dir=folder, db_path=workdir / "registry.db", resync_seconds=0) as server:
            loaded = server.wait_ready(timeout=args.timeout)
            assert common.get(server.port, lookup)[0] == 200
            started = time.perf_counter()
            status, _, _ = common.get(server.port, "/api/v1/search?q=text", timeout=120)
            first_search = time.perf_counter() - started
            assert status == 200, status
            rss_before = common.rss_mb(server.pid)

            idle = probe_for(server.port, args.idle, args.interval, lookup)

            out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            deadline = time.time() + args.duration
            workers = []
            for k in range(args.searchers):
                mine = queries[k::args.searchers]  # no two searchers ask the same sequence
                worker = multiprocessing.Process(target=searcher, args=(server.port, mine, deadline, out))
                worker.start()
                workers.append(worker)
            loaded_probes = probe_for(server.port, max(0.0, deadline - time.time()), args.interval, lookup)
            results = [out.get(timeout=60) for _ in workers]
            for worker in workers:
                worker.join(timeout=30)
            rss_after = common.rss_mb(server.pid)
            health = server.health()
        search_ms = [ms for latencies, _ in results for ms in latencies]
        statuses: dict[str, int] = {}
        for _, counts in results:
            for key, n in counts.items():
                statuses[key] = statuses.get(key, 0) + n

        rows = []
        for phase, samples in (("idle", idle), (f"{args.searchers} searchers", loaded_probes)):
            for name in ("health", "lookup"):
                ms = [m for m, _ in samples[name]]
                p50, p99, top = summary(ms)
                bad = sum(1 for _, s in samples[name] if s != 200)
                rows.append([phase, name, len(ms), common.fmt(p50, 2), common.fmt(p99, 2), common.fmt(top, 2), bad])
                if phase != "idle":
                    report.check(f"{name} p99 during {args.searchers} concurrent searches", p99, TARGET_P99_MS, "ms")
                    report.check(f"{name}: answers other than 200", bad, 0, "")
        report.table("Probes (each on a new connection)", ["phase", "probe", "n", "p50 ms", "p99 ms", "max ms",
                                                           "not 200"], rows)
        p50, p99, top = summary(search_ms)
        failed = sum(n for key, n in statuses.items() if key != "200")
        report.table(
            "Searches",
            ["searchers", "seconds", "searches", "per second", "p50 ms", "p99 ms", "max ms", "statuses"],
            [[args.searchers, args.duration, len(search_ms), common.fmt(len(search_ms) / args.duration),
              common.fmt(p50, 2), common.fmt(p99, 2), common.fmt(top, 2), json.dumps(statuses, sort_keys=True)]],
        )
        report.check("searches answered other than 200 (5xx, errors)", failed, 0, "")
        report.table(
            "Registry",
            ["nodes", "components", "first load s", "first search (builds the index) s", "RSS before load MiB",
             "RSS after MiB"],
            [[health["nodes"], health["components"], common.fmt(loaded, 2), common.fmt(first_search, 2),
              common.fmt(rss_before), common.fmt(rss_after)]],
        )
        report.figures = {
            "probes": {phase: {name: summary([m for m, _ in samples[name]]) for name in samples}
                       for phase, samples in (("idle", idle), ("load", loaded_probes))},
            "searches": {"count": len(search_ms), "p50_ms": p50, "p99_ms": p99, "statuses": statuses},
            "first_search_s": first_search,
            "rss_mib": [rss_before, rss_after],
        }
        report.write()
        return 0 if all(c.ok for c in report.checks) else 1
    finally:
        common.remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
