"""The client's exceptions: "no such node" and "cannot know" are different answers.

`ComponentNotFound` and `NodeNotFound` say what the registry's state holds (or the last
state the client knows, if it is stale); `RegistryUnavailable` says that the client knows
nothing yet, because no replica has answered and no cached state was loaded.
"""

from __future__ import annotations


class RegistryError(Exception):
    """The base of every exception this package raises."""


class ComponentNotFound(RegistryError, LookupError):
    """The registry's state has no active node that declares `component_class`.

    `revision` is the revision of the state that said so and `stale` whether that state
    could not be confirmed current: the answer is only as old as that state, and the next
    lookup after the class appears finds it.
    """

    def __init__(self, component_class: str, revision: int, stale: bool) -> None:
        self.component_class = component_class
        self.revision = revision
        self.stale = stale
        where = "the last known state" if stale else "the registry's current state"
        super().__init__(
            f"no active node declares component class {component_class!r} in {where} (revision {revision})"
        )


class NodeNotFound(RegistryError, LookupError):
    """The registry's state has no node `node_id` (of any status)."""

    def __init__(self, node_id: str, revision: int, stale: bool) -> None:
        self.node_id = node_id
        self.revision = revision
        self.stale = stale
        where = "the last known state" if stale else "the registry's current state"
        super().__init__(f"no node {node_id!r} in {where} (revision {revision})")


class RegistryUnavailable(RegistryError):
    """No replica has been reached and nothing is known yet (no cached state either).

    `last_error` is why the last attempt failed, or None if none has finished yet.
    """

    def __init__(self, last_error: str | None) -> None:
        self.last_error = last_error
        why = f": {last_error}" if last_error else " yet"
        super().__init__(f"the registry has not been reached and no state is known{why}")
