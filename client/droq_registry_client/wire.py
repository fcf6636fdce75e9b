"""What the client knows of the registry's HTTP API: paths, headers and answer shapes.

Every answer is checked before it is believed: a body that is not the documented shape
(a proxy's error page, another service on the port) is a `ProtocolError` naming the URL and
what was wrong, which the follower treats like an unreachable replica.

The headers of issue 12 (`X-Registry-Epoch`, `X-Registry-Content-Hash`) are read when they
are there and are None when they are not, so the same client follows registries with and
without them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .state import Entry, entry_from

REVISION = "x-registry-revision"
EPOCH = "x-registry-epoch"
CONTENT_HASH = "x-registry-content-hash"

NODES = "/api/v1/nodes"
CHANGES = "/api/v1/changes"
#: 200 once the registry's first load has committed, 503 before (open without a token).
READY = "/ready"

#: The registry's epochs are 1-32 of these; anything else in the header is not believed.
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: A content hash is opaque; a sane bound keeps a hostile header from being kept.
_HASH = re.compile(r"[\x21-\x7e]{1,256}")


class ProtocolError(Exception):
    """An answer that is not what the registry's API documents."""


@dataclass(frozen=True, slots=True)
class Meta:
    """The history position every answer under /api/v1/ carries."""

    revision: int
    epoch: str | None
    content_hash: str | None


def meta(response: httpx.Response) -> Meta:
    """The revision (required), epoch and content hash of an answer."""
    raw = response.headers.get(REVISION)
    if (raw is None or not raw.isdigit()) and response.status_code >= 400:
        # Not the registry's answer: a proxy's (502 while the registry is down) or a gateway's.
        raise ProtocolError(refusal(response))
    if raw is None or not raw.isdigit():
        raise ProtocolError(
            f"{_where(response)} answered {response.status_code} without a valid {REVISION} header "
            f"(got {raw!r}): is this a Droq registry?"
        )
    epoch = response.headers.get(EPOCH)
    content_hash = response.headers.get(CONTENT_HASH)
    return Meta(
        int(raw),
        epoch if epoch is not None and _EPOCH.fullmatch(epoch) else None,
        content_hash if content_hash is not None and _HASH.fullmatch(content_hash) else None,
    )


def detail_path(node_id: str) -> str:
    return f"{NODES}/{quote(node_id, safe='')}"


def changes_params(since: int, epoch: str | None, wait: float) -> dict[str, str]:
    params = {"since": str(since), "wait": f"{wait:g}"}
    if epoch is not None:
        params["epoch"] = epoch
    return params


def body(response: httpx.Response) -> Any:
    """The JSON body, or a ProtocolError saying it is not JSON."""
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise ProtocolError(f"{_where(response)} answered {response.status_code} with a body that is not JSON: {exc}")


def node_ids(response: httpx.Response) -> list[str]:
    """The node ids of a `GET /api/v1/nodes?status=all` answer."""
    data = body(response)
    try:
        ids = [item["metadata"]["node_id"] for item in data["nodes"]]
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{_where(response)}: not a node list ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(i, str) and i for i in ids):
        raise ProtocolError(f"{_where(response)}: a node_id in the list is not a non-empty string")
    return ids


def entry(response: httpx.Response, node_id: str) -> Entry:
    """The node of a 200 answer to `GET /api/v1/nodes/{node_id}`."""
    data = body(response)
    node = data.get("node") if isinstance(data, dict) else None
    components = data.get("components") if isinstance(data, dict) else None
    if not isinstance(node, dict) or node.get("node_id") != node_id:
        raise ProtocolError(f"{_where(response)}: not the node {node_id!r}")
    if not isinstance(components, dict) or not all(isinstance(v, str) for v in components.values()):
        raise ProtocolError(f"{_where(response)}: `components` is not an object of module paths")
    return entry_from(node, components, response.headers.get("etag"))


@dataclass(frozen=True, slots=True)
class Changes:
    """A 200 answer of `GET /api/v1/changes`: the new revision and the nodes to fetch again."""

    revision: int
    node_ids: frozenset[str]


def changes(response: httpx.Response) -> Changes:
    data = body(response)
    try:
        revision = data["revision"]
        ids = frozenset(c["node_id"] for c in data["changes"] if c.get("node_id") is not None)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"{_where(response)}: not a change list ({type(exc).__name__}: {exc})") from None
    if not isinstance(revision, int) or not all(isinstance(i, str) for i in ids):
        raise ProtocolError(f"{_where(response)}: the change list's revision or node ids are malformed")
    return Changes(revision, ids)


@dataclass(frozen=True, slots=True)
class Gone:
    """A 410 of `GET /api/v1/changes`: the cursor is not in this registry's history; where
    the registry stands instead (None where the body does not say: then the client relists)."""

    detail: str
    revision: int | None
    epoch: str | None
    content_hash: str | None


def gone(response: httpx.Response) -> Gone:
    """The 410's body: `detail`, and this registry's `revision`, `epoch` and `content_hash`.
    A body that is not that (a proxy's page) says nothing the client can resume from."""
    try:
        data = body(response)
    except ProtocolError:
        data = None
    if not isinstance(data, dict):
        data = {}
    revision, epoch, content_hash = data.get("revision"), data.get("epoch"), data.get("content_hash")
    return Gone(
        detail=str(data.get("detail") or "410 Gone")[:500],
        revision=revision if type(revision) is int and revision >= 0 else None,
        epoch=epoch if isinstance(epoch, str) and _EPOCH.fullmatch(epoch) else None,
        content_hash=content_hash if isinstance(content_hash, str) and _HASH.fullmatch(content_hash) else None,
    )


def refusal(response: httpx.Response) -> str:
    """What an answer other than the one asked for says: `GET <url> answered <status>: <detail>`."""
    return f"{_where(response)} answered {response.status_code}: {detail_of(response)}"


def detail_of(response: httpx.Response) -> str:
    """An error answer's `detail`, for messages (never raises)."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return str(data["detail"])[:500]
    return response.text.strip()[:200]


def _where(response: httpx.Response) -> str:
    request = response.request
    return f"GET {request.url}"
