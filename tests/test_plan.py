"""`diff.plan`, the reconcile's rules as a pure function: what the store has and what the
changed files now say in, the whole change set out. No app, no disk, no SQLite.

Each row of the table is one situation a folder can be in, with every field of the plan
it must give. The files stand for themselves: a fingerprint "f1" is a node, its packed
bytes `b"P:f1"`, the file's content hash "h:f1".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from droq_registry.diff import Plan, conflict_message, plan
from droq_registry.model import Failed, Gone, Outcome, Parsed, Served, Source

NOW = "2026-01-02T00:00:00.000Z"
EARLIER = "2026-01-01T00:00:00.000Z"


def parsed(node_id: str, fp: str) -> Parsed:
    return Parsed(node_id=node_id, packed=b"P:" + fp.encode(), fingerprint=fp, content_hash="h:" + fp)


def ok(path: str, node_id: str, fp: str, at: str | None = EARLIER) -> Source:
    """A file that parses and owns `node_id` (applied and last updated at `at`)."""
    return Source(path=path, state="ok", node_id=node_id, packed=b"P:" + fp.encode(), content_hash="h:" + fp,
                  fingerprint=fp, applied_at=at, updated_at=at)


def in_error(path: str, node_id: str | None, fp: str | None, error: str, at: str | None = EARLIER) -> Source:
    """A file refused with `error`, keeping the last good node `fp` (if it ever parsed)."""
    return Source(path=path, state="error", node_id=node_id, packed=None if fp is None else b"P:" + fp.encode(),
                  content_hash="h:bad", error=error, fingerprint=fp,
                  applied_at=at if fp is not None else None, updated_at=at)


def in_conflict(path: str, node_id: str, fp: str, owner: str) -> Source:
    return Source(path=path, state="conflict", node_id=node_id, packed=b"P:" + fp.encode(), content_hash="h:" + fp,
                  error=conflict_message(node_id, owner), fingerprint=fp, updated_at=EARLIER)


@dataclass
class Case:
    """The store before (its sources and what it serves), the outcomes of the files read,
    and the plan expected; `claims` is derived from `sources`, as the reconciler keeps it."""

    sources: dict[str, Source]
    outcomes: dict[str, Outcome]
    expected: Plan
    served: dict[str, Served] = field(default_factory=dict)

    def claims(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for path, source in self.sources.items():
            if source.node_id is not None and source.fingerprint:
                found.setdefault(source.node_id, set()).add(path)
        return found


A = ok("a.json", "a", "f1")
CASES: dict[str, Case] = {
    "a new file adds its node": Case(
        sources={},
        outcomes={"a.json": parsed("a", "f1")},
        expected=Plan(
            sources_put={"a.json": ok("a.json", "a", "f1", at=NOW)},
            nodes_put={"a": Served("a.json", "f1")},
            records=[("added", "a", "a.json")],
        ),
    ),
    "a changed file updates its node": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": parsed("a", "f2")},
        expected=Plan(
            sources_put={"a.json": ok("a.json", "a", "f2", at=NOW)},
            nodes_put={"a": Served("a.json", "f2")},
            records=[("updated", "a", "a.json")],
        ),
    ),
    "a file read again unchanged writes nothing": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": parsed("a", "f1")},
        expected=Plan(),
    ),
    "a bad edit keeps the last good node and records the error": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": Failed("line 1: not JSON", content_hash="h:bad")},
        expected=Plan(
            sources_put={"a.json": replace(in_error("a.json", "a", "f1", "line 1: not JSON"), updated_at=NOW)},
            records=[("error", "a", "a.json")],
        ),
    ),
    "the same error again changes nothing": Case(
        sources={"a.json": in_error("a.json", "a", "f1", "line 1: not JSON")},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": Failed("line 1: not JSON", content_hash="h:bad")},
        expected=Plan(),
    ),
    "another error on a file in error is recorded": Case(
        sources={"a.json": in_error("a.json", "a", "f1", "line 1: not JSON")},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": Failed("line 2: not JSON", content_hash="h:bad")},
        expected=Plan(
            sources_put={"a.json": replace(in_error("a.json", "a", "f1", "line 2: not JSON"), updated_at=NOW)},
            records=[("error", "a", "a.json")],
        ),
    ),
    "a new file that never parsed is in error with no node": Case(
        sources={},
        outcomes={"b.json": Failed("missing \"name\"", content_hash="h:bad")},
        expected=Plan(
            sources_put={"b.json": in_error("b.json", None, None, "missing \"name\"", at=NOW)},
            records=[("error", None, "b.json")],
        ),
    ),
    "a fix of a file in error recovers it, its node unchanged": Case(
        sources={"a.json": in_error("a.json", "a", "f1", "line 1: not JSON")},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": parsed("a", "f1")},
        expected=Plan(
            sources_put={"a.json": ok("a.json", "a", "f1", at=NOW)},
            records=[("recovered", "a", "a.json")],
        ),
    ),
    "a second file claiming an owned id is in conflict and changes no node": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"b.json": parsed("a", "f2")},
        expected=Plan(
            sources_put={"b.json": replace(in_conflict("b.json", "a", "f2", "a.json"), updated_at=NOW)},
            records=[("conflict", "a", "b.json")],
        ),
    ),
    "of two new files claiming one id the name that sorts first owns it": Case(
        sources={},
        outcomes={"b.json": parsed("x", "f2"), "a.json": parsed("x", "f1")},
        expected=Plan(
            sources_put={
                "a.json": ok("a.json", "x", "f1", at=NOW),
                "b.json": replace(in_conflict("b.json", "x", "f2", "a.json"), updated_at=NOW),
            },
            nodes_put={"x": Served("a.json", "f1")},
            records=[("added", "x", "a.json"), ("conflict", "x", "b.json")],
        ),
    ),
    "when the owner leaves, the file in conflict takes over in the same plan": Case(
        sources={"a.json": ok("a.json", "x", "f1"), "b.json": in_conflict("b.json", "x", "f2", "a.json")},
        served={"x": Served("a.json", "f1")},
        outcomes={"a.json": Gone()},
        expected=Plan(
            sources_put={"b.json": replace(ok("b.json", "x", "f2", at=NOW), applied_at=NOW)},
            sources_drop={"a.json": ok("a.json", "x", "f1")},
            nodes_put={"x": Served("b.json", "f2")},
            records=[("updated", "x", "b.json"), ("source", "x", "a.json"), ("recovered", "x", "b.json")],
        ),
    ),
    "a deleted file removes its node": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": Gone()},
        expected=Plan(
            sources_drop={"a.json": A},
            nodes_drop={"a": Served("a.json", "f1")},
            records=[("removed", "a", "a.json")],
        ),
    ),
    "a deleted file in error takes its last good node with it": Case(
        sources={"a.json": in_error("a.json", "a", "f1", "line 1: not JSON")},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": Gone()},
        expected=Plan(
            sources_drop={"a.json": in_error("a.json", "a", "f1", "line 1: not JSON")},
            nodes_drop={"a": Served("a.json", "f1")},
            records=[("removed", "a", "a.json")],
        ),
    ),
    "a deleted file that never parsed is a source record only": Case(
        sources={"b.json": in_error("b.json", None, None, "not JSON")},
        outcomes={"b.json": Gone()},
        expected=Plan(
            sources_drop={"b.json": in_error("b.json", None, None, "not JSON")},
            records=[("source", None, "b.json")],
        ),
    ),
    "a file that changes its node_id removes the old node and adds the new": Case(
        sources={"a.json": A},
        served={"a": Served("a.json", "f1")},
        outcomes={"a.json": parsed("b", "f2")},
        expected=Plan(
            sources_put={"a.json": ok("a.json", "b", "f2", at=NOW)},
            nodes_put={"b": Served("a.json", "f2")},
            nodes_drop={"a": Served("a.json", "f1")},
            records=[("removed", "a", "a.json"), ("added", "b", "a.json")],
        ),
    ),
    "a deleted file that was in conflict leaves the owner alone": Case(
        sources={"a.json": ok("a.json", "x", "f1"), "b.json": in_conflict("b.json", "x", "f2", "a.json")},
        served={"x": Served("a.json", "f1")},
        outcomes={"b.json": Gone()},
        expected=Plan(
            sources_drop={"b.json": in_conflict("b.json", "x", "f2", "a.json")},
            records=[("source", "x", "b.json")],
        ),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan_gives_the_whole_change_set_for_each_situation(case: Case) -> None:
    assert plan(case.sources, case.claims(), case.served, case.outcomes, NOW) == case.expected


@pytest.mark.parametrize(
    ("records", "counts"),
    [
        ([], {"added": 0, "updated": 0, "removed": 0, "errors": 0}),
        ([("added", "a", "a.json"), ("added", "b", "b.json")], {"added": 2, "updated": 0, "removed": 0, "errors": 0}),
        ([("removed", "a", "a.json"), ("updated", "b", "b.json"), ("recovered", "b", "b.json")],
         {"added": 0, "updated": 1, "removed": 1, "errors": 0}),
        ([("error", "a", "a.json"), ("conflict", "x", "b.json"), ("source", None, "c.json")],
         {"added": 0, "updated": 0, "removed": 0, "errors": 2}),
    ],
)
def test_plan_counts_errors_and_conflicts_together_and_ignores_source_records(
    records: list[Any], counts: dict[str, int]
) -> None:
    assert Plan(records=records).counts == counts


def test_a_plan_is_true_exactly_when_it_writes_something() -> None:
    assert not Plan(records=[("source", None, "a.json")])
    assert Plan(sources_drop={"a.json": A})
    assert Plan(nodes_put={"a": Served("a.json", "f1")})


# --- laws -----------------------------------------------------------------------------------

PATHS = ["a.json", "b.json", "c.json"]
outcomes_of = st.dictionaries(
    st.sampled_from(PATHS),
    st.one_of(
        st.builds(parsed, st.sampled_from(["x", "y"]), st.sampled_from(["f1", "f2"])),
        st.just(Failed("not JSON", content_hash="h:bad")),
        st.just(Gone()),
    ),
)


def apply(sources: Mapping[str, Source], served: Mapping[str, Served], result: Plan) -> tuple[
    dict[str, Source], dict[str, Served]
]:
    """The store after `result` was written (what store.apply does, in memory)."""
    after = {p: s for p, s in sources.items() if p not in result.sources_drop} | result.sources_put
    now_served = {n: s for n, s in served.items() if n not in result.nodes_drop} | result.nodes_put
    return after, now_served


@given(st.lists(outcomes_of, min_size=1, max_size=6))
def test_after_any_edits_each_id_is_served_from_the_first_file_that_claims_it(steps: list[dict[str, Outcome]]) -> None:
    sources: dict[str, Source] = {}
    served: dict[str, Served] = {}
    for outcomes in steps:
        claims = Case(sources, {}, Plan()).claims()
        result = plan(sources, claims, served, outcomes, NOW)
        sources, served = apply(sources, served, result)
        # Every file holding a node is a candidate; the one whose name sorts first owns it.
        owners = {n: min(paths) for n, paths in Case(sources, {}, Plan()).claims().items()}
        assert {n: s.owner for n, s in served.items()} == owners
        assert all(served[n].fingerprint == sources[o].fingerprint for n, o in owners.items())
        # Only the owner is ok; other parsed claimants are in conflict, broken files in error.
        for path, source in sources.items():
            if source.state == "error":
                assert source.error is not None
            elif owners.get(source.node_id or "") == path:
                assert (source.state, source.error) == ("ok", None)
            else:
                assert source.state == "conflict"
                assert source.error == conflict_message(source.node_id or "", owners[source.node_id or ""])
        # Planning the same outcomes again writes nothing: a plan is idempotent.
        assert not plan(sources, Case(sources, {}, Plan()).claims(), served, outcomes, NOW)
