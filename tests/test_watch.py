"""Hot reload through the real path: files in tmp_path, the real watcher, SQLite and HTTP.

Every test edits a real folder while the app runs, then waits (bounded polling) for the
HTTP answers to show the effect. Where a test fakes anything, it replaces the one seam
`droq_registry.watch.awatch`, to lose events or to make the watcher fail.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import anyio
import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry import watch
from droq_registry.app import create_app
from droq_registry.folder import resolve_components_path
from droq_registry.overflow import LostEvents
from droq_registry.refusal import NodeFileError
from support.db import query
from support.expect import TIMESTAMP, detail, sha256
from support.files import node_doc, write_json
from support.http import make_settings, reconcile_now, revision, sources
from support.polling import wait_until
from support.server import ServerProcess

DEADLINE = 10.0
BURST_DEADLINE = 30.0


def get_node(client: TestClient, node_id: str) -> tuple[int, Any]:
    response = client.get(f"/api/v1/nodes/{node_id}")
    return response.status_code, response.json()


def health(client: TestClient) -> dict[str, Any]:
    return client.get("/health").json()  # type: ignore[no-any-return]


def node_is(client: TestClient, node_id: str, expected: Any) -> bool:
    return get_node(client, node_id) == (200, expected)


def node_gone(client: TestClient, node_id: str) -> bool:
    return get_node(client, node_id)[0] == 404


def listed_components(client: TestClient) -> list[list[str]]:
    """supported_components of every listed node, in node order."""
    return [n["metadata"]["supported_components"] for n in client.get("/api/v1/nodes").json()["nodes"]]


def watched(client_for: Callable[..., TestClient], assets: Path, **settings: Any) -> TestClient:
    """A ready client whose file watcher is past its start-up pass and applying events.

    A probe node file is added and removed first: once the probe is gone, the watcher's
    first full pass is behind it, so the test's own edits reach the service as events.
    """
    client = client_for(assets, reload=True, **settings)
    wait_until(lambda: health(client)["watcher"]["state"] == "watching", DEADLINE)
    probe = write_json(assets / "watch-probe.json", node_doc("watch-probe"))
    wait_until(lambda: get_node(client, "watch-probe")[0] == 200, DEADLINE)
    probe.unlink()
    wait_until(lambda: node_gone(client, "watch-probe"), DEADLINE)
    return client


class Poller:
    """GETs one path over and over from a thread and keeps every (status, body) it saw."""

    def __init__(self, client: TestClient, path: str) -> None:
        self.client = client
        self.path = path
        self.seen: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                response = self.client.get(self.path)
                self.seen.append((response.status_code, response.json()))
                time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001  # surfaced in the test's thread by __exit__
            self._error = exc

    def more(self, count: int = 20) -> None:
        """Wait until `count` more answers came in (the poller kept looking afterwards)."""
        target = len(self.seen) + count
        wait_until(lambda: len(self.seen) >= target or self._error, DEADLINE)

    def __enter__(self) -> Self:
        self._thread.start()
        self.more(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()
        if self._error is not None:
            raise self._error

    def statuses(self) -> set[int]:
        return {status for status, _ in self.seen}

    def bodies(self) -> list[Any]:
        """The bodies seen, repeats in a row collapsed: [old, new], never [old, new, old]."""
        out: list[Any] = []
        for _, body in self.seen:
            if not out or out[-1] != body:
                out.append(body)
        return out


# Ways of writing a node file ------------------------------------------------------------


def test_plain_write_of_a_new_file_adds_the_node(assets: Path, client_for: Callable[..., TestClient]) -> None:
    client = watched(client_for, assets)
    assert client.get("/api/v1/nodes").json() == {"nodes": [], "total_nodes": 0}
    before = revision(client)

    doc = node_doc("alpha", {"Adder": "pkg.math.adder", "Sub": {"path": "pkg.math.sub", "author": "x"}},
                   description="adds", priority=3, category="Math")
    raw = write_json(assets / "alpha.json", doc).read_bytes()

    wait_until(lambda: node_is(client, "alpha", detail(doc)), DEADLINE)
    assert revision(client) > before
    assert client.get("/api/v1/components/Sub/node").json()["module_path"] == "pkg.math.sub"
    assert client.get("/api/v1/sources").json() == {
        "sources": [
            {
                "path": "alpha.json",
                "node_id": "alpha",
                "state": "ok",
                "error": None,
                "content_hash": sha256(raw),
                "applied_at": TIMESTAMP,
                "updated_at": TIMESTAMP,
                "serving_last_good": False,
            }
        ],
        "total_sources": 1,
        "errors": 0,
    }


def test_plain_write_over_a_file_updates_the_node(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a", {"Old": "pkg.old"}))
    client = watched(client_for, assets)
    applied_before = sources(client)["a.json"]["applied_at"]

    new = node_doc("a", {"New": "pkg.new", "Other": "pkg.other"}, name="Renamed", status="inactive")
    raw = write_json(assets / "a.json", new).read_bytes()

    wait_until(lambda: node_is(client, "a", detail(new)), DEADLINE)
    row = sources(client)["a.json"]
    assert row == {
        "path": "a.json",
        "node_id": "a",
        "state": "ok",
        "error": None,
        "content_hash": sha256(raw),
        "applied_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "serving_last_good": False,
    }
    assert row["applied_at"] > applied_before
    # The old component is gone from the index, the new ones are there (inactive: not offered).
    assert client.get("/api/v1/components/Old/node").status_code == 404
    assert health(client)["components"] == 2


def test_edit_that_changes_the_node_id_replaces_the_node(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("first-id"))
    client = watched(client_for, assets)

    new = node_doc("second-id")
    write_json(assets / "a.json", new)

    wait_until(lambda: node_is(client, "second-id", detail(new)), DEADLINE)
    assert node_gone(client, "first-id")
    assert client.get("/api/v1/nodes").json()["total_nodes"] == 1


@pytest.mark.parametrize("temp_name", ["sedAb12Cd", ".a.json.Xy3Zq9"], ids=["sed-i", "rsync"])
def test_atomic_save_replaces_the_node_without_a_gap(
    assets: Path, client_for: Callable[..., TestClient], temp_name: str
) -> None:
    old = node_doc("a", {"Old": "pkg.old"})
    write_json(assets / "a.json", old)
    client = watched(client_for, assets)
    before = revision(client)

    new = node_doc("a", {"New": "pkg.new"}, name="Saved atomically")
    with Poller(client, "/api/v1/nodes/a") as poller:
        raw = write_json(assets / temp_name, new).read_bytes()
        os.replace(assets / temp_name, assets / "a.json")
        wait_until(lambda: node_is(client, "a", detail(new)), DEADLINE)
        poller.more()

    assert poller.statuses() == {200}
    assert poller.bodies() == [detail(old), detail(new)]
    assert revision(client) == before + 1
    assert list(sources(client)) == ["a.json"]  # the temporary file never became a source
    assert sources(client)["a.json"]["content_hash"] == sha256(raw)


def test_slow_writer_serves_the_old_node_until_the_file_is_complete(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    old = node_doc("a", {"Old": "pkg.old"})
    write_json(assets / "a.json", old)
    client = watched(client_for, assets)

    new = node_doc("a", {f"New{i}": f"pkg.new{i}" for i in range(50)}, name="Written slowly")
    raw = orjson.dumps(new, option=orjson.OPT_INDENT_2)
    half = len(raw) // 2
    with Poller(client, "/api/v1/nodes/a") as poller:
        with open(assets / "a.json", "wb") as handle:
            handle.write(raw[:half])
            handle.flush()
            paused_at = time.monotonic()
            # While the writer pauses, the service sees half a file and keeps the old node.
            wait_until(
                lambda: (sources(client)["a.json"]["error"] or "").startswith("not valid JSON"), DEADLINE
            )
            assert get_node(client, "a") == (200, detail(old))
            assert sources(client)["a.json"]["serving_last_good"] is True
            time.sleep(max(0.0, 0.3 - (time.monotonic() - paused_at)))  # the writer's pause
            handle.write(raw[half:])
        wait_until(lambda: node_is(client, "a", detail(new)), DEADLINE)
        poller.more()

    assert poller.statuses() == {200}
    assert poller.bodies() == [detail(old), detail(new)]
    row = sources(client)["a.json"]
    assert (row["state"], row["error"], row["content_hash"], row["serving_last_good"]) == (
        "ok", None, sha256(raw), False,
    )


def test_file_moved_in_from_another_folder_adds_the_node(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = watched(client_for, assets)
    outside = tmp_path / "outside"
    outside.mkdir()
    doc = node_doc("moved-in")
    write_json(outside / "moved-in.json", doc)
    assert os.stat(outside).st_dev == os.stat(assets).st_dev  # a rename, not a copy

    os.rename(outside / "moved-in.json", assets / "moved-in.json")

    wait_until(lambda: node_is(client, "moved-in", detail(doc)), DEADLINE)
    assert list(sources(client)) == ["moved-in.json"]


def test_removed_file_takes_its_node_and_components_away(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a", {"OnlyInA": "pkg.a", "Shared": "pkg.a.shared"}))
    keep = node_doc("b", {"Shared": "pkg.b.shared"})
    write_json(assets / "b.json", keep)
    client = watched(client_for, assets)
    assert health(client)["components"] == 3
    before = revision(client)

    os.remove(assets / "a.json")

    wait_until(lambda: node_gone(client, "a"), DEADLINE)
    assert revision(client) == before + 1
    assert client.get("/api/v1/components/OnlyInA/node").json() == {
        "detail": "Component 'OnlyInA' not found in any executor node"
    }
    assert client.get("/api/v1/components/Shared/nodes").json()["total_nodes"] == 1
    assert node_is(client, "b", detail(keep))
    assert list(sources(client)) == ["b.json"]
    counts = health(client)
    assert (counts["nodes"], counts["components"], counts["files"]) == (1, 1, 1)
    # ...and in the database itself
    assert query(tmp_path / "registry.db", "SELECT node_id, component_class FROM components") == [
        ("b", "Shared")
    ]
    assert query(tmp_path / "registry.db", "SELECT node_id, source FROM nodes") == [("b", "b.json")]


def test_renamed_file_keeps_serving_the_node_without_a_gap(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    doc = node_doc("a")
    write_json(assets / "old-name.json", doc)
    client = watched(client_for, assets)
    before = revision(client)

    with Poller(client, "/api/v1/nodes/a") as poller:
        os.rename(assets / "old-name.json", assets / "new-name.json")
        wait_until(lambda: list(sources(client)) == ["new-name.json"], DEADLINE)
        poller.more()

    assert poller.statuses() == {200}
    assert poller.bodies() == [detail(doc)]
    # One commit: no revision ever existed without the node (a gap too short to poll).
    assert revision(client) == before + 1
    assert sources(client)["new-name.json"]["state"] == "ok"


def test_burst_of_500_new_files_adds_every_node(assets: Path, client_for: Callable[..., TestClient]) -> None:
    client = watched(client_for, assets)

    for i in range(500):
        write_json(assets / f"node-{i:03d}.json", node_doc(f"node-{i:03d}", {f"C{i}": f"pkg.c{i}"}))

    wait_until(lambda: client.get("/api/v1/nodes").json()["total_nodes"] == 500, BURST_DEADLINE)
    listed = client.get("/api/v1/sources").json()
    assert (listed["total_sources"], listed["errors"]) == (500, 0)
    assert [n["metadata"]["node_id"] for n in client.get("/api/v1/nodes").json()["nodes"]] == [
        f"node-{i:03d}" for i in range(500)
    ]
    counts = health(client)
    assert (counts["nodes"], counts["components"], counts["files_in_error"]) == (500, 500, 0)


def test_reconcile_that_finds_nothing_changed_writes_nothing(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    client = watched(client_for, assets)
    rev = revision(client)
    listed = client.get("/api/v1/sources").json()

    def reconciled_after(mark: str | None) -> bool:
        return health(client)["last_reconcile_at"] != mark

    # touch: a new mtime, the same bytes
    mark = health(client)["last_reconcile_at"]
    os.utime(assets / "a.json")
    wait_until(lambda: reconciled_after(mark), DEADLINE)
    assert client.get("/api/v1/nodes/a").headers["x-registry-revision"] == str(rev)

    # an atomic save of identical content: a new inode, the same bytes
    mark = health(client)["last_reconcile_at"]
    (assets / "a.json.tmp").write_bytes((assets / "a.json").read_bytes())
    os.replace(assets / "a.json.tmp", assets / "a.json")
    wait_until(lambda: reconciled_after(mark), DEADLINE)
    assert client.get("/api/v1/nodes/a").headers["x-registry-revision"] == str(rev)

    # A real change afterwards is the very next revision: the two passes above wrote none.
    write_json(assets / "b.json", node_doc("b"))
    wait_until(lambda: get_node(client, "b")[0] == 200, DEADLINE)
    assert revision(client) == rev + 1
    assert sources(client)["a.json"] == listed["sources"][0]


def test_readers_never_see_a_half_applied_change(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    # Two nodes share one components file: editing it changes both in one reconcile.
    shared = tmp_path / "assets" / "components"
    shared.mkdir()
    write_json(shared / "shared.json", {f"Old{i}": f"pkg.old{i}" for i in range(20)})
    for name in ("a", "b"):
        write_json(assets / f"{name}.json", {"node_id": name, "name": name,
                                             "components_json_path": "../components/shared.json"})
    client = watched(client_for, assets)
    before = revision(client)
    new_components = sorted(f"New{i}" for i in range(30))

    with Poller(client, "/api/v1/nodes?status=all") as poller:
        write_json(shared / ".shared.json.tmp", {cls: f"pkg.{cls.lower()}" for cls in new_components})
        os.replace(shared / ".shared.json.tmp", shared / "shared.json")
        wait_until(lambda: listed_components(client) == [new_components, new_components], DEADLINE)
        poller.more()

    assert revision(client) == before + 1
    assert poller.statuses() == {200}
    seen = [
        [(n["metadata"]["node_id"], n["metadata"]["supported_components"]) for n in body["nodes"]]
        for body in poller.bodies()
    ]
    old_components = sorted(f"Old{i}" for i in range(20))
    assert seen == [
        [("a", old_components), ("b", old_components)],
        [("a", new_components), ("b", new_components)],
    ]


# Invalid files ----------------------------------------------------------------------------

GOOD = node_doc("a", {"Good": "pkg.good"})
FIXED = node_doc("a", {"Fixed": "pkg.fixed"}, name="Fixed a")
BAD_EDITS = {
    "bad-json": (
        b'{"node_id": "a", "name": "Node a", "components": {"Comp": "pkg.comp"},}',
        "not valid JSON: trailing comma is not allowed at line 1 column 70",
    ),
    "half-written": (
        orjson.dumps(FIXED)[:30],
        "not valid JSON: unexpected end of data at line 1 column 31",
    ),
    "wrong-types": (
        orjson.dumps({"node_id": "a", "name": 42, "components": {"Comp": "pkg.comp"}}),
        "name: expected a string, got 42",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_EDITS))
def test_invalid_edit_keeps_serving_the_last_good_node_until_fixed(
    assets: Path, client_for: Callable[..., TestClient], bad: str
) -> None:
    write_json(assets / "a.json", GOOD)
    client = watched(client_for, assets)
    good_row = sources(client)["a.json"]
    raw, message = BAD_EDITS[bad]

    (assets / "a.json").write_bytes(raw)

    # (A plain write may be read while still empty first: wait for these bytes.)
    wait_until(lambda: sources(client)["a.json"]["content_hash"] == sha256(raw), DEADLINE)
    assert sources(client)["a.json"] == {
        "path": "a.json",
        "node_id": "a",
        "state": "error",
        "error": message,
        "content_hash": sha256(raw),
        "applied_at": good_row["applied_at"],
        "updated_at": TIMESTAMP,
        "serving_last_good": True,
    }
    assert get_node(client, "a") == (200, detail(GOOD))
    assert client.get("/api/v1/components/Good/node").status_code == 200
    assert health(client)["files_in_error"] == 1
    assert client.get("/api/v1/sources").json()["errors"] == 1

    fixed = write_json(assets / "a.json", FIXED).read_bytes()

    wait_until(lambda: node_is(client, "a", detail(FIXED)), DEADLINE)
    row = sources(client)["a.json"]
    assert row == {
        "path": "a.json",
        "node_id": "a",
        "state": "ok",
        "error": None,
        "content_hash": sha256(fixed),
        "applied_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "serving_last_good": False,
    }
    assert row["applied_at"] > good_row["applied_at"]
    assert health(client)["files_in_error"] == 0


def test_new_invalid_file_adds_nothing_and_is_marked_in_error(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", GOOD)
    client = watched(client_for, assets)
    nodes_before = client.get("/api/v1/nodes").json()

    raw = orjson.dumps({"node_id": "b", "name": "b", "components": {"Comp": 5}})
    (assets / "b.json").write_bytes(raw)

    wait_until(lambda: sources(client).get("b.json", {}).get("content_hash") == sha256(raw), DEADLINE)
    assert sources(client)["b.json"] == {
        "path": "b.json",
        "node_id": None,
        "state": "error",
        "error": 'components.Comp: expected a dotted module path or an object with a "path", got 5',
        "content_hash": sha256(raw),
        "applied_at": None,
        "updated_at": TIMESTAMP,
        "serving_last_good": False,
    }
    assert client.get("/api/v1/nodes").json() == nodes_before
    assert node_gone(client, "b")
    assert (health(client)["files_in_error"], health(client)["nodes"]) == (1, 1)


def test_deleting_an_invalid_file_removes_its_last_good_node(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", GOOD)
    client = watched(client_for, assets)
    (assets / "a.json").write_bytes(b"{ not json")
    wait_until(lambda: sources(client)["a.json"]["serving_last_good"] is True, DEADLINE)

    os.remove(assets / "a.json")

    wait_until(lambda: node_gone(client, "a"), DEADLINE)
    assert client.get("/api/v1/sources").json() == {"sources": [], "total_sources": 0, "errors": 0}
    assert client.get("/api/v1/components/Good/node").status_code == 404
    assert (health(client)["nodes"], health(client)["components"]) == (0, 0)


# Ownership of a node id -------------------------------------------------------------------


def test_file_whose_name_sorts_first_owns_the_node_id(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    from_b = node_doc("shared-id", {"FromB": "pkg.b"}, name="declared by b")
    write_json(assets / "b.json", from_b)
    client = watched(client_for, assets)
    assert node_is(client, "shared-id", detail(from_b))

    from_a = node_doc("shared-id", {"FromA": "pkg.a"}, name="declared by a")
    write_json(assets / "a.json", from_a)

    wait_until(lambda: node_is(client, "shared-id", detail(from_a)), DEADLINE)
    rows = sources(client)
    assert (rows["a.json"]["state"], rows["a.json"]["error"]) == ("ok", None)
    assert rows["b.json"] == {
        "path": "b.json",
        "node_id": "shared-id",
        "state": "conflict",
        "error": "node_id 'shared-id' is already declared by a.json"
        " (the file whose name sorts first owns it)",
        "content_hash": sha256((assets / "b.json").read_bytes()),
        "applied_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "serving_last_good": False,
    }
    assert client.get("/api/v1/components/FromB/node").status_code == 404
    assert health(client)["files_in_error"] == 1


def test_conflicting_file_takes_over_in_the_same_reconcile_when_the_owner_is_removed(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    from_a = node_doc("shared-id", {"FromA": "pkg.a"}, name="declared by a")
    from_b = node_doc("shared-id", {"FromB": "pkg.b"}, name="declared by b")
    write_json(assets / "a.json", from_a)
    write_json(assets / "b.json", from_b)
    client = watched(client_for, assets)
    assert sources(client)["b.json"]["state"] == "conflict"
    before = revision(client)

    with Poller(client, "/api/v1/nodes/shared-id") as poller:
        os.remove(assets / "a.json")
        wait_until(lambda: node_is(client, "shared-id", detail(from_b)), DEADLINE)
        poller.more()

    assert poller.statuses() == {200}
    assert poller.bodies() == [detail(from_a), detail(from_b)]
    assert revision(client) == before + 1
    row = sources(client)
    assert list(row) == ["b.json"]
    assert (row["b.json"]["state"], row["b.json"]["error"]) == ("ok", None)


# components_json_path -------------------------------------------------------------------


def test_editing_the_components_file_updates_the_node(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    components_dir = tmp_path / "assets" / "components"
    components_dir.mkdir()
    write_json(components_dir / "x.json", {"First": "pkg.first"})
    doc = {"node_id": "x", "name": "X", "components_json_path": "../components/x.json"}
    write_json(assets / "x.json", doc)
    client = watched(client_for, assets)
    assert get_node(client, "x") == (200, detail(doc, {"First": "pkg.first"}))
    hash_before = sources(client)["x.json"]["content_hash"]

    write_json(components_dir / "x.json", {"Second": "pkg.second", "Third": {"path": "pkg.third"}})

    expected = detail(doc, {"Second": "pkg.second", "Third": {"path": "pkg.third"}})
    wait_until(lambda: node_is(client, "x", expected), DEADLINE)
    row = sources(client)["x.json"]
    assert (row["state"], row["error"]) == ("ok", None)
    assert row["content_hash"] != hash_before
    assert row["content_hash"].startswith("sha256:")
    assert client.get("/api/v1/components/First/node").status_code == 404


# The Kubernetes ConfigMap volume layout ----------------------------------------------------


class ConfigMap:
    """A ConfigMap volume as the kubelet writes it, updated the way the kubelet updates it.

    `..<timestamp>/` holds the keys, `..data` links to it, each key `k.json` links to
    `..data/k.json`. An update writes a new timestamped folder, points `..data_tmp` at it,
    renames that over `..data` (the atomic swap), adds links for new keys, removes links of
    keys that went away, and deletes the old folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.generation = 0
        self.current: str | None = None
        self.keys: set[str] = set()

    def publish(self, files: dict[str, bytes]) -> None:
        stamp = f"..2026_01_01_00_00_{self.generation:02d}.000000001"
        self.generation += 1
        (self.folder / stamp).mkdir()
        for name, raw in files.items():
            (self.folder / stamp / name).write_bytes(raw)
        os.symlink(stamp, self.folder / "..data_tmp")
        os.rename(self.folder / "..data_tmp", self.folder / "..data")
        for name in sorted(set(files) - self.keys):
            os.symlink(f"..data/{name}", self.folder / name)
        for name in sorted(self.keys - set(files)):
            os.unlink(self.folder / name)
        if self.current is not None:
            shutil.rmtree(self.folder / self.current)
        self.current = stamp
        self.keys = set(files)


def test_configmap_update_swaps_the_node_without_a_gap(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    volume = ConfigMap(assets)
    old = node_doc("a", {"Old": "pkg.old"})
    volume.publish({"a.json": orjson.dumps(old)})
    client = watched(client_for, assets)
    assert get_node(client, "a") == (200, detail(old))
    assert list(sources(client)) == ["a.json"]  # `..data` and `..<timestamp>` are not node files

    before = revision(client)
    new = node_doc("a", {"New": "pkg.new"}, name="From the new ConfigMap")
    with Poller(client, "/api/v1/nodes/a") as poller:
        volume.publish({"a.json": orjson.dumps(new)})
        wait_until(lambda: node_is(client, "a", detail(new)), DEADLINE)
        poller.more()

    assert poller.statuses() == {200}
    assert poller.bodies() == [detail(old), detail(new)]
    assert revision(client) == before + 1
    assert sources(client)["a.json"]["content_hash"] == sha256(orjson.dumps(new))


def test_configmap_new_key_adds_a_node_and_removed_key_removes_it(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    volume = ConfigMap(assets)
    a = node_doc("a")
    volume.publish({"a.json": orjson.dumps(a)})
    client = watched(client_for, assets)

    b = node_doc("b", {"FromB": "pkg.b"})
    volume.publish({"a.json": orjson.dumps(a), "b.json": orjson.dumps(b)})
    wait_until(lambda: node_is(client, "b", detail(b)), DEADLINE)
    assert list(sources(client)) == ["a.json", "b.json"]

    volume.publish({"b.json": orjson.dumps(b)})
    wait_until(lambda: node_gone(client, "a"), DEADLINE)
    assert node_is(client, "b", detail(b))
    assert client.get("/api/v1/sources").json()["sources"][0]["path"] == "b.json"
    assert client.get("/api/v1/sources").json()["total_sources"] == 1


# Rescans: what the watcher missed ---------------------------------------------------------


async def silent_awatch(*paths: Any, **options: Any) -> Any:
    """A watcher that lost every event: it reports nothing until it is stopped."""
    await anyio.sleep_forever()
    yield set()  # pragma: no cover - never reached


def test_rescan_applies_changes_the_watcher_never_reported(
    monkeypatch: pytest.MonkeyPatch, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    monkeypatch.setattr(watch, "awatch", silent_awatch)
    write_json(assets / "changed.json", node_doc("changed", {"Old": "pkg.old"}))
    write_json(assets / "removed.json", node_doc("removed"))
    client = client_for(assets, reload=True, resync_seconds=0.2)

    added = node_doc("added")
    changed = node_doc("changed", {"New": "pkg.new"})
    write_json(assets / "added.json", added)
    write_json(assets / "changed.json", changed)
    os.remove(assets / "removed.json")

    wait_until(
        lambda: node_is(client, "added", detail(added))
        and node_is(client, "changed", detail(changed))
        and node_gone(client, "removed"),
        DEADLINE,
    )
    assert list(sources(client)) == ["added.json", "changed.json"]


def test_rescan_detects_a_content_change_that_keeps_size_and_mtime(
    monkeypatch: pytest.MonkeyPatch, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    monkeypatch.setattr(watch, "awatch", silent_awatch)
    path = write_json(assets / "a.json", node_doc("a", {"Aaaa": "pkg.aaaa"}))
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))  # long settled: not "racy", no reason to re-read
    client = client_for(assets, reload=True, resync_seconds=0.2)
    old_stat = os.stat(path)

    new = node_doc("a", {"Bbbb": "pkg.bbbb"})
    raw = orjson.dumps(new, option=orjson.OPT_INDENT_2)
    assert len(raw) == old_stat.st_size
    with open(path, "r+b") as handle:  # in place: same inode
        handle.write(raw)
    os.utime(path, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns))
    now_stat = os.stat(path)
    assert (now_stat.st_size, now_stat.st_mtime_ns, now_stat.st_ino) == (
        old_stat.st_size, old_stat.st_mtime_ns, old_stat.st_ino,
    )

    wait_until(lambda: node_is(client, "a", detail(new)), DEADLINE)
    assert sources(client)["a.json"]["content_hash"] == sha256(raw)


# Watcher failure ----------------------------------------------------------------------------


def test_failed_watcher_is_reported_and_changes_are_still_applied_by_polling(
    monkeypatch: pytest.MonkeyPatch, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    def failing_awatch(*paths: Any, **options: Any) -> Any:
        raise OSError("OS file watch limit reached")

    monkeypatch.setattr(watch, "awatch", failing_awatch)
    write_json(assets / "a.json", node_doc("a"))
    client = client_for(assets, reload=True)

    wait_until(lambda: health(client)["watcher"]["restarts"] >= 1, DEADLINE)
    body = health(client)
    assert body["status"] == "degraded"
    assert body["watcher"]["state"] == "polling"
    assert body["watcher"]["error"] == "OSError: OS file watch limit reached"

    added = node_doc("b")
    changed = node_doc("a", {"New": "pkg.new"})
    write_json(assets / "b.json", added)
    write_json(assets / "a.json", changed)

    wait_until(
        lambda: node_is(client, "b", detail(added)) and node_is(client, "a", detail(changed)), DEADLINE
    )
    assert health(client)["watcher"]["state"] == "polling"


# The assets folder itself ------------------------------------------------------------------


def test_missing_assets_folder_is_reported_and_loaded_once_created(tmp_path: Path) -> None:
    folder = tmp_path / "assets" / "nodes"
    with TestClient(create_app(make_settings(folder, reload=True))) as client:
        wait_until(lambda: health(client)["assets_dir_present"] is False, DEADLINE)
        body = health(client)
        assert (body["status"], body["ready"], body["watcher"]["state"]) == ("degraded", False, "waiting")
        response = client.get("/ready")
        assert (response.status_code, response.json()) == (
            503,
            {"status": "starting", "detail": f"waiting for the assets folder {folder}"},
        )

        folder.mkdir(parents=True)
        doc = node_doc("late")
        write_json(folder / "late.json", doc)

        wait_until(lambda: client.get("/ready").status_code == 200, DEADLINE)
        wait_until(lambda: node_is(client, "late", detail(doc)), DEADLINE)
        wait_until(lambda: health(client)["status"] == "healthy", DEADLINE)
        assert health(client)["assets_dir_present"] is True


def test_assets_folder_removed_and_recreated_is_loaded_again(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    client = watched(client_for, assets)

    shutil.rmtree(assets)
    wait_until(lambda: health(client)["assets_dir_present"] is False, DEADLINE)
    assert health(client)["status"] == "degraded"

    assets.mkdir()
    back = node_doc("a", {"Back": "pkg.back"})
    again = node_doc("b")
    write_json(assets / "a.json", back)
    write_json(assets / "b.json", again)

    wait_until(lambda: node_is(client, "a", detail(back)) and node_is(client, "b", detail(again)), DEADLINE)
    wait_until(lambda: health(client)["watcher"]["state"] == "watching", DEADLINE)
    assert health(client)["assets_dir_present"] is True
    assert list(sources(client)) == ["a.json", "b.json"]

    # ...and it is watched again: a later edit is applied.
    later = node_doc("c")
    write_json(assets / "c.json", later)
    wait_until(lambda: node_is(client, "c", detail(later)), DEADLINE)


def test_assets_folder_replaced_in_one_go_is_watched_again(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    client = watched(client_for, assets)

    # `rm -rf nodes && mkdir nodes && cp ...`, faster than the service looks in between. The
    # file system often hands the new folder the old one's inode number; repeat until it does.
    for attempt in range(40):
        inode = os.stat(assets).st_ino
        shutil.rmtree(assets)
        assets.mkdir()
        write_json(assets / f"copied-{attempt}.json", node_doc(f"copied-{attempt}"))
        reused = os.stat(assets).st_ino == inode
        wait_until(lambda n=attempt: get_node(client, f"copied-{n}")[0] == 200, DEADLINE)
        if reused:
            break
    else:
        pytest.skip("the file system never reused the folder's inode number")

    # The replacement is behind the service now; a later edit in the new folder must be seen.
    later = node_doc("later")
    write_json(assets / "later.json", later)
    wait_until(lambda: node_is(client, "later", detail(later)), DEADLINE)


def test_dangling_symlink_counts_as_no_file(assets: Path, client_for: Callable[..., TestClient]) -> None:
    os.symlink("nowhere.json", assets / "x.json")
    client = watched(client_for, assets)
    assert client.get("/api/v1/sources").json() == {"sources": [], "total_sources": 0, "errors": 0}

    os.symlink("also-nowhere.json", assets / "y.json")
    marker = node_doc("marker")
    write_json(assets / "marker.json", marker)  # written after the link: its reconcile saw both

    wait_until(lambda: node_is(client, "marker", detail(marker)), DEADLINE)
    listed = client.get("/api/v1/sources").json()
    assert ([row["path"] for row in listed["sources"]], listed["errors"]) == (["marker.json"], 0)
    assert health(client)["files_in_error"] == 0


# RELOAD=false, and what /health and /api/v1/sources say -----------------------------------


def test_reload_false_loads_once_and_starts_no_watcher(
    monkeypatch: pytest.MonkeyPatch, real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    calls: list[Any] = []

    def spy_awatch(*paths: Any, **options: Any) -> Any:
        calls.append(paths)
        raise AssertionError("RELOAD=false must not watch")

    monkeypatch.setattr(watch, "awatch", spy_awatch)
    client = client_for(real_assets, reload=False)

    wait_until(lambda: health(client)["watcher"]["state"] == "off", DEADLINE)
    body = health(client)
    assert (body["status"], body["watcher"], body["nodes"]) == (
        "healthy", {"state": "off", "error": None, "restarts": 0}, 4,
    )
    assert calls == []


def test_sources_lists_every_file_with_its_content_hash(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = client_for(real_assets, reload=True)
    expected = []
    for path in sorted(real_assets.glob("*.json")):
        raw = path.read_bytes()
        expected.append(
            {
                "path": path.name,
                "node_id": orjson.loads(raw)["node_id"],
                "state": "ok",
                "error": None,
                "content_hash": sha256(raw),
                "applied_at": TIMESTAMP,
                "updated_at": TIMESTAMP,
                "serving_last_good": False,
            }
        )
    assert client.get("/api/v1/sources").json() == {"sources": expected, "total_sources": 4, "errors": 0}
    for path in real_assets.glob("*.json"):
        doc = orjson.loads(path.read_bytes())
        assert get_node(client, doc["node_id"]) == (200, detail(doc))


def test_health_reports_the_watcher_and_the_counts(
    real_assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = watched(client_for, real_assets)
    components = sum(len(orjson.loads(p.read_bytes())["components"]) for p in real_assets.glob("*.json"))
    before = revision(client)
    (real_assets / ".broken.json.tmp").write_bytes(b"[]")
    os.replace(real_assets / ".broken.json.tmp", real_assets / "broken.json")
    wait_until(lambda: health(client)["files"] == 5, DEADLINE)

    answer = client.get("/health")
    body = answer.json()
    assert isinstance(body.pop("last_reconcile_ms"), float)
    assert body == {
        "status": "healthy",
        "service": "droq-registry-service",
        "version": "1.0.0",
        "ready": True,
        "revision": before + 1,
        "epoch": answer.headers["x-registry-epoch"],
        "content_hash": answer.headers["x-registry-content-hash"],
        "watcher": {"state": "watching", "error": None, "restarts": 0},
        "assets_dir": str(real_assets),
        "assets_dir_present": True,
        "last_reconcile_at": TIMESTAMP,
        "last_reconcile_error": None,
        "database": {"path": str(real_assets.parent.parent / "registry.db"), "state": "ok", "error": None,
                     "failing_since": None},
        "nodes": 4,
        "components": components,
        "files": 5,
        "files_in_error": 1,
    }
    assert sources(client)["broken.json"]["error"] == "expected a JSON object, got a list"


# Lost events: the kernel's queue overflowed -------------------------------------------------

QUEUE_LIMIT = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
#: Long before the periodic rescan (an hour), generous for a loaded machine; how fast it
#: really is (seconds) is measured by bench/lost_events.py.
LOST_DEADLINE = 90.0


def test_events_lost_while_the_process_was_stopped_are_rescanned_at_once(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    count = 20_000
    # A new file is at least three events (create, modify, close): far more than the queue holds.
    assert count * 3 > QUEUE_LIMIT, "the kernel would queue every event: nothing would be lost"
    srv = server(
        {"REGISTRY_ASSETS_DIR": str(assets), "REGISTRY_DB_PATH": str(tmp_path / "r.db"),
         "REGISTRY_RESYNC_SECONDS": "3600", "RELOAD": "", "LOG_FORMAT": "text", "LOG_LEVEL": "info"},
        tmp_path / "server.log",
    )
    wait_until(lambda: srv.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)
    write_json(assets / "probe.json", node_doc("probe"))  # past the first pass: events apply
    wait_until(lambda: srv.get("/api/v1/nodes/probe").status_code == 200, DEADLINE)

    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        for i in range(count):
            (assets / f"n{i:05d}.json").write_bytes(orjson.dumps(node_doc(f"n{i:05d}", {f"C{i}": "pkg.c"})))
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)

    wait_until(lambda: srv.get("/health").json()["nodes"] == count + 1, LOST_DEADLINE, interval=0.2)
    listed = srv.get("/api/v1/sources").json()
    assert (listed["total_sources"], listed["errors"]) == (count + 1, 0)
    assert srv.get("/api/v1/components/C19999/node").json()["node"]["node_id"] == "n19999"
    assert srv.get("/health").json()["watcher"] == {"state": "watching", "error": None, "restarts": 0}
    said = [line.split(": ", 1)[1] for line in srv.log().splitlines() if "file events were lost" in line]
    assert said, "the overflow was noticed and said"
    assert set(said) == {
        (
            "file events were lost (the kernel's event queue overflowed; "
            f"fs.inotify.max_queued_events={QUEUE_LIMIT}); rescanning {assets}"
        )
    }


def test_lost_events_are_noticed_in_folders_below_the_assets_folder_too(tmp_path: Path) -> None:
    tree = tmp_path / "nodes"
    (tree / "sub").mkdir(parents=True)
    lost = LostEvents(str(tree))
    try:
        assert lost.active and not lost.overflowed()
        (tree / "later").mkdir()  # made after the watch started, noticed on the next look
        assert not lost.overflowed()
        for name in ("sub", "later"):
            for i in range(QUEUE_LIMIT // 3 + 10):  # never read in between: the queue overflows
                (tree / name / f"f{i}").write_bytes(b"x")
            assert lost.overflowed(), name
            assert not lost.overflowed(), "said once per overflow"
    finally:
        lost.close()
    lost.close()  # idempotent


# The watch stays narrow ------------------------------------------------------------------------


def _kernel_dev(st_dev: int) -> int:
    """st_dev as the kernel prints it in /proc/*/fdinfo (MAJOR << 20 | MINOR)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def watched_folders(root: Path) -> set[str]:
    """The folders under `root` that an inotify watch of this process is on, relative to
    `root` (read from /proc/self/fdinfo, whichever instance holds the watch)."""
    folders = {}
    for folder, _, _ in os.walk(root):
        st = os.stat(folder)
        folders[(_kernel_dev(st.st_dev), st.st_ino)] = os.path.relpath(folder, root)
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for ino, sdev in re.findall(r"^inotify wd:\S+ ino:([0-9a-f]+) sdev:([0-9a-f]+)", info, re.MULTILINE):
            key = (int(sdev, 16), int(ino, 16))
            if key in folders:
                found.add(folders[key])
    return found


def test_components_folders_are_watched_on_their_own_never_their_tree(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    parent = assets.parent
    (parent / "big" / "deep" / "deeper").mkdir(parents=True)
    (parent / "other").mkdir()
    (assets / "sub").mkdir()
    write_json(parent / "shared.json", {"Shared": "pkg.shared"})
    write_json(parent / "other" / "o.json", {"Other": "pkg.other"})
    doc = {"node_id": "x", "name": "X", "components_json_path": "../shared.json"}
    write_json(assets / "x.json", doc)
    client = watched(client_for, assets)

    # The assets folder with its subfolders; the parent alone, not its other folders.
    wait_until(lambda: watched_folders(tmp_path) == {"assets", "assets/nodes", "assets/nodes/sub"}, DEADLINE)

    write_json(parent / "shared.json", {"Edited": "pkg.edited"})  # seen through that watch
    wait_until(lambda: node_is(client, "x", detail(doc, {"Edited": "pkg.edited"})), DEADLINE)

    pointer = {"node_id": "y", "name": "Y", "components_json_path": "../other/o.json"}
    write_json(assets / "y.json", pointer)
    wait_until(lambda: watched_folders(tmp_path) == {"assets", "assets/other", "assets/nodes",
                                                     "assets/nodes/sub"}, DEADLINE)
    write_json(parent / "other" / "o.json", {"Moved": "pkg.moved"})
    wait_until(lambda: node_is(client, "y", detail(pointer, {"Moved": "pkg.moved"})), DEADLINE)

    (assets / "y.json").unlink()
    wait_until(lambda: watched_folders(tmp_path) == {"assets", "assets/nodes", "assets/nodes/sub"}, DEADLINE)
    assert health(client)["watcher"] == {"state": "watching", "error": None, "restarts": 0}


def test_watched_folders_are_one_frozen_value_replaced_by_each_commit_that_moves_them(
    tmp_path: Path, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    (tmp_path / "assets" / "c").mkdir()
    write_json(tmp_path / "assets" / "c" / "c.json", {"C": "pkg.c"})
    client = client_for(assets)
    registry = client.app.state.registry  # type: ignore[attr-defined]
    before = registry.watch_dirs
    assert before == frozenset()

    write_json(assets / "a.json", {"node_id": "a", "name": "A", "components_json_path": "../c/c.json"})
    reconcile_now(client)
    after = registry.watch_dirs
    assert (type(after), after) == (frozenset, frozenset({str(tmp_path / "assets" / "c")}))
    assert before == frozenset(), "the value the event loop held is never changed in place"

    write_json(assets / "b.json", node_doc("b"))  # a commit that moves no folder keeps the value
    reconcile_now(client)
    assert registry.watch_dirs is after


def test_the_status_health_reads_is_one_frozen_value_replaced_whole_by_each_pass(
    assets: Path, client_for: Callable[..., TestClient]
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    client = client_for(assets)
    registry = client.app.state.registry  # type: ignore[attr-defined]
    before = registry.status
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.ready = False
    seen = (before.ready, before.last_reconcile_at, dict(before.reconciles))

    write_json(assets / "b.json", node_doc("b"))
    reconcile_now(client)
    after = registry.status
    assert after is not before
    assert (after.ready, after.reconciles["changed"]) == (True, before.reconciles["changed"] + 1)
    assert (before.ready, before.last_reconcile_at, dict(before.reconciles)) == seen, (
        "the value a reader held is never changed in place"
    )


@pytest.mark.parametrize(
    ("folder", "ref", "resolved"),
    [
        pytest.param("/srv/nodes", "../shared/c.json", "/srv/shared/c.json", id="parent-allowed"),
        pytest.param("/srv/nodes", "../../etc/c.json", None, id="above-parent"),
        pytest.param("/nodes", "c/c.json", "/nodes/c/c.json", id="root-parent-inside"),
        pytest.param("/nodes", "../etc/passwd", None, id="root-parent-outside"),
        pytest.param("/nodes", "../nodes/c.json", "/nodes/c.json", id="root-parent-back-in"),
        pytest.param("/", "c.json", None, id="folder-is-root"),
    ],
)
def test_components_path_may_not_leave_the_parent_and_never_reaches_root(
    folder: str, ref: str, resolved: str | None
) -> None:
    if resolved is not None:
        assert resolve_components_path(Path(folder), ref) == resolved
        return
    with pytest.raises(NodeFileError) as caught:
        resolve_components_path(Path(folder), ref)
    root = "/srv" if folder == "/srv/nodes" else folder
    assert caught.value.message == f"components_json_path: {ref!r} resolves outside {root} (not allowed)"


# File names that are not UTF-8, and a watcher that fails now and then -----------------------


def write_raw(path: bytes, raw: bytes, flags: int = os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)


def test_file_name_that_is_not_utf8_is_skipped_with_one_warning_and_the_watch_goes_on(
    caplog: pytest.LogCaptureFixture, assets: Path, client_for: Callable[..., TestClient]
) -> None:
    client = watched(client_for, assets)
    unique = assets.parent.parent.name.encode()  # the warning is said once per process and name
    bad = os.path.join(os.fsencode(assets), b"caf\xe9-" + unique + b"-\xff.json")
    write_raw(bad, orjson.dumps(node_doc("bad")))
    first = write_json(assets / "first.json", node_doc("first"))
    wait_until(lambda: node_is(client, "first", detail(node_doc("first"))), DEADLINE)

    write_raw(bad, b"\n", os.O_APPEND)  # events on it again: still skipped, not said again
    second = write_json(assets / "second.json", node_doc("second"))
    wait_until(lambda: node_is(client, "second", detail(node_doc("second"))), DEADLINE)
    first.unlink()
    wait_until(lambda: node_gone(client, "first"), DEADLINE)

    assert health(client)["watcher"] == {"state": "watching", "error": None, "restarts": 0}
    assert list(sources(client)) == [second.name]
    said = [(r.name, r.levelname, r.getMessage()) for r in caplog.records
            if r.name in ("droq_registry.watch", "droq_registry.reconcile") and r.levelno >= logging.WARNING]
    assert said == [(
        "droq_registry.reconcile", "WARNING",
        f"ignoring {os.fsdecode(os.path.basename(bad))}: its name is not valid UTF-8",
    )]


def test_watcher_backoff_starts_again_after_a_long_healthy_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, assets: Path,
    client_for: Callable[..., TestClient],
) -> None:
    monkeypatch.setattr(watch, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(watch, "MAX_BACKOFF_SECONDS", 0.16)
    monkeypatch.setattr(watch, "STABLE_SECONDS", 0.5)
    lives = ["fails"] * 5 + ["runs well, then fails"] + ["fails"] * 2

    async def scripted_awatch(*paths: Any, **options: Any) -> Any:
        life = lives.pop(0) if lives else "runs"
        if life == "fails":
            raise OSError("inotify went away")
        started = time.monotonic()
        while life == "runs" or time.monotonic() - started < 1.0:  # twice STABLE_SECONDS
            await anyio.sleep(0.02)
            yield set()
        raise OSError("inotify went away after a good run")

    monkeypatch.setattr(watch, "awatch", scripted_awatch)
    client = client_for(assets, reload=True)
    wait_until(lambda: not lives and health(client)["watcher"]["state"] == "watching", DEADLINE)

    waits = [re.search(r"retrying in (\S+)s$", r.getMessage()).group(1)  # type: ignore[union-attr]
             for r in caplog.records if r.name == "droq_registry.watch" and r.levelno == logging.ERROR]
    # Doubling up to the cap, back to the start after the good run, doubling again.
    assert waits == ["0.02", "0.04", "0.08", "0.16", "0.16", "0.02", "0.04", "0.08"]
    assert health(client)["watcher"] == {"state": "watching", "error": None, "restarts": 8}
