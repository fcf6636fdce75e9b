"""Gather the benchmarks' target checks into bench/results/summary.md.

    .venv/bin/python bench/summarize.py [NAME ...]

Reads bench/results/NAME.json (written beside each NAME.md by the scripts; default: every
one there) and writes one table of every target with its verdict, plus, when both the
real-files and a synthetic read run are there, lookup figures side by side (is lookup cost
independent of registry size?).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import common


def load(names: list[str]) -> list[dict]:
    paths = [common.RESULTS / f"{n}.json" for n in names] if names else sorted(common.RESULTS.glob("*.json"))
    out = []
    for path in paths:
        if path.exists() and path.stem != "summary":
            out.append(json.loads(path.read_text()))
        elif names:
            print(f"missing {path} (did that benchmark fail?)", file=sys.stderr)
    return out


def size_comparison(results: list[dict]) -> str | None:
    """Lookup figures of `read` (real files) next to each `read_NxM` (synthetic) run."""
    by_name = {r["name"]: r for r in results}
    real = by_name.get("read")
    synthetic = [r for r in results if r["name"].startswith("read_")]
    if real is None or not synthetic:
        return None
    blocks = []
    for syn in synthetic:
        rows = []
        for key in ("lookup", "detail", "404", "304"):
            a, b = real["figures"].get(key), syn["figures"].get(key)
            if not a or not b:
                continue
            rows.append(
                [
                    key,
                    a["path"],
                    common.fmt(a["rps"], 0),
                    common.fmt(b["rps"], 0),
                    f"{b['rps'] / a['rps']:.2f}",
                    common.fmt(a["p99_ms"], 2),
                    common.fmt(b["p99_ms"], 2),
                    f"{a['rps_ratio']:.2f}",
                    f"{b['rps_ratio']:.2f}",
                ]
            )
        reg_a, reg_b = real["figures"].get("registry", {}), syn["figures"].get("registry", {})
        blocks.append(
            f"### Lookup cost vs registry size: {reg_a.get('nodes')} nodes / "
            f"{reg_a.get('components')} components against {reg_b.get('nodes')} nodes / "
            f"{reg_b.get('components')} components\n\n"
            + common.markdown_table(
                [
                    "endpoint",
                    "path",
                    "req/s real",
                    f"req/s {syn['name']}",
                    "ratio",
                    "p99 ms real",
                    f"p99 ms {syn['name']}",
                    "vs ref real",
                    f"vs ref {syn['name']}",
                ],
                rows,
            )
        )
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="result names (default: all in bench/results)")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "summary.md")
    parser.add_argument("--command", help="the command that produced the results (shown in the header)")
    args = parser.parse_args(argv)
    results = load(args.names)
    if not results:
        print("no results to summarise", file=sys.stderr)
        return 1
    info = results[0]["machine"]
    rows = []
    for r in results:
        for c in r["checks"]:
            check = common.Check(c["name"], c["value"], c["limit"], c["unit"], c["higher"])
            rows.append([f"[{r['name']}]({r['name']}.md)", *check.row()])
    passed = sum(1 for r in results for c in r["checks"] if c["ok"])
    total = sum(len(r["checks"]) for r in results)
    started = datetime.now(UTC)
    lines = [
        *common.header("Benchmark summary", args.command or common.command_line(), info, started, None),
        f"- targets met: {passed} of {total}",
        "",
        "| benchmark | command |",
        "| --- | --- |",
        *[f"| [{r['name']}]({r['name']}.md) | `{r['command']}` |" for r in results],
        "",
        "### Targets",
        "",
        common.markdown_table(["benchmark", "target", "measured", "limit", "verdict"], rows),
    ]
    comparison = size_comparison(results)
    if comparison:
        lines += ["", comparison]
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
