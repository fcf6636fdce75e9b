"""The real node files, and writing node files the ways people write them."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets" / "nodes"
SHARED = ROOT.parent / "shared" / "fixtures"
#: The real node files; the shipped copies in assets/nodes are the same four files.
REAL_NODES = SHARED / "droq-nodes" if (SHARED / "droq-nodes").is_dir() else ASSETS
#: The older node file whose components use the plain string form (a copy is kept in
#: tests/fixtures for clones without ../shared beside them).
LEGACY_NODE = next(
    path
    for path in (
        SHARED / "legacy-string-format" / "langflow-executor-node.json",
        ROOT / "tests" / "fixtures" / "legacy-string-format" / "langflow-executor-node.json",
    )
    if path.is_file()
)


def write_json(path: Path, value: Any) -> Path:
    """Write `value` as indented JSON in place (open, truncate, write)."""
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2))
    return path


def save_bytes(path: Path, raw: bytes) -> None:
    """Write atomically (temp file + rename), so the service never reads half a file."""
    temp = path.with_name("." + path.name + ".tmp")
    temp.write_bytes(raw)
    os.replace(temp, path)


def save(path: Path, doc: Any) -> None:
    """`save_bytes` of `doc` as compact JSON."""
    save_bytes(path, orjson.dumps(doc))


def node_doc(node_id: str, components: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A minimal valid node document."""
    doc: dict[str, Any] = {"node_id": node_id, "name": f"Node {node_id}"}
    doc.update(fields)
    doc["components"] = components if components is not None else {"Comp": "pkg.comp"}
    return doc


def load_docs(folder: Path) -> dict[str, dict[str, Any]]:
    """node_id -> document of every node file in `folder`."""
    docs = [orjson.loads(path.read_bytes()) for path in sorted(folder.glob("*.json"))]
    return {doc["node_id"]: doc for doc in docs}


def copy_real_nodes(folder: Path) -> Path:
    """Copies of the real node files in `folder` (made if missing), readable by anyone."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(REAL_NODES.glob("*.json")):
        shutil.copy(path, folder / path.name)
        (folder / path.name).chmod(0o644)
    return folder


def tree(root: Path) -> dict[str, bytes | str | None]:
    """Every entry under `root` (hidden ones too): file bytes, link targets, "fifo" for a
    named pipe, None for folders; equal trees mean nothing was touched."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif stat.S_ISFIFO(path.stat().st_mode):
            found[key] = "fifo"  # reading it would wait for a writer
        elif path.is_dir():
            found[key] = None
        else:
            found[key] = path.read_bytes()
    return found
