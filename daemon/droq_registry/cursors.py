"""What a follower asks for, checked: its cursor and, for a long-poll, how long to wait.

A cursor is a revision (`since`), with the epoch of the history it belongs to (`epoch`,
or `Last-Event-ID: <epoch>:<revision>` on an event stream). `refused` says why a cursor
cannot be followed from a snapshot (another history, ahead of it, or older than its change
log keeps: each a `410 Gone`), and the parsers say what is malformed (a `400`), naming
the parameter and quoting the value. `MAX_WAIT_SECONDS` is enforced here and documented
from here (`routes.py`).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any, NamedTuple

from starlette.datastructures import QueryParams

from . import bodies
from .model import EPOCH_PATTERN
from .snapshot import Snapshot

Scope = MutableMapping[str, Any]

#: The longest `wait` a long-poll of `GET /api/v1/changes` may ask for.
MAX_WAIT_SECONDS = 60.0
_NUMBER = re.compile(r"[0-9]{1,64}")
_EPOCH = re.compile(EPOCH_PATTERN)


def parse_revision(value: str | None, name: str) -> int | str:
    """A revision number a client sent, or why it is malformed (an answer 400)."""
    if value is None or value == "":
        return 0
    if not _NUMBER.fullmatch(value):
        return f"{name} must be a revision number (a whole number, 0 or more), got {bodies.quote(value)}"
    return int(value)


def parse_epoch(value: str | None, name: str) -> str | None:
    """Why an epoch a client sent is malformed (an answer 400), or None when it is fine."""
    if value is None or _EPOCH.fullmatch(value):
        return None
    return f"{name} must be an epoch (1 to 32 of A-Z a-z 0-9 _ -), got {bodies.quote(value)}"


def parse_event_id(value: str, name: str) -> tuple[int, str | None] | str:
    """A Last-Event-ID: `<epoch>:<revision>`, or a bare revision (an older client's, taken
    in the current epoch). The reason it is malformed otherwise."""
    epoch, colon, number = value.rpartition(":")
    if _NUMBER.fullmatch(number) and (not colon or _EPOCH.fullmatch(epoch)):
        return int(number), epoch if colon else None
    return f"{name} must be <epoch>:<revision> or a revision number, got {bodies.quote(value)}"


def refused(snap: Snapshot, since: int, epoch: str | None, name: str) -> str | None:
    """Why `snap` cannot answer a cursor `since` of history `epoch` (an answer 410: the
    client lists again, or takes the new cursor when it already has the content hash)."""
    if epoch is not None and epoch != snap.epoch:
        why = f"epoch {epoch} is another history than this registry's (epoch {snap.epoch})"
    elif since > snap.revision:
        why = f"{name}={since} is ahead of this registry's revision {snap.revision}, so it counts in another history"
    elif not snap.changes.kept(since):
        why = f"changes after revision {since} are no longer kept (the log starts after revision {snap.changes.floor})"
    else:
        return None  # (asked of every follower in every fan-out: no string is made for it)
    return (
        f"{why}; list the registry again, unless your state has content hash {snap.content_hash}, and follow "
        f"changes from revision {snap.revision} of epoch {snap.epoch}"
    )


class Poll(NamedTuple):
    """A long-poll to hold (`changes.Changes.asked`): its cursor, and how long it may wait."""

    since: int
    epoch: str | None
    wait: float


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def long_poll(query_string: bytes) -> tuple[int | str, str | None, float, str | None]:
    """A long-poll's `since`, `epoch` and `wait`, and why they are malformed (or None).
    (The parsed query is not kept: a request may wait a minute, ten thousand at once.)"""
    query = QueryParams(query_string)
    since = parse_revision(query.get("since"), "since")
    epoch = query.get("epoch")
    malformed = since if isinstance(since, str) else parse_epoch(epoch, "epoch")
    raw_wait = query.get("wait")
    wait = 0.0
    if malformed is None and raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            malformed = f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
    return since, epoch, wait, malformed


def cursor(header: bytes | None, query_string: bytes, snap: Snapshot) -> tuple[int, str | None] | str:
    """Where an event stream starts (revision, epoch): its Last-Event-ID `header`, or its
    query's `since` and `epoch`, or now; why it is malformed otherwise."""
    if header is not None:
        return parse_event_id(header.decode("latin-1").strip(), "Last-Event-ID")
    query = QueryParams(query_string)
    if "since" in query or "epoch" in query:
        since, epoch = parse_revision(query.get("since"), "since"), query.get("epoch")
        return since if isinstance(since, str) else parse_epoch(epoch, "epoch") or (since, epoch)
    return (snap.revision, snap.epoch)
