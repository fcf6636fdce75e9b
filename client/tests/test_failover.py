"""Passive failover between nodes, the token, and the state-change callback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Client, Events, Registry, node_doc, wait_until, write_node
from droq_registry_client import RegistryClient, RegistryUnavailable, StateChange
from test_lookups import FAST
from test_outage import _path


def three_candidates(reg: Registry) -> None:
    for node_id, priority in (("first", 3), ("second", 2), ("third", 1)):
        write_node(reg.folder, f"{node_id}.json", node_doc(node_id, {"Shared": f"{node_id}.shared"},
                                                           priority=priority, api_url=f"http://{node_id}:9000"))
    wait_until(lambda: reg.http.get("/api/v1/components/Shared/nodes").status_code == 200
               and reg.get("/api/v1/components/Shared/nodes")["total_nodes"] == 3)


def test_report_failure_answers_with_the_next_candidate_until_the_ttl_passes(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry(real=False)
    three_candidates(reg)
    client = make_client(reg.url, failure_ttl=1.0, **FAST)
    assert client.wait_synced(15)
    best = client.node_for("Shared")
    assert best == reg.get("/api/v1/components/Shared/node")
    order = client.nodes_for("Shared")

    client.report_failure("first")
    second = client.node_for("Shared")
    assert second == {"node": reg.get("/api/v1/nodes/second")["node"], "components": {"Shared": "second.shared"},
                      "module_path": "second.shared"}
    client.report_failure("second")
    assert client.node_for("Shared")["node"]["node_id"] == "third"
    assert client.nodes_for("Shared") == order  # the candidates themselves are the registry's

    # The marks expire: the best node is chosen again.
    wait_until(lambda: client.node_for("Shared")["node"]["node_id"] == "first", timeout=10)
    assert client.node_for("Shared") == best


def test_every_candidate_down_is_panic_mode_with_the_best_one(
    registry: Callable[..., Registry], make_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry(real=False)
    three_candidates(reg)
    write_node(reg.folder, "lonely.json", node_doc("lonely", {"Lonely": "lonely.mod"}))
    client = make_client(reg.url, **FAST)
    assert client.wait_synced(15)
    wait_until(lambda: _path(client, "Lonely") == "lonely.mod")
    best = client.node_for("Shared")
    with caplog.at_level("WARNING", logger="droq_registry_client"):
        for node_id in ("first", "second", "third", "lonely"):
            client.report_failure(node_id)
        for _ in range(3):
            assert client.node_for("Shared") == best
            assert client.node_for("Lonely")["node"]["node_id"] == "lonely"
            client.report_failure("lonely")  # executors report every failed call: still one warning
    panics = [r.getMessage() for r in caplog.records if "every node" in r.getMessage()]
    assert panics == [  # once per class, not on every lookup
        "every node for 'Shared' is reported unreachable: answering with the best one, 'first'",
        "every node for 'Lonely' is reported unreachable: answering with the best one, 'lonely'",
    ]


def test_the_token_is_sent_on_every_request_the_long_poll_included(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry(env={"REGISTRY_API_TOKEN": "s3cret-token"})
    client = make_client(reg.url, token="s3cret-token", **FAST)
    assert client.wait_synced(15)
    assert client.node_for("Multiply") == reg.get("/api/v1/components/Multiply/node")
    # A change is only seen through the long-poll, which the registry refuses without it.
    write_node(reg.folder, "tokened.json", node_doc("tokened", {"Tokened": "tokened.mod"}))
    wait_until(lambda: _path(client, "Tokened") == "tokened.mod")


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_says_so(
    registry: Callable[..., Registry], make_client: Callable[..., Client], token: str | None
) -> None:
    reg = registry(env={"REGISTRY_API_TOKEN": "s3cret-token"})
    client = make_client(reg.url, token=token, **FAST)
    with pytest.raises(RegistryUnavailable) as unavailable:
        client.node_for("Multiply")
    detail = ("the bearer token is not valid" if token else
              "this endpoint needs an Authorization: Bearer <token> header")
    assert unavailable.value.last_error == (
        f"GET {reg.url}/api/v1/nodes?status=all answered 401: {detail}; check the token")


def test_a_failing_callback_costs_only_itself(
    registry: Callable[..., Registry], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry()
    seen: list[str] = []

    def broken(change: StateChange) -> None:
        seen.append(change.kind)
        raise RuntimeError("the executor's callback is broken")

    with (caplog.at_level("ERROR", logger="droq_registry_client"),
          RegistryClient(reg.url, on_state_change=broken, **FAST) as client):
        assert client.wait_synced(15)
        write_node(reg.folder, "later.json", node_doc("later", {"Later": "later.mod"}))
        wait_until(lambda: _path(client, "Later") == "later.mod")
    assert seen == ["synced"]
    assert [r.getMessage() for r in caplog.records] == ["the on_state_change callback failed on synced"]


def test_events_carry_the_position_of_the_state(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    reg = registry()
    events = Events()
    client = make_client(reg.url, on_state_change=events, **FAST)
    assert client.wait_synced(15)
    wait_until(lambda: events.kinds() == ["synced"])
    (synced,) = events.changes
    assert (synced.kind, synced.url, synced.revision, synced.previous_url) == ("synced", reg.url, reg.revision(), None)
    assert synced.detail == f"synced with {reg.url} at revision {reg.revision()} (4 nodes)"
