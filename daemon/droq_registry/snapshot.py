"""The read model: an immutable view of one committed revision, with answers as bytes.

After every commit the reconciler builds the next `Snapshot` from the previous one and the
plan it just wrote (work proportional to the change), then swaps it in with one assignment.
A request takes the current snapshot once and builds its whole answer, ETag and revision
header from it, so no answer mixes two states.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .model import CORE_FIELDS, Change, Node, Source
from .search import SearchCell


def etag_of(*parts: bytes) -> str:
    """A strong ETag from content: the same bytes give the same tag on every replica."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return f'"{digest.hexdigest()}"'


class NodeView:
    """One node, pre-serialised. `node_json` is NODE; `components_json` is {class: module}.
    `served_hash` is the hash of exactly those two: what is served of the node (its lookups'
    ETags and its share of the registry's content hash come from it).

    The answers made of these pieces are built in `answers.py`."""

    __slots__ = (
        "components_json",
        "node_id",
        "node_json",
        "paths",
        "priority",
        "served_hash",
        "source",
        "status",
    )

    def __init__(self, source: str, node: Node) -> None:
        self.node_id = node.node_id
        self.status = node.status
        self.priority = node.priority
        self.source = source
        self.paths: dict[str, str] = {c.component_class: c.module_path for c in node.components}
        public: dict[str, Any] = {name: getattr(node, name) for name in CORE_FIELDS}
        public["supported_components"] = list(self.paths)
        public.update(node.extra)
        self.node_json = exact(orjson.dumps(public))
        self.components_json = exact(orjson.dumps(self.paths))
        served = hashlib.blake2b(self.node_json, digest_size=16)
        served.update(b"\0")
        served.update(self.components_json)
        self.served_hash = served.digest()


#: Content terms are added modulo this (see `content_term`).
_CONTENT_MODULUS = 1 << 256


def content_term(view: NodeView) -> int:
    """One node's share of the content hash: a 256-bit number from exactly what
    `GET /api/v1/nodes/{id}` serves of it (its node and components, so status, priority and
    every module path). The content hash is the sum of the terms, so it is the same for the
    same served nodes whatever order or history produced them, and a commit updates it with
    work proportional to the nodes it changed."""
    return int.from_bytes(hashlib.blake2b(view.served_hash, digest_size=32, person=b"droq-content").digest(), "little")


def content_hash_of(total: int) -> str:
    """The opaque `X-Registry-Content-Hash` of a sum of content terms (32 hex digits)."""
    return hashlib.blake2b(total.to_bytes(32, "little"), digest_size=16, person=b"droq-state").hexdigest()


def exact(data: bytes) -> bytes:
    """An exact-size copy of `data`: orjson's result keeps the capacity it grew to (4 KiB
    for a 100-byte record, often 4x the length), so bytes kept for the life of a revision or
    longer (a node's parts, the change log's records, a body kept in a snapshot) are copied."""
    return bytes(memoryview(data))


def _rank(view: NodeView) -> tuple[int, str]:
    return (-view.priority, view.node_id)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed revision of the registry, ready to answer from.

    Everything a request reads is here and is swapped in whole by one assignment: the
    nodes, the class index, the sources, the change log with its floor, the counts.
    `cache` holds answers derived from it, built once on first use (`offload.Offload.once`).
    """

    revision: int
    #: The history this revision belongs to (see `store.Store.epoch`): a revision number
    #: only means something together with it.
    epoch: str
    nodes: Mapping[str, NodeView]
    #: component class -> active nodes that declare it, best first.
    index: Mapping[str, tuple[str, ...]]
    sources: Mapping[str, Source]
    changes: ChangeLog = field(default_factory=lambda: ChangeLog.of((), 0, 1))
    #: Component classes declared by the nodes, and files in error or in conflict.
    components: int = 0
    files_in_error: int = 0
    #: How to build this snapshot's search index (see `search.SearchCell`).
    search: SearchCell = field(default_factory=SearchCell)
    #: The sum of the nodes' `content_term`s (mod 2**256), and its digest, the served
    #: content's hash: equal on every replica that serves the same nodes.
    content_total: int = 0
    content_hash: str = content_hash_of(0)
    cache: dict[Any, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, epoch: str, changes: ChangeLog | None = None) -> Snapshot:
        return cls(revision=0, epoch=epoch, nodes={}, index={}, sources={}, changes=changes or ChangeLog.of((), 0, 1))

    def evolve(
        self,
        revision: int,
        nodes_put: Mapping[str, NodeView],
        nodes_drop: Iterable[str],
        sources_put: Mapping[str, Source],
        sources_drop: Iterable[str],
        changes: ChangeLog | None = None,
        epoch: str | None = None,
    ) -> Snapshot:
        """The next snapshot: this one with the given nodes and sources replaced (and the
        change log and epoch, when given). The work is proportional to what changed."""
        nodes = dict(self.nodes)
        index = dict(self.index)
        components = self.components
        total = self.content_total
        changed = set(nodes_drop) | set(nodes_put)
        for node_id in changed:
            old = nodes.pop(node_id, None)
            if old is None:
                continue
            components -= len(old.paths)
            total -= content_term(old)
            if old.status != "active":
                continue
            for cls in old.paths:
                rest = tuple(n for n in index.get(cls, ()) if n != node_id)
                if rest:
                    index[cls] = rest
                else:
                    index.pop(cls, None)
        for node_id, view in nodes_put.items():
            nodes[node_id] = view
            components += len(view.paths)
            total += content_term(view)
            if view.status != "active":
                continue
            # Most classes have one candidate: they all share their node's one-element tuple.
            mine = (node_id,)
            for cls in view.paths:
                before = index.get(cls)
                if before is None:
                    index[cls] = mine
                else:
                    index[cls] = tuple(sorted((*before, node_id), key=lambda n: _rank(nodes[n])))
        sources = dict(self.sources)
        in_error = self.files_in_error
        for path in (*sources_drop, *sources_put):
            old_source = sources.pop(path, None)
            if old_source is not None:
                in_error -= old_source.state != "ok"
                changed.add(old_source.node_id or "")  # its last good document may have gone
        for path, source in sources_put.items():
            sources[path] = source
            in_error += source.state != "ok"
            changed.add(source.node_id or "")
        changed.discard("")
        total %= _CONTENT_MODULUS
        return Snapshot(
            revision=revision,
            epoch=self.epoch if epoch is None else epoch,
            nodes=nodes,
            index=index,
            sources=sources,
            changes=self.changes if changes is None else changes,
            components=components,
            files_in_error=in_error,
            search=self.search.next(changed),
            content_total=total,
            content_hash=self.content_hash if total == self.content_total else content_hash_of(total),
        )


def change_json(change: Change) -> bytes:
    """One change record as the API writes it (kept in the log for `keep` revisions or more)."""
    return exact(orjson.dumps(
        {
            "revision": change.revision,
            "kind": change.kind,
            "node_id": change.node_id,
            "source": change.source,
            "at": change.at,
        }
    ))


@dataclass(frozen=True, slots=True)
class ChangeLog:
    """The newest change records, in revision order, and `floor`: the log is complete for
    every revision above it.

    One immutable value, part of the snapshot: a request that reads the snapshot once gets
    records and floor that belong together, so a trim can never hide records from it.
    Each record is encoded once, here, so an answer is a join of bytes.
    """

    records: tuple[Change, ...]
    revisions: tuple[int, ...]
    encoded: tuple[bytes, ...]
    floor: int
    keep: int

    @classmethod
    def of(cls, changes: Iterable[Change], floor: int, keep: int) -> ChangeLog:
        records = tuple(changes)
        return cls(records, tuple(c.revision for c in records), tuple(map(change_json, records)), floor, keep)

    def extend(self, changes: Iterable[Change], floor: int) -> ChangeLog:
        """This log with `changes` appended and the floor raised to `floor`."""
        new = tuple(changes)
        records = self.records + new
        revisions = self.revisions + tuple(c.revision for c in new)
        encoded = self.encoded + tuple(map(change_json, new))
        floor = max(self.floor, floor)
        if len(records) > self.keep * 2:  # trim in batches, not on every append
            cut = bisect.bisect_right(revisions, floor)
            records, revisions, encoded = records[cut:], revisions[cut:], encoded[cut:]
        return ChangeLog(records, revisions, encoded, floor, self.keep)

    def kept(self, revision: int) -> bool:
        """Whether every change after `revision` is still in the log."""
        return revision >= self.floor

    def span(self, revision: int, until: int) -> slice:
        """Where the records with `revision < r <= until` are (for a revision that is kept)."""
        start = bisect.bisect_right(self.revisions, max(revision, self.floor))
        return slice(start, bisect.bisect_right(self.revisions, until))

    def since(self, revision: int, until: int) -> list[Change]:
        """Records with `revision < r <= until` (the caller checks `kept(revision)`)."""
        return list(self.records[self.span(revision, until)])
