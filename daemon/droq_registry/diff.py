"""(What the store has, what the changed files now say) -> the change set. Pure.

The rules live here:
- a file that parses is a candidate for its `node_id`; a file that does not keeps its last
  good node as its candidate (a bad edit never takes a working node away);
- of the candidates for one id, the file whose name sorts first owns it; the others are in
  `conflict`, and take over in the same plan when the owner leaves;
- a deleted file takes its candidate with it, even its last good one.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace

from .model import ChangeKind, Gone, Outcome, Parsed, Served, Source


@dataclass
class Plan:
    """Everything one reconcile writes, in one transaction."""

    sources_put: dict[str, Source] = field(default_factory=dict)
    sources_drop: dict[str, Source] = field(default_factory=dict)
    nodes_put: dict[str, Served] = field(default_factory=dict)
    nodes_drop: dict[str, Served] = field(default_factory=dict)
    records: list[tuple[ChangeKind, str | None, str | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sources_put or self.sources_drop or self.nodes_put or self.nodes_drop)

    @property
    def counts(self) -> dict[str, int]:
        kinds = [kind for kind, _, _ in self.records]
        return {k: kinds.count(k) for k in ("added", "updated", "removed")} | {
            "errors": kinds.count("error") + kinds.count("conflict")
        }


def conflict_message(node_id: str, owner: str) -> str:
    return (
        f"node_id {node_id!r} is already declared by {owner} "
        "(the file whose name sorts first owns it)"
    )


def plan(
    sources: Mapping[str, Source],
    claims: Mapping[str, AbstractSet[str]],
    served: Mapping[str, Served],
    outcomes: Mapping[str, Outcome],
    now: str,
) -> Plan:
    """The change set that brings the store from `sources`/`served` to `outcomes`.

    `claims` maps a node id to every known file whose candidate declares it. Only ids
    touched by `outcomes` are looked at, so the work is proportional to what changed.
    """
    result = Plan()
    tentative: dict[str, Source | None] = {}
    for path, outcome in outcomes.items():
        tentative[path] = _tentative(sources.get(path), path, outcome, now)

    def candidate(path: str) -> Source | None:
        return tentative[path] if path in tentative else sources.get(path)

    affected: set[str] = set()
    for path, new in tentative.items():
        old = sources.get(path)
        if old is not None and old.node_id is not None:
            affected.add(old.node_id)
        if new is not None and new.node_id is not None:
            affected.add(new.node_id)

    # Who claims each id among the new candidates, gathered once: a pass of 20,000 new
    # files would otherwise scan them all for each id (quadratic, about a minute).
    claimed: dict[str, set[str]] = {}
    for path, new in tentative.items():
        if new is not None and new.node_id is not None and new.fingerprint:
            claimed.setdefault(new.node_id, set()).add(path)

    final: dict[str, Source | None] = dict(tentative)
    node_records: list[tuple[ChangeKind, str | None, str | None]] = []
    for node_id in sorted(affected):
        claimants = {p for p in claims.get(node_id, ()) if p not in tentative}
        claimants |= claimed.get(node_id, set())
        before = served.get(node_id)
        if not claimants:
            if before is not None:
                result.nodes_drop[node_id] = before
                node_records.append(("removed", node_id, before.owner))
            continue
        owner = min(claimants)
        fingerprint = candidate(owner).fingerprint  # type: ignore[union-attr]
        assert fingerprint is not None
        if before is None or before.fingerprint != fingerprint or before.owner != owner:
            result.nodes_put[node_id] = Served(owner, fingerprint)
            if before is None:
                node_records.append(("added", node_id, owner))
            elif before.fingerprint != fingerprint:
                node_records.append(("updated", node_id, owner))
        for path in claimants:
            current = final[path] if path in final else sources[path]
            assert current is not None
            final[path] = _settle(current, owner, node_id, path == owner)

    source_records: list[tuple[ChangeKind, str | None, str | None]] = []
    named = {source for _, _, source in node_records}
    for path in sorted(final):
        new = final[path]
        old = sources.get(path)
        if new is None:
            if old is not None:
                result.sources_drop[path] = old
                if path not in named:
                    source_records.append(("source", old.node_id, path))
            continue
        if old is not None and new == replace(old, updated_at=new.updated_at):
            continue
        if new.state == "ok" and (old is None or old.fingerprint != new.fingerprint or old.state != "ok"):
            new = replace(new, applied_at=now)
        result.sources_put[path] = replace(new, updated_at=now)
        kind = _source_kind(old, new)
        if kind is not None:
            source_records.append((kind, new.node_id, path))
        elif path not in named:
            source_records.append(("source", new.node_id, path))

    order = {"removed": 0, "added": 1, "updated": 2}
    node_records.sort(key=lambda r: (order[r[0]], r[1] or ""))
    result.records = node_records + source_records
    return result


def _tentative(old: Source | None, path: str, outcome: Outcome, now: str) -> Source | None:
    """The file's new record before ownership is settled (as if it owned its id)."""
    if isinstance(outcome, Gone):
        return None
    applied_at = old.applied_at if old else None
    updated_at = old.updated_at if old else now
    if isinstance(outcome, Parsed):
        return Source(
            path=path,
            state="ok",
            node_id=outcome.node_id,
            packed=outcome.packed,
            fingerprint=outcome.fingerprint,
            content_hash=outcome.content_hash,
            deps=outcome.deps,
            applied_at=applied_at,
            updated_at=updated_at,
        )
    return Source(
        path=path,
        state="error",
        node_id=old.node_id if old else None,
        packed=old.packed if old else None,
        fingerprint=old.fingerprint if old else None,
        content_hash=outcome.content_hash,
        error=outcome.error,
        deps=outcome.deps or (old.deps if old else ()),
        applied_at=applied_at,
        updated_at=updated_at,
    )


def _settle(source: Source, owner: str, node_id: str, owns: bool) -> Source:
    if source.state == "error":
        return source  # a broken file stays in error, whoever owns the id
    if owns:
        return replace(source, state="ok", error=None)
    return replace(source, state="conflict", error=conflict_message(node_id, owner))


def _source_kind(old: Source | None, new: Source) -> ChangeKind | None:
    before = old.state if old else None
    if new.state in ("error", "conflict"):
        if before != new.state or (old is not None and old.error != new.error):
            return new.state
        return None
    if before in ("error", "conflict"):
        return "recovered"
    return None
