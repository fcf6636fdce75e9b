"""Every answer the service gives from a snapshot: status, encoded headers, body, ETag, 304.

This module owns what a client receives. An `Answer` is prepared once, immutable, and
sent as it is by every way in: the Starlette endpoints (`api.py`, `explore.py`, through
`api.Sent`), the fast path (`hotpath.py`, asked by the protocol itself, `direct.py`, and by
`app.RegistryApp`), the 401 of `auth.py`, and the followers (`changes.py`, whose fan-out
writes through `outlet.py`). None adds or reorders a header, so they send the same bytes
by construction.

- `snapshot_headers(snap)` is the one place that says which headers tie an answer to the
  state it was built from. Every answer built here starts
  with them: 200s, 304s, 404s and every error, and the 401 of `auth.py`. A header every
  answer must carry is added there and nowhere else. Today: `X-Registry-Revision`,
  `X-Registry-Epoch` and `X-Registry-Content-Hash`.
- `Answers` are the answers of one snapshot. The hot ones (a lookup, a node's detail, a
  node list once built) are kept within a byte budget (`CACHE_BYTES`); a 404 is never
  kept, so what a client can make it hold is bounded by the registry's own classes and
  nodes. `of(snap)` gives the snapshot's `Answers` (on the event loop only).
- The bodies come from `bodies.py` (and the followers' from `changes_body` and
  `event_frames` below); those that walk the snapshot (`bodies.node_list`, `candidates`,
  `sources`, `changes_body`) run in a worker thread when big (`offload.py`), the caller decides.
- Followers get their bytes here too, once per snapshot for all of them: the long-poll's
  answer after a revision (`Answers.changes`) and the event stream's frames after it
  (`Answers.frames`). When a commit wakes ten thousand followers that all had the
  previous revision, the answer and the frames are encoded once and the same bytes are
  sent to each.

Header order is Starlette's: the answer's own headers (revision, cache-control, ETag),
then content-length, then content-type; a 304 has no body, so neither of the last two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

from .bodies import component_missing_detail, detail, lookup, node_list_key, node_missing_detail
from .snapshot import Snapshot, etag_of

Headers = tuple[tuple[bytes, bytes], ...]

#: Bytes of prepared answers kept per snapshot (bodies, plus `ENTRY_COST` each). A registry
#: of 350,000 classes with 40 KB lookup bodies would otherwise hold 14 GB.
CACHE_BYTES = 32 * 1024 * 1024
#: What one kept answer costs besides its body (headers, the key, the object).
ENTRY_COST = 512

CACHE_CONTROL = (b"cache-control", b"no-cache")
CONTENT_TYPE = (b"content-type", b"application/json")
#: An event stream's own headers, after the snapshot's and cache-control (no proxy buffering).
STREAM_HEADERS: Headers = ((b"x-accel-buffering", b"no"), (b"content-type", b"text/event-stream; charset=utf-8"))
#: Follower answers kept per snapshot, by the revision they follow from: the fan-out after a
#: commit needs one (the previous revision); resumes from older cursors add a few.
FOLLOWER_KEYS = 64
#: The event stream's keep-alive: a comment line, which clients ignore.
KEEPALIVE_FRAME = ServerSentEvent(comment="ping").encode()


#: The headers every answer built from a snapshot carries first, and their names in the
#: OpenAPI document's components (`openapi.py`).
SNAPSHOT_HEADERS = {"X-Registry-Revision": "Revision", "X-Registry-Epoch": "Epoch",
                    "X-Registry-Content-Hash": "ContentHash"}
_NAMES = tuple(name.lower().encode("latin-1") for name in SNAPSHOT_HEADERS)
REVISION = _NAMES[0]


def snapshot_headers(snap: Snapshot | None) -> Headers:
    """The headers that say which state an answer comes from; every answer carries them first:
    the revision, the history it counts in (its epoch), and the served content's hash."""
    if snap is None:  # a placeholder before the first snapshot is asked for; never sent
        return ((REVISION, b"0"),)
    revision, epoch, content_hash = _NAMES
    return (
        (revision, str(snap.revision).encode("latin-1")),
        (epoch, snap.epoch.encode("latin-1")),
        (content_hash, snap.content_hash.encode("latin-1")),
    )


def position(snap: Snapshot) -> dict[str, Any]:
    """Where `snap` stands, as a body says it: the 410s, the relist event, `/health`."""
    return {"revision": snap.revision, "epoch": snap.epoch, "content_hash": snap.content_hash}


def etag_matches(header: bytes | str | None, etag: str) -> bool:
    """Whether an If-None-Match value (the first such header) matches `etag`, with the
    weak comparison RFC 9110 asks for: a list, `W/` prefixes, `*`."""
    if not header:
        return False
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if header.strip() == "*":
        return True
    return any(candidate.strip().removeprefix("W/") == etag for candidate in header.split(","))


def if_none_match(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first If-None-Match header of an ASGI scope's headers (the one that counts)."""
    for name, value in headers:
        if name == b"if-none-match":
            return value
    return None


class Answer:
    """One prepared answer: status, headers and body, and for a 200 with an ETag the
    headers of its 304. Immutable: senders make fresh ASGI messages from it each time."""

    __slots__ = ("body", "etag", "etag_bytes", "headers", "not_modified", "status")

    def __init__(self, leading: Headers, status: int, body: bytes, etag: str | None = None) -> None:
        headers = list(leading)
        self.status = status
        self.body = body
        self.etag = etag
        self.etag_bytes = None if etag is None else etag.encode("latin-1")
        self.not_modified: Headers = ()
        if self.etag_bytes is not None:
            headers.append((b"etag", self.etag_bytes))
            self.not_modified = tuple(headers)
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        headers.append(CONTENT_TYPE)
        self.headers: Headers = tuple(headers)

    def reply(self, inm: bytes | None) -> tuple[int, Headers, bytes]:
        """Status, headers and body to send to a request whose If-None-Match is `inm`."""
        if inm is not None and self.etag is not None and (inm == self.etag_bytes or etag_matches(inm, self.etag)):
            return 304, self.not_modified, b""
        return self.status, self.headers, self.body


class Answers:
    """The answers of one snapshot; the hot ones are kept within `CACHE_BYTES`."""

    __slots__ = ("base", "details", "followed", "framed", "lists", "lookups", "snap", "used")

    def __init__(self, snap: Snapshot | None) -> None:
        self.snap = snap
        self.base: Headers = (*snapshot_headers(snap), CACHE_CONTROL)
        self.lookups: dict[str, Answer] = {}
        self.details: dict[str, Answer] = {}
        self.lists: dict[str, Answer] = {}
        self.followed: dict[int, Answer] = {}
        self.framed: dict[int, bytes] = {}
        self.used = 0

    def stream_headers(self) -> Headers:
        """The headers of an event stream (no content-length: the server frames its chunks)."""
        return (*self.base, *STREAM_HEADERS)

    def changes(self, since: int) -> Answer:
        """`GET /api/v1/changes?since=...` for a revision the log keeps: the same prepared
        answer for every follower that had `since`."""
        answer = self.followed.get(since)
        if answer is None:
            assert self.snap is not None
            body = changes_body(self.snap, since)
            answer = self.ok(body, etag_of(body))
            if len(self.followed) < FOLLOWER_KEYS:
                self.followed[since] = answer
        return answer

    def frames(self, since: int) -> bytes:
        """The event stream's frames of every record after `since` (a revision the log
        keeps), b"" when there is none: the same bytes for every stream that had `since`."""
        frames = self.framed.get(since)
        if frames is None:
            assert self.snap is not None
            frames = event_frames(self.snap, since)
            if len(self.framed) < FOLLOWER_KEYS:
                self.framed[since] = frames
        return frames

    def ok(self, body: bytes, etag: str) -> Answer:
        """200 with `body` (304 for a client that has `etag`)."""
        return Answer(self.base, 200, body, etag)

    def json(self, status: int, content: Any, leading: Mapping[str, str] | None = None) -> Answer:
        """`content` as JSON, without an ETag; `leading`: headers that go first (405's Allow)."""
        first: Headers = ()
        if leading:
            first = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in leading.items())
        return Answer((*first, *self.base), status, orjson.dumps(content))

    def error(self, status: int, detail: str) -> Answer:
        return self.json(status, {"detail": detail})

    def unauthorized(self, detail: str, challenge: str) -> Answer:
        """The 401 of `auth.TokenAuth`: the state's headers, the challenge; never kept."""
        leading = (*snapshot_headers(self.snap), (b"www-authenticate", challenge.encode("latin-1")),
                   (b"cache-control", b"no-store"))
        return Answer(leading, 401, orjson.dumps({"detail": detail}))

    def gone(self, detail: str) -> Answer:
        """410: the client's cursor is not in what this history keeps (another epoch, ahead of
        the revision, or older than the log); it takes `revision` in `epoch` as its cursor,
        without re-listing when its own state has `content_hash`, else after re-listing."""
        assert self.snap is not None
        return self.json(410, {"detail": detail, **position(self.snap)})

    def _keep(self, table: dict[str, Answer], key: str, answer: Answer) -> Answer:
        if answer.status != 200:
            return answer
        cost = len(answer.body) + len(key.encode("utf-8", "surrogatepass")) + ENTRY_COST
        if cost > CACHE_BYTES:
            return answer
        if self.used + cost > CACHE_BYTES:
            self.lookups.clear()
            self.details.clear()
            self.used = 0
        table[key] = answer
        self.used += cost
        return answer

    def lookup(self, component_class: str) -> Answer:
        """`GET /api/v1/components/{component_class}/node`: the best active node, or 404."""
        answer = self.lookups.get(component_class)
        if answer is not None:
            return answer
        snap = self.snap
        assert snap is not None
        candidates = snap.index.get(component_class)
        if not candidates:
            return self.error(404, component_missing_detail(component_class))
        return self._keep(self.lookups, component_class, self.ok(*lookup(snap.nodes[candidates[0]], component_class)))

    def detail(self, node_id: str) -> Answer:
        """`GET /api/v1/nodes/{node_id}`: the node and its components, any status, or 404."""
        answer = self.details.get(node_id)
        if answer is not None:
            return answer
        snap = self.snap
        assert snap is not None
        view = snap.nodes.get(node_id)
        if view is None:
            return self.error(404, node_missing_detail(node_id))
        return self._keep(self.details, node_id, self.ok(*detail(view)))

    def built_list(self, status: str) -> Answer | None:
        """`GET /api/v1/nodes?status=...` (a valid status), or None while the list is not
        built for this snapshot: it is a walk of every node, built off the event loop."""
        answer = self.lists.get(status)
        if answer is not None:
            return answer
        assert self.snap is not None
        built = self.snap.cache.get(node_list_key(status))
        if built is None:
            return None
        answer = self.lists[status] = self.ok(*built)
        return answer

    def candidates(self, component_class: str) -> tuple[str, ...]:
        """The active nodes that declare a class, best first."""
        assert self.snap is not None
        return self.snap.index.get(component_class, ())


#: The answers of the snapshot asked for last. Kept here, not in the snapshot: an `Answers`
#: holds its snapshot, and the snapshot is frozen for the cyclic garbage collector when it is
#: committed (server.freeze_after_commit), so a reference back to it from its own cache would
#: be a cycle never collected: one whole revision leaked per commit.
_last: list[Answers] = []


def of(snap: Snapshot) -> Answers:
    """The answers of `snap`, made on first use (call it on the event loop only)."""
    last = _last
    if last and last[0].snap is snap:
        return last[0]
    answers = Answers(snap)
    last[:] = [answers]
    return answers


def event_id(snap: Snapshot, revision: int) -> str:
    """The id of the event that closes `revision` in a stream: what a client resumes from
    with Last-Event-ID."""
    return f"{snap.epoch}:{revision}"


def event_frames(snap: Snapshot, since: int) -> bytes:
    """The `change` events of the records after `since` (a revision the log keeps).

    Only a revision's last record carries the id: a client cut off in the middle of a
    revision resumes from the one before and gets all of it again."""
    log = snap.changes
    span = log.span(since, snap.revision)
    revisions, encoded = log.revisions[span], log.encoded[span]
    last = len(revisions) - 1
    return b"".join(
        ServerSentEvent(
            record.decode(),
            event="change",
            id=event_id(snap, revisions[i]) if i == last or revisions[i + 1] != revisions[i] else None,
        ).encode()
        for i, record in enumerate(encoded)
    )


def relist_frame(snap: Snapshot, detail: str) -> bytes:
    """The `relist` event: what the client had is no longer kept; it lists again."""
    data = orjson.dumps({**position(snap), "detail": detail}).decode()
    return ServerSentEvent(data, event="relist", id=event_id(snap, snap.revision)).encode()


def changes_body(snap: Snapshot, since: int) -> bytes:
    """Body of `GET /api/v1/changes?since=...` (a revision the log still keeps)."""
    log = snap.changes
    records = b",".join(log.encoded[log.span(since, snap.revision)])
    return b'{"revision":%d,"changes":[%b]}' % (snap.revision, records)
