"""The fast path: the hot read routes answered before Starlette, from the route table.

Which routes, and how, comes from the table: the entries with a `fast` answer (today the
lookup `/api/v1/components/{component_class}/node`, the node detail `/api/v1/nodes/{node_id}`
and the node list `/api/v1/nodes[?status=...]`). A request is matched against their
templates with a few string checks and answered by the same `answers.Answers` method the
Starlette handler calls (`HotPath.reply`), so every way in sends the same bytes by
construction; this module only decides whether it may answer.

Two callers ask it. The connection's protocol asks first, as soon as a request's head is
parsed (`direct.DirectReads.answer_here`: no ASGI task at all); what it leaves to
the app (a request behind another in progress, one with a body, the access log on) comes
here again as an ASGI scope (`HotPath.answer`, from `app.RegistryApp`). Both count what
they answered in the metrics by the entry's template.

The followers (the routes whose entry `follows`: the long-poll and the event stream) are
ASGI apps of their own (`changes.py`); `follower` hands them their request on the same
terms, so a held request never waits inside Starlette.

It declines (returns None, and the request goes through Starlette untouched) whenever it
is not sure: another method, a path or query the table does not match exactly, a
`root_path`, a missing or wrong bearer token when one is configured (Starlette's
`TokenAuth` answers the 401), the registry not loaded yet, or a node list not yet built
for this snapshot (Starlette's handler builds it in a worker thread, `offload.py`; the
event loop only ever does small work here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import answers
from .answers import Answer, Answers, Headers
from .auth import authorized
from .routes import Entry, Fast

#: What `HotPath.answer` gives: status, headers, body, route template.
Reply = tuple[int, Headers, bytes, str]


class Waits:
    """A long-poll the protocol holds itself (`HotPath.poll`, then `HotPath.hold`): what it
    asked, for the app that answers it. (Not a tuple: a `Reply` is one.)"""

    __slots__ = ("app", "inm", "poll", "route")

    def __init__(self, app: Any, poll: Any, inm: bytes | None, route: str) -> None:
        self.app = app
        self.poll = poll
        self.inm = inm
        self.route = route


class HotPath:
    """Answers the fast routes of one app; `registry` is set while its lifespan runs."""

    def __init__(self, table: Iterable[Entry], token: str | None) -> None:
        self.token = None if token is None else token.encode()
        self.registry: Any = None
        self.served = Answers(None)
        #: Routes without a path parameter, by path; routes with one, as (prefix, suffix).
        self.exact: dict[str, tuple[str, Fast]] = {}
        self.templated: list[tuple[str, str, str, Fast]] = []
        self.feed: Any = None
        #: The follower routes' ASGI apps, by path (they have no path parameter), and
        #: those of them the protocol may hold itself (`poll`: the long-poll).
        self.followers: dict[str, Any] = {}
        self.polls: dict[str, Any] = {}
        for entry in table:
            if entry.follows is not None and hasattr(entry.handler, "serve"):
                self.followers[entry.template] = entry.handler
                if entry.follows and hasattr(entry.handler, "held"):
                    self.polls[entry.template] = entry.handler
            if entry.fast is None:
                continue
            if "{" in entry.template:
                prefix, _, rest = entry.template.partition("{")
                self.templated.append((prefix, rest.partition("}")[2], entry.template, entry.fast))
            else:
                self.exact[entry.template] = (entry.template, entry.fast)

    def match(self, path: str, query: bytes) -> tuple[str, Fast, str] | None:
        """The template, fast answer and key of a path and query, or None."""
        exact = self.exact.get(path)
        if exact is not None:
            template, fast = exact
            key = (fast.queries or {b"": ""}).get(query)
            return None if key is None else (template, fast, key)
        for prefix, suffix, template, fast in self.templated:
            if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
                key = path[len(prefix) : len(path) - len(suffix)]
                if "/" not in key:  # Starlette's `{param}` is one path segment
                    return template, fast, key
        return None

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether a request with these headers may be answered here (the token, if one is set)."""
        return self.token is None or authorized(headers, self.token)  # else `auth.TokenAuth` answers the 401

    def follower(self, scope: dict[str, Any]) -> Any:
        """The follower app that serves this HTTP scope here, or None (Starlette's router will)."""
        app = self.followers.get(scope["path"])
        if app is None or self.registry is None or scope.get("root_path"):
            return None
        if scope["method"] not in ("GET", "HEAD") or not self.authorized(scope["headers"]):
            return None
        return app

    def answer(self, scope: dict[str, Any]) -> Reply | None:
        """Status, headers, body and route template of the answer to an HTTP scope, or None.

        None means "not answered here": the caller passes the request to Starlette.
        """
        if scope.get("root_path"):
            return None
        return self.reply(scope["method"], scope["path"], scope["query_string"], scope["headers"])

    def reply(self, method: str, path: str, query: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Reply | None:
        """The answer to a request (its method, decoded path, raw query and lower-cased
        headers), or None. `answer` asks for an ASGI scope; the protocol asks for a
        request it answers before any ASGI work (`direct.DirectReads.answer_here`)."""
        if method != "GET" and method != "HEAD":
            return None
        matched = self.match(path, query)
        registry = self.registry
        if matched is None or registry is None:
            return None
        if self.token is not None and not self.authorized(headers):
            return None  # `auth.TokenAuth` answers the 401
        template, fast, key = matched
        snap = registry.snapshot  # the one read of the snapshot for this answer
        served = self.served
        if served.snap is not snap:
            served = self.served = answers.of(snap)
        answer = fast.answer(served, key)
        if answer is None:
            return None
        return (*answer.reply(answers.if_none_match(headers)), template)

    def poll(self, path: str, query: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Reply | Waits | None:
        """For a GET the protocol may hold itself (`direct.DirectReads.answer_here`): the
        answer now, as `reply` gives it, or the long-poll to hold (`hold`), or None (not
        here: uvicorn runs the app, which serves it as an ASGI app)."""
        app = self.polls.get(path)
        registry = self.registry
        if app is None or registry is None or self.feed is None:
            return None
        if self.token is not None and not self.authorized(headers):
            return None  # `auth.TokenAuth` answers the 401
        inm = answers.if_none_match(headers)
        asked = app.asked(registry.snapshot, query)
        if isinstance(asked, Answer):
            return (*asked.reply(inm), path)
        return Waits(app, asked, inm, path)

    def hold(self, waits: Waits, release: Any, done: Callable[[int], None]) -> None:
        """Hold the long-poll `poll` gave, answered through `release`'s outlet; then `done(status)`."""
        waits.app.held(self.registry, self.feed, release, waits.poll, waits.inm, done)
