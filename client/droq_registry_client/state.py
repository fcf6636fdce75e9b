"""The state the client answers from: every node as the registry serves it, and an index.

A `State` is immutable once built. The follower builds the next one (whole after a
listing, or from the previous one after a change) and publishes it with one assignment,
so a lookup reads one consistent state without taking a lock.

Nothing here is computed that the registry does not also state: the nodes are the
registry's own answers (`GET /api/v1/nodes/{id}`), and the only derived fact, which
active nodes declare a class and in which order, follows the documented rule the
registry's lookups use (highest `priority` first, then the smallest `node_id`); the tests
check it against the registry's own `/components/{class}/nodes` answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

JSON = dict[str, Any]


class Entry:
    """One node: the `node` and `components` objects of `GET /api/v1/nodes/{id}`, its ETag.

    `node` and `components` are shared by every answer that includes this node: callers
    treat them as read-only (as client-go's listers ask of cached objects).
    """

    __slots__ = ("alone", "components", "etag", "node", "node_id", "rank", "status")

    def __init__(self, node: JSON, components: dict[str, str], etag: str | None) -> None:
        self.node = node
        self.components = components
        self.etag = etag
        self.node_id: str = node["node_id"]
        self.status: str = node.get("status", "active")
        priority = node.get("priority", 0)
        self.rank = (-priority if isinstance(priority, int) else 0, self.node_id)
        # The index entry of every class only this node declares (most classes): one
        # shared tuple instead of one per class.
        self.alone: tuple[Entry, ...] = (self,)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def same_as(self, other: Entry) -> bool:
        """Whether both carry the same served content (ETags are content hashes)."""
        if self.etag is not None and other.etag is not None:
            return self.etag == other.etag
        return self.node == other.node and self.components == other.components


class State:
    """One state of the registry, as of `revision` in history `epoch`.

    `content_hash` is the registry's `X-Registry-Content-Hash` for exactly this state, or
    None when the client cannot vouch that its nodes are exactly that revision's (then it
    never claims to match another replica's hash).
    """

    __slots__ = ("content_hash", "epoch", "index", "nodes", "revision")

    def __init__(
        self,
        nodes: Mapping[str, Entry],
        index: Mapping[str, tuple[Entry, ...]],
        epoch: str | None,
        revision: int,
        content_hash: str | None,
    ) -> None:
        self.nodes = nodes
        self.index = index
        self.epoch = epoch
        self.revision = revision
        self.content_hash = content_hash

    def at(self, epoch: str | None, revision: int, content_hash: str | None) -> State:
        """The same nodes, known as of another cursor."""
        return State(self.nodes, self.index, epoch, revision, content_hash)

    def evolve(
        self,
        put: Iterable[Entry],
        drop: Iterable[str],
        epoch: str | None,
        revision: int,
        content_hash: str | None,
    ) -> State:
        """This state with the nodes in `put` replaced or added and those in `drop` removed.

        Work is proportional to the changed nodes' classes (plus one copy of each dict)."""
        nodes = dict(self.nodes)
        index = dict(self.index)
        put = list(put)
        for node_id in {*drop, *(entry.node_id for entry in put)}:
            old = nodes.pop(node_id, None)
            if old is None or not old.active:
                continue
            for cls in old.components:
                rest = tuple(e for e in index.get(cls, ()) if e is not old)
                if rest:
                    index[cls] = rest
                else:
                    index.pop(cls, None)
        for entry in put:
            nodes[entry.node_id] = entry
            if entry.active:
                for cls in entry.components:
                    before = index.get(cls)
                    if before is None:
                        index[cls] = entry.alone
                    else:
                        index[cls] = tuple(sorted((*before, entry), key=_rank))
        return State(nodes, index, epoch, revision, content_hash)

    def differences(self, other: State) -> int:
        """How many nodes differ between the two states (added, removed or changed)."""
        count = len(self.nodes.keys() ^ other.nodes.keys())
        for node_id, entry in self.nodes.items():
            theirs = other.nodes.get(node_id)
            if theirs is not None and theirs is not entry and not entry.same_as(theirs):
                count += 1
        return count


def _rank(entry: Entry) -> tuple[int, str]:
    return entry.rank


EMPTY = State({}, {}, None, 0, None)


def build(entries: Iterable[Entry], epoch: str | None, revision: int, content_hash: str | None) -> State:
    """A state from scratch (after a listing, or from the cache file)."""
    nodes = {entry.node_id: entry for entry in entries}
    index: dict[str, tuple[Entry, ...]] = {}
    # Visiting the active nodes best first keeps each class's candidates in order.
    for entry in sorted((e for e in nodes.values() if e.active), key=_rank):
        alone = entry.alone
        for cls in entry.components:
            before = index.get(cls)
            index[cls] = alone if before is None else before + alone
    return State(nodes, index, epoch, revision, content_hash)


def entry_from(node: JSON, components: dict[str, str], etag: str | None) -> Entry:
    """An `Entry` whose `supported_components` share the `components` keys' strings.

    A parsed answer holds each class name twice (in `supported_components` and as a key of
    `components`); one string object for both saves about a third of a node's memory.
    """
    supported = node.get("supported_components")
    if isinstance(supported, list) and supported:
        keys = {name: name for name in components}
        node["supported_components"] = [keys.get(name, name) for name in supported]
    return Entry(node, components, etag)
