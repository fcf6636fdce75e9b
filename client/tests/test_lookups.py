"""Lookups from memory give the registry's own answers, and follow every file change.

A real registry process serves real node files; each answer of the client is compared,
whole, with what the registry answers over HTTP at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Client, Registry, node_doc, wait_until, write_node
from droq_registry_client import ComponentNotFound, NodeNotFound, RegistryUnavailable

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


def server_view(reg: Registry, classes: list[str], node_ids: list[str]) -> dict[str, Any]:
    """Everything the client answers, as the registry answers it over HTTP."""
    view: dict[str, Any] = {"nodes": {s: reg.get(f"/api/v1/nodes?status={s}")["nodes"]
                                      for s in ("active", "inactive", "deploying", "all")}}
    for cls in classes:
        found = reg.http.get(f"/api/v1/components/{cls}/node")
        view[f"for:{cls}"] = found.json() if found.status_code == 200 else None
        many = reg.http.get(f"/api/v1/components/{cls}/nodes")
        view[f"all:{cls}"] = many.json()["nodes"] if many.status_code == 200 else None
    for node_id in node_ids:
        got = reg.http.get(f"/api/v1/nodes/{node_id}")
        view[f"node:{node_id}"] = got.json() if got.status_code == 200 else None
    return view


def client_view(client: Client, classes: list[str], node_ids: list[str]) -> dict[str, Any]:
    """The same, answered by the client from memory."""
    view: dict[str, Any] = {"nodes": {s: client.nodes(s) for s in ("active", "inactive", "deploying", "all")}}
    for cls in classes:
        try:
            view[f"for:{cls}"] = client.node_for(cls)
            view[f"all:{cls}"] = client.nodes_for(cls)
        except ComponentNotFound:
            view[f"for:{cls}"] = view[f"all:{cls}"] = None
    for node_id in node_ids:
        try:
            view[f"node:{node_id}"] = client.node(node_id)
        except NodeNotFound:
            view[f"node:{node_id}"] = None
    return view


def every_class(reg: Registry) -> list[str]:
    classes = {c for item in reg.get("/api/v1/nodes?status=all")["nodes"]
               for c in item["metadata"]["supported_components"]}
    return sorted(classes)


def test_every_answer_is_the_registrys_own_for_every_class_and_node(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    # Ranking cases on top of the real files: a higher priority, a tie broken by node_id,
    # a lower priority, and inactive and deploying nodes that must not be chosen.
    write_node(reg.folder, "fast-math.json", node_doc("fast-math", {"Multiply": "fast.mul", "Only": "x.only"},
                                                      priority=5))
    write_node(reg.folder, "b-tie.json", node_doc("b-tie", {"Tie": "b.tie"}, priority=1))
    write_node(reg.folder, "a-tie.json", node_doc("a-tie", {"Tie": "a.tie"}, priority=1))
    write_node(reg.folder, "low.json", node_doc("low", {"Tie": "low.tie", "Multiply": "low.mul"}, priority=-3))
    write_node(reg.folder, "off.json", node_doc("off", {"Multiply": "off.mul", "Off": "off.x"}, status="inactive",
                                                priority=99))
    write_node(reg.folder, "soon.json", node_doc("soon", {"Soon": "soon.x"}, status="deploying"))
    wait_until(lambda: len(reg.get("/api/v1/nodes?status=all")["nodes"]) == 10)

    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    classes = every_class(reg) + ["NoSuchComponent"]
    node_ids = [n["metadata"]["node_id"] for n in reg.get("/api/v1/nodes?status=all")["nodes"]] + ["no-such-node"]
    assert len(classes) > 300
    assert client_view(client, classes, node_ids) == server_view(reg, classes, node_ids)
    assert client.node_for("Multiply")["node"]["node_id"] == "fast-math"
    assert [n["node"]["node_id"] for n in client.nodes_for("Tie")] == ["a-tie", "b-tie", "low"]


def test_a_file_added_changed_and_removed_is_seen(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    classes, ids = ["Multiply", "Brand", "New"], ["dfx-math-executor-node", "brand-new"]

    def converged() -> bool:
        return client_view(client, classes, ids) == server_view(reg, classes, ids)

    write_node(reg.folder, "brand-new.json", node_doc("brand-new", {"Brand": "brand.v1", "Multiply": "brand.mul"},
                                                      priority=10))
    wait_until(lambda: _node_or_none(client, "brand-new") is not None)
    assert client.node("brand-new")["components"] == {"Brand": "brand.v1", "Multiply": "brand.mul"}
    assert client.node_for("Multiply")["node"]["node_id"] == "brand-new"
    assert converged()

    write_node(reg.folder, "brand-new.json", node_doc("brand-new", {"Brand": "brand.v2", "New": "brand.new"}))
    wait_until(lambda: client.node_for("Brand")["module_path"] == "brand.v2")
    assert client.node_for("Multiply")["node"]["node_id"] == "dfx-math-executor-node"
    assert converged()

    (reg.folder / "brand-new.json").unlink()
    wait_until(lambda: _missing(client, "Brand"))
    with pytest.raises(NodeNotFound):
        client.node("brand-new")
    assert converged()
    assert client.status().revision == reg.revision()


def test_a_class_not_found_then_added_is_found(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    with pytest.raises(ComponentNotFound) as missing:
        client.node_for("LateComponent")
    assert (missing.value.component_class, missing.value.revision, missing.value.stale) == (
        "LateComponent", reg.revision(), False)

    write_node(reg.folder, "late.json", node_doc("late", {"LateComponent": "late.mod"}))
    found = wait_until(lambda: not _missing(client, "LateComponent") and client.node_for("LateComponent"))
    assert found == reg.get("/api/v1/components/LateComponent/node")


def test_a_broken_edit_keeps_the_last_good_node(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    before = client.node_for("Multiply")
    revision = client.status().revision
    (reg.folder / "dfx-math-executor-node.json").write_text('{"node_id": "dfx-math-executor-node", "name": ')
    wait_until(lambda: client.status().revision > revision)  # the file's error is a change too
    assert client.node_for("Multiply") == before == reg.get("/api/v1/components/Multiply/node")


def test_nothing_known_and_no_replica_reachable_is_registry_unavailable(
    make_client: Callable[..., Client], tmp_path: Path
) -> None:
    from conftest import free_port

    client = make_client([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"], **FAST)
    with pytest.raises(RegistryUnavailable) as unavailable:
        client.node_for("Multiply")
    assert "ConnectError" in str(unavailable.value.last_error)
    assert client.wait_synced(0.2) is False
    status = client.status()
    assert (status.synced, status.revision, status.nodes, status.url) == (False, None, 0, None)


def test_status_after_the_first_listing_is_the_registrys_position(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    made = time.time()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    answer = reg.http.get("/api/v1/nodes?status=all")
    status = client.status()
    assert status.synced and not status.stale and not status.from_cache
    assert (status.url, status.revision, status.nodes, status.last_error) == (
        reg.url, int(answer.headers["x-registry-revision"]), 4, None)
    # Absent before issue 12, the registry's values after it: the client only repeats them.
    assert status.epoch == answer.headers.get("x-registry-epoch")
    assert status.content_hash == answer.headers.get("x-registry-content-hash")
    assert status.age_seconds is not None and 0 <= status.age_seconds <= time.time() - made


def _missing(client: Client, cls: str) -> bool:
    try:
        client.node_for(cls)
    except ComponentNotFound:
        return True
    return False


def _node_or_none(client: Client, node_id: str) -> Any:
    try:
        return client.node(node_id)
    except NodeNotFound:
        return None


def test_after_close_lookups_answer_from_the_last_state_marked_stale(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    before = client.node_for("Multiply")
    client.close()
    client.close()  # idempotent
    assert client.node_for("Multiply") == before
    status = client.status()
    assert (status.stale, status.synced) == (True, False)
    with pytest.raises(ComponentNotFound) as missing:
        client.node_for("NoSuchComponent")
    assert missing.value.stale is True
