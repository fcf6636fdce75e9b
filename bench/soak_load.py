"""The clients of the soak benchmark (bench/soak.py): readers, searchers and followers.

Each client is a thread with its own HTTP/1.1 connection(s) to the server and its own
tally, so no lock is shared and nothing here is timed. A tally counts every answer by
(endpoint, status) and every transport failure by its type. Followers also keep every
change record they saw, so soak.py can compare them with what the writer committed:

  Poller   long-polls `/api/v1/changes?since=R&wait=W` on one keep-alive connection
  Stream   reads `/api/v1/events` (Server-Sent Events); some reconnect every few events
           with `Last-Event-ID`, as a browser does after a network blip

A change record is kept as the tuple (revision, kind, node_id, source).
"""

from __future__ import annotations

import collections
import http.client
import json
import random
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Record = tuple[int, str, str | None, str | None]

#: The statuses each endpoint may answer in this soak; anything else is a finding.
ALLOWED: dict[str, frozenset[int]] = {
    "lookup": frozenset({200, 304, 404}),
    "lookup 404": frozenset({404}),
    "candidates": frozenset({200, 304, 404}),
    "node": frozenset({200, 304, 404}),
    "node components": frozenset({200, 304, 404}),
    "list": frozenset({200, 304}),
    "list all": frozenset({200, 304}),
    "sources": frozenset({200, 304}),
    "shared classes": frozenset({200, 304}),
    "search": frozenset({200}),
    "health": frozenset({200}),
    "ready": frozenset({200}),
    "metrics": frozenset({200}),
    "openapi": frozenset({200}),
    "root": frozenset({200}),
    "changes": frozenset({200}),
    "events": frozenset({200}),
}


#: The share of requests that the churning reader and the pollers send and then abandon.
ABANDON = 0.05


def record_of(change: dict[str, Any]) -> Record:
    return (int(change["revision"]), str(change["kind"]), change.get("node_id"), change.get("source"))


@dataclass
class Tally:
    """What one client saw: answers by (endpoint, status), transport errors, oddities."""

    answers: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Keep-alive connections the server had closed while idle, reopened for the next request.
    reconnects: int = 0
    #: An answer whose X-Registry-Revision was lower than one this client had seen before.
    backwards: int = 0
    #: Requests sent and then abandoned with a reset, by endpoint (clients that time out).
    aborted: collections.Counter[str] = field(default_factory=collections.Counter)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


class Conn:
    """One keep-alive HTTP/1.1 connection; reopened (and counted) when the server closed it."""

    def __init__(self, port: int, tally: Tally, timeout: float = 30.0, keep_alive: bool = True) -> None:
        self.port = port
        self.tally = tally
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.conn: http.client.HTTPConnection | None = None
        self.last_revision = -1
        self.hung_up = False  # set by `hang_up()`: what fails after that is not counted

    def get(
        self, label: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes] | None:
        """One GET: (status, lower-cased headers, body), tallied; None on a transport error."""
        for attempt in (0, 1):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                # A reused connection the server closed while it sat idle: open a new one.
                if not fresh and attempt == 0 and not self.hung_up:
                    self.tally.reconnects += 1
                    continue
                self._error(label, exc)
                return None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                self._error(label, exc)
                return None
            found = {k.lower(): v for k, v in resp.getheaders()}
            self.tally.answers[(label, resp.status)] += 1
            if resp.status not in ALLOWED.get(label, frozenset()):
                self.tally.note(f"{label} {path} -> {resp.status}: {body[:200]!r}")
            self._check_revision(label, path, found)
            if not self.keep_alive or resp.will_close:
                self.close()
            return resp.status, found, body
        raise AssertionError("unreachable")

    def _error(self, label: str, exc: Exception) -> None:
        if not self.hung_up:
            self.tally.errors[f"{label}: {type(exc).__name__}"] += 1

    def hang_up(self) -> None:
        """Shut the connection down from another thread (a request may be waiting on it)."""
        self.hung_up = True
        conn = self.conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _check_revision(self, label: str, path: str, headers: dict[str, str]) -> None:
        # Each request is sent after the previous one was answered, so its snapshot is at
        # least as new: the revision one client sees never goes down.
        raw = headers.get("x-registry-revision")
        if raw is None:
            return
        revision = int(raw)
        if revision < self.last_revision:
            self.tally.backwards += 1
            self.tally.note(f"{label} {path}: revision {revision} after {self.last_revision}")
        self.last_revision = max(self.last_revision, revision)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def abort(port: int, tally: Tally, label: str, path: str) -> None:
    """Send one request on a new connection and drop it with a reset (RST), unanswered:
    what a client that gives up, or dies, does to the server."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            reset(sock)
    except OSError as exc:
        tally.errors[f"{label}: {type(exc).__name__} (abandoned request)"] += 1
        return
    tally.aborted[label] += 1


def reset(sock: socket.socket) -> None:
    """Make the next close of `sock` a reset (SO_LINGER 0), not an orderly FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Client(threading.Thread):
    """A load thread: runs `step()` until `stop` is set; `tally` holds what it saw."""

    def __init__(self, name: str, port: int, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.port = port
        self.stop = stop
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.setup()
            while not self.stop.is_set():
                self.step()
        except BaseException as exc:  # noqa: BLE001 - reported by soak.py, never swallowed
            self.failure = exc
        finally:
            self.teardown()

    def setup(self) -> None:
        pass

    def step(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


@dataclass(frozen=True)
class Catalogue:
    """What readers and searchers ask for: classes, node ids and search words."""

    classes: Sequence[str]
    node_ids: Sequence[str]
    words: Sequence[str]


class Reader(Client):
    """Lookups, node details, lists (with and without If-None-Match) and the other reads."""

    def __init__(
        self, name: str, port: int, stop: threading.Event, seed: int, cat: Catalogue, keep_alive: bool
    ) -> None:
        super().__init__(name, port, stop, seed)
        self.cat = cat
        self.conn = Conn(port, self.tally, keep_alive=keep_alive)
        self.etags: dict[str, str] = {}
        self.mix = [
            ("lookup", 30),
            ("lookup 404", 4),
            ("node", 15),
            ("list", 8),
            ("list all", 4),
            ("candidates", 4),
            ("node components", 3),
            ("sources", 3),
            ("shared classes", 2),
            ("health", 3),
            ("ready", 2),
            ("metrics", 1),
            ("openapi", 1),
            ("root", 1),
        ]
        self.labels = [label for label, _ in self.mix]
        self.weights = [weight for _, weight in self.mix]

    def path_for(self, label: str) -> str:
        rng, cat = self.rng, self.cat
        cls = rng.choice(cat.classes)
        node_id = rng.choice(cat.node_ids)
        return {
            "lookup": f"/api/v1/components/{cls}/node",
            "lookup 404": f"/api/v1/components/NoSuch{rng.randrange(10**6)}Component/node",
            "node": f"/api/v1/nodes/{node_id}",
            "list": "/api/v1/nodes",
            "list all": "/api/v1/nodes?status=all",
            "candidates": f"/api/v1/components/{cls}/nodes",
            "node components": f"/api/v1/nodes/{node_id}/components",
            "sources": "/api/v1/sources",
            "shared classes": "/api/v1/shared-classes",
            "health": "/health",
            "ready": "/ready",
            "metrics": "/metrics",
            "openapi": "/openapi.json",
            "root": "/",
        }[label]

    def step(self) -> None:
        label = self.rng.choices(self.labels, self.weights)[0]
        path = self.path_for(label)
        if not self.conn.keep_alive and self.rng.random() < ABANDON:
            abort(self.port, self.tally, label, path)
            return
        headers = {}
        etag = self.etags.get(path)
        if etag is not None and self.rng.random() < 0.5:  # revalidate half the time
            headers["If-None-Match"] = etag
        got = self.conn.get(label, path, headers)
        if got is not None and got[0] == 200 and "etag" in got[1]:
            self.etags[path] = got[1]["etag"]
            if len(self.etags) > 2000:
                self.etags.clear()

    def teardown(self) -> None:
        self.conn.close()


class Searcher(Client):
    """Types a word into the dashboard's search, one letter at a time."""

    def __init__(self, name: str, port: int, stop: threading.Event, seed: int, cat: Catalogue) -> None:
        super().__init__(name, port, stop, seed)
        self.cat = cat
        self.conn = Conn(port, self.tally)

    def step(self) -> None:
        word = self.rng.choice(self.cat.words)
        for end in range(1, len(word) + 1):
            if self.stop.is_set():
                return
            got = self.conn.get("search", f"/api/v1/search?q={word[:end]}")
            if got is not None and got[0] == 200:
                body = json.loads(got[2])
                if body.get("query") != word[:end]:
                    self.tally.note(f"search {word[:end]!r} answered for {body.get('query')!r}")

    def teardown(self) -> None:
        self.conn.close()


class Follower(Client):
    """A client that follows the change log; `records` is everything it saw, in order."""

    def __init__(self, name: str, port: int, stop: threading.Event, seed: int) -> None:
        super().__init__(name, port, stop, seed)
        self.records: list[Record] = []
        self.start_revision: int | None = None  # the revision it started following after
        self.seen = -1  # the newest revision it has seen completely
        self.missed: list[str] = []  # 410s, relists, gaps
        self.connections = 0

    def hang_up(self) -> None:
        """Close the connection from outside, also while a request is waiting on it."""
        raise NotImplementedError


class Poller(Follower):
    """Long-polls the change log, as the README's `follow()` does."""

    def __init__(
        self, name: str, port: int, stop: threading.Event, seed: int, waits: Sequence[float]
    ) -> None:
        super().__init__(name, port, stop, seed)
        self.waits = waits
        self.conn = Conn(port, self.tally, timeout=max(waits) + 30)

    def setup(self) -> None:
        got = self.conn.get("list", "/api/v1/nodes")
        if got is None or got[0] != 200:
            raise RuntimeError(f"{self.name}: could not list the registry: {got and got[0]}")
        self.start_revision = self.seen = int(got[1]["x-registry-revision"])
        self.connections = 1

    def step(self) -> None:
        since = self.seen
        wait = self.rng.choice(self.waits)
        if self.rng.random() < ABANDON:  # gives up on one long-poll, asks again at once
            abort(self.port, self.tally, "changes", f"/api/v1/changes?since={since}&wait={wait:g}")
        got = self.conn.get("changes", f"/api/v1/changes?since={since}&wait={wait:g}")
        if got is None:
            return
        status, _, raw = got
        body = json.loads(raw)
        if status == 410:
            self.missed.append(f"410 after revision {since}: {body.get('detail')}")
            self.seen = int(body["revision"])
            return
        if status != 200:
            return
        revision = int(body["revision"])
        got_records = [record_of(c) for c in body["changes"]]
        revisions = sorted({r[0] for r in got_records})
        if revisions != list(range(since + 1, revision + 1)):
            self.missed.append(f"since={since} answered revision {revision} with records of {revisions[:10]}")
        self.records += got_records
        self.seen = max(self.seen, revision)

    def hang_up(self) -> None:
        self.conn.hang_up()

    def teardown(self) -> None:
        self.conn.close()


class Stream(Follower):
    """Reads the Server-Sent Events stream; reconnects every `resume_every` events (0: never)."""

    def __init__(
        self, name: str, port: int, stop: threading.Event, seed: int, resume_every: int, timeout: float = 40.0
    ) -> None:
        super().__init__(name, port, stop, seed)
        self.resume_every = resume_every
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # guards `sock` between this thread and `hang_up()`

    def step(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        headers = {"Accept": "text/event-stream"}
        if self.start_revision is not None:
            headers["Last-Event-ID"] = str(self.seen)
        try:
            conn.connect()
            with self._lock:
                self.sock, self.conn = conn.sock, conn
            if self.stop.is_set():
                return
            self.connections += 1
            conn.request("GET", "/api/v1/events", headers=headers)
            resp = conn.getresponse()
            self.tally.answers[("events", resp.status)] += 1
            if resp.status != 200:
                self.tally.note(f"events -> {resp.status}: {resp.read()[:200]!r}")
                self.stop.wait(0.5)
                return
            if self.start_revision is None:
                self.start_revision = self.seen = int(resp.getheader("x-registry-revision") or "-1")
            self._read(resp)
        except (OSError, http.client.HTTPException) as exc:
            if not self.stop.is_set():
                self.tally.errors[f"events: {type(exc).__name__}"] += 1
        finally:
            with self._lock:
                sock, self.sock, self.conn = self.sock, None, None
            if sock is not None and self.connections % 2 == 0 and not self.stop.is_set():
                try:  # every other reconnect, the stream is dropped as a dying client would
                    reset(sock)
                    self.tally.aborted["events"] += 1
                except OSError:
                    pass
            conn.close()

    def _read(self, resp: http.client.HTTPResponse) -> None:
        """Read events until the stream ends, it is time to reconnect, or we are stopped."""
        fields: dict[str, str] = {}
        events = 0
        current = self.seen  # the revision of the newest record, complete or not
        while not self.stop.is_set():
            line = resp.readline()
            if not line:
                if not self.stop.is_set():
                    self.tally.errors["events: stream ended"] += 1
                return
            text = line.decode().rstrip("\r\n")
            if text:
                if not text.startswith(":"):
                    name, _, value = text.partition(":")
                    fields[name] = value.removeprefix(" ")
                continue
            if not fields:
                continue
            event, data, event_id = fields.get("event", "message"), fields.get("data", ""), fields.get("id")
            fields = {}
            if event == "relist":
                self.missed.append(f"relist after revision {current}: {data}")
                current = self.seen = int(json.loads(data)["revision"])
                continue
            if event != "change":
                self.tally.note(f"events: unexpected event {event!r}: {data[:200]}")
                continue
            rec = record_of(json.loads(data))
            if rec[0] not in (current, current + 1):
                self.missed.append(f"record of revision {rec[0]} after revision {current}")
            current = rec[0]
            self.records.append(rec)
            if event_id is not None:
                self.seen = int(event_id)
                events += 1
                if self.resume_every and events >= self.resume_every:
                    return  # hang up after a complete revision; step() resumes from it

    def hang_up(self) -> None:
        with self._lock:
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
