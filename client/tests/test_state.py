"""The state, pure: a state evolved change by change equals one built from scratch.

No disk, no network: `build` and `State.evolve` on generated nodes. The registry-facing
behaviour (the same answers as the registry's) is tested against real processes in
test_lookups.py; here the incremental path is checked against the from-scratch one on many
random sequences of changes, including the ranking rules (priority, then node_id; only
active nodes) and shared classes.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from droq_registry_client import state as state_module
from droq_registry_client.state import Entry, State, build, entry_from

CLASSES = [f"C{i}" for i in range(6)]


@st.composite
def nodes(draw: st.DrawFn, node_id: str) -> Entry:
    classes = sorted(draw(st.sets(st.sampled_from(CLASSES), max_size=4)))
    version = draw(st.integers(0, 3))
    node = {
        "node_id": node_id,
        "name": node_id,
        "status": draw(st.sampled_from(["active", "active", "inactive", "deploying"])),
        "priority": draw(st.integers(-1, 2)),
        "supported_components": list(classes),
    }
    components = {cls: f"{node_id}.{cls.lower()}.v{version}" for cls in classes}
    return entry_from(node, components, f'"{node_id}-{version}-{node["priority"]}-{node["status"]}"')


ids = st.sampled_from(["a", "b", "c", "d"])
steps = st.lists(st.tuples(ids, st.one_of(st.none(), ids.flatmap(nodes))), max_size=12)


def picture(state: State) -> dict[str, Any]:
    """Everything a lookup can see, as plain values."""
    classes = {*state.index, *state.changed}
    return {
        "nodes": {n: (e.node, e.components_copy()) for n, e in state.nodes.items()},
        "index": {cls: [e.node_id for e in state.candidates(cls)] for cls in sorted(classes)
                  if state.candidates(cls)},
    }


def expected_index(state: State) -> dict[str, list[str]]:
    """The registry's rule, stated directly: active nodes declaring the class, by
    (-priority, node_id)."""
    out: dict[str, list[str]] = {}
    for entry in sorted(state.nodes.values(), key=lambda e: (-e.node["priority"], e.node_id)):
        if entry.node["status"] == "active":
            for cls in entry.classes:
                out.setdefault(cls, []).append(entry.node_id)
    return out


@pytest.mark.parametrize("overlay", ["merged at once", "kept", "merged when big"])
@settings(max_examples=200, deadline=None)
@given(changes=steps)
def test_evolving_change_by_change_equals_building_from_scratch(
    overlay: str, changes: list[tuple[str, Entry | None]]
) -> None:
    # The overlay of changed classes is only used on large indexes: make it apply here.
    small, share = {"merged at once": (10**9, 8), "kept": (0, 0), "merged when big": (0, 1)}[overlay]
    with patch.object(state_module, "SMALL_INDEX", small), patch.object(state_module, "OVERLAY_SHARE", share):
        final = check_evolution(changes)
    if overlay == "kept":
        assert final.index == {}  # the base never changed: every answer came through the overlay
    if overlay == "merged at once":
        assert final.changed == {}


def check_evolution(changes: list[tuple[str, Entry | None]]) -> State:
    state = build([], None, 0, None)
    current: dict[str, Entry] = {}
    for revision, (node_id, entry) in enumerate(changes, start=1):
        if entry is None:
            current.pop(node_id, None)
            state = state.evolve([], [node_id], None, revision, None)
        else:
            node_id = entry.node_id
            current[node_id] = entry
            state = state.evolve([entry], [], None, revision, None)
        scratch = build(current.values(), None, revision, None)
        assert picture(state) == picture(scratch)
        assert picture(state)["index"] == expected_index(state)
    return state


def test_a_node_holds_one_string_per_class_name() -> None:
    node = {"node_id": "n", "name": "n", "supported_components": ["Alpha", "Beta"]}
    components = {"Alpha": "pkg.alpha", "Beta": "pkg.beta"}
    entry = entry_from(node, components, None)
    keys = list(components)
    assert entry.classes is node["supported_components"]
    assert all(a is b for a, b in zip(entry.classes, keys))
    assert entry.components == components and entry.components is entry.components  # made once, kept


def test_shared_class_names_are_one_string_across_nodes() -> None:
    def make(node_id: str) -> Entry:
        name = b"Shared".decode()  # a new string object each time
        return entry_from({"node_id": node_id, "name": node_id, "supported_components": [name]},
                          {name: f"{node_id}.shared"}, None)

    a, b = make("a"), make("b")
    assert a.classes[0] is not b.classes[0]
    state = build([a, b], None, 1, None)
    assert a.classes[0] is b.classes[0]
    assert [e.node_id for e in state.index["Shared"]] == ["a", "b"]
    assert b.components == {"Shared": "b.shared"}


def test_supported_components_in_another_order_than_components_keep_their_own_order() -> None:
    node = {"node_id": "n", "name": "n", "supported_components": ["Beta", "Alpha"]}
    entry = entry_from(node, {"Alpha": "pkg.alpha", "Beta": "pkg.beta"}, None)
    assert list(entry.components) == ["Alpha", "Beta"]
    assert node["supported_components"] == ["Beta", "Alpha"]
