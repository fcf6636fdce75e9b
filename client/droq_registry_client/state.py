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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

JSON = dict[str, Any]


class Entry:
    """One node: the `node` and `components` objects of `GET /api/v1/nodes/{id}`, its ETag.

    `node` and `components` are shared by every answer that includes this node: callers
    treat them as read-only (as client-go's listers ask of cached objects).

    Until a lookup first needs it, `components` is kept as the tuple of its module paths
    beside `classes` (the node's `supported_components` list when it is in the same
    order): a third of the memory of a dict of a few hundred entries. The first lookup that
    answers with this node makes the dict (tens of microseconds, once) and keeps it, so
    memory grows only with the nodes an executor actually routes to.
    """

    __slots__ = ("_data", "alone", "classes", "etag", "node", "node_id", "rank", "status")

    def __init__(self, node: JSON, classes: Sequence[str], paths: tuple[str, ...], etag: str | None) -> None:
        self.node = node
        self.classes = classes
        #: The module paths (aligned with `classes`), or the components dict once made.
        self._data: tuple[str, ...] | dict[str, str] = paths
        self.etag = etag
        self.node_id: str = node["node_id"]
        self.status: str = node.get("status", "active")
        priority = node.get("priority", 0)
        self.rank = (-priority if isinstance(priority, int) else 0, self.node_id)
        # The index entry of every class only this node declares (most classes): one
        # shared tuple instead of one per class.
        self.alone: tuple[Entry, ...] = (self,)

    @property
    def components(self) -> dict[str, str]:
        """{class: module path}, made on first use and kept (a race makes it twice, harmlessly)."""
        data = self._data
        if type(data) is dict:
            return data
        made = dict(zip(self.classes, data, strict=True))
        self._data = made
        return made

    def components_copy(self) -> dict[str, str]:
        """{class: module path} without keeping it (for the cache file and comparisons)."""
        data = self._data
        return data if type(data) is dict else dict(zip(self.classes, data, strict=True))

    @property
    def active(self) -> bool:
        return self.status == "active"

    def same_as(self, other: Entry) -> bool:
        """Whether both carry the same served content (ETags are content hashes)."""
        if self.etag is not None and other.etag is not None:
            return self.etag == other.etag
        return self.node == other.node and self.components_copy() == other.components_copy()


class State:
    """One state of the registry, as of `revision` in history `epoch`.

    `content_hash` is the registry's `X-Registry-Content-Hash` for exactly this state, or
    None when the client cannot vouch that its nodes are exactly that revision's (then it
    never claims to match another replica's hash).

    The index (class -> candidates) is a base shared by successive states plus `changed`,
    the classes whose candidates changed since the base was made (`()`: none any more).
    A change copies the node map and the small overlay, not a base of hundreds of
    thousands of classes; once the overlay reaches an eighth of the base (`OVERLAY_SHARE`) it is merged
    into a new base. Every state stays immutable.
    """

    __slots__ = ("changed", "content_hash", "epoch", "index", "nodes", "revision")

    def __init__(
        self,
        nodes: Mapping[str, Entry],
        index: Mapping[str, tuple[Entry, ...]],
        epoch: str | None,
        revision: int,
        content_hash: str | None,
        changed: Mapping[str, tuple[Entry, ...]] | None = None,
    ) -> None:
        self.nodes = nodes
        self.index = index
        self.changed: Mapping[str, tuple[Entry, ...]] = changed if changed is not None else {}
        self.epoch = epoch
        self.revision = revision
        self.content_hash = content_hash

    def candidates(self, component_class: str) -> tuple[Entry, ...]:
        """The active nodes that declare the class, best first; () if none."""
        found = self.changed.get(component_class)
        if found is None:
            return self.index.get(component_class, ())
        return found

    def at(self, epoch: str | None, revision: int, content_hash: str | None) -> State:
        """The same nodes, known as of another cursor."""
        return State(self.nodes, self.index, epoch, revision, content_hash, self.changed)

    def evolve(
        self,
        put: Iterable[Entry],
        drop: Iterable[str],
        epoch: str | None,
        revision: int,
        content_hash: str | None,
    ) -> State:
        """This state with the nodes in `put` replaced or added and those in `drop` removed.

        Work is proportional to the changed nodes' classes (plus a copy of the node map)."""
        nodes = dict(self.nodes)
        put = [entry for entry in put]
        gone = {*drop, *(entry.node_id for entry in put)}
        affected: set[str] = set()
        for node_id in gone:
            old = nodes.pop(node_id, None)
            if old is not None and old.active:
                affected.update(old.classes)
        adding: dict[str, list[Entry]] = {}
        for entry in put:
            nodes[entry.node_id] = entry
            if entry.active:
                for cls in entry.classes:
                    adding.setdefault(cls, []).append(entry)
        affected.update(adding)
        changed = dict(self.changed)
        for cls in affected:
            rest = [e for e in self.candidates(cls) if e.node_id not in gone]
            new = adding.get(cls, ())
            if not rest and len(new) == 1:
                changed[cls] = new[0].alone
            else:
                changed[cls] = tuple(sorted((*rest, *new), key=_rank))
        index = self.index
        if len(changed) * OVERLAY_SHARE > len(index) or len(index) < SMALL_INDEX:
            merged = dict(index)
            for cls, candidates in changed.items():
                if candidates:
                    merged[cls] = candidates
                else:
                    merged.pop(cls, None)
            index, changed = merged, {}
        return State(nodes, index, epoch, revision, content_hash, changed)

    def differences(self, other: State) -> int:
        """How many nodes differ between the two states (added, removed or changed)."""
        count = len(self.nodes.keys() ^ other.nodes.keys())
        for node_id, entry in self.nodes.items():
            theirs = other.nodes.get(node_id)
            if theirs is not None and theirs is not entry and not entry.same_as(theirs):
                count += 1
        return count


#: Below this many classes the index is copied whole on every change (cheaper than an overlay).
SMALL_INDEX = 20_000
#: The overlay of changed classes is merged into a new base once it is 1/OVERLAY_SHARE of it.
OVERLAY_SHARE = 8


def _rank(entry: Entry) -> tuple[int, str]:
    return entry.rank


def build(entries: Iterable[Entry], epoch: str | None, revision: int, content_hash: str | None) -> State:
    """A state from scratch (after a listing, or from the cache file)."""
    nodes = {entry.node_id: entry for entry in entries}
    index: dict[str, tuple[Entry, ...]] = {}
    canonical: dict[str, str] = {}  # one string per class name across nodes, while building
    # Visiting the active nodes best first keeps each class's candidates in order.
    for entry in sorted((e for e in nodes.values() if e.active), key=_rank):
        alone = entry.alone
        for cls in entry.classes:
            before = index.get(cls)
            index[cls] = alone if before is None else before + alone
        _share_names(entry, canonical)
    return State(nodes, index, epoch, revision, content_hash)


def _share_names(entry: Entry, canonical: dict[str, str]) -> None:
    """Make `entry` hold the string objects other nodes already hold for the same class
    names (classes several nodes declare are a tenth of a large registry's)."""
    classes = entry.classes
    if not isinstance(classes, list) or type(entry._data) is dict:
        for cls in classes:
            canonical.setdefault(cls, cls)
        return
    for i, cls in enumerate(classes):
        first = canonical.setdefault(cls, cls)
        if first is not cls:
            classes[i] = first  # the node's own supported_components list: same value


def entry_from(node: JSON, components: dict[str, str], etag: str | None) -> Entry:
    """An `Entry` from a parsed answer, holding each class name in one string object.

    A parsed answer has each class name twice (in `supported_components` and as a key of
    `components`); the list is made to hold the keys' own strings, and serves as the
    entry's `classes` when it lists them in the same order (the registry sorts both).
    """
    supported = node.get("supported_components")
    classes: Sequence[str] = tuple(components)
    if isinstance(supported, list):
        names: list[str] = supported
        keys = {name: name for name in components}
        shared = [keys.get(name, name) for name in names]
        node["supported_components"] = shared
        if len(shared) == len(classes) and all(a is b for a, b in zip(shared, classes)):
            classes = shared
    return Entry(node, classes, tuple(components.values()), etag)
