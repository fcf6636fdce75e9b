"""The read model as pure values: `Snapshot.evolve`, the `ChangeLog` and `etag_matches`.

No app, no disk: each test builds the values and checks the next one whole. Where a law
holds for every input (the class index does not depend on the order nodes arrive in; the
change log is complete above its floor), hypothesis checks it.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from droq_registry.answers import etag_matches
from droq_registry.model import Change, Component, Node, Source
from droq_registry.snapshot import ChangeLog, NodeView, Snapshot

AT = "2026-01-01T00:00:00.000Z"
#: The history every snapshot here counts in (evolve keeps it).
EPOCH = "test-epoch"


def view(node_id: str, *classes: str, priority: int = 0, status: str = "active") -> NodeView:
    components = tuple(Component(cls, f"pkg.{cls.lower()}") for cls in sorted(classes))
    return NodeView(f"{node_id}.json", Node(node_id, f"Node {node_id}", status=status, priority=priority,
                                            components=components))


def source(path: str, state: str = "ok") -> Source:
    return Source(path=path, state=state, node_id=path.removesuffix(".json"), packed=None,  # type: ignore[arg-type]
                  content_hash="h", error=None if state == "ok" else "bad")


def put(snap: Snapshot, *views: NodeView, drop: Iterable[str] = (), revision: int | None = None) -> Snapshot:
    return snap.evolve(revision if revision is not None else snap.revision + 1,
                       {v.node_id: v for v in views}, drop, {}, ())


def summary(snap: Snapshot) -> tuple[int, dict[str, tuple[str, ...]], list[str], int, int]:
    return snap.revision, dict(snap.index), sorted(snap.nodes), snap.components, snap.files_in_error


# --- Snapshot.evolve ------------------------------------------------------------------------

RANKED = [
    view("n-low", "Comp", priority=1),
    view("n-high-b", "Comp", priority=5),
    view("n-high-a", "Comp", "Only", priority=5),
    view("n-negative", "Comp", priority=-3),
    view("n-off", "Comp", "Off", priority=99, status="inactive"),
]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [RANKED],
            (1, {"Comp": ("n-high-a", "n-high-b", "n-low", "n-negative"), "Only": ("n-high-a",)},
             ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off"], 7, 0),
            id="index ranks by priority then id; an inactive node is kept but not indexed",
        ),
        pytest.param(
            [[v] for v in reversed(RANKED)],
            (5, {"Comp": ("n-high-a", "n-high-b", "n-low", "n-negative"), "Only": ("n-high-a",)},
             ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off"], 7, 0),
            id="one node per revision gives the same index",
        ),
        pytest.param(
            [RANKED, [view("n-low", "Comp", priority=10)]],
            (2, {"Comp": ("n-low", "n-high-a", "n-high-b", "n-negative"), "Only": ("n-high-a",)},
             ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off"], 7, 0),
            id="a priority raised moves the node up",
        ),
        pytest.param(
            [RANKED, [view("n-high-a", "Comp", priority=5, status="inactive")]],
            (2, {"Comp": ("n-high-b", "n-low", "n-negative")},
             ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off"], 6, 0),
            id="a node made inactive leaves the index and its only class goes",
        ),
        pytest.param(
            [RANKED, [view("n-off", "Comp", "Off", priority=99)]],
            (2, {"Comp": ("n-off", "n-high-a", "n-high-b", "n-low", "n-negative"), "Only": ("n-high-a",),
                 "Off": ("n-off",)},
             ["n-high-a", "n-high-b", "n-low", "n-negative", "n-off"], 7, 0),
            id="an inactive node made active is indexed",
        ),
        pytest.param(
            [RANKED, ("drop", ["n-high-a", "n-off", "no-such-node"])],
            (2, {"Comp": ("n-high-b", "n-low", "n-negative")}, ["n-high-b", "n-low", "n-negative"], 3, 0),
            id="dropping nodes takes them and their classes out; an unknown id is ignored",
        ),
        pytest.param(
            [RANKED, ("drop", [v.node_id for v in RANKED])],
            (2, {}, [], 0, 0),
            id="dropping every node leaves an empty index",
        ),
    ],
)
def test_evolve_keeps_the_index_the_nodes_and_the_counts(steps: list[Any], expected: tuple[Any, ...]) -> None:
    snap = Snapshot.empty(EPOCH)
    for step in steps:
        if isinstance(step, tuple):
            snap = put(snap, drop=step[1])
        else:
            snap = put(snap, *step)
    assert summary(snap) == expected


def test_evolve_counts_the_files_in_error_or_conflict_as_sources_come_and_go() -> None:
    snap = Snapshot.empty(EPOCH)
    snap = snap.evolve(1, {}, (), {"a.json": source("a.json"), "b.json": source("b.json", "error"),
                                    "c.json": source("c.json", "conflict")}, ())
    assert (sorted(snap.sources), snap.files_in_error) == (["a.json", "b.json", "c.json"], 2)
    snap = snap.evolve(2, {}, (), {"b.json": source("b.json"), "a.json": source("a.json", "error")}, ())
    assert (sorted(snap.sources), snap.files_in_error) == (["a.json", "b.json", "c.json"], 2)
    snap = snap.evolve(3, {}, (), {}, ["c.json", "a.json"])
    assert (sorted(snap.sources), snap.files_in_error) == (["b.json"], 0)


def test_evolve_leaves_the_snapshot_it_came_from_as_it_was() -> None:
    first = put(Snapshot.empty(EPOCH), *RANKED)
    before = summary(first)
    put(first, view("n-new", "Comp", priority=1000), drop=["n-low"])
    assert summary(first) == before


def test_evolve_keeps_the_change_log_unless_given_a_new_one() -> None:
    log = ChangeLog.of([Change(1, "added", "a", "a.json", AT)], 0, 10)
    snap = Snapshot.empty(EPOCH, log)
    assert put(snap).changes is log
    newer = log.extend([Change(2, "removed", "a", "a.json", AT)], 0)
    assert snap.evolve(2, {}, (), {}, (), newer).changes is newer


views = st.lists(
    st.builds(
        view,
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["X", "Y", "Z"]),
        priority=st.integers(-2, 2),
        status=st.sampled_from(["active", "active", "inactive"]),
    ),
    max_size=12,
)


@given(views)
def test_the_index_is_the_same_whether_the_nodes_arrive_at_once_or_one_by_one(arriving: list[NodeView]) -> None:
    last = {v.node_id: v for v in arriving}  # the latest version of each node wins
    one_go = put(Snapshot.empty(EPOCH), *last.values())
    snap = Snapshot.empty(EPOCH)
    for v in arriving:
        snap = put(snap, v)
    expected: dict[str, tuple[str, ...]] = {}
    for cls in ("X", "Y", "Z"):
        holders = sorted((v for v in last.values() if cls in v.paths and v.status == "active"),
                         key=lambda v: (-v.priority, v.node_id))
        if holders:
            expected[cls] = tuple(v.node_id for v in holders)
    assert dict(one_go.index) == dict(snap.index) == expected
    assert one_go.components == snap.components == sum(len(v.paths) for v in last.values())


# --- ChangeLog ------------------------------------------------------------------------------


def changes(*revisions: int) -> list[Change]:
    return [Change(r, "updated", f"n{r}", f"n{r}.json", AT) for r in revisions]


def revisions_of(log: ChangeLog) -> tuple[int, ...]:
    return tuple(c.revision for c in log.records)


@pytest.mark.parametrize(
    ("start", "added", "floor", "expected"),
    [
        pytest.param(([], 0, 2), [1, 2, 2], 0, ((1, 2, 2), 0), id="appends below the bound"),
        pytest.param(([1, 2], 0, 2), [3, 4], 1, ((1, 2, 3, 4), 1), id="at twice keep, nothing is cut yet"),
        pytest.param(([1, 2, 3, 4], 2, 2), [5], 2, ((3, 4, 5), 2), id="past twice keep, all at or under the floor go"),
        pytest.param(([1, 2, 3, 4], 0, 2), [5], 3, ((4, 5), 3), id="the floor is raised, then the cut made"),
        pytest.param(([1, 2, 3], 3, 1), [4], 1, ((4,), 3), id="a lower floor never lowers it"),
        pytest.param(([5, 5, 5], 0, 1), [6], 0, ((5, 5, 5, 6), 0), id="no cut above the floor, whatever the length"),
    ],
)
def test_extend_appends_raises_the_floor_and_trims_in_batches(
    start: tuple[list[int], int, int], added: list[int], floor: int, expected: tuple[tuple[int, ...], int]
) -> None:
    records, start_floor, keep = start
    log = ChangeLog.of(changes(*records), start_floor, keep).extend(changes(*added), floor)
    assert (revisions_of(log), log.floor) == expected
    assert log.revisions == expected[0]
    assert log.keep == keep
    assert [orjson.loads(e) for e in log.encoded] == [change_dict(c) for c in log.records]


def change_dict(change: Change) -> dict[str, object]:
    return {"revision": change.revision, "kind": change.kind, "node_id": change.node_id, "source": change.source,
            "at": change.at}


def test_a_full_change_log_holds_about_its_records_bytes_not_the_encoders_buffers() -> None:
    # orjson's result keeps the buffer it wrote into: 4 KiB for a 100-byte record. A log of
    # a thousand records held that many buffers (the soak's RSS grew 9 MiB as its log filled).
    records, more = changes(*range(1, 2001)), changes(2001)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = ChangeLog.of(records, 0, 1000).extend(more, 0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    encoded = sum(len(e) for e in log.encoded)
    assert (len(log.encoded), held < 2 * encoded) == (2001, True), (held, encoded)


LOG = ChangeLog.of(changes(3, 4, 4, 6, 7), 2, 100)


@pytest.mark.parametrize(
    ("since", "until", "kept", "expected"),
    [
        (2, 7, True, (3, 4, 4, 6, 7)),
        (3, 7, True, (4, 4, 6, 7)),
        (4, 6, True, (6,)),
        (5, 7, True, (6, 7)),
        (7, 7, True, ()),
        (3, 3, True, ()),
        (1, 7, False, (3, 4, 4, 6, 7)),  # not kept: the caller answers 410 and never asks
        (9, 12, True, ()),
    ],
)
def test_since_and_span_select_the_records_after_a_revision_up_to_another(
    since: int, until: int, kept: bool, expected: tuple[int, ...]
) -> None:
    assert LOG.kept(since) is kept
    assert tuple(c.revision for c in LOG.since(since, until)) == expected
    assert LOG.revisions[LOG.span(since, until)] == expected


appends = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=30)


@given(appends, st.integers(1, 4), st.data())
def test_the_log_is_complete_above_its_floor(steps: list[tuple[int, int]], keep: int, data: st.DataObject) -> None:
    """For every kept revision r, since(r, until) is exactly what was ever appended with
    r < revision <= until, however often the log was trimmed."""
    log = ChangeLog.of((), 0, keep)
    everything: list[Change] = []
    for revision, (count, lag) in enumerate(steps, start=1):
        new = [Change(revision, "updated", f"n{revision}-{i}", "f.json", AT) for i in range(count)]
        everything += new
        log = log.extend(new, max(0, revision - lag - keep))
        assert log.floor <= revision
        since = data.draw(st.integers(log.floor, revision))
        until = data.draw(st.integers(since, revision))
        expected = [c for c in everything if since < c.revision <= until]
        assert log.since(since, until) == expected
        assert list(log.records[log.span(since, until)]) == expected
        # trimmed in batches: never more than twice `keep`, unless all of it is above the floor
        assert len(log.records) <= max(2 * keep, len([c for c in everything if c.revision > log.floor]))


# --- etag_matches: If-None-Match, the weak comparison of RFC 9110 ---------------------------

ETAG = '"0123456789abcdef0123456789abcdef"'


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        (b"", False),
        (ETAG, True),
        (ETAG.encode(), True),
        ("W/" + ETAG, True),
        ("*", True),
        (b" * ", True),
        ("W/*", False),
        ('"other"', False),
        ('"other", ' + ETAG, True),
        ('"a",W/' + ETAG + ' ,"b"', True),
        (ETAG[:-1], False),
        (ETAG.upper(), False),  # an entity tag is compared octet by octet
        (",", False),
        (b"\xe9" + ETAG.encode(), False),  # a byte outside ASCII is read as latin-1, not refused
    ],
)
def test_etag_matches_compares_each_listed_tag_weakly(header: bytes | str | None, matches: bool) -> None:
    assert etag_matches(header, ETAG) is matches


tags = st.text(alphabet="0123456789abcdef", min_size=1, max_size=8).map(lambda t: f'"{t}"')


@given(st.lists(tags, max_size=5), st.booleans(), st.booleans())
def test_etag_matches_exactly_when_the_tag_is_listed(others: list[str], listed: bool, weak: bool) -> None:
    etag = '"0123456789abcdef0123456789abcdef"'
    candidates = [t for t in others if t != etag] + ([("W/" if weak else "") + etag] if listed else [])
    assert etag_matches(", ".join(candidates), etag) is listed
