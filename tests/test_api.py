"""The HTTP API through Starlette's TestClient, on real node files in tmp folders.

Expected answers for the real nodes are derived from the fixture files themselves, never
typed in. Every test starts the real app (lifespan, reconcile into SQLite, snapshot).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry.app import create_app
from support.expect import TIMESTAMP_FORMAT, candidates, expected_node, module_paths, sha256
from support.files import REAL_NODES, load_docs, node_doc, write_json
from support.http import make_settings, revision, sources
from support.polling import wait_until

Client = Callable[..., TestClient]

CORE = [
    "node_id",
    "name",
    "description",
    "source_code_location",
    "docker_image",
    "deployment_location",
    "api_url",
    "ip_address",
    "status",
    "priority",
]
ETAG = re.compile(r'"[0-9a-f]{32}"')


# --- expectations derived from the node files ----------------------------------------------


REAL = load_docs(REAL_NODES)


def first_pass(client: TestClient) -> None:
    """Wait until the first reconcile committed or failed (whichever comes first)."""

    def settled() -> bool:
        health = client.get("/health").json()
        return bool(health["ready"] or health["last_reconcile_error"])

    wait_until(settled)


@contextmanager
def serving(assets: Path, **overrides: Any) -> Iterator[TestClient]:
    """The app on `assets`, after its first reconcile; stopped on leaving the block."""
    with TestClient(create_app(make_settings(assets, **overrides))) as client:
        first_pass(client)
        yield client


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app on copies of the real node files, shared by the tests that only read."""
    folder = tmp_path_factory.mktemp("real") / "assets" / "nodes"
    folder.mkdir(parents=True)
    for path in sorted(REAL_NODES.glob("*.json")):
        shutil.copy(path, folder / path.name)
    with serving(folder) as client:
        assert client.get("/ready").status_code == 200
        yield client


# --- the real node files -------------------------------------------------------------------


def test_real_nodes_are_listed_by_node_id_with_their_component_counts(real_client: TestClient) -> None:
    body = real_client.get("/api/v1/nodes").json()
    assert [(n["metadata"]["node_id"], n["components_count"]) for n in body["nodes"]] == [
        (node_id, len(REAL[node_id]["components"])) for node_id in sorted(REAL)
    ]
    assert body["total_nodes"] == len(REAL)
    assert [n["metadata"] for n in body["nodes"]] == [expected_node(REAL[i]) for i in sorted(REAL)]


@pytest.mark.parametrize("node_id", sorted(REAL))
def test_real_node_detail_is_its_file_with_defaults_and_module_paths(
    node_id: str, real_client: TestClient
) -> None:
    response = real_client.get(f"/api/v1/nodes/{node_id}")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "node": expected_node(REAL[node_id]),
        "components": module_paths(REAL[node_id]["components"]),
    }
    assert list(body["node"])[: len(CORE) + 1] == [*CORE, "supported_components"]
    assert list(body["components"]) == sorted(REAL[node_id]["components"])


def test_component_shared_by_two_real_nodes_resolves_to_the_best_ranked(real_client: TestClient) -> None:
    ranked = candidates(REAL, "SaveToFileComponent")
    assert len(ranked) == 2  # the fixtures' documented two-candidate case
    client = real_client

    best = ranked[0]
    assert client.get("/api/v1/components/SaveToFileComponent/node").json() == {
        "node": expected_node(best),
        "components": module_paths(best["components"]),
        "module_path": module_paths(best["components"])["SaveToFileComponent"],
    }
    assert client.get("/api/v1/components/SaveToFileComponent/nodes").json() == {
        "component_class": "SaveToFileComponent",
        "nodes": [
            {"node": expected_node(d), "module_path": module_paths(d["components"])["SaveToFileComponent"]}
            for d in ranked
        ],
        "total_nodes": 2,
    }


def test_every_real_component_class_resolves_to_its_best_node(real_client: TestClient) -> None:
    client = real_client
    classes = sorted({cls for doc in REAL.values() for cls in doc["components"]})
    answers = {cls: client.get(f"/api/v1/components/{cls}/node").json() for cls in classes}
    assert {cls: (a["node"]["node_id"], a["module_path"]) for cls, a in answers.items()} == {
        cls: (candidates(REAL, cls)[0]["node_id"], module_paths(candidates(REAL, cls)[0]["components"])[cls])
        for cls in classes
    }


# --- one synthetic node, whole bodies ------------------------------------------------------


def test_synthetic_node_is_served_with_defaults_extras_and_core_key_order(
    assets: Path, client_for: Client
) -> None:
    write_json(
        assets / "small.json",
        {
            "version": "2.1.0",
            "name": "Small",
            "node_id": "small-node",
            "components": {"Zed": "pkg.zed", "Add": {"path": "pkg.math.add", "display_name": "Add"}},
            "author": "Droq",
            "priority": 4,
        },
    )
    client = client_for(assets)
    node = {
        "node_id": "small-node",
        "name": "Small",
        "description": "",
        "source_code_location": None,
        "docker_image": None,
        "deployment_location": "local",
        "api_url": None,
        "ip_address": None,
        "status": "active",
        "priority": 4,
        "supported_components": ["Add", "Zed"],
        "author": "Droq",
        "version": "2.1.0",
    }

    detail = client.get("/api/v1/nodes/small-node")
    assert detail.headers["content-type"] == "application/json"
    assert detail.json() == {"node": node, "components": {"Add": "pkg.math.add", "Zed": "pkg.zed"}}
    assert list(detail.json()["node"])[: len(CORE) + 1] == [*CORE, "supported_components"]

    assert client.get("/api/v1/nodes").json() == {
        "nodes": [{"metadata": node, "components_count": 2}],
        "total_nodes": 1,
    }
    assert client.get("/api/v1/components/Add/node").json() == {
        "node": node,
        "components": {"Add": "pkg.math.add", "Zed": "pkg.zed"},
        "module_path": "pkg.math.add",
    }
    assert client.get("/api/v1/components/Zed/nodes").json() == {
        "component_class": "Zed",
        "nodes": [{"node": node, "module_path": "pkg.zed"}],
        "total_nodes": 1,
    }


def test_root_health_and_ready_describe_the_service(real_assets: Path, client_for: Client) -> None:
    client = client_for(real_assets)
    version = importlib.metadata.version("droq-registry")
    assert client.get("/").json() == {
        "service": "droq-registry-service",
        "version": version,
        "description": "Registry service for mapping executor nodes to their supported components",
    }
    assert client.get("/ready").json() == {"status": "ready", "revision": 1}

    answer = client.get("/health")
    health = answer.json()
    assert TIMESTAMP_FORMAT.fullmatch(health.pop("last_reconcile_at"))
    assert isinstance(health.pop("last_reconcile_ms"), float)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", answer.headers["x-registry-epoch"])
    assert health == {
        "status": "healthy",
        "service": "droq-registry-service",
        "version": version,
        "ready": True,
        "revision": 1,
        "epoch": answer.headers["x-registry-epoch"],
        "content_hash": answer.headers["x-registry-content-hash"],
        "watcher": {"state": "off", "error": None, "restarts": 0},
        "assets_dir": str(real_assets),
        "assets_dir_present": True,
        "last_reconcile_error": None,
        "database": {"path": str(real_assets.parent.parent / "registry.db"), "state": "ok", "error": None,
                     "failing_since": None},
        "nodes": len(REAL),
        "components": sum(len(d["components"]) for d in REAL.values()),
        "files": len(REAL),
        "files_in_error": 0,
    }


# --- status filters and lookup order -------------------------------------------------------


@pytest.fixture(scope="module")
def ranked_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Nodes of every status and priority, all declaring `Comp`; file names do not sort like ids."""
    assets = tmp_path_factory.mktemp("ranked") / "assets" / "nodes"
    assets.mkdir(parents=True)
    write_json(assets / "1.json", node_doc("n-low", priority=1))
    write_json(assets / "2.json", node_doc("n-high-b", priority=5))
    write_json(
        assets / "3.json", node_doc("n-high-a", priority=5, components={"Comp": "pkg.a", "Only": "pkg.o"})
    )
    write_json(assets / "4.json", node_doc("n-negative", priority=-3))
    write_json(
        assets / "5.json",
        node_doc(
            "n-off", status="inactive", priority=100, components={"Comp": "pkg.off", "Gone": "pkg.gone"}
        ),
    )
    write_json(
        assets / "6.json",
        node_doc("n-soon", status="deploying", priority=50, components={"Comp": "pkg.soon", "Soon": "pkg.s"}),
    )
    with serving(assets) as client:
        assert client.get("/ready").status_code == 200
        yield client


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        pytest.param("", ["n-high-a", "n-high-b", "n-low", "n-negative"], id="default-active"),
        pytest.param("?status=active", ["n-high-a", "n-high-b", "n-low", "n-negative"], id="active"),
        pytest.param("?status=inactive", ["n-off"], id="inactive"),
        pytest.param("?status=deploying", ["n-soon"], id="deploying"),
        pytest.param(
            "?status=all", ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off", "n-soon"], id="all"
        ),
    ],
)
def test_status_filter_selects_nodes_sorted_by_node_id(
    query: str, ids: list[str], ranked_client: TestClient
) -> None:
    body = ranked_client.get(f"/api/v1/nodes{query}").json()
    assert [n["metadata"]["node_id"] for n in body["nodes"]] == ids
    assert body["total_nodes"] == len(ids)


@pytest.mark.parametrize(
    "status", ["", "ACTIVE", "Active", "bogus", "active ", "all,active", "%00", "é" * 500]
)
def test_unknown_status_filter_is_a_400_with_detail(status: str, ranked_client: TestClient) -> None:
    response = ranked_client.get("/api/v1/nodes", params={"status": status})
    assert response.status_code == 400
    assert response.json() == {"detail": "status must be one of active, inactive, deploying, all"}


def test_lookup_picks_highest_priority_then_smallest_node_id(ranked_client: TestClient) -> None:
    client = ranked_client
    lookup = client.get("/api/v1/components/Comp/node").json()
    assert (lookup["node"]["node_id"], lookup["module_path"]) == ("n-high-a", "pkg.a")
    assert lookup["components"] == {"Comp": "pkg.a", "Only": "pkg.o"}

    listing = client.get("/api/v1/components/Comp/nodes").json()
    assert [(n["node"]["node_id"], n["module_path"]) for n in listing["nodes"]] == [
        ("n-high-a", "pkg.a"),
        ("n-high-b", "pkg.comp"),
        ("n-low", "pkg.comp"),
        ("n-negative", "pkg.comp"),
    ]
    assert (listing["component_class"], listing["total_nodes"]) == ("Comp", 4)


def module(node_id: str) -> str:
    return node_id.replace("-", "_")


def test_a_class_many_nodes_declare_lists_every_active_one_best_first(assets: Path, client_for: Client) -> None:
    ranks = {"p0-b": 0, "p0-a": 0, "p7": 7, "p3": 3, "p3-z": 3, "p9": 9, "p5": 5}
    for node_id, priority in ranks.items():
        write_json(assets / f"{node_id}.json", node_doc(node_id, {"Everywhere": f"{module(node_id)}.mod"},
                                                                 priority=priority))
    write_json(assets / "off.json", node_doc("off", {"Everywhere": "off.mod"}, status="inactive", priority=99))
    client = client_for(assets)
    assert client.get("/api/v1/sources").json()["errors"] == 0
    best_first = ["p9", "p7", "p5", "p3", "p3-z", "p0-a", "p0-b"]
    response = client.get("/api/v1/components/Everywhere/nodes")
    assert response.status_code == 200
    assert response.json() == {
        "component_class": "Everywhere",
        "nodes": [{"node": client.get(f"/api/v1/nodes/{n}").json()["node"], "module_path": f"{module(n)}.mod"}
                  for n in best_first],
        "total_nodes": 7,
    }
    assert client.get("/api/v1/components/Everywhere/nodes",
                      headers={"If-None-Match": response.headers["etag"]}).status_code == 304


@pytest.mark.parametrize(("node_id", "component"), [("n-off", "Gone"), ("n-soon", "Soon")])
def test_inactive_and_deploying_nodes_are_not_looked_up_but_are_reachable_by_id(
    node_id: str, component: str, ranked_client: TestClient
) -> None:
    client = ranked_client
    missing = {"detail": f"Component '{component}' not found in any executor node"}
    for path in (f"/api/v1/components/{component}/node", f"/api/v1/components/{component}/nodes"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (404, missing)

    detail = client.get(f"/api/v1/nodes/{node_id}")
    assert detail.status_code == 200
    assert detail.json()["node"]["node_id"] == node_id
    assert detail.json()["components"]["Comp"] == f"pkg.{node_id.split('-')[1]}"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api/v1/nodes/no-such-node", 404, {"detail": "Node 'no-such-node' not found in registry"}),
        ("/api/v1/nodes/bad%20id", 404, {"detail": "Node 'bad id' not found in registry"}),
        (
            "/api/v1/components/NoSuch/node",
            404,
            {"detail": "Component 'NoSuch' not found in any executor node"},
        ),
        (
            "/api/v1/components/NoSuch/nodes",
            404,
            {"detail": "Component 'NoSuch' not found in any executor node"},
        ),
        (
            "/api/v1/components/no-class/node",
            404,
            {"detail": "Component 'no-class' not found in any executor node"},
        ),
        ("/nope", 404, {"detail": "Not Found"}),
        ("/api/v1", 404, {"detail": "Not Found"}),
        ("/api/v1/components/Multiply", 404, {"detail": "Not Found"}),
        ("/api/v2/nodes", 404, {"detail": "Not Found"}),
    ],
)
def test_not_found_answers_json_detail(
    path: str, status: int, body: dict[str, str], real_client: TestClient
) -> None:
    client = real_client
    response = client.get(path)
    assert (response.status_code, response.json()) == (status, body)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-registry-revision"] == str(revision(client))


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path", ["/", "/api/v1/nodes", "/api/v1/nodes/x", "/api/v1/components/X/node", "/ready"]
)
def test_wrong_method_answers_405_json(method: str, path: str, real_client: TestClient) -> None:
    client = real_client
    response = client.request(method, path)
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})
    assert sorted(response.headers["allow"].split(", ")) == ["GET", "HEAD"]
    assert response.headers["x-registry-revision"] == str(revision(client))


def test_long_path_parameter_is_shortened_in_the_message(real_client: TestClient) -> None:
    client = real_client
    long_id = "a" * 5000
    assert client.get(f"/api/v1/nodes/{long_id}").json() == {
        "detail": f"Node '{'a' * 253}...' not found in registry"
    }
    assert client.get(f"/api/v1/components/{'C' * 300}/nodes").json() == {
        "detail": f"Component '{'C' * 253}...' not found in any executor node"
    }


def test_percent_encoded_node_id_reaches_the_node(real_client: TestClient) -> None:
    node_id = min(REAL)
    encoded = "".join(f"%{b:02X}" for b in node_id.encode())
    response = real_client.get(f"/api/v1/nodes/{encoded}")
    assert response.status_code == 200
    assert response.json()["node"]["node_id"] == node_id


HOSTILE_SEGMENTS = [
    "a" * 60_000,
    "é",
    "日本語",
    "😀",
    "\u202e",
    "%00",
    "%ff",
    "%ed%a0%80",
    "%c0%af",
    "%F0%9F%98%80",
    "%",
    "%%",
    "%zz",
    "%0a",
    "%0d%0a",
    "%2F",
    "a%2Fb",
    "%5c",
    "..",
    "%2e%2e",
    "../..",
    "..%2f..%2fetc%2fpasswd",
    "~",
    "a;b",
    " ",
    "%20",
    "null",
    "__proto__",
    "-1",
    "0" * 200,
    "a" * 129,
    "A" * 256,
    "%uD800",
    "\\x00",
    "'; DROP TABLE nodes; --",
    "Multiply' OR '1'='1",
]
HOSTILE_TEMPLATES = [
    "/api/v1/nodes/{}",
    "/api/v1/components/{}/node",
    "/api/v1/components/{}/nodes",
    "/api/v1/{}",
    "/{}",
    "/api/v1/nodes/{}/extra",
]
HOSTILE_QUERIES = [
    "?status=",
    "?status",
    "?status=all&status=bogus",
    "?status=" + "x" * 60_000,
    "?status=%00",
    "?status=%ff",
    "?status=act%C4ive",
    "?%zz=1",
    "?=&=&",
    "?&&&",
    "?a=" + "%" * 1000,
    "?status[]=x",
    "?status=all#frag",
    "?" + "x=1&" * 2000,
    "?since=-1",
    "?since=99999999999999999999999",
    "?since=%ff&wait=nan",
    "?wait=1e309",
    "?wait=-0",
    "?q=" + "%25" * 300,
    "?q=%00%ff",
]
HOSTILE_BASES = [
    "/",
    "/health",
    "/ready",
    "/api/v1/nodes",
    "/api/v1/sources",
    "/api/v1/nodes/{node}",
    "/api/v1/components/{cls}/node",
    "/api/v1/components/{cls}/nodes",
    "/api/v1/nodes/{node}/components",
    "/api/v1/changes",
    "/api/v1/search",
    "/api/v1/shared-classes",
]


def test_hostile_paths_and_queries_never_answer_500(real_client: TestClient) -> None:
    client = real_client
    node = min(REAL)
    cls = min(REAL[node]["components"])
    paths = [t.format(s) for t in HOSTILE_TEMPLATES for s in HOSTILE_SEGMENTS]
    paths += [b.format(node=node, cls=cls) + q for b in HOSTILE_BASES for q in HOSTILE_QUERIES]
    rev = str(revision(client))
    bad = []
    for path in paths:
        response = client.get(path)
        ok = (
            response.status_code in (200, 400, 404, 410)
            and response.headers["content-type"] == "application/json"
            and response.headers["x-registry-revision"] == rev
            and isinstance(response.json(), dict)
            and (
                response.status_code == 200
                or set(response.json()) == {"detail"}
                # a cursor ahead of the revision is another history's: 410 with the position
                or (response.status_code == 410 and set(response.json()) == {"detail", "revision", "epoch",
                                                                             "content_hash"})
            )
        )
        if not ok:
            bad.append((path[:80], response.status_code, response.text[:120]))
    assert bad == []


# --- headers: revision, ETag, 304, HEAD ----------------------------------------------------

CACHED_PATHS = [
    "/api/v1/nodes",
    "/api/v1/nodes?status=all",
    "/api/v1/nodes/{node}",
    "/api/v1/components/{cls}/node",
    "/api/v1/components/SaveToFileComponent/nodes",
    "/api/v1/sources",
]


def real_path(template: str) -> str:
    node = min(REAL)
    return template.format(node=node, cls=min(REAL[node]["components"]))


@pytest.mark.parametrize("template", CACHED_PATHS)
def test_get_under_api_carries_a_strong_etag_and_304s_on_if_none_match(
    template: str, real_client: TestClient
) -> None:
    client = real_client
    path = real_path(template)
    first = client.get(path)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert ETAG.fullmatch(etag)
    assert first.headers["cache-control"] == "no-cache"

    again = client.get(path)
    assert (again.headers["etag"], again.content) == (etag, first.content)

    cached = client.get(path, headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == etag
    assert cached.headers["x-registry-revision"] == first.headers["x-registry-revision"]
    assert cached.headers["cache-control"] == "no-cache"

    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        assert client.get(path, headers={"If-None-Match": header}).status_code == 304, header
    for header in ('"0000"', etag.strip('"'), etag + "x", ""):
        stale = client.get(path, headers={"If-None-Match": header})
        assert (stale.status_code, stale.content) == (200, first.content), header


def test_different_answers_have_different_etags(real_client: TestClient) -> None:
    client = real_client
    paths = [real_path(t) for t in CACHED_PATHS] + [f"/api/v1/nodes/{n}" for n in sorted(REAL)]
    answers = [client.get(p) for p in paths]
    pairs = {(r.content, r.headers["etag"]) for r in answers}
    assert len(pairs) == len({body for body, _ in pairs}) == len({etag for _, etag in pairs})


def test_etag_depends_only_on_content_across_restarts(assets: Path) -> None:
    write_json(assets / "n.json", node_doc("n", components={"Comp": "pkg.v1"}))
    paths = [
        "/api/v1/nodes",
        "/api/v1/nodes/n",
        "/api/v1/components/Comp/node",
        "/api/v1/components/Comp/nodes",
    ]
    with serving(assets) as client:
        before = {p: client.get(p).headers["etag"] for p in paths}
    with serving(assets) as client:
        assert {p: client.get(p).headers["etag"] for p in paths} == before

    write_json(assets / "n.json", node_doc("n", name="Renamed", components={"Comp": "pkg.v2"}))
    with serving(assets) as client:
        for path in paths:
            response = client.get(path, headers={"If-None-Match": before[path]})
            assert response.status_code == 200, path
            assert response.headers["etag"] != before[path]
        assert client.get("/api/v1/nodes/n").json()["components"] == {"Comp": "pkg.v2"}


def test_every_response_carries_the_revision(real_client: TestClient) -> None:
    client = real_client
    rev = str(revision(client))
    etag = client.get("/api/v1/nodes").headers["etag"]
    responses = [
        client.get("/"),
        client.get("/health"),
        client.get("/ready"),
        client.get("/api/v1/nodes"),
        client.get("/api/v1/nodes", headers={"If-None-Match": etag}),
        client.get("/api/v1/nodes?status=bogus"),
        client.get(real_path("/api/v1/nodes/{node}")),
        client.get("/api/v1/nodes/nope"),
        client.get(real_path("/api/v1/components/{cls}/node")),
        client.get("/api/v1/components/Nope/nodes"),
        client.get("/api/v1/sources"),
        client.get("/no/such/path"),
        client.post("/api/v1/nodes"),
        client.head("/api/v1/nodes"),
    ]
    assert [(r.request.method, r.url.path, r.headers.get("x-registry-revision")) for r in responses] == [
        (r.request.method, r.url.path, rev) for r in responses
    ]
    assert rev == "1"


@pytest.mark.parametrize("template", ["/", "/health", "/ready", *CACHED_PATHS, "/api/v1/nodes/nope"])
def test_head_answers_like_get_without_a_body(template: str, real_client: TestClient) -> None:
    client = real_client
    path = real_path(template)
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    for name in ("content-type", "content-length", "x-registry-revision", "etag", "cache-control"):
        assert head.headers.get(name) == get.headers.get(name), name


# --- node files the folder refuses ---------------------------------------------------------

BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty.json", b"", "file is empty"),
    ("whitespace.json", b" \n\t\n", "file is empty"),
    ("truncated.json", b'{"node_id": "t"', "not valid JSON: unexpected end of data at line 1 column 16"),
    ("list.json", b"[]", "expected a JSON object, got a list"),
    ("latin1.json", b'{"node_id": "caf\xe9"}', "not valid UTF-8 at byte 16 (line 1)"),
    ("no-id.json", orjson.dumps({"name": "x", "components": {}}), 'missing required key "node_id"'),
    (
        "bad-id.json",
        orjson.dumps(node_doc("-dash")),
        (
            "node_id: expected a node id of 1-128 letters, digits, '.', '_' or '-', starting with a letter"
            ' or digit, got "-dash"'
        ),
    ),
    ("name-number.json", orjson.dumps({**node_doc("nn"), "name": 5}), "name: expected a string, got 5"),
    (
        "bad-status.json",
        orjson.dumps(node_doc("bs", status="retired")),
        'status: expected one of "active", "inactive", "deploying", got "retired"',
    ),
    (
        "bad-location.json",
        orjson.dumps(node_doc("bl", deployment_location="mars")),
        'deployment_location: expected one of "local", "cloud", "k8s", got "mars"',
    ),
    (
        "bool-priority.json",
        orjson.dumps(node_doc("bp", priority=True)),
        "priority: expected a whole number between -1000000000 and 1000000000, got true",
    ),
    (
        "float-priority.json",
        orjson.dumps(node_doc("fp", priority=0.5)),
        "priority: expected a whole number between -1000000000 and 1000000000, got 0.5",
    ),
    (
        "ip-number.json",
        orjson.dumps(node_doc("ip", ip_address=127)),
        "ip_address: expected a string or null, got 127",
    ),
    (
        "bad-module.json",
        orjson.dumps(node_doc("bm", components={"Foo": {"path": "not a path"}})),
        'components.Foo.path: expected a dotted module path, got "not a path"',
    ),
    (
        "no-path.json",
        orjson.dumps(node_doc("np", components={"Foo": {"description": "d"}})),
        'components.Foo: missing required key "path"',
    ),
    (
        "bad-class.json",
        orjson.dumps(node_doc("bc", components={"9Lives": "pkg.cat"})),
        (
            "components: expected a component class name (a Python identifier of at most 255 characters),"
            ' got "9Lives"'
        ),
    ),
    (
        "stray-description.json",
        orjson.dumps(
            node_doc("sd", components={"DFXThing": "dfx.thing", "description": "Another DFX component"})
        ),
        'components.description: expected a dotted module path, got "Another DFX component"',
    ),
    (
        "neither.json",
        orjson.dumps({"node_id": "ne", "name": "x"}),
        'missing "components" (or "components_json_path"); "components": {} declares none',
    ),
    (
        "misspelt.json",
        orjson.dumps({"node_id": "ms", "name": "x", "componets": {"A": "a.b"}}),
        (
            'missing "components" (or "components_json_path"); "components": {} declares none'
            ' (is "componets" a misspelling of "components"?)'
        ),
    ),
    (
        "both.json",
        orjson.dumps({**node_doc("bo"), "components_json_path": "../components/x.json"}),
        'give either "components" or "components_json_path", not both',
    ),
]


def test_every_refused_file_is_listed_with_its_error_while_good_files_are_served(
    assets: Path, client_for: Client
) -> None:
    good = write_json(assets / "good.json", node_doc("good")).read_bytes()
    for name, data, _ in BAD_FILES:
        (assets / name).write_bytes(data)
    client = client_for(assets)

    body = client.get("/api/v1/sources").json()
    rows = {row["path"]: row for row in body["sources"]}
    assert [row["path"] for row in body["sources"]] == sorted(rows)
    good_row = rows.pop("good.json")
    for key in ("applied_at", "updated_at"):
        assert TIMESTAMP_FORMAT.fullmatch(good_row.pop(key))
    assert good_row == {
        "path": "good.json",
        "node_id": "good",
        "state": "ok",
        "error": None,
        "content_hash": sha256(good),
        "serving_last_good": False,
    }
    for row in rows.values():
        assert TIMESTAMP_FORMAT.fullmatch(row.pop("updated_at"))
    assert rows == {
        name: {
            "path": name,
            "node_id": None,
            "state": "error",
            "error": message,
            "content_hash": sha256(data),
            "applied_at": None,
            "serving_last_good": False,
        }
        for name, data, message in BAD_FILES
    }
    assert (body["total_sources"], body["errors"]) == (len(BAD_FILES) + 1, len(BAD_FILES))

    listing = client.get("/api/v1/nodes?status=all").json()
    assert [n["metadata"]["node_id"] for n in listing["nodes"]] == ["good"]
    assert client.get("/api/v1/components/Comp/node").json()["node"]["node_id"] == "good"


def test_a_node_file_with_a_utf8_byte_order_mark_is_served(assets: Path, client_for: Client) -> None:
    (assets / "bom.json").write_bytes(b"\xef\xbb\xbf" + orjson.dumps(node_doc("bom")))
    client = client_for(assets)
    assert client.get("/api/v1/nodes/bom").json() == {
        "node": expected_node(node_doc("bom")),
        "components": {"Comp": "pkg.comp"},
    }
    assert sources(client)["bom.json"]["state"] == "ok"


def test_duplicate_node_id_is_owned_by_the_first_file_name_and_the_other_is_a_conflict(
    assets: Path, client_for: Client
) -> None:
    write_json(assets / "b-second.json", node_doc("dup", components={"Comp": "pkg.second"}, name="Second"))
    write_json(assets / "a-first.json", node_doc("dup", components={"Comp": "pkg.first"}, name="First"))
    write_json(assets / "c-third.json", node_doc("dup", name="Third"))
    client = client_for(assets)

    assert client.get("/api/v1/nodes/dup").json() == {
        "node": expected_node(node_doc("dup", components={"Comp": "pkg.first"}, name="First")),
        "components": {"Comp": "pkg.first"},
    }
    assert client.get("/api/v1/nodes").json()["total_nodes"] == 1
    rows = sources(client)
    owner_says = "node_id 'dup' is already declared by a-first.json (the file whose name sorts first owns it)"
    assert {p: (r["state"], r["node_id"], r["error"]) for p, r in rows.items()} == {
        "a-first.json": ("ok", "dup", None),
        "b-second.json": ("conflict", "dup", owner_says),
        "c-third.json": ("conflict", "dup", owner_says),
    }
    assert client.get("/api/v1/sources").json()["errors"] == 2


# --- components_json_path ------------------------------------------------------------------


def test_components_json_path_reads_a_file_in_a_sibling_folder(assets: Path, client_for: Client) -> None:
    (assets.parent / "components").mkdir()
    components = {"Foo": "pkg.foo", "Bar": {"path": "pkg.bar", "display_name": "Bar", "author": "me"}}
    write_json(assets.parent / "components" / "x.json", components)
    doc = {"node_id": "split", "name": "Split", "components_json_path": "../components/x.json"}
    node_file = write_json(assets / "split.json", doc)
    client = client_for(assets)

    assert client.get("/api/v1/nodes/split").json() == {
        "node": expected_node(doc, components),
        "components": {"Bar": "pkg.bar", "Foo": "pkg.foo"},
    }
    assert client.get("/api/v1/components/Bar/node").json()["module_path"] == "pkg.bar"
    row = sources(client)["split.json"]
    expected_hash = hashlib.sha256(node_file.read_bytes())
    expected_hash.update(b"\0" + (assets.parent / "components" / "x.json").read_bytes())
    assert (row["state"], row["error"], row["content_hash"]) == (
        "ok",
        None,
        "sha256:" + expected_hash.hexdigest(),
    )


def test_components_json_path_may_point_inside_the_assets_folder(assets: Path, client_for: Client) -> None:
    (assets / "parts").mkdir()
    write_json(assets / "parts" / "c.json", {"Here": "pkg.here"})
    write_json(assets / "here.json", {"node_id": "here", "name": "H", "components_json_path": "parts/c.json"})
    client = client_for(assets)
    assert client.get("/api/v1/nodes/here").json()["components"] == {"Here": "pkg.here"}
    assert list(sources(client)) == ["here.json"]


def test_components_json_path_problems_are_errors_of_the_node_file(
    assets: Path, tmp_path: Path, client_for: Client
) -> None:
    root = assets.parent
    (root / "components").mkdir()
    write_json(tmp_path / "outside.json", {"Foo": "pkg.foo"})
    os.symlink(tmp_path / "outside.json", root / "components" / "link-out.json")
    cases = {
        "missing.json": (
            "../components/nope.json",
            "components_json_path: ../components/nope.json: no such file",
        ),
        "escape.json": (
            "../../outside.json",
            f"components_json_path: '../../outside.json' resolves outside {root} (not allowed)",
        ),
        "absolute.json": (
            str(tmp_path / "outside.json"),
            f"components_json_path: '{tmp_path / 'outside.json'}' resolves outside {root} (not allowed)",
        ),
        "link-out.json": (
            "../components/link-out.json",
            f"components_json_path: '../components/link-out.json' resolves outside {root} (not allowed)",
        ),
        "folder.json": (
            "../components", "components_json_path: ../components: not a regular file (a directory)"
        ),
    }
    for name, (ref, _) in cases.items():
        write_json(assets / name, {"node_id": name[:-5], "name": "x", "components_json_path": ref})
    write_json(assets / "good.json", node_doc("good"))
    client = client_for(assets)

    rows = sources(client)
    assert {p: (r["state"], r["error"]) for p, r in rows.items()} == {
        "good.json": ("ok", None),
        **{name: ("error", message) for name, (_, message) in cases.items()},
    }
    assert [n["metadata"]["node_id"] for n in client.get("/api/v1/nodes?status=all").json()["nodes"]] == [
        "good"
    ]


def test_components_file_with_bad_content_is_an_error_naming_the_place(
    assets: Path, no_network: list[str]
) -> None:
    (assets.parent / "components").mkdir()
    write_json(assets.parent / "components" / "bad.json", {"Foo": {"path": "no good"}})
    write_json(
        assets / "bad.json", {"node_id": "bad", "name": "B", "components_json_path": "../components/bad.json"}
    )
    write_json(assets / "good.json", node_doc("good"))
    with serving(assets) as client:
        assert client.get("/ready").status_code == 200
        rows = sources(client)
        assert (rows["bad.json"]["state"], rows["bad.json"]["error"]) == (
            "error",
            (
                "components_json_path: ../components/bad.json: Foo.path: expected a dotted module path,"
                ' got "no good"'
            ),
        )
        assert client.get("/api/v1/nodes/good").status_code == 200
    assert no_network == []


def test_components_json_path_with_a_nul_character_is_an_error_of_that_file(assets: Path) -> None:
    write_json(assets / "nul.json", {"node_id": "nul", "name": "N", "components_json_path": "x\u0000.json"})
    write_json(assets / "good.json", node_doc("good"))
    with serving(assets) as client:
        assert client.get("/ready").status_code == 200
        assert sources(client)["nul.json"]["state"] == "error"
        assert client.get("/api/v1/nodes/good").status_code == 200


# --- which directory entries are node files ------------------------------------------------


def test_symlinked_node_file_is_followed(assets: Path, tmp_path: Path, client_for: Client) -> None:
    (tmp_path / "elsewhere").mkdir()
    target = write_json(tmp_path / "elsewhere" / "real.json", node_doc("linked", components={"L": "pkg.l"}))
    os.symlink(target, assets / "linked.json")
    os.symlink(tmp_path / "elsewhere" / "missing.json", assets / "dangling.json")
    client = client_for(assets)
    assert client.get("/api/v1/nodes/linked").json()["components"] == {"L": "pkg.l"}
    assert list(sources(client)) == ["linked.json"]
    assert sources(client)["linked.json"]["content_hash"] == sha256(target.read_bytes())


def test_only_visible_json_files_directly_in_the_folder_are_node_files(
    assets: Path, client_for: Client
) -> None:
    write_json(assets / "good.json", node_doc("good"))
    write_json(assets / ".hidden.json", node_doc("hidden"))
    write_json(assets / ".good.json.swp.json", node_doc("swap"))
    write_json(assets / "notes.txt", node_doc("text"))
    write_json(assets / "good.json.bak", node_doc("backup"))
    write_json(assets / "upper.JSON", node_doc("upper"))
    write_json(assets / "json", node_doc("bare"))
    (assets / "sub").mkdir()
    write_json(assets / "sub" / "inner.json", node_doc("inner"))
    (assets / "folder.json").mkdir()
    (assets / "..data").mkdir()
    write_json(assets / "..data" / "k8s.json", node_doc("k8s"))
    client = client_for(assets)

    # A visible *.json name that is not a regular file is a node file in error, not nothing.
    assert {p: (r["state"], r["error"]) for p, r in sources(client).items()} == {
        "folder.json": ("error", "not a regular file (a directory)"),
        "good.json": ("ok", None),
    }
    assert [n["metadata"]["node_id"] for n in client.get("/api/v1/nodes?status=all").json()["nodes"]] == [
        "good"
    ]


def test_a_file_name_that_is_not_utf8_does_not_stop_the_other_files(assets: Path) -> None:
    with open(os.fsencode(assets) + b"/caf\xe9.json", "wb") as f:
        f.write(orjson.dumps(node_doc("latin1-name")))
    write_json(assets / "good.json", node_doc("good"))
    with serving(assets) as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/api/v1/nodes/good").status_code == 200


# --- readiness -----------------------------------------------------------------------------


def test_ready_is_503_until_the_assets_folder_appears_and_loads(tmp_path: Path) -> None:
    folder = tmp_path / "assets" / "nodes"
    waiting = {"status": "starting", "detail": f"waiting for the assets folder {folder}"}
    with TestClient(create_app(make_settings(folder))) as client:
        first = client.get("/ready")
        assert first.status_code == 503
        assert first.json() in (
            waiting,
            {"status": "starting", "detail": "the first load of the node files has not committed yet"},
        )
        wait_until(lambda: client.get("/ready").json() == waiting)
        response = client.get("/ready")
        assert (response.status_code, response.headers["x-registry-revision"]) == (503, "0")
        health = client.get("/health").json()
        assert (health["status"], health["ready"], health["assets_dir_present"]) == ("degraded", False, False)

        folder.mkdir(parents=True)
        write_json(folder / "late.json", node_doc("late"))
        wait_until(lambda: client.get("/ready").status_code == 200)
        assert client.get("/ready").json() == {"status": "ready", "revision": 1}
        assert client.get("/api/v1/nodes/late").status_code == 200


def test_a_missing_assets_folder_is_one_warning_not_an_error_per_poll(tmp_path: Path) -> None:
    folder = tmp_path / "assets" / "nodes"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("droq_registry.reconcile")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with TestClient(create_app(make_settings(folder))) as client:
            wait_until(lambda: client.get("/health").json()["assets_dir_present"] is False)
            folder.mkdir(parents=True)
            wait_until(lambda: client.get("/ready").status_code == 200)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    assert [r.getMessage() for r in records if r.levelno == logging.WARNING] == [
        f"assets folder {folder} is missing; serving the last state and waiting for it"
    ]


# --- work that grows with the registry runs off the event loop -----------------------------


@pytest.mark.parametrize(
    ("module", "name", "path"),
    [
        ("bodies", "node_list", "/api/v1/nodes?status=all"),
        ("explore", "search_body", "/api/v1/search?q=text"),
    ],
    ids=["node list", "search"],
)
def test_big_answers_are_built_in_a_worker_thread_while_probes_are_answered(
    module: str, name: str, path: str, real_assets: Path, client_for: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import threading

    target = importlib.import_module(f"droq_registry.{module}")
    real = getattr(target, name)
    release = threading.Event()
    builds: list[str] = []

    def held(*args: Any) -> Any:
        builds.append(threading.current_thread().name)
        assert release.wait(20), "the probe was not answered while the answer was being built"
        return real(*args)

    monkeypatch.setattr(target, name, held)
    client = client_for(real_assets)
    answers: list[Any] = []
    askers = [threading.Thread(target=lambda: answers.append(client.get(path))) for _ in range(5)]
    for asker in askers:
        asker.start()
    wait_until(lambda: builds)
    # The build is held in its worker thread: the event loop answers probes meanwhile.
    assert client.get("/health").status_code == 200
    assert client.get(f"/api/v1/components/{min(REAL['lfx-runtime-executor-node']['components'])}/node"
                      ).status_code == 200
    release.set()
    for asker in askers:
        asker.join(20)
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.content for a in answers}) == 1
    assert set(builds) == {"AnyIO worker thread"}  # anyio.to_thread, not the event loop's thread
    if module == "bodies":
        assert len(builds) == 1  # built once for the revision, whoever asked meanwhile
