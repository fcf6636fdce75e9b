"""Deterministic synthetic node files for the benchmarks, shaped like the real ones.

    .venv/bin/python bench/gen_nodes.py OUT_DIR --nodes 1000 --components 350 [--seed 1]
    .venv/bin/python bench/gen_nodes.py OUT_DIR --real          # copy the real node files

Each file looks like the real node files in /work/shared/fixtures/droq-nodes/ (the
lfx-runtime one in particular): node_id, name, description, version, api_url, ip_address,
docker_image, deployment_location, status, category, author, created_at,
source_code_location, repository_url, commit, updated_at, and object-form components
(`path`, `description`, `display_name`, `author`), written with indent=2.

About 10% of each node's component classes come from a shared pool, each shared class
being declared by about `share_fanout` nodes (default 4), so a lookup of such a class has
several candidates; the rest are unique to their node. Everything satisfies the service's
rules: node ids match `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, classes are Python identifiers,
paths are dotted identifiers. The same arguments always give byte-identical files.

Importable: `generate(out_dir, nodes, components, seed)`, `copy_real(out_dir)`,
`with_version(raw, version)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.files import REAL_NODES

WORDS = [
    "text", "data", "vector", "model", "prompt", "parse", "split", "merge", "filter", "route", "embed",
    "search", "chat", "agent", "memory", "store", "load", "save", "convert", "extract", "summarize",
    "classify", "translate", "score", "rank", "cache", "stream", "batch", "queue", "schedule",
    "notify", "fetch", "upload", "image", "audio", "table", "graph", "json", "csv",
]
_AREAS = ("inputs", "outputs", "models", "vectorstores", "processing", "tools", "agents", "data", "logic")
_CATEGORIES = ("Langflow", "Math", "Data", "Models", "Tools", "Vision", "Audio")
_AUTHORS = ("Droq Team", "Langflow", "Bench Author", "Community")


def copy_real(out_dir: Path) -> list[Path]:
    """Copy the real node files (*.json) into `out_dir`; return the copies' paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in sorted(REAL_NODES.glob("*.json")):
        dst = out_dir / src.name
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def node_id(prefix: str, index: int) -> str:
    return f"{prefix}-node-{index:05d}"


def _camel(words: list[str]) -> str:
    return "".join(w.capitalize() for w in words)


def _shared_pool(nodes: int, per_node: int, fanout: int) -> list[str]:
    size = max(per_node, math.ceil(nodes * per_node / max(1, fanout)))
    return [f"Shared{k:05d}Component" for k in range(size)]


def _component(rng: random.Random, cls: str, author: str) -> dict[str, str]:
    words = rng.sample(WORDS, 3)
    module = f"bench.src.bench.components.{rng.choice(_AREAS)}.{'_'.join(words[:2])}_{cls.lower()[-12:]}"
    return {
        "path": module,
        "description": f"{words[0].capitalize()} the {words[1]} and {words[2]} of a flow step.",
        "display_name": " ".join(w.capitalize() for w in words),
        "author": author,
    }


def node_document(
    index: int, components: int, seed: int = 1, nodes: int = 1, prefix: str = "bench", share_fanout: int = 4
) -> dict[str, object]:
    """The document of synthetic node `index` (of `nodes`), as `generate` writes it."""
    rng = random.Random(f"{seed}:{prefix}:{index}")
    nid = node_id(prefix, index)
    shared_per_node = max(1, round(components * 0.1)) if components > 1 and nodes > 1 else 0
    pool = _shared_pool(nodes, shared_per_node, share_fanout) if shared_per_node else []
    classes = rng.sample(pool, shared_per_node) if shared_per_node else []
    own = components - len(classes)
    classes += [f"{_camel(rng.sample(WORDS, 2))}N{index:05d}C{j:03d}Component" for j in range(own)]
    author = rng.choice(_AUTHORS)
    comps = {cls: _component(rng, cls, author) for cls in classes}
    commit = hashlib.sha1(f"{seed}:{prefix}:{index}".encode()).hexdigest()
    return {
        "node_id": nid,
        "name": f"Bench {_camel(rng.sample(WORDS, 2))} Executor Node {index}",
        "description": f"Synthetic executor node {index} for the registry benchmarks: "
        + " ".join(rng.sample(WORDS, 8)),
        "version": "1.0.0",
        "api_url": f"http://localhost:{9000 + index % 1000}",
        "ip_address": "0.0.0.0",
        "docker_image": f"droqai/{nid}",
        "deployment_location": "local",
        "status": "active",
        "category": rng.choice(_CATEGORIES),
        "author": author,
        "created_at": "2025-11-14T16:10:12Z",
        "source_code_location": f"nodes/{nid}",
        "components": comps,
        "repository_url": f"https://github.com/droq-ai/{nid}",
        "commit": commit,
        "updated_at": "2025-12-05T10:46:33Z",
    }


def encode(document: dict[str, object]) -> bytes:
    """A node document as the real files are written (indent=2, trailing newline)."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def with_version(raw: bytes, version: str) -> bytes:
    """The bytes of a node file with its "version" field set to `version`."""
    document = json.loads(raw)
    document["version"] = version
    return encode(document)


def generate(
    out_dir: Path | str,
    nodes: int,
    components: int,
    seed: int = 1,
    prefix: str = "bench",
    share_fanout: int = 4,
) -> list[Path]:
    """Write `nodes` node files of `components` components each into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(nodes):
        doc = node_document(i, components, seed, nodes, prefix, share_fanout)
        path = out / f"{doc['node_id']}.json"
        path.write_bytes(encode(doc))
        paths.append(path)
    return paths


def shared_classes(nodes: int, components: int, share_fanout: int = 4) -> list[str]:
    """The shared pool's class names for these parameters (those used by some node)."""
    per_node = max(1, round(components * 0.1)) if components > 1 and nodes > 1 else 0
    return _shared_pool(nodes, per_node, share_fanout) if per_node else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the node files into (created)")
    parser.add_argument("--nodes", type=int, default=0, help="number of synthetic node files")
    parser.add_argument("--components", type=int, default=350, help="components per node (default 350)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--prefix", default="bench", help="node id prefix (default bench)")
    parser.add_argument(
        "--share-fanout",
        type=int,
        default=4,
        help="about how many nodes declare each shared class (default 4)",
    )
    parser.add_argument(
        "--real", action="store_true", help=f"also copy the real node files (from {REAL_NODES})"
    )
    args = parser.parse_args(argv)
    if args.nodes < 0 or args.components < 0 or not (args.nodes or args.real):
        parser.error("give --nodes N (0 or more) and/or --real")
    started = time.perf_counter()
    written = generate(args.out_dir, args.nodes, args.components, args.seed, args.prefix, args.share_fanout)
    copied = copy_real(args.out_dir) if args.real else []
    size = sum(p.stat().st_size for p in written + copied) / 1e6
    print(
        f"wrote {len(written)} synthetic + {len(copied)} real node files ({size:.1f} MB) "
        f"to {args.out_dir} in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
