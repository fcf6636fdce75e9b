"""What node authors and operators really do to the folder: one file only ever costs itself.

Real files in tmp_path, real SQLite, the real reconciler, the real app (TestClient) and real
server processes. Faults are real where the machine allows: descriptors used up with
RLIMIT_NOFILE, a FIFO, a socket, a symbolic link loop, a file the service (run as `nobody`)
may not read. The few that cannot be made real on demand (EAGAIN, ENOMEM, a bug in a library)
are injected at the one seam that owns them. The property-based part (hypothesis) writes
hostile node files and checks the service and `validate` against each other.
"""

from __future__ import annotations

import codecs
import errno
import functools
import io
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from droq_registry import cli, nodebytes, nodefile
from droq_registry.diff import conflict_message
from droq_registry.folder import TransientError
from droq_registry.model import CORE_FIELDS, Result
from droq_registry.nodefile import MAX_DEPTH, Schema
from droq_registry.reconcile import Reconciler as Registry
from droq_registry.store import Store
from support.db import query
from support.expect import TIMESTAMP_FORMAT, detail, expected_node, sha256
from support.files import ROOT, node_doc, write_json
from support.http import make_settings, metric, open_client, reconcile_now, sources
from support.polling import wait_until
from support.server import ServerProcess, server_env

Client = Callable[..., TestClient]
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
DEADLINE = 15.0


# --- helpers -------------------------------------------------------------------------------


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def deep_bytes(node_id: str, levels: int) -> bytes:
    """A valid node whose field `extra.a.b` makes the whole file nest `levels` levels (its
    top-level object is level 1), written as text: no encoder writes that deep."""
    inner = levels - 3
    head = orjson.dumps(node_doc(node_id, extra={"a": {"b": 0}}))
    return head.replace(b'"b":0', b'"b":' + b"[" * inner + b"1" + b"]" * inner)


def deep_where() -> str:
    """Where `deep_bytes` is refused: the first container past the limit."""
    return "extra.a.b" + "[0]" * (MAX_DEPTH - 3)


def row_without_times(row: dict[str, Any]) -> dict[str, Any]:
    assert TIMESTAMP_FORMAT.fullmatch(row["updated_at"])
    return {k: v for k, v in row.items() if k not in ("applied_at", "updated_at")}


def changes(client: TestClient, since: int = 0) -> list[tuple[int, str, str | None, str | None]]:
    body = client.get(f"/api/v1/changes?since={since}").json()
    return [(c["revision"], c["kind"], c["node_id"], c["source"]) for c in body["changes"]]


@pytest.fixture
def registry_for(tmp_path: Path) -> Iterator[Callable[[Path], Registry]]:
    """`registry_for(assets)` -> the real Registry on a real SQLite store (no app, no watcher):
    each `reconcile()` is one pass, run by the test."""
    stores: list[Store] = []

    def make(assets: Path) -> Registry:
        config = make_settings(assets, db_path=tmp_path / f"registry-{len(stores)}.db")
        store = Store.open(config.db_path)
        stores.append(store)
        return Registry(config, store, Schema.load(config.schema_path))

    yield make
    for store in stores:
        store.close()


@contextmanager
def descriptors_used_up() -> Iterator[None]:
    """Until the block ends, this process cannot open one more file descriptor: the soft
    RLIMIT_NOFILE is lowered to the lowest free descriptor number (a real EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(OSError) as probe:
            os.close(os.open(os.devnull, os.O_RDONLY))
        assert probe.value.errno == errno.EMFILE  # the fault is real
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class OnTheWriter:
    """The live app's reconciler, each pass run on its writer thread: the only thread that
    may use its database connection (a pass from the test's thread would be refused)."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def reconcile(self, named: Iterable[str] | None = None) -> Result:
        return reconcile_now(self._client, named)


def committed(registry: Registry) -> tuple[Any, ...]:
    """Everything a pass may change, in memory and in the database."""
    loaded = registry.store.load()
    return (
        registry.revision,
        dict(registry.sources),
        dict(registry.served),
        loaded.revision,
        loaded.sources,
        loaded.served,
        [(c.revision, c.kind, c.node_id, c.source) for c in loaded.changes],
    )


# --- 1. a file nested too deep costs only itself ---------------------------------------------


def test_a_file_nested_too_deep_on_a_fresh_start_is_refused_and_the_good_files_are_served(
    assets: Path, client_for: Client, caplog: pytest.LogCaptureFixture
) -> None:
    a, z = node_doc("a"), node_doc("z", components={"Z": {"path": "pkg.z", "display_name": "Zed"}})
    write_json(assets / "a.json", a)
    (assets / "deep.json").write_bytes(deep_bytes("deep", 300))
    write_json(assets / "z.json", z)

    client = client_for(assets)

    assert client.get("/ready").json() == {"status": "ready", "revision": 1}
    assert client.get("/api/v1/nodes/a").json() == detail(a)
    assert client.get("/api/v1/nodes/z").json() == detail(z)
    assert client.get("/api/v1/nodes/deep").status_code == 404
    assert row_without_times(sources(client)["deep.json"]) == {
        "path": "deep.json",
        "node_id": None,
        "state": "error",
        "error": f"{deep_where()}: {TOO_DEEP}",
        "content_hash": sha256((assets / "deep.json").read_bytes()),
        "serving_last_good": False,
    }
    health = client.get("/health").json()
    assert (health["status"], health["ready"], health["files_in_error"], health["last_reconcile_error"]) == (
        "healthy", True, 1, None,
    )
    assert metric(client, "droq_registry_files_in_error") == 1.0
    assert metric(client, "droq_registry_nodes") == 2.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "droq_registry.reconcile" and r.levelname == "WARNING"]
    assert warnings == [f"deep.json: {deep_where()}: {TOO_DEEP}"]


def test_a_batch_with_a_too_deep_edit_applies_every_good_file_in_it_and_keeps_the_last_good_node(
    assets: Path, client_for: Client
) -> None:
    a, b = node_doc("a"), node_doc("b")
    write_json(assets / "a.json", a)
    write_json(assets / "b.json", b)
    client = client_for(assets)
    registry = OnTheWriter(client)

    (assets / "a.json").write_bytes(deep_bytes("a", MAX_DEPTH + 1))
    b2, c = node_doc("b", name="B, renamed"), node_doc("c")
    write_json(assets / "b.json", b2)
    write_json(assets / "c.json", c)
    result = registry.reconcile()  # one pass sees all three

    assert (result.revision, result.counts) == (2, {"added": 1, "updated": 1, "removed": 0, "errors": 1})
    assert client.get("/api/v1/nodes/a").json() == detail(a)  # the last good a
    assert client.get("/api/v1/nodes/b").json() == detail(b2)
    assert client.get("/api/v1/nodes/c").json() == detail(c)
    row = sources(client)["a.json"]
    assert (row["state"], row["error"], row["serving_last_good"]) == ("error", f"{deep_where()}: {TOO_DEEP}", True)
    assert changes(client, 1) == [
        (2, "added", "c", "c.json"),
        (2, "updated", "b", "b.json"),
        (2, "error", "a", "a.json"),
    ]


def test_the_watcher_applies_the_good_files_written_with_a_too_deep_one(assets: Path, client_for: Client) -> None:
    a = node_doc("a")
    write_json(assets / "a.json", a)
    client = client_for(assets, reload=True)
    wait_until(lambda: client.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)

    (assets / "a.json").write_bytes(deep_bytes("a", 500))
    fresh = [node_doc(f"n{i}") for i in range(5)]
    for document in fresh:
        write_json(assets / f"{document['node_id']}.json", document)

    wait_until(lambda: all(client.get(f"/api/v1/nodes/{d['node_id']}").status_code == 200 for d in fresh), DEADLINE)
    wait_until(lambda: sources(client)["a.json"]["state"] == "error", DEADLINE)
    assert [client.get(f"/api/v1/nodes/{d['node_id']}").json() for d in fresh] == [detail(d) for d in fresh]
    assert client.get("/api/v1/nodes/a").json() == detail(a)
    assert (sources(client)["a.json"]["error"], client.get("/health").json()["last_reconcile_error"]) == (
        f"{deep_where()}: {TOO_DEEP}", None,
    )


def test_a_node_nested_to_the_limit_is_served_by_every_endpoint_and_after_a_restart(
    assets: Path, tmp_path: Path, client_for: Client
) -> None:
    # the deepest node the parser lets through, in an extra field and in a component's info
    document = node_doc(
        "deep",
        components={"Deep": {"path": "pkg.deep", "display_name": "Deep", "icon": nested(MAX_DEPTH - 3)}},
        extra={"a": {"b": nested(MAX_DEPTH - 3)}},
    )
    write_json(assets / "deep.json", document)
    first = open_client(make_settings(assets))
    client = first

    expected = detail(document)
    body = client.get("/api/v1/nodes/deep")
    assert body.json() == expected
    assert client.get("/api/v1/components/Deep/node").json() == {**expected, "module_path": "pkg.deep"}
    assert client.get("/api/v1/components/Deep/nodes").json() == {
        "component_class": "Deep",
        "nodes": [{"node": expected["node"], "module_path": "pkg.deep"}],
        "total_nodes": 1,
    }
    assert client.get("/api/v1/nodes?status=all").json() == {
        "nodes": [{"metadata": expected["node"], "components_count": 1}],
        "total_nodes": 1,
    }
    assert client.get("/api/v1/nodes/deep/components").json() == {
        "node_id": "deep",
        "components": [
            {"display_name": "Deep", "icon": nested(MAX_DEPTH - 3), "component_class": "Deep", "module_path": "pkg.deep"}
        ],
        "total_components": 1,
    }
    assert client.get("/api/v1/search?q=deep").json()["results"][0]["node_id"] == "deep"
    assert sources(client)["deep.json"]["state"] == "ok"
    assert orjson.loads(stored_column(tmp_path / "registry.db", "nodes", "metadata_json")) == {
        "extra": document["extra"]
    }
    first.__exit__(None, None, None)

    again = open_client(make_settings(assets))  # a restart reads it back from the database
    try:
        assert again.get("/api/v1/nodes/deep").content == body.content
    finally:
        again.__exit__(None, None, None)


def stored_column(db: Path, table: str, column: str) -> Any:
    """The one value of `column` in `table`, read with a separate read-only connection."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        values = conn.execute(f"SELECT {column} FROM {table}").fetchall()
    assert len(values) == 1, values
    return values[0][0]


def test_a_components_file_nested_too_deep_is_the_error_of_its_node_file(assets: Path, client_for: Client) -> None:
    (assets.parent / "components").mkdir()
    write_json(assets.parent / "components" / "c.json", {"Foo": {"path": "a.b", "icon": nested(MAX_DEPTH - 2)}})
    write_json(assets / "split.json", {"node_id": "split", "name": "S", "components_json_path": "../components/c.json"})
    write_json(assets / "good.json", node_doc("good"))
    client = client_for(assets)

    assert {p: (r["state"], r["error"]) for p, r in sources(client).items()} == {
        "good.json": ("ok", None),
        "split.json": (
            "error",
            "components_json_path: ../components/c.json: Foo.icon" + "[0]" * (MAX_DEPTH - 3) + f": {TOO_DEEP}",
        ),
    }


def test_a_components_path_that_could_break_a_line_is_shown_escaped(assets: Path, client_for: Client) -> None:
    write_json(assets / "odd.json", {"node_id": "odd", "name": "O", "components_json_path": "no\nsuch\u2028.json"})
    client = client_for(assets)
    assert sources(client)["odd.json"]["error"] == "components_json_path: no\\nsuch\\u2028.json: no such file"


@pytest.mark.parametrize("split", [False, True], ids=["components", "components_json_path"])
def test_a_node_the_encoder_refuses_is_that_files_error_before_any_transaction(
    assets: Path, client_for: Client, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    # The depth limit keeps every real file within what orjson encodes; should a library
    # limit ever be reached anyway, the file is refused as the encoder put it.
    encode = nodebytes.encode

    def refusing(node: Any) -> bytes:
        if node.node_id == "x":
            raise orjson.JSONEncodeError("Recursion limit reached")
        return encode(node)

    monkeypatch.setattr(nodebytes, "encode", refusing)
    if split:
        write_json(assets.parent / "c.json", {"X": "pkg.x"})
        write_json(assets / "x.json", {"node_id": "x", "name": "X", "components_json_path": "../c.json"})
    else:
        write_json(assets / "x.json", node_doc("x"))
    write_json(assets / "y.json", node_doc("y"))
    client = client_for(assets)
    assert {p: (r["state"], r["error"]) for p, r in sources(client).items()} == {
        "x.json": ("error", "cannot be stored: Recursion limit reached"),
        "y.json": ("ok", None),
    }


def test_the_largest_node_a_file_can_make_fits_in_a_sqlite_row() -> None:
    # The store keeps a node's canonical JSON; SQLite refuses a value longer than its
    # length limit. A file is at most MAX_FILE_BYTES, and the encoding grows it most when
    # it is made of numbers orjson writes longer ("9E15" -> "9000000000000000.0"): measure
    # that ratio, and check the limit leaves room for it, so no row is ever refused.
    numbers = b",".join([b"9E15"] * 10_000)
    data = orjson.dumps(node_doc("n")).replace(b'"components"', b'"x":[' + numbers + b'],"components"')
    document = nodefile.parse_document(data, "n.json", node_schema())
    ratio = len(nodefile.canonical(nodefile.build_node(document, document["components"]), "n.json")) / len(data)
    with closing(sqlite3.connect(":memory:")) as conn:
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    assert 3.5 < ratio < 4
    assert limit > 4 * nodefile.MAX_FILE_BYTES


def test_an_unexpected_failure_while_building_one_node_is_that_files_error(
    assets: Path, client_for: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real file makes the builder fail (that would be a bug to fix): inject one at its seam.
    build = nodefile.build_node

    def failing(document: dict[str, Any], components: dict[str, Any]) -> Any:
        if document["node_id"] == "boom":
            raise RuntimeError("something no rule foresaw")
        return build(document, components)

    monkeypatch.setattr(nodefile, "build_node", failing)
    write_json(assets / "a.json", node_doc("a"))
    write_json(assets / "boom.json", node_doc("boom"))
    client = client_for(assets)

    assert {p: (r["state"], r["error"]) for p, r in sources(client).items()} == {
        "a.json": ("ok", None),
        "boom.json": ("error", "cannot be used: unexpected RuntimeError: something no rule foresaw"),
    }
    assert client.get("/ready").status_code == 200


# --- 2. a transient error is not a file error ------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True], ids=["full-scan", "named-by-the-watcher"])
def test_out_of_descriptors_fails_the_pass_changing_nothing_and_the_next_pass_commits(
    assets: Path, registry_for: Callable[[Path], Registry], targeted: bool
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    registry = registry_for(assets)
    assert registry.reconcile().revision == 1
    a2 = write_json(assets / "a.json", node_doc("a", name="A, edited"))
    b = write_json(assets / "b.json", node_doc("b"))
    before = committed(registry)
    named = [str(b)] if targeted else None

    with descriptors_used_up(), pytest.raises(TransientError) as info:
        registry.reconcile(named)

    # the scan opens the folder; a named pass goes straight to the file
    assert str(info.value) == f"{b if targeted else assets}: Too many open files"
    assert committed(registry) == before
    assert (registry.status.reconciles["failed"], registry.status.last_error) == (
        1, f"TransientError: {info.value}",
    )
    result = registry.reconcile()
    assert (result.revision, result.counts) == (2, {"added": 1, "updated": 1, "removed": 0, "errors": 0})
    assert {p: (s.state, s.content_hash) for p, s in registry.sources.items()} == {
        "a.json": ("ok", sha256(a2.read_bytes())),
        "b.json": ("ok", sha256(b.read_bytes())),
    }
    assert registry.status.last_error is None


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)), id="EAGAIN"),
        pytest.param(OSError(errno.EINTR, os.strerror(errno.EINTR)), id="EINTR"),
        pytest.param(OSError(errno.ENOMEM, os.strerror(errno.ENOMEM)), id="ENOMEM"),
        pytest.param(OSError(errno.ENFILE, os.strerror(errno.ENFILE)), id="ENFILE"),
        pytest.param(MemoryError(), id="MemoryError"),
    ],
)
def test_a_read_that_fails_for_want_of_a_resource_changes_no_file_state(
    assets: Path, registry_for: Callable[[Path], Registry], monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    # EAGAIN, EINTR (Python retries it unless a handler raises) and ENOMEM cannot be caused
    # on demand: inject them where a node file's bytes are read.
    write_json(assets / "a.json", node_doc("a"))
    registry = registry_for(assets)
    registry.reconcile()
    write_json(assets / "a.json", node_doc("a", name="A, edited"))
    before = committed(registry)
    read = os.read

    def failing(fd: int, n: int) -> bytes:
        raise fault

    with monkeypatch.context() as patch:
        patch.setattr(os, "read", failing)
        with pytest.raises(TransientError) as info:
            registry.reconcile()
    assert os.read is read
    why = "out of memory" if isinstance(fault, MemoryError) else os.strerror(fault.errno)  # type: ignore[attr-defined]
    assert str(info.value) == f"{assets / 'a.json'}: {why}"
    assert committed(registry) == before
    assert registry.reconcile().counts == {"added": 0, "updated": 1, "removed": 0, "errors": 0}


def test_a_server_out_of_descriptors_never_commits_a_good_file_as_in_error(
    assets: Path, tmp_path: Path, server: Callable[..., ServerProcess]
) -> None:
    write_json(assets / "a.json", node_doc("a"))
    db, log_path = tmp_path / "served.db", tmp_path / "server.log"
    srv = server(server_env(assets, db, REGISTRY_RESYNC_SECONDS="1", LOG_FORMAT="text"), log_path, clean=True)
    proc, http = srv.proc, srv.http
    wait_until(lambda: http.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)
    # Clients cannot use up the server's descriptors (its connection cap keeps a reserve),
    # so take them away from the running process: a soft limit at what it holds now.
    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{proc.pid}/fd")), hard))
    try:
        write_json(assets / "b.json", node_doc("b"))
        # listing the folder or reading b.json fails (whichever pass comes first): a failed
        # pass, never the file's error
        wait_until(lambda: re.search(r"TransientError: .*Too many open files", log_path.read_text()), DEADLINE)
        stored = query(db, "SELECT path, state, error FROM sources ORDER BY path")
        assert stored in ([("a.json", "ok", None)], [("a.json", "ok", None), ("b.json", "ok", None)])
    finally:
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    # descriptors come back: a later pass (the retry or the rescan) commits b.json, never in error
    wait_until(lambda: http.get("/api/v1/nodes/b").status_code == 200, DEADLINE)
    assert http.get("/api/v1/nodes/b").json() == detail(node_doc("b"))
    kinds = [(c["kind"], c["source"]) for c in http.get("/api/v1/changes?since=0").json()["changes"]]
    assert kinds == [("added", "a.json"), ("added", "b.json")]
    assert http.get("/api/v1/sources").json()["errors"] == 0


#: Root reads any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH). A service started with those
#: capabilities dropped stays uid 0, so it still enters root's folders (the interpreter lives
#: under /root), but a file's mode now applies to it as to anyone.
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_file_the_service_may_not_read_is_in_error_keeping_its_last_good_node(
    assets: Path, tmp_path: Path, server: Callable[..., ServerProcess]
) -> None:
    a = node_doc("a")
    locked = write_json(assets / "a.json", a)
    write_json(assets / "b.json", node_doc("b"))
    log_path = tmp_path / "server.log"
    env = server_env(assets, tmp_path / "r.db", REGISTRY_RESYNC_SECONDS="60", LOG_FORMAT="text")
    srv = server(env, log_path, prefix=WITHOUT_DAC_OVERRIDE, clean=True)
    http = srv.http
    wait_until(lambda: http.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)
    locked.chmod(0o000)

    def row() -> dict[str, Any]:
        return sources(http)["a.json"]

    wait_until(lambda: row()["state"] == "error", DEADLINE)
    assert (row()["error"], row()["serving_last_good"]) == ("cannot read the file: Permission denied", True)
    assert http.get("/api/v1/nodes/a").json() == detail(a)
    locked.chmod(0o644)
    wait_until(lambda: row()["state"] == "ok", DEADLINE)
    assert [c["kind"] for c in http.get("/api/v1/changes?since=1").json()["changes"]] == ["error", "recovered"]
    srv.stop()
    assert "Traceback" not in log_path.read_text()


# --- 3. names that are not regular files -----------------------------------------------------


def make_unix_socket(path: Path) -> None:
    """A socket at `path` (bound at a short name first: socket paths are limited to 107 bytes)."""
    short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(short))
    os.replace(short, path)
    short.parent.rmdir()


def create(kind: str, path: Path, final_name: str) -> None:
    """Something that is not a regular file at `path`, as it will be once renamed to
    `final_name` in the same folder (a loop must lead back to its final name)."""
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        make_unix_socket(path)
    elif kind == "symlink-loop":
        os.symlink(final_name, path)
    elif kind == "symlink-to-directory":
        (path.parent / "a-folder").mkdir(exist_ok=True)
        os.symlink("a-folder", path)


def replace_with(kind: str, path: Path) -> None:
    """The node file at `path` removed and something that is not a regular file put there."""
    path.unlink()
    create(kind, path, path.name)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()


NOT_REGULAR = [
    pytest.param("directory", "not a regular file (a directory)", id="directory"),
    pytest.param("fifo", "not a regular file (a named pipe)", id="fifo"),
    pytest.param("socket", "not a regular file (a socket)", id="socket"),
    pytest.param("symlink-loop", "not a regular file (a symbolic link loop)", id="symlink-loop"),
    pytest.param("symlink-to-directory", "not a regular file (a directory)", id="symlink-to-directory"),
]


@pytest.mark.parametrize(("kind", "reason"), NOT_REGULAR)
def test_a_node_file_replaced_by_something_else_is_in_error_and_keeps_its_last_good_node(
    assets: Path, client_for: Client, kind: str, reason: str
) -> None:
    a1, b = node_doc("a"), node_doc("b")
    path = write_json(assets / "a.json", a1)
    write_json(assets / "b.json", b)
    client = client_for(assets)
    registry = OnTheWriter(client)

    replace_with(kind, path)
    assert registry.reconcile().revision == 2
    row = sources(client)["a.json"]
    assert (row["state"], row["error"], row["content_hash"], row["serving_last_good"]) == ("error", reason, None, True)
    assert client.get("/api/v1/nodes/a").json() == detail(a1)
    assert client.get("/api/v1/nodes/b").json() == detail(b)
    assert registry.reconcile().changed is False  # looked at again, nothing new to say

    remove(path)
    a2 = node_doc("a", name="A again")
    write_json(path, a2)
    assert registry.reconcile().revision == 3
    assert client.get("/api/v1/nodes/a").json() == detail(a2)
    assert sources(client)["a.json"]["state"] == "ok"

    replace_with(kind, path)
    registry.reconcile()
    remove(path)  # the name goes: so does its node
    assert registry.reconcile().revision == 5
    assert client.get("/api/v1/nodes/a").status_code == 404
    assert list(sources(client)) == ["b.json"]
    assert changes(client, 1) == [
        (2, "error", "a", "a.json"),
        (3, "updated", "a", "a.json"),
        (3, "recovered", "a", "a.json"),
        (4, "error", "a", "a.json"),
        (5, "removed", "a", "a.json"),
    ]


@pytest.mark.parametrize(("kind", "reason"), [p for p in NOT_REGULAR if p.id != "directory"])
def test_the_watcher_sees_a_node_file_atomically_replaced_by_something_else(
    assets: Path, client_for: Client, kind: str, reason: str
) -> None:
    a1 = node_doc("a")
    path = write_json(assets / "a.json", a1)
    client = client_for(assets, reload=True)
    wait_until(lambda: client.get("/health").json()["watcher"]["state"] == "watching", DEADLINE)

    staged = assets / ".staged"
    create(kind, staged, path.name)
    os.replace(staged, path)  # in one step: no moment without a.json

    wait_until(lambda: sources(client)["a.json"]["state"] == "error", DEADLINE)
    assert (sources(client)["a.json"]["error"], sources(client)["a.json"]["serving_last_good"]) == (reason, True)
    assert client.get("/api/v1/nodes/a").json() == detail(a1)

    a2 = node_doc("a", name="A again")
    write_json(staged, a2)
    os.replace(staged, path)
    wait_until(lambda: client.get("/api/v1/nodes/a").json() == detail(a2), DEADLINE)
    assert sources(client)["a.json"]["state"] == "ok"


def test_a_symlink_loop_fixed_elsewhere_is_seen_on_the_next_pass(assets: Path, client_for: Client) -> None:
    write_json(assets / "b.json", node_doc("b"))
    os.symlink("hop.lnk", assets / "a.json")
    os.symlink("a.json", assets / "hop.lnk")  # a.json -> hop.lnk -> a.json
    client = client_for(assets)
    registry = OnTheWriter(client)
    assert sources(client)["a.json"]["error"] == "not a regular file (a symbolic link loop)"

    # a.json itself does not change: only the link it leads to
    target = write_json(assets.parent / "real-a.json", node_doc("a"))
    os.unlink(assets / "hop.lnk")
    os.symlink(target, assets / "hop.lnk")
    registry.reconcile()
    assert client.get("/api/v1/nodes/a").json() == detail(node_doc("a"))
    assert sources(client)["a.json"]["state"] == "ok"


def test_a_dangling_symlink_is_a_removal_and_the_node_returns_with_its_target(
    assets: Path, tmp_path: Path, client_for: Client
) -> None:
    (tmp_path / "configmap").mkdir()
    a = write_json(tmp_path / "configmap" / "a.json", node_doc("a"))
    os.symlink(a, assets / "a.json")
    write_json(assets / "b.json", node_doc("b"))
    client = client_for(assets)
    registry = OnTheWriter(client)
    assert client.get("/api/v1/nodes/a").json() == detail(node_doc("a"))

    # the moment of a ConfigMap swap: the link is there, its target not (yet)
    a.rename(tmp_path / "configmap" / "a.json.old")
    assert registry.reconcile().counts == {"added": 0, "updated": 0, "removed": 1, "errors": 0}
    assert client.get("/api/v1/nodes/a").status_code == 404
    assert list(sources(client)) == ["b.json"]
    assert client.get("/health").json()["files_in_error"] == 0

    (tmp_path / "configmap" / "a.json.old").rename(a)
    assert registry.reconcile().counts == {"added": 1, "updated": 0, "removed": 0, "errors": 0}
    assert client.get("/api/v1/nodes/a").json() == detail(node_doc("a"))


# --- validate: the same rules, never a traceback ---------------------------------------------


def run_validate(*args: str) -> tuple[int, str, str]:
    """`droq-registry validate ARGS` in this process (`cli.main`), with what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["validate", *args])
    return code, out.getvalue(), err.getvalue()


def test_validate_out_of_descriptors_decides_nothing_and_exits_2_with_one_line(assets: Path) -> None:
    write_json(assets / "a.json", node_doc("a"))
    with descriptors_used_up():
        code, out, err = run_validate(str(assets))
    schema_path = make_settings(assets).schema_path
    assert (code, out, err) == (2, "", f"droq-registry: cannot check the files now: {schema_path}: Too many open files\n")


def test_validate_when_a_read_fails_for_want_of_a_resource_exits_2_naming_the_file(
    assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(assets / "a.json", node_doc("a"))

    def would_block(fd: int, n: int) -> bytes:
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "read", would_block)  # where the node file's bytes are read
    code, out, err = run_validate(str(assets))
    monkeypatch.undo()
    assert (code, out, err) == (
        2, "", f"droq-registry: cannot check the files now: {assets / 'a.json'}: {os.strerror(errno.EAGAIN)}\n",
    )


# --- 4. hostile node files, generated (hypothesis) -------------------------------------------
#
# Each example is a folder with two good node files and one hostile one, reconciled by the
# real Registry into a real SQLite store: first a valid version of the hostile file, then
# the hostile bytes. Whatever the bytes, the pass commits, the good files are served, the
# hostile file is served or refused (with a one-line reason, keeping its last good node),
# the database holds what memory holds, and `validate` says the same of every file.

GOOD = {
    "good-a.json": node_doc("good-a", components={"GoodA": "pkg.good_a"}),
    "good-z.json": node_doc("good-z", components={"Shared": {"path": "pkg.z", "display_name": "Z"}}),
}
HOSTILE = "hostile.json"  # sorts after the good files: a clash of node_id leaves them the owners
DEEP = "__deep__"  # stands in the document for a nesting no encoder writes
SCHEMA_FIELDS = (*CORE_FIELDS, "components", "components_json_path")
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "description": st.text(max_size=20),
    "source_code_location": st.none() | st.text(max_size=20),
    "docker_image": st.none() | st.text(max_size=20),
    "api_url": st.none() | st.text(max_size=20),
    "ip_address": st.none() | st.text(max_size=20),
    "deployment_location": st.sampled_from(["local", "cloud", "k8s"]),
    "status": st.sampled_from(["active", "inactive", "deploying"]),
    "priority": st.integers(-(10**9), 10**9) | st.sampled_from([2.0, -0.0, 1e9]),
}

odd_text = st.one_of(
    st.text(max_size=12),  # any code point but lone surrogates: NULs, controls, RTL marks, emoji
    st.sampled_from(["", "\x00", "a\x00b", "\u202e\u2028", "\ufeff", "line\nbreak", "😀", '"\\']),
    st.sampled_from([1, 1_000, 100_000]).map(lambda n: "é" * n),  # huge strings
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)


def containers_of(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3)


json_values = st.recursive(scalars, containers_of, max_leaves=8)
extra_keys = odd_text.filter(lambda k: k not in SCHEMA_FIELDS and k != "supported_components")
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
module_paths = st.lists(identifiers, min_size=1, max_size=3).map(".".join)
component_specs = module_paths | st.fixed_dictionaries(
    {"path": module_paths}, optional={"description": odd_text, "display_name": odd_text, "icon": json_values}
)
node_ids = st.sampled_from(["hostile", "good-a", "good-z", "h.1_x-2"]) | st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True
)


def deep_text(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def write(document: dict[str, Any], writer: str) -> bytes:
    """The document as people's tools write it."""
    if writer == "orjson":
        try:
            return orjson.dumps(document)
        except orjson.JSONEncodeError:  # integers past 64 bits: stdlib json writes them
            writer = "ascii"
    if writer == "ascii":
        return json.dumps(document).encode()
    if writer == "indented-bom-crlf":
        return codecs.BOM_UTF8 + json.dumps(document, ensure_ascii=False, indent=2).replace("\n", "\r\n").encode()
    assert writer == "duplicate-keys"  # a key written twice: the last one counts, as in every parser
    text = json.dumps(document, ensure_ascii=False)
    return ('{"node_id": "first-of-two", "name": 0, ' + text[1:]).encode()


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[bytes, str]:
    """(the bytes of a node file, what was done to it): "valid", "field", "deep" or "bytes"."""
    document: dict[str, Any] = {"node_id": draw(node_ids), "name": draw(odd_text)}
    document["components"] = draw(st.dictionaries(identifiers, component_specs, max_size=4))
    for key in draw(st.sets(st.sampled_from(sorted(VALID_FIELDS)))):
        document[key] = draw(VALID_FIELDS[key])
    document.update(draw(st.dictionaries(extra_keys, json_values, max_size=4)))
    how = draw(st.sampled_from(["valid", "field", "deep", "bytes"]))
    deep = ""
    if how == "valid" and draw(st.booleans()):  # as deep as allowed, in an extra field
        document["deepest"] = nested(MAX_DEPTH - 1)
    elif how == "field":
        document[draw(st.sampled_from(SCHEMA_FIELDS))] = draw(json_values)
    elif how == "deep":
        deep = deep_text(draw(st.integers(MAX_DEPTH, MAX_DEPTH + 3) | st.integers(1024, 1100)))
        if document["components"] and draw(st.booleans()):
            cls = min(document["components"])
            document["components"][cls] = {"path": "pkg.deep", "icon": DEEP}
        else:
            document["deep_field"] = DEEP
    data = write(document, draw(st.sampled_from(["orjson", "ascii", "indented-bom-crlf", "duplicate-keys"])))
    data = data.replace(b'"' + DEEP.encode() + b'"', deep.encode())
    if how == "bytes":
        data = draw(st.sampled_from(BYTE_FAULTS))(data, draw(st.integers(0, len(data))))
    return data, how


BYTE_FAULTS: list[Callable[[bytes, int], bytes]] = [
    lambda data, at: data[:at] + b"\xff" + data[at:],  # invalid UTF-8
    lambda data, at: data[:at] + b"\xed\xa0\x80" + data[at:],  # a surrogate, UTF-8 encoded
    lambda data, at: data[:at] + b"\x00" + data[at:],  # a NUL
    lambda data, at: data[:at],  # truncated
    lambda data, at: data.replace(b'"name":', b'"name": "\\ud800", "n":', 1),  # an escaped lone surrogate
    lambda data, at: data.decode("utf-8", "replace").encode("utf-16"),
    lambda data, at: codecs.BOM_UTF8 * 2 + data,
    lambda data, at: data.replace(b"{", b'{"big": 1' + b"0" * 400 + b", ", 1),  # a huge integer
    lambda data, at: data.replace(b"{", b'{"far": 1e400, ', 1),  # a number past any float
    lambda data, at: data.replace(b"{", b'{"priority": 1e9999999999, ', 1),
]


def without_bom(data: bytes) -> bytes:
    return data.removeprefix(codecs.BOM_UTF8)


def served(registry: Registry, node_id: str) -> dict[str, Any] | None:
    view = registry.snapshot.nodes.get(node_id)
    return None if view is None else {"source": view.source, "node": orjson.loads(view.node_json)}


@functools.cache
def node_schema() -> Schema:
    """The service's schema, compiled once for all examples (validate compiles its own)."""
    return Schema.load(make_settings(Path("unused")).schema_path)


def check_hostile_file(folder: Path, data: bytes, how: str) -> tuple[str, list[str]]:
    """Reconcile `data` as the hostile file among the good ones; check every invariant.
    Returns the hostile file's state and the lines `validate` must print for the folder."""
    for name, document in GOOD.items():
        write_json(folder / name, document)
    write_json(folder / HOSTILE, node_doc("hostile"))
    store = Store.open(folder.parent / "registry.db")
    try:
        config = make_settings(folder, db_path=folder.parent / "registry.db")
        registry = Registry(config, store, node_schema())
        registry.reconcile()
        (folder / HOSTILE).write_bytes(data)
        registry.reconcile()  # never raises: one file can only ever cost itself

        for document in GOOD.values():  # the good files are always served, exactly
            assert served(registry, document["node_id"]) == {
                "source": f"{document['node_id']}.json", "node": expected_node(document),
            }
        source = registry.sources[HOSTILE]
        state, error = source.state, source.error
        if state == "ok":
            assert served(registry, source.node_id or "") == {
                "source": HOSTILE, "node": expected_node(orjson.loads(without_bom(data))),
            }
            assert how in ("valid", "field", "bytes")
        elif state == "conflict":
            assert source.node_id in ("good-a", "good-z")
            assert error == conflict_message(source.node_id or "", f"{source.node_id}.json")
            assert how in ("valid", "field", "bytes")
        else:
            assert error is not None
            assert how != "valid", error
            assert error.isprintable() and len(error) < 2100, error  # one line, whatever the file holds
            assert not error.startswith("cannot be used: unexpected"), error  # every refusal has its rule
            if how == "deep":
                assert re.search(f"{TOO_DEEP}( at line \\d+ column \\d+)?$", error), error
            assert served(registry, "hostile") == {"source": HOSTILE, "node": expected_node(node_doc("hostile"))}
        # what memory serves is what the database committed
        loaded = Store.open(folder.parent / "registry.db")
        try:
            reloaded = loaded.load()
            assert (reloaded.revision, reloaded.sources, reloaded.served) == (
                registry.revision, registry.sources, registry.served,
            )
        finally:
            loaded.close()
    finally:
        store.close()

    lines = [f"{folder / name}: ok ({document['node_id']})" for name, document in GOOD.items()]
    if state == "ok":
        lines.append(f"{folder / HOSTILE}: ok ({source.node_id})")
    elif state == "conflict":
        lines.append(f"{folder / HOSTILE}: {conflict_message(source.node_id or '', str(folder / f'{source.node_id}.json'))}")
    else:
        lines.append(f"{folder / HOSTILE}: {error}")
    return state, lines


@settings(max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "150")), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_files())
def test_a_hostile_node_file_is_served_or_refused_alone_and_validate_agrees(example: tuple[bytes, str]) -> None:
    data, how = example
    with tempfile.TemporaryDirectory(prefix="droq-hostile-") as tmp:
        folder = Path(tmp) / "nodes"
        folder.mkdir()
        state, lines = check_hostile_file(folder, data, how)
        code, out, err = run_validate(str(folder))
    assert (code, out.splitlines()) == (0 if state == "ok" else 1, lines)
    assert err == ("" if state == "ok" else "1 of 3 file(s) refused\n")


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_files())
def test_validate_as_a_process_agrees_with_the_service_on_a_hostile_file(example: tuple[bytes, str]) -> None:
    data, how = example
    with tempfile.TemporaryDirectory(prefix="droq-hostile-") as tmp:
        folder = Path(tmp) / "nodes"
        folder.mkdir()
        state, lines = check_hostile_file(folder, data, how)
        result = subprocess.run(
            [sys.executable, "-m", "droq_registry", "validate", str(folder)],
            capture_output=True, timeout=60, check=False, cwd=ROOT,
        )
    assert (result.returncode, result.stdout.decode().splitlines()) == (0 if state == "ok" else 1, lines)
    assert result.stderr.decode() == ("" if state == "ok" else "1 of 3 file(s) refused\n")
