"""Search over component classes, display names and descriptions, with a trigram index.

The dashboard searches as you type. Reading every node's components for each request
(unpacking a thousand last-good documents) costs about a second, so a search reads
prepared data instead:

- `NodeText`: one node's searchable text, casefolded and joined, with the display names
  and descriptions an answer shows kept compressed. Built once per node view.
- `SearchIndex`: every node's text, and for each sequence of one, two or three characters
  the set of nodes whose text holds it (a bit per node). A query keeps the nodes that hold
  all of its trigrams and looks for the text in those only.

The answer is exactly the one a scan of every node gives (same results, order and
truncation), as `tests/test_search.py` checks against such a scan.

The index of a snapshot is built the first time it is searched, in a worker thread, and
from the previous snapshot's index when there is one: only the nodes that changed since
are read again, so the work is proportional to the change, like `Snapshot.evolve`.
"""

from __future__ import annotations

import bisect
import threading
import zlib
from array import array
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import orjson

from . import nodebytes
from .model import Source

MAX_RESULTS = 50
MAX_QUERY = 200

#: Separates the fields in a node's text. A query holding it can only match a field that
#: holds it too, and such nodes are checked field by field (`NodeText.fields`).
SEP = "\0"
#: Display names and descriptions are kept compressed in blocks of this many components,
#: so an answer decompresses a little for each component it shows.
BLOCK = 32


class Viewed(Protocol):
    """What search reads of a node's view (`snapshot.NodeView` is one)."""

    @property
    def paths(self) -> Mapping[str, str]: ...
    @property
    def source(self) -> str: ...


class Searched(Protocol):
    """What search reads of a snapshot (`snapshot.Snapshot` is one, and holds its cell):
    this module is below the snapshot, which imports it, never the other way round."""

    @property
    def nodes(self) -> Mapping[str, Viewed]: ...
    @property
    def index(self) -> Mapping[str, tuple[str, ...]]: ...
    @property
    def sources(self) -> Mapping[str, Source]: ...
    @property
    def search(self) -> SearchCell: ...


class NodeText:
    """One node's components as search sees them."""

    __slots__ = ("classes", "fields", "originals", "starts", "text")

    def __init__(self, view: Viewed, source: Source | None) -> None:
        infos: dict[str, Mapping[str, Any]] = {}
        if source is not None and source.packed is not None:
            infos = {c.component_class: c.info for c in nodebytes.unpack(source.packed).components if c.info}
        self.classes = tuple(view.paths)
        shown: list[tuple[str | None, str | None]] = []
        folded: list[tuple[str, str, str]] = []
        for cls in self.classes:
            info = infos.get(cls, {})
            display, description = info.get("display_name"), info.get("description")
            display = display if isinstance(display, str) else None
            description = description if isinstance(description, str) else None
            shown.append((display, description))
            folded.append((cls.casefold(), (display or "").casefold(), (description or "").casefold()))
        self.originals = tuple(
            zlib.compress(orjson.dumps(shown[at : at + BLOCK]), 1) for at in range(0, len(shown), BLOCK)
        )
        self.text = SEP.join(SEP.join(f) for f in folded)
        self.starts = array("q")
        at = 0
        for f in folded:
            self.starts.append(at)
            at += len(f[0]) + len(f[1]) + len(f[2]) + 3
        odd = any(SEP in part for f in folded for part in f)
        self.fields = tuple(folded) if odd else None

    def matches(self, needle: str) -> Iterator[int]:
        """The positions (in `classes`) of the components whose class, display name or
        description contains `needle` (casefolded), in order."""
        if self.fields is not None:
            for k, fields in enumerate(self.fields):
                if any(needle in f for f in fields):
                    yield k
            return
        if SEP in needle:
            return
        text, starts = self.text, self.starts
        last = len(starts) - 1
        at = text.find(needle)
        while at >= 0:
            k = bisect.bisect_right(starts, at) - 1
            yield k
            if k == last:
                return
            at = text.find(needle, starts[k + 1])

    def shown(self, k: int, blocks: dict[int, list[list[str | None]]]) -> list[str | None]:
        """Display name and description of component `k`, as an answer shows them
        (`blocks`: what this answer has decompressed so far)."""
        block = blocks.get(k // BLOCK)
        if block is None:
            block = blocks[k // BLOCK] = orjson.loads(zlib.decompress(self.originals[k // BLOCK]))
        return block[k % BLOCK]

    def grams(self) -> set[str]:
        """Every sequence of one, two and three characters in the text."""
        text = self.text
        trigrams = set(map("".join, zip(text, text[1:], text[2:])))
        grams = set(trigrams)
        grams.update(g[:2] for g in trigrams)
        grams.update(g[1:] for g in trigrams)
        grams.update(text)  # every text is 3 characters or more: a class and two separators
        return grams


class SearchIndex:
    """Every node's text, and which nodes hold each n-gram (bit `slots[node_id]`)."""

    __slots__ = ("free", "grams", "order", "slots", "texts")

    def __init__(self, base: SearchIndex | None = None) -> None:
        self.texts: dict[str, NodeText] = dict(base.texts) if base else {}
        self.grams: dict[str, int] = dict(base.grams) if base else {}
        self.slots: dict[str, int] = dict(base.slots) if base else {}
        self.free: list[int] = list(base.free) if base else []
        self.order: tuple[str, ...] = ()

    def update(self, node_id: str, text: NodeText | None) -> None:
        """Put the node's new text in place of its old one (None: the node is gone)."""
        old = self.texts.pop(node_id, None)
        slot = self.slots.get(node_id)
        if old is not None and slot is not None:
            keep = ~(1 << slot)
            for gram in old.grams():
                bits = self.grams[gram] & keep
                if bits:
                    self.grams[gram] = bits
                else:
                    del self.grams[gram]
        if text is None:
            if slot is not None:
                del self.slots[node_id]
                self.free.append(slot)
            return
        if slot is None:
            slot = self.slots[node_id] = self.free.pop() if self.free else len(self.slots)
        self.texts[node_id] = text
        bit = 1 << slot
        grams = self.grams
        for gram in text.grams():
            grams[gram] = grams.get(gram, 0) | bit

    def candidates(self, needle: str) -> int | None:
        """Bits of the nodes whose text may contain `needle`; None for "any node"."""
        if SEP in needle:
            return None
        if len(needle) <= 3:
            return self.grams.get(needle, 0)
        bits = -1
        for gram in {needle[i : i + 3] for i in range(len(needle) - 2)}:
            bits &= self.grams.get(gram, 0)
            if not bits:
                break
        return bits


class SearchCell:
    """How one snapshot gets its index: built on first use from the last index built
    before it (`base`) and the nodes changed since (`dirty`), or from nothing.

    The reconciler makes the next cell (`next`) while a worker thread may be building this
    one; `_index` is set before `_from` is cleared, so reading them in the other order
    always sees one of the two.
    """

    __slots__ = ("_from", "_index", "_lock")

    def __init__(self, base: SearchIndex | None = None, dirty: frozenset[str] = frozenset()) -> None:
        self._from: tuple[SearchIndex | None, frozenset[str]] | None = (base, dirty)
        self._index: SearchIndex | None = None
        self._lock = threading.Lock()

    def next(self, changed: set[str]) -> SearchCell:
        """The cell of the next snapshot, in which the nodes `changed` are different."""
        start = self._from
        index = self._index
        if index is not None:
            return SearchCell(index, frozenset(changed))
        assert start is not None
        base, dirty = start
        if base is None:
            return SearchCell()
        dirty = dirty | changed
        if len(dirty) > len(base.texts) // 2:  # about as cheap to build afresh, and frees the old one
            return SearchCell()
        return SearchCell(base, dirty)

    def index(self, snap: Searched) -> SearchIndex:
        """The snapshot's index (blocking: run it in a worker thread)."""
        with self._lock:
            if self._index is None:
                start = self._from
                assert start is not None
                base, dirty = start
                index = SearchIndex(base)
                for node_id in (snap.nodes if base is None else dirty):
                    view = snap.nodes.get(node_id)
                    index.update(node_id, None if view is None else NodeText(view, snap.sources.get(view.source)))
                index.order = tuple(sorted(index.texts))
                self._index = index
                self._from = None
            return self._index


def search(snap: Searched, query: str) -> bytes:
    """The body of `GET /api/v1/search?q=query` (blocking: run it in a worker thread).

    Components whose class, display name or description contains the query (any case),
    each once, from the nodes in node_id order; at most MAX_RESULTS, class names that
    start with the query first."""
    index = snap.search.index(snap)
    needle = query.casefold()
    bits = index.candidates(needle)
    seen: set[str] = set()
    results: list[dict[str, Any]] = []
    truncated = False
    for node_id in index.order:
        if bits is not None and not bits >> index.slots[node_id] & 1:
            continue
        text = index.texts[node_id]
        blocks: dict[int, list[list[str | None]]] = {}
        for k in text.matches(needle):
            cls = text.classes[k]
            if cls in seen:
                continue
            seen.add(cls)
            if len(results) == MAX_RESULTS:
                truncated = True
                break
            display, description = text.shown(k, blocks)
            candidates = list(snap.index.get(cls, ()))
            results.append(
                {
                    "component_class": cls,
                    "display_name": display,
                    "description": description,
                    "module_path": snap.nodes[candidates[0] if candidates else node_id].paths[cls],
                    "node_id": candidates[0] if candidates else None,
                    "candidates": candidates,
                    "declared_by": candidates[0] if candidates else node_id,
                }
            )
        if truncated:
            break
    results.sort(key=lambda r: (not r["component_class"].casefold().startswith(needle), r["component_class"]))
    return orjson.dumps({"query": query, "results": results, "truncated": truncated})
