"""The writer of the soak benchmark (bench/soak.py): one effective change at a time.

The folder holds the real node files, which are never changed, and a pool of synthetic
ones (gen_nodes.py), each a `Slot`. `Writer.commit()` makes one change to the pool, in
the ways people change node files: a rewrite in place, an atomic rename over, a create, a
remove, a rename, a broken edit and its fix, a second file claiming a node id and its
removal. It then long-polls `/api/v1/changes` until the revision moved and checks that
exactly one revision committed, with exactly the records that change must make. Every
record seen is kept in `truth`, which the followers' records are compared with.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import gen_nodes
import soak_load
from soak_load import Catalogue, Conn, Record


@dataclass
class Slot:
    """One synthetic node and the file(s) that hold it."""

    node_id: str
    doc: dict[str, Any]  # the last good document written
    name: str | None = None  # its file, None while removed
    broken: bool = False
    dup: str | None = None  # a second file that claims the same node id
    renames: int = 0


Expected = list[tuple[str, str | None, str | None]]


def _revisions(records: list[Record], since: int) -> list[Expected]:
    """The records after `since`, without their revision, grouped by revision."""
    out: dict[int, Expected] = {}
    for revision, kind, nid, source in records:
        out.setdefault(revision, []).append((kind, nid, source))
    return [out.get(r, []) for r in range(since + 1, max(out, default=since) + 1)]


def _names(records: Expected) -> list[tuple[str, str | None]]:
    return [(kind, source) for kind, _, source in records]


def _by_revision(records: list[Record], since: int) -> list[list[tuple[str, str | None]]]:
    return [_names(r) for r in _revisions(records, since)]


def _present(s: Slot) -> bool:
    return s.name is not None and not s.broken


def _plain(s: Slot) -> bool:
    """Present, valid and the only file of its node: any change to it is simple to predict."""
    return _present(s) and s.dup is None


#: The changes, in the order they are made (over and over).
CYCLE = ("update", "atomic", "update", "remove", "atomic", "create", "rename", "break", "fix", "claim")
#: At most this many second files claiming a node id at once (so most nodes stay plain).
MAX_CLAIMS = 3
#: Which slots each change can be made to.
FITS: dict[str, Callable[[Slot], bool]] = {
    "update": _present,
    "atomic": _present,
    "remove": _plain,
    "create": lambda s: s.name is None,
    "rename": _plain,
    "break": _plain,
    "fix": lambda s: s.broken,
    "claim": _plain,
    "unclaim": lambda s: s.dup is not None,
}


@dataclass
class Writer:
    """Makes one effective change at a time and waits until its revision is served."""

    folder: Path
    slots: list[Slot]
    conn: Conn
    rng: random.Random
    stall_s: float
    revision: int = 0
    #: Every change record of every revision the writer has seen committed, in order.
    truth: dict[int, list[Record]] = field(default_factory=dict)
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    #: In-place writes the service read half done (see `commit`).
    half_done: int = 0
    visible_ms: list[float] = field(default_factory=list)
    count: int = 0

    def _pick(self, op: str) -> Slot | None:
        fitting = [s for s in self.slots if FITS[op](s)]
        return self.rng.choice(fitting) if fitting else None

    def _content(self, slot: Slot) -> bytes:
        """A new valid version of the slot's node (which becomes its last good document)."""
        doc = copy.deepcopy(slot.doc)
        doc["version"] = f"2.0.{self.count}"
        doc["priority"] = self.rng.randrange(3)  # moves lookups of shared classes between nodes
        if self.rng.random() < 0.1:
            doc["status"] = "inactive" if doc.get("status") == "active" else "active"
        slot.doc = doc
        return gen_nodes.encode(doc)

    def change(self) -> tuple[str, Expected, str | None]:
        """Make the next change on disk. Return its name, the records it must commit, and
        the file it wrote in place (None if it renamed, removed or truncated)."""
        self.count += 1
        wanted = CYCLE[self.count % len(CYCLE)]
        claims = sum(1 for s in self.slots if s.dup is not None)
        if wanted == "claim" and (claims >= MAX_CLAIMS or (claims and self.rng.random() < 0.5)):
            wanted = "unclaim"
        # When nothing fits (no file broken, no claim to take back...), an update always does.
        for op in (wanted, "claim" if wanted == "unclaim" else wanted, "update"):
            slot = self._pick(op)
            if slot is not None:
                break
        else:
            raise RuntimeError("no node file left to change")
        self.ops[op] += 1
        nid, path = slot.node_id, self.folder / (slot.name or f"{slot.node_id}.json")
        if op == "update":
            common.write_node_file(path, self._content(slot))
            return op, [("updated", nid, path.name)], path.name
        if op == "atomic":
            common.write_node_file_atomic(path, self._content(slot))
            return op, [("updated", nid, path.name)], None
        if op == "remove":
            slot.name = None
            path.unlink()
            return op, [("removed", nid, path.name)], None
        if op == "create":
            slot.name = path.name
            common.write_node_file(path, self._content(slot))
            return op, [("added", nid, path.name)], path.name
        if op == "rename":
            slot.renames += 1
            slot.name = f"{nid}-r{slot.renames}.json"
            os.rename(path, self.folder / slot.name)
            return op, [("source", nid, path.name), ("source", nid, slot.name)], None
        if op == "break":  # the node stays served from its last good version
            slot.broken = True
            if self.count % 20 < 10:  # a save cut short by a full disk: the file is empty
                common.write_node_file(path, b"")
            else:  # a tool that writes and renames, but wrote half a document
                common.write_node_file_atomic(path, f'{{"node_id": "{nid}", "name": '.encode())
            return op, [("error", nid, path.name)], None
        if op == "fix":
            slot.broken = False
            common.write_node_file(path, self._content(slot))
            return op, [("updated", nid, path.name), ("recovered", nid, path.name)], path.name
        if op == "claim":  # its name sorts after the owner's, so the owner keeps the node
            slot.dup = f"zz-claim-{nid}.json"
            common.write_node_file(self.folder / slot.dup, gen_nodes.encode(slot.doc))
            return op, [("conflict", nid, slot.dup)], slot.dup
        assert op == "unclaim" and slot.dup is not None
        (self.folder / slot.dup).unlink()
        dup, slot.dup = slot.dup, None
        return op, [("source", nid, dup)], None

    def commit(self) -> None:
        """One change, then wait (long-polling) until it is served; check its records."""
        before = self.revision
        started = time.perf_counter()
        op, expected, in_place = self.change()
        records = self.wait_beyond(before)
        # A file written in place can be read between its truncation and its write (the
        # writer was descheduled in between): that is one revision of the file in error,
        # then one of its complete content. The last good node is served all along.
        if in_place is not None and _names(expected) != [("error", in_place)]:
            while _by_revision(records, before) == [[("error", in_place)]]:
                records += self.wait_beyond(self.revision)
        self.visible_ms.append((time.perf_counter() - started) * 1000)
        revisions = [sorted(r) for r in _revisions(records, before)]
        if revisions == [sorted(expected)]:
            return
        if in_place and len(revisions) == 2 and _names(revisions[0]) == [("error", in_place)]:
            completed = expected
            if not {kind for kind, _, _ in expected} & {"error", "conflict", "recovered"}:
                completed = [*expected, ("recovered", expected[0][1], in_place)]
            if revisions[1] == sorted(completed):
                self.half_done += 1
                return
        self.mismatch_count += 1
        if len(self.mismatches) < 20:
            self.mismatches.append(
                f"change {self.count} ({op}): revisions {before + 1}..{self.revision}: "
                f"{revisions}, expected {sorted(expected)}"
            )

    def wait_beyond(self, since: int) -> list[Record]:
        """Long-poll until the revision is past `since`; keep and return the new records."""
        deadline = time.monotonic() + self.stall_s
        while time.monotonic() < deadline:
            got = self.conn.get("changes", f"/api/v1/changes?since={since}&wait=10")
            if got is None or got[0] != 200:
                raise RuntimeError(
                    f"the writer's long-poll failed: {got and got[0]} {got and got[2][:300]!r}"
                )
            body = json.loads(got[2])
            if body["revision"] > since:
                records = [soak_load.record_of(c) for c in body["changes"]]
                for rec in records:
                    self.truth.setdefault(rec[0], []).append(rec)
                self.revision = body["revision"]
                return records
        raise RuntimeError(f"change {self.count} was not served within {self.stall_s:.0f}s")

    def expected_sources(self, real: Iterable[str]) -> dict[str, str]:
        """{file: state} as /api/v1/sources must show it now."""
        out = {name: "ok" for name in real}
        for s in self.slots:
            if s.name is not None:
                out[s.name] = "error" if s.broken else "ok"
            if s.dup is not None:
                out[s.dup] = "conflict"
        return out

    def expected_versions(self) -> dict[str, Any]:
        """{node_id: version} of the synthetic nodes that must be served now (any status)."""
        return {s.node_id: s.doc.get("version") for s in self.slots if s.name is not None}


def build_folder(folder: Path, pool: int, components: int) -> tuple[list[Slot], list[str], Catalogue]:
    """The real node files plus `pool` synthetic ones; the slots, real names and catalogue."""
    real = [p.name for p in gen_nodes.copy_real(folder)]
    slots = []
    classes: list[str] = []
    for k in range(pool):
        doc = gen_nodes.node_document(k, components, nodes=pool, prefix="soak")
        slot = Slot(node_id=str(doc["node_id"]), doc=doc, name=f"{doc['node_id']}.json")
        common.write_node_file(folder / slot.name, gen_nodes.encode(doc))  # type: ignore[operator]
        slots.append(slot)
        classes += list(doc["components"])  # type: ignore[call-overload]
    real_ids = []
    words = {"Text", "Multiply", "embed", "Chat", "prompt", "vector", "Zzyzx"}
    for name in real:
        doc = json.loads((folder / name).read_bytes())
        real_ids.append(doc["node_id"])
        classes += list(doc["components"])
    words |= set(gen_nodes._WORDS[:12])
    node_ids = [*real_ids, *(s.node_id for s in slots), "no-such-node"]
    return slots, real, Catalogue(sorted(set(classes)), node_ids, sorted(words))


def final_state_problems(port: int, writer: Writer, real: list[str]) -> list[str]:
    """Differences between what the API serves now and what the writer left on disk."""
    problems = []
    status, _, body = common.get(port, "/api/v1/sources")
    got = {s["path"]: s["state"] for s in json.loads(body)["sources"]} if status == 200 else {}
    want = writer.expected_sources(real)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))
        problems.append(f"/api/v1/sources differs from the folder: {diff[:6]}")
    status, _, body = common.get(port, "/api/v1/nodes?status=all")
    nodes = {n["metadata"]["node_id"]: n["metadata"].get("version") for n in json.loads(body)["nodes"]}
    synthetic = {k: v for k, v in nodes.items() if k.startswith("soak-")}
    if synthetic != writer.expected_versions():
        diff = sorted(set(synthetic.items()) ^ set(writer.expected_versions().items()))
        problems.append(f"/api/v1/nodes?status=all differs from the last good files: {diff[:6]}")
    return problems
