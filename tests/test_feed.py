"""The revision, ETags and conditional GETs, the change log, long-polls and the event stream.

Everything runs through the real path: node files in tmp_path, the real watcher, real SQLite,
and HTTP through Starlette's TestClient or `droq-registry serve` processes (httpx). Waiting is
bounded polling of the HTTP API; the revisions a test expects are counted from the revision
the service reported before the test changed anything.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry.changes import KEEPALIVE_SECONDS
from support.events import AsyncEvents, Events
from support.files import node_doc, write_json
from support.histories import ahead, expired, position
from support.http import make_settings, open_client, reconcile_now, sources
from support.http import revision as current_revision
from support.polling import wait_until
from support.server import ServerProcess, server_env

REVISION = "x-registry-revision"
#: The most a long-poll may answer after the change it waited for became visible.
LONG_POLL_SLACK = 0.2
SUBSCRIBERS = 200
#: How long an idle stream may wait for its keep-alive comment.
KEEPALIVE_DEADLINE = 2 * KEEPALIVE_SECONDS

Client = TestClient | httpx.Client


# --- helpers ---------------------------------------------------------------------------


def revision_of(response: httpx.Response) -> int:
    return int(response.headers[REVISION])


def utc_now_ms() -> datetime:
    """Now, cut to the millisecond the service writes into "at"."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def record(revision: int, kind: str, node_id: str | None, source: str | None) -> dict[str, Any]:
    return {"revision": revision, "kind": kind, "node_id": node_id, "source": source}


def without_at(changes: list[dict[str, Any]], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The records without "at", once each "at" is checked: ISO-8601 UTC within [since, until]."""
    records = []
    for change in changes:
        rest = dict(change)
        at = rest.pop("at")
        assert isinstance(at, str) and at.endswith("Z"), at
        moment = datetime.fromisoformat(at)
        assert moment.utcoffset() == timedelta(0), at
        assert since <= moment <= until, (at, since, until)
        records.append(rest)
    return records


def changes_after(client: Client, since: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/changes?since={since}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["revision"] == revision_of(response)
    return body["changes"]  # type: ignore[no-any-return]


def node_version(client: Client, node_id: str) -> str | None:
    response = client.get(f"/api/v1/nodes/{node_id}")
    return response.json()["node"].get("version") if response.status_code == 200 else None


def found(client: Client, node_id: str) -> bool:
    return client.get(f"/api/v1/nodes/{node_id}").status_code == 200


def start_server(
    server: Callable[..., ServerProcess], assets: Path, tmp_path: Path, name: str = "server", **env: str
) -> ServerProcess:
    """A `droq-registry serve` process on `assets` with a database of its own."""
    return server(server_env(assets, tmp_path / f"{name}.db", **env), tmp_path / f"{name}.log")


def declared_components(assets: Path) -> dict[str, list[str]]:
    """component class -> ids of the node files in `assets` that declare it (from the files)."""
    declared: dict[str, list[str]] = {}
    for path in sorted(assets.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        for component_class in doc["components"]:
            declared.setdefault(component_class, []).append(doc["node_id"])
    return declared


def change_event(event: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
    """(revision, event type, the record without "at") of one event; its id, if any, is
    `<epoch>:<revision>`."""
    data = orjson.loads(event["data"])
    data.pop("at")
    if "id" in event:
        assert re.fullmatch(rf"[A-Za-z0-9_-]{{1,32}}:{data['revision']}", event["id"]), event
    return data["revision"], event["event"], data


def ids_closing_each_revision(events: list[dict[str, str]]) -> list[str | None]:
    """The id of the last event of each revision (what a reconnect would resume from)."""
    revisions = [orjson.loads(e["data"])["revision"] for e in events]
    last = [i + 1 == len(events) or revisions[i + 1] != revisions[i] for i in range(len(events))]
    return [event.get("id") for event, closes in zip(events, last) if closes]


# --- the revision ----------------------------------------------------------------------


def test_add_edit_and_delete_each_raise_the_revision_by_one_with_one_record(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(assets, reload=True)
    start = current_revision(client)
    began = utc_now_ms()

    write_json(assets / "alpha.json", node_doc("alpha"))
    wait_until(lambda: client.get("/api/v1/nodes/alpha").status_code == 200)
    assert current_revision(client) == start + 1

    write_json(assets / "alpha.json", node_doc("alpha", version="2"))
    wait_until(lambda: node_version(client, "alpha") == "2")
    assert current_revision(client) == start + 2

    (assets / "alpha.json").unlink()
    wait_until(lambda: client.get("/api/v1/nodes/alpha").status_code == 404)
    assert current_revision(client) == start + 3

    assert without_at(changes_after(client, start), began, utc_now_ms()) == [
        record(start + 1, "added", "alpha", "alpha.json"),
        record(start + 2, "updated", "alpha", "alpha.json"),
        record(start + 3, "removed", "alpha", "alpha.json"),
    ]
    assert without_at(changes_after(client, start + 2), began, utc_now_ms()) == [
        record(start + 3, "removed", "alpha", "alpha.json"),
    ]


def test_errors_conflicts_recoveries_renames_and_reformatting_are_logged_by_kind(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "beta.json", node_doc("beta"))
    client = client_for(assets, reload=True)
    start = current_revision(client)
    began = utc_now_ms()

    (assets / "beta.json").write_bytes(b"{not json")
    wait_until(lambda: sources(client)["beta.json"]["state"] == "error")
    write_json(assets / "beta.json", node_doc("beta", version="2"))
    wait_until(lambda: node_version(client, "beta") == "2")
    write_json(assets / "gamma.json", node_doc("beta", version="3"))
    wait_until(lambda: sources(client).get("gamma.json", {}).get("state") == "conflict")
    (assets / "beta.json").unlink()
    wait_until(lambda: node_version(client, "beta") == "3")
    os.rename(assets / "gamma.json", assets / "delta.json")
    wait_until(lambda: list(sources(client)) == ["delta.json"])
    hash_before = sources(client)["delta.json"]["content_hash"]
    (assets / "delta.json").write_bytes(orjson.dumps(node_doc("beta", version="3")))  # no indent
    wait_until(lambda: sources(client)["delta.json"]["content_hash"] != hash_before)

    assert without_at(changes_after(client, start), began, utc_now_ms()) == [
        record(start + 1, "error", "beta", "beta.json"),
        record(start + 2, "updated", "beta", "beta.json"),
        record(start + 2, "recovered", "beta", "beta.json"),
        record(start + 3, "conflict", "beta", "gamma.json"),
        record(start + 4, "updated", "beta", "gamma.json"),
        record(start + 4, "source", "beta", "beta.json"),
        record(start + 4, "recovered", "beta", "gamma.json"),
        record(start + 5, "source", "beta", "delta.json"),
        record(start + 5, "source", "beta", "gamma.json"),
        record(start + 6, "source", "beta", "delta.json"),
    ]
    assert current_revision(client) == start + 6


def _touch(assets: Path) -> None:
    later = time.time() + 5
    os.utime(assets / "steady.json", (later, later))


def _rewrite_identical_bytes(assets: Path) -> None:
    path = assets / "steady.json"
    path.write_bytes(path.read_bytes())


def _write_non_json_file(assets: Path) -> None:
    write_json(assets / "notes.txt", node_doc("ignored-txt"))


def _create_dot_file(assets: Path) -> None:
    write_json(assets / ".hidden.json", node_doc("ignored-hidden"))


NO_OPS = {
    "touch": _touch,
    "rewrite-identical-bytes": _rewrite_identical_bytes,
    "non-json-file": _write_non_json_file,
    "dot-file": _create_dot_file,
}


@pytest.mark.parametrize("no_op", NO_OPS.values(), ids=NO_OPS.keys())
def test_file_events_that_change_nothing_leave_the_revision_alone(
    no_op: Callable[[Path], None], assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "steady.json", node_doc("steady"))
    client = client_for(assets, reload=True)
    start = current_revision(client)
    nodes_before = client.get("/api/v1/nodes?status=all").content
    began = utc_now_ms()

    no_op(assets)
    # The watcher handles events in order: once a later file shows, the no-op has been seen.
    write_json(assets / "zz-marker.json", node_doc("zz-marker"))
    wait_until(lambda: client.get("/api/v1/nodes/zz-marker").status_code == 200)

    assert current_revision(client) == start + 1
    assert without_at(changes_after(client, start), began, utc_now_ms()) == [
        record(start + 1, "added", "zz-marker", "zz-marker.json"),
    ]
    marker = client.get("/api/v1/nodes/zz-marker").json()["node"]
    assert client.get("/api/v1/nodes?status=all").json()["nodes"] == [
        *orjson.loads(nodes_before)["nodes"],
        {"metadata": marker, "components_count": 1},
    ]


def test_restart_on_the_same_database_keeps_the_revision_log_and_etags(real_assets: Path) -> None:
    settings = make_settings(real_assets, reload=True)
    paths = ["/api/v1/nodes", "/api/v1/nodes?status=all", "/api/v1/changes?since=0", "/api/v1/sources"]
    first = open_client(settings)
    try:
        revision = current_revision(first)
        before = {path: first.get(path) for path in paths}
    finally:
        first.__exit__(None, None, None)

    second = open_client(settings)
    try:
        assert current_revision(second) == revision
        for path in paths:
            again = second.get(path)
            assert (again.status_code, again.content, again.headers["etag"], revision_of(again)) == (
                200,
                before[path].content,
                before[path].headers["etag"],
                revision,
            )
        # The restarted watcher's first scan is done once a later file shows: it changed nothing.
        began = utc_now_ms()
        write_json(real_assets / "zz-marker.json", node_doc("zz-marker"))
        wait_until(lambda: second.get("/api/v1/nodes/zz-marker").status_code == 200)
        assert without_at(changes_after(second, revision), began, utc_now_ms()) == [
            record(revision + 1, "added", "zz-marker", "zz-marker.json"),
        ]
    finally:
        second.__exit__(None, None, None)


def test_revision_and_change_records_are_committed_to_sqlite(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(assets, reload=True)
    start = current_revision(client)
    write_json(assets / "alpha.json", node_doc("alpha"))
    wait_until(lambda: client.get("/api/v1/nodes/alpha").status_code == 200)
    (assets / "alpha.json").write_bytes(b"[")
    wait_until(lambda: current_revision(client) == start + 2)

    db = make_settings(assets).db_path
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        stored_revision = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        rows = conn.execute("SELECT revision, kind, node_id, source, at FROM changes ORDER BY seq").fetchall()
    assert int(stored_revision) == current_revision(client) == start + 2
    assert [dict(zip(("revision", "kind", "node_id", "source", "at"), row)) for row in rows] == (
        changes_after(client, 0)
    )
    assert [(row[0], row[1]) for row in rows] == [(start + 1, "added"), (start + 2, "error")]


# --- ETags and conditional GETs ------------------------------------------------------------

ENDPOINTS = {
    "nodes": "/api/v1/nodes",
    "nodes-all": "/api/v1/nodes?status=all",
    "node": "/api/v1/nodes/{node_id}",
    "component-node": "/api/v1/components/{component}/node",
    "component-nodes": "/api/v1/components/{component}/nodes",
    "sources": "/api/v1/sources",
    "changes": "/api/v1/changes?since=0",
}


@pytest.mark.parametrize("template", ENDPOINTS.values(), ids=ENDPOINTS.keys())
def test_matching_if_none_match_answers_304_without_a_body(
    template: str, real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    # A class two real nodes declare, so the list endpoint has more than one entry.
    shared = {c: ids for c, ids in declared_components(real_assets).items() if len(ids) > 1}
    component, declarers = min(shared.items())
    path = template.format(node_id=declarers[0], component=component)
    client = client_for(real_assets)
    revision = current_revision(client)

    full = client.get(path)
    assert full.status_code == 200, full.text
    etag = full.headers["etag"]
    assert re.fullmatch(r'"[^"\s]+"', etag), etag  # strong: no W/ prefix
    assert (full.headers["cache-control"], revision_of(full)) == ("no-cache", revision)
    assert client.get(path).headers["etag"] == etag

    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', f'W/"stale",W/{etag}', "*"):
        cached = client.get(path, headers={"If-None-Match": if_none_match})
        assert (cached.status_code, cached.content) == (304, b""), if_none_match
        assert (cached.headers["etag"], cached.headers["cache-control"], revision_of(cached)) == (
            etag,
            "no-cache",
            revision,
        )

    for if_none_match in ('"stale"', 'W/"stale"', f'"stale", W/"{etag[1:-2]}"'):
        fresh = client.get(path, headers={"If-None-Match": if_none_match})
        assert (fresh.status_code, fresh.content, fresh.headers["etag"]) == (200, full.content, etag)


def test_etag_changes_with_the_content_and_stays_when_only_the_revision_moves(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a", {"Shared": "a.shared", "OnlyA": "a.only"}))
    write_json(assets / "b.json", node_doc("b", {"Shared": "b.shared", "OnlyB": "b.only"}))
    original_b = (assets / "b.json").read_bytes()
    client = client_for(assets, reload=True)
    start = current_revision(client)
    paths = [
        "/api/v1/nodes",
        "/api/v1/nodes?status=all",
        "/api/v1/nodes/a",
        "/api/v1/nodes/b",
        "/api/v1/components/Shared/node",
        "/api/v1/components/Shared/nodes",
        "/api/v1/components/OnlyA/node",
        "/api/v1/components/OnlyA/nodes",
        "/api/v1/components/OnlyB/node",
        "/api/v1/components/OnlyB/nodes",
        "/api/v1/sources",
        "/api/v1/changes?since=0",
    ]

    def answers() -> dict[str, tuple[str, bytes]]:
        got = {path: client.get(path) for path in paths}
        assert {path: r.status_code for path, r in got.items()} == {path: 200 for path in paths}
        return {path: (r.headers["etag"], r.content) for path, r in got.items()}

    first = answers()
    write_json(assets / "b.json", node_doc("b", {"Shared": "b.shared", "OnlyB": "b.only"}, version="2"))
    wait_until(lambda: node_version(client, "b") == "2")
    second = answers()

    assert {path for path in paths if second[path][0] != first[path][0]} == {
        "/api/v1/nodes",
        "/api/v1/nodes?status=all",
        "/api/v1/nodes/b",
        "/api/v1/components/Shared/nodes",
        "/api/v1/components/OnlyB/node",
        "/api/v1/components/OnlyB/nodes",
        "/api/v1/sources",
        "/api/v1/changes?since=0",
    }
    for path in paths:  # the ETag moves exactly when the bytes do
        assert (second[path][0] == first[path][0]) == (second[path][1] == first[path][1]), path
        answer = client.get(path, headers={"If-None-Match": first[path][0]})
        assert answer.status_code == (304 if second[path] == first[path] else 200), path

    (assets / "b.json").write_bytes(original_b)
    wait_until(lambda: node_version(client, "b") is None)
    third = answers()
    assert current_revision(client) == start + 2
    # Same content as at the start, two revisions later: the same ETags. Sources carry the
    # time of the change and the log grew, so those two moved on.
    for path in paths:
        if path in ("/api/v1/sources", "/api/v1/changes?since=0"):
            assert third[path][0] not in (first[path][0], second[path][0]), path
        else:
            assert third[path] == first[path], path


def test_two_servers_on_the_same_folder_give_identical_etags(
    real_assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    write_json(
        real_assets / "zz-inactive.json",
        node_doc("zz-inactive", {"InactiveOnly": "pkg.inactive"}, status="inactive", priority=3),
    )
    one = start_server(server, real_assets, tmp_path, "one", RELOAD="false")
    two = start_server(server, real_assets, tmp_path, "two", RELOAD="false")

    statuses = ("active", "inactive", "deploying", "all")
    paths = ["/api/v1/nodes", *(f"/api/v1/nodes?status={status}" for status in statuses)]
    node_ids = sorted(orjson.loads(p.read_bytes())["node_id"] for p in real_assets.glob("*.json"))
    listed = one.get("/api/v1/nodes?status=all").json()["nodes"]
    assert [n["metadata"]["node_id"] for n in listed] == node_ids
    paths += [f"/api/v1/nodes/{node_id}" for node_id in node_ids]
    for component in sorted(declared_components(real_assets)):
        paths += [f"/api/v1/components/{component}/node", f"/api/v1/components/{component}/nodes"]

    for path in paths:
        a, b = one.get(path), two.get(path)
        assert (a.status_code, a.content, a.headers.get("etag")) == (
            b.status_code,
            b.content,
            b.headers.get("etag"),
        ), path
        if a.status_code == 200:
            assert b.headers["etag"]
            assert two.get(path, headers={"If-None-Match": a.headers["etag"]}).status_code == 304
        else:  # the inactive node's own class: no active node answers for it
            assert (path.rsplit("/", 1)[0], a.status_code) == ("/api/v1/components/InactiveOnly", 404)


def test_every_api_answer_carries_the_revision(real_assets: Path, client_for: Callable[..., TestClient]) -> None:
    client = client_for(real_assets)
    revision = current_revision(client)
    node_id = min(orjson.loads(p.read_bytes())["node_id"] for p in real_assets.glob("*.json"))
    answers = {
        ("GET", "/"): client.get("/"),
        ("GET", "/health"): client.get("/health"),
        ("GET", "/ready"): client.get("/ready"),
        ("GET", f"/api/v1/nodes/{node_id}"): client.get(f"/api/v1/nodes/{node_id}"),
        ("GET", "/api/v1/nodes/no-such-node"): client.get("/api/v1/nodes/no-such-node"),
        ("GET", "/api/v1/components/NoSuchClass/node"): client.get("/api/v1/components/NoSuchClass/node"),
        ("GET", "/api/v1/nodes?status=bogus"): client.get("/api/v1/nodes?status=bogus"),
        ("GET", "/api/v1/no-such-path"): client.get("/api/v1/no-such-path"),
        ("POST", "/api/v1/nodes"): client.post("/api/v1/nodes"),
    }
    assert {key: (r.status_code, revision_of(r)) for key, r in answers.items()} == {
        ("GET", "/"): (200, revision),
        ("GET", "/health"): (200, revision),
        ("GET", "/ready"): (200, revision),
        ("GET", f"/api/v1/nodes/{node_id}"): (200, revision),
        ("GET", "/api/v1/nodes/no-such-node"): (404, revision),
        ("GET", "/api/v1/components/NoSuchClass/node"): (404, revision),
        ("GET", "/api/v1/nodes?status=bogus"): (400, revision),
        ("GET", "/api/v1/no-such-path"): (404, revision),
        ("POST", "/api/v1/nodes"): (405, revision),
    }


# --- /api/v1/changes ------------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, str | None]]:
    since_message = "since must be a revision number (a whole number, 0 or more), got '{}'"
    wait_message = "wait must be a number of seconds from 0 to 60"
    cases: list[tuple[str, str | None]] = [
        (f"since={value}", since_message.format(value)) for value in ("abc", "-1", "1.5", "0x1")
    ]
    cases += [(f"since=0&wait={value}", wait_message) for value in ("61", "-1", "abc", "nan", "inf")]
    epoch_message = "epoch must be an epoch (1 to 32 of A-Z a-z 0-9 _ -), got '{}'"
    cases += [(f"since=0&epoch={value}", epoch_message.format(value)) for value in ("", "a.b", "x" * 33, "a:b")]
    return cases


@pytest.mark.parametrize("query, detail", _bad_requests())
def test_changes_answers_400_for_a_bad_since_epoch_or_wait(
    query: str, detail: str, real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets)
    revision = current_revision(client)
    response = client.get(f"/api/v1/changes?{query}")
    assert (response.status_code, response.json(), revision_of(response)) == (
        400,
        {"detail": detail},
        revision,
    )


@pytest.mark.parametrize("value", ["abc", "-1", ":5", "abc:", "a.b:5", "x" * 33 + ":1", "a:b:1", "1.5"])
def test_events_answers_400_for_a_bad_last_event_id(
    value: str, real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets)
    revision = current_revision(client)
    response = client.get("/api/v1/events", headers={"Last-Event-ID": value})
    detail = f"Last-Event-ID must be <epoch>:<revision> or a revision number, got '{value}'"
    assert (response.status_code, response.json(), revision_of(response)) == (
        400,
        {"detail": detail},
        revision,
    )


def test_change_log_keeps_at_most_n_records_dropping_whole_revisions_and_410s_older_since(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(assets, reload=True, changes_keep=3)
    start = current_revision(client)
    began = utc_now_ms()

    write_json(assets / "a.json", node_doc("a"))  # start+1: 1 record
    wait_until(lambda: current_revision(client) == start + 1)
    (assets / "a.json").write_bytes(b"{")  # start+2: 1 record
    wait_until(lambda: current_revision(client) == start + 2)
    write_json(assets / "a.json", node_doc("a", version="2"))  # start+3: 2 records
    wait_until(lambda: current_revision(client) == start + 3)
    # 4 records, keep 3: start+1 goes.
    assert without_at(changes_after(client, start + 1), began, utc_now_ms()) == [
        record(start + 2, "error", "a", "a.json"),
        record(start + 3, "updated", "a", "a.json"),
        record(start + 3, "recovered", "a", "a.json"),
    ]
    write_json(assets / "b.json", node_doc("b"))  # start+4: 1 record
    wait_until(lambda: current_revision(client) == start + 4)
    write_json(assets / "c.json", node_doc("c"))  # start+5: 1 record
    wait_until(lambda: current_revision(client) == start + 5)

    # Keeping 3 records would split start+3: the whole revision goes, 2 records stay.
    floor = start + 3
    kept = [record(start + 4, "added", "b", "b.json"), record(start + 5, "added", "c", "c.json")]
    assert without_at(changes_after(client, floor), began, utc_now_ms()) == kept
    for since in (start, floor - 1):
        gone = client.get(f"/api/v1/changes?since={since}")
        assert (gone.status_code, gone.json(), revision_of(gone)) == (
            410,
            expired(since, floor, position(gone)),
            start + 5,
        )
    assert client.get(f"/api/v1/changes?since={floor - 1}&wait=5").status_code == 410

    db = make_settings(assets).db_path
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT revision, kind, node_id, source FROM changes ORDER BY seq").fetchall()
    assert [dict(zip(("revision", "kind", "node_id", "source"), row)) for row in rows] == kept


def test_long_poll_times_out_with_an_empty_list_after_wait(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets)
    revision = current_revision(client)
    began = time.monotonic()
    response = client.get(f"/api/v1/changes?since={revision}&wait=0.5")
    elapsed = time.monotonic() - began
    assert (response.status_code, response.json(), revision_of(response)) == (
        200,
        {"revision": revision, "changes": []},
        revision,
    )
    assert 0.5 <= elapsed < 2.0, elapsed


def test_long_poll_answers_at_once_when_changes_are_already_there(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets)
    revision = current_revision(client)
    began = time.monotonic()
    response = client.get(f"/api/v1/changes?since={revision - 1}&wait=60")
    assert time.monotonic() - began < 5
    assert response.status_code == 200
    assert response.json() == {"revision": revision, "changes": changes_after(client, revision - 1)}
    files = sorted(real_assets.glob("*.json"))
    assert [c["kind"] for c in response.json()["changes"]] == ["added"] * len(files)


def test_long_poll_answers_within_200ms_of_the_change_becoming_visible(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path)
    start = current_revision(srv.http)
    times: dict[str, float] = {}
    answers: list[httpx.Response] = []
    failures: list[BaseException] = []
    connected = threading.Barrier(3, timeout=10)

    def long_poll() -> None:
        try:
            with httpx.Client(base_url=srv.url, timeout=30) as http:
                http.get("/ready")  # the request below goes out on an open connection
                connected.wait()
                answers.append(http.get(f"/api/v1/changes?since={start}&wait=20"))
                times["answered"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    def watch_for_the_change() -> None:
        try:
            with httpx.Client(base_url=srv.url, timeout=10) as http:
                http.get("/ready")
                connected.wait()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    sent = time.monotonic()
                    if http.get("/api/v1/nodes/alpha").status_code == 200:
                        times["visible"] = sent
                        return
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=long_poll), threading.Thread(target=watch_for_the_change)]
    for thread in threads:
        thread.start()
    connected.wait()
    began = utc_now_ms()
    write_json(assets / "alpha.json", node_doc("alpha"))
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert [r.status_code for r in answers] == [200]
    body = answers[0].json()
    assert body["revision"] == revision_of(answers[0]) == start + 1
    assert without_at(body["changes"], began, utc_now_ms()) == [
        record(start + 1, "added", "alpha", "alpha.json"),
    ]
    assert times["answered"] - times["visible"] <= LONG_POLL_SLACK, times


# --- /api/v1/events -------------------------------------------------------------------------


def _steps(assets: Path, http: httpx.Client) -> list[Callable[[], None]]:
    """Changes, each waited for through the API, so each is one revision of its own."""

    def do(change: Callable[[], Any], visible: Callable[[], bool]) -> Callable[[], None]:
        def step() -> None:
            change()
            wait_until(visible)

        return step

    def state(path: str) -> str | None:
        return sources(http).get(path, {}).get("state")  # type: ignore[no-any-return]

    a, b = assets / "a.json", assets / "b.json"
    return [
        do(lambda: write_json(a, node_doc("a")), lambda: found(http, "a")),
        do(lambda: write_json(b, node_doc("b")), lambda: found(http, "b")),
        do(lambda: write_json(a, node_doc("a", version="2")), lambda: node_version(http, "a") == "2"),
        do(lambda: b.write_bytes(b"{oops"), lambda: state("b.json") == "error"),
        do(lambda: write_json(b, node_doc("b", version="2")), lambda: node_version(http, "b") == "2"),
        do(lambda: a.unlink(), lambda: not found(http, "a")),
    ]


def _expected_events(start: int) -> list[tuple[int, str, dict[str, Any]]]:
    """What `_steps` log, as (revision, event type, record without "at")."""
    records = [
        record(start + 1, "added", "a", "a.json"),
        record(start + 2, "added", "b", "b.json"),
        record(start + 3, "updated", "a", "a.json"),
        record(start + 4, "error", "b", "b.json"),
        record(start + 5, "updated", "b", "b.json"),
        record(start + 5, "recovered", "b", "b.json"),
        record(start + 6, "removed", "a", "a.json"),
    ]
    return [(r["revision"], "change", r) for r in records]


def test_event_stream_delivers_every_change_in_order(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        start = current_revision(http)
        with http.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert (revision_of(response), response.headers["cache-control"]) == (start, "no-cache")
            for step in _steps(assets, http):
                step()
            events = Events(response)
            received = [events.next() for _ in _expected_events(start)]
        assert [change_event(e) for e in received] == _expected_events(start)
        assert ids_closing_each_revision(received) == [f"{events.epoch}:{start + n}" for n in range(1, 7)]
        # The events carry exactly the records of the change log.
        assert [orjson.loads(e["data"]) for e in received] == changes_after(http, start)


def test_event_stream_resumes_after_a_reconnect_with_last_event_id(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        start = current_revision(http)
        steps = _steps(assets, http)
        expected = _expected_events(start)
        with http.stream("GET", "/api/v1/events") as response:
            for step in steps[:2]:
                step()
            events = Events(response)
            before = [change_event(events.next()) for _ in range(2)]
        assert before == expected[:2]
        last_id = events.last_id
        assert last_id == f"{events.epoch}:{start + 2}"

        for step in steps[2:5]:  # missed while disconnected
            step()
        with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": last_id}) as response:
            assert (response.status_code, revision_of(response)) == (200, start + 5)
            events = Events(response)
            missed = [change_event(events.next()) for _ in range(4)]
            steps[5]()
            live = change_event(events.next())
        assert missed == expected[2:6]
        assert live == expected[6]  # no duplicate of what came before


def test_event_stream_sends_relist_when_last_event_id_is_no_longer_kept(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path, REGISTRY_CHANGES_KEEP="2")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        start = current_revision(http)
        for name in ("a", "b", "c"):
            write_json(assets / f"{name}.json", node_doc(name))
            wait_until(lambda node_id=name: http.get(f"/api/v1/nodes/{node_id}").status_code == 200)
        assert current_revision(http) == start + 3
        gone = http.get(f"/api/v1/changes?since={start}")
        assert gone.status_code == 410

        with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(start)}) as response:
            assert response.status_code == 200
            events = Events(response)
            relist = events.next()
            write_json(assets / "d.json", node_doc("d"))
            after = change_event(events.next())
        assert (relist["id"], relist["event"], orjson.loads(relist["data"])) == (
            f"{events.epoch}:{start + 3}",
            "relist",
            gone.json(),
        )
        assert after == (start + 4, "change", record(start + 4, "added", "d", "d.json"))

        # From the oldest revision still complete, the stream replays what is kept.
        with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(start + 2)}) as response:
            events = Events(response)
            replay = [change_event(events.next()) for _ in range(2)]
        assert replay == [
            (start + 3, "change", record(start + 3, "added", "c", "c.json")),
            (start + 4, "change", record(start + 4, "added", "d", "d.json")),
        ]


def test_event_stream_resume_loses_nothing_when_a_revision_was_cut_in_the_middle(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        start = current_revision(http)
        steps = _steps(assets, http)
        expected = [data for _, _, data in _expected_events(start)[:6]]
        for step in steps[:3]:
            step()
        with http.stream("GET", "/api/v1/events") as response:
            steps[3]()  # start+4: error
            steps[4]()  # start+5: updated + recovered
            events = Events(response)
            # The connection drops after "updated", before "recovered" (both were sent).
            before = [change_event(events.next())[2] for _ in range(2)]
        assert [r["kind"] for r in before] == ["error", "updated"]
        resume = {"Last-Event-ID": events.last_id or ""}
        with http.stream("GET", "/api/v1/events", headers=resume) as response:
            events = Events(response)
            steps[5]()  # start+6: removed
            after = []
            while not after or after[-1]["revision"] < start + 6:
                after.append(change_event(events.next())[2])
        seen = [r for r in before + after if r["revision"] <= start + 5]
        unique = [r for i, r in enumerate(seen) if r not in seen[:i]]
        assert unique == expected[3:]


def test_two_hundred_idle_subscribers_each_get_every_change_and_keepalives(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start_server(server, assets, tmp_path, LOG_LEVEL="warning")
    start = current_revision(srv.http)
    names = ["n0", "n1", "n2", "n3", "n4"]
    expected = [
        (start + n, "change", record(start + n, "added", name, f"{name}.json"))
        for n, name in enumerate(names, 1)
    ]
    received: list[list[tuple[int, str, dict[str, Any]]]] = [[] for _ in range(SUBSCRIBERS)]
    keepalives: list[str] = []
    lookups: list[tuple[int, float]] = []

    async def main() -> None:
        limits = httpx.Limits(max_connections=SUBSCRIBERS + 10, max_keepalive_connections=SUBSCRIBERS + 10)
        async with httpx.AsyncClient(base_url=srv.url, timeout=KEEPALIVE_DEADLINE, limits=limits) as client:
            connected = 0
            all_connected = anyio.Event()

            async def subscribe(index: int) -> None:
                nonlocal connected
                async with client.stream("GET", "/api/v1/events") as response:
                    assert (response.status_code, revision_of(response)) == (200, start)
                    connected += 1
                    if connected == SUBSCRIBERS:
                        all_connected.set()
                    events = AsyncEvents(response)
                    while len(received[index]) < len(expected):
                        received[index].append(change_event(await events.next()))
                    keepalives.append(await events.next_comment())

            with anyio.fail_after(KEEPALIVE_DEADLINE + 30):
                async with anyio.create_task_group() as tg:
                    for index in range(SUBSCRIBERS):
                        tg.start_soon(subscribe, index)
                    await all_connected.wait()
                    for name in names:
                        doc = node_doc(name, {f"{name.upper()}Comp": f"pkg.{name}"})
                        await anyio.to_thread.run_sync(write_json, assets / f"{name}.json", doc)
                        while (await client.get(f"/api/v1/nodes/{name}")).status_code != 200:
                            await anyio.sleep(0.01)
                        began = time.monotonic()
                        lookup = await client.get(f"/api/v1/components/{name.upper()}Comp/node")
                        lookups.append((lookup.status_code, time.monotonic() - began))

    anyio.run(main)
    assert received == [expected] * SUBSCRIBERS
    # Each idle stream got a comment line (the keep-alive) after the changes.
    assert len(keepalives) == SUBSCRIBERS and all(c.startswith(":") for c in keepalives), keepalives[:3]
    assert [status for status, _ in lookups] == [200] * len(names)
    assert max(seconds for _, seconds in lookups) < 2.0, lookups


# --- one request, one state ------------------------------------------------------------------


class MovingRegistry:
    """The app's registry, except that every read of `snapshot` returns the next committed
    snapshot: a handler that reads the state twice would pair one revision's log with
    another's floor. This is the one seam between the reconciler and the readers."""

    def __init__(self, registry: Any, snapshots: list[Any]) -> None:
        self._registry = registry
        self._snapshots = snapshots
        self.reads = 0

    @property
    def snapshot(self) -> Any:
        snap = self._snapshots[self.reads % len(self._snapshots)]
        self.reads += 1
        return snap

    @property
    def revision(self) -> int:
        return int(self._snapshots[-1].revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def test_a_change_log_answer_comes_from_one_snapshot_even_while_the_log_is_trimmed(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(assets, changes_keep=1)
    app: Any = client.app
    registry = app.state.registry
    snapshots = [registry.snapshot]
    for i in range(6):  # one record per revision; the log keeps 1-2 of them and moves its floor
        write_json(assets / f"n{i}.json", node_doc(f"n{i}"))
        reconcile_now(client)
        snapshots.append(registry.snapshot)
    floors = [s.changes.floor for s in snapshots]
    assert floors == sorted(floors) and floors[-1] > floors[0]  # the trims really happened
    moving = MovingRegistry(registry, snapshots)
    app.state.registry = moving
    answers = 0
    for start in range(len(snapshots)):
        for since in range(snapshots[-1].revision + 1):
            moving.reads = start
            response = client.get(f"/api/v1/changes?since={since}")
            snap = next(s for s in snapshots if s.revision == revision_of(response))
            log = snap.changes
            state = {"revision": snap.revision, "epoch": snap.epoch, "content_hash": snap.content_hash}
            if since > snap.revision:
                assert (response.status_code, response.json()) == (410, ahead(since, state))
            elif since < log.floor:
                assert (response.status_code, response.json()) == (410, expired(since, log.floor, state))
            else:
                expected = [orjson.loads(r) for r, v in zip(log.encoded, log.revisions) if since < v <= snap.revision]
                assert (response.status_code, response.json()) == (200, {"revision": snap.revision,
                                                                         "changes": expected})
                assert [c["revision"] for c in expected] == list(range(since + 1, snap.revision + 1))
                answers += 1
    assert answers > 0
