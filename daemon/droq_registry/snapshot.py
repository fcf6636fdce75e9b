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


def etag_of(*parts: bytes) -> str:
    """A strong ETag from content: the same bytes give the same tag on every replica."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return f'"{digest.hexdigest()}"'


class NodeView:
    """One node, pre-serialised. `node_json` is NODE; `components_json` is {class: module}."""

    __slots__ = (
        "_detail",
        "components_json",
        "digest",
        "node_id",
        "node_json",
        "paths",
        "priority",
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
        self.node_json = _exact(orjson.dumps(public))
        self.components_json = _exact(orjson.dumps(self.paths))
        digest = hashlib.blake2b(self.node_json, digest_size=16)
        digest.update(b"\0")
        digest.update(self.components_json)
        self.digest = digest.digest()
        self._detail: tuple[bytes, str] | None = None

    def detail(self) -> tuple[bytes, str]:
        """The body and ETag of `GET /api/v1/nodes/{id}`, built on first use."""
        if self._detail is None:
            body = b"".join((b'{"node":', self.node_json, b',"components":', self.components_json, b"}"))
            self._detail = (body, etag_of(body))
        return self._detail

    def lookup(self, component_class: str) -> tuple[bytes, str]:
        """The body and ETag of `GET /api/v1/components/{class}/node` answered by this node."""
        module = orjson.dumps(self.paths[component_class])
        body = b"".join(
            (b'{"node":', self.node_json, b',"components":', self.components_json, b',"module_path":', module, b"}")
        )
        return body, etag_of(b"lookup", self.digest, module)


def _exact(data: bytes) -> bytes:
    """orjson's result keeps the capacity it grew to (often 4x the length); a snapshot
    holds these for the life of a revision, so keep an exact-size copy."""
    return bytes(memoryview(data))


def _rank(view: NodeView) -> tuple[int, str]:
    return (-view.priority, view.node_id)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed revision of the registry, ready to answer from."""

    revision: int
    nodes: Mapping[str, NodeView]
    #: component class -> active nodes that declare it, best first.
    index: Mapping[str, tuple[str, ...]]
    sources: Mapping[str, Source]
    cache: dict[Any, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(revision=0, nodes={}, index={}, sources={})

    def evolve(
        self,
        revision: int,
        nodes_put: Mapping[str, NodeView],
        nodes_drop: Iterable[str],
        sources_put: Mapping[str, Source],
        sources_drop: Iterable[str],
    ) -> Snapshot:
        """The next snapshot: this one with the given nodes and sources replaced."""
        nodes = dict(self.nodes)
        index = dict(self.index)
        changed = set(nodes_drop) | set(nodes_put)
        for node_id in changed:
            old = nodes.pop(node_id, None)
            if old is None or old.status != "active":
                continue
            for cls in old.paths:
                rest = tuple(n for n in index.get(cls, ()) if n != node_id)
                if rest:
                    index[cls] = rest
                else:
                    index.pop(cls, None)
        for node_id, view in nodes_put.items():
            nodes[node_id] = view
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
        for path in sources_drop:
            sources.pop(path, None)
        sources.update(sources_put)
        return Snapshot(revision=revision, nodes=nodes, index=index, sources=sources)

    def cached(self, key: Any, build: Any) -> Any:
        """Build a derived answer once per snapshot (a benign race builds it twice)."""
        try:
            return self.cache[key]
        except KeyError:
            value = self.cache[key] = build()
            return value


class ChangeLog:
    """The newest change records, in revision order; `floor` is the oldest complete point.

    Written by the reconciler's thread, read by requests: the records and their revisions
    are one tuple, replaced whole, so a reader never pairs one list with another's trim.
    """

    def __init__(self, changes: Iterable[Change], floor: int, keep: int) -> None:
        records = tuple(changes)
        self._log: tuple[tuple[Change, ...], tuple[int, ...]] = (records, tuple(c.revision for c in records))
        self.floor = floor
        self.keep = keep

    def extend(self, changes: list[Change], floor: int) -> None:
        records, revisions = self._log
        records += tuple(changes)
        revisions += tuple(c.revision for c in changes)
        floor = max(self.floor, floor)
        if len(records) > self.keep * 2:  # trim in batches, not on every append
            cut = bisect.bisect_right(revisions, floor)
            records, revisions = records[cut:], revisions[cut:]
        self._log = (records, revisions)
        self.floor = floor

    def since(self, revision: int, until: int) -> list[Change]:
        """Records with `revision < r <= until` (the caller checks `revision >= floor`)."""
        records, revisions = self._log
        start = bisect.bisect_right(revisions, max(revision, self.floor))
        stop = bisect.bisect_right(revisions, until)
        return list(records[start:stop])
