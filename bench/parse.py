"""CPU cost of reading one node file into a node: read, hash, parse, depth check, schema, encode.

    .venv/bin/python bench/parse.py [--nodes 200] [--components 350] [--rounds 5]

Generates --nodes files shaped like the real ones (bench/gen_nodes.py, --components each)
in a temporary folder and times `folder.read_source` on every one of them, --rounds
times; prints the best round's CPU time per file (process time, so that other programs on
a shared machine cost it little). This is the part of a first load that grows with the
size of the files; the nesting-depth check it includes walks every container once.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from droq_registry.folder import read_source
from droq_registry.nodefile import Schema
from droq_registry.settings import Settings
from gen_nodes import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--components", type=int, default=350)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    schema = Schema.load(Settings().schema_path)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generate(folder, args.nodes, args.components, 1)
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        best = float("inf")
        for _ in range(args.rounds):
            started = time.process_time()
            for name in names:
                read_source(folder, name, schema)
            best = min(best, (time.process_time() - started) / len(names))
    print(f"read_source: {best * 1000:.3f} ms CPU per file of {args.components} components "
          f"(best of {args.rounds} rounds over {len(names)} files)")


if __name__ == "__main__":
    main()
