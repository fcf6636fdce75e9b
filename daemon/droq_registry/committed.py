"""What the last commit left, in memory: the state `diff.plan` plans against.

`Committed` holds the sources by path, the served nodes by node id, which files claim which
node id, and the folders of every components file some node file points to (for the
watcher). `apply(plan)` moves it to the state after that plan's commit. Only the writer
thread changes it; `watch_dirs` is replaced whole, since the event loop reads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .diff import Plan
from .model import Node, Served, Source
from .nodebytes import unpack


class Committed:
    """The sources, served nodes and claims of the last commit (empty before the first)."""

    def __init__(self, sources: Mapping[str, Source] | None = None, served: Mapping[str, Served] | None = None) -> None:
        self.sources: dict[str, Source] = dict(sources or {})
        self.served: dict[str, Served] = dict(served or {})
        self.claims: dict[str, set[str]] = {}
        for source in self.sources.values():
            self._claim(source)
        #: The folders of every components file some node file points to, for the watcher.
        self.watch_dirs: frozenset[str] = _folders_of(self.sources)

    def node(self, path: str, plan: Plan | None = None) -> Node:
        """The last good node of the file at `path`: as `plan` puts it, else as committed."""
        source = plan.sources_put.get(path) if plan is not None else None
        source = source or self.sources[path]
        assert source.packed is not None
        return unpack(source.packed)

    def apply(self, plan: Plan) -> None:
        """Take in what `plan` changed, once its transaction is committed."""
        deps_moved = False
        for path, source in plan.sources_drop.items():
            self._unclaim(source)
            self.sources.pop(path, None)
            deps_moved = deps_moved or bool(source.deps)
        for path, source in plan.sources_put.items():
            old = self.sources.get(path)
            if old is not None:
                self._unclaim(old)
            self.sources[path] = source
            self._claim(source)
            deps_moved = deps_moved or bool(source.deps) or (old is not None and bool(old.deps))
        for node_id in plan.nodes_drop:
            self.served.pop(node_id, None)
        self.served.update(plan.nodes_put)
        if deps_moved:
            self.watch_dirs = _folders_of(self.sources)

    def _claim(self, source: Source) -> None:
        if source.node_id is not None and source.fingerprint is not None:
            self.claims.setdefault(source.node_id, set()).add(source.path)

    def _unclaim(self, source: Source) -> None:
        if source.node_id is not None:
            paths = self.claims.get(source.node_id)
            if paths is not None:
                paths.discard(source.path)
                if not paths:
                    del self.claims[source.node_id]


def _folders_of(sources: Mapping[str, Source]) -> frozenset[str]:
    return frozenset(os.path.dirname(dep) for source in sources.values() for dep in source.deps)
