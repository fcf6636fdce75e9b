"""The fast path (droq_registry.hotpath) sends the answers the Starlette routes send.

The hot routes (lookup, node detail, node list, their 404s and 304s) are answered before
Starlette, from the same prepared answers (`answers.py`) the Starlette handlers send. These
tests prove, on the real node files plus a few ranked/inactive ones, that both ways in send
the one prepared answer (the same messages, and for a 200 the very same body object; the
app is called with its fast path on, and then through `Starlette.__call__`, which skips
it), that requests the fast path does not take still get Starlette's answers, and, over
real HTTP (TestClient and one real server process, the end-to-end check), that the bytes
on the wire, auth, 304, HEAD, 404 bodies and the Prometheus counts hold.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from droq_registry import answers, api, bodies
from support.files import REAL_NODES, node_doc, write_json
from support.polling import wait_until
from support.sockets import send_once

Client = Callable[..., TestClient]
TOKEN = "hot-path-test-token"
LOOKUP = "/api/v1/components/{}/node"
REAL_ID = "lfx-runtime-executor-node"
#: The metrics' route labels: the templates of the route table.
LOOKUP_ROUTE = "/api/v1/components/{component_class}/node"
DETAIL_ROUTE = "/api/v1/nodes/{node_id}"
LIST_ROUTE = "/api/v1/nodes"


# --- helpers -------------------------------------------------------------------------------


def scope(method: str, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
          root_path: str = "") -> dict[str, Any]:
    """An HTTP scope as uvicorn makes it (`path` already percent-decoded)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "root_path": root_path,
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def call(app: Callable[..., Any], sc: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one request through an ASGI callable; the messages it sent."""

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(sc), receive, send)
        return sent

    return asyncio.run(run())


def via_starlette(app: Starlette) -> Callable[..., Any]:
    """The same app without its fast path: Starlette's middleware and routes only."""
    return lambda sc, receive, send: Starlette.__call__(app, sc, receive, send)


def normal(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Messages as comparable tuples (header lists as lists of byte pairs)."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["type"] == "http.response.start":
            out.append((m["type"], m["status"], [tuple(h) for h in m.get("headers", [])]))
        else:
            out.append((m["type"], m.get("body", b""), m.get("more_body", False)))
    return out


def assert_same_as_starlette(app: Starlette, sc: dict[str, Any], hot: bool = True) -> list[dict[str, Any]]:
    """`app` answers `sc` as Starlette does; `hot` says whether the fast path must take it."""
    taken = app.hot.answer(dict(sc)) is not None  # type: ignore[attr-defined]
    if hot and not taken and sc["path"] == "/api/v1/nodes" and not list_built(app, sc["query_string"]):
        # The node list is a walk of every node: Starlette's handler builds it off the event
        # loop once per snapshot, and from then on the fast path answers it.
        call(via_starlette(app), sc)
        assert list_built(app, sc["query_string"])
        taken = app.hot.answer(dict(sc)) is not None  # type: ignore[attr-defined]
    assert taken is hot, (sc["method"], sc["path"], sc["query_string"], sc["headers"])
    fast = call(app, sc)
    slow = call(via_starlette(app), sc)
    assert normal(fast) == normal(slow), (sc["method"], sc["path"], sc["query_string"], sc["headers"])
    if hot and fast[0]["status"] == 200:
        # Not a copy that happens to be equal: both sent the one prepared answer's body.
        assert fast[1]["body"] is slow[1]["body"], (sc["method"], sc["path"], sc["query_string"])
    return fast


def list_built(app: Starlette, query: bytes) -> bool:
    """Whether the node list this query asks for is built for the served snapshot."""
    status = api.LIST_QUERIES[query]
    return bodies.node_list_key(status) in app.state.registry.snapshot.cache


def header(messages: list[dict[str, Any]], name: bytes) -> bytes | None:
    for key, value in messages[0]["headers"]:
        if key == name:
            return bytes(value)
    return None


def count(client: TestClient, route: str, method: str, status: int) -> float:
    value = client.app.state.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "droq_registry_http_requests_total", {"route": route, "method": method, "status": str(status)}
    )
    return value or 0.0


def observed(client: TestClient, route: str) -> float:
    value = client.app.state.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "droq_registry_http_request_duration_seconds_count", {"route": route}
    )
    return value or 0.0


def add_ranked_nodes(folder: Path) -> None:
    """Nodes that make the lookup choose: priorities, ties on node_id, inactive, deploying."""
    write_json(folder / "inactive-node.json",
               node_doc("inactive-node", {"OnlyInactive": "x.y", "Shared": "i.s"}, status="inactive"))
    write_json(folder / "deploying-node.json", node_doc("deploying-node", {"Deploying": "x.y"}, status="deploying"))
    write_json(folder / "shared-a.json",
               node_doc("shared-a", {"Shared": "a.s", "TextInputComponent": "a.t"}, priority=5))
    write_json(folder / "shared-b.json", node_doc("shared-b", {"Shared": "b.s"}, priority=5, version="1.0"))
    write_json(folder / "shared-c.json",
               node_doc("shared-c", {"Shared": {"path": "c.s", "description": "d"}}, priority=1))


@pytest.fixture
def ranked_assets(real_assets: Path) -> Path:
    add_ranked_nodes(real_assets)
    return real_assets


def all_classes(folder: Path) -> list[str]:
    classes: list[str] = []
    for path in sorted(folder.glob("*.json")):
        classes += list(orjson.loads(path.read_bytes()).get("components") or {})
    return classes


def all_ids(folder: Path) -> list[str]:
    return [orjson.loads(p.read_bytes())["node_id"] for p in sorted(folder.glob("*.json"))]


def hot_scopes(folder: Path, auth: list[tuple[bytes, bytes]]) -> Iterator[dict[str, Any]]:
    """Requests the fast path takes: every class and node, misses, odd names, all methods."""
    for cls in all_classes(folder):
        yield scope("GET", LOOKUP.format(cls), headers=auth)
    odd = ["NoSuchComponent", "No Such", "café", "a" * 300, "1abc", "_x", "x\n", "..", "x'y", 'x"y', "x\\",
           "\x00", "OnlyInactive", "Deploying", "Shared"]
    for name in odd:
        for method in ("GET", "HEAD"):
            yield scope(method, LOOKUP.format(name), headers=auth)
    for node_id in [*all_ids(folder), "no-such-node", "bad id", "a" * 300, "x\n", "-x", "x.y_z-1", "café"]:
        for method in ("GET", "HEAD"):
            yield scope(method, f"/api/v1/nodes/{node_id}", headers=auth)
            yield scope(method, f"/api/v1/nodes/{node_id}", b"a=b&c", headers=auth)
    for query in api.LIST_QUERIES:
        for method in ("GET", "HEAD"):
            yield scope(method, "/api/v1/nodes", query, headers=auth)
    yield scope("HEAD", LOOKUP.format("TextInputComponent"), b"x=1&y", headers=auth)


def revalidation_scopes(app: Starlette, auth: list[tuple[bytes, bytes]]) -> Iterator[dict[str, Any]]:
    """If-None-Match in every form RFC 9110 allows (and a few it does not) on each kind."""
    for path, query in [(LOOKUP.format("TextInputComponent"), b""), (LOOKUP.format("Shared"), b""),
                        (f"/api/v1/nodes/{REAL_ID}", b""), ("/api/v1/nodes", b""), ("/api/v1/nodes", b"status=all")]:
        etag = header(call(app, scope("GET", path, query, auth)), b"etag")
        assert etag is not None
        for value in [etag, b"W/" + etag, b"*", b" * ", b'"nope"', b'"nope", ' + etag, b'"nope",W/' + etag, b"",
                      b",", etag[:-1], b"  " + etag + b"  ", etag + b', "x"', b"W/*", b"\xa0*\xa0"]:
            for method in ("GET", "HEAD"):
                yield scope(method, path, query, [*auth, (b"if-none-match", value)])
        # two If-None-Match headers: the first one counts, as in Starlette
        yield scope("GET", path, query, [*auth, (b"if-none-match", b'"nope"'), (b"if-none-match", etag)])
        yield scope("GET", path, query, [*auth, (b"if-none-match", etag), (b"if-none-match", b'"nope"')])


# --- the fast path answers what Starlette answers ---------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_fast_path_and_starlette_send_the_one_prepared_answer(
    token: str | None, ranked_assets: Path, client_for: Client
) -> None:
    client = client_for(ranked_assets, api_token=token)
    app = client.app
    auth = [(b"authorization", f"Bearer {token}".encode())] if token else []
    statuses: set[int] = set()
    for sc in [*hot_scopes(ranked_assets, auth), *revalidation_scopes(app, auth)]:
        messages = assert_same_as_starlette(app, sc)
        statuses.add(messages[0]["status"])
    assert statuses == {200, 304, 404}


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_requests_the_fast_path_does_not_take_get_starlettes_answers(
    token: str | None, ranked_assets: Path, client_for: Client
) -> None:
    client = client_for(ranked_assets, api_token=token)
    app = client.app
    auth = [(b"authorization", f"Bearer {token}".encode())] if token else []
    declined = [
        scope("POST", LOOKUP.format("TextInputComponent"), headers=auth),
        scope("PUT", "/api/v1/nodes", headers=auth),
        scope("get", "/api/v1/nodes", headers=auth),
        scope("GET", "/api/v1/nodes", b"status=bogus", headers=auth),
        scope("GET", "/api/v1/nodes", b"status=", headers=auth),
        scope("GET", "/api/v1/nodes", b"status=all&status=active", headers=auth),
        scope("GET", "/api/v1/nodes", b"status=al%6C", headers=auth),
        scope("GET", "/api/v1/nodes", b"x=1", headers=auth),
        scope("GET", "/api/v1/nodes/", headers=auth),
        scope("GET", "/api/v1/nodes/x/y", headers=auth),
        scope("GET", f"/api/v1/nodes/{REAL_ID}/components", headers=auth),
        scope("GET", "/api/v1/nodesx", headers=auth),
        scope("GET", "/api/v1/components//node", headers=auth),
        scope("GET", "/api/v1/components/node", headers=auth),
        scope("GET", "/api/v1/components/x/y/node", headers=auth),
        scope("GET", "/api/v1/components/TextInputComponent/nodes", headers=auth),
        scope("GET", "/api/v1/components/TextInputComponent/node/", headers=auth),
        scope("GET", "/api/v1/components/TextInputComponent/node\n", headers=auth),
        scope("GET", LOOKUP.format("TextInputComponent"), root_path="/registry", headers=auth),
        scope("GET", "/api/v1/sources", headers=auth),
        scope("GET", "/health"),
    ]
    if token:
        for bad in [[], [(b"authorization", b"Bearer wrong")], [(b"authorization", TOKEN.encode())],
                    [(b"authorization", b"Basic " + TOKEN.encode())], [(b"authorization", b"")],
                    [(b"authorization", b"Bearer wrong"), (b"authorization", b"Bearer " + TOKEN.encode())]]:
            for path in [LOOKUP.format("TextInputComponent"), LOOKUP.format("NoSuchComponent"),
                         f"/api/v1/nodes/{REAL_ID}", "/api/v1/nodes"]:
                declined.append(scope("GET", path, headers=bad))
                declined.append(scope("HEAD", path, headers=[*bad, (b"if-none-match", b"*")]))
    for sc in declined:
        assert_same_as_starlette(app, sc, hot=False)


def test_bearer_token_is_accepted_in_any_scheme_case_and_with_spaces(real_assets: Path, client_for: Client) -> None:
    app = client_for(real_assets, api_token=TOKEN).app
    for value in [f"bearer {TOKEN}", f"BEARER   {TOKEN}  ", f"Bearer {TOKEN}"]:
        sc = scope("GET", LOOKUP.format("TextInputComponent"), headers=[(b"authorization", value.encode())])
        assert assert_same_as_starlette(app, sc)[0]["status"] == 200
    # the first Authorization header counts, as in TokenAuth
    sc = scope("GET", "/api/v1/nodes", headers=[(b"authorization", f"Bearer {TOKEN}".encode()),
                                                (b"authorization", b"Bearer wrong")])
    assert assert_same_as_starlette(app, sc)[0]["status"] == 200


# --- over HTTP through the TestClient ------------------------------------------------------


def test_lookup_detail_and_list_have_the_documented_shapes_and_headers(
    ranked_assets: Path, client_for: Client
) -> None:
    client = client_for(ranked_assets)
    revision = client.get("/ready").json()["revision"]
    detail = client.get(f"/api/v1/nodes/{REAL_ID}")
    lookup = client.get(LOOKUP.format("Multiply"))  # only dfx-math-executor-node declares it
    math = client.get("/api/v1/nodes/dfx-math-executor-node").json()
    assert lookup.json() == {**math, "module_path": math["components"]["Multiply"]}
    assert list(lookup.json()) == ["node", "components", "module_path"]
    assert detail.json()["node"]["node_id"] == REAL_ID
    shared = client.get(LOOKUP.format("Shared")).json()  # priority 5 twice: the smaller node_id wins
    assert (shared["node"]["node_id"], shared["module_path"]) == ("shared-a", "a.s")
    listing = client.get("/api/v1/nodes").json()
    assert [n["metadata"]["node_id"] for n in listing["nodes"]] == sorted(
        n for n in all_ids(ranked_assets) if n not in ("inactive-node", "deploying-node"))
    assert listing["total_nodes"] == len(listing["nodes"])
    for response in (detail, lookup, client.get("/api/v1/nodes")):
        assert response.status_code == 200
        assert [k for k, _ in response.headers.raw] == [
            b"x-registry-revision", b"x-registry-epoch", b"x-registry-content-hash", b"cache-control", b"etag",
            b"content-length", b"content-type"]
        assert response.headers["x-registry-revision"] == str(revision)
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(response.content))


def test_not_found_answers_are_json_details_with_the_revision(real_assets: Path, client_for: Client) -> None:
    client = client_for(real_assets)
    revision = client.get("/ready").json()["revision"]
    missing = client.get(LOOKUP.format("NoSuchComponent"))
    assert missing.status_code == 404
    assert missing.content == b'{"detail":"Component \'NoSuchComponent\' not found in any executor node"}'
    node = client.get("/api/v1/nodes/no-such-node")
    assert node.status_code == 404
    assert node.content == b'{"detail":"Node \'no-such-node\' not found in registry"}'
    long = client.get(LOOKUP.format("x" * 300)).json()["detail"]
    assert long == "Component '" + "x" * 253 + "...' not found in any executor node"
    for response in (missing, node):
        assert [k for k, _ in response.headers.raw] == [
            b"x-registry-revision", b"x-registry-epoch", b"x-registry-content-hash", b"cache-control",
            b"content-length", b"content-type"]
        assert response.headers["x-registry-revision"] == str(revision)
        # a 404 carries no ETag, so If-None-Match never turns it into a 304
        assert client.get(missing.url.path, headers={"If-None-Match": "*"}).status_code == 404


def test_if_none_match_and_head(real_assets: Path, client_for: Client) -> None:
    client = client_for(real_assets)
    for path in (LOOKUP.format("TextInputComponent"), f"/api/v1/nodes/{REAL_ID}", "/api/v1/nodes"):
        full = client.get(path)
        etag = full.headers["etag"]
        for value in (etag, f"W/{etag}", "*", f'"other", {etag}', f'"a",W/{etag} ,"b"'):
            again = client.get(path, headers={"If-None-Match": value})
            assert again.status_code == 304, value
            assert again.content == b""
            assert [(k, v) for k, v in again.headers.raw] == [
                (b"x-registry-revision", full.headers["x-registry-revision"].encode()),
                (b"x-registry-epoch", full.headers["x-registry-epoch"].encode()),
                (b"x-registry-content-hash", full.headers["x-registry-content-hash"].encode()),
                (b"cache-control", b"no-cache"), (b"etag", etag.encode())]
        for value in ('"other"', etag[:-1] + '0"', "W/*", ""):
            assert client.get(path, headers={"If-None-Match": value}).content == full.content, value
        head = client.head(path)
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers.raw == full.headers.raw
        assert client.head(path, headers={"If-None-Match": etag}).status_code == 304


def test_bearer_token_when_configured(real_assets: Path, client_for: Client) -> None:
    client = client_for(real_assets, api_token=TOKEN)
    revision = client.get("/ready").json()["revision"]
    path = LOOKUP.format("TextInputComponent")
    refused = client.get(path)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="droq-registry"'
    assert refused.headers["x-registry-revision"] == str(revision)
    assert refused.json() == {"detail": "this endpoint needs an Authorization: Bearer <token> header"}
    wrong = client.get(path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer realm="droq-registry", error="invalid_token"'
    assert wrong.json() == {"detail": "the bearer token is not valid"}
    assert "etag" not in wrong.headers
    # a valid If-None-Match without the token is still a 401, never a 304
    etag = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).headers["etag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 401
    for target in (path, f"/api/v1/nodes/{REAL_ID}", "/api/v1/nodes", LOOKUP.format("Nope")):
        assert client.get(target).status_code == 401
        assert client.head(target).status_code == 401
        ok = client.get(target, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == (404 if "Nope" in target else 200)
        assert ok.headers["x-registry-revision"] == str(revision)
    assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}", "If-None-Match": etag}).status_code == 304


def test_prometheus_counts_fast_path_answers_by_route_method_and_status(
    real_assets: Path, client_for: Client
) -> None:
    client = client_for(real_assets, api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lookup_route, detail_route = LOOKUP_ROUTE, DETAIL_ROUTE
    before = {
        "lookup200": count(client, lookup_route, "GET", 200),
        "lookup304": count(client, lookup_route, "GET", 304),
        "lookup404": count(client, lookup_route, "HEAD", 404),
        "detail200": count(client, detail_route, "HEAD", 200),
        "list200": count(client, "/api/v1/nodes", "GET", 200),
        "unmatched401": count(client, "unmatched", "GET", 401),
        "lookup_seconds": observed(client, lookup_route),
    }
    path = LOOKUP.format("TextInputComponent")
    etag = ""
    for _ in range(3):
        etag = client.get(path, headers=auth).headers["etag"]
    for _ in range(2):
        assert client.get(path, headers={**auth, "If-None-Match": etag}).status_code == 304
    assert client.head(LOOKUP.format("Nope"), headers=auth).status_code == 404
    assert client.head(f"/api/v1/nodes/{REAL_ID}", headers=auth).status_code == 200
    assert client.get("/api/v1/nodes", headers=auth).status_code == 200
    assert client.get(path).status_code == 401  # refused: counted by Starlette's middleware
    assert count(client, lookup_route, "GET", 200) == before["lookup200"] + 3
    assert count(client, lookup_route, "GET", 304) == before["lookup304"] + 2
    assert count(client, lookup_route, "HEAD", 404) == before["lookup404"] + 1
    assert count(client, detail_route, "HEAD", 200) == before["detail200"] + 1
    assert count(client, "/api/v1/nodes", "GET", 200) == before["list200"] + 1
    assert count(client, "unmatched", "GET", 401) == before["unmatched401"] + 1
    assert observed(client, lookup_route) == before["lookup_seconds"] + 6
    text = client.get("/metrics", headers=auth).text
    line = ('droq_registry_http_requests_total{method="GET",'
            'route="/api/v1/components/{component_class}/node",status="304"} ')
    assert line + f"{before['lookup304'] + 2:.1f}" in text


# --- caching: bounded, per snapshot --------------------------------------------------------


def test_lookup_cache_stays_within_its_byte_budget(
    monkeypatch: pytest.MonkeyPatch, real_assets: Path, client_for: Client
) -> None:
    monkeypatch.setattr(answers, "CACHE_BYTES", 200_000)  # about five lookup bodies of the big node
    client = client_for(real_assets)
    app = client.app
    classes = all_classes(real_assets)
    assert len(classes) > 100
    peak = 0
    for cls in classes + classes[:20] + [f"Missing{i}" for i in range(200)]:
        sc = scope("GET", LOOKUP.format(cls))
        assert_same_as_starlette(app, sc)
        peak = max(peak, app.hot.served.used)  # type: ignore[attr-defined]
    assert 0 < peak <= 200_000


def test_not_found_answers_are_not_kept_whatever_the_names(real_assets: Path, client_for: Client) -> None:
    client = client_for(real_assets)
    for i in range(300):  # names a client makes up: long, and several bytes per character
        name = "é" * 120 + str(i)
        assert client.get(LOOKUP.format(name)).status_code == 404
        assert client.get(f"/api/v1/nodes/{name}").status_code == 404
    served = client.app.hot.served  # type: ignore[attr-defined]
    assert (served.used, served.lookups, served.details) == (0, {}, {})
    found = client.get(LOOKUP.format("TextInputComponent"))
    assert found.status_code == 200
    assert served.used == len(found.content) + len(b"TextInputComponent") + answers.ENTRY_COST
    assert list(served.lookups) == ["TextInputComponent"]


def test_the_node_list_is_left_to_starlette_until_it_is_built_off_the_event_loop(
    real_assets: Path, client_for: Client
) -> None:
    client = client_for(real_assets)
    app = client.app
    sc = scope("GET", "/api/v1/nodes", b"status=all")
    assert not list_built(app, b"status=all")
    assert app.hot.answer(dict(sc)) is None  # type: ignore[attr-defined]
    first = client.get("/api/v1/nodes?status=all")  # Starlette builds it in a worker thread
    assert first.status_code == 200
    assert list_built(app, b"status=all")
    assert not list_built(app, b"")  # built once per status asked for, not all of them
    messages = assert_same_as_starlette(app, sc)  # from now on the fast path answers it
    assert messages[1]["body"] == first.content


def test_a_new_revision_is_answered_from_the_new_snapshot_at_once(assets: Path, client_for: Client) -> None:
    write_json(assets / "n.json", node_doc("n", {"Comp": "pkg.one"}))
    client = client_for(assets, reload=True)
    first = client.get(LOOKUP.format("Comp"))
    assert first.json()["module_path"] == "pkg.one"
    detail = client.get("/api/v1/nodes/n")
    listing = client.get("/api/v1/nodes")
    revision = int(first.headers["x-registry-revision"])
    write_json(assets / "n.json", node_doc("n", {"Comp": "pkg.two", "Other": "pkg.other"}))
    wait_until(lambda: client.get("/ready").json()["revision"] > revision)
    second = client.get(LOOKUP.format("Comp"))
    assert int(second.headers["x-registry-revision"]) > revision
    assert second.json()["module_path"] == "pkg.two"
    assert second.headers["etag"] != first.headers["etag"]
    assert client.get(LOOKUP.format("Comp"), headers={"If-None-Match": first.headers["etag"]}).status_code == 200
    assert client.get("/api/v1/nodes/n").content != detail.content
    assert client.get("/api/v1/nodes").content != listing.content
    assert client.get(LOOKUP.format("Other")).status_code == 200
    (assets / "n.json").unlink()
    wait_until(lambda: client.get(LOOKUP.format("Comp")).status_code == 404)
    gone = client.get("/api/v1/nodes/n")
    assert gone.status_code == 404
    assert int(gone.headers["x-registry-revision"]) > int(second.headers["x-registry-revision"])


# --- one real server process ---------------------------------------------------------------


def raw_get(port: int, method: str, target: str, headers: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request on its own connection; (status, headers without Date/Connection, body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    data = send_once(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    pairs = [tuple(line.split(b": ", 1)) for line in header_lines]
    kept = [(k.lower(), v) for k, v in pairs if k.lower() not in (b"date", b"connection")]
    return int(status_line.split()[1]), kept, body  # type: ignore[misc]


def test_real_server_answers_what_starlette_answers_with_auth_304_head_and_metrics(
    tmp_path: Path, server: Callable[..., Any], client_for: Client
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    reference = tmp_path / "reference" / "assets" / "nodes"
    reference.mkdir(parents=True)
    for path in sorted(REAL_NODES.glob("*.json")):
        shutil.copy(path, served / path.name)
        shutil.copy(path, reference / path.name)
    srv = server(
        {
            "REGISTRY_ASSETS_DIR": str(served),
            "REGISTRY_DB_PATH": str(tmp_path / "served.db"),
            "REGISTRY_API_TOKEN": TOKEN,
            "RELOAD": "false",
            "LOG_LEVEL": "warning",
        },
        tmp_path / "server.log",
    )
    # The same files in-process with the fast path off: Starlette's answers.
    starlette = client_for(reference, api_token=TOKEN)
    starlette.app.hot.registry = None  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lookup = LOOKUP.format("TextInputComponent")
    etag = starlette.get(lookup, headers=auth).headers["etag"]
    requests = [
        ("GET", lookup, auth),
        ("HEAD", lookup, auth),
        ("GET", lookup, {**auth, "If-None-Match": etag}),
        ("GET", lookup, {**auth, "If-None-Match": f'"x", W/{etag}'}),
        ("HEAD", lookup, {**auth, "If-None-Match": "*"}),
        ("GET", f"/api/v1/nodes/{REAL_ID}", auth),
        ("HEAD", f"/api/v1/nodes/{REAL_ID}", auth),
        ("GET", "/api/v1/nodes", auth),
        ("GET", "/api/v1/nodes?status=all", auth),
        ("GET", "/api/v1/components/NoSuchComponent/node", auth),
        ("GET", "/api/v1/components/caf%C3%A9/node", auth),
        ("GET", "/api/v1/nodes/no-such-node", auth),
        ("GET", lookup, {}),
        ("GET", lookup, {"Authorization": "Bearer wrong"}),
    ]
    # Two databases are two histories: each side's epoch is its own, everything else is equal.
    served_epoch = srv.get("/health").json()["epoch"].encode()
    reference_epoch = starlette.get("/health").json()["epoch"].encode()
    assert served_epoch != reference_epoch
    statuses = []
    for method, target, headers in requests:
        status, got, body = raw_get(srv.port, method, target, headers)
        want = starlette.request(method, target, headers=headers)
        expected = [(k, served_epoch if k == b"x-registry-epoch" and v == reference_epoch else v)
                    for k, v in want.headers.raw]
        assert (status, got) == (want.status_code, expected), (method, target, headers)
        assert body == (b"" if method == "HEAD" else want.content), (method, target, headers)
        statuses.append(status)
    assert statuses[:5] == [200, 200, 304, 304, 304]
    assert statuses[-2:] == [401, 401]
    metrics = srv.get("/metrics", headers=auth).text
    expected = {
        ("GET", LOOKUP_ROUTE, 200): 1,
        ("HEAD", LOOKUP_ROUTE, 200): 1,
        ("GET", LOOKUP_ROUTE, 304): 2,
        ("HEAD", LOOKUP_ROUTE, 304): 1,
        ("GET", LOOKUP_ROUTE, 404): 2,
        ("GET", DETAIL_ROUTE, 200): 1,
        ("HEAD", DETAIL_ROUTE, 200): 1,
        ("GET", DETAIL_ROUTE, 404): 1,
        ("GET", LIST_ROUTE, 200): 2,
        ("GET", "unmatched", 401): 2,
    }
    for (method, route, status), n in expected.items():
        line = f'droq_registry_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n:.1f}'
        assert line in metrics.splitlines(), line
    assert (f'droq_registry_http_request_duration_seconds_count{{route="{LOOKUP_ROUTE}"}} 7.0'
            in metrics.splitlines())
