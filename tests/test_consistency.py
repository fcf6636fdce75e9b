"""A response, its ETag and its X-Registry-Revision describe one committed state, under load.

A writer swaps a node file between two valid versions while reader threads hammer a real
server process over keep-alive connections. Every answer must be exactly one of the two
versions, no revision may ever be seen with both, and equal bodies must carry equal ETags.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from support.expect import expected_node
from support.files import node_doc, write_json
from support.polling import wait_until
from support.server import ServerProcess, server_env

REVISION = "x-registry-revision"
SWAPS = 200
READERS = 4
NODE = "/api/v1/nodes/swap"
LOOKUP = "/api/v1/components/SwapComponent/node"

#: The two versions of swap.json: they differ in "version" and in one component's module.
VERSIONS = {
    "A": {"version": "1.0.0", "module": "pkg.v1.swap"},
    "B": {"version": "2.0.0", "module": "pkg.v2.swap"},
}


def node_file(version: str) -> dict[str, Any]:
    v = VERSIONS[version]
    return node_doc("swap", {"SwapComponent": v["module"], "Other": "pkg.other"}, version=v["version"])


def expected_bodies(version: str) -> dict[str, Any]:
    """The whole answers of NODE and LOOKUP while swap.json holds `version`."""
    v = VERSIONS[version]
    node = expected_node(node_file(version))
    components = {"Other": "pkg.other", "SwapComponent": v["module"]}
    return {
        NODE: {"node": node, "components": components},
        LOOKUP: {"node": node, "components": components, "module_path": v["module"]},
    }


def test_body_etag_and_revision_agree_while_a_file_is_swapped_200_times(
    assets: Path, server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    path = assets / "swap.json"
    write_json(path, node_file("A"))
    srv = server(
        server_env(assets, tmp_path / "registry.db", LOG_LEVEL="warning"),
        tmp_path / "server.log",
    )
    bodies = {version: expected_bodies(version) for version in VERSIONS}
    start = int(srv.get(NODE).headers[REVISION])
    assert srv.get(NODE).json() == bodies["A"][NODE]

    changes = f"/api/v1/changes?since={start}"
    # (path, status, revision, etag, body, If-None-Match sent)
    seen: list[tuple[str, int, int, str | None, bytes, str | None]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read(index: int) -> None:
        try:
            last_etag: dict[str, str] = {}
            with httpx.Client(base_url=srv.url, timeout=10) as http:
                turn = index
                while not stop.is_set():
                    target = (NODE, LOOKUP, changes)[turn % 3]
                    # Half the lookups revalidate the ETag this reader saw last.
                    sent = last_etag.get(target) if turn % 4 >= 2 and target != changes else None
                    response = http.get(target, headers={"If-None-Match": sent} if sent else {})
                    etag = response.headers.get("etag")
                    revision = int(response.headers[REVISION])
                    seen.append((target, response.status_code, revision, etag, response.content, sent))
                    if response.status_code == 200 and etag:
                        last_etag[target] = etag
                    turn += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for reader in readers:
        reader.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            for swap in range(SWAPS):
                version = "B" if swap % 2 == 0 else "A"
                staging = assets / ".swap.json.tmp"  # a dot-file: not a node file
                staging.write_bytes(orjson.dumps(node_file(version), option=orjson.OPT_INDENT_2))
                os.replace(staging, path)
                want = bodies[version][NODE]
                wait_until(lambda: http.get(NODE).json() == want)  # noqa: B023 - used at once
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)
    assert not failures, failures
    assert not any(reader.is_alive() for reader in readers)
    final = srv.get(NODE)
    last_version = "B" if SWAPS % 2 else "A"
    assert (final.json(), int(final.headers[REVISION])) == (bodies[last_version][NODE], start + SWAPS)

    version_of_body: dict[str, dict[bytes, str]] = {NODE: {}, LOOKUP: {}}
    etags: dict[str, dict[str, set[str]]] = {NODE: defaultdict(set), LOOKUP: defaultdict(set)}
    unexpected: list[tuple[str, int, bytes]] = []
    for target, status, revision, etag, body, _ in seen:
        if target == changes:
            # The log up to the answer's revision: one "updated" per swap, nothing beyond it.
            log = orjson.loads(body) if status == 200 else None
            if log is None or log["revision"] != revision or [
                (c["revision"], c["kind"], c["node_id"], c["source"]) for c in log["changes"]
            ] != [(n, "updated", "swap", "swap.json") for n in range(start + 1, revision + 1)]:
                unexpected.append((target, status, body))
            continue
        if status != 200:
            continue
        parsed = orjson.loads(body)
        matches = [version for version in VERSIONS if parsed == bodies[version][target]]
        if len(matches) != 1 or etag is None:
            unexpected.append((target, status, body))
            continue
        version_of_body[target][body] = matches[0]
        etags[target][matches[0]].add(etag)
    assert not unexpected, unexpected[:5]
    # Equal bodies, equal ETags; the two versions' ETags differ.
    for target in (NODE, LOOKUP):
        assert {version: len(tags) for version, tags in etags[target].items()} == {"A": 1, "B": 1}, target
        assert etags[target]["A"] != etags[target]["B"]
    version_of_etag = {
        (target, tag): version
        for target in (NODE, LOOKUP)
        for version, tags in etags[target].items()
        for tag in tags
    }

    versions_at: dict[int, set[str]] = defaultdict(set)
    not_modified = 0
    for target, status, revision, etag, body, sent in seen:
        if target == changes:
            continue
        if status == 200:
            versions_at[revision].add(version_of_body[target][body])
        elif status == 304:
            not_modified += 1
            assert (body, etag) == (b"", sent)
            versions_at[revision].add(version_of_etag[(target, sent)])
        else:
            unexpected.append((target, status, body))
    assert not unexpected, unexpected[:5]
    assert not_modified > 0
    mixed = {revision: versions for revision, versions in versions_at.items() if len(versions) > 1}
    assert mixed == {}
    # One revision per swap: revision start + n holds A for even n, B for odd n.
    wrong = {
        revision: versions
        for revision, versions in versions_at.items()
        if versions != {"A" if (revision - start) % 2 == 0 else "B"}
    }
    assert wrong == {}
    # The readers did see the registry move (not one stale state throughout).
    assert {v for versions in versions_at.values() for v in versions} == {"A", "B"}
    assert len(versions_at) > SWAPS // 10, sorted(versions_at)
