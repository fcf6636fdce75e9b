"""Soak: thousands of effective commits under concurrent readers, followers and searches.

    .venv/bin/python bench/soak.py [--commits 10000] [--pool 40] [--components 20]

Starts the registry on the real node files plus --pool synthetic ones (gen_nodes.py), then
a writer makes one change at a time, the ways people change node files: a rewrite in
place, an atomic rename over, a create, a remove, a rename, a broken save and its fix, a
second file claiming a node id and its removal. The next change is made once the writer's
long-poll shows the previous one served; every change record it sees is the truth the
followers are compared with. Meanwhile, each a thread with its own connections:

  readers    lookups, details, lists (half revalidated with If-None-Match), candidates,
             sources, health, ready, metrics, ...; the last opens a new connection for
             every request and abandons some with a reset, as a client that gives up
  searchers  /api/v1/search, typed one letter at a time
  pollers    long-polls of /api/v1/changes?since=R&wait=W
  streams    /api/v1/events; all but one reconnect with Last-Event-ID every few events

Two phases under the same load: a warm-up of --warmup commits (by default enough to fill
the change log to its bound, so what follows measures leaks, not the log reaching its
size), then --commits. After each, every client hangs up and the server is left alone
until its descriptor and thread counts hold still; then RSS, descriptors (by kind) and
threads (by name) are read from /proc.

Targets: RSS growth over the measured commits < 5 MiB; no descriptor and no thread more at
the end; no 5xx (as the clients saw it and as /metrics counted it); no transport error; no
status an endpoint may not answer; every follower got every record of every revision;
the revision advanced by at least --commits; no failed reconcile, no error in the log;
exit code 0 on SIGTERM. Exits 1 when a target is missed.
"""

from __future__ import annotations

import collections
import copy
import http.client
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import gen_nodes

RSS_GROWTH_LIMIT_MIB = 5.0
#: Seconds the server's counts must hold still before a sample.
STILL_S = 3.0
#: Seconds a sample may wait for counts above the previous sample's to come back down. A
#: thread that served a burst outlives it: anyio keeps an idle worker until a later job finds
#: it idle for 10 s, and an idle kept-alive connection is closed after 5 s. What is still
#: there after this long counts: at the start it is the working set, at the end a leak.
GRACE_S = 15.0
POLL_WAITS = (1.0, 5.0)  # a poller's long-poll waits this long when nothing changes
RESUME_EVERY = 25  # stream i reconnects every i x this many events; stream 0 never
ABANDON = 0.05  # the share of requests the churning reader and the pollers abandon
Record = tuple[int, str, str | None, str | None]  # revision, kind, node id, source
ANY, CACHED = frozenset({200, 304, 404}), frozenset({200, 304})
#: What a reader asks: label -> (weight, path from (class, node id, rng), statuses allowed).
READS: dict[str, tuple[int, Callable[[str, str, random.Random], str], frozenset[int]]] = {
    "lookup": (30, lambda c, n, r: f"/api/v1/components/{c}/node", ANY),
    "lookup 404": (4, lambda c, n, r: f"/api/v1/components/NoSuch{r.randrange(10**6)}Component/node",
                   frozenset({404})),
    "node": (15, lambda c, n, r: f"/api/v1/nodes/{n}", ANY),
    "list": (8, lambda c, n, r: "/api/v1/nodes", CACHED),
    "list all": (4, lambda c, n, r: "/api/v1/nodes?status=all", CACHED),
    "candidates": (4, lambda c, n, r: f"/api/v1/components/{c}/nodes", ANY),
    "node components": (3, lambda c, n, r: f"/api/v1/nodes/{n}/components", ANY),
    "sources": (3, lambda c, n, r: "/api/v1/sources", CACHED),
    "shared classes": (2, lambda c, n, r: "/api/v1/shared-classes", CACHED),
    "health": (3, lambda c, n, r: "/health", frozenset({200})),
    "ready": (2, lambda c, n, r: "/ready", frozenset({200})),
    "metrics": (1, lambda c, n, r: "/metrics", frozenset({200})),
    "openapi": (1, lambda c, n, r: "/openapi.json", frozenset({200})),
    "root": (1, lambda c, n, r: "/", frozenset({200})),
}
ALLOWED = {label: allowed for label, (_, _, allowed) in READS.items()}
ALLOWED |= {"search": frozenset({200}), "changes": frozenset({200}), "events": frozenset({200})}


def record_of(change: dict[str, Any]) -> Record:
    return int(change["revision"]), str(change["kind"]), change.get("node_id"), change.get("source")


# --------------------------------------------------------------------------- clients


@dataclass
class Tally:
    """What one client saw: answers by (endpoint, status), transport errors, oddities."""

    answers: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    reconnects: int = 0  # kept-alive connections the server closed while idle, reopened
    backwards: int = 0  # answers whose X-Registry-Revision was below one seen before
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


class Conn:
    """One keep-alive connection, tallied; reopened (and counted) when the server closed it."""

    def __init__(self, port: int, tally: Tally, timeout: float = 30.0, keep_alive: bool = True) -> None:
        self.port, self.tally, self.timeout, self.keep_alive = port, tally, timeout, keep_alive
        self.conn: http.client.HTTPConnection | None = None
        self.last_revision = -1
        self.hung_up = False  # what fails after `hang_up()` is not counted

    def get(self, label: str, path: str, headers: dict[str, str] | None = None) -> common.Answer | None:
        """One GET, tallied; None on a transport error."""
        for attempt in (0, 1):
            fresh = self.conn is None
            self.conn = self.conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                status, found, body = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                idle_closed = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))
                if idle_closed and not fresh and attempt == 0 and not self.hung_up:
                    self.tally.reconnects += 1
                    continue
                if not self.hung_up:
                    self.tally.errors[f"{label}: {type(exc).__name__}"] += 1
                return None
            self.tally.answers[(label, status)] += 1
            if status not in ALLOWED[label]:
                self.tally.note(f"{label} {path} -> {status}: {body[:200]!r}")
            # Each request follows the previous answer: the revision one client sees never goes down.
            revision = int(found.get("x-registry-revision", self.last_revision))
            if revision < self.last_revision:
                self.tally.backwards += 1
                self.tally.note(f"{label} {path}: revision {revision} after {self.last_revision}")
            self.last_revision = max(self.last_revision, revision)
            if not self.keep_alive or resp.will_close:
                self.close()
            return status, found, body
        return None

    def hang_up(self) -> None:
        """Shut the connection down from another thread (a request may be waiting on it)."""
        self.hung_up = True
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            shutdown(sock)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def abort(port: int, tally: Tally, label: str, path: str) -> None:
    """Send one request on a new connection and drop it unanswered with a reset (RST)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError as exc:
        tally.errors[f"{label}: {type(exc).__name__} (abandoned request)"] += 1


class Client(threading.Thread):
    """A load thread: `step()` until `stop` is set. Followers also keep every record seen."""

    def __init__(self, name: str, port: int, stop: threading.Event, seed: int, cat: Catalogue) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.stop, self.cat, self.rng = port, stop, cat, random.Random(seed)
        self.tally = Tally()
        self.conn = Conn(port, self.tally, timeout=max(POLL_WAITS) + 30)
        self.failure: BaseException | None = None
        self.records: list[Record] = []
        self.start_revision: int | None = None  # a follower's: the revision it follows from
        self.seen = -1  # the newest revision it has seen completely
        self.missed: list[str] = []  # 410s, relists, gaps
        self.connections = 1

    def run(self) -> None:
        try:
            self.setup()
            while not self.stop.is_set():
                self.step()
        except BaseException as exc:  # noqa: BLE001 - reported by main(), never swallowed
            self.failure = exc
        finally:
            self.conn.close()

    def setup(self) -> None:
        pass

    def step(self) -> None:
        raise NotImplementedError

    def hang_up(self) -> None:
        self.conn.hang_up()


class Reader(Client):
    """The reads of READS by weight; half of those it has an ETag for revalidated."""

    def setup(self) -> None:
        self.etags: dict[str, str] = {}

    def step(self) -> None:
        label = self.rng.choices(list(READS), [w for w, _, _ in READS.values()])[0]
        path = READS[label][1](self.rng.choice(self.cat.classes), self.rng.choice(self.cat.node_ids), self.rng)
        if not self.conn.keep_alive and self.rng.random() < ABANDON:
            return abort(self.port, self.tally, label, path)
        etag = self.etags.get(path)
        got = self.conn.get(label, path, {"If-None-Match": etag} if etag and self.rng.random() < 0.5 else {})
        if got is not None and got[0] == 200 and "etag" in got[1]:
            self.etags = {} if len(self.etags) > 2000 else self.etags
            self.etags[path] = got[1]["etag"]


class Searcher(Client):
    """Types a word into the dashboard's search, one letter at a time."""

    def step(self) -> None:
        word = self.rng.choice(self.cat.words)
        for end in range(1, len(word) + 1):
            got = self.conn.get("search", f"/api/v1/search?q={word[:end]}")
            if got is not None and got[0] == 200 and json.loads(got[2]).get("query") != word[:end]:
                self.tally.note(f"search {word[:end]!r} answered for another query")


class Poller(Client):
    """Long-polls the change log, as the README's `follow()` does."""

    def setup(self) -> None:
        got = self.conn.get("list", "/api/v1/nodes")
        if got is None or got[0] != 200:
            raise RuntimeError(f"{self.name}: could not list the registry: {got and got[0]}")
        self.start_revision = self.seen = int(got[1]["x-registry-revision"])

    def step(self) -> None:
        since, wait = self.seen, self.rng.choice(POLL_WAITS)
        path = f"/api/v1/changes?since={since}&wait={wait:g}"
        if self.rng.random() < ABANDON:  # gives up on one long-poll, asks again at once
            abort(self.port, self.tally, "changes", path)
        got = self.conn.get("changes", path)
        if got is None or got[0] not in (200, 410):
            return
        body = json.loads(got[2])
        if got[0] == 410:
            self.missed.append(f"410 after revision {since}: {body.get('detail')}")
        else:
            records = [record_of(c) for c in body["changes"]]
            if sorted({r[0] for r in records}) != list(range(since + 1, body["revision"] + 1)):
                self.missed.append(f"since={since} answered revision {body['revision']} with a gap")
            self.records += records
        self.seen = max(self.seen, int(body["revision"]))


class Stream(Client):
    """Reads /api/v1/events; reconnects with Last-Event-ID every `resume_every` events (0:
    never), every other time dropping the old connection with a reset, as a dying client."""

    resume_every = 0
    sock: socket.socket | None = None
    last_id: str | None = None  # "epoch:revision" of the last complete revision

    def setup(self) -> None:
        self.connections = 0

    def step(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        try:
            conn.connect()
            self.sock, self.connections = conn.sock, self.connections + 1
            if self.stop.is_set():
                return
            conn.request("GET", "/api/v1/events", headers=headers)
            resp = conn.getresponse()
            self.tally.answers[("events", resp.status)] += 1
            if resp.status != 200:
                self.tally.note(f"events -> {resp.status}: {resp.read()[:200]!r}")
                self.stop.wait(0.5)
                return
            if self.start_revision is None:
                self.start_revision = self.seen = int(resp.getheader("x-registry-revision") or "-1")
            self.read(resp)
        except (OSError, http.client.HTTPException) as exc:
            if not self.stop.is_set():
                self.tally.errors[f"events: {type(exc).__name__}"] += 1
        finally:
            if conn.sock is not None and self.connections % 2 == 0 and not self.stop.is_set():
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock = None
            conn.close()

    def read(self, resp: http.client.HTTPResponse) -> None:
        """Read events until the stream ends, it is time to reconnect, or we are stopped."""
        fields: dict[str, str] = {}
        events, current = 0, self.seen  # the revision of the newest record, complete or not
        while not self.stop.is_set():
            raw = resp.readline()
            if not raw:
                self.tally.errors["events: stream ended"] += 0 if self.stop.is_set() else 1
                return
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields.update({name: value.removeprefix(" ")} if name else {})
                continue
            event, data, event_id, fields = fields.get("event", "message"), fields.get("data", ""), fields.get("id"), {}
            if event == "relist":
                self.missed.append(f"relist after revision {current}: {data}")
                current = self.seen = int(json.loads(data)["revision"])
            elif event == "change":
                rec = record_of(json.loads(data))
                if rec[0] not in (current, current + 1):
                    self.missed.append(f"record of revision {rec[0]} after revision {current}")
                current = rec[0]
                self.records.append(rec)
                if event_id is not None:
                    self.last_id, self.seen, events = event_id, int(event_id.rsplit(":", 1)[-1]), events + 1
                    if self.resume_every and events >= self.resume_every:
                        return  # hang up after a complete revision; step() resumes from it
            elif event != "message" or data:
                self.tally.note(f"events: unexpected event {event!r}: {data[:200]}")

    def hang_up(self) -> None:
        if self.sock is not None:
            shutdown(self.sock)


# --------------------------------------------------------------------------- the writer


@dataclass(frozen=True)
class Catalogue:
    """What readers and searchers ask for: classes, node ids and search words."""

    classes: list[str]
    node_ids: list[str]
    words: list[str]


@dataclass
class Slot:
    """One synthetic node and the file(s) that hold it."""

    node_id: str
    doc: dict[str, Any]  # the last good document written
    name: str | None  # its file, None while removed
    broken: bool = False
    dup: str | None = None  # a second file that claims the same node id


#: The changes, in the order they are made (over and over), and the slots each fits.
CYCLE = ("update", "atomic", "update", "remove", "atomic", "create", "rename", "break", "fix", "claim")
PLAIN: Callable[[Slot], bool] = lambda s: s.name is not None and not s.broken and s.dup is None
FITS: dict[str, Callable[[Slot], bool]] = {
    "update": lambda s: s.name is not None and not s.broken, "atomic": lambda s: s.name is not None and not s.broken,
    "remove": PLAIN, "create": lambda s: s.name is None, "rename": PLAIN, "break": PLAIN,
    "fix": lambda s: s.broken, "claim": PLAIN, "unclaim": lambda s: s.dup is not None,
}


@dataclass
class Writer:
    """Makes one effective change at a time and waits, long-polling, until it is served."""

    folder: Path
    slots: list[Slot]
    conn: Conn
    rng: random.Random
    stall_s: float
    revision: int = 0
    truth: dict[int, list[Record]] = field(default_factory=dict)  # every record committed
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    visible_ms: list[float] = field(default_factory=list)
    count: int = 0

    def content(self, slot: Slot) -> bytes:
        """A new valid version of the slot's node (which becomes its last good document)."""
        slot.doc = copy.deepcopy(slot.doc) | {"version": f"2.0.{self.count}", "priority": self.rng.randrange(3)}
        if self.rng.random() < 0.1:
            slot.doc["status"] = "inactive" if slot.doc.get("status") == "active" else "active"
        return gen_nodes.encode(slot.doc)

    def change(self) -> str | None:
        """Make the next change on disk; the file it wrote in place, if it did."""
        self.count += 1
        op = CYCLE[self.count % len(CYCLE)]
        claims = sum(s.dup is not None for s in self.slots)
        if op == "claim" and (claims >= 3 or (claims and self.rng.random() < 0.5)):
            op = "unclaim"  # at most 3 claims at once, so most nodes stay plain
        # When nothing fits (no file broken, no claim to take back...), an update always does.
        for op in (op, "claim" if op == "unclaim" else op, "update"):  # noqa: B020
            if fitting := [s for s in self.slots if FITS[op](s)]:
                break
        else:
            raise RuntimeError("no node file left to change")
        slot = self.rng.choice(fitting)
        self.ops[op] += 1
        path = self.folder / (slot.name or f"{slot.node_id}.json")
        if op in ("update", "create", "fix"):
            slot.name, slot.broken = path.name, False
            common.write_node_file(path, self.content(slot))
            return path.name
        if op == "atomic":
            common.write_node_file_atomic(path, self.content(slot))
        elif op == "remove":
            slot.name = None
            path.unlink()
        elif op == "rename":
            slot.name = f"{slot.node_id}-r{self.count}.json"
            os.rename(path, self.folder / slot.name)
        elif op == "break":  # the node stays served from its last good version
            slot.broken = True
            if self.count % 20 < 10:  # a save cut short by a full disk: the file is empty
                common.write_node_file(path, b"")
            else:  # a tool that writes and renames, but wrote half a document
                common.write_node_file_atomic(path, f'{{"node_id": "{slot.node_id}", "name": '.encode())
        elif op == "claim":  # its name sorts after the owner's, so the owner keeps the node
            slot.dup = f"zz-claim-{slot.node_id}.json"
            common.write_node_file(self.folder / slot.dup, gen_nodes.encode(slot.doc))
            return slot.dup
        else:
            (self.folder / str(slot.dup)).unlink()
            slot.dup = None
        return None

    def commit(self) -> None:
        """One change, then wait until the revision moved past it."""
        before, started = self.revision, time.perf_counter()
        in_place = self.change()
        records = self.wait_beyond(before)
        # A file written in place can be read between its truncation and its write: one
        # revision of the file in error, then one of its content (the last good node is
        # served all along). Wait for the second.
        while in_place and [(kind, source) for _, kind, _, source in records] == [("error", in_place)]:
            records = self.wait_beyond(self.revision)
        self.visible_ms.append((time.perf_counter() - started) * 1000)

    def wait_beyond(self, since: int) -> list[Record]:
        """Long-poll until the revision is past `since`; keep and return the new records."""
        deadline = time.monotonic() + self.stall_s
        while time.monotonic() < deadline:
            got = self.conn.get("changes", f"/api/v1/changes?since={since}&wait=10")
            if got is None or got[0] != 200:
                raise RuntimeError(f"the writer's long-poll failed: {got and got[0]} {got and got[2][:300]!r}")
            body = json.loads(got[2])
            if body["revision"] > since:
                records = [record_of(c) for c in body["changes"]]
                for rec in records:
                    self.truth.setdefault(rec[0], []).append(rec)
                self.revision = body["revision"]
                return records
        raise RuntimeError(f"change {self.count} was not served within {self.stall_s:.0f}s")


def build_folder(folder: Path, pool: int, components: int) -> tuple[list[Slot], list[str], Catalogue]:
    """The real node files plus `pool` synthetic ones: the slots, the real names, the catalogue."""
    real = [p.name for p in gen_nodes.copy_real(folder)]
    docs = [gen_nodes.node_document(k, components, nodes=pool, prefix="soak") for k in range(pool)]
    slots = [Slot(str(d["node_id"]), d, f"{d['node_id']}.json") for d in docs]
    for slot in slots:
        common.write_node_file(folder / str(slot.name), gen_nodes.encode(slot.doc))
    docs += [json.loads((folder / name).read_bytes()) for name in real]
    classes = sorted({c for d in docs for c in d["components"]})  # type: ignore[attr-defined]
    words = ["Text", "Multiply", "embed", "Chat", "prompt", "vector", "Zzyzx", *gen_nodes.WORDS[:12]]
    return slots, real, Catalogue(classes, [str(d["node_id"]) for d in docs] + ["no-such-node"], sorted(set(words)))


# --------------------------------------------------------------------------- the process


@dataclass(frozen=True)
class Sample:
    """What /proc says of the server at one moment; for a settled one, how long the counts
    had held still and how long it waited."""

    rss_kib: int
    hwm_kib: int
    fds: collections.Counter[str]
    threads: collections.Counter[str]
    still_s: float = 0.0
    waited_s: float = 0.0


def sample(pid: int, workdir: Path) -> Sample:
    """RSS, peak RSS, descriptors by kind (socket, pipe, each file) and threads by name."""
    fds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        fds[os.path.relpath(kind, workdir) if kind.startswith(str(workdir)) else kind] += 1
    threads: collections.Counter[str] = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            threads[Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()] += 1
        except OSError:  # ended meanwhile
            continue
    status = Path(f"/proc/{pid}/status").read_text()
    kib = [int(m.group(1)) for k in ("VmRSS", "VmHWM") if (m := re.search(rf"^{k}:\s+(\d+)", status, re.MULTILINE))]
    return Sample(kib[0], kib[1], fds, threads)


def counts(s: Sample) -> tuple[int, int]:
    return sum(s.fds.values()), sum(s.threads.values())


def settled(pid: int, workdir: Path, floor: Sample, grace: float) -> Sample:
    """Sample once the descriptor and thread counts have held still for STILL_S seconds and
    are no higher than `floor`'s, or after `grace` seconds, whatever they are then."""
    started = since = time.monotonic()
    last = sample(pid, workdir)
    while time.monotonic() < started + grace:
        if time.monotonic() - since >= STILL_S and all(a <= b for a, b in zip(counts(last), counts(floor))):
            break
        time.sleep(0.25)
        new = sample(pid, workdir)
        since = time.monotonic() if counts(new) != counts(last) else since
        last = new
    now = time.monotonic()
    return Sample(last.rss_kib, last.hwm_kib, last.fds, last.threads, now - since, now - started)


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    first: int
    final: int
    seconds: float
    clients: list[Client]
    misses: dict[str, list[str]]  # by follower
    problems: list[str]
    timeline: list[list[str]]


def run_phase(name: str, server: common.Server, writer: Writer, commits: int, args: Any, cat: Catalogue,
              workdir: Path, seed: int) -> Phase:
    """Start the load, make `commits` commits, let every follower catch up, hang all up,
    and compare each follower's records with the writer's over the revisions it followed."""
    stop = threading.Event()
    kinds = [(Reader, args.readers), (Searcher, args.searchers), (Poller, args.pollers), (Stream, args.streams)]
    clients = [kind(f"{kind.__name__.lower()}-{i}", server.port, stop, seed + 100 * k + i, cat)
               for k, (kind, n) in enumerate(kinds) for i in range(n)]
    followers = [c for c in clients if isinstance(c, (Poller, Stream))]
    for c in clients:
        c.conn.keep_alive = c.name != f"reader-{args.readers - 1}" or args.readers == 1
        if isinstance(c, Stream):
            c.resume_every = RESUME_EVERY * int(c.name.rsplit("-", 1)[1])
        c.start()
    server.wait_until(lambda: all(f.start_revision is not None for f in followers)
                      or any(c.failure for c in clients), 30)
    first, started, every, timeline = writer.revision, time.perf_counter(), max(1, commits // 10), []
    try:
        while writer.revision < first + commits:
            writer.commit()
            done = writer.revision - first
            if done % every == 0 or writer.revision >= first + commits:
                s = sample(server.pid, workdir)
                timeline.append([str(done), str(writer.revision), f"{time.perf_counter() - started:.0f}",
                                 f"{s.rss_kib / 1024:.1f}", *map(str, counts(s))])
                print(f"  {name}: {done}/{commits} commits, " + ", ".join(timeline[-1][2:]), flush=True)
    finally:
        seconds = time.perf_counter() - started
        final, problems = writer.revision, []
        try:
            server.wait_until(lambda: all(f.seen >= final for f in followers), args.follow_timeout)
        except common.ServerError:
            problems += [f"{f.name} saw up to revision {f.seen}, not {final}" for f in followers if f.seen < final]
        stop.set()
        for c in clients:  # a long-poll or a stream may be waiting: do not wait for it
            c.hang_up()
        for c in clients:
            c.join(args.follow_timeout)
            problems += [f"{c.name} did not stop"] if c.is_alive() else []
            problems += [f"{c.name} failed: {c.failure!r}"] if c.failure is not None else []
    misses = {}
    for f in followers:
        start = f.start_revision if f.start_revision is not None else final
        want = [rec for r in range(start + 1, final + 1) for rec in writer.truth.get(r, [])]
        got = [rec for rec in f.records if start < rec[0] <= final]
        misses[f.name] = list(f.missed) + ([] if got == want else [
            (f"{len(got)} records, expected {len(want)}; missing {sorted(set(want) - set(got))[:3]}, "
            f"unexpected {sorted(set(got) - set(want))[:3]}")])
    return Phase(name, first, final, seconds, clients, misses, problems, timeline)


# --------------------------------------------------------------------------- main


CLASSES = ("2xx", "3xx", "4xx", "5xx", "errors", "unexpected")


def answers(tallies: list[Tally]) -> tuple[list[list[str]], collections.Counter[str]]:
    """Answers by endpoint and status class (table rows), and the totals that are checked."""
    by: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for tally in tallies:
        for (label, status), n in tally.answers.items():
            by[label][f"{status // 100}xx"] += n
            by[label]["unexpected"] += 0 if status in ALLOWED[label] else n
        for key, n in tally.errors.items():
            by[key.split(":", 1)[0]]["errors"] += n
    totals = sum(by.values(), collections.Counter())
    totals["answers"] = sum(totals[k] for k in CLASSES[:4])
    totals["backwards"] = sum(t.backwards for t in tallies)
    totals["reconnects"] = sum(t.reconnects for t in tallies)
    rows = [[label, *(f"{c[k]:,}" for k in CLASSES)] for label, c in sorted(by.items())]
    return rows + [["all", *(f"{totals[k]:,}" for k in CLASSES)]], totals


def counters(port: int) -> dict[str, float]:
    """The server's own request and reconcile counters (/metrics), to be compared."""
    wanted = ("droq_registry_http_requests_total{", "droq_registry_reconciles_total{")
    return {k: v for k, v in common.metrics(port).items() if k.startswith(wanted)}


def main(argv: list[str] | None = None) -> int:
    parser = common.argument_parser(__doc__)
    add = parser.add_argument
    add("--commits", type=int, default=10_000, help="effective commits measured (default 10000)")
    add("--warmup", type=int, help="commits before the first sample (default 2 x --changes-keep + 50)")
    add("--changes-keep", type=int, help="the server's REGISTRY_CHANGES_KEEP (default --commits/10, 50-1000)")
    add("--pool", type=int, default=40, help="synthetic node files that are changed (default 40)")
    add("--components", type=int, default=20, help="components per synthetic node (default 20)")
    add("--readers", type=int, default=4, help="reader threads (default 4)")
    add("--searchers", type=int, default=1, help="search threads (default 1)")
    add("--pollers", type=int, default=4, help="long-polling followers (default 4)")
    add("--streams", type=int, default=4, help="event-stream followers (default 4)")
    add("--seed", type=int, default=1, help="seed of the writer's and the clients' choices (default 1)")
    add("--stall", type=float, default=30.0, help="seconds one change may take to be served (default 30)")
    add("--follow-timeout", type=float, default=60.0, help="seconds followers get to catch up (default 60)")
    add("--grace", type=float, default=GRACE_S, help=f"seconds a sample waits for idle counts (default {GRACE_S:g})")
    add("--name", default="soak", help="results file name in bench/results/ (default soak)")
    args = parser.parse_args(argv)
    if args.commits < 1 or args.pool < 4 or args.readers < 1:
        parser.error("--commits and --readers must be 1 or more, --pool 4 or more")
    args.changes_keep = args.changes_keep or min(1000, max(50, args.commits // 10))
    args.warmup = 2 * args.changes_keep + 50 if args.warmup is None else args.warmup
    common.exit_on_sigterm()
    workdir = common.temp_workdir("soak")
    (folder := workdir / "nodes").mkdir()
    slots, real, cat = build_folder(folder, args.pool, args.components)
    report = common.Report(args.name, f"Soak: {args.commits:,} effective commits under concurrent load")
    server = common.Server(assets_dir=folder, db_path=workdir / "registry.db", log_path=workdir / "server.log",
                           extra_env={"REGISTRY_CHANGES_KEEP": str(args.changes_keep)})
    writer_tally = Tally()
    try:
        server.start().wait_watching(120)
        before = counters(server.port)  # the start-up's own /ready 503s stay out
        writer = Writer(folder, slots, Conn(server.port, writer_tally), random.Random(args.seed), args.stall)
        writer.revision = int(server.metrics()["droq_registry_revision"])
        ready = sample(server.pid, workdir)
        warm = run_phase("warm-up", server, writer, args.warmup, args, cat, workdir, args.seed * 1000)
        start = settled(server.pid, workdir, ready, args.grace)
        measured = run_phase("measured", server, writer, args.commits, args, cat, workdir, args.seed * 1000 + 500)
        end = settled(server.pid, workdir, start, args.grace)
        health = server.health()
        grown = {k: v - before.get(k, 0) for k, v in counters(server.port).items() if v != before.get(k, 0)}
        writer.conn.close()
        exit_code = server.stop()
        log_errors = [ln for ln in server.log_text().splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", ln)]
    except BaseException:
        print(f"soak failed; the server logged last:\n{server.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        server.stop()
        common.remove_tree(workdir)

    rows, totals = answers([c.tally for p in (warm, measured) for c in p.clients] + [writer_tally])
    server_5xx = sum(v for k, v in grown.items() if re.search(r'status="5\d\d"', k))
    failed = sum(v for k, v in grown.items() if 'result="failed"' in k)
    requests = sum(v for k, v in grown.items() if k.startswith("droq_registry_http_requests_total"))
    misses = [f"{p.name} {f}: {m}" for p in (warm, measured) for f, ms in p.misses.items() for m in ms]
    problems = [f"{p.name}: {x}" for p in (warm, measured) for x in p.problems]
    problems += [f"the {w} sample was taken after {x.still_s:.1f}s of still counts, not {STILL_S:g}s"
                 for w, x in (("start", start), ("end", end)) if x.still_s < STILL_S]
    notes = [f"{c.name}: {n}" for p in (warm, measured) for c in p.clients for n in c.tally.notes]
    growth = (end.rss_kib - start.rss_kib) / 1024
    vis = common.spread(writer.visible_ms)

    report.table("Setup", ["what", "value"], [
        ["node files", f"{len(real)} real + {args.pool} synthetic ({args.components} components each)"],
        ["change log kept (REGISTRY_CHANGES_KEEP)", f"{args.changes_keep:,}"],
        ["commits: warm-up, then measured", f"{args.warmup:,}, then {args.commits:,}"],
        ["clients (threads)", (f"{args.readers} readers (the last without keep-alive), {args.searchers} searchers, "
         f"{args.pollers} long-pollers, {args.streams} event streams (one connected throughout, the others "
         f"reconnecting every {RESUME_EVERY}-{RESUME_EVERY * max(1, args.streams - 1)} events); the reader "
         f"without keep-alive and the pollers abandon {ABANDON:.0%} of their requests with a reset")]])

    def row(what: str, a: float, b: float, unit: float = 1) -> list[str]:
        return [what, f"{a / unit:g}", f"{b / unit:g}", f"{(b - a) / unit:+g}"]

    report.table("The server after the warm-up (start) and after the measured commits (end), each once idle",
                 ["", "start", "end", "change"], [
                     row("revision", measured.first, measured.final),
                     row("RSS (VmRSS), MiB", start.rss_kib, end.rss_kib, 1024),
                     row("peak RSS (VmHWM), MiB", start.hwm_kib, end.hwm_kib, 1024),
                     row("open descriptors", counts(start)[0], counts(end)[0]),
                     *(row(f"  fd: {k}", start.fds[k], end.fds[k]) for k in sorted(start.fds | end.fds)),
                     row("threads", counts(start)[1], counts(end)[1]),
                     *(row(f"  thread: {k}", start.threads[k], end.threads[k])
                       for k in sorted(start.threads | end.threads))])
    report.table("During the measured commits (under load)",
                 ["commits", "revision", "seconds", "RSS MiB", "descriptors", "threads"], measured.timeline)
    report.table("Answers by endpoint and status class (both phases)", ["endpoint", *CLASSES], rows)
    report.table("Followers in the measured phase: their records against the writer's",
                 ["follower", "revisions", "records", "connections", "missed"],
                 [[c.name, f"{c.start_revision}..{c.seen}", f"{len(c.records):,}", c.connections,
                   len(measured.misses[c.name])] for c in measured.clients if c.name in measured.misses])
    report.table("Commits and answers (both phases)", ["what", "value"], [
        ["changes made", f"{writer.count:,}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(writer.ops.items()))],
        ["revisions", f"{warm.first} -> {measured.final} ({measured.final - warm.first:,})"],
        ["change to served (write -> the writer's long-poll answers), p50 / p99 / max ms",
         f"{vis['p50']:.1f} / {vis['p99']:.1f} / {vis['max']:.1f}"],
        ["measured phase: seconds, commits/s", f"{measured.seconds:.0f}, {args.commits / measured.seconds:.1f}"],
        ["answers / transport errors / idle keep-alive connections reopened",
         f"{totals['answers']:,} / {totals['errors']} / {totals['reconnects']}"],
        ["the server's own count (/metrics): requests, 5xx, failed reconciles",
         f"{requests:,.0f}, {server_5xx:.0f}, {failed:.0f}"],
        ["/health at the end", (f"{health['status']}, revision {health['revision']}, {health['nodes']} nodes, "
         f"{health['files_in_error']} files in error")],
        ["server exit code on SIGTERM", str(exit_code)]])
    for title, items in (("Followers: what they missed", misses[:20]), ("Clients: problems", problems),
                         ("Clients: notes (the first 40)", notes[:40]), ("Server log: errors", log_errors[:20])):
        if items:
            report.note(f"### {title}\n\n" + "\n".join(f"- `{i}`" for i in items))

    report.check("RSS growth over the measured commits", growth, RSS_GROWTH_LIMIT_MIB, "MiB")
    report.check("open descriptors more at the end", counts(end)[0] - counts(start)[0], 0)
    report.check("threads more at the end", counts(end)[1] - counts(start)[1], 0)
    report.check("5xx answers seen by the clients", totals["5xx"], 0)
    report.check("5xx answers counted by the server", server_5xx, 0)
    report.check("transport errors", totals["errors"], 0)
    report.check("answers an endpoint may not give", totals["unexpected"], 0)
    report.check("revision going backwards for one client", totals["backwards"], 0)
    report.check("follower records missed (410, relist, gap, differing)", len(misses), 0)
    report.check("client problems (stuck, failed, behind)", len(problems), 0)
    report.check("effective commits measured", measured.final - measured.first, args.commits, higher=True)
    report.check("failed reconciles", failed, 0)
    report.check("server log errors", len(log_errors), 0)
    report.check("server exit code on SIGTERM", 99 if exit_code is None else abs(exit_code), 0)
    report.figures = {"commits": args.commits, "warmup": args.warmup, "changes_keep": args.changes_keep,
                      "rss_growth_mib": growth, "start": vars(start), "end": vars(end), "answers": dict(totals),
                      "server_requests": requests, "ops": dict(writer.ops), "visible_ms": vis,
                      "measured_seconds": measured.seconds, "follower_misses": misses[:50], "problems": problems}
    report.write()
    return 0 if all(c.ok for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
