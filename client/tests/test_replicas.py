"""Replicas and fail-static: two real registries on one folder, and the cache file.

One replica is killed: the client moves to the other and misses no change made meanwhile.
With `cache_path`, a client started while every replica is down routes from the last state
it persisted, marked stale, and converges when a replica comes back.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Client, Events, Registry, node_doc, unavailable, wait_until, write_node
from droq_registry_client import ComponentNotFound, RegistryClient
from droq_registry_client.cache import CacheError, load
from test_lookups import FAST, client_view, every_class, server_view
from test_outage import _path


def test_two_replicas_one_killed_the_client_switches_and_misses_no_change(
    registry: Callable[..., Registry], make_client: Callable[..., Client]
) -> None:
    a = registry(name="a")
    b = registry(folder=a.folder, name="b")  # the same node files, its own database
    events = Events()
    client = make_client([a.url, b.url], on_state_change=events, **FAST)
    assert client.wait_synced(15)
    assert client.status().url == a.url

    a.kill()
    write_node(a.folder, "during.json", node_doc("during", {"During": "during.mod"}, priority=9,
                                                 ))
    write_node(a.folder, "math.json", node_doc("math-override", {"Multiply": "override.mul"}, priority=50))
    wait_until(lambda: _path(client, "During") == "during.mod")
    wait_until(lambda: _path(client, "Multiply") == "override.mul")
    status = client.status()
    assert (status.url, status.synced, status.stale) == (b.url, True, False)
    classes, ids = every_class(b), ["during", "math-override"]
    assert client_view(client, classes, ids) == server_view(b, classes, ids)
    kinds = events.kinds()
    assert kinds[:2] == ["synced", "stale"] and "replica_switched" in kinds and kinds[-1] == "synced"
    switched = next(c for c in events.changes if c.kind == "replica_switched")
    assert (switched.previous_url, switched.url) == (a.url, b.url)

    # B keeps being followed: a later change is seen too.
    (a.folder / "during.json").unlink()
    wait_until(lambda: _path(client, "During") is None)


def test_cache_path_routes_from_the_last_state_across_a_restart_while_every_replica_is_down(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmp_path: Path
) -> None:
    a = registry(name="a")
    b = registry(folder=a.folder, name="b")
    cache_path = tmp_path / "executor" / "registry-cache.jsonl"
    cache_path.parent.mkdir()
    first = make_client([a.url, b.url], cache_path=cache_path, **FAST)
    assert first.wait_synced(15)
    known = {cls: first.node_for(cls) for cls in every_class(a)}
    revision = first.status().revision
    first.close()  # writes the cache file a last time
    assert load(cache_path) is not None

    a.kill()
    b.kill()
    write_node(a.folder, "while-down.json", node_doc("while-down", {"WhileDown": "down.mod"}))

    events = Events()
    second = make_client([a.url, b.url], cache_path=cache_path, on_state_change=events, **FAST)
    # Answers at once from the cache, marked stale; a class added since is not known yet.
    assert {cls: second.node_for(cls) for cls in known} == known
    status = second.status()
    assert (status.stale, status.synced, status.from_cache, status.revision) == (True, False, True, revision)
    with pytest.raises(ComponentNotFound) as missing:
        second.node_for("WhileDown")
    assert missing.value.stale is True
    assert second.wait_synced(0.2) is False

    b.start()  # only B comes back
    assert second.wait_synced(15)
    assert _path(second, "WhileDown") == "down.mod"
    status = second.status()
    assert (status.url, status.stale, status.from_cache) == (b.url, False, False)
    classes = every_class(b)
    assert client_view(second, classes, ["while-down"]) == server_view(b, classes, ["while-down"])
    kinds = events.kinds()
    assert kinds[0] == "stale" and kinds[-1] == "synced" and "relisted" in kinds
    relisted = next(c for c in events.changes if c.kind == "relisted")
    assert "1 node differed" in relisted.detail
    # The cache file follows the new state.
    wait_until(lambda: _cached_ids(cache_path) == {n["metadata"]["node_id"] for n in b.get(
        "/api/v1/nodes?status=all")["nodes"]})


def test_a_damaged_cache_file_is_ignored_with_a_warning_naming_the_line(
    registry: Callable[..., Registry], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = registry()
    cache_path = tmp_path / "cache.jsonl"
    with RegistryClient(reg.url, cache_path=cache_path, **FAST) as client:
        assert client.wait_synced(15)
    lines = cache_path.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a torn line, as from a copy cut short
    cache_path.write_text("\n".join(lines) + "\n")

    with (caplog.at_level("WARNING", logger="droq_registry_client"),
          RegistryClient(reg.url, cache_path=cache_path, **FAST) as client):
        assert client.wait_synced(15)
        assert not client.status().from_cache
        assert client.node_for("Multiply") == reg.get("/api/v1/components/Multiply/node")
        wait_until(lambda: _cached_ids(cache_path) is not None)
    warnings = [r.getMessage() for r in caplog.records if "cache file" in r.getMessage()]
    assert warnings == [f"not using the cache file: {cache_path} line 3: not JSON ({_json_error(lines[2])})"]


def test_an_unwritable_cache_path_costs_only_the_cache(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = registry()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache's folder should be")
    with caplog.at_level("WARNING", logger="droq_registry_client"):
        client = make_client(reg.url, cache_path=blocker / "cache.jsonl", cache_interval=0.05, **FAST)
        assert client.wait_synced(15)
        for n in range(3):  # several changes, several failed writes: one warning
            write_node(reg.folder, "n.json", node_doc("n", {"N": f"n.v{n}"}))
            wait_until(lambda n=n: _path(client, "N") == f"n.v{n}")
    warnings = [r.getMessage() for r in caplog.records if "cache file" in r.getMessage()]
    assert warnings == [
        f"not using the cache file: {blocker / 'cache.jsonl'}: cannot be read: Not a directory",
        f"cannot write the cache file {blocker / 'cache.jsonl'}: Not a directory; lookups are not affected",
    ]
    assert client.status().synced


def test_a_full_disk_keeps_the_previous_cache_file_whole(
    registry: Callable[..., Registry], make_client: Callable[..., Client], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        reg = registry(real=False)
        write_node(reg.folder, "small.json", node_doc("small", {"Small": "small.mod"}))
        cache_path = mount / "cache.jsonl"
        with caplog.at_level("WARNING", logger="droq_registry_client"):
            client = make_client(reg.url, cache_path=cache_path, cache_interval=0.05, **FAST)
            assert client.wait_synced(15)
            wait_until(lambda: _cached_ids(cache_path) == {"small"})
            good = cache_path.read_bytes()
            # A node too big for what is left of the disk: 300 KB of components.
            big = {f"Big{i:05d}Component": f"big.module.number_{i:05d}.component" for i in range(6000)}
            write_node(reg.folder, "big.json", node_doc("big", big))
            wait_until(lambda: _path(client, "Big00001Component") == "big.module.number_00001.component")
            wait_until(lambda: any("No space left" in r.getMessage() for r in caplog.records))
        assert cache_path.read_bytes() == good  # the old file, whole
        assert sorted(os.listdir(mount)) == ["cache.jsonl"]  # no temporary file left behind
        assert client.node_for("Small")["module_path"] == "small.mod"
        assert client.status().synced
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cached_ids(path: Path) -> set[str] | None:
    try:
        cached = load(path)
    except CacheError:
        return None
    return None if cached is None else set(cached.state.nodes)


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("valid JSON")
