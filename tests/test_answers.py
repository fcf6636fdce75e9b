"""Answers are prepared in one place (droq_registry.answers) and routed from one table.

Unit tests of the pieces (how an answer replies to If-None-Match, how the fast path
matches the table's templates), and, through the app, the property issue 12 relies on: a
header added to `answers.snapshot_headers` is on every /api/v1 answer, whichever way in
(fast path or Starlette) and whatever the status, with nothing else to change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from droq_registry import answers
from droq_registry.answers import Answer, Answers
from droq_registry.hotpath import HotPath
from droq_registry.routes import TABLE

Client = Callable[..., TestClient]
ETAG = '"0123456789abcdef0123456789abcdef"'
BASE = ((b"x-registry-revision", b"7"), (b"cache-control", b"no-cache"))


# --- Answer.reply: If-None-Match, the weak comparison of RFC 9110 ----------------------------


@pytest.mark.parametrize(
    ("inm", "status"),
    [
        (None, 200),
        (b"", 200),
        (ETAG.encode(), 304),
        (b"W/" + ETAG.encode(), 304),
        (b"*", 304),
        (b" * ", 304),
        (b'"other"', 200),
        (b'"other", ' + ETAG.encode(), 304),
        (b'"a",W/' + ETAG.encode() + b' ,"b"', 304),
        (b"  " + ETAG.encode() + b"  ", 304),
        (ETAG[:-1].encode(), 200),
        (b"W/*", 200),
        (b",", 200),
        (b"\xa0*\xa0", 304),  # str.strip() takes U+00A0 as a space: as before
    ],
)
def test_an_answer_with_an_etag_replies_304_exactly_when_if_none_match_matches(inm: bytes | None, status: int) -> None:
    answer = Answer(BASE, 200, b'{"x":1}', ETAG)
    full = (200, (*BASE, (b"etag", ETAG.encode()), (b"content-length", b"7"),
                  (b"content-type", b"application/json")), b'{"x":1}')
    not_modified = (304, (*BASE, (b"etag", ETAG.encode())), b"")
    assert answer.reply(inm) == (not_modified if status == 304 else full)


@pytest.mark.parametrize("inm", [None, b"*", b'"x"'])
def test_an_answer_without_an_etag_never_replies_304(inm: bytes | None) -> None:
    answer = Answer(BASE, 404, b'{"detail":"no"}')
    assert answer.reply(inm) == (
        404, (*BASE, (b"content-length", b"15"), (b"content-type", b"application/json")), b'{"detail":"no"}')


def test_headers_given_first_stay_first_and_are_lower_cased() -> None:
    answer = Answers(None).json(405, {"detail": "Method Not Allowed"}, {"Allow": "GET, HEAD"})
    assert answer.reply(None) == (
        405,
        ((b"allow", b"GET, HEAD"), (b"x-registry-revision", b"0"), (b"cache-control", b"no-cache"),
         (b"content-length", b"31"), (b"content-type", b"application/json")),
        b'{"detail":"Method Not Allowed"}',
    )


# --- the fast path's dispatch comes from the route table -----------------------------------


LOOKUP = "/api/v1/components/{component_class}/node"
DETAIL = "/api/v1/nodes/{node_id}"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/api/v1/components/Multiply/node", b"", (LOOKUP, Answers.lookup, "Multiply")),
        ("/api/v1/components/Multiply/node", b"x=1", (LOOKUP, Answers.lookup, "Multiply")),
        ("/api/v1/components/café/node", b"", (LOOKUP, Answers.lookup, "café")),
        ("/api/v1/nodes/n-1", b"", (DETAIL, Answers.detail, "n-1")),
        ("/api/v1/nodes", b"", ("/api/v1/nodes", Answers.built_list, "active")),
        ("/api/v1/nodes", b"status=all", ("/api/v1/nodes", Answers.built_list, "all")),
        ("/api/v1/nodes", b"status=inactive", ("/api/v1/nodes", Answers.built_list, "inactive")),
        ("/api/v1/nodes", b"status=bogus", None),
        ("/api/v1/nodes", b"status=all&x", None),
        ("/api/v1/nodes/", b"", None),
        ("/api/v1/nodes/n/components", b"", None),
        ("/api/v1/nodesx", b"", None),
        ("/api/v1/components//node", b"", None),
        ("/api/v1/components/node", b"", None),
        ("/api/v1/components/a/b/node", b"", None),
        ("/api/v1/components/Multiply/nodes", b"", None),
        ("/api/v1/components/Multiply/node/", b"", None),
        ("/api/v1/sources", b"", None),
        ("/health", b"", None),
    ],
)
def test_the_fast_path_matches_exactly_the_table_routes_that_have_a_fast_answer(
    path: str, query: bytes, expected: tuple[str, object, str] | None
) -> None:
    matched = HotPath(TABLE, None).match(path, query)
    assert (None if matched is None else (matched[0], matched[1].answer, matched[2])) == expected


def test_the_fast_routes_are_the_lookup_the_detail_and_the_list() -> None:
    assert [(e.template, e.fast.answer) for e in TABLE if e.fast] == [
        ("/api/v1/nodes", Answers.built_list), (DETAIL, Answers.detail), (LOOKUP, Answers.lookup)]


# --- one place for the headers of every answer (what issue 12 will extend) ------------------


TOKEN = "answers-test-token"


def test_a_header_added_to_snapshot_headers_is_on_every_api_answer(
    monkeypatch: pytest.MonkeyPatch, real_assets: Path, client_for: Client
) -> None:
    real = answers.snapshot_headers
    monkeypatch.setattr(answers, "snapshot_headers", lambda snap: (*real(snap), (b"x-registry-test", b"one-place")))
    client = client_for(real_assets, api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lookup = "/api/v1/components/TextInputComponent/node"
    etag = client.get(lookup, headers=auth).headers["etag"]
    client.get("/api/v1/nodes", headers=auth)  # built once: from now on the fast path answers it
    requests = [
        ("GET", lookup, auth, 200),
        ("GET", lookup, {**auth, "If-None-Match": etag}, 304),
        ("HEAD", lookup, auth, 200),
        ("GET", "/api/v1/components/NoSuch/node", auth, 404),
        ("GET", "/api/v1/nodes/lfx-runtime-executor-node", auth, 200),
        ("GET", "/api/v1/nodes/no-such-node", auth, 404),
        ("GET", "/api/v1/nodes", auth, 200),
        ("GET", "/api/v1/nodes?status=bogus", auth, 400),
        ("GET", "/api/v1/components/TextInputComponent/nodes", auth, 200),
        ("GET", "/api/v1/nodes/lfx-runtime-executor-node/components", auth, 200),
        ("GET", "/api/v1/nodes/no-such-node/components", auth, 404),
        ("GET", "/api/v1/search?q=text", auth, 200),
        ("GET", "/api/v1/search?q=", auth, 400),
        ("GET", "/api/v1/shared-classes", auth, 200),
        ("GET", "/api/v1/sources", auth, 200),
        ("GET", "/api/v1/changes", auth, 200),
        ("GET", "/api/v1/changes?since=x", auth, 400),
        ("GET", "/api/v1/events?since=x", auth, 400),
        ("GET", "/api/v1/no-such-path", auth, 404),
        ("POST", "/api/v1/nodes", auth, 405),
        ("GET", lookup, {}, 401),
        ("GET", "/api/v1/nodes", {"Authorization": "Bearer wrong"}, 401),
        ("GET", "/", {}, 200),
        ("GET", "/health", {}, 200),
        ("GET", "/ready", {}, 200),
    ]
    got = [(method, path, client.request(method, path, headers=headers)) for method, path, headers, _ in requests]
    assert [(m, p, r.status_code, r.headers.get("x-registry-test")) for m, p, r in got] == [
        (method, path, status, "one-place") for method, path, _, status in requests
    ]
    # and it comes right after the others of snapshot_headers, in its order
    for _, _, response in got:
        names = [k for k, _ in response.headers.raw]
        start = names.index(b"x-registry-revision")
        assert names[start:start + 4] == [
            b"x-registry-revision", b"x-registry-epoch", b"x-registry-content-hash", b"x-registry-test"]
