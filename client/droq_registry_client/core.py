"""What both clients share: the published state, lookups from it, passive failover, status.

The follower (one thread or task) is the only writer of `Core.state`; it replaces the
whole immutable `State` with one assignment. Lookups read `self.state` once and answer
from that object alone: no lock, no network I/O, a few dictionary hits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import ComponentNotFound, NodeNotFound, RegistryUnavailable
from .model import Options, StateChange, StateChangeKind, Status
from .state import JSON, Entry, State

LOG = logging.getLogger("droq_registry_client")

NODE_STATUSES = ("active", "inactive", "deploying", "all")


class Core:
    """The state and everything answered from it."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.state: State | None = None
        #: node_id -> time.monotonic() until which it is reported unreachable. Replaced
        #: whole under `_down_lock`; lookups only read it.
        self.down: dict[str, float] = {}
        self._down_lock = threading.Lock()
        self._panic_logged: set[str] = set()
        #: Set while the state is complete and current; the follower sets and clears it.
        self.synced = threading.Event()
        #: Set once lookups can be answered or refused for good: a state is known, or
        #: every replica failed once.
        self.settled = threading.Event()
        self.stale = False
        self.from_cache = False
        self.url: str | None = None
        self.confirmed_at: float | None = None  # time.time() of the last confirming answer
        self.last_error: str | None = None
        #: Called after `synced`/`settled` change (the async client mirrors them in its loop).
        self.on_flags: Callable[[], None] | None = None

    # --- lookups (the hot path) ------------------------------------------------------

    def node_for(self, component_class: str) -> JSON:
        """The answer of `GET /api/v1/components/{class}/node`, from memory."""
        state = self.state
        if state is None:
            raise RegistryUnavailable(self.last_error)
        candidates = state.candidates(component_class)
        if not candidates:
            raise ComponentNotFound(component_class, state.revision, self.stale)
        best = candidates[0] if not self.down else self._healthy(component_class, candidates)
        components = best._data
        if type(components) is not dict:
            components = best.components
        return {"node": best.node, "components": components, "module_path": components[component_class]}

    def nodes_for(self, component_class: str) -> list[JSON]:
        """The `nodes` of `GET /api/v1/components/{class}/nodes`: every candidate, best first."""
        state = self._known()
        candidates = state.candidates(component_class)
        if not candidates:
            raise ComponentNotFound(component_class, state.revision, self.stale)
        return [{"node": e.node, "module_path": e.components[component_class]} for e in candidates]

    def node(self, node_id: str) -> JSON:
        """The answer of `GET /api/v1/nodes/{node_id}` (any status)."""
        state = self._known()
        entry = state.nodes.get(node_id)
        if entry is None:
            raise NodeNotFound(node_id, state.revision, self.stale)
        return {"node": entry.node, "components": entry.components}

    def nodes(self, status: str = "active") -> list[JSON]:
        """The `nodes` of `GET /api/v1/nodes?status=...`, by node_id."""
        if status not in NODE_STATUSES:
            raise ValueError(f"status: one of {', '.join(NODE_STATUSES)}, got {status!r}")
        state = self._known()
        return [
            {"metadata": e.node, "components_count": len(e.classes)}
            for _, e in sorted(state.nodes.items())
            if status == "all" or e.status == status
        ]

    def _known(self) -> State:
        state = self.state
        if state is None:
            raise RegistryUnavailable(self.last_error)
        return state

    # --- passive failover ------------------------------------------------------------

    def report_failure(self, node_id: str) -> None:
        """Route around `node_id` for `failure_ttl` seconds (the executor could not reach it)."""
        ttl = self.options.failure_ttl
        if ttl <= 0:
            return
        with self._down_lock:
            now = time.monotonic()
            down = {n: until for n, until in self.down.items() if until > now}
            fresh = node_id not in down
            down[node_id] = now + ttl
            self.down = down
            if fresh:  # another node down: panic mode may begin for other classes, say so once more
                self._panic_logged = set()
        if fresh:
            LOG.warning("node %r reported unreachable: answering with other candidates for %g s", node_id, ttl)

    def _healthy(self, component_class: str, candidates: tuple[Entry, ...]) -> Entry:
        down = self.down
        now = time.monotonic()
        for entry in candidates:
            until = down.get(entry.node_id)
            if until is None or until <= now:
                return entry
        # Panic mode (as Envoy's): every candidate is reported down, and a node that may be
        # reachable again beats answering "no node".
        if component_class not in self._panic_logged:
            self._panic_logged.add(component_class)
            LOG.warning(
                "every node for %r is reported unreachable: answering with the best one, %r",
                component_class,
                candidates[0].node_id,
            )
        return candidates[0]

    # --- status and state changes ------------------------------------------------------

    def status(self) -> Status:
        state = self.state
        confirmed = self.confirmed_at
        return Status(
            synced=self.synced.is_set(),
            stale=self.stale,
            url=self.url,
            epoch=None if state is None else state.epoch,
            revision=None if state is None else state.revision,
            content_hash=None if state is None else state.content_hash,
            age_seconds=None if confirmed is None else max(0.0, time.time() - confirmed),
            last_error=self.last_error,
            nodes=0 if state is None else len(state.nodes),
            from_cache=self.from_cache,
        )

    def emit(self, kind: StateChangeKind, detail: str, previous_url: str | None = None) -> None:
        """Log one state change and pass it to the callback (whose errors stay its own)."""
        state = self.state
        change = StateChange(
            kind=kind,
            url=self.url,
            revision=0 if state is None else state.revision,
            epoch=None if state is None else state.epoch,
            detail=detail,
            previous_url=previous_url,
        )
        level = logging.WARNING if kind == "stale" else logging.INFO
        LOG.log(level, "%s: %s", kind, detail)
        callback = self.options.on_state_change
        if callback is not None:
            try:
                callback(change)
            except Exception:
                LOG.exception("the on_state_change callback failed on %s", kind)

    def set_flags(self, *, synced: bool | None = None, settled: bool = False) -> None:
        if synced is True:
            self.synced.set()
        elif synced is False:
            self.synced.clear()
        if settled:
            self.settled.set()
        if self.on_flags is not None:
            self.on_flags()
