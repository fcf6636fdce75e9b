"""`GET /api/v1/search` answers from an index, exactly what a scan of every node answers.

`scan` below is the search as it was before the index (every node's components read back
from its last good document on each request). Through the real app (real files, real
SQLite, the TestClient), every answer must be that scan's answer byte for byte, on the
real node files and on nodes made to break the index: shared classes with different
texts, inactive nodes, texts that casefold to other lengths, NUL characters, more than
`MAX_RESULTS` matches, and after every kind of edit, while the index is only updated for
the nodes that changed.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from droq_registry import nodebytes
from droq_registry.search import MAX_RESULTS, SearchCell, SearchIndex
from droq_registry.snapshot import Snapshot
from support.files import REAL_NODES, node_doc, write_json
from support.polling import wait_until

Client = Callable[..., TestClient]


def scan(snap: Snapshot, query: str) -> bytes:
    """The search without an index (the code `search.py` replaced), as the oracle."""
    needle = query.casefold()
    seen: set[str] = set()
    results: list[dict[str, Any]] = []
    truncated = False
    for node_id in sorted(snap.nodes):
        view = snap.nodes[node_id]
        source = snap.sources.get(view.source)
        infos = {}
        if source is not None and source.packed is not None:
            infos = {c.component_class: c.info for c in nodebytes.unpack(source.packed).components if c.info}
        for cls, path in view.paths.items():
            if cls in seen:
                continue
            info = infos.get(cls, {})
            display = info.get("display_name")
            description = info.get("description")
            haystack = [cls]
            haystack += [v for v in (display, description) if isinstance(v, str)]
            if not any(needle in text.casefold() for text in haystack):
                continue
            seen.add(cls)
            if len(results) == MAX_RESULTS:
                truncated = True
                break
            candidates = list(snap.index.get(cls, ()))
            results.append(
                {
                    "component_class": cls,
                    "display_name": display if isinstance(display, str) else None,
                    "description": description if isinstance(description, str) else None,
                    "module_path": snap.nodes[candidates[0]].paths[cls] if candidates else path,
                    "node_id": candidates[0] if candidates else None,
                    "candidates": candidates,
                    "declared_by": node_id if not candidates else candidates[0],
                }
            )
        if truncated:
            break
    results.sort(key=lambda r: (not r["component_class"].casefold().startswith(needle), r["component_class"]))
    return orjson.dumps({"query": query, "results": results, "truncated": truncated})


def snapshot(client: TestClient) -> Snapshot:
    return client.app.state.registry.snapshot  # type: ignore[attr-defined,no-any-return]


def searched(client: TestClient, query: str) -> tuple[bytes, Snapshot]:
    """The answer to a search and the snapshot it was answered from (checked by revision)."""
    while True:
        snap = snapshot(client)
        response = client.get("/api/v1/search", params={"q": query})
        assert response.status_code == 200, (query, response.text)
        if int(response.headers["x-registry-revision"]) == snap.revision:
            return response.content, snap


def index_of(snap: Snapshot) -> SearchIndex:
    return snap.search.index(snap)


def texts(folder: Path) -> Iterator[str]:
    """Every class, display name and description in the node files of `folder`."""
    for path in sorted(folder.glob("*.json")):
        for cls, value in (orjson.loads(path.read_bytes()).get("components") or {}).items():
            yield cls
            if isinstance(value, dict):
                yield from (v for v in (value.get("display_name"), value.get("description")) if isinstance(v, str))


def queries(folder: Path, count: int, seed: int = 7) -> list[str]:
    """Pieces of the real texts (any length, any case) and texts found nowhere."""
    rng = random.Random(seed)
    corpus = list(texts(folder))
    picked = ["a", "e", "z", "q", "in", "xy", "Component", "component", "TEXT", "Input", "zzzz", "of the",
              "ß", "SS", "ﬁ", "FI", "\x00", "a\x00b", "\x00\x00", "İ", "i̇", "Σ", "ς", "x" * 200, "é"]
    for _ in range(count):
        text = rng.choice(corpus)
        start = rng.randrange(len(text))
        piece = text[start : start + rng.randint(1, 12)].strip() or "x"
        picked.append(piece.upper() if rng.random() < 0.3 else piece)
    return picked


def odd_nodes(folder: Path) -> None:
    """Nodes whose texts make an index go wrong if it is not exact."""
    write_json(folder / "aa-shared-plain.json", node_doc("aa-shared-plain", {
        "TextInputComponent": "aa.text",  # also in the real nodes; no description here
        "SharedDifferently": {"path": "aa.shared", "description": "nothing about it"},
        "Strasse": {"path": "aa.strasse", "display_name": "Straße"},
    }))
    write_json(folder / "zz-shared-described.json", node_doc("zz-shared-described", {
        "SharedDifferently": {"path": "zz.shared", "description": "the Flamingo one", "display_name": "Flamingo"},
        "Ligature": {"path": "zz.lig", "display_name": "ﬁle ﬁnder", "description": "STRASSE and straße"},
        "NulInside": {"path": "zz.nul", "description": "before\x00after", "display_name": "nul\x00"},
        "Greek": {"path": "zz.greek", "description": "ΣΊΣΥΦΟΣ ς σ", "author": "not shown"},
        "Dotted": {"path": "zz.dotted", "display_name": "İstanbul"},
    }, priority=3))
    write_json(folder / "mm-inactive.json", node_doc("mm-inactive", {
        "InactiveOnly": {"path": "mm.i", "description": "Flamingo resting"},
        "TextInputComponent": "mm.text",
    }, status="inactive"))
    many = {f"Many{i:03d}Component": {"path": f"many.c{i}", "description": f"many flamingo {i}"} for i in range(120)}
    write_json(folder / "many.json", node_doc("many", many))


@pytest.fixture
def odd_assets(real_assets: Path) -> Path:
    odd_nodes(real_assets)
    return real_assets


def all_served(client: TestClient) -> None:
    sources = client.get("/api/v1/sources").json()
    assert sources["errors"] == 0, sources


def test_search_answers_exactly_what_a_scan_answers_on_real_and_odd_nodes(
    odd_assets: Path, client_for: Client
) -> None:
    client = client_for(odd_assets)
    all_served(client)
    asked = queries(odd_assets, 300)
    asked += ["flamingo", "FLAMINGO", "shareddifferently", "strasse", "straße", "file", "ﬁle", "before\x00after",
              "re\x00af", "nul", "l\x00", "shown", "σίσυφος", "ς", "istanbul", "i̇stanbul", "many", "Many0", "resting"]
    for query in asked:
        body, snap = searched(client, query.strip())
        assert body == scan(snap, query.strip()), query


def test_search_answer_shape_ranking_and_truncation(assets: Path, client_for: Client) -> None:
    write_json(assets / "b.json", node_doc("b", {
        "AlphaTool": {"path": "b.alpha", "display_name": "Alpha", "description": "uses a kite"},
        "KiteFlyer": {"path": "b.kite", "description": "flies"},
        "ZetaKite": "b.zeta",
    }, priority=1))
    write_json(assets / "a.json", node_doc("a", {"ZetaKite": "a.zeta"}, status="inactive"))
    write_json(assets / "c.json", node_doc("c", {"ZetaKite": "c.zeta"}, priority=2))
    client = client_for(assets)
    body = client.get("/api/v1/search", params={"q": " KITE "})
    assert body.status_code == 200
    assert body.json() == {
        "query": "KITE",
        "results": [
            {"component_class": "KiteFlyer", "display_name": None, "description": "flies", "module_path": "b.kite",
             "node_id": "b", "candidates": ["b"], "declared_by": "b"},
            {"component_class": "AlphaTool", "display_name": "Alpha", "description": "uses a kite",
             "module_path": "b.alpha", "node_id": "b", "candidates": ["b"], "declared_by": "b"},
            # found first in the inactive node a; answered with the node a lookup chooses
            {"component_class": "ZetaKite", "display_name": None, "description": None, "module_path": "c.zeta",
             "node_id": "c", "candidates": ["c", "b"], "declared_by": "c"},
        ],
        "truncated": False,
    }
    assert body.headers["etag"].startswith('"')
    assert client.get("/api/v1/search", params={"q": "KITE"},
                      headers={"If-None-Match": body.headers["etag"]}).status_code == 304
    write_json(assets / "many.json", node_doc("many", {f"Kite{i:02d}": "m.k" for i in range(60)}))
    # A second service while the first still runs: its own database (one writer per database).
    client = client_for(assets, db_path=assets.parent / "second.db")
    many = client.get("/api/v1/search", params={"q": "kite"}).json()
    assert many["truncated"] is True
    assert len(many["results"]) == MAX_RESULTS
    assert client.get("/api/v1/search", params={"q": " "}).json() == {"detail": "q must be a non-empty search text"}
    assert client.get("/api/v1/search", params={"q": "x" * 201}).json() == {"detail": "q must be at most 200 characters"}


def test_search_index_follows_every_edit_and_rereads_only_what_changed(assets: Path, client_for: Client) -> None:
    for path in sorted(REAL_NODES.glob("*.json")):
        shutil.copy(path, assets / path.name)
    odd_nodes(assets)
    client = client_for(assets, reload=True)
    asked = queries(assets, 40, seed=11) + ["flamingo", "kite", "straße", "Renamed"]

    def check() -> Snapshot:
        for query in asked:
            body, snap = searched(client, query.strip())
            assert body == scan(snap, query.strip()), query
        return snap

    def after(change: Callable[[], None]) -> Snapshot:
        before = snapshot(client).revision
        change()
        wait_until(lambda: snapshot(client).revision > before)
        return check()

    all_served(client)
    first = check()
    first_index = index_of(first)
    edits: list[Callable[[], None]] = [
        # a description edited, a class renamed, a display name added
        lambda: write_json(assets / "many.json", node_doc("many", {
            "Many000Component": {"path": "many.c0", "description": "a kite now"},
            "RenamedComponent": {"path": "many.r", "display_name": "Renamed Kite"}})),
        # a node made inactive, then a broken file (its last good node stays searchable)
        lambda: write_json(assets / "mm-inactive.json", node_doc("mm-inactive", {"Flamingo": "mm.f"},
                                                                  status="inactive")),
        lambda: (assets / "zz-shared-described.json").write_text("{ broken"),
        # a second file claiming a node id (a conflict), a new node, a removal
        lambda: write_json(assets / "zz-dup.json", node_doc("many", {"DupKite": "d.k"})),
        lambda: write_json(assets / "new.json", node_doc("new", {"NewKite": {"path": "n.k", "description": "straße"}})),
        lambda: (assets / "aa-shared-plain.json").unlink(),
        lambda: (assets / "many.json").unlink(),  # the conflicting file takes the node over
    ]
    previous = first_index
    for change in edits:
        snap = after(change)
        index = index_of(snap)
        # Built from the one before: the texts of nodes that did not change are the same objects.
        unchanged = [n for n in index.texts if n in previous.texts and snap.nodes[n].source.startswith("lfx")]
        assert unchanged
        assert all(index.texts[n] is previous.texts[n] for n in unchanged)
        assert set(index.texts) == set(snap.nodes)
        fresh = SearchCell().index(snap)
        assert holders(index) == holders(fresh)
        previous = index


def holders(index: SearchIndex) -> dict[str, set[str]]:
    """Which nodes the index says hold each n-gram."""
    return {
        gram: {node_id for node_id, slot in index.slots.items() if bits >> slot & 1}
        for gram, bits in index.grams.items()
    }
